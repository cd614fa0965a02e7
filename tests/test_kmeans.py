"""The ``kmeans`` scheme: sorted codebooks, never worse than linear, exact few-value tensors, kernels, bad input."""
import numpy as np
import pytest

import qcore

KERNELS = ["cython", "numpy"]


def _mse(qt, x):
    return float(np.mean((qt.dequantize().astype(np.float64) - x) ** 2))


def _dists(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "gaussian": rng.standard_normal(n),
        "laplace": rng.laplace(size=n),
        "uniform": rng.uniform(-1, 1, n),
        "bimodal": np.concatenate([rng.normal(-3, 0.1, n // 2), rng.normal(2, 0.5, n - n // 2)]),
        "skewed": rng.exponential(size=n),
    }


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_error_never_above_linear(bits, granularity):
    for name, v in _dists(6000, seed=bits).items():
        x = v.astype(np.float32).reshape(12, 500)
        km = qcore.quantize(x, "kmeans", bits=bits, granularity=granularity)
        lin = qcore.quantize(x, "linear", bits=bits, granularity=granularity)
        assert _mse(km, x) <= _mse(lin, x), (name, bits, granularity)


@pytest.mark.parametrize("bits", [2, 4])
def test_kmeans_clearly_beats_linear_on_bell_shapes(bits):
    x = np.random.default_rng(1).standard_normal(50000).astype(np.float32)
    assert _mse(qcore.quantize(x, "kmeans", bits=bits), x) < 0.7 * _mse(qcore.quantize(x, "linear", bits=bits), x)


def test_hand_worked_example():
    # two clusters {0, 0, 1, 1} and {10, 10, 11}: centroids 0.5 and 31/3; each value to the nearest
    x = np.array([0, 0, 1, 1, 10, 10, 11], np.float32)
    qt = qcore.quantize(x, "kmeans", bits=1)
    assert qt.params["codebook"].shape == (1, 2)
    np.testing.assert_allclose(qt.params["codebook"][0], [0.5, 31 / 3], rtol=1e-6)
    assert qt.codes.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_hand_worked_assignment_midpoints():
    # codebook [-1, 0, 0.5, 4]: midpoints -0.5, 0.25, 2.25; a value on a midpoint takes the lower entry
    q = qcore.get_quantizer("kmeans", bits=2)
    cb = {"codebook": np.array([[-1.0, 0.0, 0.5, 4.0]], np.float32)}
    x = np.array([-9, -0.5, -0.49, 0.25, 0.26, 2.25, 2.26, 100], np.float32)
    for kernel in KERNELS:
        q = qcore.get_quantizer("kmeans", bits=2, kernel=kernel)
        assert q.encode(x, cb).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert q.decode(q.encode(x, cb), cb).tolist() == [-1, -1, 0, 0, 0.5, 0.5, 4, 4]


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_fewer_distinct_values_than_centroids_come_back_exactly(bits):
    rng = np.random.default_rng(2)
    x = rng.choice(np.array([-1.25, 0.0, 2.5, 3.0], np.float32), size=(8, 300))
    for g in ("tensor", "channel"):
        qt = qcore.quantize(x, "kmeans", bits=bits, granularity=g)
        assert np.array_equal(qt.dequantize(), x)
        cb = qt.params["codebook"]
        assert np.all(np.diff(cb, axis=-1) >= 0)
    # distinct values in fewer histogram bins than 2K (two values share a bin)
    y = np.array([0.0, 1e-7, 5.0, 5.0, 9.0], np.float32)
    assert np.array_equal(qcore.quantize(y, "kmeans", bits=2).dequantize(), y)


@pytest.mark.parametrize("kernel", KERNELS)
def test_constants_and_zeros(kernel):
    for c in (0.0, -3.5, 1e-20):
        x = np.full((4, 9), c, np.float32)
        for g in ("tensor", "channel"):
            assert np.array_equal(qcore.quantize(x, "kmeans", bits=3, granularity=g, kernel=kernel).dequantize(), x)


@pytest.mark.parametrize("opts", [{}, {"granularity": "channel"}, {"granularity": "channel", "axis": 1},
                                  {"granularity": "channel", "axis": -1}, {"bits": 8}, {"bits": 1}])
def test_codebook_sorted_codes_unsigned_and_cython_equals_numpy(opts):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 5, 200)) * rng.uniform(0.1, 5, (6, 1, 1))).astype(np.float32)
    a = qcore.quantize(x, "kmeans", kernel="cython", **opts)
    b = qcore.quantize(x, "kmeans", kernel="numpy", **opts)
    K = 1 << a.bits
    cb = a.params["codebook"]
    assert cb.dtype == np.float32 and cb.shape[-1] == K and np.all(np.diff(cb, axis=-1) >= 0)
    assert a.codes.dtype == np.uint8 and int(a.codes.max()) < K and not a.signed
    np.testing.assert_allclose(a.params["codebook"], b.params["codebook"], rtol=1e-5, atol=1e-6)
    q = qcore.get_quantizer("kmeans", kernel="numpy", **opts)
    assert np.array_equal(a.codes, q.encode(x, a.params))
    assert np.array_equal(a.dequantize(), q.decode(a.codes, a.params))


def test_per_channel_shapes_and_determinism():
    x = np.random.default_rng(4).laplace(size=(300, 16)).astype(np.float32)
    a = qcore.quantize(x, "kmeans", bits=3, granularity="channel", axis=1)
    b = qcore.quantize(x, "kmeans", bits=3, granularity="channel", axis=1)
    assert a.params["codebook"].shape == (16, 8)
    assert np.array_equal(a.params["codebook"], b.params["codebook"]) and np.array_equal(a.codes, b.codes)
    t = qcore.quantize(x, "kmeans", bits=3)
    assert _mse(a, x) <= _mse(t, x) * 1.05


def test_large_tensor_matches_full_kmeans_error():
    from sklearn.cluster import KMeans

    x = np.random.default_rng(5).standard_normal(50000).astype(np.float32)
    ref = KMeans(16, n_init=1, random_state=0).fit(x.reshape(-1, 1)).inertia_ / x.size
    assert _mse(qcore.quantize(x, "kmeans", bits=4), x) <= 1.02 * ref


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_refused(kernel, bad):
    x = np.linspace(-1, 1, 70000).astype(np.float32)
    x[12345] = bad
    with pytest.raises(qcore.InputError, match="NaN or Inf"):
        qcore.quantize(x, "kmeans", kernel=kernel)
    q = qcore.get_quantizer("kmeans", bits=1, kernel=kernel)
    with pytest.raises(qcore.InputError):
        q.encode(x, {"codebook": np.array([[0.0, 1.0]], np.float32)})


def test_empty_zero_d_and_bad_options():
    e = qcore.quantize(np.zeros((3, 0), np.float32), "kmeans", granularity="channel")
    assert e.codes.shape == (3, 0) and e.dequantize().shape == (3, 0)
    z = qcore.quantize(np.float32(2.75), "kmeans")
    assert z.dequantize() == np.float32(2.75)
    with pytest.raises(TypeError, match="unknown option"):
        qcore.get_quantizer("kmeans", n_clusters=4)
    with pytest.raises(ValueError, match="granularity"):
        qcore.get_quantizer("kmeans", granularity="block")
    with pytest.raises(ValueError, match="group_size=32 does not divide"):
        qcore.quantize(np.ones((4, 48), np.float32), "kmeans", granularity="group", group_size=32)
    with pytest.raises(ValueError, match="codebook_dtype"):
        qcore.get_quantizer("kmeans", codebook_dtype="bfloat16")
    with pytest.raises(ValueError, match="float16"):
        qcore.quantize(np.array([[0, 1e6]], np.float32), "kmeans", bits=1, codebook_dtype="float16")
    with pytest.raises(ValueError, match="bits"):
        qcore.get_quantizer("kmeans", bits=9)
    with pytest.raises((TypeError, ValueError), match="random_state"):
        qcore.get_quantizer("kmeans", random_state="x")
    q = qcore.get_quantizer("kmeans", bits=1)
    with pytest.raises(ValueError, match="sorted"):
        q.encode(np.ones(3, np.float32), {"codebook": np.array([[1.0, 0.0]], np.float32)})
    with pytest.raises(ValueError, match="codebook"):
        q.encode(np.ones(3, np.float32), {"codebook": np.zeros((2, 2), np.float32)})


# ------------------------------------------------------------------------------------------------ groups

def _group_sse(x, cb, gs):
    """Per group: squared error of the nearest entry of its own codebook (an independent numpy reference)."""
    rows = x.reshape(-1, gs).astype(np.float64)
    c = np.asarray(cb, np.float64).reshape(rows.shape[0], -1)
    return ((rows[:, :, None] - c[:, None, :]) ** 2).min(axis=2).sum(axis=1)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits,gs", [(4, 128), (3, 64), (2, 32), (1, 16)])
def test_groups_one_codebook_per_block_never_worse_than_linear(kernel, bits, gs):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((24, 256)) * rng.uniform(0.1, 3, (24, 1))).astype(np.float32)
    x[3, :gs] = 0.5  # a constant group
    x[5, gs:2 * gs] = np.tile(np.float32([-1, 0, 2]), gs)[:gs]  # three distinct values
    qt = qcore.quantize(x, "kmeans", bits=bits, granularity="group", group_size=gs, kernel=kernel)
    K = 1 << bits
    cb = qt.params["codebook"]
    assert cb.shape == (24, 256 // gs, K) and cb.dtype == np.float32
    assert (np.diff(cb, axis=-1) >= 0).all()
    # decode is the group's own codebook at the code, and the code is the nearest entry (ties: lower)
    codes = qt.codes.reshape(-1, gs).astype(np.int64)
    flat = cb.reshape(-1, K)
    np.testing.assert_array_equal(qt.dequantize().reshape(-1, gs), np.take_along_axis(flat, codes, axis=1))
    mine = _group_sse(x, cb, gs)
    got = ((qt.dequantize().astype(np.float64) - x).reshape(-1, gs) ** 2).sum(axis=1)
    np.testing.assert_allclose(got, mine, rtol=1e-9, atol=1e-12)
    lin = qcore.quantize(x, "linear", bits=bits, granularity="group", group_size=gs)
    theirs = ((lin.dequantize().astype(np.float64) - x).reshape(-1, gs) ** 2).sum(axis=1)
    assert np.all(mine <= theirs * (1 + 1e-6) + 1e-12)
    if bits >= 2:  # few distinct values come back exactly
        np.testing.assert_array_equal(qt.dequantize()[3, :gs], x[3, :gs])
        np.testing.assert_array_equal(qt.dequantize()[5, gs:2 * gs], x[5, gs:2 * gs])
    if bits == 4:  # k-means, not just the linear grid: clearly lower error on Gaussian groups
        assert mine.sum() < 0.8 * theirs.sum()


def test_groups_lloyd_is_a_local_optimum_close_to_sklearn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    qt = qcore.quantize(x, "kmeans", bits=3, granularity="group", group_size=128)
    for r in range(2):
        cb = qt.params["codebook"][r, 0].astype(np.float64)
        lab = np.abs(x[r][:, None] - cb[None]).argmin(axis=1)
        for j in np.unique(lab):  # every used entry is the mean of its values (a Lloyd fixed point)
            assert abs(cb[j] - x[r][lab == j].astype(np.float64).mean()) < 1e-6
        mine = _group_sse(x[r:r + 1], cb, 128)[0]
        xr = x[r].reshape(-1, 1).astype(np.float64)
        grid = np.linspace(xr.min(), xr.max(), 8).reshape(-1, 1)  # the same start, scikit-learn's Lloyd
        same = KMeans(8, init=grid, n_init=1, tol=0, max_iter=300).fit(xr).inertia_
        best = KMeans(8, n_init=4, random_state=0).fit(xr).inertia_
        assert mine <= 1.05 * same and mine <= 1.25 * best  # documented: a local optimum (docs/schemes.md)


def test_groups_float16_codebooks_storage_and_file_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    q32 = qcore.quantize(x, "kmeans", bits=4, granularity="group", group_size=128)
    q16 = qcore.quantize(x, "kmeans", bits=4, granularity="group", group_size=128, codebook_dtype="float16")
    assert q16.params["codebook"].dtype == np.float16
    # true storage: packed 4-bit codes + 16 entries per group of 128 (8.0 / 6.0 bits per weight)
    assert q32.nbytes == x.size // 2 + 16 * 4 * 16 * 4 and q32.nbytes * 8 / x.size == 8.0
    assert q16.nbytes == x.size // 2 + 16 * 4 * 16 * 2 and q16.nbytes * 8 / x.size == 6.0
    # the codes are the nearest entries of the stored (rounded) codebook
    cb16 = q16.params["codebook"].astype(np.float32)
    np.testing.assert_array_equal(q16.dequantize().reshape(-1, 128),
                                  np.take_along_axis(cb16.reshape(-1, 16), q16.codes.reshape(-1, 128).astype(np.int64), 1))
    assert np.isclose(_group_sse(x, cb16, 128).sum(), ((q16.dequantize() - x).astype(np.float64) ** 2).sum())
    qm = qcore.quantize_model({"a": x, "b": x[:, :256].copy()}, "kmeans", bits=4, granularity="group",
                              group_size=128, codebook_dtype="float16", progress=False)
    path = tmp_path / "m.safetensors"
    qm.save(path)
    back = qcore.load_quantized(path)
    assert back["a"].params["codebook"].dtype == np.float16 and back["a"].options["group_size"] == 128
    got, want = back.dequantize(), qm.dequantize()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert back.nbytes == qm.nbytes


def test_groups_through_gptq():
    # GPTQ fits one codebook per (row, group) through the Quantizer contract: a diagonal Hessian gives the
    # round-to-nearest result (without the clip search, the paper's GPTQ), a correlated one a clearly lower
    # output error than it
    rng = np.random.default_rng(11)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    opts = dict(bits=3, granularity="group", group_size=32)
    h = np.diag(rng.uniform(0.1, 5.0, 128))
    g, r = qcore.gptq(w, h, "kmeans", clip_search=False, **opts), qcore.quantize(w, "kmeans", **opts)
    np.testing.assert_array_equal(g.codes, r.codes)
    np.testing.assert_allclose(g.params["codebook"], r.params["codebook"], rtol=1e-6)
    base = rng.standard_normal((512, 16))
    x = (base @ rng.standard_normal((16, 128)) + 0.1 * rng.standard_normal((512, 128))).astype(np.float32)
    g = qcore.gptq(w, x.T.astype(np.float64) @ x / len(x), "kmeans", **opts)
    assert g.params["codebook"].shape == (32, 4, 8)
    err = lambda q: float(((x @ (q.dequantize() - w).T) ** 2).mean())  # noqa: E731
    assert err(g) < 0.7 * err(r)
