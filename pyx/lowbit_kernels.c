/* The low-bit GEMM's portable part: packing, the portable path (plain C, any CPU) and the driver that dispatches
 * to the SIMD paths of lowbit_avx2.c / lowbit_vnni.c.  Layout and arithmetic: lowbit_kernels.h. */
#include "lowbit_kernels.h"

/* ------------------------------------------------------------------------------------------------ packing */

void qlb_pack(const uint8_t *u, int64_t N, int64_t K, int64_t ldu, int bits, int64_t nb,
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

void qlb_decode_panel(const qlb_w *w, int64_t p, uint8_t *out /* 16 x Kp */)
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

int qlb_quant_row(int isa, const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
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

/* ------------------------------------------------------------------------------------------------ driver */

/* as the tiles of lowbit_vnni.c and lowbit_avx2.c */
int qlb_mrv(int isa, int64_t M)
{
    if (isa == QLB_VNNI) return M == 1 ? 1 : 6;
    if (isa == QLB_AVX2) return M == 1 ? 1 : 2;
    return 4;
}
int qlb_nv(int isa, int mrv)
{
    if (isa == QLB_VNNI) return mrv == 1 ? 4 : 2;
    if (isa == QLB_AVX2) return mrv == 1 ? 2 : 1;
    return 1;
}

void qlb_unit(int isa, const qlb_w *w, const qlb_a *a, int64_t r0, int64_t r1, int64_t q0, int64_t q1)
{
    int mrv = qlb_mrv(isa, a->M);
    int nv = qlb_nv(isa, mrv);
#if QLB_X86
    qlb_tile_fn fn = NULL;
    if (isa == QLB_VNNI) fn = qlb_pick_v(w->bits, w->lut, mrv);
    else if (isa == QLB_AVX2) fn = qlb_pick_a(w->bits, w->lut, mrv);
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

