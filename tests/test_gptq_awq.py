"""qcore.ptq.awq: activation-aware scaling, checked on inputs whose channels differ in magnitude.

References: round to nearest and qcore.gptq on the same weights; the output error ``||X (W - W')^T||^2``
measured on held-out samples of the same distribution (never the calibration samples); an input scale that
is the same for every channel must change nothing.
"""
import numpy as np
import pytest

import qcore
from qcore.ptq import hessian, output_error
from qcore.ptq.awq import awq, awq_scales

K = 256


def salient_inputs(m, seed, k=K):
    """Independent channels whose magnitudes are log-normal (a few channels carry most of the signal)."""
    scale = np.exp(np.random.default_rng(5).normal(size=k))
    return (np.random.default_rng(seed).normal(size=(m, k)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = salient_inputs(2048, seed=0)
    held = salient_inputs(2048, seed=1)
    w = np.random.default_rng(2).normal(size=(64, K)).astype(np.float32)
    return dict(x=x, h=hessian(x), abs_mean=np.abs(x).mean(axis=0), h_held=hessian(held), w=w)


@pytest.mark.parametrize("scheme,opts,limit", [
    ("linear", dict(bits=4, granularity="group", group_size=64, symmetric=False), 0.7),
    ("linear", dict(bits=3, granularity="group", group_size=64, symmetric=False), 0.7),
    ("linear", dict(bits=4, granularity="channel", symmetric=True), 0.8),
    ("log", dict(bits=4, granularity="channel"), 0.8),
])
def test_awq_lowers_the_held_out_output_error(data, scheme, opts, limit):
    w = data["w"]
    qt, s = awq(w, data["h"], scheme, act_scale=data["abs_mean"], **opts)
    assert qt.scheme == scheme and qt.codes.shape == w.shape and s.shape == (K,) and (s > 0).all()
    # the stored weight is the scheme's own round to nearest of W * s
    np.testing.assert_array_equal(qt.codes, qcore.quantize(w * s[None, :], scheme, **opts).codes)
    rtn = qcore.quantize(w, scheme, **opts).dequantize()
    ratio = output_error(w, qt.dequantize() / s[None, :], data["h_held"]) / output_error(w, rtn, data["h_held"])
    assert ratio < limit, ratio


def test_awq_is_never_worse_than_rtn_on_the_calibration_objective(data):
    # alpha = 0 (s = 1, round to nearest) is on the grid; the search keeps the least calibration error
    w = data["w"]
    for opts in (dict(bits=3, granularity="group", group_size=32), dict(bits=4, granularity="tensor")):
        qt, s = awq(w, data["h"], "linear", act_scale=data["abs_mean"], grid=4, **opts)
        rtn = qcore.quantize(w, "linear", **opts).dequantize()
        assert output_error(w, qt.dequantize() / s, data["h"]) <= output_error(w, rtn, data["h"]) * (1 + 1e-6)


def test_uniform_channels_give_round_to_nearest(data):
    w = data["w"]
    opts = dict(bits=4, granularity="group", group_size=64)
    qt, s = awq(w, data["h"], "linear", act_scale=np.full(K, 3.0), **opts)
    np.testing.assert_array_equal(s, np.ones(K, np.float32))
    np.testing.assert_array_equal(qt.codes, qcore.quantize(w, "linear", **opts).codes)


def test_scales_and_default_activation_scale(data):
    a = data["abs_mean"].astype(np.float64)
    s = awq_scales(a, 0.5)
    np.testing.assert_allclose(s, np.sqrt(a) / np.sqrt(np.sqrt(a).max() * np.sqrt(a).min()), rtol=1e-12)
    assert awq_scales(np.array([0.0, 2.0, 8.0]), 1.0)[0] == 1.0  # a dead channel keeps s = 1
    # without act_scale the RMS sqrt(diag H) stands in for mean |x| (same ordering of the channels)
    qt, s = awq(data["w"], data["h"], "linear", bits=4, granularity="group", group_size=64)
    assert np.corrcoef(np.log(s), np.log(a))[0, 1] > 0.99


def test_awq_with_gptq_and_clip(data):
    w, h, held = data["w"], data["h"], data["h_held"]
    opts = dict(bits=3, granularity="group", group_size=64, symmetric=False)
    rtn = output_error(w, qcore.quantize(w, "linear", **opts).dequantize(), held)
    plain_q, plain_s = awq(w, h, "linear", act_scale=data["abs_mean"], **opts)
    plain = output_error(w, plain_q.dequantize() / plain_s, held)
    clip_q, clip_s = awq(w, h, "linear", act_scale=data["abs_mean"], clip_search=True, **opts)
    np.testing.assert_array_equal(clip_s, plain_s)  # the clip search comes after the scale is chosen
    assert output_error(w, clip_q.dequantize() / clip_s, held) < plain
    g_q, g_s = awq(w, h, "linear", act_scale=data["abs_mean"], gptq=True, gptq_options={"block_size": 64}, **opts)
    np.testing.assert_array_equal(g_s, plain_s)
    # GPTQ on W * s with the scaled input's Hessian H / (s s^T): the same as qcore.gptq called by hand
    s64 = g_s.astype(np.float64)
    ref = qcore.gptq(w * g_s[None, :], h / np.outer(s64, s64), "linear", block_size=64, **opts)
    np.testing.assert_array_equal(g_q.codes, ref.codes)
    assert output_error(w, g_q.dequantize() / g_s, held) < rtn


def test_bad_input(data):
    w, h = data["w"], data["h"]
    with pytest.raises(ValueError, match="act_scale"):
        awq(w, h, act_scale=np.ones(K - 1))
    with pytest.raises(ValueError, match=">= 0"):
        awq(w, h, act_scale=-np.ones(K))
    with pytest.raises(qcore.InputError, match="NaN"):
        awq(w, h, act_scale=np.full(K, np.nan))
    with pytest.raises(ValueError, match="grid"):
        awq(w, h, grid=0)
    with pytest.raises(ValueError, match=r"shape \(256, 256\)"):
        awq(w, np.eye(8))
    with pytest.raises(TypeError, match="planner"):
        awq(w, h, "mixed")
