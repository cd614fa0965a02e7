"""Streaming histograms shared by the ``percentile``, ``histogram`` and ``mse`` observers.

State per channel (one channel per tensor when ``axis`` is None): ``bins`` float64 counts over
``[lo, lo + bins * width)``, plus the exact minimum and maximum seen.  The memory is ``C * bins * 8``
bytes, whatever the number of batches.

When a batch falls outside the current range the histogram grows by an **integer** factor ``k`` of the bin
width, placed so that old bin edges are new bin edges: ``k`` old bins merge into one new bin exactly (no
interpolation, so no error accumulates however often the range grows).  The old range lands in the middle
of the new one, which leaves headroom on both sides, so the width at most doubles each time the data range
outgrows the histogram and at least half the bins always cover data.

The counting is the observer's kernel's (``self.kernel``: ``minmax``, ``histogram``, ``minmax_histogram_spill``; the
``cython`` kernel runs them with OpenMP threads and per-thread partial histograms, GIL released).  Range searches
evaluate, for each candidate clipping range, the **exact** squared error of the quantizer's own grid on the
histogram (values uniform inside each bin): the kernel's ``histogram_sq_error`` (qcore/kernels/histogram.py).
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.validation import as_3d, check_number, normalize_axis  # noqa: F401 - check_number: used by the observers

#: a histogram observer holds at most this many counts (C * bins); ``bins`` is lowered for more channels
MAX_ENTRIES = 1 << 24
#: a later per-tensor batch is counted in one pass if at most max(SPILL_MIN, size // SPILL_FRACTION) of its values
#: lie beyond the current range (they are set aside and counted once the range has grown)
SPILL_MIN = 4096
SPILL_FRACTION = 256


def scheme_grid(lo, hi, bits, symmetric):
    """The grid of the ``linear`` scheme for clipping range ``(lo, hi)``: ``(g0, step, levels)``.

    Grid points are ``g0 + j * step`` for ``j = 0..levels``; affine ranges are widened to include zero and the
    zero point is rounded exactly as ``qcore_plugins.schemes.linear`` does, so the error evaluated is the
    error the quantizer will make.
    """
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    if symmetric:
        qmax = (1 << (bits - 1)) - 1 if bits > 1 else 1
        amax = np.maximum(-lo, hi)
        scale = (amax / qmax).astype(np.float32).astype(np.float64)
        return -qmax * scale, scale, float(2 * qmax)
    qmax = (1 << bits) - 1
    lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = ((hi0 - lo0) / qmax).astype(np.float32).astype(np.float64)
    safe = np.where(scale > 0, scale, 1.0)
    zp = np.clip(np.rint(-lo0 / safe), 0, qmax)
    return -zp * scale, scale, float(qmax)


class HistogramObserverBase(qcore.Observer):
    self_checking = True  # kernel.minmax_histogram_spill / kernel.minmax refuse NaN/Inf in their own pass
    """Base of the observers that keep a streaming histogram per channel (option ``bins``)."""

    options = {"bins": 2048}

    def __init__(self, axis=None, kernel=None, **options):
        super().__init__(axis, kernel, **options)
        self.config["bins"] = check_number(self.config["bins"], "bins", 16, 1 << 20, integer=True)
        self._validate()

    def _validate(self) -> None:
        """Subclasses check their own options here (ValueError/TypeError)."""

    def reset(self):
        super().reset()
        self.hist = None  # (C, bins) float64 counts
        self.lo = None  # (C,) left edge of bin 0
        self.width = None  # (C,) bin width
        self.min = None  # (C,) exact minimum observed
        self.max = None
        self._cache = {}

    @property
    def nbytes(self) -> int:
        """Bytes of observer state (constant after the first batch)."""
        if self.hist is None:
            return 0
        return int(self.hist.nbytes + self.lo.nbytes + self.width.nbytes + self.min.nbytes + self.max.nbytes)

    # -- accumulation ------------------------------------------------------------------------------------
    def _update(self, x):
        ax = None if self.axis is None else normalize_axis(self.axis, x.ndim)
        x3 = as_3d(x, ax)
        if self.hist is not None and x3.shape[1] == 1:
            # one pass: count what lies in the current range, set aside the few values beyond it; widen the range
            # (merging bins exactly, this batch's counts included) and count those few.  A batch with more values
            # beyond the range than SPILL allows takes the two passes below.
            lo, w = float(self.lo[0]), float(self.width[0])
            cap = max(SPILL_MIN, x3.size // SPILL_FRACTION)
            mn, mx, outside = self.kernel.minmax_histogram_spill(x3.reshape(-1), lo, w, self.hist, cap)  # InputError
            bmin, bmax = np.array([mn], np.float64), np.array([mx], np.float64)
            if outside is not None:
                self._grow(bmin, bmax)
                self.min = np.minimum(self.min, bmin)
                self.max = np.maximum(self.max, bmax)
                if outside.size:
                    self.kernel.histogram(outside, self.lo, self.width, self.hist)
                self._cache = {}
                return
        else:
            bmin, bmax = self.kernel.minmax(x3, 1)  # InputError on NaN/Inf
        bmin = bmin.astype(np.float64)
        bmax = bmax.astype(np.float64)
        if self.hist is None:
            C = x3.shape[1]
            nb = self.config["bins"]
            if C * nb > MAX_ENTRIES:
                nb = max(16, MAX_ENTRIES // C)
            self.lo = bmin.copy()
            span = bmax - bmin
            tiny = np.maximum(np.abs(bmin) * 2.0**-20, 1e-30) / nb
            # a hair wider than the data, so a later batch with the same extremes never forces a regrowth
            self.width = np.where(span > 0, span / nb * (1.0 + 2.0**-30), tiny)
            self.hist = np.zeros((C, nb), np.float64)
            self.min, self.max = bmin, bmax
        else:
            self._grow(bmin, bmax)
            self.min = np.minimum(self.min, bmin)
            self.max = np.maximum(self.max, bmax)
        self.kernel.histogram(x3, self.lo, self.width, self.hist, axis=1)
        self._cache = {}

    def _grow(self, bmin, bmax):
        nb = self.hist.shape[1]
        lo, w = self.lo, self.width
        hi = lo + nb * w
        grow = (bmin < lo) | (bmax > hi)
        if not grow.any():
            return
        g = np.flatnonzero(grow)
        lo_g, w_g, hi_g = lo[g], w[g], hi[g]
        nmin = np.minimum(bmin[g], lo_g)
        nmax = np.maximum(bmax[g], hi_g)
        jmin = np.ceil((lo_g - nmin) / w_g)
        k = np.maximum(1.0, np.ceil((jmin * w_g + nmax - lo_g) / (nb * w_g)))
        jmax = np.floor((lo_g + nb * k * w_g - nmax) / w_g)
        while (bad := jmax < jmin).any():  # rounding: one more step of width
            k = np.where(bad, k + 1, k)
            jmax = np.floor((lo_g + nb * k * w_g - nmax) / w_g)
        j = np.floor((jmin + jmax) / 2)
        # old bin t of channel i goes to new bin (j + t) // k: exact merging of counts
        t = np.arange(nb, dtype=np.float64)
        idx = np.minimum(np.floor((j[:, None] + t[None, :]) / k[:, None]), nb - 1).astype(np.int64)
        idx += (np.arange(len(g), dtype=np.int64) * nb)[:, None]
        merged = np.bincount(idx.ravel(), weights=self.hist[g].ravel(), minlength=len(g) * nb)
        self.hist[g] = merged.reshape(len(g), nb)
        self.lo[g] = lo_g - j * w_g
        self.width[g] = k * w_g

    # -- helpers for the range searches ----------------------------------------------------------------
    def _range(self, bits, symmetric):
        key = ("range", int(bits), bool(symmetric))
        if key not in self._cache:
            lo, hi = self._search(int(bits), bool(symmetric))
            # a clipping range never needs to extend beyond the data
            lo = np.clip(lo, self.min, self.max)
            hi = np.clip(hi, self.min, self.max)
            self._cache[key] = (lo, hi)
        return self._cache[key]

    def _search(self, bits, symmetric):
        raise NotImplementedError

    def _edges(self):
        nb = self.hist.shape[1]
        return self.lo[:, None] + np.arange(nb + 1)[None, :] * self.width[:, None]

    def _cdf(self):
        cum = np.zeros((self.hist.shape[0], self.hist.shape[1] + 1))
        np.cumsum(self.hist, axis=1, out=cum[:, 1:])
        return cum

    def quantile_values(self, mass_lo, mass_hi):
        """Per channel, the value below which ``mass_lo[c, k]`` values lie (and likewise ``mass_hi``), with
        linear interpolation inside the bin, as two ``(C, K)`` arrays."""
        edges, cum = self._edges(), self._cdf()
        C, nb1 = cum.shape
        # one searchsorted for all channels: shift row c by c * (largest total + 1), rows stay sorted
        off = (np.arange(C, dtype=np.float64) * (cum[:, -1].max() + 1.0))[:, None]
        flat = (cum + off).ravel()
        rows = np.arange(C)[:, None]
        out = []
        for mass in (mass_lo, mass_hi):
            mass = np.clip(np.asarray(mass, np.float64), 0.0, cum[:, -1:])
            i = np.searchsorted(flat, (mass + off).ravel(), side="left").reshape(mass.shape) - rows * nb1
            i = np.clip(i, 1, nb1 - 1)
            h = self.hist[rows, i - 1]
            frac = np.where(h > 0, (mass - cum[rows, i - 1]) / np.where(h > 0, h, 1.0), 0.0)
            out.append(edges[rows, i - 1] + np.clip(frac, 0.0, 1.0) * self.width[:, None])
        return out[0], out[1]

    def abs_quantile_values(self, tail_mass):
        """Per channel, ``a`` such that ``tail_mass[c, k]`` values have ``|x| > a`` (interpolated), ``(C, K)``."""
        edges, cum = self._edges(), self._cdf()
        tail_mass = np.asarray(tail_mass, np.float64)
        res = np.empty_like(tail_mass)
        for c in range(cum.shape[0]):
            e, cu = edges[c], cum[c]
            amax = max(-e[0], e[-1])
            a = np.unique(np.concatenate([np.abs(e), [0.0, amax]]))
            a = a[a <= amax]
            tail = np.interp(-a, e, cu) + (cu[-1] - np.interp(a, e, cu))  # mass with |x| > a, non-increasing
            # invert the non-increasing tail(a): np.interp needs increasing x, so flip both
            res[c] = np.interp(tail_mass[c], tail[::-1], a[::-1])
        return res

    def tail_levels(self, count):
        """``count`` tail-mass fractions from 0 up to 1/4, geometric (fine near 0: the clipping of outliers)."""
        total = max(float(self.hist.sum(axis=1).max()), 1.0)
        return np.concatenate([[0.0], np.geomspace(0.25 / total, 0.25, count - 1)])

    def sq_errors(self, lo, hi, bits, symmetric):
        """``(C, K)`` squared errors of the linear grid for candidate ranges ``lo``, ``hi`` (``(C, K)`` each)."""
        g0, step, levels = scheme_grid(lo, hi, bits, symmetric)
        idx, cnt = self.compact()
        return self.kernel.histogram_sq_error(idx, cnt, self.lo, self.width, g0, step, levels)

    def compact(self, channel=None):
        """The non-empty bins, per channel, as ``(idx, cnt)`` ``(C, M)`` arrays padded with zero counts."""
        key = ("compact", channel)
        if key not in self._cache:
            hist = self.hist if channel is None else self.hist[channel : channel + 1]
            rows, cols = np.nonzero(hist)
            per_row = np.bincount(rows, minlength=hist.shape[0])
            m = int(per_row.max(initial=0))
            starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])
            pos = np.arange(len(rows)) - starts[rows]
            idx = np.zeros((hist.shape[0], m), np.int64)
            cnt = np.zeros((hist.shape[0], m), np.float64)
            idx[rows, pos] = cols
            cnt[rows, pos] = hist[rows, cols]
            self._cache[key] = (idx, cnt)
        return self._cache[key]

    def data_range(self):
        return self.min.copy(), self.max.copy()


def pick(values, lo, hi):
    """Per channel the candidate (column) of smallest value: ``(lo, hi, index)``."""
    best = np.argmin(values, axis=1)
    rows = np.arange(values.shape[0])
    return lo[rows, best], hi[rows, best], best
