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
 *
 * Files: this header holds what the parts share (types, small inline helpers, the functions they call in one
 * another).  lowbit_kernels.c: packing, the portable path and the driver; lowbit_avx2.c and lowbit_vnni.c: each
 * SIMD path (its activation quantization and its 32 tile functions, pyx/lowbit_tile.h).  Each .c is its own
 * translation unit of the extension (setup.py), so the compiler handles the paths' tiles separately and in
 * parallel — the tiles are most of the extension's compile time, above all in the sanitizer build.
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
#define QLB_AI static inline __attribute__((always_inline))
/* The tile body (lowbit_tile.h) is inlined into each of a path's 32 tile functions, its shape (bits, table kind,
 * rows and panels) then compile-time constants.  QCORE_GENERIC_TILES (the sanitizer build, tox -e sanitize)
 * compiles it once per path instead, with the shape as run-time values: the same code and memory accesses, for a
 * fraction of the compile time (the specialised copies are most of the instrumented build). */
#ifdef QCORE_GENERIC_TILES
#define QLB_GENERIC_TILES 1
#define QLB_TILE_BODY static __attribute__((noinline, noclone))
#else
#define QLB_GENERIC_TILES 0
#define QLB_TILE_BODY static inline __attribute__((always_inline))
#endif
#else
#define QLB_X86 0
#endif

/* functions one part of the extension calls in another: not exported from the shared object */
#if defined(__GNUC__)
#define QLB_API __attribute__((visibility("hidden")))
#else
#define QLB_API
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

/* activation blocks: sa = max|x| / 127 in float32; a block with sa < 1e-30 (all zero, or tiny) gets sa = 0 and
 * codes 0; codes rint(x / sa) half to even, clamped to +-127 */
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

typedef void (*qlb_tile_fn)(const qlb_w *, const qlb_a *, int64_t, int, int64_t, int);

/* lowbit_kernels.c */
/* Pack values u (N x K row-major, ldu) into the plane layout for panels [p0, p1).  k >= K and n >= N get 0. */
QLB_API void qlb_pack(const uint8_t *u, int64_t N, int64_t K, int64_t ldu, int bits, int64_t nb, int64_t p0, int64_t p1,
                      uint8_t *out);
/* all decoded values of panel p (16 x Kp), for tests */
QLB_API void qlb_decode_panel(const qlb_w *w, int64_t p, uint8_t *out);
/* One row of activations: blocks of 32, int8 codes q[0..Kp) (zero padded), scales sa[0..nb), code sums
 * asum[0..nb), on path isa.  Returns 1 if the row holds NaN or Inf. */
QLB_API int qlb_quant_row(int isa, const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum);
/* tile geometry per path: rows per tile (MRV) and panels per tile for a given row count */
QLB_API int qlb_mrv(int isa, int64_t M);
QLB_API int qlb_nv(int isa, int mrv);
/* One work unit on path isa: rows [r0, r1), panels [q0, q1) (a multiple of nv except at the end). */
QLB_API void qlb_unit(int isa, const qlb_w *w, const qlb_a *a, int64_t r0, int64_t r1, int64_t q0, int64_t q1);

#if QLB_X86
/* lowbit_avx2.c and lowbit_vnni.c: each path's qlb_quant_row and its tile for (bits, table kind, rows per tile) */
QLB_API int qlb_quant_row_avx2(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum);
QLB_API qlb_tile_fn qlb_pick_a(int bits, int lut, int mrv);
QLB_API int qlb_quant_row_vnni(const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum);
QLB_API qlb_tile_fn qlb_pick_v(int bits, int lut, int mrv);
#endif

#endif /* QCORE_LOWBIT_KERNELS_H */
