/* C helpers of qcore_plugins._hist: the one histogram implementation of qcore's C code.
 *
 * Raw-pointer loops called from the prange bodies in hist.pyx (GIL released).  No allocation happens here.
 *
 * * one binning formula, hist_bin: bin = trunc(((double)v - lo) * inv_w) clamped to [0, nb - 1] (NaN -> 0,
 *   values beyond either end -> the end bins), in float64 so tiny and huge ranges bin exactly as the numpy
 *   reference (qcore/kernels/reference.py ``bins``);
 * * one counting routine, hist_count_run_body (hist_count_rows: runs at a stride): a contiguous run, bin indices of a block of HIST_BLOCK values
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

/* the binning formula (nb >= 1): NaN -> 0, below the range -> 0, above -> nb - 1 */
QC_INLINE int32_t hist_bin(float v, double lo, double inv_w, int32_t nb)
{
    double t = ((double)v - lo) * inv_w;
    t = t > -1.0 ? t : -1.0; /* NaN -> -1: clamp before converting, so nothing indexes outside [0, nb) */
    t = t < (double)nb ? t : (double)nb;
    int32_t b = (int32_t)t; /* truncation, in [-1, nb] */
    b = b > 0 ? b : 0;
    return b < nb - 1 ? b : nb - 1;
}

/* counts of x[0..n) into h: sub-histogram k at h + k * hstride (hstride 0: one histogram) */
QC_INLINE void hist_count_run_body(const float *restrict x, int64_t n, double lo, double inv_w, int32_t nb,
                                   uint32_t *h, int64_t hstride)
{
    int32_t idx[HIST_BLOCK];
    uint32_t *h0 = h, *h1 = h + hstride, *h2 = h + 2 * hstride, *h3 = h + 3 * hstride;
    for (int64_t s = 0; s < n; s += HIST_BLOCK) {
        int m = (int)(n - s < HIST_BLOCK ? n - s : HIST_BLOCK);
        const float *xs = x + s;
        for (int i = 0; i < m; i++) idx[i] = hist_bin(xs[i], lo, inv_w, nb);
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            h0[idx[i]]++;
            h1[idx[i + 1]]++;
            h2[idx[i + 2]]++;
            h3[idx[i + 3]]++;
        }
        for (; i < m; i++) h0[idx[i]]++;
    }
}

/* the per-tensor pass: min/max of x[0..n) folded into *mn, *mx block by block (qcore_minmax.h), and the
 * counts into h (HIST_NSUB sub-histograms of nb) while every block so far is finite and inside
 * [lo_limit, hi_limit].  Returns 0 if all were (counts complete), 1 if a block was not (counting stopped
 * there: the partial counts are to be discarded; the min/max still cover all of x), 2 on NaN/Inf.
 * *stop (shared by the threads of one call) is raised on the first failure so the others stop counting too. */
QC_INLINE int hist_count_checked_body(const float *restrict x, int64_t n, double lo, double inv_w, int32_t nb,
                                      uint32_t *h, double lo_limit, double hi_limit, float *mn, float *mx,
                                      volatile int *stop)
{
    int state = *stop ? 1 : 0;
    float l = *mn, u = *mx;
    for (int64_t s = 0; s < n; s += HIST_BLOCK) {
        int64_t m = n - s < HIST_BLOCK ? n - s : HIST_BLOCK;
        float a, b;
        qc_minmax_run_body(x + s, m, &a, &b);
        if (!(a - a == 0.0f) || !(b - b == 0.0f)) { /* NaN or Inf: nothing else matters */
            *stop = 1;
            return 2;
        }
        l = a < l ? a : l;
        u = b > u ? b : u;
        if (state == 0) {
            if ((double)a < lo_limit || (double)b > hi_limit || *stop) {
                state = 1;
                *stop = 1;
            } else {
                hist_count_run_body(x + s, m, lo, inv_w, nb, h, nb);
            }
        }
    }
    *mn = l;
    *mx = u;
    return state;
}

typedef void (*hist_count_rows_t)(const float *, int64_t, int64_t, int64_t, double, double, int32_t, uint32_t *,
                                  int64_t);
typedef int (*hist_count_checked_t)(const float *, int64_t, double, double, int32_t, uint32_t *, double, double,
                                    float *, float *, volatile int *);

#define HIST_DEFINE_VARIANT(SFX, ATTR)                                                                      \
    ATTR static void hist_count_rows_##SFX(const float *x, int64_t rows, int64_t len, int64_t xstride,     \
                                           double lo, double inv_w, int32_t nb, uint32_t *h, int64_t hs)   \
    {                                                                                                      \
        for (int64_t r = 0; r < rows; r++) hist_count_run_body(x + r * xstride, len, lo, inv_w, nb, h, hs); \
    }                                                                                                      \
    ATTR static int hist_count_checked_##SFX(const float *x, int64_t n, double lo, double inv_w, int32_t nb,\
                                             uint32_t *h, double lol, double hil, float *mn, float *mx,    \
                                             volatile int *stop)                                           \
    { return hist_count_checked_body(x, n, lo, inv_w, nb, h, lol, hil, mn, mx, stop); }

HIST_DEFINE_VARIANT(baseline, )
#if QC_X86_DISPATCH
HIST_DEFINE_VARIANT(avx2, __attribute__((target("avx2"))))
HIST_DEFINE_VARIANT(avx512, __attribute__((target("avx2,avx512f,avx512bw,avx512vl"))))
#endif

static hist_count_rows_t hist_count_rows = hist_count_rows_baseline;
static hist_count_checked_t hist_count_checked = hist_count_checked_baseline;

/* use copy ``level`` (0 baseline, 1 AVX2, 2 AVX-512; clipped to what the CPU runs); returns the level in use */
static int hist_select_isa(int level)
{
    int top = qc_cpu_level();
    if (level > top) level = top;
    if (level < 0) level = 0;
#if QC_X86_DISPATCH
    if (level == 2) { hist_count_rows = hist_count_rows_avx512; hist_count_checked = hist_count_checked_avx512; return 2; }
    if (level == 1) { hist_count_rows = hist_count_rows_avx2; hist_count_checked = hist_count_checked_avx2; return 1; }
#endif
    hist_count_rows = hist_count_rows_baseline;
    hist_count_checked = hist_count_checked_baseline;
    return 0;
}

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
