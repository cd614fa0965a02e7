"""The ``minmax`` observer: the running minimum and maximum of everything observed."""
from __future__ import annotations

import numpy as np

import qcore


class MinMaxObserver(qcore.Observer):
    name = "minmax"
    self_checking = True  # kernel.minmax raises InputError on NaN/Inf
    options = {}

    def reset(self):
        super().reset()
        self.lo = None
        self.hi = None

    def _update(self, x):
        lo, hi = self.kernel.minmax(x, self.axis)  # raises InputError on NaN/Inf
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = np.minimum(self.lo, lo)
            self.hi = np.maximum(self.hi, hi)

    def _range(self, bits, symmetric):
        return self.lo, self.hi


@qcore.hookimpl
def qcore_observers():
    return [MinMaxObserver]
