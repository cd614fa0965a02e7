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

enum { QLB_PORTABLE = 0, QLB_AVX2 = 1, QLB_VNNI = 2 };
enum { QLB_LUT_NONE = 0, QLB_LUT_SHARED = 1, QLB_LUT_COLUMN = 2 };

#define QLB_NP 16 /* columns per panel */
#define QLB_BK 32 /* k per block */

static int qlb_cpu_supports(int isa)
{
#if QLB_X86
    __builtin_cpu_init();
    if (isa == QLB_VNNI)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (isa == QLB_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return isa == QLB_PORTABLE;
}

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

#if QLB_X86
/* ------------------------------------------------------------------------------------------------ AVX-512 VNNI */

/* decoded values of k-group t of a block (64 bytes: 16 columns x 4 k), before the table */
QLB_VNNI_T static inline __attribute__((always_inline)) __m512i qlb_v_dec(const uint8_t *blk, const int t, const int BITS)
{
    if (BITS == 8) return _mm512_loadu_si512(blk + 64 * t);
    const int h4 = BITS & 4, h2 = BITS & 2, h1 = BITS & 1;
    __m512i v = _mm512_setzero_si512();
    int sh = 0;
    const uint8_t *p = blk;
    if (h4) {
        __m512i c = _mm512_loadu_si512(p + 64 * (t >> 1));
        if (t & 1) c = _mm512_srli_epi16(c, 4);
        v = _mm512_and_si512(c, _mm512_set1_epi8(15));
        sh = 4;
        p += 256;
    }
    if (h2) {
        __m512i c = _mm512_loadu_si512(p + 64 * (t >> 2));
        if (t & 3) c = _mm512_srli_epi16(c, 2 * (t & 3));
        c = _mm512_and_si512(c, _mm512_set1_epi8(3));
        if (sh) c = _mm512_slli_epi16(c, sh);
        v = sh ? _mm512_or_si512(v, c) : c;
        sh += 2;
        p += 128;
    }
    if (h1) {
        __m512i c = _mm512_loadu_si512(p);
        if (t) c = _mm512_srli_epi16(c, t);
        c = _mm512_and_si512(c, _mm512_set1_epi8(1));
        if (sh) c = _mm512_slli_epi16(c, sh);
        v = sh ? _mm512_or_si512(v, c) : c;
    }
    return v;
}

QLB_VNNI_T static inline __attribute__((always_inline)) __m512i qlb_v_lut(__m512i v, const uint8_t *tab, const int LUT)
{
    if (LUT == QLB_LUT_SHARED) return _mm512_shuffle_epi8(_mm512_loadu_si512(tab), v);
    if (LUT == QLB_LUT_COLUMN) {
        __m512i r = _mm512_shuffle_epi8(_mm512_loadu_si512(tab), v);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0x00F000F000F000F0ULL, _mm512_loadu_si512(tab + 64), v);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0x0F000F000F000F00ULL, _mm512_loadu_si512(tab + 128), v);
        r = _mm512_mask_shuffle_epi8(r, (__mmask64)0xF000F000F000F000ULL, _mm512_loadu_si512(tab + 192), v);
        return r;
    }
    return v;
}

/* MRV rows x NV panels (compile-time after inlining); mr <= MRV rows and np <= NV panels are stored */
QLB_VNNI_T static inline __attribute__((always_inline)) void
qlb_tile_vnni_body(const qlb_w *w, const qlb_a *a, int64_t i0, int mr, int64_t p0, int np,
                   const int BITS, const int LUT, const int MRV, const int NV)
{
    const int64_t BB = 64 * BITS, nb = w->nb, Kp = w->Kp, ng = w->ng, gblk = w->gblk;
    const int SPLIT = BITS == 4 && LUT == QLB_LUT_NONE && MRV == 1;
    const int zint = w->zint;
    const int32_t zi = (int32_t)w->zval;
    /* fixed-size arrays (the largest tile): sized by MRV/NV they would be VLAs and live in memory */
    __m512 Y[6][4];
    const int8_t *ap[6];
    const uint8_t *pp[4];
    int64_t pi[4];
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) ap[r] = a->q + (i0 + (r < mr ? r : mr - 1)) * Kp;
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        pi[v] = p0 + (v < np ? v : np - 1);
        pp[v] = w->planes + pi[v] * nb * BB;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) Y[r][v] = _mm512_setzero_ps();
    const uint8_t *tabs = LUT == QLB_LUT_SHARED ? w->tab : NULL;
    for (int64_t g = 0; g < ng; g++) {
        __m512 sw[4];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            sw[v] = w->f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w->sw16 + (pi[v] * ng + g) * QLB_NP)))
                           : _mm512_loadu_ps(w->sw + (pi[v] * ng + g) * QLB_NP);
        int64_t b1 = (g + 1) * gblk < nb ? (g + 1) * gblk : nb;
        for (int64_t b = g * gblk; b < b1; b++) {
            const uint8_t *tp[4];
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                tp[v] = LUT == QLB_LUT_COLUMN ? w->tab + (pi[v] * w->ngt + b / w->tblk) * 256 : tabs;
            __m512i acc[6][4];
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                /* the folded zero point: the dot product starts at -zval * asum */
                __m512i a0 = zint ? _mm512_set1_epi32(-zi * a->asum[(i0 + (r < mr ? r : mr - 1)) * nb + b])
                                  : _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) acc[r][v] = a0;
            }
            if (SPLIT) {
                /* 4 bits, one row: the high nibbles are multiplied in place (v & 0xF0 = 16 * nibble, still a u8)
                 * into accumulators of their own, shifted back once per block: no shift per k-group, and twice
                 * the independent vpdpbusd chains */
                __m512i acc16[4];
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) acc16[v] = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int tt = 0; tt < 4; tt++) {
                    int32_t a4e, a4o;
                    memcpy(&a4e, ap[0] + b * 32 + 8 * tt, 4);
                    memcpy(&a4o, ap[0] + b * 32 + 8 * tt + 4, 4);
                    __m512i ae = _mm512_set1_epi32(a4e), ao = _mm512_set1_epi32(a4o);
#pragma GCC unroll 8
                    for (int v = 0; v < NV; v++) {
                        __m512i c = _mm512_loadu_si512(pp[v] + b * BB + 64 * tt);
                        acc[0][v] = _mm512_dpbusd_epi32(acc[0][v], _mm512_and_si512(c, _mm512_set1_epi8(0x0F)), ae);
                        acc16[v] = _mm512_dpbusd_epi32(acc16[v], _mm512_and_si512(c, _mm512_set1_epi8((char)0xF0)), ao);
                    }
                }
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) acc[0][v] = _mm512_add_epi32(acc[0][v], _mm512_srai_epi32(acc16[v], 4));
            } else {
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                __m512i d[4];
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) d[v] = qlb_v_lut(qlb_v_dec(pp[v] + b * BB, t, BITS), tp[v], LUT);
#pragma GCC unroll 8
                for (int r = 0; r < MRV; r++) {
                    int32_t a4;
                    memcpy(&a4, ap[r] + b * 32 + 4 * t, 4);
                    __m512i av = _mm512_set1_epi32(a4);
#pragma GCC unroll 8
                    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], d[v], av);
                }
            }
            }
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                __m512 sa = _mm512_set1_ps(a->sa[(i0 + (r < mr ? r : mr - 1)) * nb + b]);
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    Y[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][v]), _mm512_mul_ps(sa, sw[v]), Y[r][v]);
            }
        }
        if (zint) continue;
#pragma GCC unroll 8
        for (int r = 0; r < MRV; r++) {
            __m512 S = _mm512_set1_ps(a->S[(i0 + (r < mr ? r : mr - 1)) * ng + g]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                Y[r][v] = _mm512_fnmadd_ps(S, w->zconst ? _mm512_mul_ps(sw[v], _mm512_set1_ps(w->zval))
                                                        : _mm512_loadu_ps(w->swz + (pi[v] * ng + g) * QLB_NP), Y[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) {
        if (r >= mr) break;
        float *yo = a->y + (i0 + r) * w->N;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            if (v >= np) break;
            int64_t j = (p0 + v) * QLB_NP, left = w->N - j;
            __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            __m512 o = Y[r][v];
            if (a->bias) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(m, a->bias + j));
            _mm512_mask_storeu_ps(yo + j, m, o);
        }
    }
}

#define QLB_VNNI_FN(BITS, LUT, MRV, NV)                                                                         \
    QLB_VNNI_T static void qlb_vnni_##BITS##_##LUT##_##MRV(const qlb_w *w, const qlb_a *a, int64_t i0, int mr,   \
                                                          int64_t p0, int np)                                   \
    {                                                                                                          \
        qlb_tile_vnni_body(w, a, i0, mr, p0, np, BITS, LUT, MRV, NV);                                          \
    }
#define QLB_VNNI_BITS(BITS, LUT) QLB_VNNI_FN(BITS, LUT, 1, 4) QLB_VNNI_FN(BITS, LUT, 6, 2)
QLB_VNNI_BITS(1, 0) QLB_VNNI_BITS(2, 0) QLB_VNNI_BITS(3, 0) QLB_VNNI_BITS(4, 0)
QLB_VNNI_BITS(5, 0) QLB_VNNI_BITS(6, 0) QLB_VNNI_BITS(7, 0) QLB_VNNI_BITS(8, 0)
QLB_VNNI_BITS(1, 1) QLB_VNNI_BITS(2, 1) QLB_VNNI_BITS(3, 1) QLB_VNNI_BITS(4, 1)
QLB_VNNI_BITS(1, 2) QLB_VNNI_BITS(2, 2) QLB_VNNI_BITS(3, 2) QLB_VNNI_BITS(4, 2)

typedef void (*qlb_tile_fn)(const qlb_w *, const qlb_a *, int64_t, int, int64_t, int);

#define QLB_VNNI_PICK(BITS, LUT) (mrv == 1 ? qlb_vnni_##BITS##_##LUT##_1 : qlb_vnni_##BITS##_##LUT##_6)
static qlb_tile_fn qlb_vnni_pick(int bits, int lut, int mrv)
{
    switch (lut * 16 + bits) {
    case 1: return QLB_VNNI_PICK(1, 0);
    case 2: return QLB_VNNI_PICK(2, 0);
    case 3: return QLB_VNNI_PICK(3, 0);
    case 4: return QLB_VNNI_PICK(4, 0);
    case 5: return QLB_VNNI_PICK(5, 0);
    case 6: return QLB_VNNI_PICK(6, 0);
    case 7: return QLB_VNNI_PICK(7, 0);
    case 8: return QLB_VNNI_PICK(8, 0);
    case 17: return QLB_VNNI_PICK(1, 1);
    case 18: return QLB_VNNI_PICK(2, 1);
    case 19: return QLB_VNNI_PICK(3, 1);
    case 20: return QLB_VNNI_PICK(4, 1);
    case 33: return QLB_VNNI_PICK(1, 2);
    case 34: return QLB_VNNI_PICK(2, 2);
    case 35: return QLB_VNNI_PICK(3, 2);
    case 36: return QLB_VNNI_PICK(4, 2);
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ AVX2 */

/* half h (columns 8h..8h+7) of k-group t */
QLB_AVX2_T static inline __attribute__((always_inline)) __m256i qlb_a_dec(const uint8_t *blk, const int t, const int h, const int BITS)
{
    if (BITS == 8) return _mm256_loadu_si256((const __m256i *)(blk + 64 * t + 32 * h));
    const int h4 = BITS & 4, h2 = BITS & 2, h1 = BITS & 1;
    __m256i v = _mm256_setzero_si256();
    int sh = 0;
    const uint8_t *p = blk + 32 * h;
    if (h4) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(p + 64 * (t >> 1)));
        if (t & 1) c = _mm256_srli_epi16(c, 4);
        v = _mm256_and_si256(c, _mm256_set1_epi8(15));
        sh = 4;
        p += 256;
    }
    if (h2) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(p + 64 * (t >> 2)));
        if (t & 3) c = _mm256_srli_epi16(c, 2 * (t & 3));
        c = _mm256_and_si256(c, _mm256_set1_epi8(3));
        if (sh) c = _mm256_slli_epi16(c, sh);
        v = sh ? _mm256_or_si256(v, c) : c;
        sh += 2;
        p += 128;
    }
    if (h1) {
        __m256i c = _mm256_loadu_si256((const __m256i *)p);
        if (t) c = _mm256_srli_epi16(c, t);
        c = _mm256_and_si256(c, _mm256_set1_epi8(1));
        if (sh) c = _mm256_slli_epi16(c, sh);
        v = sh ? _mm256_or_si256(v, c) : c;
    }
    return v;
}

QLB_AVX2_T static inline __attribute__((always_inline)) __m256i qlb_a_lut(__m256i v, const uint8_t *tab, const int h, const int LUT)
{
    if (LUT == QLB_LUT_SHARED) return _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)tab), v);
    if (LUT == QLB_LUT_COLUMN) {
        const uint8_t *tp = tab + 32 * h;
        __m256i r = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)tp), v);
        const __m256i m2 = _mm256_setr_epi32(0, 0, -1, 0, 0, 0, -1, 0);
        const __m256i m3 = _mm256_setr_epi32(0, 0, 0, -1, 0, 0, 0, -1);
        const __m256i m1b = _mm256_setr_epi32(0, -1, 0, 0, 0, -1, 0, 0);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 64)), v), m1b);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 128)), v), m2);
        r = _mm256_blendv_epi8(r, _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(tp + 192)), v), m3);
        return r;
    }
    return v;
}

/* sum over 4-byte groups of u8 d times s8 a, exact: values > 127 split into 7 low bits and the top bit */
QLB_AVX2_T static inline __attribute__((always_inline)) __m256i qlb_a_dot(__m256i acc, __m256i d, __m256i a, const int WIDE)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (!WIDE) return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(d, a), ones));
    __m256i lo = _mm256_and_si256(d, _mm256_set1_epi8(0x7F));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(d, 7), _mm256_set1_epi8(1));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a), ones));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a), _mm256_set1_epi16(128)));
}

QLB_AVX2_T static inline __attribute__((always_inline)) void
qlb_tile_avx2_body(const qlb_w *w, const qlb_a *a, int64_t i0, int mr, int64_t p0, int np,
                   const int BITS, const int LUT, const int MRV, const int NV)
{
    const int WIDE = BITS == 8 || LUT != QLB_LUT_NONE;
    const int64_t BB = 64 * BITS, nb = w->nb, Kp = w->Kp, ng = w->ng, gblk = w->gblk;
    const int zint = w->zint;
    const int32_t zi = (int32_t)w->zval;
    __m256 Y[2][4];
    const int8_t *ap[2];
    const uint8_t *pp[2];
    int64_t pi[2];
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) ap[r] = a->q + (i0 + (r < mr ? r : mr - 1)) * Kp;
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        pi[v] = p0 + (v < np ? v : np - 1);
        pp[v] = w->planes + pi[v] * nb * BB;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++)
#pragma GCC unroll 8
        for (int v = 0; v < 2 * NV; v++) Y[r][v] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m256 swv[4];
#pragma GCC unroll 8
        for (int v = 0; v < 2 * NV; v++) {
            int64_t o = (pi[v >> 1] * ng + g) * QLB_NP + 8 * (v & 1);
            swv[v] = w->f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w->sw16 + o))) : _mm256_loadu_ps(w->sw + o);
        }
        int64_t b1 = (g + 1) * gblk < nb ? (g + 1) * gblk : nb;
        for (int64_t b = g * gblk; b < b1; b++) {
            const uint8_t *tp[2];
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                tp[v] = LUT == QLB_LUT_COLUMN ? w->tab + (pi[v] * w->ngt + b / w->tblk) * 256 : w->tab;
            __m256i acc[2][4];
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                __m256i a0 = zint ? _mm256_set1_epi32(-zi * a->asum[(i0 + (r < mr ? r : mr - 1)) * nb + b])
                                  : _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int v = 0; v < 2 * NV; v++) acc[r][v] = a0;
            }
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                __m256i d[4];
#pragma GCC unroll 8
                for (int v = 0; v < 2 * NV; v++)
                    d[v] = qlb_a_lut(qlb_a_dec(pp[v >> 1] + b * BB, t, v & 1, BITS), tp[v >> 1], v & 1, LUT);
#pragma GCC unroll 8
                for (int r = 0; r < MRV; r++) {
                    int32_t a4;
                    memcpy(&a4, ap[r] + b * 32 + 4 * t, 4);
                    __m256i av = _mm256_set1_epi32(a4);
#pragma GCC unroll 8
                    for (int v = 0; v < 2 * NV; v++) acc[r][v] = qlb_a_dot(acc[r][v], d[v], av, WIDE);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                __m256 sa = _mm256_set1_ps(a->sa[(i0 + (r < mr ? r : mr - 1)) * nb + b]);
#pragma GCC unroll 8
                for (int v = 0; v < 2 * NV; v++) {
                    Y[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][v]), _mm256_mul_ps(sa, swv[v]), Y[r][v]);
                }
            }
        }
        if (zint) continue;
#pragma GCC unroll 8
        for (int r = 0; r < MRV; r++) {
            __m256 S = _mm256_set1_ps(a->S[(i0 + (r < mr ? r : mr - 1)) * ng + g]);
#pragma GCC unroll 8
            for (int v = 0; v < 2 * NV; v++)
                Y[r][v] = _mm256_fnmadd_ps(S, w->zconst ? _mm256_mul_ps(swv[v], _mm256_set1_ps(w->zval))
                                                        : _mm256_loadu_ps(w->swz + (pi[v >> 1] * ng + g) * QLB_NP + 8 * (v & 1)), Y[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) {
        if (r >= mr) break;
        float *yo = a->y + (i0 + r) * w->N;
#pragma GCC unroll 8
        for (int v = 0; v < 2 * NV; v++) {
            if (v >= 2 * np) break;
            int64_t j = (p0 + (v >> 1)) * QLB_NP + 8 * (v & 1), left = w->N - j;
            if (left <= 0) break;
            __m256 o = Y[r][v];
            if (left >= 8) {
                if (a->bias) o = _mm256_add_ps(o, _mm256_loadu_ps(a->bias + j));
                _mm256_storeu_ps(yo + j, o);
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, o);
                for (int c = 0; c < left; c++) yo[j + c] = a->bias ? tmp[c] + a->bias[j + c] : tmp[c];
            }
        }
    }
}

#define QLB_AVX2_FN(BITS, LUT, MRV, NV)                                                                         \
    QLB_AVX2_T static void qlb_avx2_##BITS##_##LUT##_##MRV(const qlb_w *w, const qlb_a *a, int64_t i0, int mr,   \
                                                          int64_t p0, int np)                                   \
    {                                                                                                          \
        qlb_tile_avx2_body(w, a, i0, mr, p0, np, BITS, LUT, MRV, NV);                                          \
    }
#define QLB_AVX2_BITS(BITS, LUT) QLB_AVX2_FN(BITS, LUT, 1, 2) QLB_AVX2_FN(BITS, LUT, 2, 1)
QLB_AVX2_BITS(1, 0) QLB_AVX2_BITS(2, 0) QLB_AVX2_BITS(3, 0) QLB_AVX2_BITS(4, 0)
QLB_AVX2_BITS(5, 0) QLB_AVX2_BITS(6, 0) QLB_AVX2_BITS(7, 0) QLB_AVX2_BITS(8, 0)
QLB_AVX2_BITS(1, 1) QLB_AVX2_BITS(2, 1) QLB_AVX2_BITS(3, 1) QLB_AVX2_BITS(4, 1)
QLB_AVX2_BITS(1, 2) QLB_AVX2_BITS(2, 2) QLB_AVX2_BITS(3, 2) QLB_AVX2_BITS(4, 2)

#define QLB_AVX2_PICK(BITS, LUT) (mrv == 1 ? qlb_avx2_##BITS##_##LUT##_1 : qlb_avx2_##BITS##_##LUT##_2)
static qlb_tile_fn qlb_avx2_pick(int bits, int lut, int mrv)
{
    switch (lut * 16 + bits) {
    case 1: return QLB_AVX2_PICK(1, 0);
    case 2: return QLB_AVX2_PICK(2, 0);
    case 3: return QLB_AVX2_PICK(3, 0);
    case 4: return QLB_AVX2_PICK(4, 0);
    case 5: return QLB_AVX2_PICK(5, 0);
    case 6: return QLB_AVX2_PICK(6, 0);
    case 7: return QLB_AVX2_PICK(7, 0);
    case 8: return QLB_AVX2_PICK(8, 0);
    case 17: return QLB_AVX2_PICK(1, 1);
    case 18: return QLB_AVX2_PICK(2, 1);
    case 19: return QLB_AVX2_PICK(3, 1);
    case 20: return QLB_AVX2_PICK(4, 1);
    case 33: return QLB_AVX2_PICK(1, 2);
    case 34: return QLB_AVX2_PICK(2, 2);
    case 35: return QLB_AVX2_PICK(3, 2);
    case 36: return QLB_AVX2_PICK(4, 2);
    }
    return NULL;
}
#endif /* QLB_X86 */

/* ------------------------------------------------------------------------------------------------ driver */

/* tile geometry per path: rows per tile (MRV) and panels per tile for a given row count (VNNI 6 x 2 panels:
 * 12 int32 + 12 float accumulators, 2 decoded vectors, 2 scales in 32 zmm registers) */
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
    if (isa == QLB_VNNI) fn = qlb_vnni_pick(w->bits, w->lut, mrv);
    else if (isa == QLB_AVX2) fn = qlb_avx2_pick(w->bits, w->lut, mrv);
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
