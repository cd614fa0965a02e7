"""The ``percentile`` observer: clip at a percentile of everything observed, from a streaming histogram.

Options: ``percentile`` (default 99.99, in [50, 100]) and ``bins`` (default 2048).  Affine quantizers get
``[P(100 - p), P(p)]``; symmetric ones get ``±P_|x|(p)``, the percentile of the magnitudes.  Percentiles
interpolate linearly inside a histogram bin and never leave the observed ``[min, max]``.  Memory is
``bins * 8`` bytes per channel whatever the number of batches (see ``_histogram.py``).
"""
from __future__ import annotations

import qcore

from qcore.validation import check_number

from ._histogram import HistogramObserverBase


class PercentileObserver(HistogramObserverBase):
    name = "percentile"
    options = {"percentile": 99.99, "bins": 2048}

    def _validate(self):
        self.config["percentile"] = check_number(self.config["percentile"], "percentile", 50.0, 100.0)

    def _search(self, bits, symmetric):
        p = self.config["percentile"] / 100.0
        total = self.hist.sum(axis=1)[:, None]
        if symmetric:
            a = self.abs_quantile_values((1.0 - p) * total)[:, 0]
            return -a, a
        lo, hi = self.quantile_values((1.0 - p) * total, p * total)
        return lo[:, 0], hi[:, 0]


@qcore.hookimpl
def qcore_observers():
    return [PercentileObserver]
