"""The ``histogram`` capability: streaming histograms, per-bin statistics (``kmeans``) and the error models
evaluated on histograms (the histogram observers) — with the numpy reference beside each operation (the ``_``
methods' defaults, the functions at the end of this module).

Numerics: value ``v`` of channel ``c`` counts in bin ``trunc((v - lo[c]) * (1 / width[c]))`` clamped to
``[0, bins-1]``, computed in float64 (:func:`bins`, the one binning formula) — except per tensor (``C == 1``) in
the compiled kernels, which compute it in float32 (``(v - float32(lo)) * float32(1 / width)``) unless the range
reaches beyond ``±1e37``.  The ``histogram_*`` reductions are sums in float64; they equal the reference up to
the order of additions (relative ``1e-12``), not bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..validation import as_3d, as_float32, check_int, non_finite_error
from .core import KernelBase


class HistogramOps(KernelBase):
    """The ``histogram`` capability."""

    capability = "histogram"

    @staticmethod
    def _hist_out(out, channels: int) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 2 or out.shape[0] != channels:
            raise ValueError(f"out must be a float64 (C, bins) array with C = {channels}")
        if not out.flags.c_contiguous or not out.flags.writeable or out.shape[1] < 1:
            raise ValueError("out must be C-contiguous, writeable and have at least one bin")
        return out

    def histogram(self, x, lo, width, out, axis=None) -> np.ndarray:
        """Add the counts of ``x``'s values to ``out`` (float64 ``(C, bins)``): bin ``i`` of channel ``c`` is
        ``[lo[c] + i * width[c], ...)``, values outside land in the first or last bin.  Returns ``out``.
        The one binning formula, per tensor and per channel: ``trunc((v - lo) * (1 / width))`` in float64, clamped
        to ``[0, bins - 1]`` (:func:`bins`).  Not a check of the input (observers call :meth:`minmax` first, which refuses NaN/Inf): a NaN or Inf value
        is counted in some bin, never outside ``out``."""
        x = as_float32(x, check_finite=False)
        x3 = as_3d(x, self._axis(x, axis))
        C = x3.shape[1]
        out = self._hist_out(out, C)
        lo = self._per_channel(lo, C, "lo", np.float64)
        width = self._per_channel(width, C, "width", np.float64)
        _check_range(lo, width)
        if x.size:
            self._histogram(x3, lo, width, out)
        return out

    def minmax_histogram(self, x, lo: float, width: float, out) -> tuple[float, float, bool]:
        """One pass over ``x`` (per tensor): its min and max, and its counts added to ``out`` (``(1, bins)``, as
        :meth:`histogram`) only if every value lies in ``[lo, lo + bins * width]``.  ``(min, max, added)``;
        NaN/Inf raise ``qcore.InputError`` with ``out`` untouched."""
        x = as_float32(x, check_finite=False).reshape(-1)
        out = self._hist_out(out, 1)
        lo, width = _check_range(float(lo), float(width))
        if x.size == 0:
            raise ValueError("minmax_histogram of an empty array is undefined")
        mn, mx, finite, added = self._minmax_histogram(x, lo, width, out)
        if not finite:
            raise non_finite_error(x)
        return float(mn), float(mx), bool(added)

    def minmax_histogram_spill(self, x, lo: float, width: float, out, capacity: int):
        """As :meth:`minmax_histogram`, but values outside ``[lo, lo + bins * width]`` do not stop the counting: the
        values inside are counted into ``out`` and those outside returned (float32, in no particular order) for the
        caller to count once it has widened its histogram — one pass over ``x`` where a batch reaching beyond the
        range took two.  ``(min, max, outside)``; ``outside`` is None and ``out`` untouched if more than
        ``capacity`` values fall outside.  NaN/Inf raise ``qcore.InputError`` with ``out`` untouched."""
        x = as_float32(x, check_finite=False).reshape(-1)
        out = self._hist_out(out, 1)
        lo, width = _check_range(float(lo), float(width))
        if x.size == 0:
            raise ValueError("minmax_histogram_spill of an empty array is undefined")
        capacity = check_int(capacity, "capacity", 0, 1 << 40)
        mn, mx, finite, outside = self._minmax_histogram_spill(x, lo, width, out, capacity)
        if not finite:
            raise non_finite_error(x)
        return float(mn), float(mx), None if outside is None else np.asarray(outside, np.float32)

    def bin_stats(self, rows, lo, hi, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row of ``rows`` (``(C, N)`` float32, finite): ``bins`` equal bins over ``[lo[c], hi[c]]`` (bin
        ``trunc((v - lo) * bins / (hi - lo))`` in float64, clamped; everything in bin 0 when ``hi == lo``) and per
        bin the count (int64), the sum (float64), the minimum and the maximum (float32, ``±inf`` when empty)."""
        rows = as_float32(rows)
        if rows.ndim != 2:
            raise ValueError(f"rows must be 2-d (C, N), got shape {rows.shape}")
        C = rows.shape[0]
        bins = check_int(bins, "bins", 1, 1 << 24)
        lo = self._per_channel(lo, C, "lo", np.float64)
        hi = self._per_channel(hi, C, "hi", np.float64)
        width = hi - lo
        if not (np.isfinite(width).all() and (width >= 0).all()):
            raise ValueError("lo and hi must be finite with hi >= lo")
        sc = np.where(width > 0, bins / np.where(width > 0, width, 1.0), 0.0)
        cnt = np.zeros((C, bins), np.int64)
        sm = np.zeros((C, bins), np.float64)
        bmin = np.full((C, bins), np.inf, np.float32)
        bmax = np.full((C, bins), -np.inf, np.float32)
        if rows.size:
            self._bin_stats(rows, lo, sc, cnt, sm, bmin, bmax)
        return cnt, sm, bmin, bmax

    def histogram_sq_error(self, idx, cnt, lo, width, g0, step, levels: float) -> np.ndarray:
        """float64 ``(C, K)``: the squared error of grid ``k`` (points ``g0[c, k] + j * step[c, k]``, ``j = 0..levels``,
        values beyond clamp) on channel ``c``'s histogram, values spread uniformly inside each bin.  The
        histogram comes compacted: ``cnt[c, m]`` values in bin ``idx[c, m]`` (``(C, M)``; ``cnt == 0`` pads)."""
        idx = np.ascontiguousarray(idx, np.int64)
        cnt = np.ascontiguousarray(cnt, np.float64)
        g0 = np.ascontiguousarray(g0, np.float64)
        step = np.ascontiguousarray(step, np.float64)
        if idx.ndim != 2 or cnt.shape != idx.shape or g0.ndim != 2 or step.shape != g0.shape or g0.shape[0] != idx.shape[0]:
            raise ValueError(f"shapes do not match: idx {idx.shape}, cnt {cnt.shape}, g0 {g0.shape}, step {step.shape}")
        C = idx.shape[0]
        lo = self._per_channel(lo, C, "lo", np.float64)
        width = self._per_channel(width, C, "width", np.float64)
        if not ((width > 0).all() and np.isfinite(g0).all() and np.isfinite(step).all() and (step >= 0).all()):
            raise ValueError("width must be > 0 and the grids finite with step >= 0")
        if idx.size and (idx.min() < 0):
            raise ValueError("bin indices must be >= 0")
        levels = float(levels)
        if not (np.isfinite(levels) and levels >= 0):
            raise ValueError(f"levels must be a finite number >= 0, got {levels}")
        if g0.size == 0:
            return np.zeros(g0.shape, np.float64)
        if idx.shape[1] == 0:
            return np.zeros(g0.shape, np.float64)
        return np.asarray(self._histogram_sq_error(idx, cnt, lo, width, g0, step, levels), np.float64)

    def histogram_kl(self, hist, start, end, levels: int) -> np.ndarray:
        """float64 ``(C, K)``: the KL divergence (TensorRT's entropy calibration) of clipping channel ``c``'s
        histogram ``hist`` (``(C, bins)``) to bins ``[start[c, k], end[c, k])`` and quantizing them to ``levels``
        levels; ``inf`` for windows holding nothing."""
        hist = np.ascontiguousarray(hist, np.float64)
        start = np.ascontiguousarray(start, np.int64)
        end = np.ascontiguousarray(end, np.int64)
        if hist.ndim != 2 or start.ndim != 2 or end.shape != start.shape or start.shape[0] != hist.shape[0]:
            raise ValueError(f"shapes do not match: hist {hist.shape}, start {start.shape}, end {end.shape}")
        levels = check_int(levels, "levels", 1, 1 << 30)
        if start.size == 0:
            return np.zeros(start.shape, np.float64)
        nb = hist.shape[1]
        start, end = np.clip(start, 0, nb), np.clip(end, 0, nb)
        return np.asarray(self._histogram_kl(hist, np.ascontiguousarray(start), np.ascontiguousarray(end), levels), np.float64)

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _histogram(self, x3, lo, width, out) -> None:
        histogram(x3, lo, width, out)

    def _minmax_histogram(self, x, lo, width, out) -> tuple[float, float, bool, bool]:
        """``(min, max, finite, added)``; ``out`` unchanged unless ``added``."""
        return minmax_histogram(x, lo, width, out)

    def _minmax_histogram_spill(self, x, lo, width, out, capacity):
        """``(min, max, finite, outside)``; ``out`` unchanged unless ``outside`` is not None."""
        return minmax_histogram_spill(x, lo, width, out, capacity)

    def _bin_stats(self, rows, lo, sc, cnt, sm, bmin, bmax) -> None:
        """Accumulate into the outputs; bin ``trunc((v - lo[c]) * sc[c])`` clamped to ``[0, bins-1]``."""
        bin_stats(rows, lo, sc, cnt, sm, bmin, bmax)

    def _histogram_sq_error(self, idx, cnt, lo, width, g0, step, levels) -> np.ndarray:
        return histogram_sq_error(idx, cnt, lo, width, g0, step, levels)

    def _histogram_kl(self, hist, start, end, levels) -> np.ndarray:
        return histogram_kl(hist, start, end, levels)


# -- the numpy reference (written for clarity, not speed) -----------------------------------------------------
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


def _check_range(lo, width):
    """``(lo, width)`` of a histogram (scalars or per-channel arrays), refused unless finite with ``width > 0``."""
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(width)) and np.all(np.greater(width, 0))):
        raise ValueError("lo must be finite and width finite and > 0")
    return lo, width
