/* The low-bit GEMM tile, written once for every SIMD path (included by lowbit_vnni.c and lowbit_avx2.c; no
 * include guard on purpose).  The including file defines:
 *   QLB_P(x)       the path's suffix: x##_v (AVX-512 VNNI) or x##_a (AVX2); the primitives below carry it
 *   QLB_T          the path's target attribute
 *   QLB_VI, QLB_VF its int32 / float vector types;  QLB_LANES floats per vector;  QLB_VPP vectors per panel
 *   QLB_SPLIT_OK   1 if the path's dot product takes u8 values up to 255 exactly (vpdpbusd): the 4-bit
 *                  one-row tile then multiplies the high nibbles in place (v & 0xF0 = 16 * nibble)
 * and the primitives (each QLB_T, always inline), with v a vector index inside a panel (0..QLB_VPP-1):
 *   dec(blk, t, v, BITS)  values of k-group t of a block (before the table);  lut(d, tab, v, LUT)
 *   dot(acc, d, a, WIDE)  acc + the 4-byte group dot products of u8 d and s8 a (exact)
 *   loadi(p)  the vector at p (bytes);  and8(x, m)  x & m in every byte;  addi, srai4, set1i, zeroi
 *   loadf(p), loadh(p)  QLB_LANES floats / float16 values at p;  set1f, zerof, cvt, mul, fmadd, fnmadd
 *   store(y, left, o, bias)  the first min(left, QLB_LANES) lanes of o (+ bias, if not NULL) to y
 *
 * The tile: rows [i0, i0+mr) (mr <= MRV) x panels [p0, p0+np) (np <= NV), all of K; MRV/NV/BITS/LUT are
 * compile-time constants after inlining (run-time values in the QCORE_GENERIC_TILES build, lowbit_kernels.h).  See the top of lowbit_kernels.h for the arithmetic. */

QLB_T QLB_TILE_BODY void
QLB_P(qlb_tile_body)(const qlb_w *w, const qlb_a *a, int64_t i0, int mr, int64_t p0, int np,
                     const int BITS, const int LUT, const int MRV, const int NV)
{
    const int WIDE = BITS == 8 || LUT != QLB_LUT_NONE;
    const int NVV = NV * QLB_VPP;                      /* vectors across the tile's columns */
    const int SPLIT = QLB_SPLIT_OK && BITS == 4 && LUT == QLB_LUT_NONE && MRV == 1;
    const int64_t BB = 64 * BITS, nb = w->nb, Kp = w->Kp, ng = w->ng, gblk = w->gblk;
    const int zint = w->zint;
    const int32_t zi = (int32_t)w->zval;
    /* fixed-size arrays (the largest tile): sized by MRV/NV they would be VLAs and live in memory */
    QLB_VF Y[6][4];
    const int8_t *ap[6];
    const uint8_t *pp[4];
    int64_t pi[4], ar[6];
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) {
        ar[r] = i0 + (r < mr ? r : mr - 1);  /* rows past mr repeat the last one (computed, not stored) */
        ap[r] = a->q + ar[r] * Kp;
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        pi[v] = p0 + (v < np ? v : np - 1);
        pp[v] = w->planes + pi[v] * nb * BB;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NVV; v++) Y[r][v] = QLB_P(qlb_zerof)();
    for (int64_t g = 0; g < ng; g++) {
        QLB_VF sw[4];
#pragma GCC unroll 8
        for (int v = 0; v < NVV; v++) {
            int64_t o = (pi[v / QLB_VPP] * ng + g) * QLB_NP + QLB_LANES * (v % QLB_VPP);
            sw[v] = w->f16 ? QLB_P(qlb_loadh)(w->sw16 + o) : QLB_P(qlb_loadf)(w->sw + o);
        }
        int64_t b1 = (g + 1) * gblk < nb ? (g + 1) * gblk : nb;
        for (int64_t b = g * gblk; b < b1; b++) {
            const uint8_t *tp[4];
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                tp[v] = LUT == QLB_LUT_COLUMN ? w->tab + (pi[v] * w->ngt + b / w->tblk) * 256 : w->tab;
            QLB_VI acc[6][4];
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                /* the folded zero point: the dot product starts at -zval * asum */
                QLB_VI a0 = zint ? QLB_P(qlb_set1i)(-zi * a->asum[ar[r] * nb + b]) : QLB_P(qlb_zeroi)();
#pragma GCC unroll 8
                for (int v = 0; v < NVV; v++) acc[r][v] = a0;
            }
            if (SPLIT) {
                /* 4 bits, one row: low nibbles times the even k-groups' activations, high nibbles in place times
                 * the odd ones into accumulators of their own (shifted back once per block): no shift per
                 * k-group, and twice the independent dot-product chains */
                QLB_VI acc16[4];
#pragma GCC unroll 8
                for (int v = 0; v < NVV; v++) acc16[v] = QLB_P(qlb_zeroi)();
#pragma GCC unroll 4
                for (int tt = 0; tt < 4; tt++) {
                    int32_t a4e, a4o;
                    memcpy(&a4e, ap[0] + b * 32 + 8 * tt, 4);
                    memcpy(&a4o, ap[0] + b * 32 + 8 * tt + 4, 4);
                    QLB_VI ae = QLB_P(qlb_set1i)(a4e), ao = QLB_P(qlb_set1i)(a4o);
#pragma GCC unroll 8
                    for (int v = 0; v < NVV; v++) {
                        QLB_VI c = QLB_P(qlb_loadi)(pp[v / QLB_VPP] + b * BB + 64 * tt + (64 / QLB_VPP) * (v % QLB_VPP));
                        acc[0][v] = QLB_P(qlb_dot)(acc[0][v], QLB_P(qlb_and8)(c, 0x0F), ae, 0);
                        acc16[v] = QLB_P(qlb_dot)(acc16[v], QLB_P(qlb_and8)(c, 0xF0), ao, 1);
                    }
                }
#pragma GCC unroll 8
                for (int v = 0; v < NVV; v++) acc[0][v] = QLB_P(qlb_addi)(acc[0][v], QLB_P(qlb_srai4)(acc16[v]));
            } else {
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    QLB_VI d[4];
#pragma GCC unroll 8
                    for (int v = 0; v < NVV; v++)
                        d[v] = QLB_P(qlb_lut)(QLB_P(qlb_dec)(pp[v / QLB_VPP] + b * BB, t, v % QLB_VPP, BITS),
                                              tp[v / QLB_VPP], v % QLB_VPP, LUT);
#pragma GCC unroll 8
                    for (int r = 0; r < MRV; r++) {
                        int32_t a4;
                        memcpy(&a4, ap[r] + b * 32 + 4 * t, 4);
                        QLB_VI av = QLB_P(qlb_set1i)(a4);
#pragma GCC unroll 8
                        for (int v = 0; v < NVV; v++) acc[r][v] = QLB_P(qlb_dot)(acc[r][v], d[v], av, WIDE);
                    }
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < MRV; r++) {
                QLB_VF sa = QLB_P(qlb_set1f)(a->sa[ar[r] * nb + b]);
#pragma GCC unroll 8
                for (int v = 0; v < NVV; v++)
                    Y[r][v] = QLB_P(qlb_fmadd)(QLB_P(qlb_cvt)(acc[r][v]), QLB_P(qlb_mul)(sa, sw[v]), Y[r][v]);
            }
        }
        if (zint) continue;
#pragma GCC unroll 8
        for (int r = 0; r < MRV; r++) {
            QLB_VF S = QLB_P(qlb_set1f)(a->S[ar[r] * ng + g]);
#pragma GCC unroll 8
            for (int v = 0; v < NVV; v++) {
                int64_t o = (pi[v / QLB_VPP] * ng + g) * QLB_NP + QLB_LANES * (v % QLB_VPP);
                Y[r][v] = QLB_P(qlb_fnmadd)(S, w->zconst ? QLB_P(qlb_mul)(sw[v], QLB_P(qlb_set1f)(w->zval))
                                                         : QLB_P(qlb_loadf)(w->swz + o), Y[r][v]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MRV; r++) {
        if (r >= mr) break;
        float *yo = a->y + (i0 + r) * w->N;
#pragma GCC unroll 8
        for (int v = 0; v < NVV; v++) {
            if (v / QLB_VPP >= np) break;
            int64_t j = (p0 + v / QLB_VPP) * QLB_NP + QLB_LANES * (v % QLB_VPP), left = w->N - j;
            if (left <= 0) break;
            QLB_P(qlb_store)(yo + j, left, Y[r][v], a->bias ? a->bias + j : NULL);
        }
    }
}

/* the tile functions (one per bits x table kind x tile height) and the path's picker */
#define QLB_TILE_FN(BITS, LUT, TAG, MRV, NV)                                                                    \
    QLB_T static void QLB_P(qlb_tile_##BITS##_##LUT##_##TAG)(const qlb_w *w, const qlb_a *a, int64_t i0, int mr, \
                                                            int64_t p0, int np)                                 \
    {                                                                                                          \
        QLB_P(qlb_tile_body)(w, a, i0, mr, p0, np, BITS, LUT, MRV, NV);                                        \
    }
/* tag 1: the one-row tile (1 x QLB_NV1 panels); tag 2x: the taller one (QLB_MRV2 x QLB_NV2) */
#define QLB_TILE_BITS(BITS, LUT) QLB_TILE_FN(BITS, LUT, 1, 1, QLB_NV1) QLB_TILE_FN(BITS, LUT, 2x, QLB_MRV2, QLB_NV2)
QLB_TILE_BITS(1, 0) QLB_TILE_BITS(2, 0) QLB_TILE_BITS(3, 0) QLB_TILE_BITS(4, 0)
QLB_TILE_BITS(5, 0) QLB_TILE_BITS(6, 0) QLB_TILE_BITS(7, 0) QLB_TILE_BITS(8, 0)
QLB_TILE_BITS(1, 1) QLB_TILE_BITS(2, 1) QLB_TILE_BITS(3, 1) QLB_TILE_BITS(4, 1)
QLB_TILE_BITS(1, 2) QLB_TILE_BITS(2, 2) QLB_TILE_BITS(3, 2) QLB_TILE_BITS(4, 2)
#undef QLB_TILE_BITS
#undef QLB_TILE_FN

qlb_tile_fn QLB_P(qlb_pick)(int bits, int lut, int mrv)
{
#define QLB_PICK(BITS, LUT) return mrv == 1 ? QLB_P(qlb_tile_##BITS##_##LUT##_1) : QLB_P(qlb_tile_##BITS##_##LUT##_2x)
    switch (lut * 16 + bits) {
    case 1: QLB_PICK(1, 0);
    case 2: QLB_PICK(2, 0);
    case 3: QLB_PICK(3, 0);
    case 4: QLB_PICK(4, 0);
    case 5: QLB_PICK(5, 0);
    case 6: QLB_PICK(6, 0);
    case 7: QLB_PICK(7, 0);
    case 8: QLB_PICK(8, 0);
    case 17: QLB_PICK(1, 1);
    case 18: QLB_PICK(2, 1);
    case 19: QLB_PICK(3, 1);
    case 20: QLB_PICK(4, 1);
    case 33: QLB_PICK(1, 2);
    case 34: QLB_PICK(2, 2);
    case 35: QLB_PICK(3, 2);
    case 36: QLB_PICK(4, 2);
    }
#undef QLB_PICK
    return NULL;
}
