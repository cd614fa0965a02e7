"""The linear scheme's ``zero="minimum"`` parameterisation: ``x = q * scale + minimum`` (GGUF Q4_1's block form).

Checked against the formula itself written out in numpy (the arithmetic GGUF's reference dequantizer uses), against
the zero-point form on the same data, through GPTQ, the conformance kit and a qcore file round trip.
"""
import numpy as np
import pytest

import qcore
from qcore.testing import check_quantizer

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((48, 128)) * np.linspace(0.1, 3, 128)).astype(np.float32)


def _expand(p, gs):
    return np.asarray(p, np.float32).repeat(gs, axis=1)


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
def test_decode_is_q_times_scale_plus_minimum_in_float32(bits, scale_dtype):
    qt = qcore.quantize(W, "linear", bits=bits, granularity="group", group_size=32, zero="minimum", scale_dtype=scale_dtype)
    assert set(qt.params) == {"scale", "minimum"} and not qt.signed
    assert qt.params["scale"].dtype == qt.params["minimum"].dtype == np.dtype(scale_dtype)
    assert qt.codes.min() >= 0 and qt.codes.max() <= 2**bits - 1
    d, m = _expand(qt.params["scale"], 32), _expand(qt.params["minimum"], 32)
    ref = (d * qt.codes.astype(np.float32)) + m  # product rounded to float32, then the sum: two roundings
    assert np.array_equal(qt.dequantize(), ref)
    # the codes are the nearest steps of that grid (up to the float32 rounding of x - m)
    exact = np.clip(np.rint((W.astype(np.float64) - m) / d), 0, 2**bits - 1)
    assert np.abs(qt.codes - exact).max() <= 1 and np.mean(qt.codes != exact) < 1e-3
    # the grid spans each group's range: its error is at most half a step (plus the storage rounding of m)
    step = d.astype(np.float64)
    assert (np.abs(W - ref) <= 0.5 * step + np.abs(m - np.repeat(W.reshape(48, 4, 32).min(-1), 32, axis=1)) + 1e-6).all()


def test_the_minimum_grid_is_as_good_as_the_zero_point_grid():
    for bits in (3, 4):
        e_min = qcore.model.sqnr_db(W, qcore.quantize(W, "linear", bits=bits, granularity="group", group_size=32,
                                                      zero="minimum").dequantize())
        e_zp = qcore.model.sqnr_db(W, qcore.quantize(W, "linear", bits=bits, granularity="group", group_size=32).dequantize())
        assert e_min >= e_zp - 0.2, (bits, e_min, e_zp)


def test_constants_empty_and_bad_options():
    c = np.full((3, 32), -2.75, np.float32)
    qt = qcore.quantize(c, "linear", bits=4, granularity="group", group_size=32, zero="minimum")
    assert np.array_equal(qt.dequantize(), c)
    assert qcore.quantize(np.zeros((0,), np.float32), "linear", zero="minimum").dequantize().shape == (0,)
    with pytest.raises(ValueError, match="symmetric"):
        qcore.get_quantizer("linear", symmetric=True, zero="minimum")
    with pytest.raises(ValueError, match="zero must be one of"):
        qcore.get_quantizer("linear", zero="min")
    with pytest.raises(ValueError, match="65504"):
        qcore.quantize(np.array([[-1e5, 1.0]], np.float32), "linear", zero="minimum", scale_dtype="float16")
    with pytest.raises(qcore.InputError):
        qcore.quantize(np.array([np.nan, 1.0], np.float32), "linear", zero="minimum")
    big = np.array([-3e38, 3e38, 0.0], np.float32)  # a range wider than float32: finite values, last codes
    qt = qcore.quantize(big, "linear", bits=8, zero="minimum")
    assert np.isfinite(qt.dequantize()).all() and qt.codes[0] == 0 and qt.codes[1] == 255


@pytest.mark.parametrize("opts", [dict(bits=4, granularity="group", group_size=32, scale_dtype="float16"),
                                  dict(bits=3, granularity="channel"), dict(bits=8)])
def test_conformance_kit(opts):
    check_quantizer(qcore.get_quantizer("linear", zero="minimum", **opts))


def test_gptq_uses_the_minimum_grid_and_beats_rounding_on_the_output():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 128)).astype(np.float32) @ rng.standard_normal((128, 128)).astype(np.float32) * 0.3
    h = (x.T @ x / len(x)).astype(np.float32)
    opts = dict(bits=4, granularity="group", group_size=32, zero="minimum", scale_dtype="float16")
    g = qcore.gptq(W, h, "linear", **opts)
    r = qcore.quantize(W, "linear", **opts)
    assert set(g.params) == {"scale", "minimum"} and g.options["zero"] == "minimum"
    d, m = _expand(g.params["scale"], 32), _expand(g.params["minimum"], 32)
    assert np.array_equal(g.dequantize(), d * g.codes.astype(np.float32) + m)

    def out_err(qt):
        e = (W - qt.dequantize()).astype(np.float64)
        return float(np.einsum("ij,jk,ik->", e, h, e))

    assert out_err(g) < 0.8 * out_err(r)


def test_qcore_file_round_trip(tmp_path):
    qt = qcore.quantize(W, "linear", bits=4, granularity="group", group_size=32, zero="minimum", scale_dtype="float16")
    qcore.QModel({"w": qt}).save(tmp_path / "m.safetensors")
    back = qcore.load_quantized(tmp_path / "m.safetensors")["w"]
    assert back.options["zero"] == "minimum" and back.params["minimum"].dtype == np.float16
    assert np.array_equal(back.codes, qt.codes) and np.array_equal(back.dequantize(), qt.dequantize())
