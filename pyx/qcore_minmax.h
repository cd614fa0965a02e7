/* The one min/max reduction of qcore's C code, included by pyx/quant_kernels.h (the kernels' minmax) and
 * pyx/hist_kernels.h (the histogram observers' wide-range path).
 *
 * Vectorizes under strict IEEE: 16 independent lanes (no reassociation needed), NaN propagated explicitly
 * (``m = (v < m || v != v) ? v : m``), so a NaN anywhere makes both results NaN and an Inf shows as an
 * infinite result — callers detect non-finite input from the results alone.  Compiled into each including
 * extension's per-ISA copies by inlining (QC_INLINE is always_inline).
 */
#ifndef QCORE_MINMAX_H
#define QCORE_MINMAX_H

#include <stddef.h>

#include "qcore_isa.h"

#define QC_LANES 16
#define QC_MIN_UPD(m, v) ((((v) < (m)) || ((v) != (v))) ? (v) : (m))
#define QC_MAX_UPD(m, v) ((((v) > (m)) || ((v) != (v))) ? (v) : (m))

/* min and max of x[0..n) (n >= 1); a NaN anywhere makes both results NaN */
QC_INLINE void qc_minmax_run_body(const float *restrict x, ptrdiff_t n, float *pmn, float *pmx)
{
    float mn = x[0], mx = x[0];
    ptrdiff_t i = 0;
    if (n >= 2 * QC_LANES) {
        float lmn[QC_LANES], lmx[QC_LANES];
        for (int k = 0; k < QC_LANES; k++) lmn[k] = lmx[k] = x[k];
        for (i = QC_LANES; i + QC_LANES <= n; i += QC_LANES) {
            for (int k = 0; k < QC_LANES; k++) {
                float v = x[i + k];
                lmn[k] = QC_MIN_UPD(lmn[k], v);
                lmx[k] = QC_MAX_UPD(lmx[k], v);
            }
        }
        for (int k = 0; k < QC_LANES; k++) {
            mn = QC_MIN_UPD(mn, lmn[k]);
            mx = QC_MAX_UPD(mx, lmx[k]);
        }
    }
    for (; i < n; i++) {
        float v = x[i];
        mn = QC_MIN_UPD(mn, v);
        mx = QC_MAX_UPD(mx, v);
    }
    *pmn = mn;
    *pmx = mx;
}

/* element-wise running min/max: mn[i] = min(mn[i], x[i]) etc. (NaN-propagating) */
QC_INLINE void qc_minmax_vec_body(const float *restrict x, ptrdiff_t n, float *restrict mn, float *restrict mx)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        mn[i] = QC_MIN_UPD(mn[i], v);
        mx[i] = QC_MAX_UPD(mx[i], v);
    }
}

#endif
