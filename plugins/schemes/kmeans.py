"""The ``kmeans`` scheme: a sorted codebook of ``K = 2^bits`` values per tensor or channel, codes are indices.

::

    params = {"codebook": float32 (C, K)}      # sorted ascending; C = 1 per tensor
    code   = argmin_j |x - codebook[c, j]|     # unsigned, 0..K-1
    x'     = codebook[c, code]

**Fit** — k-means (Lloyd) in one dimension with scikit-learn's ``KMeans`` (``n_init=1``, ``random_state``),
but not on every value: the values of a channel go into a histogram of ``bins`` equal bins (default
``clip(16*K, 1024, 65536)``) that keeps per bin the count, the sum, the minimum and the maximum.  k-means
runs on the non-empty bins' means weighted by their counts.  For the k-means objective a bin's points and
their mean (weighted by the count) differ by a constant (the within-bin scatter) as long as no cluster
boundary cuts the bin, so with bins much narrower than the clusters the centroids match k-means on all
points while the work drops from ``n*K`` to ``bins*K`` per iteration.  The initial centroids are the
quantiles of ``density^(1/3)`` (the asymptotically optimal point density of a scalar quantizer, Panter &
Dite), which converges in a few Lloyd iterations; when that gives fewer than ``K`` distinct starting
points scikit-learn's ``k-means++`` (with ``random_state``) is used instead.

* Fewer distinct values than ``K``: when every non-empty bin holds a single value and there are at most
  ``K`` of them, the codebook is those values (padded by repeating the largest); when bins are too few
  for k-means, the exact distinct values (``np.unique``) are used as weighted points.  Such tensors come
  back exactly, and so do constant tensors.
* Never worse than ``linear``: after fitting, the squared error of the k-means codebook is compared per
  channel with that of the affine ``linear`` grid at the same bits and granularity (its levels used as a
  codebook, nearest-level assignment); the better one is kept.  So the error is never above
  ``qcore.quantize(x, "linear", bits=bits, granularity=...)``'s.
* ``observe()`` calibration: the values are clipped to the observed range before fitting (and the
  ``linear`` comparison is skipped); k-means is meant for weights, fitted on the tensor itself.

**Assign** — Cython kernel (``qcore_plugins._codebook.cb_assign``): the ``K-1`` midpoints of the sorted
codebook (exact, in double), then a branchless binary search per value; a value exactly on a midpoint
takes the lower entry.  GIL released, OpenMP over chunks.  ``kernel="numpy"`` uses ``np.searchsorted``
(same codes).  Decode is a table lookup.

NaN/Inf raise :class:`qcore.InputError`.  Granularity ``tensor`` or ``channel`` (one sklearn fit per channel).
"""
from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

import qcore
from qcore.validation import as_float32, check_int

from .log import _codebook, channels_3d, lut_decode, use_extension

_SPLIT_MIN = 1 << 16  # histogram rows longer than this are split between threads


def _rows(view: np.ndarray, axis) -> np.ndarray:
    """Channels first, contiguous ``(C, N)``."""
    if axis is None:
        return view.reshape(1, -1)
    return np.ascontiguousarray(np.moveaxis(view, axis, 0)).reshape(view.shape[axis], -1)


def _histogram(rows, lo, hi, nb, ext):
    """Per row: counts, sums, minima, maxima of ``nb`` equal bins over ``[lo, hi]``."""
    C, N = rows.shape
    lo = lo.astype(np.float64)
    width = hi.astype(np.float64) - lo
    sc = np.where(width > 0, nb / np.where(width > 0, width, 1.0), 0.0)
    cnt = np.zeros((C, nb), np.int64)
    sm = np.zeros((C, nb), np.float64)
    bmin = np.full((C, nb), np.inf, np.float32)
    bmax = np.full((C, nb), -np.inf, np.float32)
    if not ext:
        for c in range(C):
            b = np.clip(np.floor((rows[c].astype(np.float64) - lo[c]) * sc[c]), 0, nb - 1).astype(np.int64)
            cnt[c] = np.bincount(b, minlength=nb)
            sm[c] = np.bincount(b, weights=rows[c].astype(np.float64), minlength=nb)
            np.minimum.at(bmin[c], b, rows[c])
            np.maximum.at(bmax[c], b, rows[c])
        return cnt, sm, bmin, bmax
    nt = _codebook.max_threads()
    parts = 1 if (C >= nt or N < _SPLIT_MIN) else nt
    if parts == 1:
        _codebook.hist_rows(rows, lo, sc, cnt, sm, bmin, bmax)
        return cnt, sm, bmin, bmax
    m = N // parts
    # each row cut into `parts` pieces, each piece histogrammed by one thread, then merged
    pieces = rows[:, : m * parts].reshape(C * parts, m)
    pc = np.zeros((C * parts, nb), np.int64)
    ps = np.zeros((C * parts, nb), np.float64)
    pmin = np.full((C * parts, nb), np.inf, np.float32)
    pmax = np.full((C * parts, nb), -np.inf, np.float32)
    _codebook.hist_rows(pieces, np.repeat(lo, parts), np.repeat(sc, parts), pc, ps, pmin, pmax)
    if N > m * parts:
        _codebook.hist_rows(np.ascontiguousarray(rows[:, m * parts:]), lo, sc, cnt, sm, bmin, bmax)
    cnt += pc.reshape(C, parts, nb).sum(axis=1)
    sm += ps.reshape(C, parts, nb).sum(axis=1)
    np.minimum(bmin, pmin.reshape(C, parts, nb).min(axis=1), out=bmin)
    np.maximum(bmax, pmax.reshape(C, parts, nb).max(axis=1), out=bmax)
    return cnt, sm, bmin, bmax


def _pad(values: np.ndarray, K: int) -> np.ndarray:
    values = np.sort(np.asarray(values, np.float32))
    return np.concatenate([values, np.full(K - values.size, values[-1], np.float32)])


def _midpoints(codebook: np.ndarray) -> np.ndarray:
    cb = codebook.astype(np.float64)
    return np.ascontiguousarray((cb[:, 1:] + cb[:, :-1]) * 0.5)


class KMeansQuantizer(qcore.Quantizer):
    name = "kmeans"
    signed = False
    bits_range = (1, 8)
    options = {"granularity": "tensor", "axis": 0, "random_state": 0, "bins": None, "max_iter": 300}
    granularities = ("tensor", "channel")
    self_checking = True

    def __init__(self, bits=4, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        rs = self.config["random_state"]
        if rs is not None:
            self.config["random_state"] = check_int(rs, "random_state", 0, 2**32 - 1)
        if self.config["bins"] is not None:
            self.config["bins"] = check_int(self.config["bins"], "bins", 16, 1 << 24)
        self.config["max_iter"] = check_int(self.config["max_iter"], "max_iter", 1, 100000)
        self.K = 1 << self.bits
        self._ext = use_extension(self.kernel)

    @property
    def n_bins(self) -> int:
        b = self.config["bins"]
        return int(b) if b is not None else int(np.clip(16 * self.K, 1024, 65536))

    # -- parameters ------------------------------------------------------------------------------------
    def fit(self, x):
        pshape = self.param_shape(x)
        K = self.K
        if x.size == 0:
            return {"codebook": np.zeros(pshape + (K,), np.float32)}
        lo, hi = self.observed_range(x)  # InputError on NaN/Inf
        view, axis = self.layout(x)
        rows = _rows(view, axis)
        if self.calibrated:
            rows = np.clip(rows, lo[:, None], hi[:, None])
        cnt, sm, bmin, bmax = _histogram(rows, lo, hi, self.n_bins, self._ext)
        codebook = np.empty((rows.shape[0], K), np.float32)
        # k-means runs on at most `bins` points: too little work per Lloyd iteration for OpenMP threads to pay
        # (on a busy machine, waiting for a descheduled thread costs more than the iteration itself)
        with threadpool_limits(limits=1, user_api="openmp"):
            for c in range(rows.shape[0]):
                codebook[c] = self._fit_row(rows[c], cnt[c], sm[c], bmin[c], bmax[c])
        if not self.calibrated:
            codebook = self._not_worse_than_linear(x, view, axis, codebook)
        return {"codebook": codebook.reshape(pshape + (K,))}

    def _fit_row(self, row, cnt, sm, bmin, bmax):
        K = self.K
        nz = cnt > 0
        if np.count_nonzero(nz) <= K and np.array_equal(bmin[nz], bmax[nz]):
            return _pad(bmin[nz], K)  # at most K distinct values: exact
        if np.count_nonzero(nz) < 2 * K:  # too few bins to cluster: use the exact distinct values
            pts, w = np.unique(row, return_counts=True)
            if pts.size <= K:
                return _pad(pts, K)
            pts = pts.astype(np.float64)
            w = w.astype(np.float64)
        else:
            w = cnt[nz].astype(np.float64)
            pts = sm[nz] / w
        return self._kmeans(pts, w)

    def _kmeans(self, pts, w):
        from sklearn.cluster import KMeans

        K = self.K
        d = np.cbrt(w)  # point density of the optimal quantizer ~ p^(1/3)
        cdf = (np.cumsum(d) - 0.5 * d) / d.sum()
        init = np.interp((np.arange(K) + 0.5) / K, cdf, pts)
        if np.unique(init).size < K:
            init = "k-means++"
        else:
            init = init.reshape(-1, 1)
        km = KMeans(n_clusters=K, init=init, n_init=1, tol=1e-6, max_iter=self.config["max_iter"],
                    random_state=self.config["random_state"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km.fit(pts.reshape(-1, 1), sample_weight=w)
        return np.sort(km.cluster_centers_.ravel().astype(np.float32))

    def _not_worse_than_linear(self, x, view, axis, codebook):
        from qcore_plugins.schemes.linear import LinearQuantizer

        opts = {"granularity": self.granularity}
        if self.granularity == "channel":
            opts["axis"] = self.config["axis"]
        lin = LinearQuantizer(bits=self.bits, kernel=self.kernel, observer=self.observer_name, **opts).fit(x)
        scale = lin["scale"].reshape(-1, 1).astype(np.float32)
        zp = lin["zero_point"].reshape(-1, 1).astype(np.int64)
        grid = (np.arange(self.K)[None, :] - zp).astype(np.float32) * scale  # as linear's dequantize
        x3 = channels_3d(view, axis)
        mine = self._sse(x3, codebook)
        theirs = self._sse(x3, grid)
        return np.where((theirs < mine)[:, None], grid, codebook).astype(np.float32)

    def _sse(self, x3, codebook):
        codebook = np.ascontiguousarray(codebook, np.float32)
        mid = _midpoints(codebook)
        if self._ext:
            return _codebook.cb_sse(x3, mid, codebook)
        q = self._np_assign(x3, mid)
        d = x3.astype(np.float64) - codebook[np.arange(codebook.shape[0])[None, :, None], q]
        return (d * d).sum(axis=(0, 2))

    # -- codes -----------------------------------------------------------------------------------------
    @staticmethod
    def _np_assign(x3, mid):
        out = np.empty(x3.shape, np.uint8)
        for c in range(x3.shape[1]):
            out[:, c, :] = np.searchsorted(mid[c], x3[:, c, :].astype(np.float64), side="left")
        return out

    def _codebook(self, params, channels):
        cb = np.ascontiguousarray(params["codebook"], np.float32).reshape(-1, self.K)
        if cb.shape[0] != channels:
            raise ValueError(f"codebook has {cb.shape[0]} rows of {self.K}, expected {channels}")
        return cb

    def encode(self, x, params):
        x = as_float32(x, check_finite=False)
        view, axis = self.layout(x)
        x3 = channels_3d(view, axis)
        cb = self._codebook(params, x3.shape[1])
        if not np.isfinite(cb).all():
            raise ValueError("codebook must be finite")
        if np.any(np.diff(cb, axis=1) < 0):
            raise ValueError("codebook rows must be sorted ascending")
        mid = _midpoints(cb)
        out = np.empty(x3.shape, np.uint8)
        if x.size == 0:
            return out.reshape(x.shape)
        if self._ext:
            ok = _codebook.cb_assign(x3, mid, out)
        else:
            ok = bool(np.isfinite(x3).all())
            out[...] = self._np_assign(x3, mid)
        if not ok:
            raise qcore.InputError("x contains NaN or Inf values; qcore refuses non-finite input")
        return out.reshape(x.shape)

    def lookup_table(self, params):
        """The codebook is the table: ``param_shape + (2**bits,)``, entry ``c`` for code ``c``."""
        return np.asarray(params["codebook"], np.float32)

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        q3 = channels_3d(view, axis)
        cb = self._codebook(params, q3.shape[1])
        table = np.concatenate([cb, np.repeat(cb[:, -1:], 256 - self.K, axis=1)], axis=1)
        return lut_decode(q3, table, self._ext).reshape(codes.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [KMeansQuantizer]
