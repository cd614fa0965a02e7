"""The ``histogram`` observer: a streaming histogram and a threshold search, entropy (KL) or L2.

Options: ``bins`` (2048), ``method`` (``"entropy"`` or ``"l2"``, default ``"l2"``).  Both methods know the
quantizer's ``bits`` and symmetry.  Candidate ranges clip equal tail masses (affine: the same mass below the
lower and above the upper limit; symmetric: the mass of ``|x|`` above ``amax``) on a geometric ladder of
tail masses from one value up to a quarter of the data, refined once between the neighbours of the best.

* ``"entropy"`` (TensorRT, ONNX Runtime, MXNet): clip the histogram to the candidate window of bins, adding
  the clipped mass to the end bins (P), merge the window into as many chunks as the quantizer has levels
  spread evenly over P's non-empty bins (Q), and minimise KL(P || Q).  Windows narrower than the number of
  levels are not candidates.
* ``"l2"`` (PyTorch ``HistogramObserver``): minimise the squared error of the quantizer's own grid on the
  histogram, evaluated exactly (values uniform inside each bin), instead of torch's greedy bin walk.
"""
from __future__ import annotations

import numpy as np

import qcore

from ._histogram import HistogramObserverBase, pick
from .mse import sq_error_search

METHODS = ("entropy", "l2")


class HistogramObserver(HistogramObserverBase):
    name = "histogram"
    options = {"bins": 2048, "method": "l2"}

    def _validate(self):
        m = self.config["method"]
        if m not in METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {m!r}")

    def _candidates(self, levels, symmetric):
        """Candidate ranges for tail-mass fractions ``levels`` (``(K,)`` for all channels, or ``(C, K)``)."""
        total = self.hist.sum(axis=1)[:, None]
        m = (levels if levels.ndim == 2 else levels[None, :]) * total
        if symmetric:
            a = self.abs_quantile_values(m)
            return -a, a
        return self.quantile_values(m, total - m)

    def _search(self, bits, symmetric):
        levels = self.tail_levels(128)
        score = self._kl if self.config["method"] == "entropy" else self._l2
        lo, hi = self._candidates(levels, symmetric)
        err = score(lo, hi, bits, symmetric)
        blo, bhi, b = pick(err, lo, hi)
        best = err[np.arange(len(b)), b]
        # refine between the neighbouring tail masses of each channel's best
        fine = np.linspace(levels[np.maximum(b - 1, 0)], levels[np.minimum(b + 1, len(levels) - 1)], 33, axis=1)
        flo, fhi = self._candidates(fine, symmetric)
        ferr = score(flo, fhi, bits, symmetric)
        rlo, rhi, k = pick(ferr, flo, fhi)
        better = ferr[np.arange(len(k)), k] < best
        blo, bhi = np.where(better, rlo, blo), np.where(better, rhi, bhi)
        best = np.where(better, ferr[np.arange(len(k)), k], best)
        if np.all(~np.isfinite(best)):
            return self.min, self.max
        if self.config["method"] == "l2":
            # the tail-mass ladder clips equal masses on both sides (or one |x| mass): lopsided data (GELU/ReLU
            # outputs, one-sided outliers) needs unequal ones, so the continuous search of ``mse`` competes too
            clo, chi = sq_error_search(self, bits, symmetric, 3)
            clo, chi = np.clip(clo, self.min, self.max), np.clip(chi, self.min, self.max)
            cerr = self.sq_errors(clo[:, None], chi[:, None], bits, symmetric)[:, 0]
            if symmetric:
                a = np.maximum(-blo, bhi)
                blo, bhi = -a, a
            berr = self.sq_errors(np.clip(blo, self.min, self.max)[:, None], np.clip(bhi, self.min, self.max)[:, None],
                                  bits, symmetric)[:, 0]
            better = cerr < berr
            blo, bhi = np.where(better, clo, blo), np.where(better, chi, bhi)
        if symmetric:  # window edges snap to bins: keep the range centred on zero
            a = np.maximum(-blo, bhi)
            return -a, a
        return blo, bhi

    def _rows(self, channel):
        if channel is None:
            return self.hist, self.lo, self.width
        s = slice(channel, channel + 1)
        return self.hist[s], self.lo[s], self.width[s]

    def _l2(self, lo, hi, bits, symmetric, channel=None):
        from ._histogram import scheme_grid

        _, hlo, w = self._rows(channel)
        g0, step, levels = scheme_grid(lo, hi, bits, symmetric)
        idx, cnt = self.compact(channel)
        return self.kernel.histogram_sq_error(idx, cnt, hlo, w, g0, step, levels)

    def _kl(self, lo, hi, bits, symmetric, channel=None):
        hist, hlo, w = self._rows(channel)
        nq = 2 * ((1 << (bits - 1)) - 1) if symmetric else (1 << bits) - 1
        nq = max(nq, 1)
        s = np.floor((lo - hlo[:, None]) / w[:, None] + 1e-9).astype(np.int64)
        e = np.ceil((hi - hlo[:, None]) / w[:, None] - 1e-9).astype(np.int64)
        nb = hist.shape[1]
        s, e = np.clip(s, 0, nb), np.clip(e, 0, nb)
        kl = self.kernel.histogram_kl(hist, s, e, nq)
        full = (s == 0) & (e == nb)
        kl = np.where((e - s >= min(nq, nb)) | full, kl, np.inf)
        # report the window that was scored: bin edges
        lo[...] = hlo[:, None] + s * w[:, None]
        hi[...] = hlo[:, None] + e * w[:, None]
        return kl


@qcore.hookimpl
def qcore_observers():
    return [HistogramObserver]
