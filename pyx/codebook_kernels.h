/* C helpers of qcore_plugins._codebook (pyx/codebook.pyx) that need to be fast enough to repeat:
 * the squared error of the log scheme, evaluated for every candidate scale of its ``mse`` search.
 *
 * Written so gcc vectorizes it under strict IEEE (same flags as quant_kernels.h, no -ffast-math):
 * - no table lookup: level m of scale s is s * 2^(m-L), and 2^(m-L) is built from its exponent bits
 *   (m - L >= -126 for L <= 127, so it is a normal float); s * 2^(m-L) rounds exactly as the table
 *   log.py builds in float64 and casts (one rounding of the same exact product);
 * - eight running sums in fixed lanes, added in a fixed order at the end, so every variant (baseline,
 *   AVX2, AVX-512) gives the same bits, and one sum does not serialise every element on the previous
 *   addition.
 */
#ifndef QCORE_CODEBOOK_KERNELS_H
#define QCORE_CODEBOOK_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qcore_isa.h"

#define QC_LOG_LANES 8

/* (|v| - level(|v|))^2 in double; level 0 below the zero threshold (NaN included), the top level above */
QC_INLINE double qc_log_sq_err(float v, float s, int L, uint32_t T, float zthr)
{
    float a = fabsf(v);
    float y = a / s;
    uint32_t b, pb;
    memcpy(&b, &y, sizeof b);
    int m = (int)(b >> 23) - 127 + (int)((b & 0x7FFFFFu) >= T) + L;
    m = m > L ? L : m;
    m = m < 1 ? 1 : m;
    pb = (uint32_t)(m - L + 127) << 23;
    float p;
    memcpy(&p, &pb, sizeof p);
    float level = y >= zthr ? s * p : 0.0f;
    double d = (double)a - (double)level;
    return d * d;
}

QC_INLINE double qc_log_sse_body(const float *restrict x, ptrdiff_t n, float s, int L, uint32_t T, float zthr)
{
    double acc[QC_LOG_LANES] = {0.0};
    ptrdiff_t i = 0;
    for (; i + QC_LOG_LANES <= n; i += QC_LOG_LANES)
        for (int j = 0; j < QC_LOG_LANES; j++)
            acc[j] += qc_log_sq_err(x[i + j], s, L, T, zthr);
    for (int j = 0; i < n; i++, j++)
        acc[j] += qc_log_sq_err(x[i], s, L, T, zthr);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

typedef double (*qc_log_sse_t)(const float *, ptrdiff_t, float, int, uint32_t, float);

static double qc_log_sse_baseline(const float *x, ptrdiff_t n, float s, int L, uint32_t T, float zthr)
{ return qc_log_sse_body(x, n, s, L, T, zthr); }
#if QC_X86_DISPATCH
__attribute__((target("avx2"))) static double qc_log_sse_avx2(const float *x, ptrdiff_t n, float s, int L,
                                                              uint32_t T, float zthr)
{ return qc_log_sse_body(x, n, s, L, T, zthr); }
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static double qc_log_sse_avx512(
    const float *x, ptrdiff_t n, float s, int L, uint32_t T, float zthr)
{ return qc_log_sse_body(x, n, s, L, T, zthr); }
#endif

static qc_log_sse_t qc_log_sse = qc_log_sse_baseline;

/* use variant ``level`` (clipped to what the CPU supports); returns the level in use */
static int qc_codebook_select_isa(int level)
{
    int top = qc_cpu_level();
    if (level > top) level = top;
    if (level < 0) level = 0;
#if QC_X86_DISPATCH
    if (level >= QCORE_ISA_AVX512) { qc_log_sse = qc_log_sse_avx512; return QCORE_ISA_AVX512; }
    if (level == QCORE_ISA_AVX2) { qc_log_sse = qc_log_sse_avx2; return QCORE_ISA_AVX2; }
#endif
    qc_log_sse = qc_log_sse_baseline;
    return QCORE_ISA_BASELINE;
}

#endif
