"""The ``mse`` observer: the clipping range that minimises the quantizer's own squared error.

The error of a candidate range is evaluated exactly on the streaming histogram (values uniform inside each
bin) for the grid the ``linear`` scheme builds from that range at the requested ``bits`` and symmetry,
including the rounding of the zero point (``scheme_grid`` in ``_histogram.py``).  The search never touches
raw data:

* symmetric: ``amax`` on a geometric grid of 64 points in ``[2^-12, 1] * max|x|``, then a zoom (17-point
  grids between the neighbours of the best point, ``rounds`` times);
* affine: over the grids themselves — integer zero point ``zp`` and scale ``s`` — a ladder of zero points each
  with its best scale, refined to every zero point near the best (``_affine_search``).

The full ``[min, max]`` is always a candidate, so the range found is never worse than ``minmax`` on the
histogram model.  Options: ``bins`` (2048), ``rounds`` (3, zoom steps per 1-D search, 0..10).
"""
from __future__ import annotations

import numpy as np

import qcore

from qcore.validation import check_number

from ._histogram import HistogramObserverBase

COARSE = np.geomspace(2.0**-12, 1.0, 64)
#: the scale ladder of each zero point while the zero point is still being searched
ZP_COARSE = np.geomspace(2.0**-8, 1.0, 24)


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
        return sq_error_search(self, bits, symmetric, self.config["rounds"])


def sq_error_search(obs, bits, symmetric, rounds):
    """The range of least squared error of the linear grid on ``obs``'s histogram: ``(lo, hi)`` per channel."""
    dmin, dmax = obs.min, obs.max
    if symmetric:
        absmax = np.maximum(-dmin, dmax)
        a, _ = minimize_1d(lambda g: obs.sq_errors(-g, g, bits, True), absmax[:, None] * COARSE[None, :], rounds)
        return -a, a
    return _affine_search(obs, bits, rounds)


def _coarse_view(obs, factor):
    """``obs``'s histogram with ``factor`` bins merged into one (same range), to rank zero points cheaply."""
    C, nb = obs.hist.shape
    if nb < 256 * factor:
        return obs
    pad = (-nb) % factor
    view = object.__new__(HistogramObserverBase)
    view.__dict__.update(obs.__dict__)
    view.hist = np.pad(obs.hist, ((0, 0), (0, pad))).reshape(C, -1, factor).sum(axis=2)
    view.width = obs.width * factor
    view._cache = {}
    return view


def _affine_search(obs, bits, rounds):
    """Affine: every grid of the scheme is ``(j - zp) * s`` for an integer zero point ``zp`` in ``[0, qmax]``.

    Zero points on a coarse ladder (all of them up to 33 levels), each with its best scale (1-D zoom from the
    scale that just covers the data), then every other zero point within one ladder step of the best — both on
    the histogram with 4 bins merged into one — then the best and its two neighbours on the full histogram,
    zooming their scales ``rounds`` times.  Candidates are clipped to ``[min, max]`` as :meth:`_range` will clip them and scored
    as clipped, so the error compared is the error the quantizer makes.  The full ``[min, max]`` is a candidate
    too.
    """
    qmax = (1 << bits) - 1
    dmin, dmax = obs.min, obs.max
    C = len(dmin)
    lo0, hi0 = np.minimum(dmin, 0.0), np.maximum(dmax, 0.0)

    coarse = _coarse_view(obs, 4)

    def best_for(zps, zoom, ladder, hist=obs):
        """``zps``: ``(C, Z)`` zero points; per channel the best ``(lo, hi, err)`` over them, scored on ``hist``."""
        Z = zps.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            cover = np.maximum(np.where(zps > 0, -lo0[:, None] / zps, 0.0),
                               np.where(zps < qmax, hi0[:, None] / (qmax - zps), 0.0))
        cover = np.where(cover > 0, cover, 1.0)
        zrow = zps.reshape(-1)

        def candidates(s):  # s: (C * Z, K) scales -> clipped (C, Z * K) lo, hi
            lo = np.maximum(-zrow[:, None] * s, np.repeat(dmin, Z)[:, None])
            hi = np.minimum((qmax - zrow[:, None]) * s, np.repeat(dmax, Z)[:, None])
            return lo.reshape(C, -1), hi.reshape(C, -1)

        def f(s):
            lo, hi = candidates(s)
            return hist.sq_errors(lo, hi, bits, False).reshape(C * Z, -1)

        s, err = minimize_1d(f, cover.reshape(-1)[:, None] * ladder[None, :], zoom, 9 if ladder is ZP_COARSE else 17)
        lo, hi = candidates(s[:, None])
        err = err.reshape(C, Z)
        b = np.argmin(err, axis=1)
        rows = np.arange(C)
        return lo.reshape(C, Z)[rows, b], hi.reshape(C, Z)[rows, b], err[rows, b], zps[rows, b]

    ladder = np.unique(np.rint(np.linspace(0, qmax, min(qmax + 1, 33))))
    _, _, _, zb = best_for(np.broadcast_to(ladder, (C, len(ladder))).astype(np.float64), 1, ZP_COARSE, coarse)
    step = int(np.ceil(qmax / 32))
    if step > 1:  # every other zero point within a ladder step, then the two beside the best
        near = np.clip(zb[:, None] + np.arange(-step, step + 1, 2)[None, :], 0, qmax).astype(np.float64)
        _, _, _, zb = best_for(near, 2, ZP_COARSE, coarse)
    near = np.clip(zb[:, None] + np.arange(-1, 2)[None, :], 0, qmax).astype(np.float64)
    lo, hi, err, _ = best_for(near, rounds, COARSE)
    full = obs.sq_errors(dmin[:, None], dmax[:, None], bits, False)[:, 0]
    keep_full = full <= err
    return np.where(keep_full, dmin, lo), np.where(keep_full, dmax, hi)


@qcore.hookimpl
def qcore_observers():
    return [MSEObserver]
