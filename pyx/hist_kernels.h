/* C helpers of qcore_plugins._hist: streaming-histogram calibration kernels.
 *
 * Raw-pointer loops called from the prange bodies in hist.pyx (GIL released).  Inputs are finite
 * except where a function says it checks.  No allocation happens here.
 */
#ifndef QCORE_HIST_KERNELS_H
#define QCORE_HIST_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qcore_minmax.h"


/* min/max reductions only vectorize when gcc may ignore NaN and signed zeros; NaN/Inf are detected
 * separately with integer bit tests, which those flags cannot remove. */
#if defined(__GNUC__) && !defined(__clang__)
#define HIST_REDUCE_ATTR __attribute__((optimize("finite-math-only", "no-signed-zeros")))
#else
#define HIST_REDUCE_ATTR
#endif

/* min/max of a contiguous run folded into lo/hi; nonzero on NaN/Inf.  The reduction is qcore_minmax.h's (the
 * one min/max in C), in a baseline and an AVX2 copy chosen by hist_select_isa. */
#define HIST_MINMAX_BODY                                                             \
    float a, b;                                                                      \
    qc_minmax_run_body(x, n, &a, &b);                                                \
    if (!(a - a == 0.0f) || !(b - b == 0.0f)) return 1; /* NaN or Inf */             \
    *lo = a < *lo ? a : *lo;                                                         \
    *hi = b > *hi ? b : *hi;                                                         \
    return 0;

static int hist_minmax_generic(const float *x, int64_t n, float *lo, float *hi)
{
    HIST_MINMAX_BODY
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HIST_HAVE_AVX2 1
static __attribute__((target("avx2"))) int hist_minmax_avx2(const float *x, int64_t n, float *lo, float *hi)
{
    HIST_MINMAX_BODY
}
#endif

static int (*hist_minmax_fn)(const float *, int64_t, float *, float *) = hist_minmax_generic;

/* minmax of a contiguous run, folded into lo/hi; returns nonzero on NaN/Inf */
static int hist_minmax_run(const float *x, int64_t n, float *lo, float *hi)
{
    return hist_minmax_fn(x, n, lo, hi);
}

static inline int64_t hist_bin(float v, double lo, double inv_w, int64_t nb)
{
    double t = ((double)v - lo) * inv_w;
    /* clamp before converting: NaN and values beyond int64 (Inf) must never index outside [0, nb) */
    if (!(t >= 0.0)) return 0;
    if (t >= (double)(nb - 1)) return nb - 1;
    return (int64_t)t;
}

/* count n contiguous values into four interleaved sub-histograms h[0..4*nb) (breaks the store-to-load
 * dependency when consecutive values fall in the same bin) */
static void hist_count_run4(const float *x, int64_t n, double lo, double inv_w, int64_t nb, uint32_t *h)
{
    int64_t i = 0;
    uint32_t *h0 = h, *h1 = h + nb, *h2 = h + 2 * nb, *h3 = h + 3 * nb;
    for (; i + 4 <= n; i += 4) {
        int64_t b0 = hist_bin(x[i], lo, inv_w, nb);
        int64_t b1 = hist_bin(x[i + 1], lo, inv_w, nb);
        int64_t b2 = hist_bin(x[i + 2], lo, inv_w, nb);
        int64_t b3 = hist_bin(x[i + 3], lo, inv_w, nb);
        h0[b0]++;
        h1[b1]++;
        h2[b2]++;
        h3[b3]++;
    }
    for (; i < n; i++)
        h0[hist_bin(x[i], lo, inv_w, nb)]++;
}

/* count `rows` runs of `len` values, run r starting at x + r*stride, into h (4*nb sub-histograms) */
static void hist_count_rows4(const float *x, int64_t rows, int64_t len, int64_t stride,
                             double lo, double inv_w, int64_t nb, uint32_t *h)
{
    if (len == 1) {
        int64_t r = 0;
        uint32_t *h0 = h, *h1 = h + nb;
        for (; r + 2 <= rows; r += 2) {
            h0[hist_bin(x[r * stride], lo, inv_w, nb)]++;
            h1[hist_bin(x[(r + 1) * stride], lo, inv_w, nb)]++;
        }
        for (; r < rows; r++)
            h0[hist_bin(x[r * stride], lo, inv_w, nb)]++;
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        hist_count_run4(x + r * stride, len, lo, inv_w, nb, h);
}

/* h4: 4 sub-histograms of nb counts; adds their sum into out (double) and zeroes h4 */
static void hist_flush4(uint32_t *h4, int64_t nb, double *out)
{
    for (int64_t b = 0; b < nb; b++) {
        out[b] += (double)((uint64_t)h4[b] + h4[nb + b] + h4[2 * nb + b] + h4[3 * nb + b]);
    }
    memset(h4, 0, (size_t)(4 * nb) * sizeof(uint32_t));
}

/* ---- fused, vectorizable counting (per tensor) -------------------------------------------------------
 * Bin indices of a block are computed in float32 SIMD (b = (int)((v - lo) * inv_w), clamped to [0, nb-1] as
 * integers: NaN/Inf/huge values convert to INT_MIN and land in bin 0, never out of bounds), together with the
 * block's min/max and a NaN/Inf flag (integer bit test: immune to the finite-math flag the min/max reduction
 * needs); the increments follow, into 4 interleaved sub-histograms.  An AVX2 copy is chosen at run time. */
#define HIST_BLOCK 256

#define HIST_INDEX_BODY                                                              \
    float l = *mn, h = *mx;                                                          \
    const uint32_t *u = (const uint32_t *)x;                                         \
    uint32_t bad = 0;                                                                \
    for (int i = 0; i < m; i++) {                                                    \
        float v = x[i];                                                              \
        l = v < l ? v : l;                                                           \
        h = v > h ? v : h;                                                           \
        bad |= ((u[i] & 0x7f800000u) == 0x7f800000u);                                \
        int32_t b = (int32_t)((v - lo) * inv_w);                                     \
        b = b < 0 ? 0 : b;                                                           \
        b = b > nb1 ? nb1 : b;                                                       \
        idx[i] = b;                                                                  \
    }                                                                                \
    *mn = l;                                                                         \
    *mx = h;                                                                         \
    return (int)bad;

static HIST_REDUCE_ATTR int hist_index_generic(const float *x, int m, float lo, float inv_w, int32_t nb1,
                                               int32_t *idx, float *mn, float *mx)
{
    HIST_INDEX_BODY
}

#ifdef HIST_HAVE_AVX2
static HIST_REDUCE_ATTR __attribute__((target("avx2"))) int hist_index_avx2(
    const float *x, int m, float lo, float inv_w, int32_t nb1, int32_t *idx, float *mn, float *mx)
{
    HIST_INDEX_BODY
}
#endif

typedef int (*hist_index_fn)(const float *, int, float, float, int32_t, int32_t *, float *, float *);

static hist_index_fn hist_index_impl = hist_index_generic;

/* 0: baseline, 1: AVX2 copies of the min/max and of the fused counting loop; clipped to what the CPU runs.
 * Returns the level in use.  Set at import (QCORE_ISA, qcore/isa.py) and by select_isa (tests). */
static int hist_cpu_level(void)
{
#ifdef HIST_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

static int hist_select_isa(int level)
{
    if (level > hist_cpu_level()) level = hist_cpu_level();
#ifdef HIST_HAVE_AVX2
    if (level >= 1) {
        hist_index_impl = hist_index_avx2;
        hist_minmax_fn = hist_minmax_avx2;
        return 1;
    }
#endif
    hist_index_impl = hist_index_generic;
    hist_minmax_fn = hist_minmax_generic;
    return 0;
}

/* count n contiguous values into h (4 sub-histograms of nb), folding their min and max into mn, mx;
 * returns nonzero if any value is NaN/Inf */
static int hist_count_fused(const float *x, int64_t n, float lo, float inv_w, int64_t nb, uint32_t *h,
                            float *mn, float *mx)
{
    hist_index_fn fn = hist_index_impl;
    int32_t idx[HIST_BLOCK];
    int bad = 0;
    uint32_t *h0 = h, *h1 = h + nb, *h2 = h + 2 * nb, *h3 = h + 3 * nb;
    for (int64_t s = 0; s < n; s += HIST_BLOCK) {
        int m = (int)(n - s < HIST_BLOCK ? n - s : HIST_BLOCK);
        bad |= fn(x + s, m, lo, inv_w, (int32_t)(nb - 1), idx, mn, mx);
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            h0[idx[i]]++;
            h1[idx[i + 1]]++;
            h2[idx[i + 2]]++;
            h3[idx[i + 3]]++;
        }
        for (; i < m; i++) h0[idx[i]]++;
    }
    return bad;
}

/* ---- error model ----------------------------------------------------------------------------------
 * The quantizer maps x to the nearest of the grid points g0 + k*s, k = 0..L (clamping outside).  For
 * data spread uniformly inside each histogram bin, the squared error of a bin [a, b) holding n values is
 * n * (F(b) - F(a)) / (b - a) with F the antiderivative of (x - q(x))^2, in closed form below. */
static inline double hist_saw(double u)   /* integral_0^u (t - round(t))^2 dt, u >= 0 */
{
    double fl = (double)(int64_t)u, f = u - fl, h;  /* u >= 0: truncation is floor (no libm call) */
    if (f <= 0.5) h = f * f * f * (1.0 / 3.0);
    else { double g = f - 1.0; h = 1.0 / 24.0 + (g * g * g + 0.125) * (1.0 / 3.0); }
    return fl * (1.0 / 12.0) + h;
}

/* antiderivative of the squared error at x; grid g0 + k*s (k = 0..L), gl = g0 + L*s, s3 = s^3, inv_s = 1/s */
static inline double hist_F(double x, double g0, double gl, double s3, double inv_s, double L)
{
    if (x <= g0) { double d = x - g0; return d * d * d * (1.0 / 3.0); }
    if (x >= gl) { double d = x - gl; return s3 * L * (1.0 / 12.0) + d * d * d * (1.0 / 3.0); }
    return s3 * hist_saw((x - g0) * inv_s);
}

/* total squared error on grid (g0, s, L) of a compacted histogram: cnt[j] values in bin idx[j], bin i
 * being [lo + i*w, lo + (i+1)*w); entries with cnt 0 are padding */
static double hist_sq_error(const int64_t *idx, const double *cnt, int64_t m, double lo, double w,
                            double g0, double s, double L)
{
    double tot = 0.0;
    if (!(s > 0.0)) {  /* a single grid point */
        s = 1.0;
        L = 0.0;
    }
    double gl = g0 + L * s, s3 = s * s * s, inv_s = 1.0 / s;
    int64_t prev = -2;
    double fprev = 0.0;
    for (int64_t j = 0; j < m; j++) {
        double n = cnt[j];
        if (n == 0.0) continue;
        double a = lo + (double)idx[j] * w, b = a + w;
        double fa = idx[j] == prev + 1 ? fprev : hist_F(a, g0, gl, s3, inv_s, L);  /* adjacent bins share an edge */
        double fb = hist_F(b, g0, gl, s3, inv_s, L);
        tot += n * (fb - fa);
        prev = idx[j];
        fprev = fb;
    }
    return tot / w;
}

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

#endif
