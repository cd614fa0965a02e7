"""The ``kmeans`` scheme: a sorted codebook of ``K = 2^bits`` values per tensor, channel or group; codes are indices.

::

    params = {"codebook": float32 (C, K)}      # sorted ascending; C = 1 per tensor
    code   = argmin_j |x - codebook[c, j]|     # unsigned, 0..K-1
    x'     = codebook[c, code]

**Fit** — k-means (Lloyd) in one dimension, as scikit-learn's ``KMeans`` runs it (``n_init=1``, ``tol=1e-6``
of the points' variance, ``max_iter``), but not on every value and not one scikit-learn call per channel: the
values of a channel go into a histogram of ``bins`` equal bins (default ``clip(16*K, 1024, 65536)``) that keeps
per bin the count, the sum, the minimum and the maximum, and k-means runs on the non-empty bins' means weighted
by their counts — all channels at once in the kernel's ``kmeans_fit_rows`` (capability ``"kmeans_fit"``,
qcore/kernels/kmeans.py; C with OpenMP over channels in the ``cython`` kernel).  For the k-means objective a
bin's points and their mean (weighted by the count) differ by a constant (the within-bin scatter) as long as
no cluster boundary cuts the bin, so with bins much narrower than the clusters the centroids match k-means on
all points while the work drops from ``n*K`` to ``bins*K`` per iteration.  The initial centroids are the
quantiles of ``density^(1/3)`` (the asymptotically optimal point density of a scalar quantizer, Panter &
Dite), which converges in a few Lloyd iterations; when that gives two equal starting points scikit-learn's
``k-means++`` (with ``random_state``, on one thread) fits that channel instead.  The result is the same bits
whatever the thread count (the kernel fits each channel on one thread from its own data).

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

**Assign** — the kernel's ``nearest_entry`` (qcore/kernels/codebook.py): the ``K-1`` midpoints of the sorted
codebook (exact, in double); a value exactly on a midpoint takes the lower entry.  The ``cython`` kernel counts
the midpoints below each value when ``K <= 16`` (vectorized compares), else runs a branchless binary search per
value (GIL released, OpenMP over chunks), ``kernel="numpy"`` uses
``np.searchsorted`` (same codes).  The histogram of the fit is made in ``kmeans_fit_rows``, the comparison
with ``linear`` its ``nearest_entry_sse``, and decode its ``lut_decode`` (a table lookup).

**Groups** — ``granularity="group"``: one codebook per block of ``group_size`` (default 128) consecutive
elements along the last axis (for a torch ``Linear`` weight ``(N, K)``: per output row and group of input
columns), ``params["codebook"]`` of shape ``shape[:-1] + (shape[-1] // group_size, 2**bits)``.  There are many
small groups (131,072 of 128 values for a 4096 x 4096 weight), each fitted on all its values by the kernel's
``kmeans_fit_groups``: the group sorted, Lloyd on its prefix sums, started by LBG splitting (from the mean,
every entry split in two and refined, until there are ``K``) and iterated until no entry moves (at most
``max_iter`` times); the same kernel call keeps the ``linear`` grid for the groups where it has the smaller
error.  Groups with at most ``K`` distinct values get them exactly.  Storage at 4 bits: 16 float32 entries
per group, ``4 + 512 / group_size`` bits per weight (8.0 at 128, 6.0 at 256); ``codebook_dtype="float16"``
halves the codebooks (6.0 at 128, 5.0 at 256).  ``group_size`` must divide the last axis (else ``ValueError``).

``codebook_dtype``: ``"float32"`` (default) or ``"float16"`` (any granularity): the codebook is rounded to
float16 after fitting and the codes are the nearest entries of the rounded codebook; entries beyond float16's
range are a ``ValueError``.

NaN/Inf raise :class:`qcore.InputError`.
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


def _f16_range_error(codebook):
    big = np.abs(codebook) > _F16_MAX
    if big.any():
        raise ValueError(f"codebook_dtype='float16' cannot hold the entry {float(codebook[big][0]):.6g} "
                         f"(float16 stops at 65504); use codebook_dtype='float32'")


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
        if self.granularity == "group":
            codebook = self._fit_groups(x)
        else:
            lo, hi = self.observed_range(x)  # InputError on NaN/Inf
            view, axis = self.layout(x)
            rows = _rows(view, axis)
            if self.calibrated:
                rows = np.clip(rows, lo[:, None], hi[:, None])
            codebook = self._stored(self._fit_rows(rows, lo, hi))
            if not self.calibrated:
                codebook = self._not_worse_than_linear(x, view, axis, codebook)
        return {"codebook": codebook.reshape(pshape + (K,)).astype(dt, copy=False)}

    def _stored(self, codebook):
        """``codebook`` as it will be stored (float32, or rounded to float16), as sorted float32."""
        codebook = np.asarray(codebook, np.float32)
        if self.config["codebook_dtype"] == "float16":
            _f16_range_error(codebook)
            codebook = codebook.astype(np.float16).astype(np.float32)  # rounding keeps the order
        return codebook

    def _fit_groups(self, x):
        """One codebook per group: the kernel's ``kmeans_fit_groups`` (batched Lloyd from LBG splitting,
        qcore/kernels/kmeans.py), which also keeps the ``linear`` grid where that is better."""
        view, axis = self.layout(x)
        rows = view
        alt = None
        if self.calibrated:
            lo, hi = self.observed_range(x)
            rows = np.clip(rows, lo[:, None], hi[:, None])
        else:
            alt = self._linear_grid(x)  # InputError on NaN/Inf
        f16 = self.config["codebook_dtype"] == "float16"
        codebook = self.kernel.kmeans_fit_groups(rows, self.K, max_iter=self.config["max_iter"], alt=alt, float16=f16)
        if f16:
            _f16_range_error(codebook)
        return codebook

    def _fit_rows(self, rows, lo, hi):
        """One codebook per row from its histogram (module doc), in the kernel's ``kmeans_fit_rows``: exact when
        the row has at most K distinct values, else weighted k-means of the non-empty bins' means; the rare rows
        with too few bins to cluster use their exact distinct values, those whose start has equal entries
        scikit-learn's k-means++."""
        K = self.K
        codebook, status = self.kernel.kmeans_fit_rows(rows, K, bins=self.n_bins, lo=lo, hi=hi,
                                                       max_iter=self.config["max_iter"])
        for r in np.flatnonzero(status == 3):  # too few bins to cluster: the exact distinct values, weighted
            pts, w = np.unique(rows[r] + np.float32(0), return_counts=True)
            codebook[r] = _pad(pts, K) if pts.size <= K else self._weighted(pts[None, :], w[None, :])[0]
        for r in np.flatnonzero(status == 0):  # a start with equal entries: k-means++ on the row's bins
            cnt, sm, _, _ = self.kernel.bin_stats(rows[r:r + 1], lo[r:r + 1], hi[r:r + 1], self.n_bins)
            nz = cnt[0] > 0
            codebook[r] = self._kmeans_pp(sm[0, nz] / cnt[0, nz], cnt[0, nz].astype(np.float64))
        return codebook

    def _weighted(self, pts, w):
        """k-means of the weighted points (rows of ``pts``, sorted among weights > 0) in the kernel, from the
        Panter-Dite start, stopped as scikit-learn stops (``tol=1e-6`` of the points' variance); rows whose start
        has equal entries go to scikit-learn's k-means++ (``random_state``)."""
        w = np.asarray(w, np.float64)
        cb, ok = self.kernel.kmeans_fit_weighted(pts, w, self.K, tol=1e-6, max_iter=self.config["max_iter"])
        for r in np.flatnonzero(~ok):
            z = w[r] > 0
            cb[r] = self._kmeans_pp(np.asarray(pts[r][z], np.float64), w[r][z])
        return cb

    def _kmeans_pp(self, pts, w):
        from sklearn.cluster import KMeans  # imported before limiting its threads (else the limit misses it)

        km = KMeans(n_clusters=self.K, init="k-means++", n_init=1, tol=1e-6, max_iter=self.config["max_iter"],
                    random_state=self.config["random_state"])
        # one thread: scikit-learn adds per-thread partial sums in whatever order threads finish
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km.fit(pts.reshape(-1, 1), sample_weight=w)
        return np.sort(km.cluster_centers_.ravel().astype(np.float32))

    def _linear_opts(self):
        opts = {"granularity": self.granularity}
        if self.granularity == "channel":
            opts["axis"] = self.config["axis"]
        if self.granularity == "group":
            opts["group_size"] = self.config["group_size"]
        return opts

    def _linear_grid(self, x):
        """The affine ``linear`` grid at the same bits and granularity, as a codebook per row (as stored)."""
        from qcore_plugins.schemes.linear import LinearQuantizer

        lin = LinearQuantizer(bits=self.bits, kernel=self.kernel, observer=self.observer_name,
                              **self._linear_opts()).fit(x)
        scale = lin["scale"].reshape(-1, 1).astype(np.float32)
        zp = lin["zero_point"].reshape(-1, 1).astype(np.float32)
        # as linear's dequantize, float32(q - zp) * scale: q - zp is a small integer, exact in float32
        return self._stored((np.arange(self.K, dtype=np.float32)[None, :] - zp) * scale)

    def _not_worse_than_linear(self, x, view, axis, codebook):
        grid = self._linear_grid(x)
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
