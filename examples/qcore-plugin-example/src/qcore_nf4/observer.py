"""The ``nsigma`` observer: clip the calibration range at ``mean ± k·std``.

Mean and variance are streamed with Chan et al.'s parallel update in float64, per tensor or per channel,
so memory stays at a few numbers per channel however many batches are observed.  The range never extends
beyond the observed minimum and maximum.  ``symmetric=True`` (as signed schemes ask) gives ``[-a, a]`` with
``a = max(|lo|, |hi|)``.  Option: ``k`` (default 4.0), a positive number.
"""
from __future__ import annotations

import math

import numpy as np

import qcore


class NSigmaObserver(qcore.Observer):
    name = "nsigma"
    options = {"k": 4.0}

    def __init__(self, axis=None, kernel=None, **options):
        super().__init__(axis, kernel, **options)
        k = self.config["k"]
        if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
            raise TypeError(f"k must be a number, got {k!r}")
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"k must be a positive finite number, got {k!r}")
        self.config["k"] = float(k)

    def reset(self):
        super().reset()
        self.count = 0
        self.mean = self.m2 = self.lo = self.hi = None

    def _update(self, x):
        if not np.isfinite(x).all():  # refuse before touching any state
            raise qcore.InputError("batch contains NaN or Inf values; the nsigma observer refuses non-finite input")
        rows = x.reshape(1, -1) if self.axis is None else np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        rows = rows.astype(np.float64)
        n = rows.shape[1]
        mean = rows.mean(axis=1)
        m2 = ((rows - mean[:, None]) ** 2).sum(axis=1)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if self.mean is None:
            self.count, self.mean, self.m2, self.lo, self.hi = n, mean, m2, lo, hi
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)

    def _range(self, bits, symmetric):
        std = np.sqrt(self.m2 / self.count)
        k = self.config["k"]
        lo = np.maximum(self.mean - k * std, self.lo)
        hi = np.minimum(self.mean + k * std, self.hi)
        if symmetric:
            a = np.maximum(np.abs(lo), np.abs(hi))
            lo, hi = -a, a
        return lo.astype(np.float32), hi.astype(np.float32)
