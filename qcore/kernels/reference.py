"""numpy reference of the codebook and histogram operations of :class:`qcore.Kernel` (qcore/kernels/base.py).

The base class's default implementations: the ``numpy`` kernel uses them as they are, and the conformance kit
(``qcore.testing.check_kernel``) compares any kernel that overrides them against them.  Arguments arrive
validated by the public methods of the base class (shapes, dtypes, C order).  Written for clarity, not speed.
"""
from __future__ import annotations

import numpy as np


def _rows_of(arr3):
    """``(outer, C, inner)`` -> channel index per element, broadcastable against ``arr3``."""
    return np.arange(arr3.shape[1])[None, :, None]


def _saw(u):
    """``integral_0^u (t - round(t))^2 dt`` for ``u >= 0`` (pyx/hist_kernels.h ``hist_saw``)."""
    fl = np.floor(u)
    f = u - fl
    g = f - 1.0
    h = np.where(f <= 0.5, f * f * f / 3.0, 1.0 / 24.0 + (g * g * g + 0.125) / 3.0)
    return fl / 12.0 + h


def _sq_error_F(x, g0, gl, s3, inv_s, L):
    """Antiderivative of the squared error of the grid at ``x`` (pyx/hist_kernels.h ``hist_F``)."""
    below = x - g0
    above = x - gl
    inside = s3 * _saw(np.maximum(x - g0, 0.0) * inv_s)
    return np.where(x <= g0, below ** 3 / 3.0, np.where(x >= gl, s3 * L / 12.0 + above ** 3 / 3.0, inside))


def lut_decode(q3_u8, table256, out3):
    out3[...] = table256[_rows_of(q3_u8), q3_u8]

def nearest_entry(x3, mid, out3):
    if not np.isfinite(x3).all():
        return False
    for c in range(x3.shape[1]):
        out3[:, c, :] = np.searchsorted(mid[c], x3[:, c, :].astype(np.float64), side="left")
    return True

def nearest_entry_sse(x3, mid, codebook):
    q = np.empty(x3.shape, np.uint8)
    for c in range(x3.shape[1]):
        q[:, c, :] = np.searchsorted(mid[c], x3[:, c, :].astype(np.float64), side="left")
    d = x3.astype(np.float64) - codebook[_rows_of(x3), q]
    return (d * d).sum(axis=(0, 2))

def log_levels(x3, scale, L, T, zthr):
    """(level index m, y) with the float32 operations of the ``cython`` kernel."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = np.abs(x3) / scale.reshape(1, -1, 1)
    b = y.view(np.uint32)
    m = (b >> 23).astype(np.int32) - 127 + ((b & 0x7FFFFF) >= T) + L
    m = np.clip(m, 1, L)
    return np.where(y >= zthr, m, 0)

def log_encode(x3, scale, L, T, zthr, out3):
    if not np.isfinite(x3).all():
        return False
    m = log_levels(x3, scale, L, T, zthr)
    out3[...] = np.where(np.signbit(x3), -m, m)
    return True

def log_sse(x3, scale, L, T, zthr):
    m = log_levels(x3, scale, L, T, zthr)
    e = np.arange(L + 1, dtype=np.float64) - L
    mag = (scale.astype(np.float64)[:, None] * np.exp2(e)[None, :]).astype(np.float32)  # exact product, one rounding
    mag[:, 0] = 0.0
    d = np.abs(x3).astype(np.float64) - mag[_rows_of(x3), m].astype(np.float64)
    return (d * d).sum(axis=(0, 2))

def bins(v, lo, width, nb):
    """The bin of every value (pyx/hist_kernels.h ``hist_bin``, the one binning formula): ``trunc((v - lo) *
    (1 / width))`` in float64, clamped to ``[0, nb - 1]``; NaN lands in bin 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = (v.astype(np.float64) - lo) * (1.0 / width)
    t = np.where(np.isnan(t), 0.0, t)
    return np.clip(np.trunc(np.clip(t, -1.0, nb)), 0, nb - 1).astype(np.int64)

def histogram(x3, lo, width, out):
    nb = out.shape[1]
    for c in range(x3.shape[1]):
        b = bins(x3[:, c, :].ravel(), lo[c], width[c], nb)
        out[c] += np.bincount(b, minlength=nb)

def minmax_histogram(x, lo, width, out):
    finite = bool(np.isfinite(x).all())
    mn, mx = float(x.min()), float(x.max())
    nb = out.shape[1]
    added = finite and mn >= lo and mx <= lo + nb * width
    if added:
        out[0] += np.bincount(bins(x, lo, width, nb), minlength=nb)
    return mn, mx, finite, added

def minmax_histogram_spill(x, lo, width, out, capacity):
    finite = bool(np.isfinite(x).all())
    mn, mx = float(x.min()), float(x.max())
    if not finite:
        return mn, mx, False, None
    nb = out.shape[1]
    v = x.astype(np.float64)
    inside = (v >= lo) & (v <= lo + nb * width)
    outside = x[~inside]
    if outside.size > capacity:
        return mn, mx, True, None
    out[0] += np.bincount(bins(x[inside], lo, width, nb), minlength=nb)
    return mn, mx, True, outside.copy()

def bin_stats(rows, lo, sc, cnt, sm, bmin, bmax):
    nb = cnt.shape[1]
    for c in range(rows.shape[0]):
        t = (rows[c].astype(np.float64) - lo[c]) * sc[c]
        b = np.clip(np.trunc(np.clip(t, 0.0, nb)), 0, nb - 1).astype(np.int64)
        cnt[c] += np.bincount(b, minlength=nb)
        sm[c] += np.bincount(b, weights=rows[c].astype(np.float64), minlength=nb)
        np.minimum.at(bmin[c], b, rows[c])
        np.maximum.at(bmax[c], b, rows[c])

def histogram_sq_error(idx, cnt, lo, width, g0, step, levels):
    out = np.empty(g0.shape, np.float64)
    a = lo[:, None] + idx * width[:, None]  # (C, M) left bin edges
    b = a + width[:, None]
    for k in range(g0.shape[1]):
        s = step[:, k : k + 1]
        single = ~(s > 0)
        s = np.where(single, 1.0, s)
        L = np.where(single, 0.0, levels)
        g = g0[:, k : k + 1]
        gl = g + L * s
        s3, inv_s = s * s * s, 1.0 / s
        fa = _sq_error_F(a, g, gl, s3, inv_s, L)
        fb = _sq_error_F(b, g, gl, s3, inv_s, L)
        out[:, k] = (cnt * (fb - fa)).sum(axis=1) / width
    return out

def histogram_kl(hist, start, end, levels):
    C, K = start.shape
    nb = hist.shape[1]
    out = np.empty((C, K), np.float64)
    cum = np.concatenate([np.zeros((C, 1)), np.cumsum(hist, axis=1)], axis=1)
    for c in range(C):
        h = hist[c]
        for k in range(K):
            s, e = int(start[c, k]), int(end[c, k])
            n = e - s
            if n <= 0:
                out[c, k] = np.inf
                continue
            left, right, inside = cum[c, s], cum[c, nb] - cum[c, e], cum[c, e] - cum[c, s]
            ptot = left + right + inside
            if ptot <= 0:
                out[c, k] = 0.0
                continue
            if inside <= 0:
                out[c, k] = np.inf
                continue
            p = h[s:e].copy()
            p[0] += left
            p[-1] += right
            kl = 0.0
            for q in range(levels):
                j0, j1 = (q * n) // levels, ((q + 1) * n) // levels
                if j1 <= j0:
                    continue
                nz = p[j0:j1] > 0
                if not nz.any():
                    continue
                qv = max(h[s + j0 : s + j1].sum() / np.count_nonzero(nz), 1e-4) / inside
                pp = p[j0:j1][nz] / ptot
                kl += float(np.sum(pp * np.log(pp / qv)))
            out[c, k] = kl
    return out


def _row_errors(rows, s, sn, ia, qmin, qmax):
    """Squared error per row in units of amax^2, float32, summed in the C kernel's order (8 lanes, then the tail)."""
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.clip(np.rint(rows * inv[:, None]), qmin, qmax).astype(np.float32)
    e = (q * sn[:, None] - rows * ia[:, None]).astype(np.float32)
    e = (e * e).astype(np.float32)
    n8 = (rows.shape[1] // 8) * 8
    acc = np.zeros((rows.shape[0], 8), np.float32)
    for i in range(0, n8, 8):
        acc += e[:, i:i + 8]
    tail = np.zeros(rows.shape[0], np.float32)
    for i in range(n8, rows.shape[1]):
        tail += e[:, i]
    a = acc
    return (((a[:, 0] + a[:, 1]) + (a[:, 2] + a[:, 3])) + ((a[:, 4] + a[:, 5]) + (a[:, 6] + a[:, 7]))) + tail


def search_scales(rows: np.ndarray, dgrid: np.ndarray, qmin: int, qmax: int):
    """numpy reference of ``Kernel.search_scales`` (the ``cython`` kernel: ``qcore_plugins._scalesearch``) (bit for bit): per row of ``rows`` (R, L),
    the scale ``±max|row| / d`` of least squared error (candidates ``+d0, -d0, +d1, ...``, a later one only if
    strictly better); an all-zero row gets scale 1.  Returns float32 ``(scale, err)``, ``err`` in units of
    ``max|row|^2`` (computed that way so rows near the float32 maximum do not overflow)."""
    rows = np.ascontiguousarray(rows, np.float32)
    amax = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0], np.float32)
    best_s = np.ones(rows.shape[0], np.float32)
    best_e = np.full(rows.shape[0], np.inf, np.float32)
    live = amax > 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ia = (np.float32(1) / np.where(live, amax, np.float32(1))).astype(np.float32)
        for d in np.asarray(dgrid, np.float32):
            for negative in (False, True):
                s = (amax / d).astype(np.float32)
                sn = np.full(rows.shape[0], np.float32(1) / d, np.float32)
                if negative:
                    s, sn = -s, -sn
                s = np.where(live, s, np.float32(1))
                e = _row_errors(rows, s, sn, ia, qmin, qmax)
                better = live & (e < best_e)
                best_s = np.where(better, s, best_s)
                best_e = np.where(better, e, best_e)
    best_e = np.where(live, best_e, np.float32(0))
    return best_s.astype(np.float32), best_e.astype(np.float32)
