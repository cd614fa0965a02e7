"""The ``"kmeans_fit"`` capability: one-dimensional k-means of many rows at once, and its numpy reference.

Two operations, both on rows that are independent of each other (so a kernel may run rows on any number of
threads in any order and still return the same bits — the output of ``quantize_model`` must not depend on
the thread count or on which worker ran a tensor):

* :meth:`KMeansFit.kmeans_fit_groups` — the ``kmeans`` scheme's ``granularity="group"``: a sorted codebook of
  ``K`` entries for every row of ``rows`` ``(G, n)`` (one group of ``n`` values each), from all its values;
* :meth:`KMeansFit.kmeans_fit_rows` — per tensor / per channel: each row's histogram, then k-means of its
  non-empty bins' means weighted by their counts (:meth:`KMeansFit.kmeans_fit_weighted`, which also takes such
  points directly), one row per channel.

Numerics every implementation follows bit for bit (the ``cython`` kernel does; this module is the reference):

* A row's values are sorted ascending (``-0.0`` counts as ``0.0``) and summed into float64 prefix sums of the
  weight ``w``, of ``w*x`` and of ``w*(x*x)`` (``w = 1`` for groups), accumulated in order.
* **Lloyd** from a sorted float32 codebook ``c``: midpoints ``m_j = fl32((c_j + c_{j+1}) * 0.5)`` (the sum in
  float64); cluster ``j`` holds the values ``m_{j-1} < x <= m_j``; its weight, sum and sum of squares come
  from the prefix sums; the new entry is ``fl32(sum / weight)``, or the old entry when the cluster is empty.
  An empty cluster's entry moves to whichever end value (first or last) of the cluster with the largest
  squared error ``s2 - s*s/weight`` lies farther from that cluster's new entry (float32 distances; one empty
  entry per row and iteration, the first one), as scikit-learn relocates empty clusters.  The entries are
  sorted again; the row stops when the total squared move ``sum_j (new_j - old_j)^2`` (float64) is at most
  ``tol`` (``0``: when nothing moves) or after ``max_iter`` iterations.
* **Groups**: a group with at most ``K`` distinct values gets those values (ascending, padded by repeating the
  largest).  Otherwise LBG splitting: from the mean ``fl32(sum / n)``, with ``eps = fl32(1e-3 * (max - min))``
  every entry ``c`` becomes ``c - eps`` and ``c + eps`` (float32), sorted, and Lloyd runs 8 iterations (the
  full ``max_iter``, ``tol = 0``, once there are ``K`` entries), until there are ``K``.  Then, optionally, the
  entries are rounded to float16 (round to nearest even; an entry beyond float16's range is left as it is
  for the caller to refuse), and when an alternative codebook is given the one of smaller squared error on
  the group is returned (the alternative only if strictly smaller): codes by ``nearest_entry``'s rule
  (midpoints in float64, a tie takes the lower entry), error from the prefix sums, per cluster
  ``(S2 - S1*S1/W) + W*(S1/W - entry)^2``, summed over the clusters in order.
* **Weighted rows** start from the Panter–Dite quantiles: with ``d_i = cbrt(w_i)`` over the points of
  non-zero weight (:func:`cbrt`), ``cdf_i = (D_i - d_i / 2) / D_n`` (``D`` the running sum of ``d``), entry
  ``j`` is the linear interpolation of the points at ``t_j = (j + 1/2) / K`` on ``cdf`` (the point itself at
  or beyond the ends), rounded to float32.  A start with two equal entries is reported (``ok = False``) and
  the row is left for the caller (the ``kmeans`` scheme then runs scikit-learn's k-means++).

* **Rows** (a channel's values): a histogram of ``bins`` equal bins over ``[lo, hi]`` — bin
  ``trunc((v - lo) * (bins / (hi - lo)))`` in float64, clamped to the end bins, every value in bin 0 when
  ``hi == lo`` — keeping per bin the count, the float64 sum in row order, the minimum and the maximum.  At most
  ``K`` non-empty bins each holding one value: those values (the codebook is exact); fewer than ``2K`` non-empty
  bins otherwise: no result (the caller clusters the exact values); else the weighted fit of the bins' means
  ``fl32(sum / count)`` weighted by their counts.

A weighted row's points must be sorted; points of zero weight are allowed anywhere (they are skipped by the
start and add nothing to a cluster), which lets rows of different lengths share one rectangular array.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..validation import as_float32, check_int
from .core import KernelBase

#: groups per batch of the reference's vectorized Lloyd (bounds its working memory)
_CHUNK = 1 << 12
#: float16's largest finite value
F16_MAX = 65504.0


# -- the numpy reference ------------------------------------------------------------------------------------
def cbrt(w: np.ndarray) -> np.ndarray:
    """Cube root of non-negative float64 ``w`` with only ``+ - * /`` (so every implementation gets the same
    bits): a bit-pattern first guess, then five Newton steps ``y - (y*y*y - w) / (3*y*y)``; ``cbrt(0) = 0``."""
    w = np.asarray(w, np.float64)
    pos = w > 0
    wp = np.where(pos, w, 1.0)
    y = (wp.view(np.uint64) // np.uint64(3) + np.uint64(0x2A9F7893782DA1CE)).view(np.float64)
    for _ in range(5):
        y = y - (y * y * y - wp) / (3.0 * (y * y))
    return np.where(pos, y, 0.0)


def order_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the float32 values ``x`` (finite; ``-0.0`` and ``0.0`` equal)."""
    b = (x.astype(np.float32) + np.float32(0)).view(np.int32).astype(np.int64)  # + 0: -0.0 becomes 0.0
    return np.where(b < 0, -(b & 0x7FFFFFFF), b) + (1 << 31)


def round_f16(c: np.ndarray) -> np.ndarray:
    """float32 ``c`` rounded to float16 and back, entries beyond float16's range left as they are."""
    c = np.asarray(c, np.float32)
    with np.errstate(over="ignore"):
        r = c.astype(np.float16).astype(np.float32)
    return np.where(np.abs(c) > F16_MAX, c, r)


def _prefix(x, w):
    """float64 prefix sums ``(3, R, n+1)`` of ``w``, ``w*x`` and ``w*(x*x)`` along each row, in order."""
    R, n = x.shape
    x64 = x.astype(np.float64)
    cum = np.zeros((3, R, n + 1), np.float64)
    if w is None:
        cum[0, :, 1:] = np.arange(1, n + 1, dtype=np.float64)
        np.cumsum(x64, axis=1, out=cum[1, :, 1:])
        np.cumsum(x64 * x64, axis=1, out=cum[2, :, 1:])
    else:
        np.cumsum(w, axis=1, out=cum[0, :, 1:])
        np.cumsum(w * x64, axis=1, out=cum[1, :, 1:])
        np.cumsum(w * (x64 * x64), axis=1, out=cum[2, :, 1:])
    return cum


def _cluster_sums(keys, cum, n, c, rows):
    """Per row of ``rows``: weight, sum and sum of squares of each cluster of the sorted codebook ``c``, and
    each cluster's [start, end) in the sorted row (a value on a float32 midpoint takes the lower entry)."""
    mid = ((c[:, 1:].astype(np.float64) + c[:, :-1]) * 0.5).astype(np.float32)
    r64 = rows.astype(np.int64)
    q = order_keys(mid) + (r64 << 32)[:, None]
    pos = np.searchsorted(keys, q.reshape(-1), side="right").reshape(q.shape) - (r64 * n)[:, None]
    end = np.concatenate([pos, np.full((rows.size, 1), n, np.int64)], axis=1)
    start = np.concatenate([np.zeros((rows.size, 1), np.int64), pos], axis=1)
    base = (r64 * (n + 1))[:, None]
    f0, f1, f2 = cum[0].reshape(-1), cum[1].reshape(-1), cum[2].reshape(-1)
    return (f0[base + end] - f0[base + start], f1[base + end] - f1[base + start],
            f2[base + end] - f2[base + start], start, end)


def lloyd(x, keys, cum, c, rows, tol, max_iter):
    """Lloyd iterations (module doc) on the sorted rows ``x[rows]`` from the sorted codebooks ``c[rows]``, in
    place; ``keys``: :func:`order_keys` of ``x`` plus the row index in the high 32 bits, ``cum``: :func:`_prefix`."""
    n = x.shape[1]
    active = np.asarray(rows, np.int64)
    for _ in range(max_iter):
        if active.size == 0:
            break
        ca = c[active]
        cnt, s, s2, start, end = _cluster_sums(keys, cum, n, ca, active)
        full = cnt > 0
        upd = np.where(full, s / np.where(full, cnt, 1.0), ca).astype(np.float32)
        empty = np.flatnonzero(~full.all(axis=1))
        if empty.size:
            ce = cnt[empty]
            sse = np.where(ce > 0, s2[empty] - s[empty] * s[empty] / np.where(ce > 0, ce, 1.0), -1.0)
            jw = np.argmax(sse, axis=1)  # the worst cluster
            r = active[empty]
            first = x[r, start[empty, jw]]
            last = x[r, np.maximum(end[empty, jw] - 1, 0)]
            cen = upd[empty, jw]
            far = np.where(np.abs(first - cen) > np.abs(last - cen), first, last)
            je = np.argmax(ce == 0, axis=1)  # the first empty entry
            has = sse[np.arange(empty.size), jw] > 0
            upd[empty[has], je[has]] = far[has]
        upd += np.float32(0)  # -0.0 -> 0.0, so sorting is unambiguous
        upd.sort(axis=1)  # moved and emptied entries may be out of order
        d = upd.astype(np.float64) - ca
        moving = np.cumsum(d * d, axis=1)[:, -1] > tol[active]  # summed in order, as a C loop does
        c[active] = upd
        active = active[moving]
    return c


def _sorted_keys(x):
    R = x.shape[0]
    return (order_keys(x) + (np.arange(R, dtype=np.int64) << 32)[:, None]).reshape(-1)


def codebook_sse(x, cum, cb):
    """Squared error of each sorted row of ``x`` (prefix sums ``cum``) coded with its codebook row (module
    doc): per cluster ``(S2 - S1*S1/W) + W*(S1/W - c)^2``, summed over the clusters in order; float64 ``(R,)``."""
    R, n = x.shape
    cb64 = cb.astype(np.float64)
    mid = (cb64[:, 1:] + cb64[:, :-1]) * 0.5
    pos = np.empty(mid.shape, np.int64)
    for r in range(R):
        pos[r] = np.searchsorted(x[r].astype(np.float64), mid[r], side="right")
    end = np.concatenate([pos, np.full((R, 1), n, np.int64)], axis=1)
    start = np.concatenate([np.zeros((R, 1), np.int64), pos], axis=1)
    f = [np.take_along_axis(cum[i], end, axis=1) - np.take_along_axis(cum[i], start, axis=1) for i in range(3)]
    wt, s1, s2 = f
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / wt
        d = mean - cb64
        term = np.where(wt > 0, ((s2 - s1 * mean) + wt * (d * d)), 0.0)
    return np.cumsum(term, axis=1)[:, -1]


def fit_groups(rows, K, max_iter, alt=None, float16=False):
    """Reference of :meth:`KMeansFit.kmeans_fit_groups`: ``(codebooks (G, K) float32, status)``, status 0, or 1 if
    a value is NaN/Inf, plus 2 if an alternative codebook is not finite or not sorted."""
    G, n = rows.shape
    out = np.empty((G, K), np.float32)
    status = 0 if np.isfinite(rows).all() else 1
    if alt is not None and not (np.isfinite(alt).all() and (alt[:, 1:] >= alt[:, :-1]).all()):
        status |= 2
    if status:
        return out, status
    for g0 in range(0, G, _CHUNK):
        xs = np.sort(rows[g0:g0 + _CHUNK] + np.float32(0), axis=1)
        out[g0:g0 + _CHUNK] = _fit_sorted_groups(xs, K, max_iter, float16,
                                                 None if alt is None else alt[g0:g0 + _CHUNK])
    return out, 0


def _fit_sorted_groups(xs, K, max_iter, float16, alt):
    R, n = xs.shape
    cb = np.empty((R, K), np.float32)
    new = np.ones((R, n), bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    exact = new.sum(axis=1) <= K
    if exact.any():  # at most K distinct values: those values, padded by repeating the largest
        e = np.flatnonzero(exact)
        cbe = np.repeat(xs[e, -1:], K, axis=1)
        np.put_along_axis(cbe, np.cumsum(new[e], axis=1) - 1, xs[e], axis=1)
        cb[e] = cbe
    cum_all = _prefix(xs, None)
    live = np.flatnonzero(~exact)
    if live.size:
        x = np.ascontiguousarray(xs[live])
        cum = cum_all[:, live]
        keys = _sorted_keys(x)
        every = np.arange(live.size)
        zero = np.zeros(live.size)
        c = (cum[1, :, -1:] / cum[0, :, -1:]).astype(np.float32)
        eps = (1e-3 * (x[:, -1:].astype(np.float64) - x[:, :1])).astype(np.float32)
        while c.shape[1] < K:
            c = np.sort(np.concatenate([c - eps, c + eps], axis=1) + np.float32(0), axis=1)
            lloyd(x, keys, cum, c, every, zero, max_iter if c.shape[1] == K else 8)
        cb[live] = c
    if float16:
        cb = round_f16(cb)
    if alt is not None:
        better = codebook_sse(xs, cum_all, alt) < codebook_sse(xs, cum_all, cb)
        cb[better] = alt[better]
    return cb


def panter_dite_start(pts, w, K):
    """The start of a weighted row (module doc) from its points of positive weight: ``(float32 (K,), ok)``."""
    pts = pts.astype(np.float64)
    d = cbrt(w)
    D = np.cumsum(d)
    cdf = (D - 0.5 * d) / D[-1]
    t = (np.arange(K) + 0.5) / K
    i = np.searchsorted(cdf, t, side="right") - 1  # cdf[i] <= t < cdf[i+1]
    inner = (i >= 0) & (i < pts.size - 1)
    ii = np.clip(i, 0, max(pts.size - 2, 0))
    j1 = np.minimum(ii + 1, pts.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = (pts[j1] - pts[ii]) / (cdf[j1] - cdf[ii]) * (t - cdf[ii]) + pts[ii]
    val = np.where(inner, val, np.where(i < 0, pts[0], pts[-1])).astype(np.float32) + np.float32(0)
    return val, bool((val[1:] != val[:-1]).all())


def fit_rows(rows, K, bins, lo, hi, tol, max_iter):
    """Reference of :meth:`KMeansFit.kmeans_fit_rows`: ``(codebooks (R, K) float32, status (R,) int8)``."""
    R, n = rows.shape
    out = np.zeros((R, K), np.float32)
    status = np.zeros(R, np.int8)
    batch = []
    for r in range(R):
        row = rows[r]
        if not np.isfinite(row).all():
            status[r] = -2
            continue
        sc = bins / (hi[r] - lo[r]) if hi[r] > lo[r] else 0.0
        t = (row.astype(np.float64) - lo[r]) * sc
        b = np.where(t >= bins - 1, bins - 1, np.where(t > 0, np.trunc(t), 0)).astype(np.int64)
        cnt = np.bincount(b, minlength=bins)
        sm = np.bincount(b, weights=row.astype(np.float64), minlength=bins)  # in row order, as the C loop
        mn = np.full(bins, np.inf, np.float32)
        mx = np.full(bins, -np.inf, np.float32)
        np.minimum.at(mn, b, row)
        np.maximum.at(mx, b, row)
        nz = cnt > 0
        if nz.sum() <= K and (mn[nz] == mx[nz]).all():
            vals = mn[nz] + np.float32(0)
            out[r] = np.concatenate([vals, np.full(K - vals.size, vals[-1], np.float32)])
            status[r] = 2
        elif nz.sum() < 2 * K:
            status[r] = 3
        else:
            batch.append((r, (sm[nz] / cnt[nz]).astype(np.float32), cnt[nz].astype(np.float64)))
    if batch:
        P = max(p.size for _, p, _ in batch)
        x = np.array([np.pad(p, (0, P - p.size)) for _, p, _ in batch], np.float32)  # weight 0: no point
        w = np.array([np.pad(c, (0, P - c.size)) for _, _, c in batch], np.float64)
        cb, st = fit_weighted(x, w, K, tol, max_iter)
        for i, (r, _, _) in enumerate(batch):
            status[r] = st[i]
            if st[i] == 1:
                out[r] = cb[i]
    return out, status


def _sequential_sum(v):
    return np.cumsum(v)[-1]


def fit_weighted(x, w, K, tol, max_iter):
    """Reference of :meth:`KMeansFit.kmeans_fit_weighted`: ``(codebooks (R, K) float32, status (R,) int8)``."""
    R = x.shape[0]
    c = np.zeros((R, K), np.float32)
    status = np.zeros(R, np.int8)
    rows = []
    for r in range(R):
        keep = w[r] > 0
        xk = x[r][keep] + np.float32(0)
        with np.errstate(over="ignore"):
            total = np.cumsum(w[r])[-1] if w.shape[1] else 0.0
        if (not keep.any() or not np.isfinite(xk).all() or (np.diff(xk) < 0).any() or not (w[r] >= 0).all()
                or not total <= np.finfo(np.float64).max):
            status[r] = -1
            continue
        x64 = xk.astype(np.float64)
        mean = _sequential_sum(x64) / x64.size
        tol_r = tol * (_sequential_sum((x64 - mean) * (x64 - mean)) / x64.size)
        c[r], ok = panter_dite_start(xk, w[r][keep], K)
        status[r] = ok
        if ok:
            rows.append((r, xk, w[r][keep], tol_r))
    for r0 in range(0, len(rows), _CHUNK):
        part = rows[r0:r0 + _CHUNK]
        P = max(xk.size for _, xk, _, _ in part)
        # rows of different lengths padded with their last value at weight 0 (the same clusters and sums)
        xs = np.array([np.pad(xk, (0, P - xk.size), mode="edge") for _, xk, _, _ in part], np.float32)
        ws = np.array([np.pad(wk, (0, P - wk.size)) for _, _, wk, _ in part], np.float64)
        sel = np.array([r for r, _, _, _ in part])
        tl = np.array([t for _, _, _, t in part], np.float64)
        cs = c[sel]
        lloyd(xs, _sorted_keys(xs), _prefix(xs, ws), cs, np.arange(sel.size), tl, max_iter)
        c[sel] = cs
    return c, status


# -- the capability --------------------------------------------------------------------------------------------
class KMeansFit(KernelBase):
    """Capability ``"kmeans_fit"``: validated public methods; a kernel overrides the ``_`` methods."""

    capability = "kmeans_fit"

    def kmeans_fit_groups(self, rows, K: int, *, max_iter: int = 300, alt=None, float16: bool = False):
        """Sorted float32 codebooks ``(G, K)`` of the rows of ``rows`` ``(G, n)`` (module doc, "Groups").

        ``alt``: optional ``(G, K)`` sorted finite float32 codebooks (checked in the same pass); per row the one
        of smaller squared error is returned.  ``float16``: round the fitted entries to float16 first.  NaN/Inf raise
        :class:`qcore.InputError` (found in the same pass)."""
        rows = np.ascontiguousarray(as_float32(rows, "rows", check_finite=False))
        if rows.ndim != 2:
            raise ValueError(f"rows must be 2-d (groups, values), got shape {rows.shape}")
        K = check_int(K, "K", 1, 1 << 16)
        if K & (K - 1):
            raise ValueError(f"K must be a power of two (LBG splitting doubles the codebook), got {K}")
        max_iter = check_int(max_iter, "max_iter", 1, 1 << 30)
        G, n = rows.shape
        if n == 0:
            raise ValueError("rows must hold at least one value per group")
        if alt is not None:
            alt = np.ascontiguousarray(as_float32(alt, "alt", check_finite=False))
            if alt.shape != (G, K):
                raise ValueError(f"alt must have shape {(G, K)}, got {alt.shape}")
        if G == 0:
            return np.empty((0, K), np.float32)
        out, status = self._kmeans_fit_groups(rows, K, max_iter, alt, bool(float16))
        if status & 1:
            raise InputError("rows contains NaN or Inf")
        if status & 2:
            raise ValueError("alt codebooks must be finite and sorted ascending")
        return out

    def kmeans_fit_weighted(self, x, w, K: int, *, tol: float = 1e-6, max_iter: int = 300):
        """k-means of weighted points, one row each (module doc, "Weighted rows").

        ``x`` ``(R, n)`` float32 and ``w`` ``(R, n)`` float64: row ``r``'s points are ``x[r, i]`` of weight
        ``w[r, i] > 0``, sorted ascending (points of weight 0 are ignored, whatever their value).  Lloyd stops
        when the total squared move of the entries is at most ``tol`` times the variance of the row's points
        (scikit-learn's rule) or after ``max_iter`` iterations.  Returns ``(codebooks (R, K) float32 sorted,
        ok (R,) bool)``; a row with ``ok`` False had a start with equal entries and holds no result.  A row
        with unsorted or non-finite points, a negative or non-finite weight, or no positive weight, is a
        ``ValueError``."""
        x = np.ascontiguousarray(as_float32(x, "x", check_finite=False))
        w = np.ascontiguousarray(np.asarray(w, np.float64))
        if x.ndim != 2 or w.shape != x.shape:
            raise ValueError(f"x and w must be 2-d arrays of one shape, got {x.shape} and {w.shape}")
        K = check_int(K, "K", 1, 1 << 16)
        max_iter = check_int(max_iter, "max_iter", 1, 1 << 30)
        tol = float(tol)
        if not (np.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be finite and >= 0, got {tol}")
        R, n = x.shape
        if R == 0:
            return np.empty((0, K), np.float32), np.empty(0, bool)
        if n == 0:
            raise ValueError("every row of w needs a positive weight")
        out, status = self._kmeans_fit_weighted(x, w, K, tol, max_iter)
        bad = np.flatnonzero(status < 0)
        if bad.size:
            raise ValueError(f"row {int(bad[0])} of x/w is invalid: its points (weight > 0) must be finite and sorted "
                             f"ascending, its weights finite, >= 0 and not all 0")
        return out, status > 0

    def kmeans_fit_rows(self, rows, K: int, *, bins: int, lo, hi, tol: float = 1e-6, max_iter: int = 300):
        """Per row of ``rows`` ``(R, n)``: its histogram of ``bins`` equal bins over ``[lo[r], hi[r]]``, then a codebook
        (module doc, "Rows"); ``(codebooks (R, K) float32, status (R,) int8)``.

        ``status``: 1 fitted (weighted k-means of the non-empty bins' means); 2 exact (at most K values, each bin
        holding one: those values, padded by the largest); 3 too few non-empty bins to cluster (< 2K; no result:
        the caller clusters the exact values); 0 the fit's start had equal entries (no result).  NaN/Inf raise
        :class:`qcore.InputError` (found in the same pass)."""
        rows = np.ascontiguousarray(as_float32(rows, "rows", check_finite=False))
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise ValueError(f"rows must be 2-d with at least one value per row, got shape {rows.shape}")
        K = check_int(K, "K", 1, 1 << 16)
        bins = check_int(bins, "bins", 1, 1 << 24)
        max_iter = check_int(max_iter, "max_iter", 1, 1 << 30)
        R = rows.shape[0]
        lo = np.ascontiguousarray(np.broadcast_to(np.asarray(lo, np.float64), (R,)))
        hi = np.ascontiguousarray(np.broadcast_to(np.asarray(hi, np.float64), (R,)))
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()):
            raise ValueError("lo and hi must be finite with hi >= lo")
        tol = float(tol)
        if not (np.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be finite and >= 0, got {tol}")
        if R == 0:
            return np.empty((0, K), np.float32), np.empty(0, np.int8)
        out, status = self._kmeans_fit_rows(rows, K, bins, lo, hi, tol, max_iter)
        if (status == -2).any():
            raise InputError("rows contains NaN or Inf")
        return out, status

    # -- what a kernel overrides (numpy defaults) --
    def _kmeans_fit_groups(self, rows, K, max_iter, alt, float16):
        return fit_groups(rows, K, max_iter, alt, float16)

    def _kmeans_fit_weighted(self, x, w, K, tol, max_iter):
        return fit_weighted(x, w, K, tol, max_iter)

    def _kmeans_fit_rows(self, rows, K, bins, lo, hi, tol, max_iter):
        return fit_rows(rows, K, bins, lo, hi, tol, max_iter)


__all__ = ["KMeansFit", "cbrt", "codebook_sse", "fit_groups", "fit_rows", "fit_weighted", "order_keys", "round_f16"]
