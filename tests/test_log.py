"""The ``log`` scheme: power-of-two levels, signs, zeros, documented error bounds, kernels, bad input."""
import threading

import numpy as np
import pytest

import qcore

KERNELS = ["cython", "numpy"]


def _data(shape=(32, 257), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=shape).astype(np.float32)
    x.flat[::17] = 0.0
    return x


def _levels(qt):
    return (1 << (qt.bits - 1)) - 1


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("rounding", ["nearest", "log2"])
def test_levels_are_powers_of_two_signs_kept_zeros_stay(kernel, bits, rounding):
    x = _data()
    qt = qcore.quantize(x, "log", bits=bits, rounding=rounding, kernel=kernel)
    d = qt.dequantize()
    L = _levels(qt)
    assert qt.codes.dtype == np.int8 and qt.codes.min() >= -L and qt.codes.max() <= L
    scale = float(qt.params["scale"].reshape(()))
    nz = d != 0
    e = np.log2(np.abs(d[nz]).astype(np.float64) / scale)
    assert np.array_equal(e, np.round(e)) and e.max() <= 0 and e.min() >= 1 - L
    assert np.all(np.sign(d[nz]) == np.sign(x[nz]))           # signs kept
    assert np.all(d[x == 0] == 0) and np.all(qt.codes[x == 0] == 0)  # zeros stay zero
    # decode is sign(c) * scale * 2^(|c| - L)
    c = qt.codes.astype(np.int64)
    want = np.where(c == 0, 0.0, np.sign(c) * scale * np.exp2(np.abs(c) - L)).astype(np.float32)
    assert np.array_equal(d, want)


@pytest.mark.parametrize("rounding,bound", [("nearest", 1 / 3), ("log2", np.sqrt(2) - 1)])
@pytest.mark.parametrize("method", ["range", "mse"])
def test_relative_error_inside_range_is_bounded(rounding, bound, method):
    x = _data((4096,), seed=1)
    qt = qcore.quantize(x, "log", bits=4, rounding=rounding, method=method)
    scale = float(qt.params["scale"].reshape(()))
    L = _levels(qt)
    inside = (np.abs(x) >= scale * 2.0 ** (1 - L)) & (np.abs(x) <= scale)
    assert inside.sum() > 1000
    rel = np.abs(qt.dequantize()[inside] - x[inside]) / np.abs(x[inside])
    assert rel.max() <= bound + 1e-6
    assert rel.max() > 0.8 * bound  # the bound is tight, not loose


def test_hand_worked_example():
    # bits=3: L=3 levels; method="range": scale = max|x| = 3, levels 0.75, 1.5, 3.
    # |x|/scale: 1 -> 1/3 (nearest of 1/4, 1/2 with threshold 3/8: 1/4); 0.5 -> 1/6 >= 1/8: smallest level;
    # 0.25 -> 1/12 < 1/8 (half the smallest level): zero.
    x = np.array([0.0, 1.0, -1.0, 0.5, 0.25, 3.0, -0.75, -2.3], np.float32)
    qt = qcore.quantize(x, "log", bits=3, method="range")
    assert qt.params["scale"].tolist() == [3.0]
    assert qt.codes.tolist() == [0, 1, -1, 1, 0, 3, -1, -3]
    assert qt.dequantize().tolist() == [0.0, 0.75, -0.75, 0.75, 0.0, 3.0, -0.75, -3.0]


def test_rounding_in_value_versus_log2():
    # scale 1 (max), levels 1/4, 1/2, 1: 0.72 lies above sqrt(2)/2 = 0.7071 but below 0.75
    x = np.array([1.0, 0.72, 0.70, 0.36, 0.34], np.float32)
    near = qcore.quantize(x, "log", bits=3, method="range", rounding="nearest").dequantize()
    log2 = qcore.quantize(x, "log", bits=3, method="range", rounding="log2").dequantize()
    assert near.tolist() == [1.0, 0.5, 0.5, 0.25, 0.25]
    assert log2.tolist() == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_two_bits_is_ternary():
    x = np.array([-2.0, -0.4, 0.0, 0.3, 1.5], np.float32)
    qt = qcore.quantize(x, "log", bits=2, method="range")
    assert qt.codes.tolist() == [-1, 0, 0, 0, 1]
    assert qt.dequantize().tolist() == [-2.0, 0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("opts", [
    {}, {"granularity": "channel"}, {"granularity": "channel", "axis": 1}, {"granularity": "channel", "axis": -1},
    {"granularity": "group", "group_size": 64}, {"rounding": "log2", "method": "range"}, {"bits": 7},
])
def test_cython_equals_numpy_reference(opts):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 8, 64)) * rng.uniform(0.01, 10, (16, 1, 1))).astype(np.float32)
    a = qcore.quantize(x, "log", kernel="cython", **opts)
    b = qcore.quantize(x, "log", kernel="numpy", **opts)
    assert np.array_equal(a.params["scale"], b.params["scale"])
    assert np.array_equal(a.codes, b.codes)
    assert np.array_equal(a.dequantize(), b.dequantize())


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
@pytest.mark.parametrize("rounding", ["nearest", "log2"])
def test_scale_search_error_equals_numpy_reference_on_every_isa(bits, rounding):
    """The squared error the ``mse`` scale search minimises: the vectorized C helper (levels built from
    exponent bits, eight fixed lanes) against the numpy reference (table of levels, numpy sum), for ordinary,
    tiny (levels underflow to subnormals and zero) and huge scales; every ISA variant gives the same bits."""
    from isa_levels import at_level, copy_levels
    from qcore_plugins import _codebook

    rng = np.random.default_rng(bits)
    x3 = (rng.laplace(size=(3, 5, 1001)) * rng.choice([1e-38, 1e-3, 1.0, 1e30], (3, 5, 1))).astype(np.float32)
    x3[0, 0, :7] = [0.0, -0.0, 1e-45, np.float32(3.4e38), -1e-40, 2.0**-126, 7.0]
    c, r = qcore.get_kernel("cython"), qcore.get_kernel("numpy")  # the kernels' log_sse (qcore/kernels/codebook.py)
    L = (1 << (bits - 1)) - 1
    for scale in (rng.uniform(0.1, 10, 5), np.full(5, 2.0**-100), np.full(5, 1e-30), np.full(5, 3e38)):
        scale = scale.astype(np.float32)
        want = r.log_sse(x3, scale, L, rounding, axis=1)
        got = []
        for isa in copy_levels(_codebook):
            with at_level(isa):
                assert _codebook.ISA.copy == isa
                got.append(c.log_sse(x3, scale, L, rounding, axis=1))
        for g in got:
            assert g.tobytes() == got[0].tobytes()
        np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="L must be in"):
        _codebook.log_sse(x3, np.ones(5, np.float32), 128, 0, np.float32(0.0))


def test_per_channel_scales_and_mse_beats_range():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((8, 512)) * np.exp2(np.arange(8))[:, None]).astype(np.float32)
    ch = qcore.quantize(x, "log", bits=4, granularity="channel")
    assert ch.params["scale"].shape == (8,)
    err = lambda qt: float(np.mean((qt.dequantize() - x) ** 2))
    assert err(ch) < err(qcore.quantize(x, "log", bits=4))
    for g in ("tensor", "channel"):
        assert err(qcore.quantize(x, "log", bits=4, granularity=g)) <= err(
            qcore.quantize(x, "log", bits=4, granularity=g, method="range"))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", ["range", "mse"])
def test_constants_come_back_exactly(kernel, method):
    for c in (-2.5, 0.0, 1e-30, 7.0):
        x = np.full((3, 5), c, np.float32)
        for g in ("tensor", "channel"):
            assert np.array_equal(qcore.quantize(x, "log", kernel=kernel, method=method, granularity=g).dequantize(), x)
    x = np.array([[1.5] * 4, [0.0] * 4, [-3.25] * 4], np.float32)
    assert np.array_equal(qcore.quantize(x, "log", granularity="channel", kernel=kernel).dequantize(), x)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["range", "mse"])
def test_non_finite_is_refused(kernel, bad, method):
    x = np.ones(100000, np.float32)
    x[77777] = bad
    with pytest.raises(qcore.InputError, match="NaN or Inf"):
        qcore.quantize(x, "log", kernel=kernel, method=method)
    q = qcore.get_quantizer("log", kernel=kernel)
    with pytest.raises(qcore.InputError):
        q.encode(x, {"scale": np.ones(1, np.float32)})


def test_empty_zero_d_and_layouts():
    e = qcore.quantize(np.zeros((0, 4), np.float32), "log")
    assert e.codes.shape == (0, 4) and e.dequantize().shape == (0, 4)
    z = qcore.quantize(np.float32(-0.375), "log", bits=4)
    assert z.shape == () and z.dequantize() == np.float32(-0.375)
    x = _data((64, 33))
    c = qcore.quantize(x, "log", granularity="channel", axis=1)
    f = qcore.quantize(np.asfortranarray(x), "log", granularity="channel", axis=1)
    s = qcore.quantize(np.repeat(x, 2, axis=1)[:, ::2], "log", granularity="channel", axis=1)
    assert np.array_equal(c.codes, f.codes) and np.array_equal(c.codes, s.codes)
    assert np.array_equal(qcore.quantize(x.astype(np.float64), "log").codes, qcore.quantize(x, "log").codes)


def test_bad_options():
    with pytest.raises(TypeError, match="unknown option"):
        qcore.get_quantizer("log", symmetric=True)
    with pytest.raises(ValueError, match="bits"):
        qcore.get_quantizer("log", bits=1)
    with pytest.raises(ValueError, match="bits"):
        qcore.get_quantizer("log", bits=9)
    with pytest.raises(ValueError, match="rounding"):
        qcore.get_quantizer("log", rounding="up")
    with pytest.raises(ValueError, match="method"):
        qcore.get_quantizer("log", method="best")
    with pytest.raises(ValueError, match="axis"):
        qcore.quantize(np.ones((2, 3), np.float32), "log", granularity="channel", axis=2)
    with pytest.raises(ValueError, match="scale"):
        qcore.get_quantizer("log").encode(np.ones(3, np.float32), {"scale": np.zeros(1, np.float32)})


def test_observer_calibration_sets_range():
    q = qcore.get_quantizer("log", bits=4, method="range")
    q.observe(np.array([-4.0, 2.0], np.float32))
    qt = q.quantize(np.array([8.0, 1.0, -0.5], np.float32))
    assert qt.params["scale"].tolist() == [4.0]
    assert qt.dequantize().tolist() == [4.0, 1.0, -0.5]  # 8 clamps to the top level


def test_threads_give_the_same_codes():
    x = _data((256, 1024), seed=5)
    want = qcore.quantize(x, "log", granularity="channel").codes
    got = [None] * 4

    def run(i):
        got[i] = qcore.quantize(x, "log", granularity="channel").codes

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert all(np.array_equal(g, want) for g in got)
