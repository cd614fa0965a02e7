/* The uint8 operations of a static int8 CNN besides the convolution (qcore_plugins._conv): residual addition,
 * max and average pooling (adaptive included), table lookups (requantization for concatenation, Hardswish and
 * other elementwise activations) and dequantization back to float NCHW.
 *
 * Activations are uint8 NHWC images: pixel (h, w) of image b at p + b*is + h*rs + w*ld, with ld = Cp bytes per
 * pixel (the channels padded to a multiple of 4) and rs/is the row and image strides of the buffer, which may
 * carry a border around the image (the zero padding of a convolution that reads it).  Every op reads and writes
 * image interiors only; the caller allocates outputs (border filled with the zero point).
 *
 * Arithmetic (the numpy reference, qcore/kernels/conv_reference.py, reproduces it bit for bit):
 *   add:      y = float(qa - za) * ma;  y = y + float(qb - zb) * mb;  q = rint(min(max(y, lo), hi)) + zo
 *             (float32, no fused multiply-add; ma = sa/so, mb = sb/so; [lo, hi] within [-zo, 255 - zo])
 *   max pool: the largest code of the window's taps inside the image (same scale and zero point)
 *   avg pool: q = rint((S - n*z) / d) + z, clipped to [0, 255], in float64: S the sum of the n codes of the
 *             window inside the image, d the divisor (n, the window size with padding, or divisor_override)
 *   lut:      q = T[code] for the first C channels, written at a channel offset (concatenation)
 *   rint rounds half to even (the 1.5*2^23 / 1.5*2^52 trick).
 * Each op is compiled for every instruction-set level (gcc vectorizes the channel loops); the results do not
 * depend on the level.
 */
#ifndef QCORE_QCNN_KERNELS_H
#define QCORE_QCNN_KERNELS_H

#include "conv_kernels.h"

/* ------------------------------------------------------------------------------------------ residual add */

#define QC_ADD_SPAN(NAME, ATTR)                                                                              \
    ATTR static void NAME(const uint8_t *a, const uint8_t *b, uint8_t *o, int64_t n, int32_t za, int32_t zb,  \
                          float ma, float mb, float lo, float hi, int32_t zo)                                 \
    {                                                                                                        \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            float y = (float)((int32_t)a[i] - za) * ma;                                                      \
            float t = (float)((int32_t)b[i] - zb) * mb;                                                      \
            y = y + t;                                                                                       \
            y = y < lo ? lo : y;                                                                             \
            y = y > hi ? hi : y;                                                                             \
            float m = y + 12582912.0f;                                                                       \
            int32_t bits;                                                                                    \
            memcpy(&bits, &m, 4);                                                                            \
            o[i] = (uint8_t)(bits - 0x4B400000 + zo);                                                        \
        }                                                                                                    \
    }
QC_ADD_SPAN(qc_add_span_portable, )
#if QC_X86
QC_ADD_SPAN(qc_add_span_avx2, QC_AVX2_T)
QC_ADD_SPAN(qc_add_span_avx512, QC_VNNI_T)
#endif

/* n contiguous bytes of two images (one interior row) into a third */
static void qc_add_span(int isa, const uint8_t *a, const uint8_t *b, uint8_t *o, int64_t n, int32_t za, int32_t zb,
                        float ma, float mb, float lo, float hi, int32_t zo)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) { qc_add_span_avx512(a, b, o, n, za, zb, ma, mb, lo, hi, zo); return; }
    if (isa == QC_ISA_AVX2) { qc_add_span_avx2(a, b, o, n, za, zb, ma, mb, lo, hi, zo); return; }
#endif
    qc_add_span_portable(a, b, o, n, za, zb, ma, mb, lo, hi, zo);
}

/* ------------------------------------------------------------------------------------------ pooling */

typedef struct {
    const uint8_t *in;      /* pixel (0, 0) of image 0 */
    int64_t H, W, Cp, in_rs, in_is;
    uint8_t *out;           /* pixel (0, 0) of output image 0 */
    int64_t OH, OW, out_rs, out_is;
    const int32_t *hs, *he; /* input rows [hs[oh], he[oh]) of output row oh, inside the image */
    const int32_t *ws, *we; /* input columns [ws[ow], we[ow]) of output column ow */
    int64_t KH, KW, sh, sw, ph, pw, dh, dw;  /* max pooling: the window (taps off the image are skipped) */
    const double *div;      /* average pooling: divisor per output pixel (OH * OW) */
    int32_t z;              /* average pooling: the zero point */
} qc_pool_args;

#define QC_MAXPOOL_ROW(NAME, ATTR)                                                                           \
    ATTR static void NAME(const qc_pool_args *g, int64_t b, int64_t oh)                                      \
    {                                                                                                        \
        const int64_t Cp = g->Cp;                                                                            \
        const uint8_t *img = g->in + b * g->in_is;                                                           \
        uint8_t *orow = g->out + b * g->out_is + oh * g->out_rs;                                             \
        const int64_t h0 = oh * g->sh - g->ph;                                                               \
        for (int64_t ow = 0; ow < g->OW; ow++) {                                                             \
            const int64_t w0 = ow * g->sw - g->pw;                                                           \
            uint8_t *o = orow + ow * Cp;                                                                     \
            int first = 1;                                                                                   \
            for (int64_t kh = 0; kh < g->KH; kh++) {                                                         \
                const int64_t ih = h0 + kh * g->dh;                                                          \
                if (ih < 0 || ih >= g->H) continue;                                                          \
                for (int64_t kw = 0; kw < g->KW; kw++) {                                                     \
                    const int64_t iw = w0 + kw * g->dw;                                                      \
                    if (iw < 0 || iw >= g->W) continue;                                                      \
                    const uint8_t *s = img + ih * g->in_rs + iw * Cp;                                        \
                    if (first) {                                                                             \
                        memcpy(o, s, (size_t)Cp);                                                            \
                        first = 0;                                                                           \
                    } else {                                                                                 \
                        for (int64_t c = 0; c < Cp; c++) o[c] = s[c] > o[c] ? s[c] : o[c];                   \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
            if (first) memset(o, 0, (size_t)Cp); /* no tap inside the image (the caller prevents it) */      \
        }                                                                                                    \
    }
QC_MAXPOOL_ROW(qc_maxpool_row_portable, )
#if QC_X86
QC_MAXPOOL_ROW(qc_maxpool_row_avx2, QC_AVX2_T)
#endif

#if QC_X86
/* AVX-512: the window's rows and columns inside the image found once per output pixel, then 64 channels per
 * vector (masked at the end; codes are >= 0, so a zero vector starts the maximum) */
QC_VNNI_T static void qc_maxpool_row_avx512bw(const qc_pool_args *g, int64_t b, int64_t oh)
{
    const int64_t Cp = g->Cp;
    const uint8_t *img = g->in + b * g->in_is;
    uint8_t *orow = g->out + b * g->out_is + oh * g->out_rs;
    const int64_t h0 = oh * g->sh - g->ph;
    int64_t kh0 = 0, kh1 = g->KH;
    while (kh0 < kh1 && h0 + kh0 * g->dh < 0) kh0++;
    while (kh1 > kh0 && h0 + (kh1 - 1) * g->dh >= g->H) kh1--;
    for (int64_t ow = 0; ow < g->OW; ow++) {
        const int64_t w0 = ow * g->sw - g->pw;
        int64_t kw0 = 0, kw1 = g->KW;
        while (kw0 < kw1 && w0 + kw0 * g->dw < 0) kw0++;
        while (kw1 > kw0 && w0 + (kw1 - 1) * g->dw >= g->W) kw1--;
        uint8_t *o = orow + ow * Cp;
        for (int64_t c = 0; c < Cp; c += 64) {
            const __mmask64 m = Cp - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (Cp - c)) - 1);
            __m512i v = _mm512_setzero_si512();
            for (int64_t kh = kh0; kh < kh1; kh++) {
                const uint8_t *s = img + (h0 + kh * g->dh) * g->in_rs + (w0 + kw0 * g->dw) * Cp + c;
                for (int64_t kw = kw0; kw < kw1; kw++, s += g->dw * Cp)
                    v = _mm512_max_epu8(v, _mm512_maskz_loadu_epi8(m, s));
            }
            _mm512_mask_storeu_epi8(o + c, m, v);
        }
    }
}
#endif

static void qc_maxpool_row(int isa, const qc_pool_args *g, int64_t b, int64_t oh)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) { qc_maxpool_row_avx512bw(g, b, oh); return; }
    if (isa == QC_ISA_AVX2) { qc_maxpool_row_avx2(g, b, oh); return; }
#endif
    qc_maxpool_row_portable(g, b, oh);
}

/* one output row of average pooling; acc: Cp int32 of scratch */
#define QC_AVGPOOL_ROW(NAME, ATTR)                                                                           \
    ATTR static void NAME(const qc_pool_args *g, int64_t b, int64_t oh, int32_t *acc)                         \
    {                                                                                                        \
        const int64_t Cp = g->Cp;                                                                            \
        const uint8_t *img = g->in + b * g->in_is;                                                           \
        uint8_t *orow = g->out + b * g->out_is + oh * g->out_rs;                                             \
        const int64_t h0 = g->hs[oh], h1 = g->he[oh];                                                        \
        for (int64_t ow = 0; ow < g->OW; ow++) {                                                             \
            const int64_t w0 = g->ws[ow], w1 = g->we[ow];                                                    \
            for (int64_t c = 0; c < Cp; c++) acc[c] = 0;                                                     \
            for (int64_t ih = h0; ih < h1; ih++) {                                                           \
                const uint8_t *s = img + ih * g->in_rs + w0 * Cp;                                            \
                for (int64_t iw = w0; iw < w1; iw++, s += Cp)                                                \
                    for (int64_t c = 0; c < Cp; c++) acc[c] += s[c];                                         \
            }                                                                                                \
            const int32_t nz = (int32_t)((h1 - h0) * (w1 - w0)) * g->z;                                      \
            const double d = g->div[oh * g->OW + ow];                                                        \
            uint8_t *o = orow + ow * Cp;                                                                     \
            for (int64_t c = 0; c < Cp; c++) {                                                               \
                double t = (double)(acc[c] - nz) / d;                                                        \
                t = (t + 6755399441055744.0) - 6755399441055744.0; /* rint, half to even */                 \
                t = t + (double)g->z;                                                                        \
                t = t < 0.0 ? 0.0 : t;                                                                       \
                t = t > 255.0 ? 255.0 : t;                                                                   \
                o[c] = (uint8_t)(int32_t)t;                                                                  \
            }                                                                                                \
        }                                                                                                    \
    }
QC_AVGPOOL_ROW(qc_avgpool_row_portable, )
#if QC_X86
QC_AVGPOOL_ROW(qc_avgpool_row_avx2, QC_AVX2_T)
QC_AVGPOOL_ROW(qc_avgpool_row_avx512, QC_VNNI_T)
#endif

static void qc_avgpool_row(int isa, const qc_pool_args *g, int64_t b, int64_t oh, int32_t *acc)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) { qc_avgpool_row_avx512(g, b, oh, acc); return; }
    if (isa == QC_ISA_AVX2) { qc_avgpool_row_avx2(g, b, oh, acc); return; }
#endif
    qc_avgpool_row_portable(g, b, oh, acc);
}

/* ------------------------------------------------------------------------------------------ table lookup */

/* npix pixels: the first C bytes of each source pixel (sld bytes apart) through the 256-entry table T (NULL:
 * copied) into the destination pixels (dld bytes apart) */
#define QC_LUT_PIXELS(NAME, ATTR)                                                                            \
    ATTR static void NAME(const uint8_t *s, int64_t sld, int64_t C, uint8_t *d, int64_t dld, int64_t npix,    \
                          const uint8_t *T)                                                                  \
    {                                                                                                        \
        for (int64_t p = 0; p < npix; p++, s += sld, d += dld) {                                             \
            if (T)                                                                                           \
                for (int64_t c = 0; c < C; c++) d[c] = T[s[c]];                                              \
            else                                                                                             \
                memcpy(d, s, (size_t)C);                                                                     \
        }                                                                                                    \
    }
QC_LUT_PIXELS(qc_lut_pixels_portable, )
#if QC_X86
QC_LUT_PIXELS(qc_lut_pixels_avx2, QC_AVX2_T)
QC_LUT_PIXELS(qc_lut_pixels_avx512, QC_VNNI_T)
#endif

static void qc_lut_pixels(int isa, const uint8_t *s, int64_t sld, int64_t C, uint8_t *d, int64_t dld, int64_t npix,
                          const uint8_t *T)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) { qc_lut_pixels_avx512(s, sld, C, d, dld, npix, T); return; }
    if (isa == QC_ISA_AVX2) { qc_lut_pixels_avx2(s, sld, C, d, dld, npix, T); return; }
#endif
    qc_lut_pixels_portable(s, sld, C, d, dld, npix, T);
}

/* ------------------------------------------------------------------------------------------ dequantize */

/* one interior row (W pixels of ld bytes) of image b, row h -> float32 NCHW out[(b*C + c)*H*W + h*W + w] =
 * float(q - z) * s for the first C channels */
#define QC_DEQUANT_ROW(NAME, ATTR)                                                                           \
    ATTR static void NAME(const uint8_t *row, int64_t ld, int64_t C, int64_t W, int32_t z, float sc,          \
                          float *out, int64_t plane)                                                          \
    {                                                                                                        \
        for (int64_t c = 0; c < C; c++) {                                                                    \
            float *o = out + c * plane;                                                                      \
            const uint8_t *s = row + c;                                                                      \
            for (int64_t w = 0; w < W; w++) o[w] = (float)((int32_t)s[w * ld] - z) * sc;                      \
        }                                                                                                    \
    }
QC_DEQUANT_ROW(qc_dequant_row_portable, )
#if QC_X86
QC_DEQUANT_ROW(qc_dequant_row_avx2, QC_AVX2_T)
QC_DEQUANT_ROW(qc_dequant_row_avx512, QC_VNNI_T)
#endif

static void qc_dequant_row(int isa, const uint8_t *row, int64_t ld, int64_t C, int64_t W, int32_t z, float sc,
                           float *out, int64_t plane)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) { qc_dequant_row_avx512(row, ld, C, W, z, sc, out, plane); return; }
    if (isa == QC_ISA_AVX2) { qc_dequant_row_avx2(row, ld, C, W, z, sc, out, plane); return; }
#endif
    qc_dequant_row_portable(row, ld, C, W, z, sc, out, plane);
}

#endif /* QCORE_QCNN_KERNELS_H */
