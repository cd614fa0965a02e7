/* Inner loops of qcore's ``cython`` kernel (pyx/quant.pyx), on raw pointers.
 *
 * Every loop here is written so gcc vectorizes it at baseline x86-64 (SSE2) under strict IEEE
 * (-O3 -ffp-contract=off -fno-math-errno -fno-trapping-math, no -ffast-math):
 *
 * - rounding half to even without rintf (a libm call before SSE4.1): for |v| < 2^23,
 *   (v + copysign(2^23, v)) - copysign(2^23, v) is rint(v) in the default rounding mode; larger
 *   magnitudes (and +-inf) are already integers and pass through unchanged;
 * - clamps are written ``s > lo ? s : lo`` / ``s < hi ? s : hi`` (maxps/minps); the value is clamped
 *   in float before the float->int conversion, so huge or infinite values never overflow an int;
 * - non-finite input is detected in the same pass from the exponent bits: for each x,
 *   ((bits & 0x7f800000) + 0x00800000) has bit 31 set iff the exponent is all ones (NaN/Inf);
 *   an integer OR reduction vectorizes under strict IEEE, a float one would not;
 * - min/max reductions keep 16 independent lanes (no reassociation needed) and propagate NaN
 *   explicitly: ``m = (v < m || v != v) ? v : m``.
 *
 * Numerics equal the numpy reference bit for bit (see qcore/kernels/base.py):
 *   q = clamp(rint(x * inv_scale) + float(zero_point), qmin, qmax)      (float32 throughout)
 *   x = float(q - zero_point) * scale                                   (int32 wrap-around like numpy)
 *
 * The same bodies are compiled three times: baseline, target("avx2") and target("avx512f,avx512bw,
 * avx512vl"), by inlining an always_inline body into a wrapper carrying the target attribute; the
 * variant is chosen once at import (qc_select_isa) from __builtin_cpu_supports.  No FMA is enabled in
 * the variants (and -ffp-contract=off forbids contraction anyway), so every variant gives the same bits.
 */
#ifndef QCORE_QUANT_KERNELS_H
#define QCORE_QUANT_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qcore_isa.h"

/* ------------------------------------------------------------------------------------------------ */
/* bodies                                                                                           */

QC_INLINE float qc_rint(float v)
{
    float t = copysignf(8388608.0f, v);
    float r = (v + t) - t;
    return fabsf(v) < 8388608.0f ? r : v;
}

QC_INLINE uint32_t qc_nonfinite_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x7f800000u) + 0x00800000u;
}

/* Exact for every zero point: rint with the copysign trick, valid for any magnitude. */
QC_INLINE uint8_t qc_quant1_exact(float x, float inv, float zpf, float lo, float hi, float rb, float magic)
{
    float s = qc_rint(x * inv) + zpf;
    (void)rb; (void)magic;
    s = s > lo ? s : lo; /* NaN (never reached: refused) would become lo, not UB */
    s = s < hi ? s : hi;
    return (uint8_t)(int32_t)s;
}

/* Fast form, exact when |zero_point| <= 2^21 (the caller checks; codes lie in [-128, 255]):
 * v is first clamped to [-2^22, 2^22], where (v + 1.5*2^23) - 1.5*2^23 == rint(v).  A v beyond that
 * range gives rint(v) + zp beyond [-128, 255] either way (|zp| <= 2^21), so the final clamp gives the
 * same code as the reference; +-inf lands on qmin/qmax as in the reference; NaN becomes a clamp
 * bound (never UB). */
#define QC_RBOUND 4194304.0f   /* 2^22 */
#define QC_MAGIC 12582912.0f   /* 1.5 * 2^23 */
QC_INLINE float qc_fmax(float a, float b) { return a > b ? a : b; } /* maxps: NaN a -> b */
QC_INLINE float qc_fmin(float a, float b) { return a < b ? a : b; } /* minps: NaN a -> b */
QC_INLINE uint8_t qc_quant1(float x, float inv, float zpf, float lo, float hi, float rb, float magic)
{
    float v = qc_fmin(qc_fmax(x * inv, -rb), rb);
    float s = ((v + magic) - magic) + zpf;
    s = qc_fmin(qc_fmax(s, lo), hi);
    return (uint8_t)(int32_t)s;
}

/* rb and magic are read through volatiles once per call: with them as visible constants gcc merges
 * the two clamps into compare/blend chains instead of maxps/minps (about twice the instructions). */
#define QC_QUANT_LOOP(Q1, INV, ZPF)                                                                      \
    volatile float rb_v = QC_RBOUND, magic_v = QC_MAGIC;                                                 \
    const float rb = rb_v, magic = magic_v;                                                             \
    uint32_t bad = 0;                                                                                   \
    (void)rb; (void)magic;                                                                              \
    for (ptrdiff_t i = 0; i < n; i++) {                                                                 \
        float xi = x[i];                                                                                \
        bad |= qc_nonfinite_bits(xi);                                                                   \
        out[i] = Q1(xi, INV, ZPF, lo, hi, rb, magic);                                                   \
    }                                                                                                   \
    return (bad & 0x80000000u) != 0;

/* one run with scalar parameters; returns non-zero if some x was NaN/Inf */
QC_INLINE int qc_quant_run_body(const float *restrict x, uint8_t *restrict out, ptrdiff_t n,
                                float inv, float zpf, float lo, float hi)
{
    QC_QUANT_LOOP(qc_quant1, inv, zpf)
}

/* one row with per-element parameter vectors (per-channel along the last axis) */
QC_INLINE int qc_quant_vec_body(const float *restrict x, uint8_t *restrict out, ptrdiff_t n,
                                const float *restrict inv, const float *restrict zpf, float lo, float hi)
{
    QC_QUANT_LOOP(qc_quant1, inv[i], zpf[i])
}

/* the same for any int32 zero point (baseline only: such zero points are pathological) */
static int qc_quant_run_exact(const float *restrict x, uint8_t *restrict out, ptrdiff_t n,
                              float inv, float zpf, float lo, float hi)
{
    QC_QUANT_LOOP(qc_quant1_exact, inv, zpf)
}

static int qc_quant_vec_exact(const float *restrict x, uint8_t *restrict out, ptrdiff_t n,
                              const float *restrict inv, const float *restrict zpf, float lo, float hi)
{
    QC_QUANT_LOOP(qc_quant1_exact, inv[i], zpf[i])
}

QC_INLINE int32_t qc_sub_wrap(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a - (uint32_t)b); /* int32 wrap-around, as numpy */
}

QC_INLINE void qc_deq_run_s8_body(const int8_t *restrict q, float *restrict out, ptrdiff_t n,
                                  int32_t zp, float scale)
{
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)qc_sub_wrap(q[i], zp) * scale;
}

QC_INLINE void qc_deq_run_u8_body(const uint8_t *restrict q, float *restrict out, ptrdiff_t n,
                                  int32_t zp, float scale)
{
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)qc_sub_wrap(q[i], zp) * scale;
}

QC_INLINE void qc_deq_vec_s8_body(const int8_t *restrict q, float *restrict out, ptrdiff_t n,
                                  const int32_t *restrict zp, const float *restrict scale)
{
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)qc_sub_wrap(q[i], zp[i]) * scale[i];
}

QC_INLINE void qc_deq_vec_u8_body(const uint8_t *restrict q, float *restrict out, ptrdiff_t n,
                                  const int32_t *restrict zp, const float *restrict scale)
{
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)qc_sub_wrap(q[i], zp[i]) * scale[i];
}

#include "qcore_minmax.h"  /* qc_minmax_run_body, qc_minmax_vec_body: the one min/max in C */

/* ------------------------------------------------------------------------------------------------ */
/* per-ISA copies and run-time dispatch                                                              */

typedef int (*qc_quant_run_t)(const float *, uint8_t *, ptrdiff_t, float, float, float, float);
typedef int (*qc_quant_vec_t)(const float *, uint8_t *, ptrdiff_t, const float *, const float *, float, float);
typedef void (*qc_deq_run_s8_t)(const int8_t *, float *, ptrdiff_t, int32_t, float);
typedef void (*qc_deq_run_u8_t)(const uint8_t *, float *, ptrdiff_t, int32_t, float);
typedef void (*qc_deq_vec_s8_t)(const int8_t *, float *, ptrdiff_t, const int32_t *, const float *);
typedef void (*qc_deq_vec_u8_t)(const uint8_t *, float *, ptrdiff_t, const int32_t *, const float *);
typedef void (*qc_minmax_run_t)(const float *, ptrdiff_t, float *, float *);
typedef void (*qc_minmax_vec_t)(const float *, ptrdiff_t, float *, float *);

typedef struct {
    qc_quant_run_t quant_run;
    qc_quant_vec_t quant_vec;
    qc_deq_run_s8_t deq_run_s8;
    qc_deq_run_u8_t deq_run_u8;
    qc_deq_vec_s8_t deq_vec_s8;
    qc_deq_vec_u8_t deq_vec_u8;
    qc_minmax_run_t minmax_run;
    qc_minmax_vec_t minmax_vec;
    /* the same runs writing their output with non-temporal stores (see qc_stream_output); variants
     * without such stores repeat the plain ones */
    qc_quant_run_t quant_run_stream;
    qc_deq_run_s8_t deq_run_s8_stream;
    qc_deq_run_u8_t deq_run_u8_stream;
} qc_ops_t;

#define QC_DEFINE_VARIANT(SFX, ATTR)                                                                     \
    ATTR static int qc_quant_run_##SFX(const float *x, uint8_t *o, ptrdiff_t n, float a, float b,       \
                                       float lo, float hi)                                              \
    { return qc_quant_run_body(x, o, n, a, b, lo, hi); }                                                \
    ATTR static int qc_quant_vec_##SFX(const float *x, uint8_t *o, ptrdiff_t n, const float *a,         \
                                       const float *b, float lo, float hi)                              \
    { return qc_quant_vec_body(x, o, n, a, b, lo, hi); }                                                \
    ATTR static void qc_deq_run_s8_##SFX(const int8_t *q, float *o, ptrdiff_t n, int32_t z, float s)    \
    { qc_deq_run_s8_body(q, o, n, z, s); }                                                              \
    ATTR static void qc_deq_run_u8_##SFX(const uint8_t *q, float *o, ptrdiff_t n, int32_t z, float s)   \
    { qc_deq_run_u8_body(q, o, n, z, s); }                                                              \
    ATTR static void qc_deq_vec_s8_##SFX(const int8_t *q, float *o, ptrdiff_t n, const int32_t *z,      \
                                         const float *s)                                                \
    { qc_deq_vec_s8_body(q, o, n, z, s); }                                                              \
    ATTR static void qc_deq_vec_u8_##SFX(const uint8_t *q, float *o, ptrdiff_t n, const int32_t *z,     \
                                         const float *s)                                                \
    { qc_deq_vec_u8_body(q, o, n, z, s); }                                                              \
    ATTR static void qc_minmax_run_##SFX(const float *x, ptrdiff_t n, float *a, float *b)               \
    { qc_minmax_run_body(x, n, a, b); }                                                                 \
    ATTR static void qc_minmax_vec_##SFX(const float *x, ptrdiff_t n, float *a, float *b)               \
    { qc_minmax_vec_body(x, n, a, b); }                                                                 \
    static const qc_ops_t qc_ops_##SFX = {qc_quant_run_##SFX, qc_quant_vec_##SFX, qc_deq_run_s8_##SFX,  \
                                          qc_deq_run_u8_##SFX, qc_deq_vec_s8_##SFX, qc_deq_vec_u8_##SFX, \
                                          qc_minmax_run_##SFX, qc_minmax_vec_##SFX, qc_quant_run_##SFX,   \
                                          qc_deq_run_s8_##SFX, qc_deq_run_u8_##SFX};

QC_DEFINE_VARIANT(baseline, )
#if QC_X86_DISPATCH
QC_DEFINE_VARIANT(avx2, __attribute__((target("avx2"))))
QC_DEFINE_VARIANT(avx512, __attribute__((target("avx2,avx512f,avx512bw,avx512vl"))))
#endif

/* ------------------------------------------------------------------------------------------------ */
/* non-temporal ("streaming") stores                                                                 */
/*                                                                                                  */
/* A pass whose input + output exceed the last-level cache evicts its own output before anyone reads */
/* it, so the output is better written with non-temporal stores: they skip the read-for-ownership of */
/* every output line.  Measured on the 2-core Zen 5 (2 threads, 16M elements): quantize 1.82 -> 1.60  */
/* ms (reading the 64 MiB input alone takes 1.5 ms), dequantize into an existing array 1.8 -> 1.6 ms. */
/* Not into memory that has never been touched: the OS zeroes a fresh page with ordinary stores on   */
/* the first write, leaving its lines in cache, where plain stores then overwrite them; streaming    */
/* stores would send every line to memory twice (dequantize into a new 64 MiB array: 2.6 ms with     */
/* plain stores, 3.1 ms streaming).  The results are the same bits either way.                      */

#define QC_STREAM_MIN_BYTES ((size_t)32 << 20) /* a last-level cache slice a core can use */

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
/* is the page holding p already mapped in (mincore)?  Any doubt answers no. */
static int qc_page_resident(const void *p)
{
    long ps = sysconf(_SC_PAGESIZE);
    unsigned char v = 0;
    if (ps <= 0) return 0;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(ps - 1);
    if (mincore((void *)a, (size_t)ps, &v) != 0) return 0;
    return v & 1;
}
#else
static int qc_page_resident(const void *p) { (void)p; return 0; }
#endif

static int qc_stream_mode = 0; /* 0: decide as below; 1: always; 2: never (tests and benchmarks) */

/* use the streaming runs for a pass reading in_bytes and writing out_bytes at out?  The page checked is
 * the middle one: the first may hold the allocator's header (written, so resident, in a fresh block). */
static int qc_stream_output(const void *out, size_t out_bytes, size_t in_bytes)
{
    if (qc_stream_mode) return qc_stream_mode == 1;
    if (in_bytes + out_bytes < QC_STREAM_MIN_BYTES) return 0;
    return qc_page_resident((const char *)out + out_bytes / 2);
}

#if QC_X86_DISPATCH
#include <immintrin.h>
#define QC_AVX512_T __attribute__((target("avx2,avx512f,avx512bw,avx512vl")))

/* qc_quant_run_body with 64 codes per streaming store: the same operations in the same order as
 * qc_quant1 (max/min with the operands in the order of qc_fmax/qc_fmin, which decides NaN), so the
 * codes and the NaN/Inf flag are identical; the unaligned head and the tail use the body itself */
QC_AVX512_T static int qc_quant_run_avx512_stream(const float *x, uint8_t *o, ptrdiff_t n, float inv,
                                                   float zpf, float lo, float hi)
{
    ptrdiff_t head = (ptrdiff_t)((64 - ((uintptr_t)o & 63)) & 63), i;
    if (head > n) head = n;
    int bad = qc_quant_run_body(x, o, head, inv, zpf, lo, hi);
    const __m512 vinv = _mm512_set1_ps(inv), vzpf = _mm512_set1_ps(zpf);
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    const __m512 vrb = _mm512_set1_ps(QC_RBOUND), vnrb = _mm512_set1_ps(-QC_RBOUND);
    const __m512 vmagic = _mm512_set1_ps(QC_MAGIC);
    const __m512i vexp = _mm512_set1_epi32(0x7f800000), vone = _mm512_set1_epi32(0x00800000);
    __m512i nonfinite = _mm512_setzero_si512();
    for (i = head; i + 64 <= n; i += 64) {
        __m128i c[4];
        for (int k = 0; k < 4; k++) {
            __m512 v = _mm512_loadu_ps(x + i + 16 * k);
            nonfinite = _mm512_or_si512(nonfinite, _mm512_add_epi32(_mm512_and_si512(_mm512_castps_si512(v), vexp), vone));
            v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), vnrb), vrb);
            v = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(v, vmagic), vmagic), vzpf);
            v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
            c[k] = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)); /* low byte, as (uint8_t)(int32_t) */
        }
        __m512i w = _mm512_castsi128_si512(c[0]);
        w = _mm512_inserti32x4(w, c[1], 1);
        w = _mm512_inserti32x4(w, c[2], 2);
        w = _mm512_inserti32x4(w, c[3], 3);
        _mm512_stream_si512((__m512i *)(o + i), w);
    }
    bad |= (_mm512_reduce_or_epi32(nonfinite) & (int)0x80000000) != 0;
    bad |= qc_quant_run_body(x + i, o + i, n - i, inv, zpf, lo, hi);
    _mm_sfence();
    return bad;
}

/* qc_deq_run_*_body with streaming stores: same arithmetic ((float)(q - zp) * scale), same bits */
#define QC_DEQ_RUN_STREAM(NAME, T, CVT)                                                                  \
    QC_AVX512_T static void NAME(const T *q, float *o, ptrdiff_t n, int32_t z, float s)                 \
    {                                                                                                   \
        if ((uintptr_t)o & 3) { qc_deq_run_##T##_body(q, o, n, z, s); return; }                        \
        ptrdiff_t head = (ptrdiff_t)(((64 - ((uintptr_t)o & 63)) & 63) / 4), i;                         \
        if (head > n) head = n;                                                                         \
        qc_deq_run_##T##_body(q, o, head, z, s);                                                        \
        const __m512i vz = _mm512_set1_epi32(z);                                                        \
        const __m512 vs = _mm512_set1_ps(s);                                                            \
        for (i = head; i + 16 <= n; i += 16) {                                                          \
            __m512i v = CVT(_mm_loadu_si128((const __m128i *)(q + i)));                                 \
            _mm512_stream_ps(o + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, vz)), vs));   \
        }                                                                                               \
        qc_deq_run_##T##_body(q + i, o + i, n - i, z, s);                                               \
        _mm_sfence();                                                                                   \
    }
#define qc_deq_run_int8_t_body qc_deq_run_s8_body
#define qc_deq_run_uint8_t_body qc_deq_run_u8_body
QC_DEQ_RUN_STREAM(qc_deq_run_s8_avx512_stream, int8_t, _mm512_cvtepi8_epi32)
QC_DEQ_RUN_STREAM(qc_deq_run_u8_avx512_stream, uint8_t, _mm512_cvtepu8_epi32)
#endif

/* the selected variant: set at import and by the extension's ISA switch (quant.pyx, qcore/isa.py) */
static qc_ops_t qc_ops = {qc_quant_run_baseline, qc_quant_vec_baseline, qc_deq_run_s8_baseline,
                          qc_deq_run_u8_baseline, qc_deq_vec_s8_baseline, qc_deq_vec_u8_baseline,
                          qc_minmax_run_baseline, qc_minmax_vec_baseline, qc_quant_run_baseline,
                          qc_deq_run_s8_baseline, qc_deq_run_u8_baseline};

/* select variant ``level`` (clipped to what the CPU supports); returns the level in use */
static int qc_select_isa(int level)
{
    int top = qc_cpu_level();
    if (level > top) level = top;
    if (level < 0) level = 0;
#if QC_X86_DISPATCH
    if (level >= QCORE_ISA_AVX512) {
        qc_ops = qc_ops_avx512;
        qc_ops.quant_run_stream = qc_quant_run_avx512_stream;
        qc_ops.deq_run_s8_stream = qc_deq_run_s8_avx512_stream;
        qc_ops.deq_run_u8_stream = qc_deq_run_u8_avx512_stream;
        return QCORE_ISA_AVX512;
    }
    if (level == QCORE_ISA_AVX2) { qc_ops = qc_ops_avx2; return QCORE_ISA_AVX2; }
#endif
    qc_ops = qc_ops_baseline;
    return QCORE_ISA_BASELINE;
}

/* ------------------------------------------------------------------------------------------------ */
/* bit packing: little-endian bit stream, code i at bits [i*bits, i*bits+bits) (no ISA variants:    */
/* these are simple integer loops, fast at baseline)                                                 */

/* pack codes c[0..n) (n a multiple of 8) into n*bits/8 bytes */
static void qc_pack_full(const uint8_t *restrict c, ptrdiff_t n, int bits, uint8_t *restrict out)
{
    ptrdiff_t i;
    switch (bits) {
    case 8:
        memcpy(out, c, (size_t)n);
        return;
    case 4:
        for (i = 0; i < n / 2; i++) out[i] = (uint8_t)((c[2 * i] & 0x0Fu) | ((unsigned)c[2 * i + 1] << 4));
        return;
    case 2:
        for (i = 0; i < n / 4; i++)
            out[i] = (uint8_t)((c[4 * i] & 3u) | ((c[4 * i + 1] & 3u) << 2) | ((c[4 * i + 2] & 3u) << 4) |
                               ((unsigned)c[4 * i + 3] << 6));
        return;
    case 1:
        for (i = 0; i < n / 8; i++) {
            const uint8_t *p = c + 8 * i;
            out[i] = (uint8_t)((p[0] & 1u) | ((p[1] & 1u) << 1) | ((p[2] & 1u) << 2) | ((p[3] & 1u) << 3) |
                               ((p[4] & 1u) << 4) | ((p[5] & 1u) << 5) | ((p[6] & 1u) << 6) |
                               ((unsigned)p[7] << 7));
        }
        return;
    default: {
        const uint64_t mask = (1u << bits) - 1u;
        for (i = 0; i < n / 8; i++) {
            const uint8_t *p = c + 8 * i;
            uint64_t acc = 0;
            for (int k = 0; k < 8; k++) acc |= ((uint64_t)p[k] & mask) << (k * bits);
            uint8_t *o = out + (ptrdiff_t)bits * i;
            for (int b = 0; b < bits; b++) o[b] = (uint8_t)(acc >> (8 * b));
        }
    }
    }
}

/* the last n < 8 codes: write ceil(n*bits/8) bytes */
static void qc_pack_tail(const uint8_t *c, ptrdiff_t n, int bits, uint8_t *out)
{
    const uint64_t mask = (1u << bits) - 1u;
    uint64_t acc = 0;
    for (ptrdiff_t k = 0; k < n; k++) acc |= ((uint64_t)c[k] & mask) << (k * bits);
    ptrdiff_t nb = (n * bits + 7) / 8;
    for (ptrdiff_t b = 0; b < nb; b++) out[b] = (uint8_t)(acc >> (8 * b));
}

QC_INLINE uint8_t qc_extend(unsigned v, int bits, int is_signed)
{
    if (is_signed) {
        unsigned sb = 1u << (bits - 1);
        return (uint8_t)((v ^ sb) - sb);
    }
    return (uint8_t)v;
}

/* unpack n codes (n a multiple of 8) from n*bits/8 bytes */
static void qc_unpack_full(const uint8_t *restrict p, ptrdiff_t n, int bits, int is_signed, uint8_t *restrict out)
{
    ptrdiff_t i;
    switch (bits) {
    case 8:
        memcpy(out, p, (size_t)n);
        return;
    case 4:
        if (is_signed)
            for (i = 0; i < n / 2; i++) {
                out[2 * i] = (uint8_t)((int8_t)(p[i] << 4) >> 4);
                out[2 * i + 1] = (uint8_t)((int8_t)p[i] >> 4);
            }
        else
            for (i = 0; i < n / 2; i++) {
                out[2 * i] = p[i] & 0x0Fu;
                out[2 * i + 1] = p[i] >> 4;
            }
        return;
    case 2:
        if (is_signed)
            for (i = 0; i < n / 4; i++) {
                int8_t b = (int8_t)p[i];
                out[4 * i] = (uint8_t)((int8_t)(b << 6) >> 6);
                out[4 * i + 1] = (uint8_t)((int8_t)(b << 4) >> 6);
                out[4 * i + 2] = (uint8_t)((int8_t)(b << 2) >> 6);
                out[4 * i + 3] = (uint8_t)(b >> 6);
            }
        else
            for (i = 0; i < n / 4; i++) {
                out[4 * i] = p[i] & 3u;
                out[4 * i + 1] = (p[i] >> 2) & 3u;
                out[4 * i + 2] = (p[i] >> 4) & 3u;
                out[4 * i + 3] = p[i] >> 6;
            }
        return;
    case 1: {
        const uint8_t hi = is_signed ? 0xFFu : 1u; /* signed 1-bit codes are 0 and -1 */
        for (i = 0; i < n / 8; i++)
            for (int k = 0; k < 8; k++) out[8 * i + k] = ((p[i] >> k) & 1u) ? hi : 0u;
        return;
    }
    default: {
        const uint64_t mask = (1u << bits) - 1u;
        for (i = 0; i < n / 8; i++) {
            const uint8_t *q = p + (ptrdiff_t)bits * i;
            uint64_t acc = 0;
            for (int b = 0; b < bits; b++) acc |= (uint64_t)q[b] << (8 * b);
            for (int k = 0; k < 8; k++) out[8 * i + k] = qc_extend((unsigned)((acc >> (k * bits)) & mask), bits, is_signed);
        }
    }
    }
}

/* the last n < 8 codes, from ceil(n*bits/8) bytes */
static void qc_unpack_tail(const uint8_t *p, ptrdiff_t n, int bits, int is_signed, uint8_t *out)
{
    const uint64_t mask = (1u << bits) - 1u;
    ptrdiff_t nb = (n * bits + 7) / 8;
    uint64_t acc = 0;
    for (ptrdiff_t b = 0; b < nb; b++) acc |= (uint64_t)p[b] << (8 * b);
    for (ptrdiff_t k = 0; k < n; k++) out[k] = qc_extend((unsigned)((acc >> (k * bits)) & mask), bits, is_signed);
}

#endif /* QCORE_QUANT_KERNELS_H */
