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

**Groups** — ``granularity="group"``: one codebook per block of ``group_size`` (default 128) consecutive
elements along the last axis (for a torch ``Linear`` weight ``(N, K)``: per output row and group of input
columns), ``params["codebook"]`` of shape ``shape[:-1] + (shape[-1] // group_size, 2**bits)``.  There are many
small groups (131,072 of 128 values for a 4096 x 4096 weight), so they are not fitted one sklearn call each:
Lloyd's algorithm runs on all groups at once (numpy over the sorted groups with prefix sums; the assignment is
the kernel's ``nearest_entry``), started from the quantiles ``(j + 1/2) / K`` of each group and iterated until
no centroid of the group moves (at most ``max_iter`` times).  Groups with at most ``K`` distinct values get them
exactly, and the ``linear`` comparison is per group.  Storage at 4 bits: 16 float32 entries per group,
``4 + 512 / group_size`` bits per weight (8.0 at 128, 6.0 at 256); ``codebook_dtype="float16"`` halves the
codebooks (6.0 at 128, 5.0 at 256).  ``group_size`` must divide the last axis (else ``ValueError``).

``codebook_dtype``: ``"float32"`` (default) or ``"float16"`` (any granularity): the codebook is rounded to
float16 after fitting and the codes are the nearest entries of the rounded codebook; entries beyond float16's
range are a ``ValueError``.

NaN/Inf raise :class:`qcore.InputError`.  Granularity ``tensor``, ``channel`` (one sklearn fit per channel) or
``group`` (batched Lloyd, above).
"""
from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

import qcore
from qcore.validation import as_float32, check_int
from qcore.quantization.forms import Table



def _rows(view: np.ndarray, axis) -> np.ndarray:
    """Channels first, contiguous ``(C, N)``."""
    if axis is None:
        return view.reshape(1, -1)
    return np.ascontiguousarray(np.moveaxis(view, axis, 0)).reshape(view.shape[axis], -1)


def _pad(values: np.ndarray, K: int) -> np.ndarray:
    values = np.sort(np.asarray(values, np.float32))
    return np.concatenate([values, np.full(K - values.size, values[-1], np.float32)])


CODEBOOK_DTYPES = {"float32": np.float32, "float16": np.float16}
_F16_MAX = float(np.finfo(np.float16).max)
#: groups per chunk of the batched Lloyd iteration (bounds its working memory; the sorted keys of a chunk,
#: 4096 groups of 128, stay in L2 for the searches)
_GROUP_CHUNK = 1 << 12


def _order_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the float32 values ``x`` (finite; -0.0 and 0.0 equal)."""
    b = (x.astype(np.float32) + np.float32(0)).view(np.int32).astype(np.int64)  # + 0: -0.0 becomes 0.0
    return np.where(b < 0, -(b & 0x7FFFFFFF), b) + (1 << 31)


def _cluster_sums(keys, cum, n, c, rows):
    """Per row of ``rows``: count, sum and sum of squares of the values nearest each entry of the sorted codebook
    ``c``, and each cluster's [start, end) in the sorted row (a value on a midpoint takes the lower entry)."""
    mid = ((c[:, 1:].astype(np.float64) + c[:, :-1]) * 0.5).astype(np.float32)
    # x <= mid goes to the lower entry: float32 rounding of the midpoint may move a value lying within half an
    # ulp of it to the other side, which Lloyd's iteration does not care about (the final codes are encode's)
    r64 = rows.astype(np.int64)
    q = _order_keys(mid) + (r64 << 32)[:, None]
    pos = np.searchsorted(keys, q.reshape(-1), side="right").reshape(q.shape) - (r64 * n)[:, None]
    end = np.concatenate([pos, np.full((rows.size, 1), n, np.int64)], axis=1)
    start = np.concatenate([np.zeros((rows.size, 1), np.int64), pos], axis=1)
    base = (r64 * (n + 1))[:, None]
    f1, f2 = cum[0].reshape(-1), cum[1].reshape(-1)
    return end - start, f1[base + end] - f1[base + start], f2[base + end] - f2[base + start], start, end


class KMeansQuantizer(qcore.Quantizer):
    name = "kmeans"
    signed = False
    bits_range = (1, 8)
    options = {"granularity": "tensor", "axis": 0, "group_size": 128, "random_state": 0, "bins": None,
               "max_iter": 300, "codebook_dtype": "float32"}
    granularities = ("tensor", "channel", "group")
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
        cd = self.config["codebook_dtype"]
        if not isinstance(cd, str) or cd not in CODEBOOK_DTYPES:
            raise ValueError(f"codebook_dtype must be 'float32' or 'float16', got {cd!r}")
        self.K = 1 << self.bits

    @property
    def n_bins(self) -> int:
        b = self.config["bins"]
        return int(b) if b is not None else int(np.clip(16 * self.K, 1024, 65536))

    # -- parameters ------------------------------------------------------------------------------------
    def fit(self, x):
        pshape = self.param_shape(x)
        K = self.K
        dt = CODEBOOK_DTYPES[self.config["codebook_dtype"]]
        if x.size == 0:
            return {"codebook": np.zeros(pshape + (K,), dt)}
        lo, hi = self.observed_range(x)  # InputError on NaN/Inf
        view, axis = self.layout(x)
        rows = _rows(view, axis)
        if self.calibrated:
            rows = np.clip(rows, lo[:, None], hi[:, None])
        if self.granularity == "group":
            codebook = self._fit_groups(rows)
        else:
            cnt, sm, bmin, bmax = self.kernel.bin_stats(rows, lo, hi, self.n_bins)
            codebook = np.empty((rows.shape[0], K), np.float32)
            # k-means runs on at most `bins` points: too little work per Lloyd iteration for OpenMP threads to
            # pay (on a busy machine, waiting for a descheduled thread costs more than the iteration itself)
            with threadpool_limits(limits=1, user_api="openmp"):
                for c in range(rows.shape[0]):
                    codebook[c] = self._fit_row(rows[c], cnt[c], sm[c], bmin[c], bmax[c])
        codebook = self._stored(codebook)
        if not self.calibrated:
            codebook = self._not_worse_than_linear(x, view, axis, codebook)
        return {"codebook": codebook.reshape(pshape + (K,)).astype(dt)}

    def _stored(self, codebook):
        """``codebook`` as it will be stored (float32, or rounded to float16), as sorted float32."""
        codebook = np.asarray(codebook, np.float32)
        if self.config["codebook_dtype"] == "float16":
            big = np.abs(codebook) > _F16_MAX
            if big.any():
                raise ValueError(f"codebook_dtype='float16' cannot hold the entry {float(codebook[big][0]):.6g} "
                                 f"(float16 stops at 65504); use codebook_dtype='float32'")
            codebook = codebook.astype(np.float16).astype(np.float32)  # rounding keeps the order
        return codebook

    def _fit_groups(self, rows):
        """Batched 1-D k-means: a sorted codebook of K entries for every row of ``rows`` (G, n) (module doc)."""
        K = self.K
        G, n = rows.shape
        out = np.empty((G, K), np.float32)
        for g0 in range(0, G, _GROUP_CHUNK):
            out[g0:g0 + _GROUP_CHUNK] = self._lloyd_sorted(np.sort(rows[g0:g0 + _GROUP_CHUNK], axis=1))
        return out

    def _lloyd_sorted(self, xs):
        """Codebooks (G, K) of the sorted rows ``xs`` (G, n): the best of Lloyd runs from a few starts."""
        K = self.K
        G, n = xs.shape
        cb = np.empty((G, K), np.float32)
        new = np.ones((G, n), bool)
        new[:, 1:] = xs[:, 1:] != xs[:, :-1]
        exact = new.sum(axis=1) <= K
        if exact.any():  # at most K distinct values: those values, padded by repeating the largest
            e = np.flatnonzero(exact)
            cbe = np.repeat(xs[e, -1:], K, axis=1)
            np.put_along_axis(cbe, np.cumsum(new[e], axis=1) - 1, xs[e], axis=1)
            cb[e] = cbe
        live = np.flatnonzero(~exact)
        if live.size == 0:
            return cb
        x = np.ascontiguousarray(xs[live])
        R = live.size
        cum = np.zeros((2, R, n + 1), np.float64)  # prefix sums of x and of x^2
        np.cumsum(x, axis=1, dtype=np.float64, out=cum[0, :, 1:])
        np.cumsum(np.square(x, dtype=np.float64), axis=1, out=cum[1, :, 1:])
        # exact order keys: row index in the high 32 bits, the float32 value's order-preserving bits below, so
        # one searchsorted over the whole chunk finds every midpoint's place in its own row
        keys = (_order_keys(x) + (np.arange(R, dtype=np.int64) << 32)[:, None]).reshape(-1)
        lo, hi = x[:, :1].astype(np.float64), x[:, -1:].astype(np.float64)
        # start by splitting (LBG): from the group's mean, double the entries (each c to c -/+ eps) and run
        # Lloyd, until there are K; Lloyd from the linear grid ends 20-30 % higher on Gaussian groups
        c = (cum[0, :, -1:] / n).astype(np.float32)
        eps = (1e-3 * (hi - lo)).astype(np.float32)
        while c.shape[1] < K:
            c = np.sort(np.concatenate([c - eps, c + eps], axis=1), axis=1)
            # the intermediate codebooks are only starts: a few iterations place them well enough
            c = self._lloyd_keys(x, keys, cum, n, c, None if c.shape[1] == K else 8)
        cb[live] = c
        return cb

    def _lloyd_keys(self, x, keys, cum, n, c, max_iter=None):
        """Lloyd on the sorted rows ``x`` (order ``keys``, prefix sums ``cum``) from the sorted codebooks ``c``.

        An entry left without values moves to the value farthest from its entry in the cluster of the largest
        squared error (as scikit-learn relocates empty clusters), one per row and iteration."""
        R = c.shape[0]
        active = np.arange(R)
        for _ in range(self.config["max_iter"] if max_iter is None else max_iter):
            ca = c[active]
            cnt, s, s2, start, end = _cluster_sums(keys, cum, n, ca, active)
            with np.errstate(invalid="ignore", divide="ignore"):
                upd = np.where(cnt > 0, s / np.maximum(cnt, 1), ca).astype(np.float32)
            empty = (cnt == 0).any(axis=1)
            if empty.any():
                e = np.flatnonzero(empty)
                ce = cnt[e]
                sse = np.where(ce > 0, s2[e] - s[e] ** 2 / np.maximum(ce, 1), -1.0)
                jw = np.argmax(sse, axis=1)  # the worst cluster
                r = active[e]
                first = x[r, start[e, jw]]
                last = x[r, np.maximum(end[e, jw] - 1, 0)]
                cen = upd[e, jw]
                far = np.where(np.abs(first - cen) > np.abs(last - cen), first, last)
                je = np.argmax(ce == 0, axis=1)  # the first empty entry
                has = sse[np.arange(e.size), jw] > 0
                upd[e[has], je[has]] = far[has]
            upd.sort(axis=1)  # moved and emptied entries may be out of order
            moved = (upd != ca).any(axis=1)
            c[active] = upd
            active = active[moved]
            if active.size == 0:
                break
        return c

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
        if self.granularity == "group":
            opts["group_size"] = self.config["group_size"]
        lin = LinearQuantizer(bits=self.bits, kernel=self.kernel, observer=self.observer_name, **opts).fit(x)
        scale = lin["scale"].reshape(-1, 1).astype(np.float32)
        zp = lin["zero_point"].reshape(-1, 1).astype(np.int64)
        grid = self._stored((np.arange(self.K)[None, :] - zp).astype(np.float32) * scale)  # as linear's dequantize
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

    def decodes_as(self, params):
        return Table(self.lookup_table(params))

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        view = np.ascontiguousarray(view)
        cb = self._codebook(params, 1 if axis is None else view.shape[axis])
        return self.kernel.lut_decode(view, cb, axis).reshape(codes.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [KMeansQuantizer]
