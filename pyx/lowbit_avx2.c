/* The AVX2 path of the low-bit GEMM: its activation quantization and its tiles (the primitives below
 * plugged into the one tile body of lowbit_tile.h), in a translation unit of their own.  Layout and arithmetic:
 * lowbit_kernels.h. */
#include "lowbit_kernels.h"

#if QLB_X86
QLB_AVX2_T int qlb_quant_row_avx2(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
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
#endif /* QLB_X86 */
