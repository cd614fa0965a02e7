/* C helpers of qcore_plugins._codebook (pyx/codebook.pyx) that need to be fast enough to repeat:
 * the squared error of the log scheme, evaluated for every candidate scale of its ``mse`` search, and the codes
 * of a small codebook (k-means at up to 4 bits: every group of a group-wise codebook).
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

/* Codes of a small sorted codebook (at most QC_CB_COUNT_MAX midpoints) by counting: code = number of midpoints
 * below the value.  mf[j] is the largest float32 <= midpoint j (exact in double), so for a float32 v,
 * v > mf[j] exactly when v > midpoint j: the same codes as the binary search of codebook.pyx (a value on a
 * midpoint takes the lower entry; NaN gets 0 in both).  Comparing every value with every midpoint is
 * branch-free and vectorizes (16 values per AVX-512 compare); per value it costs m compares against the
 * search's log2(m+1) dependent loads and compares.  Returns nonzero if a value was NaN/Inf. */
#define QC_CB_COUNT_MAX 15
#define QC_CB_BLOCK 64

QC_INLINE int qc_cb_count_body(const float *restrict x, uint8_t *restrict q, ptrdiff_t n, const float *restrict mf,
                               int m)
{
    uint32_t bad = 0;
    for (ptrdiff_t i = 0; i < n; i += QC_CB_BLOCK) {
        ptrdiff_t e = n - i < QC_CB_BLOCK ? n - i : QC_CB_BLOCK;
        uint32_t c[QC_CB_BLOCK] = {0};
        const float *xb = x + i;
        if (e == QC_CB_BLOCK) {
            for (int j = 0; j < m; j++) {
                float t = mf[j];
                for (int k = 0; k < QC_CB_BLOCK; k++) c[k] += xb[k] > t;
            }
            for (int k = 0; k < QC_CB_BLOCK; k++) {
                uint32_t u;
                memcpy(&u, &xb[k], sizeof u);
                bad |= (~u & 0x7F800000u) == 0;
                q[i + k] = (uint8_t)c[k];
            }
        } else {
            for (int j = 0; j < m; j++)
                for (ptrdiff_t k = 0; k < e; k++) c[k] += xb[k] > mf[j];
            for (ptrdiff_t k = 0; k < e; k++) {
                uint32_t u;
                memcpy(&u, &xb[k], sizeof u);
                bad |= (~u & 0x7F800000u) == 0;
                q[i + k] = (uint8_t)c[k];
            }
        }
    }
    return bad != 0;
}

/* the largest float32 <= m (m finite, within float32's range: a midpoint of two finite float32) */
QC_INLINE float qc_cb_f32_floor(double m)
{
    float f = (float)m;
    return (double)f > m ? nextafterf(f, -INFINITY) : f;
}

typedef double (*qc_log_sse_t)(const float *, ptrdiff_t, float, int, uint32_t, float);
typedef int (*qc_cb_count_t)(const float *, uint8_t *, ptrdiff_t, const float *, int);

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

static int qc_cb_count_baseline(const float *x, uint8_t *q, ptrdiff_t n, const float *mf, int m)
{ return qc_cb_count_body(x, q, n, mf, m); }
#if QC_X86_DISPATCH
__attribute__((target("avx2"))) static int qc_cb_count_avx2(const float *x, uint8_t *q, ptrdiff_t n,
                                                            const float *mf, int m)
{ return qc_cb_count_body(x, q, n, mf, m); }
__attribute__((target("avx2,avx512f,avx512bw,avx512vl"))) static int qc_cb_count_avx512(
    const float *x, uint8_t *q, ptrdiff_t n, const float *mf, int m)
{ return qc_cb_count_body(x, q, n, mf, m); }
#endif

static qc_log_sse_t qc_log_sse = qc_log_sse_baseline;
static qc_cb_count_t qc_cb_count = qc_cb_count_baseline;

/* use variant ``level`` (clipped to what the CPU supports); returns the level in use */
static int qc_codebook_select_isa(int level)
{
    int top = qc_cpu_level();
    if (level > top) level = top;
    if (level < 0) level = 0;
#if QC_X86_DISPATCH
    if (level >= QCORE_ISA_AVX512) {
        qc_log_sse = qc_log_sse_avx512;
        qc_cb_count = qc_cb_count_avx512;
        return QCORE_ISA_AVX512;
    }
    if (level == QCORE_ISA_AVX2) {
        qc_log_sse = qc_log_sse_avx2;
        qc_cb_count = qc_cb_count_avx2;
        return QCORE_ISA_AVX2;
    }
#endif
    qc_log_sse = qc_log_sse_baseline;
    qc_cb_count = qc_cb_count_baseline;
    return QCORE_ISA_BASELINE;
}

#endif
