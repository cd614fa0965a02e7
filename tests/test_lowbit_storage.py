"""Linear low-bit storage (issue 13): no zero point when symmetric, float16 scales, the searched full-range scale."""
import os

import numpy as np
import pytest

import qcore
from qcore_plugins.schemes.linear import scale_divisors, search_scales_reference


def weights(shape=(64, 256), seed=0):
    return np.random.default_rng(seed).normal(scale=0.05, size=shape).astype(np.float32)


def bits_per_weight(qt):
    return 8 * qt.nbytes / qt.size


def test_symmetric_stores_no_zero_point_and_group32_fits_the_budgets():
    w = weights()
    q32 = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=32)
    q16 = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=32, scale_dtype="float16")
    assert set(q32.params) == {"scale"} and set(q16.params) == {"scale"}
    assert q32.params["scale"].dtype == np.float32 and q16.params["scale"].dtype == np.float16
    assert bits_per_weight(q32) == 5.0 and bits_per_weight(q16) == 4.5
    aff = qcore.quantize(w, "linear", bits=4, granularity="group", group_size=32)
    assert set(aff.params) == {"scale", "zero_point"}  # affine keeps its zero point


def test_float16_scales_decode_as_codes_times_the_stored_scale():
    w = weights(seed=1)
    for sym in (True, False):
        qt = qcore.quantize(w, "linear", bits=4, symmetric=sym, granularity="group", group_size=32, scale_dtype="float16")
        s = qt.params["scale"].astype(np.float32).reshape(64, 8, 1)
        zp = qt.params.get("zero_point", np.zeros((64, 8), np.int32)).reshape(64, 8, 1)
        ref = ((qt.codes.reshape(64, 8, 32).astype(np.float32) - zp) * s).reshape(w.shape)
        np.testing.assert_array_equal(qt.dequantize(), ref)
        # the codes are the nearest ones for the rounded scale (half a step, inside the range)
        f32 = qcore.quantize(w, "linear", bits=4, symmetric=sym, granularity="group", group_size=32)
        assert np.mean((qt.dequantize() - w) ** 2) <= 1.01 * np.mean((f32.dequantize() - w) ** 2)


def test_float16_scale_limits():
    with pytest.raises(ValueError, match="65504"):
        qcore.quantize(np.array([1e6, -3e6], np.float32), "linear", bits=4, symmetric=True, scale_dtype="float16")
    tiny = np.array([1e-9, -2e-9, 0.0, 5e-10], np.float32)
    qt = qcore.quantize(tiny, "linear", bits=4, symmetric=True, scale_dtype="float16")
    assert qt.params["scale"][0] != 0 and np.isfinite(qt.dequantize()).all()
    assert np.abs(qt.dequantize() - tiny).max() <= 2e-9
    with pytest.raises(ValueError, match="scale_dtype"):
        qcore.get_quantizer("linear", scale_dtype="bfloat16")
    with pytest.raises(TypeError, match="scale_dtype"):
        qcore.get_quantizer("linear", scale_dtype=np.float16)


def _rule_errors(g, s, qmin, qmax):
    q = np.clip(np.rint(g / s[:, None]), qmin, qmax)
    return ((q * s[:, None] - g) ** 2).sum(axis=1)


@pytest.mark.parametrize("bits", [3, 4])
def test_searched_scale_beats_narrow_and_q4_0_rules_per_group(bits):
    """Independent float64 references: the narrow rule (max|x| -> 2^(k-1)-1) and llama.cpp's Q4_0 rule (the value
    of largest magnitude -> -2^(k-1)); the search never loses to either, group by group, and wins overall."""
    w = np.random.default_rng(bits).laplace(size=(128, 256)).astype(np.float32)
    qt = qcore.quantize(w, "linear", bits=bits, symmetric=True, granularity="group", group_size=32)
    top = 1 << (bits - 1)
    g = w.reshape(-1, 32).astype(np.float64)
    got = ((qt.dequantize().reshape(-1, 32).astype(np.float64) - g) ** 2).sum(axis=1)
    amax = np.abs(g).max(axis=1)
    narrow = _rule_errors(g, amax / (top - 1), -(top - 1), top - 1)
    big = g[np.arange(len(g)), np.abs(g).argmax(axis=1)]
    q4_0 = _rule_errors(g, big / -top, -top, top - 1)
    assert np.all(got <= np.minimum(narrow, q4_0) * (1 + 1e-5) + 1e-12)
    assert got.sum() < 0.9 * narrow.sum()
    assert qt.codes.min() == -top  # the extra negative code is used


def test_search_kernel_equals_the_numpy_reference_bit_for_bit():
    from qcore_plugins import _scalesearch

    rng = np.random.default_rng(7)
    for length in (32, 7, 45, 300):
        rows = (rng.normal(size=(500, length)) * rng.uniform(1e-3, 10, size=(500, 1))).astype(np.float32)
        rows[3] = 0.0
        rows[4] = 1.5
        for bits in (3, 4):
            args = (scale_divisors(bits), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            s, e = _scalesearch.search_scales(rows, *args)
            rs, re = search_scales_reference(rows, *args)
            np.testing.assert_array_equal(s, rs)
            np.testing.assert_array_equal(e, re)
            assert s[3] == 1.0 and e[3] == 0.0


def test_search_kernel_bad_input():
    from qcore_plugins import _scalesearch

    with pytest.raises(ValueError, match="dgrid"):
        _scalesearch.search_scales(np.zeros((2, 4), np.float32), np.zeros(0, np.float32), -8, 7)
    with pytest.raises(ValueError, match="qmin"):
        _scalesearch.search_scales(np.zeros((2, 4), np.float32), scale_divisors(4), 0, 15)
    with pytest.raises(ValueError):  # not C-contiguous float32
        _scalesearch.search_scales(np.zeros((4, 2), np.float32).T, scale_divisors(4), -8, 7)


def test_eight_bit_symmetric_stays_narrow_for_the_int8_gemm():
    w = np.random.default_rng(3).normal(size=(32, 64)).astype(np.float32)
    w[0, 0] = -10.0  # a large negative outlier would map to -128 under a full-range rule
    for gran in ("tensor", "channel", "group"):
        qt = qcore.quantize(w, "linear", bits=8, symmetric=True, granularity=gran, group_size=32)
        assert qt.codes.min() >= -127


def test_calibrated_symmetric_four_bit_uses_the_observed_range():
    q = qcore.get_quantizer("linear", bits=4, symmetric=True)
    q.observe(np.array([-2.0, 1.0], np.float32))
    qt = q.quantize(np.array([0.5, -3.0, 2.0], np.float32))
    assert qt.params["scale"][0] == np.float32(2.0 / 7)
    assert qt.codes.tolist() == [2, -8, 7]  # the full range: -3.0 clamps to -8, not -7


def test_negative_scales_through_qlinear_and_files(tmp_path):
    w = np.random.default_rng(4).normal(size=(48, 64)).astype(np.float32)
    qt = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="channel")
    assert (qt.params["scale"] < 0).any()  # some channels' largest magnitude is positive
    x = np.random.default_rng(5).normal(size=(5, 64)).astype(np.float32)
    ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    got = qcore.ops.qlinear(x, qt)
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    qm = qcore.QModel()
    qm["w"] = qt
    qm["h"] = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=32,
                             scale_dtype="float16")
    path = os.fspath(tmp_path / "m.safetensors")
    qm.save(path)
    back = qcore.load_quantized(path)
    for name in ("w", "h"):
        np.testing.assert_array_equal(back[name].dequantize(), qm[name].dequantize())
        assert back[name].params["scale"].dtype == qm[name].params["scale"].dtype
        assert set(back[name].params) == {"scale"} and back[name].nbytes == qm[name].nbytes
    assert back["h"].options["scale_dtype"] == "float16"
