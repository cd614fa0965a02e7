"""The ``"kmeans_fit"`` kernel capability (qcore/kernels/kmeans.py, pyx/kmeans.pyx): the C kernel equals the numpy
reference bit for bit at every instruction-set level and thread count, and both are what Lloyd's algorithm means
(scikit-learn's ``KMeans`` from the same start, hand-worked examples, fixed points); bad input is refused."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import qcore
from qcore.kernels import kmeans as km
from qcore.testing._kernel import _kmeans_rows

CY = qcore.get_kernel("cython")
NP = qcore.get_kernel("numpy")


@pytest.fixture(params=CY.isas())
def isa(request):
    old = CY.isa
    CY.set_isa(request.param)
    yield request.param
    CY.set_isa(old)


@pytest.mark.parametrize("n,K", [(128, 16), (128, 256), (32, 16), (1, 2), (2, 4), (7, 4), (100, 8), (256, 16),
                                 (257, 16), (300, 2), (1000, 16)])
def test_groups_equal_the_reference_bit_for_bit(isa, n, K):
    rng = np.random.default_rng(n * K)
    rows = _kmeans_rows(rng, 40, n) if n >= 6 else rng.standard_normal((40, n)).astype(np.float32)
    want = NP.kmeans_fit_groups(rows, K)
    np.testing.assert_array_equal(CY.kmeans_fit_groups(rows, K), want)
    alt = np.sort(rng.standard_normal((40, K)).astype(np.float32) * 0.5, axis=1)
    for f16 in (False, True):
        np.testing.assert_array_equal(CY.kmeans_fit_groups(rows, K, alt=alt, float16=f16),
                                      NP.kmeans_fit_groups(rows, K, alt=alt, float16=f16))
    assert (np.diff(want, axis=1) >= 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_groups_do_not_depend_on_threads_or_order(threads):
    rows = np.random.default_rng(3).standard_normal((5000, 128)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="openmp"):
        full = CY.kmeans_fit_groups(rows, 16)
    # each group alone, and the groups in reverse order: the same bits
    np.testing.assert_array_equal(CY.kmeans_fit_groups(rows[::-1].copy(), 16), full[::-1])
    np.testing.assert_array_equal(np.concatenate([CY.kmeans_fit_groups(rows[i:i + 1], 16) for i in range(0, 5000, 997)]),
                                  full[::997])


def test_groups_hand_worked():
    # {0, 0, 1, 1} and {10, 10, 11}: LBG splits the mean 33/7, Lloyd settles on the two clusters' means
    rows = np.array([[0, 0, 1, 1, 10, 10, 11]], np.float32)
    for k in (CY, NP):
        np.testing.assert_array_equal(k.kmeans_fit_groups(rows, 2), np.float32([[0.5, 31 / 3]]))
        # at most K distinct values: those values, padded by repeating the largest
        np.testing.assert_array_equal(k.kmeans_fit_groups(rows, 4), np.float32([[0, 1, 10, 11]]))
        np.testing.assert_array_equal(k.kmeans_fit_groups(rows, 8), np.float32([[0, 1, 10, 11, 11, 11, 11, 11]]))
        # -0.0 is 0.0: one distinct value, stored as 0.0
        z = k.kmeans_fit_groups(np.float32([[-0.0, 0.0, -0.0]]), 2)
        assert z.tolist() == [[0.0, 0.0]] and not np.signbit(z).any()


def test_groups_are_fixed_points_of_lloyd():
    """Every entry is the float32 mean of the values nearest it (the float32 midpoint rule), checked on the
    unsorted group with plain numpy."""
    rows = np.random.default_rng(5).standard_normal((300, 128)).astype(np.float32)
    cb = CY.kmeans_fit_groups(rows, 16, max_iter=10000)
    for g in range(rows.shape[0]):
        mid = ((cb[g, 1:].astype(np.float64) + cb[g, :-1]) * 0.5).astype(np.float32)
        lab = np.searchsorted(mid, rows[g], side="left")  # x <= mid: the lower entry
        for j in range(16):
            members = rows[g][lab == j].astype(np.float64)
            assert members.size and np.float32(members.mean()) == pytest.approx(cb[g, j], rel=1e-6, abs=1e-7)


def test_groups_alternative_kept_only_when_strictly_better():
    rows = np.random.default_rng(6).standard_normal((200, 64)).astype(np.float32)
    mine = CY.kmeans_fit_groups(rows, 4)
    grid = np.sort(np.random.default_rng(7).standard_normal((200, 4)).astype(np.float32), axis=1)
    grid[:100] = mine[:100]  # equal: not strictly better, so k-means' own codebook stays (same values anyway)
    grid[150:] = np.linspace(-1.5, 1.5, 4, dtype=np.float32)  # a decent grid: kept where it wins
    got = CY.kmeans_fit_groups(rows, 4, alt=grid)

    def sse(c):
        mid = (c[:, 1:].astype(np.float64) + c[:, :-1]) * 0.5
        q = (rows[:, :, None].astype(np.float64) > mid[:, None, :]).sum(-1)
        return ((rows - np.take_along_axis(c, q, 1)).astype(np.float64) ** 2).sum(1)

    e_mine, e_grid, e_got = sse(mine), sse(grid), sse(got)
    assert np.allclose(e_got, np.minimum(e_mine, e_grid), rtol=1e-9)
    took = (got == grid).all(1) & ~(got == mine).all(1)
    assert (e_grid[took] < e_mine[took]).all()


def test_float16_rounding_is_numpys():
    from qcore_plugins import _kmeans

    rng = np.random.default_rng(8)
    bits = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    v = bits.view(np.float32)
    v = v[np.isfinite(v)]
    # also every tie and neighbour around the float16 grid, the subnormals and the top of the range
    u = np.arange(0, 1 << 16, dtype=np.uint32) << 13
    near = np.concatenate([u, u + 0x1000, u + 0xFFF, u + 0x1001, u | 0x80000000]).view(np.float32)
    v = np.concatenate([v, near[np.isfinite(near)], np.float32([65504, 65519.99, 65520, 1e-8, 2.9802322e-08])])
    out = np.empty_like(v)
    _kmeans.round_f16(v, out)
    want = km.round_f16(v)
    same = (out == want) | (np.isnan(out) & np.isnan(want))
    assert same.all(), (v[~same][:5], out[~same][:5], want[~same][:5])
    assert (np.signbit(out) == np.signbit(want)).all()


def test_cbrt_equals_the_reference_and_is_a_cube_root():
    from qcore_plugins import _kmeans

    w = np.concatenate([np.arange(0, 5000, dtype=np.float64), np.random.default_rng(9).uniform(0, 1e12, 5000)])
    out = np.empty_like(w)
    _kmeans.cbrt(w, out)
    np.testing.assert_array_equal(out, km.cbrt(w))
    np.testing.assert_allclose(out, np.cbrt(w), rtol=1e-15)


def _weighted_case(rng, R=30, n=400):
    x = np.sort((rng.standard_normal((R, n)) * rng.uniform(0.1, 10, (R, 1))).astype(np.float32), axis=1)
    w = rng.integers(0, 50, (R, n)).astype(np.float64)
    w[::3, ::2] = 0
    x[4, ::2] = np.float32(1e30)  # weight 0 below: any value may sit there
    w[4, ::2] = 0
    x[4] = np.where(w[4] > 0, x[4], np.float32(1e30))
    w[7] = 0
    w[7, 10] = 5  # a single point: its start has equal entries
    return x, w


@pytest.mark.parametrize("K,tol", [(16, 1e-6), (16, 0.0), (4, 1e-3), (256, 1e-6), (2, 0.0)])
def test_weighted_equal_the_reference_bit_for_bit(isa, K, tol):
    x, w = _weighted_case(np.random.default_rng(K))
    cy, ok = CY.kmeans_fit_weighted(x, w, K, tol=tol)
    ref, ok_ref = NP.kmeans_fit_weighted(x, w, K, tol=tol)
    np.testing.assert_array_equal(ok, ok_ref)
    assert not ok[7] and ok[0]
    np.testing.assert_array_equal(cy[ok], ref[ok])


@pytest.mark.parametrize("K,bins", [(16, 1024), (4, 1024), (256, 4096), (2, 16)])
def test_rows_equal_the_reference_bit_for_bit(isa, K, bins):
    rng = np.random.default_rng(K + bins)
    rows = (rng.standard_normal((60, 1500)) * rng.uniform(0.1, 5, (60, 1))).astype(np.float32)
    rows[1] = -2.5
    rows[2] = rng.choice(np.float32([-1, 0, 2.5]), 1500)
    rows[3, :1400] = 0.25
    rows[4] = np.concatenate([np.ones(1480, np.float32), rows[4, :20]])
    lo, hi = rows.min(1), rows.max(1)
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="openmp"):
            got, status = CY.kmeans_fit_rows(rows, K, bins=bins, lo=lo, hi=hi)
        want, want_status = NP.kmeans_fit_rows(rows, K, bins=bins, lo=lo, hi=hi)
        np.testing.assert_array_equal(status, want_status)
        done = (status == 1) | (status == 2)
        np.testing.assert_array_equal(got[done], want[done])
    assert status[1] == 2 and (got[1] == -2.5).all()
    if K >= 4:
        assert status[2] == 2 and got[2].tolist() == [-1, 0, 2.5] + [2.5] * (K - 3)


def test_rows_are_the_weighted_fit_of_their_histogram():
    """kmeans_fit_rows is the histogram (the kernel's own bin_stats) followed by kmeans_fit_weighted on the non-empty
    bins' means: checked with those two operations of the numpy kernel."""
    rng = np.random.default_rng(21)
    rows = rng.laplace(size=(20, 3000)).astype(np.float32)
    lo, hi = rows.min(1), rows.max(1)
    cb, status = CY.kmeans_fit_rows(rows, 16, bins=1024, lo=lo, hi=hi)
    assert (status == 1).all()
    cnt, sm, _, _ = NP.bin_stats(rows, lo, hi, 1024)
    pts = np.where(cnt > 0, sm / np.maximum(cnt, 1), 0).astype(np.float32)
    ref, ok = NP.kmeans_fit_weighted(pts, cnt.astype(np.float64), 16)
    assert ok.all()
    np.testing.assert_allclose(cb, ref, rtol=1e-6, atol=1e-6)  # bin sums may differ in the last bit


def test_weighted_is_scikit_learns_lloyd_from_the_same_start():
    """The independent reference: ``sklearn.cluster.KMeans`` (float64 centres, its own assignment) from our start
    on the same weighted points, run to convergence: the same centroids up to float32 rounding."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(11)
    for r in range(8):
        pts = np.sort(rng.standard_normal(600) * (r + 1)).astype(np.float32)
        pts = np.unique(pts)
        w = rng.integers(1, 30, pts.size).astype(np.float64)
        start, ok = km.panter_dite_start(pts, w, 16)
        assert ok
        ours, ok = CY.kmeans_fit_weighted(pts[None], w[None], 16, tol=0.0, max_iter=1000)
        with threadpool_limits(limits=1):
            sk = KMeans(16, init=start.astype(np.float64).reshape(-1, 1), n_init=1, tol=0.0, max_iter=1000)
            sk.fit(pts.astype(np.float64).reshape(-1, 1), sample_weight=w)
        theirs = np.sort(sk.cluster_centers_.ravel())
        np.testing.assert_allclose(ours[0], theirs, rtol=2e-6, atol=2e-6 * float(np.abs(pts).max()))


def test_weighted_start_is_the_panter_dite_quantiles():
    # equal weights: d = 1 each, cdf_i = (i + 1/2) / n, so entry j lies at t_j = (j + 1/2) / K on that grid
    x = np.arange(8, dtype=np.float32)[None] * 2
    start, ok = km.panter_dite_start(x[0], np.ones(8), 4)
    assert ok and start.tolist() == [1.0, 5.0, 9.0, 13.0]
    # weights 1 and 8: cbrt gives 1 and 2, so the heavy point takes two thirds of the quantiles
    start, ok = km.panter_dite_start(np.float32([0, 1]), np.float64([1, 8]), 2)
    # cdf = [1/6, 4/6]; t = 1/4 lies a sixth of the way from 1/6 to 4/6; t = 3/4 is beyond the last point
    assert ok and start.tolist() == [np.float32(1 / 6), 1.0]
    cb, ok = CY.kmeans_fit_weighted(np.float32([[0, 1]]), np.float64([[1, 8]]), 2)
    assert ok[0] and cb[0].tolist() == [0.0, 1.0]


def test_bad_input_is_refused_with_a_clear_error():
    rows = np.random.default_rng(12).standard_normal((4, 16)).astype(np.float32)
    for k in (CY, NP):
        bad = rows.copy()
        bad[2, 3] = np.inf
        with pytest.raises(qcore.InputError):
            k.kmeans_fit_groups(bad, 4)
        with pytest.raises(ValueError, match="power of two"):
            k.kmeans_fit_groups(rows, 3)
        with pytest.raises(ValueError, match="alt"):
            k.kmeans_fit_groups(rows, 4, alt=np.zeros((4, 3), np.float32))
        with pytest.raises(ValueError, match="sorted"):
            k.kmeans_fit_groups(rows, 4, alt=np.float32([[1, 0, 2, 3]] * 4))
        with pytest.raises(ValueError, match="2-d"):
            k.kmeans_fit_groups(rows[0], 4)
        with pytest.raises(ValueError, match="at least one value"):
            k.kmeans_fit_groups(np.zeros((3, 0), np.float32), 4)
        assert k.kmeans_fit_groups(np.zeros((0, 5), np.float32), 4).shape == (0, 4)
        x = np.sort(rows, axis=1)
        w = np.ones_like(x, dtype=np.float64)
        for xx, ww in ((x[:, ::-1], w), (x, -w), (x, w * np.nan), (x, w * 0), (x, w * 1e308)):
            with pytest.raises(ValueError, match="row 0"):
                k.kmeans_fit_weighted(xx, ww, 4)
        with pytest.raises(ValueError, match="tol"):
            k.kmeans_fit_weighted(x, w, 4, tol=-1)
        with pytest.raises(ValueError, match="one shape"):
            k.kmeans_fit_weighted(x, w[:, :3], 4)
        with pytest.raises(ValueError, match="K"):
            k.kmeans_fit_weighted(x, w, 0)
        with pytest.raises(qcore.InputError):
            k.kmeans_fit_rows(bad, 4, bins=16, lo=-10, hi=10)
        with pytest.raises(ValueError, match="hi >= lo"):
            k.kmeans_fit_rows(rows, 4, bins=16, lo=1, hi=0)
        with pytest.raises(ValueError, match="bins"):
            k.kmeans_fit_rows(rows, 4, bins=0, lo=-1, hi=1)
        with pytest.raises(ValueError, match="2-d"):
            k.kmeans_fit_rows(rows[0], 4, bins=16, lo=-1, hi=1)
        # values beyond [lo, hi] go to the end bins (no out-of-range index): -1e30 and 0 share bin 0, 5 and 1e30
        # bin 7, so 2 non-empty bins holding 2 values each (not exact, < 2K bins: left to the caller)
        cb, st = k.kmeans_fit_rows(np.float32([[-1e30, 0, 1e30, 5]]), 4, bins=8, lo=0, hi=1)
        assert st.tolist() == [3]
        # the same values each alone in a bin: exact
        cb, st = k.kmeans_fit_rows(np.float32([[-1e30, 0.5, 1e30, 0.2]]), 4, bins=8, lo=0, hi=1)
        assert st.tolist() == [2] and cb[0].tolist() == [np.float32(-1e30), np.float32(0.2), np.float32(0.5), np.float32(1e30)]


def test_conformance_check_passes_for_both_kernels():
    from qcore.testing._kernel import check_kernel_kmeans_fit

    for k in (CY, NP):
        check_kernel_kmeans_fit(k)
