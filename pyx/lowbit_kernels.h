/* qcore low-bit GEMM kernels: y = x . W^T with W kept packed at 1..8 bits (docs/gemm.md, "Low-bit weights").
 *
 * Weights W (N x K, torch Linear layout) are described by unsigned values v[n, k] in 0..255 and, per output
 * column n and scale group g (gblk consecutive blocks of 32 along K), a float scale sw and an integer zero
 * point z:  W[n, k] = sw[n, g] * (v[n, k] - z[n, g]).  v is either the code itself (linear schemes: the code
 * shifted to unsigned) or a 16-entry byte table indexed by the code (codebook schemes: v = t8 + 128).
 *
 * Layout (built once by qlb_pack): column panels of 16 outputs; per panel, per block of 32 k, 64*bits bytes of
 * bit planes.  A "k-group" t (0..7) of a block is 4 consecutive k; its decoded vector holds, at byte 4*c + j,
 * the value of column c of the panel at k = 32*b + 4*t + j (the operand layout of vpdpbusd).  bits is split
 * into planes of width 4, 2, 1 (or a single 8-bit plane):
 *   4-bit plane: 4 chunks of 64 bytes; chunk t>>1, low nibble for even t, high nibble for odd t  -> v bits 0-3
 *   2-bit plane: 2 chunks; chunk t>>2, bits 2*(t&3)..+1                                         -> next 2 bits
 *   1-bit plane: 1 chunk; bit t                                                                 -> next bit
 *   8-bit plane: 8 chunks, chunk t
 * so a block takes exactly 32*16*bits/8 bytes: the weight stays packed at its bit width.
 *
 * Activations: each row of x is cut into blocks of 32 (zero padded to Kp), each block quantized to int8 with
 * its own scale sa = max|x| / 127 (q = clamp(rint(x * (1/sa)), -127, 127), round half to even), and its code
 * sum asum.  For each (row m, column n):
 *   y = sum_g [ sw[n,g] * sum_{b in g} sa[m,b] * dot[m,n,b]  -  sw[n,g]*z[n,g] * S[m,g] ] + bias[n]
 *   dot[m,n,b] = sum_{k in b} q[m,k] * v[n,k]   (int32, exact)      S[m,g] = sum_{b in g} sa[m,b] * asum[m,b]
 * The kernels compute the inner sum as Y += float(dot) * (sa * sw) per block and subtract S * (sw*z) per group;
 * when every zero point is the same integer zval (symmetric codes, tables), the zero point is folded into the
 * exact int32 dot product instead: Y += float(dot - zval * asum[m,b]) * (sa * sw) per block, no S term.
 *
 * Paths: AVX-512 VNNI (vpdpbusd u8 x s8), AVX2 (vpmaddubsw on values <= 127, values > 127 split in 7 + 1 bits so
 * the int16 pair sums never saturate), portable C.  Chosen at run time; never a native -march build.
 */
#ifndef QCORE_LOWBIT_KERNELS_H
#define QCORE_LOWBIT_KERNELS_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>

#include "qcore_isa.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define QLB_X86 1
#define QLB_VNNI_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define QLB_AVX2_T __attribute__((target("avx2,fma,f16c")))
#else
#define QLB_X86 0
#endif

/* the low-bit GEMM's copies, named by their level (qcore_isa.h); the codes are the levels' values */
#define QLB_PORTABLE QCORE_ISA_BASELINE
#define QLB_AVX2 QCORE_ISA_AVX2
#define QLB_VNNI QCORE_ISA_AVX512VNNI
enum { QLB_LUT_NONE = 0, QLB_LUT_SHARED = 1, QLB_LUT_COLUMN = 2 };

#define QLB_NP 16 /* columns per panel */
#define QLB_BK 32 /* k per block */

typedef struct {
    int bits;               /* 1..8 */
    int lut;                /* QLB_LUT_*; only with bits <= 4 */
    int wide;               /* decoded values may exceed 127 (8-bit values, tables) */
    int64_t N, K, Kp, nb;   /* Kp = 32 * nb >= K */
    int64_t P;              /* panels = ceil(N / 16) */
    const uint8_t *planes;  /* P * nb * 64 * bits bytes */
    int64_t gblk, ng;       /* blocks per scale group, scale groups (ceil(nb / gblk)) */
    const float *sw;        /* P * ng * 16 (float32), or NULL when f16 */
    const uint16_t *sw16;   /* P * ng * 16 (float16 bits) when f16: the scales are exactly float16 values */
    int f16;
    const float *swz;       /* P * ng * 16: sw * z, or NULL when zconst */
    int zconst;             /* every zero point is zval: sw * z is computed from sw (a float32 product) */
    float zval;
    int zint;               /* zconst and zval an integer (|zval| <= 256): the zero point is folded into the int32
                             * dot product of each block, dot - zval * asum, and S is not used */
    int64_t tblk, ngt;      /* blocks per table group, table groups (QLB_LUT_COLUMN) */
    const uint8_t *tab;     /* SHARED: 64 bytes (16 entries, 4 times); COLUMN: P * ngt * 256 (see qlb_tab_index) */
} qlb_w;

typedef struct {
    int64_t M;
    const int8_t *q;        /* M x Kp */
    const float *sa;        /* M x nb */
    const float *S;         /* M x ng */
    const int32_t *asum;    /* M x nb: code sum of each activation block */
    float *y;               /* M x N, row stride N */
    const float *bias;      /* N or NULL */
} qlb_a;

/* per-column table of panel p, group gt: entry e of column c lives at tab[(p*ngt + gt)*256 + qlb_tab_index(c, e)]:
 * four 64-byte vectors, vector j holding in its 128-bit lane l the table of column 4*l + j */
static inline int qlb_tab_index(int c, int e) { return 64 * (c & 3) + 16 * (c >> 2) + e; }

static inline int64_t qlb_block_bytes(int bits) { return 64 * (int64_t)bits; }

/* IEEE half -> float (exact) */
static inline float qlb_h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3FFu, bits;
    if (e == 0) {
        if (m == 0) bits = sign;
        else { /* subnormal: normalise */
            e = 113;
            while (!(m & 0x400u)) { m <<= 1; e--; }
            bits = sign | (e << 23) | ((m & 0x3FFu) << 13);
        }
    } else if (e == 31) bits = sign | 0x7F800000u | (m << 13);
    else bits = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* scale and scale * zero of column c of panel p, group g */
static inline float qlb_sw(const qlb_w *w, int64_t p, int64_t g, int c)
{
    int64_t i = (p * w->ng + g) * 16 + c;
    return w->f16 ? qlb_h2f(w->sw16[i]) : w->sw[i];
}
static inline float qlb_swz(const qlb_w *w, int64_t p, int64_t g, int c)
{
    return w->zconst ? qlb_sw(w, p, g, c) * w->zval : w->swz[(p * w->ng + g) * 16 + c];
}

/* ------------------------------------------------------------------------------------------------ packing */

/* Pack values u (N x K row-major, ldu) into the plane layout for panels [p0, p1).  k >= K and n >= N get 0. */
static void qlb_pack(const uint8_t *u, int64_t N, int64_t K, int64_t ldu, int bits, int64_t nb,
                     int64_t p0, int64_t p1, uint8_t *out)
{
    const int64_t BB = qlb_block_bytes(bits);
    const int h4 = bits < 8 && (bits & 4), h2 = bits < 8 && (bits & 2), h1 = bits < 8 && (bits & 1);
    for (int64_t p = p0; p < p1; p++) {
        uint8_t *po = out + p * nb * BB;
        memset(po, 0, (size_t)(nb * BB));
        for (int c = 0; c < QLB_NP; c++) {
            int64_t n = p * QLB_NP + c;
            if (n >= N) break;
            const uint8_t *row = u + n * ldu;
            for (int64_t k = 0; k < K; k++) {
                int64_t b = k >> 5;
                int t = (int)((k >> 2) & 7), i = 4 * c + (int)(k & 3);
                unsigned v = row[k];
                uint8_t *blk = po + b * BB;
                if (bits == 8) { blk[64 * t + i] = (uint8_t)v; continue; }
                int sh = 0;
                if (h4) { blk[64 * (t >> 1) + i] |= (uint8_t)((v & 15u) << (4 * (t & 1))); sh = 4; blk += 256; }
                if (h2) { blk[64 * (t >> 2) + i] |= (uint8_t)(((v >> sh) & 3u) << (2 * (t & 3))); sh += 2; blk += 128; }
                if (h1) { blk[i] |= (uint8_t)(((v >> sh) & 1u) << t); }
            }
        }
    }
}

/* decoded value (after the table) of column c, k-group t, byte j of a block: the portable reference decode */
static inline unsigned qlb_value(const uint8_t *blk, int bits, int lut, const uint8_t *tab, int c, int t, int j)
{
    int i = 4 * c + j;
    unsigned v;
    if (bits == 8) {
        v = blk[64 * t + i];
    } else {
        const int h4 = bits & 4, h2 = bits & 2, h1 = bits & 1;
        int sh = 0;
        v = 0;
        if (h4) { v |= (blk[64 * (t >> 1) + i] >> (4 * (t & 1))) & 15u; sh = 4; blk += 256; }
        if (h2) { v |= ((blk[64 * (t >> 2) + i] >> (2 * (t & 3))) & 3u) << sh; sh += 2; blk += 128; }
        if (h1) { v |= ((blk[i] >> t) & 1u) << sh; }
    }
    if (lut == QLB_LUT_SHARED) v = tab[v & 15];
    else if (lut == QLB_LUT_COLUMN) v = tab[qlb_tab_index(c, (int)(v & 15))];
    return v;
}

static inline const uint8_t *qlb_tab_ptr(const qlb_w *w, int64_t p, int64_t b)
{
    if (w->lut == QLB_LUT_SHARED) return w->tab;
    if (w->lut == QLB_LUT_COLUMN) return w->tab + (p * w->ngt + b / w->tblk) * 256;
    return NULL;
}

/* all decoded values of panel p (16 x Kp), for tests */
static void qlb_decode_panel(const qlb_w *w, int64_t p, uint8_t *out /* 16 x Kp */)
{
    const int64_t BB = qlb_block_bytes(w->bits);
    for (int64_t b = 0; b < w->nb; b++) {
        const uint8_t *blk = w->planes + (p * w->nb + b) * BB;
        const uint8_t *tab = qlb_tab_ptr(w, p, b);
        for (int c = 0; c < QLB_NP; c++)
            for (int t = 0; t < 8; t++)
                for (int j = 0; j < 4; j++)
                    out[c * w->Kp + b * 32 + 4 * t + j] = (uint8_t)qlb_value(blk, w->bits, w->lut, tab, c, t, j);
    }
}

/* ------------------------------------------------------------------------------------------------ activations */

/* One row: blocks of 32, int8 codes q[0..Kp) (zero padded), scales sa[0..nb), code sums asum[0..nb).
 * sa = max|x| / 127 in float32; a block with sa < 1e-30 (all zero, or tiny) gets sa = 0 and codes 0.
 * Returns 1 if the row holds NaN or Inf. */
static inline void qlb_block_params(float amax, float *sa, float *inv)
{
    float s = amax / 127.0f;
    if (!(s >= 1e-30f)) { *sa = 0.0f; *inv = 0.0f; return; }
    *sa = s;
    *inv = 1.0f / s;
}

static inline int32_t qlb_round_clamp(float v)
{
    float t = v + 12582912.0f; /* 1.5 * 2^23: rint half to even for |v| < 2^22 */
    int32_t bits;
    memcpy(&bits, &t, 4);
    int32_t c = bits - 0x4B400000;
    return c < -127 ? -127 : (c > 127 ? 127 : c);
}

static int qlb_quant_row_portable(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
{
    float nf = 0.f;
    for (int64_t b = 0; b < nb; b++) {
        int64_t k0 = b * 32, k1 = k0 + 32 < K ? k0 + 32 : K;
        float amax = 0.f;
        for (int64_t k = k0; k < k1; k++) {
            float a = fabsf(x[k]);
            amax = a > amax ? a : amax;
            nf += x[k] - x[k];
        }
        float s, inv;
        qlb_block_params(amax, &s, &inv);
        int32_t sum = 0;
        for (int64_t k = k0; k < k0 + 32; k++) {
            int32_t c = k < k1 ? qlb_round_clamp(x[k] * inv) : 0;
            q[k] = (int8_t)c;
            sum += c;
        }
        sa[b] = s;
        asum[b] = sum;
    }
    return nf != nf;
}

#if QLB_X86
QLB_AVX2_T static int qlb_quant_row_avx2(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), magic = _mm256_set1_ps(12582912.0f);
    const __m256i off = _mm256_set1_epi32(-0x4B400000), lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    __m256 vnf = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        int64_t k0 = b * 32;
        __m256 v[4];
        if (k0 + 32 <= K) {
            for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(x + k0 + 8 * j);
        } else {
            float tmp[32];
            for (int j = 0; j < 32; j++) tmp[j] = k0 + j < K ? x[k0 + j] : 0.f;
            for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(tmp + 8 * j);
        }
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
            vnf = _mm256_add_ps(vnf, _mm256_sub_ps(v[j], v[j]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        if (amax != amax) amax = 0.f; /* NaN: flagged below; keep the codes in range */
        float s, inv;
        qlb_block_params(amax, &s, &inv);
        __m256 vi = _mm256_set1_ps(inv);
        __m256i c[4], sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_add_ps(_mm256_mul_ps(v[j], vi), magic);
            c[j] = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(_mm256_castps_si256(t), off), lo), hi);
            sum = _mm256_add_epi32(sum, c[j]);
        }
        __m256i p01 = _mm256_packs_epi32(c[0], c[1]), p23 = _mm256_packs_epi32(c[2], c[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        /* packs work per 128-bit lane: order is c0[0-3] c1[0-3] c2[0-3] c3[0-3] | c0[4-7] c1[4-7] ... */
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + k0), p);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        sa[b] = s;
        asum[b] = _mm_cvtsi128_si32(s4);
    }
    float nf[8];
    _mm256_storeu_ps(nf, vnf);
    int bad = 0;
    for (int j = 0; j < 8; j++) bad |= nf[j] != nf[j];
    return bad;
}

QLB_VNNI_T static int qlb_quant_row_vnni(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
{
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512i off = _mm512_set1_epi32(-0x4B400000), lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512 vnf = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        int64_t k0 = b * 32, n = K - k0;
        __mmask16 m0 = n >= 16 ? (__mmask16)0xFFFF : (n > 0 ? (__mmask16)((1u << n) - 1u) : 0);
        __mmask16 m1 = n >= 32 ? (__mmask16)0xFFFF : (n > 16 ? (__mmask16)((1u << (n - 16)) - 1u) : 0);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + k0), v1 = _mm512_maskz_loadu_ps(m1, x + k0 + 16);
        vnf = _mm512_add_ps(vnf, _mm512_add_ps(_mm512_sub_ps(v0, v0), _mm512_sub_ps(v1, v1)));
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        if (amax != amax) amax = 0.f;
        float s, inv;
        qlb_block_params(amax, &s, &inv);
        __m512 vi = _mm512_set1_ps(inv);
        __m512i c0 = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(v0, vi), magic)), off);
        __m512i c1 = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(v1, vi), magic)), off);
        c0 = _mm512_min_epi32(_mm512_max_epi32(c0, lo), hi);
        c1 = _mm512_min_epi32(_mm512_max_epi32(c1, lo), hi);
        _mm_storeu_si128((__m128i *)(q + k0), _mm512_cvtsepi32_epi8(c0));
        _mm_storeu_si128((__m128i *)(q + k0 + 16), _mm512_cvtsepi32_epi8(c1));
        sa[b] = s;
        asum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
    }
    return _mm512_cmp_ps_mask(vnf, vnf, _CMP_UNORD_Q) != 0;
}
#endif

static int qlb_quant_row(int isa, const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
{
#if QLB_X86
    if (isa == QLB_VNNI) return qlb_quant_row_vnni(x, K, nb, q, sa, asum);
    if (isa == QLB_AVX2) return qlb_quant_row_avx2(x, K, nb, q, sa, asum);
#endif
    return qlb_quant_row_portable(x, K, nb, q, sa, asum);
}

/* ------------------------------------------------------------------------------------------------ portable */

/* rows [i0, i0+mr), panels [p0, p0+np) */
static void qlb_tile_portable(const qlb_w *w, const qlb_a *a, int64_t i0, int mr, int64_t p0, int np)
{
    const int64_t BB = qlb_block_bytes(w->bits), nb = w->nb, Kp = w->Kp;
    uint8_t dec[32 * QLB_NP];
    for (int pv = 0; pv < np; pv++) {
        int64_t p = p0 + pv;
        for (int r = 0; r < mr; r++) {
            int64_t i = i0 + r;
            float Y[QLB_NP];
            for (int c = 0; c < QLB_NP; c++) Y[c] = 0.f;
            for (int64_t g = 0; g < w->ng; g++) {
                float sw[QLB_NP], swz[QLB_NP];
                for (int c = 0; c < QLB_NP; c++) { sw[c] = qlb_sw(w, p, g, c); swz[c] = qlb_swz(w, p, g, c); }
                int64_t b1 = (g + 1) * w->gblk < nb ? (g + 1) * w->gblk : nb;
                for (int64_t b = g * w->gblk; b < b1; b++) {
                    const uint8_t *blk = w->planes + (p * nb + b) * BB;
                    const uint8_t *tab = qlb_tab_ptr(w, p, b);
                    for (int c = 0; c < QLB_NP; c++)
                        for (int t = 0; t < 8; t++)
                            for (int j = 0; j < 4; j++)
                                dec[c * 32 + 4 * t + j] = (uint8_t)qlb_value(blk, w->bits, w->lut, tab, c, t, j);
                    const int8_t *aq = a->q + i * Kp + b * 32;
                    float sa = a->sa[i * nb + b];
                    int32_t acc0 = w->zint ? -(int32_t)w->zval * a->asum[i * nb + b] : 0;
                    for (int c = 0; c < QLB_NP; c++) {
                        int32_t acc = acc0;
                        for (int k = 0; k < 32; k++) acc += (int32_t)dec[c * 32 + k] * (int32_t)aq[k];
                        Y[c] += (float)acc * (sa * sw[c]);
                    }
                }
                if (!w->zint) {
                    float S = a->S[i * w->ng + g];
                    for (int c = 0; c < QLB_NP; c++) Y[c] -= S * swz[c];
                }
            }
            float *yo = a->y + i * w->N + p * QLB_NP;
            for (int c = 0; c < QLB_NP && p * QLB_NP + c < w->N; c++)
                yo[c] = a->bias ? Y[c] + a->bias[p * QLB_NP + c] : Y[c];
        }
    }
}

typedef void (*qlb_tile_fn)(const qlb_w *, const qlb_a *, int64_t, int, int64_t, int);

#if QLB_X86
/* The SIMD tiles: one body (pyx/lowbit_tile.h) over each path's primitives.  The primitives differ only in
 * intrinsics; v is a vector index inside a 16-column panel (AVX2 holds a panel in 2 vectors of 8 columns). */
#define QLB_AI static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------------ AVX-512 VNNI */

/* decoded values of k-group t of a block (64 bytes: 16 columns x 4 k), before the table */
QLB_VNNI_T QLB_AI __m512i qlb_dec_v(const uint8_t *blk, const int t, const int v, const int BITS)
{
    (void)v;
    if (BITS == 8) return _mm512_loadu_si512(blk + 64 * t);
    const int h4 = BITS & 4, h2 = BITS & 2, h1 = BITS & 1;
    __m512i r = _mm512_setzero_si512();
    int sh = 0;
    const uint8_t *p = blk;
    if (h4) {
        __m512i c = _mm512_loadu_si512(p + 64 * (t >> 1));
        if (t & 1) c = _mm512_srli_epi16(c, 4);
        r = _mm512_and_si512(c, _mm512_set1_epi8(15));
        sh = 4;
        p += 256;
    }
    if (h2) {
        __m512i c = _mm512_loadu_si512(p + 64 * (t >> 2));
        if (t & 3) c = _mm512_srli_epi16(c, 2 * (t & 3));
        c = _mm512_and_si512(c, _mm512_set1_epi8(3));
        if (sh) c = _mm512_slli_epi16(c, sh);
        r = sh ? _mm512_or_si512(r, c) : c;
        sh += 2;
        p += 128;
    }
    if (h1) {
        __m512i c = _mm512_loadu_si512(p);
        if (t) c = _mm512_srli_epi16(c, t);
        c = _mm512_and_si512(c, _mm512_set1_epi8(1));
        if (sh) c = _mm512_slli_epi16(c, sh);
        r = sh ? _mm512_or_si512(r, c) : c;
    }
    return r;
}

/* the table: shared (one vpshufb), or per column (four masked vpshufb, one per 128-bit lane's columns) */
QLB_VNNI_T QLB_AI __m512i qlb_lut_v(__m512i d, const uint8_t *tab, const int v, const int LUT)
{
    (void)v;
    if (LUT == QLB_LUT_SHARED) return _mm512_shuffle_epi8(_mm512_loadu_si512(tab), d);
    if (LUT == QLB_LUT_COLUMN) {
        __m512i r = _mm512_shuffle_epi8(_mm512_loadu_si512(tab), d);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0x00F000F000F000F0ULL, _mm512_loadu_si512(tab + 64), d);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0x0F000F000F000F00ULL, _mm512_loadu_si512(tab + 128), d);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0xF000F000F000F000ULL, _mm512_loadu_si512(tab + 192), d);
        return r;
    }
    return d;
}

QLB_VNNI_T QLB_AI __m512i qlb_dot_v(__m512i acc, __m512i d, __m512i a, const int WIDE)
{
    (void)WIDE; /* vpdpbusd: u8 x s8 summed in int32, exact for every u8 */
    return _mm512_dpbusd_epi32(acc, d, a);
}
QLB_VNNI_T QLB_AI __m512i qlb_loadi_v(const uint8_t *p) { return _mm512_loadu_si512(p); }
QLB_VNNI_T QLB_AI __m512i qlb_and8_v(__m512i x, const int m) { return _mm512_and_si512(x, _mm512_set1_epi8((char)m)); }
QLB_VNNI_T QLB_AI __m512i qlb_addi_v(__m512i x, __m512i y) { return _mm512_add_epi32(x, y); }
QLB_VNNI_T QLB_AI __m512i qlb_srai4_v(__m512i x) { return _mm512_srai_epi32(x, 4); }
QLB_VNNI_T QLB_AI __m512i qlb_set1i_v(int32_t x) { return _mm512_set1_epi32(x); }
QLB_VNNI_T QLB_AI __m512i qlb_zeroi_v(void) { return _mm512_setzero_si512(); }
QLB_VNNI_T QLB_AI __m512 qlb_loadf_v(const float *p) { return _mm512_loadu_ps(p); }
QLB_VNNI_T QLB_AI __m512 qlb_loadh_v(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
QLB_VNNI_T QLB_AI __m512 qlb_set1f_v(float x) { return _mm512_set1_ps(x); }
QLB_VNNI_T QLB_AI __m512 qlb_zerof_v(void) { return _mm512_setzero_ps(); }
QLB_VNNI_T QLB_AI __m512 qlb_cvt_v(__m512i x) { return _mm512_cvtepi32_ps(x); }
QLB_VNNI_T QLB_AI __m512 qlb_mul_v(__m512 x, __m512 y) { return _mm512_mul_ps(x, y); }
QLB_VNNI_T QLB_AI __m512 qlb_fmadd_v(__m512 x, __m512 y, __m512 z) { return _mm512_fmadd_ps(x, y, z); }
QLB_VNNI_T QLB_AI __m512 qlb_fnmadd_v(__m512 x, __m512 y, __m512 z) { return _mm512_fnmadd_ps(x, y, z); }
QLB_VNNI_T QLB_AI void qlb_store_v(float *y, int64_t left, __m512 o, const float *bias)
{
    __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    if (bias) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(m, bias));
    _mm512_mask_storeu_ps(y, m, o);
}

/* tiles: 1 row x 4 panels (M = 1: 4 x 2 int32 accumulator chains), 6 rows x 2 panels (12 int32 + 12 float
 * accumulators, 2 decoded vectors, 2 scales in 32 zmm registers) */
#define QLB_P(x) x##_v
#define QLB_T QLB_VNNI_T
#define QLB_VI __m512i
#define QLB_VF __m512
#define QLB_LANES 16
#define QLB_VPP 1
#define QLB_SPLIT_OK 1
#define QLB_NV1 4
#define QLB_MRV2 6
#define QLB_NV2 2
#include "lowbit_tile.h"
#undef QLB_P
#undef QLB_T
#undef QLB_VI
#undef QLB_VF
#undef QLB_LANES
#undef QLB_VPP
#undef QLB_SPLIT_OK
#undef QLB_NV1
#undef QLB_MRV2
#undef QLB_NV2

/* ------------------------------------------------------------------------------------------------ AVX2 */

/* columns 8v..8v+7 of k-group t */
QLB_AVX2_T QLB_AI __m256i qlb_dec_a(const uint8_t *blk, const int t, const int v, const int BITS)
{
    if (BITS == 8) return _mm256_loadu_si256((const __m256i *)(blk + 64 * t + 32 * v));
    const int h4 = BITS & 4, h2 = BITS & 2, h1 = BITS & 1;
    __m256i r = _mm256_setzero_si256();
    int sh = 0;
    const uint8_t *p = blk + 32 * v;
    if (h4) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(p + 64 * (t >> 1)));
        if (t & 1) c = _mm256_srli_epi16(c, 4);
        r = _mm256_and_si256(c, _mm256_set1_epi8(15));
        sh = 4;
        p += 256;
    }
    if (h2) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(p + 64 * (t >> 2)));
        if (t & 3) c = _mm256_srli_epi16(c, 2 * (t & 3));
        c = _mm256_and_si256(c, _mm256_set1_epi8(3));
        if (sh) c = _mm256_slli_epi16(c, sh);
        r = sh ? _mm256_or_si256(r, c) : c;
        sh += 2;
        p += 128;
    }
    if (h1) {
        __m256i c = _mm256_loadu_si256((const __m256i *)p);
        if (t) c = _mm256_srli_epi16(c, t);
        c = _mm256_and_si256(c, _mm256_set1_epi8(1));
        if (sh) c = _mm256_slli_epi16(c, sh);
        r = sh ? _mm256_or_si256(r, c) : c;
    }
    return r;
}

QLB_AVX2_T QLB_AI __m256i qlb_lut_a(__m256i d, const uint8_t *tab, const int v, const int LUT)
{
    if (LUT == QLB_LUT_SHARED) return _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)tab), d);
    if (LUT == QLB_LUT_COLUMN) {
        const uint8_t *tp = tab + 32 * v;
        __m256i r = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)tp), d);
        const __m256i m2 = _mm256_setr_epi32(0, 0, -1, 0, 0, 0, -1, 0);
        const __m256i m3 = _mm256_setr_epi32(0, 0, 0, -1, 0, 0, 0, -1);
        const __m256i m1b = _mm256_setr_epi32(0, -1, 0, 0, 0, -1, 0, 0);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 64)), d), m1b);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 128)), d), m2);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 192)), d), m3);
        return r;
    }
    return d;
}

/* sum over 4-byte groups of u8 d times s8 a, exact: vpmaddubsw saturates its int16 pair sums above 32767, so
 * values > 127 (WIDE) are split into 7 low bits and the top bit */
QLB_AVX2_T QLB_AI __m256i qlb_dot_a(__m256i acc, __m256i d, __m256i a, const int WIDE)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (!WIDE) return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(d, a), ones));
    __m256i lo = _mm256_and_si256(d, _mm256_set1_epi8(0x7F));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(d, 7), _mm256_set1_epi8(1));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a), ones));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a), _mm256_set1_epi16(128)));
}
QLB_AVX2_T QLB_AI __m256i qlb_loadi_a(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
QLB_AVX2_T QLB_AI __m256i qlb_and8_a(__m256i x, const int m) { return _mm256_and_si256(x, _mm256_set1_epi8((char)m)); }
QLB_AVX2_T QLB_AI __m256i qlb_addi_a(__m256i x, __m256i y) { return _mm256_add_epi32(x, y); }
QLB_AVX2_T QLB_AI __m256i qlb_srai4_a(__m256i x) { return _mm256_srai_epi32(x, 4); }
QLB_AVX2_T QLB_AI __m256i qlb_set1i_a(int32_t x) { return _mm256_set1_epi32(x); }
QLB_AVX2_T QLB_AI __m256i qlb_zeroi_a(void) { return _mm256_setzero_si256(); }
QLB_AVX2_T QLB_AI __m256 qlb_loadf_a(const float *p) { return _mm256_loadu_ps(p); }
QLB_AVX2_T QLB_AI __m256 qlb_loadh_a(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
QLB_AVX2_T QLB_AI __m256 qlb_set1f_a(float x) { return _mm256_set1_ps(x); }
QLB_AVX2_T QLB_AI __m256 qlb_zerof_a(void) { return _mm256_setzero_ps(); }
QLB_AVX2_T QLB_AI __m256 qlb_cvt_a(__m256i x) { return _mm256_cvtepi32_ps(x); }
QLB_AVX2_T QLB_AI __m256 qlb_mul_a(__m256 x, __m256 y) { return _mm256_mul_ps(x, y); }
QLB_AVX2_T QLB_AI __m256 qlb_fmadd_a(__m256 x, __m256 y, __m256 z) { return _mm256_fmadd_ps(x, y, z); }
QLB_AVX2_T QLB_AI __m256 qlb_fnmadd_a(__m256 x, __m256 y, __m256 z) { return _mm256_fnmadd_ps(x, y, z); }
QLB_AVX2_T QLB_AI void qlb_store_a(float *y, int64_t left, __m256 o, const float *bias)
{
    if (left >= 8) {
        if (bias) o = _mm256_add_ps(o, _mm256_loadu_ps(bias));
        _mm256_storeu_ps(y, o);
        return;
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, o);
    for (int c = 0; c < left; c++) y[c] = bias ? tmp[c] + bias[c] : tmp[c];
}

/* tiles: 1 row x 2 panels (4 ymm accumulators), 2 rows x 1 panel (16 ymm registers) */
#define QLB_P(x) x##_a
#define QLB_T QLB_AVX2_T
#define QLB_VI __m256i
#define QLB_VF __m256
#define QLB_LANES 8
#define QLB_VPP 2
#define QLB_SPLIT_OK 0
#define QLB_NV1 2
#define QLB_MRV2 2
#define QLB_NV2 1
#include "lowbit_tile.h"
#undef QLB_P
#undef QLB_T
#undef QLB_VI
#undef QLB_VF
#undef QLB_LANES
#undef QLB_VPP
#undef QLB_SPLIT_OK
#undef QLB_NV1
#undef QLB_MRV2
#undef QLB_NV2
#endif /* QLB_X86 */

/* ------------------------------------------------------------------------------------------------ driver */

/* tile geometry per path: rows per tile (MRV) and panels per tile for a given row count (as the tiles above) */
static int qlb_mrv(int isa, int64_t M)
{
    if (isa == QLB_VNNI) return M == 1 ? 1 : 6;
    if (isa == QLB_AVX2) return M == 1 ? 1 : 2;
    return 4;
}
static int qlb_nv(int isa, int mrv)
{
    if (isa == QLB_VNNI) return mrv == 1 ? 4 : 2;
    if (isa == QLB_AVX2) return mrv == 1 ? 2 : 1;
    return 1;
}

/* One work unit: rows [r0, r1), panels [q0, q1) (a multiple of nv except at the end). */
static void qlb_unit(int isa, const qlb_w *w, const qlb_a *a, int64_t r0, int64_t r1, int64_t q0, int64_t q1)
{
    int mrv = qlb_mrv(isa, a->M);
    int nv = qlb_nv(isa, mrv);
#if QLB_X86
    qlb_tile_fn fn = NULL;
    if (isa == QLB_VNNI) fn = qlb_pick_v(w->bits, w->lut, mrv);
    else if (isa == QLB_AVX2) fn = qlb_pick_a(w->bits, w->lut, mrv);
#endif
    for (int64_t p = q0; p < q1; p += nv) {
        int np = (int)(q1 - p < nv ? q1 - p : nv);
        for (int64_t i = r0; i < r1; i += mrv) {
            int mr = (int)(r1 - i < mrv ? r1 - i : mrv);
#if QLB_X86
            if (fn) { fn(w, a, i, mr, p, np); continue; }
#endif
            qlb_tile_portable(w, a, i, mr, p, np);
        }
    }
}

#endif /* QCORE_LOWBIT_KERNELS_H */
