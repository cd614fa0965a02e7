/* qcore low-bit weights: the kernel layout (pyx/lowbit_kernels.h) built from, and turned back into, the codes'
 * packed bit stream (docs/format.md section 3: code i in stream bits i*bits .. i*bits+bits-1, little endian).
 *
 * A QTensor keeps its codes as that stream; the low-bit GEMM wants them as bit planes.  Packing straight from the
 * stream (one panel of 16 rows at a time through a 16*K byte buffer) means no unpacked (N x K) copy of the codes
 * ever exists, and the inverse lets a holder keep only the kernel layout and regenerate the stream on demand
 * (qcore/ops/lowbit.py, qcore/integrations/torch/_modules.py).  The value the kernel multiplies is
 * v = code_bits ^ flip (flip = 2**(bits-1) turns two's-complement codes into offset-binary, 0 keeps them).
 *
 * Panels write disjoint bytes of the stream (16*K*bits is a multiple of 8), so callers may run ranges of panels
 * in parallel.  Only the layout functions of lowbit_kernels.h are used (qlb_pack, qlb_value), so this follows any
 * change of the layout made there.
 */
#ifndef QCORE_LOWBIT_PACK_H
#define QCORE_LOWBIT_PACK_H

#include <stdint.h>
#include <string.h>

#include "lowbit_kernels.h"

/* codes [i0, i0 + count) of the stream s (bits each) into u (uint8, bit patterns ^ flip); BITS constant after
 * inlining into the switch below, so each width gets its own straight loop */
static inline __attribute__((always_inline)) void qlp_get_w(const uint8_t *s, int64_t i0, int64_t count,
                                                            const int BITS, unsigned flip, uint8_t *u)
{
    const unsigned mask = (1u << BITS) - 1u;
    if (BITS == 8) {
        for (int64_t i = 0; i < count; i++) u[i] = (uint8_t)(s[i0 + i] ^ flip);
        return;
    }
    int64_t pos = i0 * BITS;
    for (int64_t i = 0; i < count; i++, pos += BITS) {
        int64_t byte = pos >> 3;
        int sh = (int)(pos & 7);
        unsigned v = (unsigned)s[byte] >> sh;
        if (sh + BITS > 8) v |= (unsigned)s[byte + 1] << (8 - sh); /* the code spans two bytes: both exist */
        u[i] = (uint8_t)((v ^ flip) & mask);
    }
}

static void qlp_stream_get(const uint8_t *s, int64_t i0, int64_t count, int bits, unsigned flip, uint8_t *u)
{
    switch (bits) {
    case 1: qlp_get_w(s, i0, count, 1, flip, u); break;
    case 2: qlp_get_w(s, i0, count, 2, flip, u); break;
    case 3: qlp_get_w(s, i0, count, 3, flip, u); break;
    case 4: qlp_get_w(s, i0, count, 4, flip, u); break;
    case 5: qlp_get_w(s, i0, count, 5, flip, u); break;
    case 6: qlp_get_w(s, i0, count, 6, flip, u); break;
    case 7: qlp_get_w(s, i0, count, 7, flip, u); break;
    default: qlp_get_w(s, i0, count, 8, flip, u); break;
    }
}

/* codes [i0, i0 + count) (values u ^ flip, low `bits` bits) ORed into the zeroed stream s */
static inline __attribute__((always_inline)) void qlp_put_w(uint8_t *s, int64_t i0, int64_t count, const int BITS,
                                                            unsigned flip, const uint8_t *u)
{
    const unsigned mask = (1u << BITS) - 1u;
    if (BITS == 8) {
        for (int64_t i = 0; i < count; i++) s[i0 + i] = (uint8_t)(u[i] ^ flip);
        return;
    }
    int64_t pos = i0 * BITS;
    for (int64_t i = 0; i < count; i++, pos += BITS) {
        unsigned v = ((unsigned)u[i] ^ flip) & mask;
        int64_t byte = pos >> 3;
        int sh = (int)(pos & 7);
        s[byte] |= (uint8_t)(v << sh);
        if (sh + BITS > 8) s[byte + 1] |= (uint8_t)(v >> (8 - sh));
    }
}

static void qlp_stream_put(uint8_t *s, int64_t i0, int64_t count, int bits, unsigned flip, const uint8_t *u)
{
    switch (bits) {
    case 1: qlp_put_w(s, i0, count, 1, flip, u); break;
    case 2: qlp_put_w(s, i0, count, 2, flip, u); break;
    case 3: qlp_put_w(s, i0, count, 3, flip, u); break;
    case 4: qlp_put_w(s, i0, count, 4, flip, u); break;
    case 5: qlp_put_w(s, i0, count, 5, flip, u); break;
    case 6: qlp_put_w(s, i0, count, 6, flip, u); break;
    case 7: qlp_put_w(s, i0, count, 7, flip, u); break;
    default: qlp_put_w(s, i0, count, 8, flip, u); break;
    }
}

/* the raw values (no table) of the rows of one panel (planes of the panel: nb blocks) into buf (rows x K) */
static inline __attribute__((always_inline)) void qlp_panel_values_w(const uint8_t *pp, int64_t rows, int64_t K,
                                                                     int64_t nb, const int BITS, uint8_t *buf)
{
    const int64_t BB = qlb_block_bytes(BITS);
    (void)nb;
    for (int c = 0; c < rows; c++) {
        uint8_t *row = buf + (int64_t)c * K;
        for (int64_t k = 0; k < K; k++) {
            const uint8_t *blk = pp + (k >> 5) * BB;
            row[k] = (uint8_t)qlb_value(blk, BITS, QLB_LUT_NONE, NULL, c, (int)((k >> 2) & 7), (int)(k & 3));
        }
    }
}

static void qlp_panel_values(const uint8_t *pp, int64_t rows, int64_t K, int64_t nb, int bits, uint8_t *buf)
{
    switch (bits) {
    case 1: qlp_panel_values_w(pp, rows, K, nb, 1, buf); break;
    case 2: qlp_panel_values_w(pp, rows, K, nb, 2, buf); break;
    case 3: qlp_panel_values_w(pp, rows, K, nb, 3, buf); break;
    case 4: qlp_panel_values_w(pp, rows, K, nb, 4, buf); break;
    case 5: qlp_panel_values_w(pp, rows, K, nb, 5, buf); break;
    case 6: qlp_panel_values_w(pp, rows, K, nb, 6, buf); break;
    case 7: qlp_panel_values_w(pp, rows, K, nb, 7, buf); break;
    default: qlp_panel_values_w(pp, rows, K, nb, 8, buf); break;
    }
}

/* Pack panels [p0, p1) of the N x K weight whose codes are the stream s into `out` (the full planes array).
 * buf: 16 * K bytes of scratch (one per thread). */
static void qlp_pack_stream(const uint8_t *s, int64_t N, int64_t K, int bits, unsigned flip, int64_t nb,
                            int64_t p0, int64_t p1, uint8_t *buf, uint8_t *out)
{
    const int64_t BB = qlb_block_bytes(bits);
    for (int64_t p = p0; p < p1; p++) {
        int64_t n0 = p * QLB_NP, rows = N - n0 < QLB_NP ? N - n0 : QLB_NP;
        qlp_stream_get(s, n0 * K, rows * K, bits, flip, buf);
        qlb_pack(buf, rows, K, K, bits, nb, 0, 1, out + p * nb * BB); /* this panel as panel 0 of `rows` rows */
    }
}

/* The inverse: the codes of panels [p0, p1) of planes (no table applied) into the zeroed stream s.
 * buf: 16 * K bytes of scratch (one per thread). */
static void qlp_unpack_stream(const uint8_t *planes, int64_t N, int64_t K, int bits, unsigned flip, int64_t nb,
                              int64_t p0, int64_t p1, uint8_t *buf, uint8_t *s)
{
    const int64_t BB = qlb_block_bytes(bits);
    for (int64_t p = p0; p < p1; p++) {
        int64_t n0 = p * QLB_NP, rows = N - n0 < QLB_NP ? N - n0 : QLB_NP;
        qlp_panel_values(planes + p * nb * BB, rows, K, nb, bits, buf);
        qlp_stream_put(s, n0 * K, rows * K, bits, flip, buf);
    }
}

#endif
