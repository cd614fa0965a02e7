/* Scale search for symmetric low-bit linear quantization (qcore_plugins._scalesearch).
 *
 * For one row of n floats (a group, a channel or the whole tensor) pick the scale s that minimises (computed
 * in units of amax, so rows near the float32 maximum do not overflow)
 *     sum_i (clamp(rint(x_i / s), qmin, qmax) * s - x_i)^2
 * over the candidates s = sign * amax / d for d in dgrid[0..nd) and sign in {+1, -1}, amax = max |x_i|.
 * A negative scale is what lets the value of largest magnitude take the extra negative code (llama.cpp's
 * Q4_0 maps it to -8); candidates are tried in order (+d0, -d0, +d1, ...) and a later one wins only when its
 * error is strictly smaller.  An all-zero row gets scale 1 (every code 0, exact).
 *
 * rint is the 1.5*2^23 magic-number rounding (half to even), exact because |x/s| <= max(d) + 1 < 2^22.
 * Plain C, compiled at the build's baseline ISA; gcc vectorizes the inner loops (float accumulators).
 */
#ifndef QCORE_SCALESEARCH_KERNELS_H
#define QCORE_SCALESEARCH_KERNELS_H

#include <stdint.h>
#include <math.h>

static inline float ss_absmax(const float *x, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

/* squared error of one candidate in units of amax (so nothing overflows near the float32 maximum):
 * sum_i (q_i * sn - x_i * ia)^2 with q_i = clamp(rint(x_i * inv)), sn = s / amax, ia = 1 / amax */
static inline float ss_error(const float *x, int64_t n, float inv, float sn, float ia, float qmin, float qmax)
{
    const float magic = 12582912.0f;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++) {
            float v = x[i + j] * inv;
            float q = (v + magic) - magic;
            q = q < qmin ? qmin : q;
            q = q > qmax ? qmax : q;
            float e = q * sn - x[i + j] * ia;
            acc[j] += e * e;
        }
    }
    float tail = 0.0f;
    for (; i < n; i++) {
        float v = x[i] * inv;
        float q = (v + magic) - magic;
        q = q < qmin ? qmin : q;
        q = q > qmax ? qmax : q;
        float e = q * sn - x[i] * ia;
        tail += e * e;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

/* the best scale of one row; *err_out gets its squared error in units of amax^2 */
static float ss_row(const float *x, int64_t n, const float *dgrid, int nd, float qmin, float qmax, float *err_out)
{
    float amax = ss_absmax(x, n);
    if (!(amax > 0.0f)) {
        *err_out = 0.0f;
        return 1.0f;
    }
    float best_s = 1.0f, best_e = INFINITY, ia = 1.0f / amax;
    for (int c = 0; c < nd; c++) {
        for (int sg = 0; sg < 2; sg++) {
            float s = amax / dgrid[c];
            float sn = 1.0f / dgrid[c];
            if (sg) {
                s = -s;
                sn = -sn;
            }
            float e = ss_error(x, n, 1.0f / s, sn, ia, qmin, qmax);
            if (e < best_e) {
                best_e = e;
                best_s = s;
            }
        }
    }
    *err_out = best_e;
    return best_s;
}

#endif
