"""Tests of the example plugin, written as a third party would: qcore's public API and qcore.testing only.

They pass whether or not the package is installed: the ``qcore_plugins`` fixture (qcore's pytest plugin)
gives each test a registry with the built-ins only, and the test registers this plugin in-process.
"""
import importlib.metadata
import os

import numpy as np
import pytest

import qcore
from qcore.testing import check_observer, check_quantizer, parametrize_with_checks

from qcore_nf4 import NF4_CODEBOOK, NF4Quantizer, NSigmaObserver, normal_float_codebook
from qcore_nf4 import plugin as nf4_plugin


@pytest.fixture
def nf4(qcore_plugins):
    qcore_plugins.register(nf4_plugin)
    return qcore_plugins


def weights(shape=(256, 512), seed=0):
    return np.random.default_rng(seed).normal(scale=0.02, size=shape).astype(np.float32)


# -- the conformance kit --------------------------------------------------------------------------------
@parametrize_with_checks([NF4Quantizer, NF4Quantizer(bits=4, granularity="channel", axis=1), NSigmaObserver])
def test_conformance(obj, check):
    check(obj)


def test_whole_kit_in_one_call():
    assert all(r.status in ("passed", "skipped") for r in check_quantizer(NF4Quantizer))
    assert all(r.status in ("passed", "skipped") for r in check_observer(NSigmaObserver(k=3.0)))


# -- the scheme ---------------------------------------------------------------------------------------------
def test_codebook_is_qlora_nf4():
    assert NF4_CODEBOOK.shape == (16,) and NF4_CODEBOOK[0] == -1.0 and NF4_CODEBOOK[-1] == 1.0
    assert NF4_CODEBOOK[7] == 0.0 and np.all(np.diff(NF4_CODEBOOK) > 0)
    assert abs(NF4_CODEBOOK[8] - 0.07958029955625534) < 1e-9
    # the published table is QLoRA's construction from normal quantiles
    from statistics import NormalDist

    nd = NormalDist()
    pos = [nd.inv_cdf(p) for p in np.linspace(0.9677083, 0.5, 9)[:-1]]
    neg = [-nd.inv_cdf(p) for p in np.linspace(0.9677083, 0.5, 8)[:-1]]
    built = np.array(sorted(pos + neg + [0.0]))
    np.testing.assert_allclose(NF4_CODEBOOK, built / built.max(), atol=2e-7)
    for bits in (2, 3):
        cb = normal_float_codebook(bits)
        assert cb.size == 2**bits and 0.0 in cb and cb.min() == -1.0 and cb.max() == 1.0


def test_quantize_by_name(nf4):
    assert "nf4" in qcore.list_schemes() and "nsigma" in qcore.list_observers()
    w = weights()
    qt = qcore.quantize(w, "nf4")
    assert qt.scheme == "nf4" and qt.bits == 4 and qt.codes.dtype == np.uint8 and qt.codes.max() <= 15
    assert qt.params["absmax"].shape == (256, 512 // 64)
    assert qt.nbytes == w.size // 2 + 256 * 8 * 4  # two codes per byte plus one float32 per block of 64
    d = qt.dequantize()
    assert d.shape == w.shape and d.dtype == np.float32
    # each block's largest magnitude comes back exactly
    blocks, dblocks = w.reshape(-1, 64), d.reshape(-1, 64)
    i = np.abs(blocks).argmax(axis=1)
    np.testing.assert_array_equal(dblocks[np.arange(len(i)), i], blocks[np.arange(len(i)), i])


def test_nf4_beats_absmax_int4_on_normal_weights(nf4):
    """QLoRA's point: on normally distributed weights, NF4 has a lower error than absmax int4 (max|x| -> 7) at the
    same block size.  qcore's own symmetric int4 searches its scale over the full signed range and gets close."""
    w = weights(seed=1)
    nf = qcore.quantize(w, "nf4", group_size=64).dequantize()
    g = w.reshape(-1, 64)
    s = np.abs(g).max(axis=1, keepdims=True) / 7
    absmax_int4 = (np.clip(np.rint(g / s), -7, 7) * s).reshape(w.shape)
    assert np.mean((nf - w) ** 2) < 0.9 * np.mean((absmax_int4 - w) ** 2)
    lin = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=64).dequantize()
    assert np.mean((lin - w) ** 2) < 1.1 * np.mean((nf - w) ** 2)


def test_rebuilt_from_options(nf4):
    qt = qcore.quantize(weights((4, 128)), "nf4", bits=3, granularity="channel", axis=0)
    q = qcore.get_quantizer(qt.scheme, **qt.options)
    np.testing.assert_array_equal(q.decode(qt.codes, qt.params), qt.dequantize())


def test_bad_options(nf4):
    with pytest.raises(TypeError, match="symmetric"):
        qcore.get_quantizer("nf4", symmetric=True)
    with pytest.raises(ValueError, match="bits"):
        qcore.get_quantizer("nf4", bits=8)
    with pytest.raises(ValueError, match="group_size"):
        qcore.quantize(weights((4, 100)), "nf4")


# -- the lookup-table contract (a fused qcore.ops.qlinear path for plugin schemes) ------------------------------
@pytest.mark.parametrize("bits,opts", [(4, {}), (3, {"granularity": "channel", "axis": 0}), (2, {"granularity": "tensor"})])
def test_lookup_table_equals_decode(nf4, bits, opts):
    """table[<parameter index of the element>, code] is exactly what decode gives (docs/plugins.md)."""
    w = weights((16, 128), seed=bits)
    qt = qcore.quantize(w, "nf4", bits=bits, **opts)
    q = qt.quantizer
    table = q.lookup_table(qt.params)
    pshape = qt.params["absmax"].shape
    assert table.dtype == np.float32 and table.shape == pshape + (2**bits,)
    if opts.get("granularity") == "tensor":
        index = np.zeros(w.shape, np.intp)
    elif opts.get("granularity") == "channel":
        index = np.broadcast_to(np.arange(16)[:, None], w.shape)
    else:  # groups of 64 along the last axis
        index = np.arange(16)[:, None] * 2 + np.arange(128)[None, :] // 64
    codes = qt.codes.astype(np.intp) & (2**bits - 1)
    np.testing.assert_array_equal(table.reshape(-1, 2**bits)[index, codes], qt.dequantize())


def test_qlinear_runs_nf4_through_the_table(nf4):
    """qcore.ops.qlinear takes a plugin scheme that declares a lookup table: same result as the float product
    with the decoded weight, up to the int8 quantization of the activations."""
    ops = pytest.importorskip("qcore.ops")
    w = weights((48, 256), seed=5)
    qt = qcore.quantize(w, "nf4")
    x = np.random.default_rng(6).normal(size=(4, 256)).astype(np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    try:
        got = ops.qlinear(x, qt)
    except ValueError as exc:  # a qcore from before the low-bit qlinear takes only the linear scheme
        assert "'linear' scheme" in str(exc) and not hasattr(ops, "lowbit")
        return
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    plan = next((v for k, v in qt.cache.items() if "qlinear" in k), None)
    lowbit = getattr(plan, "lowbit", None)
    if lowbit is not None:  # the fused low-bit kernel with the 16-entry table, not the rows-at-a-time path
        assert lowbit.mode == "kernel" and lowbit.table is not None, lowbit


# -- the observer -------------------------------------------------------------------------------------------
def test_nsigma_clips_outliers(nf4):
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(64, 256)).astype(np.float32) for _ in range(4)]
    batches[2][5, 7] = 80.0  # one outlier
    ranges = {}
    for obs in ("minmax", "nsigma"):
        q = qcore.get_quantizer("linear", bits=8, symmetric=True, observer=obs)
        for b in batches:
            q.observe(b)
        x = batches[0]
        ranges[obs] = float(np.mean((q.quantize(x).dequantize() - x) ** 2))
    assert ranges["nsigma"] < ranges["minmax"] / 10


def test_nsigma_streaming_moments_match_numpy():
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=1.0, size=(8, 100)).astype(np.float32) for _ in range(5)]
    obs = NSigmaObserver(axis=0, k=2.0)
    for b in batches:
        obs.update(b)
    allx = np.concatenate(batches, axis=1).astype(np.float64)
    lo, hi = obs.range(8, False)
    np.testing.assert_allclose(lo, np.maximum(allx.mean(1) - 2 * allx.std(1), allx.min(1)), rtol=1e-5)
    np.testing.assert_allclose(hi, np.minimum(allx.mean(1) + 2 * allx.std(1), allx.max(1)), rtol=1e-5)
    with pytest.raises(ValueError):
        NSigmaObserver(k=-1)


# -- installed: through the entry point -----------------------------------------------------------------------
def _installed():
    try:
        importlib.metadata.distribution("qcore-plugin-example")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="qcore-plugin-example is not installed")
def test_found_through_the_entry_point():
    records = [r for r in qcore.plugins() if r.distribution == "qcore-plugin-example"]
    assert len(records) == 1
    rec = records[0]
    assert rec.version == "0.1.0" and not rec.builtin
    assert rec.schemes == ["nf4"] and rec.observers == ["nsigma"]
    assert sorted(rec.hooks) == ["qcore_observers", "qcore_quantizers"]
    assert qcore.quantize(weights((2, 64)), "nf4").scheme == "nf4"


@pytest.mark.skipif(not hasattr(qcore, "quantize_model"), reason="this qcore has no model layer")
def test_model_file_round_trip(nf4, tmp_path):
    tensors = {"layer.weight": weights((32, 128)), "layer.bias": weights((32,))}
    qm = qcore.quantize_model(tensors, scheme="nf4", progress=False)
    path = os.fspath(tmp_path / "m.safetensors")
    qm.save(path)
    back = qcore.load_quantized(path)
    a, b = qm.dequantize(), back.dequantize()
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
