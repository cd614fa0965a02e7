/* One-dimensional k-means of one row (a group of values, or a channel's weighted histogram points), in C.
 *
 * The numerics are those of the numpy reference, qcore/kernels/kmeans.py, bit for bit: same float32 midpoints,
 * float64 prefix sums accumulated in the same order, same relocation of empty clusters, same stopping rule.
 * setup.py compiles with -ffp-contract=off, so no multiply-add is fused behind our back.
 *
 * A row is sorted first (radix sort of order-preserving integer keys; -0.0 is made 0.0), so a cluster is a
 * run [start, end) of the sorted values and its weight, sum and sum of squares are differences of prefix
 * sums.  A Lloyd iteration then costs K-1 binary searches and K divisions instead of O(n log K).
 * Every row is independent, so the result does not depend on the thread that ran it.
 */
#ifndef QCORE_KMEANS_KERNELS_H
#define QCORE_KMEANS_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qcore_isa.h"

/* rows of at most 8 * QC_KM_BLOCKS values locate a midpoint in two vectorizable counting steps */
#define QC_KM_BLOCKS 32
/* rows of at most this many values are sorted by a sorting network where the CPU has AVX2 */
#define QC_KM_NET_MAX 256

typedef struct {
    int64_t n;
    int K;
    uint32_t *keys, *tmp; /* n each: sort keys and the radix sort's second buffer */
    float *xs;            /* n + 16: the sorted row, then +inf (the block count may read a block past n) */
    float *blk;           /* QC_KM_BLOCKS: the last value of each block of 8 sorted values (+inf after) */
    double *W, *S1, *S2;  /* n + 1 each: prefix sums of w, w*x, w*x*x */
    double *cdf, *pts, *wv; /* n each: weighted rows' start, and their weights */
    float *c, *upd, *t;   /* K each (t: 2K, the split codebook) */
    int64_t *pos;         /* K: count of values <= each midpoint */
    int64_t *cst, *cen;   /* K each: each cluster's run in the previous iteration (cen -1: empty) */
    float *mean;          /* K: its mean then */
    int64_t bins;         /* histogram rows (qc_km_fit_row): per bin count, sum, min, max */
    int64_t *bcnt;
    double *bsum, *bw;
    float *bmin, *bmax, *bpts;
} qc_km_scratch;

static void qc_km_free(qc_km_scratch *s) {
    if (!s) return;
    free(s->keys); free(s->tmp); free(s->xs); free(s->blk); free(s->W); free(s->S1); free(s->S2); free(s->cdf); free(s->pts); free(s->wv);
    free(s->c); free(s->upd); free(s->t); free(s->pos); free(s->cst); free(s->cen); free(s->mean);
    free(s->bcnt); free(s->bsum); free(s->bw); free(s->bmin); free(s->bmax); free(s->bpts);
    free(s);
}

static qc_km_scratch *qc_km_alloc(int64_t n, int K) {
    qc_km_scratch *s = (qc_km_scratch *)calloc(1, sizeof(qc_km_scratch));
    if (!s) return NULL;
    s->n = n;
    s->K = K;
    s->keys = (uint32_t *)malloc((size_t)(n > QC_KM_NET_MAX ? n : QC_KM_NET_MAX) * sizeof(uint32_t));
    s->tmp = (uint32_t *)malloc((size_t)n * sizeof(uint32_t));
    s->xs = (float *)malloc((size_t)(n + 16) * sizeof(float));
    s->blk = (float *)malloc(QC_KM_BLOCKS * sizeof(float));
    s->W = (double *)malloc((size_t)(n + 1) * sizeof(double));
    s->S1 = (double *)malloc((size_t)(n + 1) * sizeof(double));
    s->S2 = (double *)malloc((size_t)(n + 1) * sizeof(double));
    s->cdf = (double *)malloc((size_t)n * sizeof(double));
    s->pts = (double *)malloc((size_t)n * sizeof(double));
    s->wv = (double *)malloc((size_t)n * sizeof(double));
    s->c = (float *)malloc((size_t)K * sizeof(float));
    s->upd = (float *)malloc((size_t)K * sizeof(float));
    s->t = (float *)malloc((size_t)(2 * K) * sizeof(float));
    s->pos = (int64_t *)malloc((size_t)K * sizeof(int64_t));
    s->cst = (int64_t *)malloc((size_t)K * sizeof(int64_t));
    s->cen = (int64_t *)malloc((size_t)K * sizeof(int64_t));
    s->mean = (float *)malloc((size_t)K * sizeof(float));
    if (!s->keys || !s->tmp || !s->xs || !s->blk || !s->W || !s->S1 || !s->S2 || !s->cdf || !s->pts || !s->wv || !s->c || !s->upd ||
        !s->t || !s->pos || !s->cst || !s->cen || !s->mean) {
        qc_km_free(s);
        return NULL;
    }
    return s;
}

/* order-preserving keys of finite float32 values; -0.0 takes the key of 0.0 */
static inline uint32_t qc_km_key(float f) {
    uint32_t u;
    f = f + 0.0f;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float qc_km_unkey(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* sort n keys ascending: insertion sort when short, else LSD radix with 8-bit digits (a pass is skipped when
 * every key has the same digit there, as the sign and exponent bytes of a group often do) */
static void qc_km_sort_keys(uint32_t *a, uint32_t *tmp, int64_t n) {
    if (n <= 32) {
        for (int64_t i = 1; i < n; i++) {
            uint32_t v = a[i];
            int64_t j = i;
            while (j > 0 && a[j - 1] > v) { a[j] = a[j - 1]; j--; }
            a[j] = v;
        }
        return;
    }
    uint32_t cnt[4][256];
    memset(cnt, 0, sizeof(cnt));
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = a[i];
        cnt[0][k & 255]++;
        cnt[1][(k >> 8) & 255]++;
        cnt[2][(k >> 16) & 255]++;
        cnt[3][k >> 24]++;
    }
    uint32_t *src = a, *dst = tmp;
    for (int p = 0; p < 4; p++) {
        uint32_t *c = cnt[p];
        int shift = 8 * p;
        if (c[(src[0] >> shift) & 255] == (uint32_t)n) continue;
        uint32_t run = 0;
        for (int b = 0; b < 256; b++) { uint32_t v = c[b]; c[b] = run; run += v; }
        for (int64_t i = 0; i < n; i++) { uint32_t k = src[i]; dst[c[(k >> shift) & 255]++] = k; }
        uint32_t *sw = src; src = dst; dst = sw;
    }
    if (src != a) memcpy(a, src, (size_t)n * sizeof(uint32_t));
}

/* Bitonic sorting network on n <= QC_KM_NET_MAX keys padded with 0xFFFFFFFF to N = L * R (a power of two):
 * R vectors of L lanes, compare-exchanges between whole vectors (distance >= L) or, within a vector, with
 * the lanes at distance j (a shuffle).  Written with GCC vector extensions and compiled for AVX2 (8 lanes)
 * and AVX-512 (16 lanes); about 3x faster than the radix sort on 128 keys.  The sorted keys are the same
 * whichever way they were sorted. */
#define QC_KM_BITONIC(VU, VI, L, LANES)                                                                   \
    VU v[QC_KM_NET_MAX / L];                                                                              \
    for (int r = 0; r < R; r++) memcpy(&v[r], a + L * r, sizeof(VU));                                      \
    const VI lane = LANES;                                                                                \
    for (int k = 2; k <= L * R; k <<= 1) {                                                                \
        for (int j = k >> 1; j > 0; j >>= 1) {                                                            \
            if (j >= L) {                                                                                 \
                int dr = j / L;                                                                           \
                for (int r = 0; r < R; r++) {                                                             \
                    int p = r ^ dr;                                                                       \
                    if (p < r) continue;                                                                  \
                    VU x = v[r], y = v[p];                                                                \
                    VU lt = (VU)(x < y);                                                                  \
                    VU lo = (x & lt) | (y & ~lt), hi = (y & lt) | (x & ~lt);                              \
                    if (((L * r) & k) == 0) { v[r] = lo; v[p] = hi; } else { v[r] = hi; v[p] = lo; }      \
                }                                                                                         \
            } else {                                                                                      \
                VI idx = lane ^ j;                                                                        \
                VU up = (VU)((lane & j) != 0);                                                            \
                for (int r = 0; r < R; r++) {                                                             \
                    VU desc = k >= L ? (((L * r) & k) ? (VU){0} - 1 : (VU){0}) : (VU)((lane & k) != 0);   \
                    VU x = v[r];                                                                          \
                    VU q = __builtin_shuffle(x, (VU)idx);                                                 \
                    VU lt = (VU)(x < q);                                                                  \
                    VU lo = (x & lt) | (q & ~lt), hi = (q & lt) | (x & ~lt);                              \
                    VU tm = up ^ desc;                                                                    \
                    v[r] = (hi & tm) | (lo & ~tm);                                                        \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    for (int r = 0; r < R; r++) memcpy(a + L * r, &v[r], sizeof(VU));

#if QC_X86_DISPATCH
typedef uint32_t qc_km_v16u __attribute__((vector_size(64)));
typedef int32_t qc_km_v16i __attribute__((vector_size(64)));
typedef uint32_t qc_km_v8u __attribute__((vector_size(32)));
typedef int32_t qc_km_v8i __attribute__((vector_size(32)));
QCORE_TARGET_AVX512 static void qc_km_bitonic_avx512(uint32_t *a, int R) {
    QC_KM_BITONIC(qc_km_v16u, qc_km_v16i, 16, ((qc_km_v16i){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}))
}
QCORE_TARGET_AVX2 static void qc_km_bitonic_avx2(uint32_t *a, int R) {
    QC_KM_BITONIC(qc_km_v8u, qc_km_v8i, 8, ((qc_km_v8i){0, 1, 2, 3, 4, 5, 6, 7}))
}
#endif

/* the instruction-set copy in use: 0 baseline (radix sort only), 1 avx2, 2 avx512 */
static int qc_km_isa = 0;

/* run the copy of `level` (a QCORE_ISA_* value the CPU runs, see qcore/isa.py); returns the copy in use */
static int qc_km_select_isa(int level) {
#if QC_X86_DISPATCH
    qc_km_isa = level >= QCORE_ISA_AVX512 ? 2 : level >= QCORE_ISA_AVX2 ? 1 : 0;
#else
    qc_km_isa = 0;
#endif
    return qc_km_isa == 2 ? QCORE_ISA_AVX512 : qc_km_isa == 1 ? QCORE_ISA_AVX2 : QCORE_ISA_BASELINE;
}

/* sort n keys (a has room for max(n, QC_KM_NET_MAX)) */
static void qc_km_sort(uint32_t *a, uint32_t *tmp, int64_t n) {
#if QC_X86_DISPATCH
    if (qc_km_isa >= 1 && n > 32 && n <= QC_KM_NET_MAX) {
        int L = qc_km_isa >= 2 ? 16 : 8;
        int64_t N = L;
        while (N < n) N <<= 1;
        for (int64_t i = n; i < N; i++) a[i] = 0xFFFFFFFFu;
        if (qc_km_isa >= 2) qc_km_bitonic_avx512(a, (int)(N / 16));
        else qc_km_bitonic_avx2(a, (int)(N / 8));
        return;
    }
#endif
    qc_km_sort_keys(a, tmp, n);
}

/* a few floats ascending (codebooks: K entries), values already free of -0.0 */
static inline void qc_km_sort_small(float *v, int m) {
    for (int i = 1; i < m; i++) {
        float x = v[i];
        int j = i;
        while (j > 0 && v[j - 1] > x) { v[j] = v[j - 1]; j--; }
        v[j] = x;
    }
}

/* count of sorted x[0..n) that are <= m: a binary search without branches (conditional moves), since the
 * comparisons are unpredictable; several of them (one per boundary) overlap in the pipeline */
static inline int64_t qc_km_upper(const float *x, int64_t n, float m) {
    const float *b = x;
    int64_t len = n;
    while (len > 1) {
        int64_t half = len >> 1;
        b += (b[half] <= m) ? half : 0;
        len -= half;
    }
    return (b - x) + (len > 0 && b[0] <= m);
}

/* after s->xs[0..n) is set: its +inf padding and the block index used by qc_km_count_le */
static void qc_km_index(qc_km_scratch *s, int64_t n) {
    for (int i = 0; i < 16; i++) s->xs[n + i] = INFINITY;
    if (n > 8 * QC_KM_BLOCKS) return;
    int64_t nb = (n + 7) / 8;
    for (int64_t b = 0; b < QC_KM_BLOCKS; b++) s->blk[b] = b < nb ? s->xs[(8 * b + 7 < n ? 8 * b + 7 : n - 1)] : INFINITY;
}

/* count of the sorted row's values <= m: short rows count the blocks whose last value is <= m, then the
 * values <= m in the next block (fixed-length loops the compiler vectorizes, no unpredictable branches);
 * long rows search */
static inline int64_t qc_km_count_le(const qc_km_scratch *s, int64_t n, float m) {
    if (n > 8 * QC_KM_BLOCKS) return qc_km_upper(s->xs, n, m);
    int b = 0;
    for (int k = 0; k < QC_KM_BLOCKS; k++) b += s->blk[k] <= m;
    const float *x = s->xs + 8 * b;
    int c = 0;
    for (int k = 0; k < 8; k++) c += x[k] <= m;
    int64_t p = 8 * (int64_t)b + c;
    return p < n ? p : n;
}

/* the largest float32 <= m (so that, for float32 x, x <= m exactly when x <= the result) */
static inline float qc_km_f32_floor(double m) {
    float f = (float)m;
    if ((double)f > m) f = nextafterf(f, -INFINITY);
    return f;
}

/* float32 rounded to float16 (nearest, ties to even) and back; |f| > 65504 returned as it is */
static inline float qc_km_round_f16(float f) {
    float a = fabsf(f);
    if (!(a <= 65504.0f)) return f;
    if (a < 6.103515625e-05f) { /* below float16's smallest normal: a multiple of 2^-24 */
        volatile float big = 8388608.0f; /* 2^23: t + 2^23 - 2^23 rounds t (< 2^10) to an integer, ties to even */
        float t = a * 16777216.0f;
        float r = ((t + big) - big) * 5.9604644775390625e-08f;
        return copysignf(r, f);
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x0FFFu + ((u >> 13) & 1u); /* keep 10 mantissa bits, round half to even */
    u &= ~0x1FFFu;
    memcpy(&f, &u, 4);
    return f;
}

/* cube root with + - * / only: see cbrt() in qcore/kernels/kmeans.py */
static inline double qc_km_cbrt(double w) {
    if (!(w > 0)) return 0.0;
    uint64_t u;
    memcpy(&u, &w, 8);
    u = u / 3u + 0x2A9F7893782DA1CEull;
    double y;
    memcpy(&y, &u, 8);
    for (int i = 0; i < 5; i++) y = y - (y * y * y - w) / (3.0 * (y * y));
    return y;
}

/* prefix sums of w (NULL: 1), w*x and w*(x*x) over the sorted row, accumulated as numpy's cumsum does (the
 * first term taken as it is, so a -0.0 stays -0.0) */
static void qc_km_prefix(const float *x, const double *w, int64_t n, double *W, double *S1, double *S2) {
    double a = 0, b = 0, c = 0;
    W[0] = S1[0] = S2[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        double xd = (double)x[i];
        double wi = w ? w[i] : 1.0;
        double tb = w ? wi * xd : xd;
        double tc = w ? wi * (xd * xd) : xd * xd;
        if (i == 0) { a = wi; b = tb; c = tc; }
        else { a = w ? a + wi : (double)(i + 1); b = b + tb; c = c + tc; }
        W[i + 1] = a; S1[i + 1] = b; S2[i + 1] = c;
    }
}

/* Lloyd iterations on the sorted row s->xs[0..n) (prefix sums in s) from the sorted codebook c[0..K).
 * A cluster whose run [start, end) is the one it had in the previous iteration has the same mean: it is
 * reused instead of divided again (late iterations move only a few boundaries). */
static void qc_km_lloyd(qc_km_scratch *s, int64_t n, float *c, int K, int max_iter, double tol) {
    const float *x = s->xs;
    const double *W = s->W, *S1 = s->S1, *S2 = s->S2;
    float *upd = s->upd, *mean = s->mean;
    int64_t *pos = s->pos, *cst = s->cst, *cen = s->cen;
    for (int it = 0; it < max_iter; it++) {
        for (int j = 0; j < K - 1; j++) {
            float m = (float)(((double)c[j] + (double)c[j + 1]) * 0.5);
            int64_t p = pos[j];
            /* late iterations move few boundaries: keep the old position while it is still right */
            if (it == 0 || !((p == 0 || x[p - 1] <= m) && (p == n || x[p] > m))) pos[j] = qc_km_count_le(s, n, m);
        }
        int empty = -1;
        int64_t st = 0;
        for (int j = 0; j < K; j++) {
            int64_t en = j < K - 1 ? pos[j] : n;
            if (it == 0 || st != cst[j] || en != cen[j]) {
                double wt = W[en] - W[st];
                cst[j] = st;
                cen[j] = en;
                mean[j] = wt > 0 ? (float)((S1[en] - S1[st]) / wt) : 0.0f;
                if (!(wt > 0)) cen[j] = -1; /* empty: never reused */
            }
            if (cen[j] >= 0) {
                upd[j] = mean[j];
            } else {
                upd[j] = c[j];
                if (empty < 0) empty = j;
            }
            st = en;
        }
        if (empty >= 0) { /* the first empty entry moves to the far end of the worst cluster */
            int jw = 0;
            double best = 0;
            int64_t bst = 0, ben = 0;
            st = 0;
            for (int j = 0; j < K; j++) {
                int64_t en = j < K - 1 ? pos[j] : n;
                double wt = W[en] - W[st];
                double sse = -1.0;
                if (wt > 0) {
                    double sm = S1[en] - S1[st];
                    sse = (S2[en] - S2[st]) - sm * sm / wt;
                }
                if (j == 0 || sse > best) { best = sse; jw = j; bst = st; ben = en; }
                st = en;
            }
            if (best > 0) {
                float first = x[bst], last = x[ben - 1 > 0 ? ben - 1 : 0];
                float cn = upd[jw];
                upd[empty] = fabsf(first - cn) > fabsf(last - cn) ? first : last;
            }
            for (int j = 0; j < K; j++) upd[j] = upd[j] + 0.0f;
            qc_km_sort_small(upd, K);
        }
        /* without a relocation the means of consecutive runs of sorted values are already sorted */
        if (tol == 0) { /* the squared move is > 0 exactly when an entry moved: no sum to wait for */
            int moved = 0;
            for (int j = 0; j < K; j++) {
                moved |= upd[j] != c[j];
                c[j] = upd[j];
            }
            if (!moved) break;
        } else {
            double shift = 0;
            for (int j = 0; j < K; j++) {
                double d = (double)upd[j] - (double)c[j];
                shift += d * d;
                c[j] = upd[j];
            }
            if (!(shift > tol)) break;
        }
    }
}

/* squared error of the sorted row coded with the sorted codebook cb (nearest entry, a value on a midpoint
 * taking the lower one; midpoints exact in float64), from the prefix sums: per cluster
 * (S2 - S1*S1/W) + W*(S1/W - c)^2, summed over the clusters in order */
static double qc_km_sse(const qc_km_scratch *s, int64_t n, const float *cb, int K, const int64_t *hint) {
    const float *x = s->xs;
    double sse = 0;
    int64_t st = 0;
    for (int j = 0; j < K; j++) {
        int64_t en = n;
        if (j < K - 1) {
            double m = ((double)cb[j] + (double)cb[j + 1]) * 0.5;
            en = hint ? hint[j] : -1; /* Lloyd's last boundaries are usually right: checked, else counted */
            if (!(en >= 0 && en <= n && (en == 0 || (double)x[en - 1] <= m) && (en == n || (double)x[en] > m)))
                en = qc_km_count_le(s, n, qc_km_f32_floor(m));
        }
        double wt = s->W[en] - s->W[st];
        if (wt > 0) {
            double s1 = s->S1[en] - s->S1[st];
            double mean = s1 / wt;
            double d = mean - (double)cb[j];
            sse = sse + (((s->S2[en] - s->S2[st]) - s1 * mean) + wt * (d * d));
        }
        st = en;
    }
    return sse;
}

/* one group: out[0..K) = its codebook (see qcore/kernels/kmeans.py); returns 1 if a value is NaN/Inf, 2 if the
 * alternative codebook is not sorted (or holds NaN) */
static int qc_km_fit_group(const float *row, int64_t n, int K, int max_iter, const float *alt, int f16, float *out,
                           qc_km_scratch *s) {
    uint32_t bad = 0;
    int lloyd = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &row[i], 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
        s->keys[i] = qc_km_key(row[i]);
    }
    if (bad) return 1;
    qc_km_sort(s->keys, s->tmp, n);
    float *xs = s->xs;
    int64_t distinct = 1;
    xs[0] = qc_km_unkey(s->keys[0]);
    for (int64_t i = 1; i < n; i++) {
        xs[i] = qc_km_unkey(s->keys[i]);
        distinct += s->keys[i] != s->keys[i - 1];
    }
    qc_km_prefix(xs, NULL, n, s->W, s->S1, s->S2);
    qc_km_index(s, n);
    if (distinct <= K) { /* those values, padded by repeating the largest */
        int j = 0;
        out[0] = xs[0];
        for (int64_t i = 1; i < n; i++)
            if (s->keys[i] != s->keys[i - 1]) out[++j] = xs[i];
        for (j = j + 1; j < K; j++) out[j] = xs[n - 1];
    } else {
        lloyd = 1;
        float *c = s->t;
        c[0] = (float)(s->S1[n] / s->W[n]);
        float eps = (float)(1e-3 * ((double)xs[n - 1] - (double)xs[0]));
        int m = 1;
        while (m < K) { /* split every entry in two, then a few Lloyd steps (all of them at the end) */
            for (int j = m - 1; j >= 0; j--) {
                float v = c[j];
                c[2 * j] = (v - eps) + 0.0f;
                c[2 * j + 1] = (v + eps) + 0.0f;
            }
            m *= 2;
            qc_km_sort_small(c, m);
            qc_km_lloyd(s, n, c, m, m == K ? max_iter : 8, 0.0);
        }
        memcpy(out, c, (size_t)K * sizeof(float));
    }
    if (f16)
        for (int j = 0; j < K; j++) out[j] = qc_km_round_f16(out[j]);
    if (alt) {
        for (int j = 0; j < K; j++)
            if (!(fabsf(alt[j]) <= 3.40282347e38f) || (j > 0 && !(alt[j - 1] <= alt[j]))) return 2;
        if (qc_km_sse(s, n, alt, K, NULL) < qc_km_sse(s, n, out, K, lloyd ? s->pos : NULL))
            memcpy(out, alt, (size_t)K * sizeof(float));
    }
    return 0;
}

/* one weighted row: its points of positive weight (x sorted ascending among them, finite; weights finite and
 * >= 0), the Panter-Dite start and Lloyd, stopped when the squared move is at most tol_rel times the points'
 * variance.  Returns 1, 0 when the start has equal entries (out untouched), -1 on invalid input. */
static int qc_km_fit_weighted(const float *x, const double *w, int64_t n, int K, double tol_rel, int max_iter,
                              float *out, qc_km_scratch *s);

/* scratch of qc_km_fit_row: a histogram of `bins` bins (the weighted fit then works on at most `bins` points) */
static qc_km_scratch *qc_km_alloc_bins(int64_t bins, int K) {
    qc_km_scratch *s = qc_km_alloc(bins, K);
    if (!s) return NULL;
    s->bins = bins;
    s->bcnt = (int64_t *)malloc((size_t)bins * sizeof(int64_t));
    s->bsum = (double *)malloc((size_t)bins * sizeof(double));
    s->bw = (double *)malloc((size_t)bins * sizeof(double));
    s->bmin = (float *)malloc((size_t)bins * sizeof(float));
    s->bmax = (float *)malloc((size_t)bins * sizeof(float));
    s->bpts = (float *)malloc((size_t)bins * sizeof(float));
    if (!s->bcnt || !s->bsum || !s->bw || !s->bmin || !s->bmax || !s->bpts) {
        qc_km_free(s);
        return NULL;
    }
    return s;
}

/* one row of values (see qcore/kernels/kmeans.py, "Rows"): its histogram over [lo, hi] — bin
 * trunc((v - lo) * (bins / (hi - lo))) in float64, clamped, everything in bin 0 when hi == lo; per bin the count,
 * the sum (float64, in row order), the minimum and the maximum — then
 *   2: at most K non-empty bins each holding one value: out = those values ascending, padded by the largest;
 *   3: fewer than 2K non-empty bins otherwise (out untouched: the caller clusters the exact values);
 *   1: the weighted fit of the non-empty bins' means fl32(sum / count), weights the counts (qc_km_fit_weighted);
 *   0: that fit's start had equal entries (out untouched);
 *  -2: a value is NaN or Inf. */
static int qc_km_fit_row(const float *row, int64_t n, int K, double lo, double hi, double tol_rel, int max_iter,
                         float *out, qc_km_scratch *s) {
    int64_t bins = s->bins;
    int64_t *cnt = s->bcnt;
    double *sum = s->bsum;
    float *mn = s->bmin, *mx = s->bmax;
    memset(cnt, 0, (size_t)bins * sizeof(int64_t));
    memset(sum, 0, (size_t)bins * sizeof(double));
    double sc = hi > lo ? (double)bins / (hi - lo) : 0.0;
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = row[i];
        uint32_t u;
        memcpy(&u, &v, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
        double t = ((double)v - lo) * sc;
        int64_t b = t >= (double)(bins - 1) ? bins - 1 : (t > 0 ? (int64_t)t : 0); /* clamped before the cast */
        if (cnt[b] == 0) { mn[b] = v; mx[b] = v; }
        else { if (v < mn[b]) mn[b] = v; if (v > mx[b]) mx[b] = v; }
        cnt[b] += 1;
        sum[b] += (double)v;
    }
    if (bad) return -2;
    int64_t nz = 0;
    int single = 1;
    for (int64_t b = 0; b < bins; b++) {
        if (!cnt[b]) continue;
        single &= mn[b] == mx[b];
        s->bpts[nz] = (float)(sum[b] / (double)cnt[b]);
        s->bw[nz] = (double)cnt[b];
        nz++;
    }
    if (nz <= K && single) {
        int64_t j = 0;
        for (int64_t b = 0; b < bins; b++)
            if (cnt[b]) out[j++] = mn[b] + 0.0f;
        for (; j < K; j++) out[j] = out[nz - 1];
        return 2;
    }
    if (nz < 2 * (int64_t)K) return 3;
    int r = qc_km_fit_weighted(s->bpts, s->bw, nz, K, tol_rel, max_iter, out, s);
    return r < 0 ? -2 : r;
}

static int qc_km_fit_weighted(const float *x, const double *w, int64_t n, int K, double tol_rel, int max_iter,
                              float *out, qc_km_scratch *s) {
    float *xs = s->xs;
    double *wv = s->wv, *cdf = s->cdf, *pts = s->pts;
    int64_t P = 0;
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        double wi = w[i];
        total += wi;
        if (!(wi >= 0 && total <= 1.7976931348623157e308)) return -1; /* also NaN, Inf, an overflowing sum */
        if (wi == 0) continue;
        float v = x[i] + 0.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        if ((u & 0x7f800000u) == 0x7f800000u || (P > 0 && v < xs[P - 1])) return -1;
        xs[P] = v;
        wv[P] = wi;
        P++;
    }
    if (P == 0) return -1;
    double sx = 0, sv = 0;
    for (int64_t i = 0; i < P; i++) sx = i ? sx + (double)xs[i] : (double)xs[i];
    double mean = sx / (double)P;
    for (int64_t i = 0; i < P; i++) {
        double d = (double)xs[i] - mean;
        sv = i ? sv + d * d : d * d;
    }
    double tol = tol_rel * (sv / (double)P);
    double D = 0;
    for (int64_t i = 0; i < P; i++) {
        double d = qc_km_cbrt(wv[i]);
        D = i ? D + d : d;
        cdf[i] = D - 0.5 * d; /* divided by the total below */
        pts[i] = (double)xs[i];
    }
    for (int64_t i = 0; i < P; i++) cdf[i] = cdf[i] / D;
    float *c = s->c;
    int64_t i = -1; /* the largest index with cdf[i] <= t */
    for (int j = 0; j < K; j++) {
        double t = ((double)j + 0.5) / (double)K;
        while (i + 1 < P && cdf[i + 1] <= t) i++;
        double v;
        if (i < 0) v = pts[0];
        else if (i >= P - 1) v = pts[P - 1];
        else v = (pts[i + 1] - pts[i]) / (cdf[i + 1] - cdf[i]) * (t - cdf[i]) + pts[i];
        c[j] = (float)v + 0.0f;
        if (j > 0 && !(c[j] != c[j - 1])) return 0;
    }
    qc_km_prefix(xs, wv, P, s->W, s->S1, s->S2);
    qc_km_index(s, P);
    qc_km_lloyd(s, P, c, K, max_iter, tol);
    memcpy(out, c, (size_t)K * sizeof(float));
    return 1;
}

#endif
