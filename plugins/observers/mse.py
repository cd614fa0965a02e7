"""The ``mse`` observer: the clipping range that minimises the quantizer's own squared error.

The error of a candidate range is evaluated exactly on the streaming histogram (values uniform inside each
bin) for the grid the ``linear`` scheme builds from that range at the requested ``bits`` and symmetry,
including the rounding of the zero point (``scheme_grid`` in ``_histogram.py``).  The search never touches
raw data:

* symmetric: ``amax`` on a geometric grid of 64 points in ``[2^-12, 1] * max|x|``, then a zoom (17-point
  grids between the neighbours of the best point, ``rounds`` times);
* affine: the same grid on ``(t * min, t * max)``, then coordinate descent, zooming on ``hi`` with ``lo``
  fixed and on ``lo`` with ``hi`` fixed, twice.

The full ``[min, max]`` is always a candidate, so the range found is never worse than ``minmax`` on the
histogram model.  Options: ``bins`` (2048), ``rounds`` (3, zoom steps per 1-D search, 0..10).
"""
from __future__ import annotations

import numpy as np

import qcore

from qcore.validation import check_number

from ._histogram import HistogramObserverBase

COARSE = np.geomspace(2.0**-12, 1.0, 64)


def minimize_1d(f, grid, rounds, points=17):
    """Per row, the value of ``grid`` (``(C, K)``, increasing per row) minimising ``f(grid) -> (C, K)``,
    zooming ``rounds`` times into the interval between the best point's neighbours.  ``(value, error)``."""
    rows = np.arange(grid.shape[0])
    best_val = best_err = None
    for r in range(rounds + 1):
        err = f(grid)
        b = np.argmin(err, axis=1)
        val, e = grid[rows, b], err[rows, b]
        if best_val is None:
            best_val, best_err = val, e
        else:
            better = e < best_err
            best_val = np.where(better, val, best_val)
            best_err = np.where(better, e, best_err)
        left = grid[rows, np.maximum(b - 1, 0)]
        right = grid[rows, np.minimum(b + 1, grid.shape[1] - 1)]
        grid = np.linspace(left, right, points, axis=1)
    return best_val, best_err


class MSEObserver(HistogramObserverBase):
    name = "mse"
    options = {"bins": 2048, "rounds": 3}

    def _validate(self):
        self.config["rounds"] = check_number(self.config["rounds"], "rounds", 0, 10, integer=True)

    def _search(self, bits, symmetric):
        rounds = self.config["rounds"]
        dmin, dmax = self.min, self.max
        if symmetric:
            absmax = np.maximum(-dmin, dmax)
            a, _ = minimize_1d(lambda g: self.sq_errors(-g, g, bits, True), absmax[:, None] * COARSE[None, :], rounds)
            return -a, a
        t, _ = minimize_1d(lambda g: self.sq_errors(g * dmin[:, None], g * dmax[:, None], bits, False),
                           np.broadcast_to(COARSE, (len(dmin), len(COARSE))).copy(), rounds)
        lo, hi = t * dmin, t * dmax
        for _ in range(2):  # coordinate descent: the error is nearly separable in lo and hi
            span = np.geomspace(0.5, 2.0, 17)[None, :]
            g = np.minimum(hi[:, None] * span, dmax[:, None])
            hi, _ = minimize_1d(lambda g: self.sq_errors(np.broadcast_to(lo[:, None], g.shape), g, bits, False), g, rounds)
            g = np.maximum(lo[:, None] * span, dmin[:, None])[:, ::-1].copy()  # increasing
            lo, _ = minimize_1d(lambda g: self.sq_errors(g, np.broadcast_to(hi[:, None], g.shape), bits, False), g, rounds)
        return lo, hi


@qcore.hookimpl
def qcore_observers():
    return [MSEObserver]
