/* qcore int8 GEMM kernels: C = A . B^T with int32 accumulation.
 *
 *   A  uint8   M x K, row-major, row stride lda >= Kp, zero-padded from K to Kp = roundup(K, 4)
 *   B  int8    N x K (torch Linear layout), packed once into column panels of NR columns (see docs/gemm.md)
 *
 * Three instruction-set paths, chosen at run time (never a native -march build flag):
 *   QC_ISA_VNNI      AVX-512F/BW/VL + AVX-512 VNNI: vpdpbusd (u8 x s8 -> s32, exact, no saturation)
 *   QC_ISA_AVX2      AVX2: operands widened to int16, vpmaddwd (exact; vpmaddubsw is never used, so no
 *                    int16 saturation can happen)
 *   QC_ISA_PORTABLE  plain C on a k-major panel layout (vectorizable by the compiler at any ISA)
 *
 * The micro-kernels accumulate raw sum_k a'*b' in int32 (wrapping arithmetic, exact whenever the final result
 * fits in int32, which the Python layer guarantees).  The epilogue applies the gemmlowp zero-point
 * correction  C = acc - za_i*colsum_j - zb_j*(rowsum_i - K*za_i)  and, in float mode, the scales and bias:
 *   y = float(C) * sw_j * sa_i + bias_j.
 */
#ifndef QCORE_GEMM_KERNELS_H
#define QCORE_GEMM_KERNELS_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

#include "qcore_isa.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define QC_X86 1
#define QC_VNNI_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define QC_AVX2_T __attribute__((target("avx2,fma")))
#else
#define QC_X86 0
#endif


/* the GEMM's copies, named by their level (qcore_isa.h); the codes are the levels' values */
#define QC_ISA_PORTABLE QCORE_ISA_BASELINE
#define QC_ISA_AVX2 QCORE_ISA_AVX2
#define QC_ISA_VNNI QCORE_ISA_AVX512VNNI

/* register tiles per path (MR rows x NR columns) */
#define QC_V_MR 8
#define QC_V_NV 2
#define QC_V_NR (16 * QC_V_NV)
#define QC_A_MR 4
#define QC_A_NR 16
#define QC_P_MR 4
#define QC_P_NR 16

static int qc_isa_nr(int isa) { return isa == QC_ISA_VNNI ? QC_V_NR : (isa == QC_ISA_AVX2 ? QC_A_NR : QC_P_NR); }
static int qc_isa_mr(int isa) { return isa == QC_ISA_VNNI ? QC_V_MR : (isa == QC_ISA_AVX2 ? QC_A_MR : QC_P_MR); }
/* bytes per packed weight element: the AVX2 path stores weights widened to int16 */
static int qc_isa_bpe(int isa) { return isa == QC_ISA_AVX2 ? 2 : 1; }

/* ------------------------------------------------------------------------------------------------ packing */

/* Pack b (N x K, row stride ldb, bytes xor'ed with `flip`: 0 for int8 input, 0x80 to turn uint8 into
 * int8 = uint8 - 128) into panels for `isa`, and write column sums of the packed (int8) values to colsum.
 * out holds ceil(N/NR) panels of Kp*NR elements (int8, or int16 for AVX2); columns >= N and k >= K are 0.
 *   byte layout (VNNI):           panel p, k-group g = k/4: out[((p*Kp/4 + g)*NR + j)*4 + k%4]
 *   k-major layout (portable):    panel p:                  out[(p*Kp + k)*NR + j]
 *   int16 layout (AVX2):          panel p, k-pair  h = k/2: out[((p*Kp/2 + h)*NR + j)*2 + k%2]
 * Panels are independent: the caller may run it for a range [p0, p1) of panels in parallel. */
static void qc_pack_b(int isa, const uint8_t *b, int64_t N, int64_t K, int64_t ldb, uint8_t flip,
                      int64_t Kp, int64_t p0, int64_t p1, void *out, int32_t *colsum)
{
    const int NR = qc_isa_nr(isa);
    const int wide = qc_isa_bpe(isa) == 2;
    for (int64_t p = p0; p < p1; p++) {
        if (wide) {
            int16_t *o = (int16_t *)out + p * Kp * NR;
            memset(o, 0, (size_t)(Kp * NR) * 2);
        } else {
            int8_t *o = (int8_t *)out + p * Kp * NR;
            memset(o, 0, (size_t)(Kp * NR));
        }
        for (int j = 0; j < NR; j++) {
            int64_t n = p * NR + j;
            if (n >= N) { colsum[n] = 0; continue; }
            const uint8_t *row = b + n * ldb;
            int32_t s = 0;
            if (wide) {
                int16_t *o = (int16_t *)out + p * Kp * NR;
                for (int64_t k = 0; k < K; k++) {
                    int8_t v = (int8_t)(row[k] ^ flip);
                    s += v;
                    o[((k >> 1) * NR + j) * 2 + (k & 1)] = v;
                }
            } else if (isa == QC_ISA_PORTABLE) {
                int8_t *o = (int8_t *)out + p * Kp * NR;
                for (int64_t k = 0; k < K; k++) {
                    int8_t v = (int8_t)(row[k] ^ flip);
                    s += v;
                    o[k * NR + j] = v;
                }
            } else {
                int8_t *o = (int8_t *)out + p * Kp * NR;
                for (int64_t k = 0; k < K; k++) {
                    int8_t v = (int8_t)(row[k] ^ flip);
                    s += v;
                    o[((k >> 2) * NR + j) * 4 + (k & 3)] = v;
                }
            }
            colsum[n] = s;
        }
    }
}

/* ------------------------------------------------------------------------------------------------ epilogue */

typedef struct {
    int mode;              /* 0: int32 output, 1: float32 output */
    int64_t K;
    const int32_t *za;     /* per row (M): activation zero point (uint8 domain), or NULL for 0 */
    const int32_t *rr;     /* per row (M): rowsum_i - K*za_i; used only when zb != NULL */
    const int32_t *cs;     /* per column, padded to Np: column sums of packed int8 weights */
    const int32_t *zb;     /* per column, padded: weight zero point (int8 domain), or NULL for 0 */
    const float *sa;       /* per row: activation scale (float mode) */
    const float *sw;       /* per column, padded: weight scale (float mode) */
    const float *bias;     /* per column, padded, or NULL */
} qc_epi;

typedef struct {
    int isa;
    const uint8_t *A; int64_t lda;
    int64_t M, N, K, Kp;
    const void *B;         /* packed weights */
    void *C; int64_t ldc;  /* int32 or float32 output, M x N, row stride ldc elements */
    qc_epi e;
    int64_t MC, NC, KC;    /* cache blocks: MC multiple of MR, NC multiple of NR, KC multiple of 4 */
    int64_t units_m, units_n;
} qc_gemm_args;

/* scalar epilogue of one element (portable path and tails) */
static inline void qc_epi_scalar(const qc_epi *e, int64_t i, int64_t j, int32_t acc, void *dst)
{
    uint32_t x = (uint32_t)acc;  /* wrapping arithmetic */
    if (e->za) x -= (uint32_t)e->za[i] * (uint32_t)e->cs[j];
    if (e->zb) x -= (uint32_t)e->zb[j] * (uint32_t)e->rr[i];
    if (e->mode == 0) {
        *(int32_t *)dst = (int32_t)x;
    } else {
        float f = (float)(int32_t)x * e->sw[j] * e->sa[i];
        if (e->bias) f += e->bias[j];
        *(float *)dst = f;
    }
}

/* ------------------------------------------------------------------------------------------------ portable */

/* The accumulation loops below are shared by the GEMM micro-kernels (one row pointer per row) and the
 * convolution's (pyx/conv_kernels.h: one call per kernel tap, the row pointers gathered from the input image):
 * acc[r][.] += sum over the kg groups of 4 k of ap[r][k] * B[k][.] for the MR (MRV) rows, B a packed panel in the
 * path's layout; each returns B advanced past the kg groups.  Rows beyond mr get a duplicate pointer (the
 * caller's), so they read valid memory and are not stored. */

/* k-major panel: NR int8 weights per k.  u8 * s8 always fits in int16 (|.| <= 32640), which lets the
 * compiler vectorize the column loop at baseline ISA (SSE2 pmullw + widening adds) */
static inline const int8_t *qc_acc_portable(int32_t acc[QC_P_MR][QC_P_NR], const uint8_t *const *ap, int64_t kg,
                                            const int8_t *B)
{
    for (int64_t k = 0; k < 4 * kg; k++) {
        const int8_t *bk = B + k * QC_P_NR;
        for (int r = 0; r < QC_P_MR; r++) {
            int16_t a = (int16_t)ap[r][k];
            for (int j = 0; j < QC_P_NR; j++)
                acc[r][j] += (int16_t)(a * (int16_t)bk[j]);
        }
    }
    return B + 4 * kg * QC_P_NR;
}

static void qc_ukr_portable(int64_t kg, const uint8_t *A, int64_t lda, const int8_t *B, void *C, int64_t ldc,
                            int first, int last, int mr, int nr, const qc_epi *e, int64_t i0, int64_t j0)
{
    int32_t acc[QC_P_MR][QC_P_NR];
    const uint8_t *ap[QC_P_MR];
    for (int r = 0; r < QC_P_MR; r++) ap[r] = A + (r < mr ? r : mr - 1) * lda;
    memset(acc, 0, sizeof(acc));
    qc_acc_portable(acc, ap, kg, B);
    for (int r = 0; r < mr; r++) {
        int32_t *ci = (int32_t *)C + r * ldc;
        for (int j = 0; j < nr; j++) {
            int32_t v = acc[r][j];
            if (!first) v = (int32_t)((uint32_t)v + (uint32_t)ci[j]);
            if (last) qc_epi_scalar(e, i0 + r, j0 + j, v, (char *)C + (r * ldc + j) * 4);
            else ci[j] = v;
        }
    }
}

#if QC_X86
/* ------------------------------------------------------------------------------------------------ AVX-512 VNNI */

QC_VNNI_T static inline __m512i qc_v_fix(__m512i x, const qc_epi *e, int32_t za, int32_t rr, int64_t j)
{
    if (e->za && za) x = _mm512_sub_epi32(x, _mm512_mullo_epi32(_mm512_set1_epi32(za), _mm512_loadu_si512(e->cs + j)));
    if (e->zb) x = _mm512_sub_epi32(x, _mm512_mullo_epi32(_mm512_set1_epi32(rr), _mm512_loadu_si512(e->zb + j)));
    return x;
}

/* byte layout, NR = 32 columns per k-group of 4: vpdpbusd of 4 broadcast activation bytes with 2 x 16 columns.
 * MRV: a compile-time constant after inlining (the register tile's rows). */
QC_VNNI_T static inline __attribute__((always_inline)) const int8_t *
qc_acc_vnni(__m512i acc[QC_V_MR][QC_V_NV], const uint8_t *const *ap, int64_t kg, const int8_t *B, const int MRV)
{
    for (int64_t g = 0; g < kg; g++) {
        __m512i b[QC_V_NV];
#pragma GCC unroll 4
        for (int v = 0; v < QC_V_NV; v++) b[v] = _mm512_loadu_si512(B + 64 * v);
#pragma GCC unroll 16
        for (int r = 0; r < MRV; r++) {
            int32_t a4;
            memcpy(&a4, ap[r] + 4 * g, 4);
            __m512i a = _mm512_set1_epi32(a4);
#pragma GCC unroll 4
            for (int v = 0; v < QC_V_NV; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], a, b[v]);
        }
        B += QC_V_NR * 4;
    }
    return B;
}

/* MRV (a compile-time constant after inlining) rows are computed; mr <= MRV of them are stored */
QC_VNNI_T static inline __attribute__((always_inline)) void
qc_ukr_vnni_body(int64_t kg, const uint8_t *A, int64_t lda, const int8_t *B, void *C, int64_t ldc,
                 int first, int last, int mr, int nr, const qc_epi *e, int64_t i0, int64_t j0, const int MRV)
{
    __m512i acc[QC_V_MR][QC_V_NV];
    const uint8_t *ap[QC_V_MR];
#pragma GCC unroll 16
    for (int r = 0; r < MRV; r++) ap[r] = A + (r < mr ? r : mr - 1) * lda;
#pragma GCC unroll 16
    for (int r = 0; r < MRV; r++)
#pragma GCC unroll 4
        for (int v = 0; v < QC_V_NV; v++) acc[r][v] = _mm512_setzero_si512();
    qc_acc_vnni(acc, ap, kg, B, MRV);
    __mmask16 m[QC_V_NV];
#pragma GCC unroll 4
    for (int v = 0; v < QC_V_NV; v++) {
        int w = nr - 16 * v;
        w = w < 0 ? 0 : (w > 16 ? 16 : w);
        m[v] = (__mmask16)((1u << w) - 1u);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MRV; r++) {
        if (r >= mr) break;
        int32_t *ci = (int32_t *)C + r * ldc;
        int64_t i = i0 + r;
        int32_t za = e->za ? e->za[i] : 0;
        int32_t rr = e->zb ? e->rr[i] : 0;
        float sa = e->mode ? e->sa[i] : 0.f;
#pragma GCC unroll 4
        for (int v = 0; v < QC_V_NV; v++) {
            __m512i x = acc[r][v];
            if (!first) x = _mm512_add_epi32(x, _mm512_maskz_loadu_epi32(m[v], ci + 16 * v));
            if (!last) {
                _mm512_mask_storeu_epi32(ci + 16 * v, m[v], x);
            } else {
                int64_t j = j0 + 16 * v;
                x = qc_v_fix(x, e, za, rr, j);
                if (e->mode == 0) {
                    _mm512_mask_storeu_epi32(ci + 16 * v, m[v], x);
                } else {
                    __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_loadu_ps(e->sw + j)),
                                             _mm512_set1_ps(sa));
                    if (e->bias) f = _mm512_add_ps(f, _mm512_loadu_ps(e->bias + j));
                    _mm512_mask_storeu_ps((float *)ci + 16 * v, m[v], f);
                }
            }
        }
    }
}

#define QC_VNNI_UKR(NAME, MRV)                                                                               \
    QC_VNNI_T static void NAME(int64_t kg, const uint8_t *A, int64_t lda, const int8_t *B, void *C, int64_t ldc, \
                               int first, int last, int mr, int nr, const qc_epi *e, int64_t i0, int64_t j0)      \
    {                                                                                                        \
        qc_ukr_vnni_body(kg, A, lda, B, C, ldc, first, last, mr, nr, e, i0, j0, MRV);                        \
    }
QC_VNNI_UKR(qc_ukr_vnni8, 8)
QC_VNNI_UKR(qc_ukr_vnni4, 4)
QC_VNNI_UKR(qc_ukr_vnni2, 2)
QC_VNNI_UKR(qc_ukr_vnni1, 1)

QC_VNNI_T static void qc_ukr_vnni(int64_t kg, const uint8_t *A, int64_t lda, const int8_t *B, void *C, int64_t ldc,
                                  int first, int last, int mr, int nr, const qc_epi *e, int64_t i0, int64_t j0)
{
    /* short row groups (small M, the last group) use a smaller tile instead of computing duplicate rows */
    if (mr > 4) qc_ukr_vnni8(kg, A, lda, B, C, ldc, first, last, mr, nr, e, i0, j0);
    else if (mr > 2) qc_ukr_vnni4(kg, A, lda, B, C, ldc, first, last, mr, nr, e, i0, j0);
    else if (mr > 1) qc_ukr_vnni2(kg, A, lda, B, C, ldc, first, last, mr, nr, e, i0, j0);
    else qc_ukr_vnni1(kg, A, lda, B, C, ldc, first, last, mr, nr, e, i0, j0);
}

/* ------------------------------------------------------------------------------------------------ AVX2 */

/* int16 layout, NR = 16: one k-group of 4 = two k-pairs, each pair 16 columns x 2 int16 = two ymm; vpmaddwd */
QC_AVX2_T static inline __attribute__((always_inline)) const int16_t *
qc_acc_avx2(__m256i acc[QC_A_MR][2], const uint8_t *const *ap, int64_t kg, const int16_t *B)
{
    for (int64_t g = 0; g < kg; g++) {
        __m256i b00 = _mm256_loadu_si256((const __m256i *)(B + 0));
        __m256i b01 = _mm256_loadu_si256((const __m256i *)(B + 16));
        __m256i b10 = _mm256_loadu_si256((const __m256i *)(B + 32));
        __m256i b11 = _mm256_loadu_si256((const __m256i *)(B + 48));
#pragma GCC unroll 8
        for (int r = 0; r < QC_A_MR; r++) {
            int32_t a4;
            memcpy(&a4, ap[r] + 4 * g, 4);
            __m128i w = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(a4)); /* a0 a1 a2 a3 as int16 */
            __m256i p0 = _mm256_broadcastd_epi32(w);
            __m256i p1 = _mm256_broadcastd_epi32(_mm_srli_epi64(w, 32));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, b00));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p0, b01));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p1, b10));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, b11));
        }
        B += QC_A_NR * 4;
    }
    return B;
}

QC_AVX2_T static void qc_ukr_avx2(int64_t kg, const uint8_t *A, int64_t lda, const int16_t *B, void *C, int64_t ldc,
                                  int first, int last, int mr, int nr, const qc_epi *e, int64_t i0, int64_t j0)
{
    __m256i acc[QC_A_MR][2];
    const uint8_t *ap[QC_A_MR];
#pragma GCC unroll 8
    for (int r = 0; r < QC_A_MR; r++) ap[r] = A + (r < mr ? r : mr - 1) * lda;
#pragma GCC unroll 8
    for (int r = 0; r < QC_A_MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    qc_acc_avx2(acc, ap, kg, B);
    int32_t tile[QC_A_MR][QC_A_NR];
#pragma GCC unroll 8
    for (int r = 0; r < QC_A_MR; r++) {
        _mm256_storeu_si256((__m256i *)&tile[r][0], acc[r][0]);
        _mm256_storeu_si256((__m256i *)&tile[r][8], acc[r][1]);
    }
    for (int r = 0; r < mr; r++) {
        int32_t *ci = (int32_t *)C + r * ldc;
        for (int j = 0; j < nr; j++) {
            int32_t v = tile[r][j];
            if (!first) v = (int32_t)((uint32_t)v + (uint32_t)ci[j]);
            if (last) qc_epi_scalar(e, i0 + r, j0 + j, v, (char *)C + (r * ldc + j) * 4);
            else ci[j] = v;
        }
    }
}
#endif /* QC_X86 */

/* ------------------------------------------------------------------------------------------------ driver */

/* One work unit: rows [um*MC, +MC) x columns [un*NC, +NC), all of K (blocked by KC). */
static void qc_gemm_unit(const qc_gemm_args *g, int64_t u)
{
    const int isa = g->isa;
    const int MR = qc_isa_mr(isa), NR = qc_isa_nr(isa), bpe = qc_isa_bpe(isa);
    int64_t um = u / g->units_n, un = u % g->units_n;
    int64_t i0 = um * g->MC, i1 = i0 + g->MC < g->M ? i0 + g->MC : g->M;
    int64_t j0 = un * g->NC, j1 = j0 + g->NC < g->N ? j0 + g->NC : g->N;
    const int64_t Kp = g->Kp;
    for (int64_t kc = 0; kc < Kp; kc += g->KC) {
        int64_t kl = Kp - kc < g->KC ? Kp - kc : g->KC;
        int first = kc == 0, last = kc + kl >= Kp;
        for (int64_t j = j0; j < j1; j += NR) {
            const char *bp = (const char *)g->B + ((j / NR) * Kp * NR + kc * NR) * bpe;
            int nr = (int)(g->N - j < NR ? g->N - j : NR);
            for (int64_t i = i0; i < i1; i += MR) {
                int mr = (int)(i1 - i < MR ? i1 - i : MR);
                const uint8_t *a = g->A + i * g->lda + kc;
                void *c = (char *)g->C + (i * g->ldc + j) * 4;
#if QC_X86
                if (isa == QC_ISA_VNNI)
                    qc_ukr_vnni(kl / 4, a, g->lda, (const int8_t *)bp, c, g->ldc, first, last, mr, nr, &g->e, i, j);
                else if (isa == QC_ISA_AVX2)
                    qc_ukr_avx2(kl / 4, a, g->lda, (const int16_t *)bp, c, g->ldc, first, last, mr, nr, &g->e, i, j);
                else
#endif
                    qc_ukr_portable(kl / 4, a, g->lda, (const int8_t *)bp, c, g->ldc, first, last, mr, nr, &g->e, i, j);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------ activations */

/* Dynamic per-row asymmetric uint8 quantization of one row x[0..K):
 *   lo = min(0, min x), hi = max(0, max x), scale = (hi - lo) / 255 (1 if hi == lo, at least 1e-30),
 *   inv = 1/scale, zp = clamp(rint(-lo * inv), 0, 255), q = clamp(rint(x * inv) + zp, 0, 255),
 * rint rounding half to even (the 1.5*2^23 trick, exact here since |x*inv| <= 256).  Writes q[0..Kp)
 * (zeros after K), and returns scale, zp and sum(q); the return value flags NaN/Inf in the row. */
static inline void qc_row_params(float lo, float hi, float *scale, int32_t *zp, float *inv)
{
    float s = (hi > lo) ? (float)(((double)hi - (double)lo) / 255.0) : 1.0f;
    if (s < 1e-30f) s = 1e-30f;
    float iv = 1.0f / s;
    float z = -lo * iv;
    float t = z + 12582912.0f;
    int32_t bits; memcpy(&bits, &t, 4);
    int32_t zi = bits - 0x4B400000;
    zi = zi < 0 ? 0 : (zi > 255 ? 255 : zi);
    *scale = s; *zp = zi; *inv = iv;
}

#define QC_QUANT_ROW_GENERIC(NAME, ATTR)                                                                    \
    ATTR static int NAME(const float *x, int64_t K, int64_t Kp, uint8_t *q, float *scale, int32_t *zp,      \
                         int32_t *rowsum)                                                                  \
    {                                                                                                      \
        float lo = 0.f, hi = 0.f, nf = 0.f;                                                                \
        for (int64_t k = 0; k < K; k++) {                                                                  \
            float v = x[k];                                                                                \
            lo = v < lo ? v : lo;                                                                          \
            hi = v > hi ? v : hi;                                                                          \
            nf += v - v; /* 0 for finite v, NaN for NaN/Inf */                                             \
        }                                                                                                  \
        float inv; int32_t z;                                                                              \
        qc_row_params(lo, hi, scale, &z, &inv);                                                            \
        *zp = z;                                                                                           \
        int32_t s = 0;                                                                                     \
        for (int64_t k = 0; k < K; k++) {                                                                  \
            float t = x[k] * inv + 12582912.0f;                                                            \
            int32_t bits; memcpy(&bits, &t, 4);                                                            \
            int32_t c = bits - 0x4B400000 + z;                                                             \
            c = c < 0 ? 0 : (c > 255 ? 255 : c);                                                           \
            q[k] = (uint8_t)c;                                                                             \
            s += c;                                                                                        \
        }                                                                                                  \
        for (int64_t k = K; k < Kp; k++) q[k] = 0;                                                         \
        *rowsum = s;                                                                                       \
        return nf != nf;                                                                                   \
    }

QC_QUANT_ROW_GENERIC(qc_quant_row_portable, )
#if QC_X86
QC_QUANT_ROW_GENERIC(qc_quant_row_avx2, QC_AVX2_T)

QC_VNNI_T static int qc_quant_row_vnni(const float *x, int64_t K, int64_t Kp, uint8_t *q, float *scale, int32_t *zp,
                                       int32_t *rowsum)
{
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps(), vnf = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
        vnf = _mm512_add_ps(vnf, _mm512_sub_ps(v, v)); /* 0 for finite, NaN for NaN/Inf */
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
        vnf = _mm512_add_ps(vnf, _mm512_sub_ps(v, v));
    }
    int bad = _mm512_cmp_ps_mask(vnf, vnf, _CMP_UNORD_Q) != 0;
    float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
    float inv; int32_t z;
    qc_row_params(lo, hi, scale, &z, &inv);
    *zp = z;
    const __m512 vinv = _mm512_set1_ps(inv), magic = _mm512_set1_ps(12582912.0f);
    const __m512i off = _mm512_set1_epi32(z - 0x4B400000), zero = _mm512_setzero_si512(),
                  top = _mm512_set1_epi32(255);
    __m512i vs = _mm512_setzero_si512();
    for (k = 0; k < Kp; k += 16) {
        int64_t n = K - k;
        __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (n > 0 ? (__mmask16)((1u << n) - 1u) : (__mmask16)0);
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        __m512i c = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(v, vinv), magic)), off);
        c = _mm512_min_epi32(_mm512_max_epi32(c, zero), top);
        c = _mm512_maskz_mov_epi32(m, c);
        vs = _mm512_add_epi32(vs, c);
        int64_t w = Kp - k;
        __mmask16 ms = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
        _mm_mask_storeu_epi8(q + k, ms, _mm512_cvtepi32_epi8(c));
    }
    *rowsum = _mm512_reduce_add_epi32(vs);
    return bad;
}
#endif

/* returns 1 if the row holds NaN or Inf (its outputs are then meaningless but in range) */
static int qc_quant_row(int isa, const float *x, int64_t K, int64_t Kp, uint8_t *q, float *scale, int32_t *zp,
                        int32_t *rowsum)
{
#if QC_X86
    if (isa == QC_ISA_VNNI) return qc_quant_row_vnni(x, K, Kp, q, scale, zp, rowsum);
    if (isa == QC_ISA_AVX2) return qc_quant_row_avx2(x, K, Kp, q, scale, zp, rowsum);
#endif
    return qc_quant_row_portable(x, K, Kp, q, scale, zp, rowsum);
}

/* Copy a uint8/int8 row to the padded uint8 layout (flip = 0x80 turns int8 into uint8 = int8 + 128) and sum it. */
static void qc_copy_row_u8(const uint8_t *a, int64_t K, int64_t Kp, uint8_t flip, uint8_t *q, int32_t *rowsum)
{
    int32_t s = 0;
    for (int64_t k = 0; k < K; k++) { uint8_t v = a[k] ^ flip; q[k] = v; s += v; }
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    *rowsum = s;
}

static int32_t qc_row_sum_u8(const uint8_t *a, int64_t K)
{
    int32_t s = 0;
    for (int64_t k = 0; k < K; k++) s += a[k];
    return s;
}

#endif /* QCORE_GEMM_KERNELS_H */
