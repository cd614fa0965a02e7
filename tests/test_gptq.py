"""qcore.gptq: the GPTQ sweep for any scheme, checked against independent references.

* a naive optimal-brain-surgeon loop (explicit inverse of the remaining Hessian after every column, no Cholesky
  trick, no lazy batches) must give the same codes;
* a diagonal Hessian (uncorrelated inputs) leaves nothing to compensate: GPTQ must equal round to nearest;
* a brute-force search over all codes of a tiny layer bounds it from below;
* on strongly anisotropic inputs the output error ``||X (W - W')||^2`` must drop well below RTN's.
"""
import itertools
import pathlib

import numpy as np
import pytest

import qcore
from qcore.ptq import HessianAccumulator, hessian, output_error

EXAMPLE_SRC = pathlib.Path(__file__).resolve().parents[1] / "examples" / "qcore-plugin-example" / "src"


def anisotropic_inputs(k, m=2048, seed=0, decay=32.0):
    """Correlated inputs whose covariance eigenvalues fall as exp(-i/decay) (LLM-like activations)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    ev = np.exp(-np.arange(k) / decay)
    return ((rng.normal(size=(m, k)) * np.sqrt(ev)) @ q.T).astype(np.float32)


def weights(n, k, seed=1):
    return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def out_err(x, w, wq):
    return float(np.sum((x.astype(np.float64) @ (w.astype(np.float64) - wq).T) ** 2))


# -- the algorithm against a naive reference ------------------------------------------------------------
def naive_obs(w, h, q, damp=0.01):
    """Column by column in natural order; after each, the remaining columns get the OBS update computed with
    the explicit inverse of the Hessian restricted to them (what GPTQ's Cholesky trick reproduces)."""
    w = w.astype(np.float64).copy()
    h = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    params = q.fit(w.astype(np.float32))
    out = np.zeros_like(w)
    k = w.shape[1]
    for j in range(k):
        hinv = np.linalg.inv(h[j:, j:])
        col = w[:, j:j + 1].astype(np.float32)
        qc = q.decode(q.encode(col, params), params).astype(np.float64)[:, 0]
        out[:, j] = qc
        err = (w[:, j] - qc) / hinv[0, 0]
        w[:, j:] -= np.outer(err, hinv[0, :])
    return out


@pytest.mark.parametrize("opts", [dict(bits=4, granularity="channel", symmetric=True),
                                  dict(bits=3, granularity="tensor")])
def test_matches_naive_obs_reference(opts):
    x = anisotropic_inputs(24, m=512, decay=6)
    w = weights(16, 24)
    h = hessian(x)
    q = qcore.get_quantizer("linear", **opts)
    ref = naive_obs(w, h, q)
    for bs in (1, 5, 128):
        got = qcore.gptq(w, h, "linear", act_order=False, block_size=bs, damp=0.01, clip_search=False,
                         **opts).dequantize()
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_block_size_does_not_change_the_result():
    x = anisotropic_inputs(256, decay=20)
    w = weights(64, 256)
    h = hessian(x)
    a = qcore.gptq(w, h, "linear", bits=4, granularity="group", group_size=32, block_size=128)
    b = qcore.gptq(w, h, "linear", bits=4, granularity="group", group_size=32, block_size=32)
    assert np.mean(a.codes == b.codes) > 0.999  # float32 rounding may flip a rare tie
    assert out_err(x, w, b.dequantize()) == pytest.approx(out_err(x, w, a.dequantize()), rel=1e-3)


@pytest.mark.parametrize("scheme,opts", [
    ("linear", dict(bits=4, granularity="group", group_size=16)),
    ("linear", dict(bits=4, granularity="channel", symmetric=True)),
    ("kmeans", dict(bits=3)),
    ("log", dict(bits=4, granularity="channel")),
])
def test_diagonal_hessian_is_round_to_nearest(scheme, opts):
    """Without the clip search (the paper's GPTQ) a diagonal Hessian gives exactly round to nearest; with it
    (the default) the parameters may shrink the range, never for a larger output error."""
    w = weights(12, 64)
    h = np.diag(np.random.default_rng(3).uniform(0.1, 5.0, 64))
    g = qcore.gptq(w, h, scheme, clip_search=False, **opts)
    r = qcore.quantize(w, scheme, **opts)
    np.testing.assert_array_equal(g.codes, r.codes)
    for k in r.params:
        np.testing.assert_allclose(g.params[k], r.params[k], rtol=1e-6)
    clipped = qcore.gptq(w, h, scheme, **opts)
    assert output_error(w, clipped.dequantize(), h) <= output_error(w, r.dequantize(), h) * (1 + 1e-6)


def test_brute_force_tiny_layer():
    """One output, 6 inputs, 2-bit codes on RTN's grid: GPTQ lies between the exhaustive optimum and RTN."""
    opts = dict(bits=2, granularity="tensor")
    q = qcore.get_quantizer("linear", **opts)
    ratios = []
    for seed in range(12):
        x = anisotropic_inputs(6, m=256, seed=seed, decay=1.5)
        w = weights(1, 6, seed=seed + 100)
        h = hessian(x)
        params = q.fit(w)
        levels = q.decode(np.arange(4, dtype=np.uint8).reshape(1, 4), params)[0].astype(np.float64)
        best = min(output_error(w, np.array([c]), h) for c in itertools.product(levels, repeat=6))
        rtn = output_error(w, q.decode(q.encode(w, params), params), h)
        got = output_error(w, qcore.gptq(w, h, q, damp=0.0, clip_search=False).dequantize(), h)
        assert got >= best - 1e-9
        ratios.append((got - best) / max(rtn - best, 1e-12))
    assert np.mean(ratios) < 0.5  # closes most of RTN's gap to the optimum on average


# -- the targets on strongly anisotropic inputs ---------------------------------------------------
@pytest.fixture
def nf4(qcore_plugins, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    from qcore_nf4 import plugin

    qcore_plugins.register(plugin)
    return qcore_plugins


@pytest.fixture(scope="module")
def aniso256():
    """(x, H) of 2048 anisotropic samples of width 256, shared read-only by the tests below."""
    x = anisotropic_inputs(256)
    x.setflags(write=False)
    h = hessian(x)
    h.setflags(write=False)
    return x, h


@pytest.mark.parametrize("scheme,opts,limit", [
    ("linear", dict(bits=4, granularity="group", group_size=64), 0.4),
    ("linear", dict(bits=4, granularity="group", group_size=64, symmetric=True), 0.4),
    ("linear", dict(bits=3, granularity="channel"), 0.4),
    ("linear", dict(bits=4, granularity="channel", symmetric=True), 0.4),
    ("linear", dict(bits=4, granularity="tensor"), 0.4),
    ("kmeans", dict(bits=3), 0.6),
    ("kmeans", dict(bits=4, granularity="channel"), 0.6),
    ("log", dict(bits=4, granularity="channel"), 0.6),
    ("log", dict(bits=4, granularity="group", group_size=64), 0.6),
    ("nf4", dict(group_size=64), 0.7),
    ("nf4", dict(bits=3, granularity="channel"), 0.7),
])
def test_output_error_well_below_rtn(scheme, opts, limit, request, aniso256):
    if scheme == "nf4":
        request.getfixturevalue("nf4")
    x, h = aniso256
    w = weights(16 if opts.get("granularity") == "channel" and scheme == "kmeans" else 64, 256)
    qt = qcore.gptq(w, h, scheme, **opts)
    rtn = qcore.quantize(w, scheme, **opts)
    assert qt.scheme == scheme and qt.codes.shape == w.shape
    assert {k: v.shape for k, v in qt.params.items()} == {k: v.shape for k, v in rtn.params.items()}
    # an ordinary QTensor: rebuilt from its options, the scheme decodes it the same way
    again = qcore.get_quantizer(qt.scheme, **qt.options).decode(qt.codes, qt.params)
    np.testing.assert_array_equal(again, qt.dequantize())
    ratio = out_err(x, w, qt.dequantize()) / out_err(x, w, rtn.dequantize())
    assert ratio <= limit, ratio


def test_act_order_helps_with_outlier_features():
    rng = np.random.default_rng(5)
    x = anisotropic_inputs(128, decay=16)
    x[:, rng.choice(128, 6, replace=False)] *= 30.0  # a few outlier input features
    w = weights(32, 128)
    h = hessian(x)
    opts = dict(bits=3, granularity="group", group_size=32)
    with_ao = out_err(x, w, qcore.gptq(w, h, "linear", act_order=True, **opts).dequantize())
    without = out_err(x, w, qcore.gptq(w, h, "linear", act_order=False, **opts).dequantize())
    assert with_ao < without


# -- singular Hessians and dead inputs ----------------------------------------------------------------------
def test_dead_columns_are_rounded_and_get_no_error():
    x = anisotropic_inputs(32, m=1024, decay=4)
    dead = [3, 17, 30]
    x[:, dead] = 0.0
    w = weights(8, 32)
    h = hessian(x)
    opts = dict(bits=4, granularity="channel", symmetric=True)
    g = qcore.gptq(w, h, "linear", **opts)
    r = qcore.quantize(w, "linear", **opts)
    np.testing.assert_array_equal(g.codes[:, dead], r.codes[:, dead])
    assert out_err(x, w, g.dequantize()) < 0.5 * out_err(x, w, r.dequantize())


def test_rank_deficient_and_zero_hessians():
    x = anisotropic_inputs(64, m=16)  # 16 samples for 64 inputs: rank 16
    w = weights(8, 64)
    h = hessian(x)
    opts = dict(bits=4, granularity="group", group_size=16)
    g = qcore.gptq(w, h, "linear", **opts)
    assert np.isfinite(g.dequantize()).all()
    assert out_err(x, w, g.dequantize()) < out_err(x, w, qcore.quantize(w, "linear", **opts).dequantize())
    z = qcore.gptq(w, np.zeros((64, 64)), "linear", **opts)  # no information: round to nearest
    np.testing.assert_array_equal(z.codes, qcore.quantize(w, "linear", **opts).codes)


def test_hessian_accumulator_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 4, 10)).astype(np.float32) for n in (3, 7, 1)]
    acc = HessianAccumulator()
    for b in batches:
        acc.update(b)
    allx = np.concatenate([b.reshape(-1, 10) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(acc.value(), allx.T @ allx / allx.shape[0], rtol=1e-5)
    np.testing.assert_allclose(hessian(allx), allx.T @ allx / allx.shape[0], rtol=1e-5)
    with pytest.raises(ValueError, match="width"):
        acc.update(np.ones((2, 3), np.float32))


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_input():
    w = weights(4, 8)
    h = np.eye(8)
    with pytest.raises(ValueError, match=r"shape \(8, 8\)"):
        qcore.gptq(w, np.eye(7))
    with pytest.raises(ValueError, match="2-d"):
        qcore.gptq(w[0], h)
    with pytest.raises(TypeError, match="float"):
        qcore.gptq(w.astype(np.int32), h)
    with pytest.raises(TypeError, match="float"):
        qcore.gptq(w, h.astype(np.int64))
    bad = h.copy()
    bad[2, 2] = np.nan
    with pytest.raises(qcore.InputError, match="NaN"):
        qcore.gptq(w, bad)
    bw = w.copy()
    bw[0, 0] = np.inf
    with pytest.raises(qcore.InputError, match="NaN or Inf"):
        qcore.gptq(bw, h)
    asym = h.copy()
    asym[0, 1] = 0.5
    with pytest.raises(ValueError, match="symmetric"):
        qcore.gptq(w, asym)
    with pytest.raises(ValueError, match="negative"):
        qcore.gptq(w, -h)
    with pytest.raises(ValueError, match="group_size"):
        qcore.gptq(w, h, bits=4, granularity="group", group_size=3)
    with pytest.raises(TypeError, match="planner"):
        qcore.gptq(w, h, "mixed")
    with pytest.raises(ValueError, match="damp"):
        qcore.gptq(w, h, damp=-1)
    with pytest.raises(qcore.SchemeNotFound):
        qcore.gptq(w, h, "nope")


def test_float16_and_float64_weights():
    x = anisotropic_inputs(32, m=256)
    h = hessian(x)
    w = weights(4, 32)
    a = qcore.gptq(w.astype(np.float64), h, bits=4)
    b = qcore.gptq(w, h, bits=4)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.dtype == "float64"
    assert qcore.gptq(w.astype(np.float16), h.astype(np.float32), bits=4).dtype == "float16"


def test_clip_search_lowers_the_output_error(aniso256):
    x, h = aniso256
    w = weights(64, 256)
    # affine min/max ranges gain most; symmetric 3-/4-bit linear already searches its scale (the factor 1 is
    # among the candidates, so it is never worse there)
    for opts, gain in ((dict(bits=3, granularity="group", group_size=64), 0.95),
                       (dict(bits=4, granularity="channel", symmetric=True), 1.0)):
        plain = out_err(x, w, qcore.gptq(w, h, clip_search=False, **opts).dequantize())
        clipped = qcore.gptq(w, h, **opts)  # the default
        assert out_err(x, w, clipped.dequantize()) < gain * plain
        again = qcore.get_quantizer("linear", **opts).decode(clipped.codes, clipped.params)
        np.testing.assert_array_equal(again, clipped.dequantize())
    with pytest.raises(TypeError, match="clip_search"):
        qcore.gptq(w, h, clip_search="yes")


def test_correct_for_input_shift_is_the_least_squares_weight():
    """W' = W + W E (H + lam I)^-1 is, as lam -> 0, the least-squares fit of the float outputs x_f W^T from the
    shifted inputs x_q (numpy's lstsq as the reference); no shift gives W back exactly."""
    from qcore.ptq import correct_for_input_shift

    rng = np.random.default_rng(0)
    n, k, rows = 6, 10, 400
    w = rng.standard_normal((n, k)).astype(np.float32)
    x_q = rng.standard_normal((rows, k))
    x_f = x_q @ (np.eye(k) + 0.1 * rng.standard_normal((k, k)))  # a shift linear in x_q
    h = x_q.T @ x_q / rows
    e = (x_f - x_q).T @ x_q / rows
    ref = np.linalg.lstsq(x_q, x_f @ w.T.astype(np.float64), rcond=None)[0].T
    got = correct_for_input_shift(w, e, h, damp=1e-9)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert np.array_equal(correct_for_input_shift(w, np.zeros((k, k)), h), w)
    # damping shrinks the correction towards W
    mid = correct_for_input_shift(w, e, h, damp=1.0)
    assert np.linalg.norm(mid - w) < np.linalg.norm(got - w)


def test_correct_for_input_shift_bad_input():
    from qcore.ptq import correct_for_input_shift

    w, h = np.ones((2, 3), np.float32), np.eye(3)
    with pytest.raises(ValueError, match="shift"):
        correct_for_input_shift(w, np.zeros((2, 2)), h)
    with pytest.raises(ValueError, match="hessian"):
        correct_for_input_shift(w, np.zeros((3, 3)), np.eye(2))
    with pytest.raises(qcore.InputError):
        correct_for_input_shift(w, np.full((3, 3), np.nan), h)
    with pytest.raises(ValueError, match="damp"):
        correct_for_input_shift(w, np.zeros((3, 3)), h, damp=0)
    with pytest.raises(TypeError, match="float"):
        correct_for_input_shift(w, np.zeros((3, 3), np.int64), h)
