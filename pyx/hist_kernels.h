/* C helpers of qcore_plugins._hist: the one histogram implementation of qcore's C code.
 *
 * Raw-pointer loops called from the prange bodies in hist.pyx (GIL released).  No allocation happens here.
 *
 * * one binning formula, hist_bin: bin = trunc(((double)v - lo) * inv_w) clamped to [0, nb - 1] (NaN -> 0,
 *   values beyond either end -> the end bins), in float64 so tiny and huge ranges bin exactly as the numpy
 *   reference (qcore/kernels/reference.py ``bins``);
 * * one counting routine, hist_count_run (hist_count_rows: runs at a stride): a contiguous run, bin indices of a block of HIST_BLOCK values
 *   computed by the vectorized formula, then added into HIST_NSUB interleaved sub-histograms (consecutive
 *   values in the same bin do not wait on each other's store); every layout (per tensor, per channel, short
 *   runs) goes through it;
 * * one min/max, qcore_minmax.h's (shared with pyx/quant_kernels.h): the per-tensor pass folds it in block by
 *   block (hist_count_checked), and stops counting at the first block outside the histogram's range.
 * All three are compiled in a baseline, an AVX2 and an AVX-512 copy (qcore_isa.h), one chosen at run time.
 */
#ifndef QCORE_HIST_KERNELS_H
#define QCORE_HIST_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qcore_isa.h"
#include "qcore_minmax.h"

#define HIST_BLOCK 512
#define HIST_NSUB 4
/* the per-tensor pass checks this many values (in L1 for the counting that follows) at a time */
#define HIST_CHECK_BLOCK 4096

/* the binning formula (nb >= 1): clamped in float64 before converting, so nothing indexes outside [0, nb)
 * (NaN -> 0: the comparison fails; truncation of t in [0, nb - 1] is its floor) */
QC_INLINE int32_t hist_bin(float v, double lo, double inv_w, int32_t nb)
{
    double t = ((double)v - lo) * inv_w, top = (double)(nb - 1);
    t = t > 0.0 ? t : 0.0;
    t = t < top ? t : top;
    return (int32_t)t;
}

/* the formula over m values into idx: a scalar loop, and the same operations 4 / 8 lanes wide (maxpd(t, 0)
 * returns 0 for a NaN t, as the comparison above does; gcc's own vectorization of the loop was 2x slower) */
QC_INLINE void hist_index_baseline(const float *restrict x, int m, double lo, double inv_w, int32_t nb,
                                   int32_t *restrict idx)
{
    for (int i = 0; i < m; i++) idx[i] = hist_bin(x[i], lo, inv_w, nb);
}

#if QC_X86_DISPATCH
#include <immintrin.h>
static inline __attribute__((always_inline, target("avx2"))) void hist_index_avx2(
    const float *restrict x, int m, double lo, double inv_w, int32_t nb, int32_t *restrict idx)
{
    const __m256d vlo = _mm256_set1_pd(lo), vinv = _mm256_set1_pd(inv_w), zero = _mm256_setzero_pd(),
                  top = _mm256_set1_pd((double)(nb - 1));
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        __m256d t = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), vlo), vinv);
        t = _mm256_min_pd(_mm256_max_pd(t, zero), top);
        _mm_storeu_si128((__m128i *)(idx + i), _mm256_cvttpd_epi32(t));
    }
    for (; i < m; i++) idx[i] = hist_bin(x[i], lo, inv_w, nb);
}

static inline __attribute__((always_inline, target("avx2,avx512f,avx512bw,avx512vl"))) void hist_index_avx512(
    const float *restrict x, int m, double lo, double inv_w, int32_t nb, int32_t *restrict idx)
{
    const __m512d vlo = _mm512_set1_pd(lo), vinv = _mm512_set1_pd(inv_w), zero = _mm512_setzero_pd(),
                  top = _mm512_set1_pd((double)(nb - 1));
    int i = 0;
    for (; i + 8 <= m; i += 8) {
        __m512d t = _mm512_mul_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + i)), vlo), vinv);
        t = _mm512_min_pd(_mm512_max_pd(t, zero), top);
        _mm256_storeu_si256((__m256i *)(idx + i), _mm512_cvttpd_epi32(t));
    }
    for (; i < m; i++) idx[i] = hist_bin(x[i], lo, inv_w, nb);
}
#endif

typedef void (*hist_count_rows_t)(const float *, int64_t, int64_t, int64_t, double, double, int32_t, uint32_t *,
                                  int64_t);
typedef int (*hist_count_checked_t)(const float *, int64_t, double, double, int32_t, uint32_t *, double, double,
                                    float *, float *, volatile int *, float *, int64_t, int64_t *);

/* One copy per instruction set of:
 *
 * hist_count_run: counts of x[0..n) into h, sub-histogram k at h + k * hstride (hstride 0: one histogram);
 * hist_count_rows: `rows` runs of `len` values, run r at x + r * xstride;
 * hist_count_checked: the per-tensor pass: min/max of x[0..n) folded into *mn, *mx block by block
 *   (qcore_minmax.h), and the counts of the values inside [lo_limit, hi_limit] into h (HIST_NSUB sub-histograms
 *   of nb); values outside go to spill[*used..cap) (the caller counts them once it has grown the histogram).
 *   Returns 0 if every value was counted or spilled, 1 if the spill buffer overflowed (counting stopped there:
 *   the partial counts are to be discarded; the min/max still cover all of x), 2 on NaN/Inf.  *stop (shared by
 *   the threads of one call) is raised on the first failure so the others stop counting. */
#define HIST_DEFINE_VARIANT(SFX, ATTR)                                                                      \
    ATTR static inline void hist_count_run_##SFX(const float *restrict x, int64_t n, double lo, double inv_w, \
                                                 int32_t nb, uint32_t *h, int64_t hstride)                 \
    {                                                                                                      \
        int32_t idx[HIST_BLOCK];                                                                           \
        uint32_t *h0 = h, *h1 = h + hstride, *h2 = h + 2 * hstride, *h3 = h + 3 * hstride;                 \
        for (int64_t s = 0; s < n; s += HIST_BLOCK) {                                                      \
            int m = (int)(n - s < HIST_BLOCK ? n - s : HIST_BLOCK);                                        \
            hist_index_##SFX(x + s, m, lo, inv_w, nb, idx);                                                \
            int i = 0;                                                                                     \
            for (; i + 4 <= m; i += 4) {                                                                   \
                h0[idx[i]]++;                                                                              \
                h1[idx[i + 1]]++;                                                                          \
                h2[idx[i + 2]]++;                                                                          \
                h3[idx[i + 3]]++;                                                                          \
            }                                                                                              \
            for (; i < m; i++) h0[idx[i]]++;                                                               \
        }                                                                                                  \
    }                                                                                                      \
    ATTR static void hist_count_rows_##SFX(const float *x, int64_t rows, int64_t len, int64_t xstride,     \
                                           double lo, double inv_w, int32_t nb, uint32_t *h, int64_t hs)   \
    {                                                                                                      \
        for (int64_t r = 0; r < rows; r++) hist_count_run_##SFX(x + r * xstride, len, lo, inv_w, nb, h, hs); \
    }                                                                                                      \
    ATTR static int hist_count_checked_##SFX(const float *x, int64_t n, double lo, double inv_w, int32_t nb,\
                                             uint32_t *h, double lo_limit, double hi_limit, float *mn,     \
                                             float *mx, volatile int *stop, float *spill, int64_t cap,      \
                                             int64_t *used)                                                \
    {                                                                                                      \
        int state = *stop ? 1 : 0;                                                                         \
        float l = *mn, u = *mx;                                                                            \
        for (int64_t s = 0, m; s < n; s += m) {                                                            \
            /* once counting has stopped, the rest is only scanned for its min/max: one run */             \
            m = state ? n - s : (n - s < HIST_CHECK_BLOCK ? n - s : HIST_CHECK_BLOCK);                     \
            float a, b;                                                                                    \
            qc_minmax_run_body(x + s, m, &a, &b);                                                          \
            if (!(a - a == 0.0f) || !(b - b == 0.0f)) { /* NaN or Inf: nothing else matters */             \
                *stop = 1;                                                                                 \
                return 2;                                                                                  \
            }                                                                                              \
            l = a < l ? a : l;                                                                             \
            u = b > u ? b : u;                                                                             \
            if (state == 0 && *stop) state = 1;                                                            \
            if (state == 0) {                                                                              \
                if ((double)a >= lo_limit && (double)b <= hi_limit) {                                      \
                    hist_count_run_##SFX(x + s, m, lo, inv_w, nb, h, nb);                                  \
                } else { /* value by value: those inside counted, the others spilled while there is room */\
                    for (int64_t i = s; i < s + m && state == 0; i++) {                                    \
                        double v = (double)x[i];                                                           \
                        if (v >= lo_limit && v <= hi_limit) h[hist_bin(x[i], lo, inv_w, nb)]++;            \
                        else if (*used < cap) spill[(*used)++] = x[i];                                     \
                        else { state = 1; *stop = 1; }                                                     \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        *mn = l;                                                                                           \
        *mx = u;                                                                                           \
        return state;                                                                                      \
    }

HIST_DEFINE_VARIANT(baseline, )
#if QC_X86_DISPATCH
HIST_DEFINE_VARIANT(avx2, __attribute__((target("avx2"))))
HIST_DEFINE_VARIANT(avx512, __attribute__((target("avx2,avx512f,avx512bw,avx512vl"))))
#endif

static hist_count_rows_t hist_count_rows = hist_count_rows_baseline;
static hist_count_checked_t hist_count_checked = hist_count_checked_baseline;

/* sum the HIST_NSUB sub-histograms of nb counts at h (stride nb) into out (double) and zero them */
static void hist_flush(uint32_t *h, int64_t nb, double *out)
{
    for (int64_t b = 0; b < nb; b++)
        out[b] += (double)((uint64_t)h[b] + h[nb + b] + h[2 * nb + b] + h[3 * nb + b]);
    memset(h, 0, (size_t)(HIST_NSUB * nb) * sizeof(uint32_t));
}

/* ---- error model ----------------------------------------------------------------------------------
 * The quantizer maps x to the nearest of the grid points g0 + k*s, k = 0..L (clamping outside).  For
 * data spread uniformly inside each histogram bin, the squared error of a bin [a, b) holding n values is
 * n * (F(b) - F(a)) / (b - a) with F the antiderivative of (x - q(x))^2, in closed form below. */
/* hist_F without branches (the lanes of hist_sq_error run it side by side): u = (x - g0) / s clamped to
 * [0, L + 1] (only used inside the grid), floor(u) exact there; the three cases selected at the end */
QC_INLINE double hist_F(double x, double g0, double gl, double s3, double inv_s, double L)
{
    double d0 = x - g0, dl = x - gl;
    double below = d0 * d0 * d0 * (1.0 / 3.0);
    double above = s3 * L * (1.0 / 12.0) + dl * dl * dl * (1.0 / 3.0);
    double u = d0 * inv_s;
    u = u > 0.0 ? u : 0.0;
    u = u < L + 1.0 ? u : L + 1.0;
    double fl = __builtin_floor(u), f = u - fl, g = f - 1.0;
    double h = f <= 0.5 ? f * f * f * (1.0 / 3.0) : 1.0 / 24.0 + (g * g * g + 0.125) * (1.0 / 3.0);
    double inside = s3 * (fl * (1.0 / 12.0) + h);  /* s^3 * integral_0^u (t - round(t))^2 dt */
    return x <= g0 ? below : (x >= gl ? above : inside);
}

/* total squared error on grid (g0, s, L) of a compacted histogram: cnt[j] values in bin idx[j], bin i
 * being [lo + i*w, lo + (i+1)*w); entries with cnt 0 are padding.  HIST_SQ_LANES partial sums (added in a
 * fixed order, so every copy gives the same result), which vectorize without reassociation. */
#define HIST_SQ_LANES 8
QC_INLINE double hist_sq_error_body(const int64_t *restrict idx, const double *restrict cnt, int64_t m, double lo,
                                    double w, double g0, double s, double L)
{
    if (!(s > 0.0)) {  /* a single grid point */
        s = 1.0;
        L = 0.0;
    }
    double gl = g0 + L * s, s3 = s * s * s, inv_s = 1.0 / s;
    double acc[HIST_SQ_LANES] = {0.0};
    int64_t j = 0;
    for (; j + HIST_SQ_LANES <= m; j += HIST_SQ_LANES) {
        for (int k = 0; k < HIST_SQ_LANES; k++) {
            double n = cnt[j + k];
            double a = lo + (double)idx[j + k] * w, b = a + w;
            double e = n * (hist_F(b, g0, gl, s3, inv_s, L) - hist_F(a, g0, gl, s3, inv_s, L));
            acc[k] += n != 0.0 ? e : 0.0;
        }
    }
    for (int k = 0; j < m; j++, k++) {
        double n = cnt[j];
        double a = lo + (double)idx[j] * w, b = a + w;
        double e = n * (hist_F(b, g0, gl, s3, inv_s, L) - hist_F(a, g0, gl, s3, inv_s, L));
        acc[k] += n != 0.0 ? e : 0.0;
    }
    double tot = 0.0;
    for (int k = 0; k < HIST_SQ_LANES; k++) tot += acc[k];
    return tot / w;
}

typedef double (*hist_sq_error_t)(const int64_t *, const double *, int64_t, double, double, double, double, double);
#define HIST_DEFINE_SQ(SFX, ATTR)                                                                           \
    ATTR static double hist_sq_error_##SFX(const int64_t *idx, const double *cnt, int64_t m, double lo,      \
                                           double w, double g0, double s, double L)                         \
    { return hist_sq_error_body(idx, cnt, m, lo, w, g0, s, L); }
HIST_DEFINE_SQ(baseline, )
#if QC_X86_DISPATCH
HIST_DEFINE_SQ(avx2, __attribute__((target("avx2,fma"))))
HIST_DEFINE_SQ(avx512, __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"))))
#endif
static hist_sq_error_t hist_sq_error = hist_sq_error_baseline;

/* KL divergence (TensorRT / ONNX Runtime entropy calibration) of clipping histogram h to bins [s, e)
 * and quantizing those bins to nq levels.  P: h[s:e] with the mass outside added to its end bins;
 * Q: each of nq chunks of h[s:e] spread evenly over the bins of the chunk where P is nonzero. */
static double hist_kl(const double *h, int64_t nb, int64_t s, int64_t e, int64_t nq)
{
    int64_t n = e - s;
    if (n <= 0 || nq <= 0) return HUGE_VAL;
    double left = 0.0, right = 0.0, inside = 0.0;
    for (int64_t i = 0; i < s; i++) left += h[i];
    for (int64_t i = e; i < nb; i++) right += h[i];
    for (int64_t i = s; i < e; i++) inside += h[i];
    double ptot = left + right + inside;
    if (ptot <= 0.0) return 0.0;
    if (inside <= 0.0) return HUGE_VAL;
    double kl = 0.0;
    const double eps = 1e-4;  /* count given to a Q bin that is empty where P is not (smoothing) */
    for (int64_t q = 0; q < nq; q++) {
        int64_t j0 = s + (q * n) / nq, j1 = s + ((q + 1) * n) / nq;
        if (j1 <= j0) continue;
        double csum = 0.0;
        int64_t nz = 0;
        for (int64_t j = j0; j < j1; j++) {
            double p = h[j] + (j == s ? left : 0.0) + (j == e - 1 ? right : 0.0);
            csum += h[j];
            nz += p > 0.0;
        }
        if (nz == 0) continue;
        double qv = csum / (double)nz;
        if (qv < eps) qv = eps;
        qv /= inside;
        for (int64_t j = j0; j < j1; j++) {
            double p = h[j] + (j == s ? left : 0.0) + (j == e - 1 ? right : 0.0);
            if (p > 0.0) {
                p /= ptot;
                kl += p * log(p / qv);
            }
        }
    }
    return kl;
}

/* use the copy of ``level`` (a QCORE_ISA_* value; clipped to what the CPU runs and to the copies there are);
 * returns the level of the copy in use */
static int hist_select_isa(int level)
{
    int top = qc_cpu_level();
    if (level > top) level = top;
    if (level < 0) level = 0;
#if QC_X86_DISPATCH
    if (level >= QCORE_ISA_AVX512) {
        hist_count_rows = hist_count_rows_avx512;
        hist_count_checked = hist_count_checked_avx512;
        hist_sq_error = hist_sq_error_avx512;
        return QCORE_ISA_AVX512;
    }
    if (level == QCORE_ISA_AVX2) {
        hist_count_rows = hist_count_rows_avx2;
        hist_count_checked = hist_count_checked_avx2;
        hist_sq_error = hist_sq_error_avx2;
        return QCORE_ISA_AVX2;
    }
#endif
    hist_count_rows = hist_count_rows_baseline;
    hist_count_checked = hist_count_checked_baseline;
    hist_sq_error = hist_sq_error_baseline;
    return QCORE_ISA_BASELINE;
}

#endif
