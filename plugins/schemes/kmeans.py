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

**Assign** — the kernel's ``nearest_entry`` (qcore/kernels/base.py): the ``K-1`` midpoints of the sorted
codebook (exact, in double); a value exactly on a midpoint takes the lower entry.  The ``cython`` kernel runs
a branchless binary search per value (GIL released, OpenMP over chunks), ``kernel="numpy"`` uses
``np.searchsorted`` (same codes).  The histogram of the fit is the kernel's ``bin_stats``, the comparison
with ``linear`` its ``nearest_entry_sse``, and decode its ``lut_decode`` (a table lookup).

NaN/Inf raise :class:`qcore.InputError`.  Granularity ``tensor`` or ``channel`` (one sklearn fit per channel).
"""
from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

import qcore
from qcore.validation import as_float32, check_int



def _rows(view: np.ndarray, axis) -> np.ndarray:
    """Channels first, contiguous ``(C, N)``."""
    if axis is None:
        return view.reshape(1, -1)
    return np.ascontiguousarray(np.moveaxis(view, axis, 0)).reshape(view.shape[axis], -1)


def _pad(values: np.ndarray, K: int) -> np.ndarray:
    values = np.sort(np.asarray(values, np.float32))
    return np.concatenate([values, np.full(K - values.size, values[-1], np.float32)])


class KMeansQuantizer(qcore.Quantizer):
    name = "kmeans"
    signed = False
    bits_range = (1, 8)
    options = {"granularity": "tensor", "axis": 0, "random_state": 0, "bins": None, "max_iter": 300}
    granularities = ("tensor", "channel")
    self_checking = True
    default_bits = 4

    def __init__(self, bits=None, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        rs = self.config["random_state"]
        if rs is not None:
            self.config["random_state"] = check_int(rs, "random_state", 0, 2**32 - 1)
        if self.config["bins"] is not None:
            self.config["bins"] = check_int(self.config["bins"], "bins", 16, 1 << 24)
        self.config["max_iter"] = check_int(self.config["max_iter"], "max_iter", 1, 100000)
        self.K = 1 << self.bits

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
        cnt, sm, bmin, bmax = self.kernel.bin_stats(rows, lo, hi, self.n_bins)
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
        view = np.ascontiguousarray(view)
        mine = self.kernel.nearest_entry_sse(view, codebook, axis)
        theirs = self.kernel.nearest_entry_sse(view, grid, axis)
        return np.where((theirs < mine)[:, None], grid, codebook).astype(np.float32)

    # -- codes -----------------------------------------------------------------------------------------
    def _codebook(self, params, channels):
        cb = np.ascontiguousarray(params["codebook"], np.float32).reshape(-1, self.K)
        if cb.shape[0] != channels:
            raise ValueError(f"codebook has {cb.shape[0]} rows of {self.K}, expected {channels}")
        return cb

    def encode(self, x, params):
        x = as_float32(x, check_finite=False)
        view, axis = self.layout(x)
        view = np.ascontiguousarray(view)
        cb = self._codebook(params, 1 if axis is None else view.shape[axis])
        return self.kernel.nearest_entry(view, cb, axis).reshape(x.shape)

    def lookup_table(self, params):
        """The codebook is the table: ``param_shape + (2**bits,)``, entry ``c`` for code ``c``."""
        return np.asarray(params["codebook"], np.float32)

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        view = np.ascontiguousarray(view)
        cb = self._codebook(params, 1 if axis is None else view.shape[axis])
        return self.kernel.lut_decode(view, cb, axis).reshape(codes.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [KMeansQuantizer]
