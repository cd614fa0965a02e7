"""The ``moving_average`` observer: exponential moving averages of each batch's minimum and maximum.

As torch's ``MovingAverageMinMaxObserver``: the first batch sets ``min``/``max``; each later batch moves
them by ``averaging_constant`` (default 0.01, in (0, 1]) toward its own: ``min += c * (batch_min - min)``.
With ``averaging_constant=1`` it is the last batch's range.  Suited to activations that drift during
calibration (or QAT); one pass, no extra memory.
"""
from __future__ import annotations

import numpy as np

import qcore

from qcore.validation import check_number


class MovingAverageObserver(qcore.Observer):
    name = "moving_average"
    self_checking = True  # kernel.minmax raises InputError on NaN/Inf
    options = {"averaging_constant": 0.01}

    def __init__(self, axis=None, kernel=None, **options):
        super().__init__(axis, kernel, **options)
        self.config["averaging_constant"] = check_number(
            self.config["averaging_constant"], "averaging_constant", 0.0, 1.0, lo_open=True
        )

    def reset(self):
        super().reset()
        self.lo = None
        self.hi = None

    def _update(self, x):
        lo, hi = self.kernel.minmax(x, self.axis)  # raises InputError on NaN/Inf
        lo, hi = lo.astype(np.float64), hi.astype(np.float64)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            c = self.config["averaging_constant"]
            self.lo = self.lo + c * (lo - self.lo)
            self.hi = self.hi + c * (hi - self.hi)

    def _range(self, bits, symmetric):
        return self.lo, self.hi


@qcore.hookimpl
def qcore_observers():
    return [MovingAverageObserver]
