/* qcore static int8 convolution kernels (qcore_plugins._conv): uint8 NHWC activations x int8 weights.
 *
 * Activations are uint8, NHWC, channels padded to Cp = roundup(C, 4) (the padding channels meet zero weights).
 * A convolution is the GEMM  C[m, n] = sum_{t, c} (a[pix(m, t), c] - za) * w[n, t, c]  over the taps
 * t = (kh, kw) and channels c, M = batch * OH * OW output pixels, N output channels, K = KH * KW * Cp.  The
 * weights are packed once by gemm_kernels.h's qc_pack_b (K ordered (kh, kw, c)); activations are NOT copied
 * into an im2col matrix: each tile gathers, per output pixel and tap, a pointer to the Cp input bytes of that
 * pixel ("indirect convolution"), or to a row of Cp bytes holding the zero point za where the tap falls into
 * the padding, so padding contributes (za - za) * w = 0 exactly like a float zero.
 *
 * Weights are symmetric (no weight zero point), so the correction is  C = acc - zc[n], zc[n] = za * colsum[n]
 * (precomputed per layer, wrapping int32 arithmetic).
 * Epilogue per output (float32 arithmetic, in this order, no fused multiply-add):
 *   mode 0 (int32):  out = C
 *   mode 1 (float):  y = float(C) * mult[n] + bias[n];  clamp: y = min(max(y, clo), chi)
 *   mode 2 (uint8):  y = float(C) * mult[n] + bias[n];  out = rint(min(max(y, clo), chi)) + zo   (rint: half to
 *                    even; [clo, chi] within [-zo, 255 - zo]: the code range, narrowed by a fused ReLU/ReLU6)
 * mult = sa * sw[n] for float output and sa * sw[n] / so for uint8 output (bias likewise divided by so).
 *
 * groups > 1 runs a direct loop (qc_conv_grouped_rows) on unpacked weights (N, KH*KW, Cg) instead of the GEMM.
 */
#ifndef QCORE_CONV_KERNELS_H
#define QCORE_CONV_KERNELS_H

#include "gemm_kernels.h"

typedef struct {
    int isa;
    const uint8_t *in;        /* pixel (0, 0) of image 0: H x W pixels of Cp bytes, rows in_rs bytes apart and
                                 images in_is bytes apart (the interior of a buffer with a border, or a crop) */
    int64_t H, W, Cp;
    int64_t in_rs, in_is;
    int64_t OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
    int64_t M, N;             /* M = B * OH * OW */
    const void *Bp;           /* packed weights (groups == 1): K = KH*KW*Cp, Kp = K */
    const int8_t *wg;         /* grouped weights (N, KH*KW, Cg) (groups > 1) */
    const void *dwp;          /* depthwise weights packed for the copy in use (qc_dw_*), or NULL */
    int64_t groups, Cg;
    const uint8_t *zrow;      /* Cp bytes, all za */
    int32_t za;
    const int32_t *zc;        /* per column, padded to Np: za * (sum of the weights of column n), wrapping */
    const float *mult;        /* per column, padded */
    const float *bias;        /* per column, padded, or NULL */
    int mode;                 /* 0 int32, 1 float32, 2 uint8 */
    const uint8_t *res;       /* uint8 output: a residual added before the clamp (the same layout as out, element
                                 o of out meets res[o]), or NULL: y += float(res - zr) * mr */
    int32_t zr;
    float mr;
    int clamp;                /* clip y to [clo, chi] (ReLU, ReLU6, ...); uint8 output always clips */
    float clo, chi;           /* float: the activation's bounds; uint8: in output-code units, within [-zo, 255-zo] */
    int32_t zo;               /* output zero point (mode 2) */
    void *out; int64_t ldo;   /* row stride in elements */
    int64_t MC;               /* output pixels per work unit */
    int64_t NC;               /* output channels per work unit (a multiple of the kernel's block, or N) */
    int nchw;                 /* float output (mode 1) in NCHW order: element (b, n, oh, ow) at
                                 (b*N + n)*OH*OW + oh*OW + ow (a column stride of OH*OW) */
    const int32_t *tapsum;    /* (T, Np): per tap, the sums over its channels of each column's weights (the
                                 padding-skipping path corrects the zero point with them), or NULL */
    int64_t Np;
    int window;               /* take the padding-skipping path when it applies (qc_conv_window_mode) */
    int64_t lph, lpw;         /* the zero padding inside the input window (a border holding za around the image
                                 the layer reads): taps there contribute 0 and may be skipped; 0: none known */
    int64_t opad_h, opad_w;   /* uint8 output into a buffer padded by (opad_h, opad_w) pixels per side (the next
                                 layer's zero padding, pre-filled with zo by the caller); 0 for float/int32 */
    int64_t Kr;               /* bytes of the packed weights per kernel row: KW*Cp, or for "dense rows" input
                                 (dense != 0) roundup4(KW*Cp) */
    int dense;                /* the input's pixels hold Cp = C bytes, Cp not a multiple of 4 (an RGB image): only
                                 one pointer per kernel row (every window inside the input, dw == 1), each row
                                 read as Kr bytes, the last Kr - KW*Cp of them meeting zero weights (the caller
                                 guarantees those bytes lie inside the buffer) */
} qc_conv_args;

/* -------------------------------------------------------------------------------------- static quantization */

/* The one static-quantization loop: n contiguous floats x -> n contiguous codes q,
 * q = rint(min(max(x * inv, flo), fhi)) + z (flo = lo - z, fhi = hi - z; rint half to even by the 1.5*2^23
 * trick, exact since |t| <= 255), compiled once per ISA; returns the sum of (x - x) over the span: 0, or NaN if
 * any value is NaN or Inf.  The rows (NHWC / Linear input) and the NCHW -> NHWC quantizers below both call it. */
#define QC_SQ_SPAN(NAME, ATTR)                                                                               \
    ATTR static inline float NAME(const float *x, int64_t n, float inv, float flo, float fhi, int32_t z,       \
                                  uint8_t *q)                                                                \
    {                                                                                                        \
        float nf = 0.f;                                                                                      \
        for (int64_t c = 0; c < n; c++) {                                                                    \
            float v = x[c];                                                                                  \
            nf += v - v;                                                                                     \
            float t = v * inv;                                                                               \
            t = t < flo ? flo : t;                                                                           \
            t = t > fhi ? fhi : t;                                                                           \
            float m = t + 12582912.0f;                                                                       \
            int32_t b; memcpy(&b, &m, 4);                                                                    \
            q[c] = (uint8_t)(b - 0x4B400000 + z);                                                            \
        }                                                                                                    \
        return nf;                                                                                           \
    }

/* Static quantization of rows: x (R rows of C float32, row stride ldx) -> q (R rows of Cp bytes, stride Cp),
 * padding channels [C, Cp) set to z.  Returns nonzero if any value is NaN or Inf.  (NHWC / Linear input.) */
#define QC_SQ_ROWS(NAME, ATTR, SPAN)                                                                         \
    ATTR static int NAME(const float *x, int64_t R, int64_t C, int64_t ldx, float inv, int32_t z, int32_t lo,  \
                         int32_t hi, uint8_t *q, int64_t Cp)                                                 \
    {                                                                                                        \
        const float flo = (float)(lo - z), fhi = (float)(hi - z);                                            \
        float nf = 0.f;                                                                                      \
        for (int64_t r = 0; r < R; r++) {                                                                    \
            uint8_t *qr = q + r * Cp;                                                                        \
            nf += SPAN(x + r * ldx, C, inv, flo, fhi, z, qr);                                                \
            for (int64_t c = C; c < Cp; c++) qr[c] = (uint8_t)z;                                             \
        }                                                                                                    \
        return nf != nf;                                                                                     \
    }

/* Static quantization of one NCHW image plane set: x (C, HW) float32 -> q (HW, Cp) uint8 (NHWC), pad = z:
 * blocks of 64 pixels of one channel are quantized contiguously, then scattered to the NHWC positions. */
#define QC_SQ_NCHW(NAME, ATTR, SPAN)                                                                         \
    ATTR static int NAME(const float *x, int64_t C, int64_t HW, int64_t cstride, float inv, int32_t z,         \
                         int32_t lo, int32_t hi, uint8_t *q, int64_t Cp)                                     \
    {                                                                                                        \
        const float flo = (float)(lo - z), fhi = (float)(hi - z);                                            \
        float nf = 0.f;                                                                                      \
        enum { BLK = 64 };                                                                                   \
        uint8_t tmp[BLK];                                                                                    \
        for (int64_t p0 = 0; p0 < HW; p0 += BLK) {                                                           \
            int64_t np_ = HW - p0 < BLK ? HW - p0 : BLK;                                                     \
            for (int64_t c = 0; c < Cp; c++) {                                                               \
                if (c < C)                                                                                   \
                    nf += SPAN(x + c * cstride + p0, np_, inv, flo, fhi, z, tmp);                            \
                else                                                                                         \
                    memset(tmp, z, (size_t)np_);                                                             \
                uint8_t *qc = q + p0 * Cp + c;                                                               \
                for (int64_t p = 0; p < np_; p++) qc[p * Cp] = tmp[p];                                       \
            }                                                                                                \
        }                                                                                                    \
        return nf != nf;                                                                                     \
    }

QC_SQ_SPAN(qc_sq_span_portable, )
QC_SQ_ROWS(qc_sq_rows_portable, , qc_sq_span_portable)
QC_SQ_NCHW(qc_sq_nchw_portable, , qc_sq_span_portable)
#if QC_X86
QC_SQ_SPAN(qc_sq_span_avx2, QC_AVX2_T)
QC_SQ_ROWS(qc_sq_rows_avx2, QC_AVX2_T, qc_sq_span_avx2)
QC_SQ_NCHW(qc_sq_nchw_avx2, QC_AVX2_T, qc_sq_span_avx2)

/* the AVX-512 form of the same 16 codes: int32 lanes (low byte = code), flo/fhi/magic/off = lo - z, hi - z,
 * 1.5*2^23, z - 0x4B400000 */
QC_VNNI_T static inline __m512i qc_sq16_avx512(__m512 v, __m512 vinv, __m512 flo, __m512 fhi, __m512 magic,
                                               __m512i off)
{
    __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), flo), fhi);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(t, magic)), off);
}
QC_VNNI_T static int qc_sq_rows_avx512(const float *x, int64_t R, int64_t C, int64_t ldx, float inv, int32_t z,
                                      int32_t lo, int32_t hi, uint8_t *q, int64_t Cp)
{
    const __m512 vinv = _mm512_set1_ps(inv), flo = _mm512_set1_ps((float)(lo - z)),
                 fhi = _mm512_set1_ps((float)(hi - z)), magic = _mm512_set1_ps(12582912.0f);
    const __m512i off = _mm512_set1_epi32(z - 0x4B400000), vz = _mm512_set1_epi32(z);
    __m512 nf = _mm512_setzero_ps();
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * ldx;
        uint8_t *qr = q + r * Cp;
        for (int64_t c = 0; c < Cp; c += 16) {
            int64_t n = C - c, w = Cp - c;
            __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (n > 0 ? (__mmask16)((1u << n) - 1u) : (__mmask16)0);
            __mmask16 ms = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(m, xr + c);
            nf = _mm512_add_ps(nf, _mm512_sub_ps(v, v));
            __m512i code = _mm512_mask_mov_epi32(vz, m, qc_sq16_avx512(v, vinv, flo, fhi, magic, off)); /* padding channels: z */
            _mm_mask_storeu_epi8(qr + c, ms, _mm512_cvtepi32_epi8(code));
        }
    }
    return _mm512_cmp_ps_mask(nf, nf, _CMP_UNORD_Q) != 0;
}
/* AVX-512 NCHW -> NHWC for Cp == 4 (RGB input): 16 pixels per step, four channel vectors interleaved
 * into 16 int32 = 64 bytes */
QC_VNNI_T static int qc_sq_nchw_c4_avx512(const float *x, int64_t C, int64_t HW, int64_t cstride, float inv,
                                          int32_t z, int32_t lo, int32_t hi, uint8_t *q)
{
    const __m512 vinv = _mm512_set1_ps(inv), flo = _mm512_set1_ps((float)(lo - z)),
                 fhi = _mm512_set1_ps((float)(hi - z)), magic = _mm512_set1_ps(12582912.0f);
    const __m512i off = _mm512_set1_epi32(z - 0x4B400000);
    __m512 nf = _mm512_setzero_ps();
    for (int64_t p = 0; p < HW; p += 16) {
        int64_t n = HW - p;
        __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
        __m512i acc = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            __m512i code;
            if (c < C) {
                __m512 v = _mm512_maskz_loadu_ps(m, x + c * cstride + p);
                nf = _mm512_add_ps(nf, _mm512_sub_ps(v, v));
                code = qc_sq16_avx512(v, vinv, flo, fhi, magic, off);
            } else {
                code = _mm512_set1_epi32(z);
            }
            acc = _mm512_or_si512(acc, _mm512_slli_epi32(_mm512_and_si512(code, _mm512_set1_epi32(255)), 8 * c));
        }
        _mm512_mask_storeu_epi32(q + 4 * p, m, acc);
    }
    return _mm512_cmp_ps_mask(nf, nf, _CMP_UNORD_Q) != 0;
}
/* AVX-512 NCHW -> NHWC for Cp == C == 3 (an RGB image as "dense rows", no padding channel): the four-byte
 * pixels of the Cp == 4 form, each 128-bit lane's four pixels packed to 12 bytes by a byte shuffle, stored by
 * lanes (masked: nothing is written past pixel HW - 1) */
QC_VNNI_T static int qc_sq_nchw_c3_avx512(const float *x, int64_t HW, int64_t cstride, float inv, int32_t z,
                                          int32_t lo, int32_t hi, uint8_t *q)
{
    const __m512 vinv = _mm512_set1_ps(inv), flo = _mm512_set1_ps((float)(lo - z)),
                 fhi = _mm512_set1_ps((float)(hi - z)), magic = _mm512_set1_ps(12582912.0f);
    const __m512i off = _mm512_set1_epi32(z - 0x4B400000);
    const __m512i pack = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
    __m512 nf = _mm512_setzero_ps();
    for (int64_t p = 0; p < HW; p += 16) {
        const int64_t n = HW - p < 16 ? HW - p : 16;
        const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
        __m512i acc = _mm512_setzero_si512();
        for (int c = 0; c < 3; c++) {
            __m512 v = _mm512_maskz_loadu_ps(m, x + c * cstride + p);
            nf = _mm512_add_ps(nf, _mm512_sub_ps(v, v));
            __m512i code = qc_sq16_avx512(v, vinv, flo, fhi, magic, off);
            acc = _mm512_or_si512(acc, _mm512_slli_epi32(_mm512_and_si512(code, _mm512_set1_epi32(255)), 8 * c));
        }
        const __m512i b = _mm512_shuffle_epi8(acc, pack);
        uint8_t *o = q + 3 * p;
#define QC_C3_LANE(L)                                                                                        \
        if (n > 4 * (L)) {                                                                                   \
            const int64_t k = n - 4 * (L) < 4 ? n - 4 * (L) : 4;                                             \
            _mm_mask_storeu_epi8(o + 12 * (L), (__mmask16)((1u << (3 * k)) - 1u), _mm512_extracti32x4_epi32(b, L)); \
        }
        QC_C3_LANE(0) QC_C3_LANE(1) QC_C3_LANE(2) QC_C3_LANE(3)
#undef QC_C3_LANE
    }
    return _mm512_cmp_ps_mask(nf, nf, _CMP_UNORD_Q) != 0;
}
#endif

static int qc_sq_rows(int isa, const float *x, int64_t R, int64_t C, int64_t ldx, float inv, int32_t z, int32_t lo,
                      int32_t hi, uint8_t *q, int64_t Cp)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) return qc_sq_rows_avx512(x, R, C, ldx, inv, z, lo, hi, q, Cp);
    if (isa == QC_ISA_AVX2) return qc_sq_rows_avx2(x, R, C, ldx, inv, z, lo, hi, q, Cp);
#endif
    return qc_sq_rows_portable(x, R, C, ldx, inv, z, lo, hi, q, Cp);
}

/* pixels [0, HW) of the C planes x + c * cstride -> HW NHWC pixels of Cp bytes at q */
static int qc_sq_nchw(int isa, const float *x, int64_t C, int64_t HW, int64_t cstride, float inv, int32_t z,
                      int32_t lo, int32_t hi, uint8_t *q, int64_t Cp)
{
#if QC_X86
    if (isa == QC_ISA_VNNI && Cp == 4) return qc_sq_nchw_c4_avx512(x, C, HW, cstride, inv, z, lo, hi, q);
    if (isa == QC_ISA_VNNI && Cp == 3 && C == 3) return qc_sq_nchw_c3_avx512(x, HW, cstride, inv, z, lo, hi, q);
    if (isa != QC_ISA_PORTABLE) return qc_sq_nchw_avx2(x, C, HW, cstride, inv, z, lo, hi, q, Cp);
#endif
    return qc_sq_nchw_portable(x, C, HW, cstride, inv, z, lo, hi, q, Cp);
}

/* -------------------------------------------------------------------------------------- epilogue */

static inline void qc_conv_epi_scalar(const qc_conv_args *g, int64_t ro, int64_t j, int32_t acc)
{
    int32_t x = (int32_t)((uint32_t)acc - (uint32_t)g->zc[j]);
    if (g->mode == 0) {
        ((int32_t *)g->out)[ro + j] = x;
        return;
    }
    float y = (float)x * g->mult[j];
    if (g->bias) y = y + g->bias[j];
    if (g->res && g->mode == 2) {
        float t = (float)((int32_t)g->res[ro + j] - g->zr) * g->mr;
        y = y + t;
    }
    if (g->mode == 1) {
        if (g->clamp) {
            y = y < g->clo ? g->clo : y;
            y = y > g->chi ? g->chi : y;
        }
        ((float *)g->out)[ro + (g->nchw ? j * g->OH * g->OW : j)] = y;
        return;
    }
    y = y < g->clo ? g->clo : y;
    y = y > g->chi ? g->chi : y;
    float m = y + 12582912.0f;
    int32_t b; memcpy(&b, &m, 4);
    ((uint8_t *)g->out)[ro + j] = (uint8_t)(b - 0x4B400000 + g->zo);
}

/* The epilogue of output channels [j0, j0 + n) of one output pixel (row offset ro) from their exact sums acc:
 * the same arithmetic as qc_conv_epi_scalar, written as loops gcc vectorizes (chunks of 64 channels). */
#define QC_EPI_ROW(NAME, ATTR)                                                                               \
    ATTR static void NAME(const qc_conv_args *g, int64_t ro, int64_t j0, int64_t n, const int32_t *acc)      \
    {                                                                                                        \
        float y[64];                                                                                         \
        for (int64_t c0 = 0; c0 < n; c0 += 64) {                                                             \
            const int64_t m = n - c0 < 64 ? n - c0 : 64, j = j0 + c0;                                        \
            const int32_t *a = acc + c0, *zc = g->zc + j;                                                    \
            if (g->mode == 0) {                                                                              \
                int32_t *o = (int32_t *)g->out + ro + j;                                                     \
                for (int64_t i = 0; i < m; i++) o[i] = (int32_t)((uint32_t)a[i] - (uint32_t)zc[i]);          \
                continue;                                                                                    \
            }                                                                                                \
            const float *mu = g->mult + j;                                                                   \
            for (int64_t i = 0; i < m; i++) y[i] = (float)(int32_t)((uint32_t)a[i] - (uint32_t)zc[i]) * mu[i]; \
            if (g->bias) {                                                                                   \
                const float *bi = g->bias + j;                                                               \
                for (int64_t i = 0; i < m; i++) y[i] = y[i] + bi[i];                                         \
            }                                                                                                \
            if (g->res && g->mode == 2) {                                                                    \
                const uint8_t *rs = g->res + ro + j;                                                         \
                const int32_t zr = g->zr;                                                                    \
                const float mr = g->mr;                                                                      \
                for (int64_t i = 0; i < m; i++) {                                                            \
                    float t = (float)((int32_t)rs[i] - zr) * mr;                                             \
                    y[i] = y[i] + t;                                                                         \
                }                                                                                            \
            }                                                                                                \
            const float lo = g->clo, hi = g->chi;                                                            \
            if (g->clamp)                                                                                    \
                for (int64_t i = 0; i < m; i++) {                                                            \
                    float v = y[i] < lo ? lo : y[i];                                                         \
                    y[i] = v > hi ? hi : v;                                                                  \
                }                                                                                            \
            if (g->mode == 1) {                                                                              \
                float *o = (float *)g->out + ro;                                                             \
                if (g->nchw)                                                                                 \
                    for (int64_t i = 0; i < m; i++) o[(j + i) * g->OH * g->OW] = y[i];                       \
                else                                                                                         \
                    for (int64_t i = 0; i < m; i++) o[j + i] = y[i];                                         \
                continue;                                                                                    \
            }                                                                                                \
            uint8_t *o = (uint8_t *)g->out + ro + j;                                                         \
            const int32_t zo = g->zo;                                                                        \
            for (int64_t i = 0; i < m; i++) {                                                                \
                float t = y[i] + 12582912.0f;                                                                \
                int32_t bits;                                                                                \
                memcpy(&bits, &t, 4);                                                                        \
                o[i] = (uint8_t)(bits - 0x4B400000 + zo);                                                    \
            }                                                                                                \
        }                                                                                                    \
    }
QC_EPI_ROW(qc_epi_row_portable, )
#if QC_X86
QC_EPI_ROW(qc_epi_row_avx2, QC_AVX2_T)
#endif

/* pointers of the T taps of output pixels [m0, m0 + rows) (row-major: P[r * T + t]); one division per call,
 * then the pixel position is stepped; pixels whose window lies inside the image use fixed tap offsets */
static void qc_conv_taps(const qc_conv_args *g, int64_t m0, int64_t rows, const uint8_t **P)
{
    const int64_t T = g->KH * g->KW, ohw = g->OH * g->OW;
    const int64_t rowb = g->in_rs;
    int64_t off[64];
    const int fast = T <= 64; /* larger kernels: every pixel takes the checked path */
    if (fast)
        for (int64_t kh = 0; kh < g->KH; kh++)
            for (int64_t kw = 0; kw < g->KW; kw++) off[kh * g->KW + kw] = kh * g->dh * rowb + kw * g->dw * g->Cp;
    int64_t b = m0 / ohw, rem = m0 % ohw, oh = rem / g->OW, ow = rem % g->OW;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *img = g->in + b * g->in_is;
        const uint8_t **pr = P + r * T;
        int64_t ih0 = oh * g->sh - g->ph, iw0 = ow * g->sw - g->pw;
        if (fast && ih0 >= 0 && ih0 + (g->KH - 1) * g->dh < g->H && iw0 >= 0 && iw0 + (g->KW - 1) * g->dw < g->W) {
            const uint8_t *base = img + ih0 * rowb + iw0 * g->Cp;
            for (int64_t t = 0; t < T; t++) pr[t] = base + off[t];
        } else {
            for (int64_t kh = 0; kh < g->KH; kh++) {
                int64_t ih = ih0 + kh * g->dh;
                for (int64_t kw = 0; kw < g->KW; kw++) {
                    int64_t iw = iw0 + kw * g->dw;
                    int ok = ih >= 0 && ih < g->H && iw >= 0 && iw < g->W;
                    pr[kh * g->KW + kw] = ok ? img + ih * rowb + iw * g->Cp : g->zrow;
                }
            }
        }
        if (++ow == g->OW) {
            ow = 0;
            if (++oh == g->OH) { oh = 0; b++; }
        }
    }
}

/* -------------------------------------------------------------------------------------- portable micro-kernel */

/* The accumulation over one tap is gemm_kernels.h's (qc_acc_*: the GEMM micro-kernels' loop), called once per
 * tap with that tap's row pointers; the packed panel is read straight through (K ordered (tap, channel)). */

/* k-major panel layout: B[(t*Cp + c) * NR + j] */
static void qc_cukr_portable(int64_t T, int64_t Cp, const uint8_t *const *P, const int8_t *B, int mr, int nr,
                             const qc_conv_args *g, const int64_t *ro, int64_t j0)
{
    int32_t acc[QC_P_MR][QC_P_NR];
    memset(acc, 0, sizeof(acc));
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *ap[QC_P_MR];
        for (int r = 0; r < QC_P_MR; r++) ap[r] = P[(r < mr ? r : mr - 1) * T + t];
        B = qc_acc_portable(acc, ap, Cp / 4, B);
    }
    for (int r = 0; r < mr; r++) qc_epi_row_portable(g, ro[r], j0, nr, acc[r]);
}

#if QC_X86
/* -------------------------------------------------------------------------------------- AVX2 micro-kernel */

/* int16 layout: k-pair h = k/2: B[(h * NR + j) * 2 + k%2], NR = 16 */
QC_AVX2_T static void qc_cukr_avx2(int64_t T, int64_t Cp, const uint8_t *const *P, const int16_t *B, int mr, int nr,
                                   const qc_conv_args *g, const int64_t *ro, int64_t j0)
{
    __m256i acc[QC_A_MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < QC_A_MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *ap[QC_A_MR];
#pragma GCC unroll 8
        for (int r = 0; r < QC_A_MR; r++) ap[r] = P[(r < mr ? r : mr - 1) * T + t];
        B = qc_acc_avx2(acc, ap, Cp / 4, B);
    }
    int32_t tile[QC_A_MR][QC_A_NR];
#pragma GCC unroll 8
    for (int r = 0; r < QC_A_MR; r++) {
        _mm256_storeu_si256((__m256i *)&tile[r][0], acc[r][0]);
        _mm256_storeu_si256((__m256i *)&tile[r][8], acc[r][1]);
    }
    for (int r = 0; r < mr; r++) qc_epi_row_avx2(g, ro[r], j0, nr, tile[r]);
}

/* -------------------------------------------------------------------------------------- AVX-512 VNNI micro-kernel */

/* the epilogue of 16 output channels [j, j + 16) (masked by m) of the pixel at row offset o, from their sums
 * (already corrected for the zero point); mv, bv: those channels' mult and bias (bias 0 without one) */
QC_VNNI_T static inline __attribute__((always_inline)) void
qc_epi16_vnni(const qc_conv_args *g, int64_t o, int64_t j, __m512i x, __mmask16 m, __m512 mv, __m512 bv)
{
    if (g->mode == 0) {
        _mm512_mask_storeu_epi32((int32_t *)g->out + o + j, m, x);
        return;
    }
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(x), mv);
    if (g->bias) y = _mm512_add_ps(y, bv);
    if (g->res && g->mode == 2) {
        __m512i r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, g->res + o + j));
        y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, _mm512_set1_epi32(g->zr))),
                                           _mm512_set1_ps(g->mr)));
    }
    const __m512 flo = _mm512_set1_ps(g->clo), fhi = _mm512_set1_ps(g->chi);
    if (g->mode == 1) {
        if (g->clamp) y = _mm512_min_ps(_mm512_max_ps(y, flo), fhi);
        if (g->nchw) { /* one pixel's 16 channels go to 16 planes */
            const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            const __m512i vplane = _mm512_set1_epi32((int32_t)(g->OH * g->OW));
            _mm512_mask_i32scatter_ps((float *)g->out + o, m,
                                      _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32((int32_t)j), lane),
                                                         vplane), y, 4);
        } else {
            _mm512_mask_storeu_ps((float *)g->out + o + j, m, y);
        }
        return;
    }
    y = _mm512_min_ps(_mm512_max_ps(y, flo), fhi);
    __m512i c = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(y, _mm512_set1_ps(12582912.0f))),
                                 _mm512_set1_epi32(g->zo - 0x4B400000));
    _mm_mask_storeu_epi8((uint8_t *)g->out + o + j, m, _mm512_cvtepi32_epi8(c));
}

/* The register tile of MRV (a compile-time constant after inlining) output pixels x 32 channels.  Its reduction
 * runs over segments s in [s0, s1): the pointer of pixel r for segment s is P[r * PT + s] + aoff, the segment's
 * packed weights start at B + boff + s * bstride (bytes), and it is kg groups of 4 bytes long.  The plain form:
 * every tap (or kernel row) a segment, sequential weights; the window form (padding skipped): the kernel rows
 * inside the image, each from its first column inside the image (conv_kernels.h, qc_conv_unit). */
QC_VNNI_T static inline __attribute__((always_inline)) void
qc_cukr_vnni_body(int64_t s0, int64_t s1, int64_t PT, int64_t aoff, const uint8_t *const *P, const int8_t *B,
                  int64_t boff, int64_t bstride, int64_t kg, const int32_t *fix, int mr, int nr,
                  const qc_conv_args *g, const int64_t *ro, int64_t j0, const int MRV)
{
    __m512i acc[QC_V_MR][QC_V_NV], a0[QC_V_NV];
    __mmask16 m[QC_V_NV];
#pragma GCC unroll 4
    for (int v = 0; v < QC_V_NV; v++) {
        int w = nr - 16 * v;
        w = w < 0 ? 0 : (w > 16 ? 16 : w);
        m[v] = (__mmask16)((1u << w) - 1u);
    }
    /* the sums start at -za*colsum (the zero-point correction; + za * the skipped taps' sums in the window form) */
#pragma GCC unroll 4
    for (int v = 0; v < QC_V_NV; v++) {
        a0[v] = _mm512_sub_epi32(fix ? _mm512_loadu_si512(fix + 16 * v) : _mm512_setzero_si512(),
                                 _mm512_maskz_loadu_epi32(m[v], g->zc + j0 + 16 * v));
    }
#pragma GCC unroll 16
    for (int r = 0; r < MRV; r++)
#pragma GCC unroll 4
        for (int v = 0; v < QC_V_NV; v++) acc[r][v] = a0[v];
    for (int64_t t = s0; t < s1; t++) {
        const uint8_t *ap[QC_V_MR];
#pragma GCC unroll 16
        for (int r = 0; r < MRV; r++) ap[r] = P[(r < mr ? r : mr - 1) * PT + t] + aoff;
        qc_acc_vnni(acc, ap, kg, B + boff + t * bstride, MRV);
    }
#pragma GCC unroll 4
    for (int v = 0; v < QC_V_NV; v++) {  /* per column vector: its constants once, then every row */
        const int64_t j = j0 + 16 * v;
        const __m512 mv = _mm512_maskz_loadu_ps(m[v], g->mult + j);
        const __m512 bv = g->bias ? _mm512_maskz_loadu_ps(m[v], g->bias + j) : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int r = 0; r < MRV; r++) {
            if (r >= mr) break;
            qc_epi16_vnni(g, ro[r], j, acc[r][v], m[v], mv, bv);
        }
    }
}

#define QC_CVNNI_UKR(NAME, MRV)                                                                              \
    QC_VNNI_T static void NAME(int64_t s0, int64_t s1, int64_t PT, int64_t aoff, const uint8_t *const *P,      \
                               const int8_t *B, int64_t boff, int64_t bstride, int64_t kg, const int32_t *fix, \
                               int mr, int nr, const qc_conv_args *g, const int64_t *ro, int64_t j0)          \
    {                                                                                                        \
        qc_cukr_vnni_body(s0, s1, PT, aoff, P, B, boff, bstride, kg, fix, mr, nr, g, ro, j0, MRV);           \
    }
QC_CVNNI_UKR(qc_cukr_vnni8, 8)
QC_CVNNI_UKR(qc_cukr_vnni4, 4)
QC_CVNNI_UKR(qc_cukr_vnni2, 2)
QC_CVNNI_UKR(qc_cukr_vnni1, 1)

/* a tile of mr (<= 8) rows: the tile of the smallest sufficient height */
QC_VNNI_T static void qc_cukr_vnni(int64_t s0, int64_t s1, int64_t PT, int64_t aoff, const uint8_t *const *P,
                                   const int8_t *B, int64_t boff, int64_t bstride, int64_t kg, const int32_t *fix,
                                   int mr, int nr, const qc_conv_args *g, const int64_t *ro, int64_t j0)
{
    if (mr > 4) qc_cukr_vnni8(s0, s1, PT, aoff, P, B, boff, bstride, kg, fix, mr, nr, g, ro, j0);
    else if (mr > 2) qc_cukr_vnni4(s0, s1, PT, aoff, P, B, boff, bstride, kg, fix, mr, nr, g, ro, j0);
    else if (mr > 1) qc_cukr_vnni2(s0, s1, PT, aoff, P, B, boff, bstride, kg, fix, mr, nr, g, ro, j0);
    else qc_cukr_vnni1(s0, s1, PT, aoff, P, B, boff, bstride, kg, fix, mr, nr, g, ro, j0);
}
#endif /* QC_X86 */

/* -------------------------------------------------------------------------------------- grouped (direct) */

/* groups > 1: direct loop on unpacked weights wg (N, T, Cg); input channels of group k: [k*Cg, (k+1)*Cg).
 * The loops are written so that gcc vectorizes the channel dot product (and, for depthwise, nothing is lost:
 * T * Cg multiply-adds per output). */
#define QC_CONV_GROUPED(NAME, ATTR)                                                                          \
    ATTR static void NAME(const qc_conv_args *g, int64_t rows, const uint8_t **P, const int64_t *orow)                \
    {                                                                                                        \
        const int64_t T = g->KH * g->KW, Cg = g->Cg, Ng = g->N / g->groups;                                  \
        for (int64_t r = 0; r < rows; r++) {                                                                 \
            const uint8_t **pr = P + r * T;                                                                  \
            for (int64_t n = 0; n < g->N; n++) {                                                             \
                const int64_t c0 = (n / Ng) * Cg;                                                            \
                const int8_t *w = g->wg + n * T * Cg;                                                        \
                int32_t acc = 0;                                                                             \
                for (int64_t t = 0; t < T; t++) {                                                            \
                    const uint8_t *a = pr[t] + c0;                                                           \
                    const int8_t *wt = w + t * Cg;                                                           \
                    for (int64_t c = 0; c < Cg; c++) acc += (int32_t)a[c] * (int32_t)wt[c];                  \
                }                                                                                            \
                qc_conv_epi_scalar(g, orow[r], n, acc);                                                       \
            }                                                                                                \
        }                                                                                                    \
    }
QC_CONV_GROUPED(qc_conv_grouped_portable, )
#if QC_X86
QC_CONV_GROUPED(qc_conv_grouped_avx2, QC_AVX2_T)
QC_CONV_GROUPED(qc_conv_grouped_avx512, QC_VNNI_T)
#endif

/* Depthwise (groups == N == C, one channel per group).  The weights come packed per copy (qcore.ops.conv,
 * pack_depthwise):
 *   AVX-512 VNNI: per block of 64 channels and per tap, 4 "phase" vectors of 64 bytes: phase d holds, in dword j,
 *                 w[64b + 4j + d][t] at byte d and zeros elsewhere;
 *   other copies: int32 (T, N), w[t*N + n].
 * The VNNI kernel multiplies 64 input bytes (64 channels of one tap) by each phase vector with vpdpbusd: dword j
 * of accumulator d sums channel 4j + d only (the other three products are by zero), so no byte is shuffled;
 * 4 output pixels x 4 phases are 16 accumulators.  The epilogue runs per phase (constants in phase order) and
 * joins the 4 phases' codes into 64 bytes with shifts. */
#define QC_DW_CHUNK 64
#define QC_CONV_DW(NAME, ATTR, EPI)                                                                          \
    ATTR static void NAME(const qc_conv_args *g, int64_t rows, const uint8_t **P, const int64_t *orow,       \
                          int64_t j0, int64_t j1)                                                            \
    {                                                                                                        \
        const int64_t T = g->KH * g->KW, N = g->N;                                                           \
        const int32_t *wt = (const int32_t *)g->dwp;                                                         \
        int32_t acc[QC_DW_CHUNK];                                                                            \
        for (int64_t r = 0; r < rows; r++) {                                                                 \
            const uint8_t **pr = P + r * T;                                                                  \
            for (int64_t n0 = j0; n0 < j1; n0 += QC_DW_CHUNK) {                                              \
                const int64_t nc = j1 - n0 < QC_DW_CHUNK ? j1 - n0 : QC_DW_CHUNK;                            \
                for (int64_t j = 0; j < nc; j++) acc[j] = 0;                                                 \
                for (int64_t t = 0; t < T; t++) {                                                            \
                    const uint8_t *a = pr[t] + n0;                                                           \
                    const int32_t *w = wt + t * N + n0;                                                      \
                    for (int64_t j = 0; j < nc; j++) acc[j] += (int32_t)a[j] * w[j];                         \
                }                                                                                            \
                EPI(g, orow[r], n0, nc, acc);                                                                \
            }                                                                                                \
        }                                                                                                    \
    }
QC_CONV_DW(qc_conv_dw_portable, , qc_epi_row_portable)
#if QC_X86
QC_CONV_DW(qc_conv_dw_avx2, QC_AVX2_T, qc_epi_row_avx2)

#define QC_DW_PX 4  /* output pixels per register tile of the VNNI depthwise kernel */

/* one block of channels [c0, c0 + nc) (nc <= 4*L, L = dwords per vector: 16 for zmm, 8 for ymm) of rows output
 * pixels; PFX is the intrinsics' prefix (_mm512 / _mm256), V the vector type, MK the byte mask type */
#define QC_DW_VNNI_BLOCK(NAME, V, F, PFX, MK, L, LOADV, STOREV, ZEROV, CASTF)                                   \
    QC_VNNI_T static void NAME(const qc_conv_args *g, int64_t rows, const uint8_t **P, const int64_t *orow,        \
                               int64_t c0, int64_t nc, const int8_t *wb, int rowtaps)                            \
    {                                                                                                            \
        const int64_t T = g->KH * g->KW, KW = g->KW, PT = rowtaps ? g->KH : T, cs = rowtaps ? g->Cp : 0;       \
        const MK mk = nc >= 4 * L ? (MK)~(MK)0 : (MK)((((MK)1) << nc) - 1);                                      \
        /* the epilogue's per-channel constants in phase order: [d][j] is channel c0 + 4j + d (0 past nc) */    \
        int32_t nzc[4][L];                                                                                       \
        float mp[4][L], bp[4][L];                                                                                \
        for (int d = 0; d < 4; d++)                                                                              \
            for (int j = 0; j < L; j++) {                                                                        \
                const int64_t i = 4 * j + d, c = c0 + i;                                                         \
                const int ok = i < nc;                                                                           \
                nzc[d][j] = ok ? (int32_t)(0u - (uint32_t)g->zc[c]) : 0;                                         \
                mp[d][j] = ok ? g->mult[c] : 0.f;                                                                \
                bp[d][j] = ok && g->bias ? g->bias[c] : 0.f;                                                     \
            }                                                                                                    \
        V init[4];                                                                                               \
        for (int d = 0; d < 4; d++) init[d] = LOADV((const V *)nzc[d]);              \
        for (int64_t r = 0; r < rows; r += QC_DW_PX) {                                                           \
            const int np = rows - r < QC_DW_PX ? (int)(rows - r) : QC_DW_PX;                                     \
            V acc[QC_DW_PX][4]; /* start at -zc: the sums come out with the zero point corrected */              \
            _Pragma("GCC unroll 4") for (int p = 0; p < QC_DW_PX; p++)                                           \
                _Pragma("GCC unroll 4") for (int d = 0; d < 4; d++) acc[p][d] = init[d];                          \
            const uint8_t *const *pr[QC_DW_PX];                                                                  \
            _Pragma("GCC unroll 4") for (int p = 0; p < QC_DW_PX; p++)                                           \
                pr[p] = P + (r + (p < np ? p : np - 1)) * PT;                                                    \
            for (int64_t t = 0; t < T; t++) {                                                                    \
                const int8_t *wt = wb + t * 256;                                                                 \
                /* tap t: its own pointer, or (row taps) the pointer of its kernel row + its column * Cp */       \
                const int64_t ti = rowtaps ? t / KW : t, toff = rowtaps ? (t % KW) * cs + c0 : c0;               \
                V w[4];                                                                                          \
                _Pragma("GCC unroll 4") for (int d = 0; d < 4; d++)                                              \
                    w[d] = LOADV((const V *)(wt + 64 * d));                           \
                _Pragma("GCC unroll 4") for (int p = 0; p < QC_DW_PX; p++) {                                     \
                    const V x = PFX##_maskz_loadu_epi8(mk, pr[p][ti] + toff);                                    \
                    _Pragma("GCC unroll 4") for (int d = 0; d < 4; d++)                                          \
                        acc[p][d] = PFX##_dpbusd_epi32(acc[p][d], x, w[d]);                                      \
                }                                                                                                \
            }                                                                                                    \
            _Pragma("GCC unroll 4") for (int p = 0; p < QC_DW_PX; p++) { /* unrolled: acc[p] in registers */     \
                if (p >= np) break;                                                                              \
                const int64_t o = orow[r + p];                                                                   \
                if (g->mode == 2) {                                                                              \
                    V codes = ZEROV();                                                 \
                    _Pragma("GCC unroll 4") for (int d = 0; d < 4; d++) {                                        \
                        F y = PFX##_mul_ps(PFX##_cvtepi32_ps(acc[p][d]), PFX##_loadu_ps(mp[d]));        \
                        y = PFX##_add_ps(y, PFX##_loadu_ps(bp[d]));                                              \
                        y = PFX##_min_ps(PFX##_max_ps(y, PFX##_set1_ps(g->clo)), PFX##_set1_ps(g->chi));         \
                        V c = PFX##_add_epi32(CASTF(                                     \
                                                  PFX##_add_ps(y, PFX##_set1_ps(12582912.0f))),                  \
                                              PFX##_set1_epi32(g->zo - 0x4B400000));                             \
                        /* the code's byte to byte d of its dword (shift, then keep that byte) */                \
                        codes = PFX##_ternarylogic_epi32(codes, PFX##_slli_epi32(c, 8 * d),                      \
                                                         PFX##_set1_epi32(255 << (8 * d)), 0xF8);                \
                    }                                                                                            \
                    PFX##_mask_storeu_epi8((uint8_t *)g->out + o + c0, mk, codes);                               \
                    continue;                                                                                    \
                }                                                                                                \
                /* int32 / float output (tests, a float consumer): back to channel order one element at a time */ \
                uint32_t tmp[4][L];                                                                              \
                _Pragma("GCC unroll 4") for (int d = 0; d < 4; d++) {                                            \
                    if (g->mode == 0) {                                                                          \
                        STOREV((V *)tmp[d], acc[p][d]);                               \
                        continue;                                                                                \
                    }                                                                                            \
                    F y = PFX##_mul_ps(PFX##_cvtepi32_ps(acc[p][d]), PFX##_loadu_ps(mp[d]));            \
                    y = PFX##_add_ps(y, PFX##_loadu_ps(bp[d]));                                                  \
                    if (g->clamp) y = PFX##_min_ps(PFX##_max_ps(y, PFX##_set1_ps(g->clo)), PFX##_set1_ps(g->chi)); \
                    PFX##_storeu_ps((float *)tmp[d], y);                                                         \
                }                                                                                                \
                for (int64_t i = 0; i < nc; i++) {                                                               \
                    const uint32_t v = tmp[i & 3][i >> 2];                                                       \
                    if (g->mode == 1 && g->nchw)                                                                 \
                        ((uint32_t *)g->out)[o + (c0 + i) * g->OH * g->OW] = v;                                  \
                    else                                                                                         \
                        ((uint32_t *)g->out)[o + c0 + i] = v;                                                    \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
    }
QC_DW_VNNI_BLOCK(qc_dw_vnni_block64, __m512i, __m512, _mm512, __mmask64, 16, _mm512_loadu_si512, _mm512_storeu_si512,
                 _mm512_setzero_si512, _mm512_castps_si512)
QC_DW_VNNI_BLOCK(qc_dw_vnni_block32, __m256i, __m256, _mm256, __mmask32, 8, _mm256_loadu_si256, _mm256_storeu_si256,
                 _mm256_setzero_si256, _mm256_castps_si256)

/* channels [j0, j1): blocks of 64 (zmm), a last block of at most 32 in ymm (two of them per cycle) */
QC_VNNI_T static void qc_conv_dw_vnni(const qc_conv_args *g, int64_t rows, const uint8_t **P, const int64_t *orow,
                                      int64_t j0, int64_t j1, int rowtaps)
{
    const int64_t T = g->KH * g->KW;
    const int8_t *wp = (const int8_t *)g->dwp;
    for (int64_t c0 = j0; c0 < j1; c0 += 64) {
        const int64_t nc = j1 - c0 < 64 ? j1 - c0 : 64;
        const int8_t *wb = wp + (c0 / 64) * T * 256;
        if (nc <= 32)
            qc_dw_vnni_block32(g, rows, P, orow, c0, nc, wb, rowtaps);
        else
            qc_dw_vnni_block64(g, rows, P, orow, c0, nc, wb, rowtaps);
    }
}
#endif

/* -------------------------------------------------------------------------------------- driver */

/* the zero-point padding channels [N, ldo) of each uint8 output row (by the units of the last channel block) */
static void qc_conv_pad_out(const qc_conv_args *g, int64_t rows, const int64_t *orow)
{
    if (g->mode != 2 || g->ldo == g->N) return;
    for (int64_t r = 0; r < rows; r++)
        memset((uint8_t *)g->out + orow[r] + g->N, g->zo, (size_t)(g->ldo - g->N));
}

/* element offsets of the output rows of pixels [m0, m0 + rows): m * ldo, or the padded position (stepped) */
static void qc_conv_out_rows(const qc_conv_args *g, int64_t m0, int64_t rows, int64_t *orow)
{
    if (g->nchw) { /* pixel m = b*OH*OW + p starts at b*N*OH*OW + p */
        const int64_t ohw = g->OH * g->OW;
        for (int64_t r = 0; r < rows; r++) orow[r] = (m0 + r) / ohw * g->N * ohw + (m0 + r) % ohw;
        return;
    }
    if (!g->opad_h && !g->opad_w) {
        for (int64_t r = 0; r < rows; r++) orow[r] = (m0 + r) * g->ldo;
        return;
    }
    const int64_t ohw = g->OH * g->OW, PW = g->OW + 2 * g->opad_w, PH = g->OH + 2 * g->opad_h, ldo = g->ldo;
    int64_t b = m0 / ohw, rem = m0 % ohw, oh = rem / g->OW, ow = rem % g->OW;
    int64_t o = ((b * PH + oh + g->opad_h) * PW + ow + g->opad_w) * ldo;
    for (int64_t r = 0; r < rows; r++) {
        orow[r] = o;
        if (++ow == g->OW) {
            ow = 0;
            if (++oh == g->OH) { oh = 0; b++; }
            o = ((b * PH + oh + g->opad_h) * PW + g->opad_w) * ldo;
        } else {
            o += ldo;
        }
    }
}

/* If every window of pixels [m0, m0 + rows) lies inside the input and dw == 1, one pointer per kernel row
 * (P[r * KH + kh]): the KW taps of a kernel row are KW*Cp contiguous bytes, and the reduction index
 * (kh*KW + kw)*Cp + c is the same.  Returns 0 (P untouched) otherwise.  Without padding (ph = pw = 0, e.g. an
 * input that already holds it) every window is inside: the pyx layer checked OH/OW against the input size. */
static int qc_conv_row_taps(const qc_conv_args *g, int64_t m0, int64_t rows, const uint8_t **P)
{
    if (g->dw != 1) return 0;
    const int64_t ohw = g->OH * g->OW, rowb = g->in_rs, KH = g->KH, khs = g->dh * rowb;
    const int64_t b0 = m0 / ohw, rem = m0 % ohw, oh0 = rem / g->OW, ow0 = rem % g->OW;
    if (g->ph || g->pw) {
        int64_t bb = b0, h = oh0, w = ow0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t ih0 = h * g->sh - g->ph, iw0 = w * g->sw - g->pw;
            if (ih0 < 0 || ih0 + (KH - 1) * g->dh >= g->H || iw0 < 0 || iw0 + g->KW - 1 >= g->W) return 0;
            if (++w == g->OW) {
                w = 0;
                if (++h == g->OH) { h = 0; bb++; }
            }
        }
    }
    int64_t b = b0, oh = oh0, ow = ow0;
    const int64_t step = g->sw * g->Cp;
    const uint8_t *base = g->in + b * g->in_is + (oh * g->sh - g->ph) * rowb + (ow * g->sw - g->pw) * g->Cp;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t **pr = P + r * KH;
        const uint8_t *p = base;
        for (int64_t kh = 0; kh < KH; kh++, p += khs) pr[kh] = p;
        if (++ow == g->OW) {
            ow = 0;
            if (++oh == g->OH) { oh = 0; b++; }
            base = g->in + b * g->in_is + (oh * g->sh - g->ph) * rowb - g->pw * g->Cp;
        } else {
            base += step;
        }
    }
    return 1;
}

#define QC_CONV_MC_MAX 64

/* The element offset of output pixel (b, oh, ow): NCHW, padded uint8, or plain rows (qc_conv_out_rows) */
static inline int64_t qc_conv_out_offset(const qc_conv_args *g, int64_t b, int64_t oh, int64_t ow)
{
    if (g->nchw) return b * g->N * g->OH * g->OW + oh * g->OW + ow;
    if (g->opad_h || g->opad_w)
        return ((b * (g->OH + 2 * g->opad_h) + oh + g->opad_h) * (g->OW + 2 * g->opad_w) + ow + g->opad_w) * g->ldo;
    return ((b * g->OH + oh) * g->OW + ow) * g->ldo;
}

/* Padding skipped (AVX-512 VNNI, groups == 1, the input window carrying the zero padding, batch >= 8): output
 * pixels are taken position-major (m = (oh*OW + ow) * B + b), so a register tile holds up to 8 images at one
 * position, whose taps in the padding are the same: the tile's reduction runs over the kernel rows inside the
 * image, each from its first column inside it.  Bit-identical to computing them (they add (za - za) * w = 0). */
static int qc_conv_window_mode(const qc_conv_args *g)
{
    return g->window && !g->dense && g->groups == 1 && g->isa == QC_ISA_VNNI && g->dw == 1 && g->ph == 0 && g->pw == 0 &&
           g->tapsum && (g->lph || g->lpw) && g->M / (g->OH * g->OW) >= 8;
}

#if QC_X86
static void qc_conv_unit_window(const qc_conv_args *g, int64_t m0, int64_t rows, int64_t j0, int64_t j1,
                                const uint8_t **P, int64_t *orow)
{
    const int64_t Bn = g->M / (g->OH * g->OW), KH = g->KH, KW = g->KW, Cp = g->Cp;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t m = m0 + r, pos = m / Bn, b = m % Bn, oh = pos / g->OW, ow = pos % g->OW;
        const uint8_t *base = g->in + b * g->in_is + oh * g->sh * g->in_rs + ow * g->sw * Cp;
        for (int64_t kh = 0; kh < KH; kh++) P[r * KH + kh] = base + kh * g->dh * g->in_rs;
        orow[r] = qc_conv_out_offset(g, b, oh, ow);
    }
    const int64_t kgrow = KW * Cp / 4, panel = KH * KW * Cp * QC_V_NR;
    for (int64_t j = j0; j < j1; j += QC_V_NR) {
        const int8_t *bp = (const int8_t *)g->Bp + (j / QC_V_NR) * panel;
        const int nr = (int)(j1 - j < QC_V_NR ? j1 - j : QC_V_NR);
        for (int64_t i = 0; i < rows;) {
            const int64_t pos = (m0 + i) / Bn, oh = pos / g->OW, ow = pos % g->OW;
            int64_t end = (pos + 1) * Bn - m0;
            end = end < rows ? end : rows;
            end = end < i + 8 ? end : i + 8;
            int64_t kh0 = 0, kh1 = KH, kw0 = 0, kw1 = KW;
            while (kh0 < KH && oh * g->sh + kh0 * g->dh < g->lph) kh0++;
            while (kh1 > kh0 && oh * g->sh + (kh1 - 1) * g->dh >= g->H - g->lph) kh1--;
            while (kw0 < KW && ow * g->sw + kw0 < g->lpw) kw0++;
            while (kw1 > kw0 && ow * g->sw + kw1 - 1 >= g->W - g->lpw) kw1--;
            if (kw0 >= kw1) kh1 = kh0;  /* every tap in the padding: the sums are 0 */
            /* the zero-point correction subtracts za * (the column sums over every tap): add back za * the
             * sums over the skipped taps (wrapping int32, like the correction) */
            uint32_t fix[QC_V_NR];
            for (int c = 0; c < QC_V_NR; c++) fix[c] = 0;
            for (int64_t kh = 0; kh < KH; kh++)
                for (int64_t kw = 0; kw < KW; kw++) {
                    if (kh >= kh0 && kh < kh1 && kw >= kw0 && kw < kw1) continue;
                    const int32_t *ts = g->tapsum + (kh * KW + kw) * g->Np + j;
                    for (int c = 0; c < QC_V_NR; c++) fix[c] += (uint32_t)ts[c];
                }
            for (int c = 0; c < QC_V_NR; c++) fix[c] *= (uint32_t)g->za;
            qc_cukr_vnni(kh0, kh1, KH, kw0 * Cp, P + i * KH, bp, (kw0 * Cp / 4) * QC_V_NR * 4, kgrow * QC_V_NR * 4,
                         (kw1 - kw0) * Cp / 4, (const int32_t *)fix, (int)(end - i), nr, g, orow + i, j);
            i = end;
        }
    }
}
#endif

/* One work unit: output pixels [u*MC, (u+1)*MC), all output channels.  Returns nonzero if out of memory. */
static int qc_conv_unit(const qc_conv_args *g, int64_t u)
{
    const int64_t T = g->KH * g->KW;
    const int64_t nu = (g->N + g->NC - 1) / g->NC, ub = u / nu, jb = u % nu;
    const int64_t j0 = jb * g->NC, j1 = g->N - j0 < g->NC ? g->N : j0 + g->NC;
    const int64_t m0 = ub * g->MC, rows = g->M - m0 < g->MC ? g->M - m0 : g->MC;
    const uint8_t *stackP[1024];
    const uint8_t **P = stackP;
    if (rows * T > 1024) {
        P = (const uint8_t **)malloc((size_t)(rows * T) * sizeof(*P));
        if (!P) return 1;
    }
    int64_t orow[QC_CONV_MC_MAX];
#if QC_X86
    if (qc_conv_window_mode(g)) {
        qc_conv_unit_window(g, m0, rows, j0, j1, P, orow);
        if (jb == nu - 1) qc_conv_pad_out(g, rows, orow);
        if (P != stackP) free(P);
        return 0;
    }
#endif
    qc_conv_out_rows(g, m0, rows, orow);
    int64_t Tk = T, Ck = g->Cp;
    int rowtaps = 0;
    if ((g->groups == 1 || (g->dwp && g->isa == QC_ISA_VNNI)) && qc_conv_row_taps(g, m0, rows, P)) {
        rowtaps = 1;        /* every window inside the input: one pointer per kernel row, KW*Cp contiguous bytes */
        Tk = g->KH;
        Ck = g->Kr;
    } else if (g->dense) {  /* unreachable: prepare guarantees every window inside the input */
        if (P != stackP) free(P);
        return 1;
    } else {
        qc_conv_taps(g, m0, rows, P);
    }
    if (g->dwp) {  /* depthwise, weights packed for this copy */
#if QC_X86
        if (g->isa == QC_ISA_VNNI) qc_conv_dw_vnni(g, rows, P, orow, j0, j1, rowtaps);
        else if (g->isa != QC_ISA_PORTABLE) qc_conv_dw_avx2(g, rows, P, orow, j0, j1);
        else
#endif
            qc_conv_dw_portable(g, rows, P, orow, j0, j1);
    } else if (g->groups > 1) {
#if QC_X86
        if (g->isa == QC_ISA_VNNI) qc_conv_grouped_avx512(g, rows, P, orow);
        else if (g->isa == QC_ISA_AVX2) qc_conv_grouped_avx2(g, rows, P, orow);
        else
#endif
            qc_conv_grouped_portable(g, rows, P, orow);
    } else {
        const int MR = qc_isa_mr(g->isa), NR = qc_isa_nr(g->isa), bpe = qc_isa_bpe(g->isa);
        const int64_t Kp = Tk * Ck;
        for (int64_t j = j0; j < j1; j += NR) {
            const char *bp = (const char *)g->Bp + (j / NR) * Kp * NR * bpe;
            int nr = (int)(j1 - j < NR ? j1 - j : NR);
            for (int64_t i = 0; i < rows; i += MR) {
                int mr = (int)(rows - i < MR ? rows - i : MR);
                const uint8_t *const *pi = P + i * Tk;
#if QC_X86
                if (g->isa == QC_ISA_VNNI) {
                    qc_cukr_vnni(0, Tk, Tk, 0, pi, (const int8_t *)bp, 0, (Ck / 4) * QC_V_NR * 4, Ck / 4, NULL, mr,
                                 nr, g, orow + i, j);
                } else if (g->isa == QC_ISA_AVX2) {
                    qc_cukr_avx2(Tk, Ck, pi, (const int16_t *)bp, mr, nr, g, orow + i, j);
                } else
#endif
                    qc_cukr_portable(Tk, Ck, pi, (const int8_t *)bp, mr, nr, g, orow + i, j);
            }
        }
    }
    if (jb == nu - 1) qc_conv_pad_out(g, rows, orow);
    if (P != stackP) free(P);
    return 0;
}

#endif /* QCORE_CONV_KERNELS_H */
