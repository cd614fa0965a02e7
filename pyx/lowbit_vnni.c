/* The AVX-512 VNNI path of the low-bit GEMM: its activation quantization and its tiles (the primitives below
 * plugged into the one tile body of lowbit_tile.h), in a translation unit of their own.  Layout and arithmetic:
 * lowbit_kernels.h. */
#include "lowbit_kernels.h"

#if QLB_X86
QLB_VNNI_T int qlb_quant_row_vnni(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
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
#endif /* QLB_X86 */
