"""The linear scheme: the worked example, formulas, granularities, 1/2-bit, round-trip bounds, kernels agree."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qcore

KERNELS = ["numpy", "cython"]


def kernels():
    return [k for k in KERNELS if k in qcore.list_kernels()]


def test_cython_kernel_is_the_default():
    assert "cython" in qcore.list_kernels(), "the Cython extension did not build or load"
    assert qcore.get_kernel().name == "cython"
    assert qcore.get_kernel("numpy").name == "numpy"


@pytest.mark.parametrize("kernel", KERNELS)
def test_reference_article_worked_example(kernel):
    # the textbook worked example [0.2, -0.5, 1.3, 2.1, -1.6] at 8-bit affine, arithmetic slips corrected: Q(2.1) is 255, never 256
    x = np.array([0.2, -0.5, 1.3, 2.1, -1.6], np.float32)
    qt = qcore.quantize(x, "linear", bits=8, kernel=kernel)
    assert qt.params["scale"][0] == np.float32(3.7 / 255)
    assert qt.params["zero_point"][0] == 110
    assert qt.codes.dtype == np.uint8
    np.testing.assert_array_equal(qt.codes, [124, 76, 200, 255, 0])
    np.testing.assert_allclose(qt.dequantize(), x, atol=np.float32(3.7 / 255) / 2 + 1e-7)
    # hand-computed dequantized values: scale * (q - 110)
    np.testing.assert_allclose(qt.dequantize(), (np.array([124, 76, 200, 255, 0]) - 110) * (3.7 / 255), rtol=1e-6)


def test_symmetric_formula_by_hand():
    x = np.array([0.5, -1.27, 0.01, 1.0], np.float32)
    qt = qcore.quantize(x, "linear", bits=8, symmetric=True)
    scale = np.float32(1.27 / 127)
    assert qt.params["scale"][0] == scale
    assert qt.codes.dtype == np.int8
    np.testing.assert_array_equal(qt.codes, np.rint(x * (np.float32(1) / scale)).astype(np.int8))
    assert qt.codes.min() >= -127  # narrow range: -128 never produced


def test_rounding_is_half_to_even():
    # scale 1 (range [0, 255] at 8 bits): ties go to the even code
    x = np.array([0.0, 0.5, 1.5, 2.5, 254.5, 255.0], np.float32)
    qt = qcore.quantize(x, "linear", bits=8)
    assert qt.params["scale"][0] == 1.0
    np.testing.assert_array_equal(qt.codes, [0, 0, 2, 2, 254, 255])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("granularity,axis", [("channel", 0), ("channel", 1), ("channel", -1), ("group", 0)])
def test_granularity_params_match_a_per_slice_loop(kernel, granularity, axis):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 8, 16)).astype(np.float32) * rng.uniform(0.1, 3, size=(6, 1, 1)).astype(np.float32)
    q = qcore.get_quantizer("linear", bits=4, granularity=granularity, axis=axis, group_size=8, kernel=kernel)
    qt = q.quantize(w)
    if granularity == "channel":
        assert qt.params["scale"].shape == (w.shape[axis],)
        slices = [np.take(w, i, axis=axis) for i in range(w.shape[axis])]
        codes = [np.take(qt.codes, i, axis=axis) for i in range(w.shape[axis])]
    else:
        assert qt.params["scale"].shape == (6, 8, 2)
        slices = list(w.reshape(-1, 8))
        codes = list(qt.codes.reshape(-1, 8))
    for i, (s, c) in enumerate(zip(slices, codes)):
        one = qcore.quantize(s, "linear", bits=4, kernel=kernel)  # per-tensor on the slice
        assert one.params["scale"][0] == qt.params["scale"].reshape(-1)[i]
        np.testing.assert_array_equal(one.codes, c)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_in_declared_range_and_nbytes(bits, symmetric):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(33, 7)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity="channel")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    assert qt.codes.min() >= lo and qt.codes.max() <= hi
    assert ("zero_point" in qt.params) == (not symmetric)  # symmetric tensors store no zero point
    assert qt.nbytes == (x.size * bits + 7) // 8 + sum(p.nbytes for p in qt.params.values())
    packed = qt.pack()
    assert packed.size == (x.size * bits + 7) // 8
    back = qcore.QTensor.from_packed(packed, qt.shape, "linear", bits, qt.params, qt.options, signed=qt.signed)
    np.testing.assert_array_equal(back.codes, qt.codes)
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())


def test_binary_alpha_is_least_squares():
    rng = np.random.default_rng(1)
    x = rng.normal(size=1000).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=1, symmetric=True)
    alpha = qt.params["scale"][0]
    assert alpha == pytest.approx(np.abs(x).mean(), rel=1e-5)
    np.testing.assert_array_equal(qt.dequantize(), np.where(x >= 0, alpha, -alpha))

    def err(a):
        return float(np.sum((x - a * np.sign(x)) ** 2))

    assert err(alpha) <= min(err(alpha * 0.99), err(alpha * 1.01))


def test_ternary_is_the_exact_least_squares_optimum():
    rng = np.random.default_rng(2)
    x = rng.laplace(size=300).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=2, symmetric=True)
    assert set(np.unique(qt.codes)) <= {-1, 0, 1}
    got = float(np.sum((x - qt.dequantize()) ** 2))
    # brute force over thresholds: keep the m largest |x|, alpha = their mean
    a = np.sort(np.abs(x.astype(np.float64)))[::-1]
    best = min(float(np.sum(a[m:] ** 2) + np.sum((a[:m] - a[:m].mean()) ** 2)) for m in range(1, a.size + 1))
    assert got <= best * (1 + 1e-5)


@pytest.mark.parametrize("bits,symmetric", [(1, False), (1, True), (2, True), (3, True), (8, False), (8, True)])
@pytest.mark.parametrize("c", [0.0, 0.1, -0.1, 3.75, -1e-3, 1e20])
def test_constant_tensor_comes_back_exactly(bits, symmetric, c):
    x = np.full((4, 5), c, np.float32)
    for gran in ("tensor", "channel"):
        qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=gran)
        np.testing.assert_array_equal(qt.dequantize(), x)


def test_per_channel_constant_rows_and_zero_rows():
    x = np.array([[0, 0, 0], [1, 1, 1], [-2, -2, -2], [1, 2, 3]], np.float32)
    qt = qcore.quantize(x, "linear", bits=8, granularity="channel")
    np.testing.assert_array_equal(qt.dequantize()[:3], x[:3])


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=finite),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    gran=st.sampled_from(["tensor", "channel"]),
)
def test_round_trip_error_at_most_half_a_step(x, bits, symmetric, gran):
    if symmetric and bits == 2:
        bits = 3  # 2-bit symmetric is ternary least squares, not a range quantizer
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=gran, axis=0)
    full = symmetric and bits in (3, 4)  # full signed range, searched scale (may clip the largest values)
    lo, hi = (-(1 << (bits - 1)) + (0 if full else 1), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    assert qt.codes.min() >= lo and qt.codes.max() <= hi
    scale = qt.params["scale"].astype(np.float64)
    if gran == "channel":
        scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    err = np.abs(qt.dequantize().astype(np.float64) - x)
    # inside the range the error is at most half a step (plus float32 rounding of the products); a value
    # the searched scale clips is off by its distance to the range's end
    clip = 0.0
    if full:
        ends = np.stack(np.broadcast_arrays(lo * scale, hi * scale))
        clip = np.maximum(0, np.maximum(x - ends.max(0), ends.min(0) - x))
    bound = np.abs(scale) / 2 + clip + 1e-6 * np.abs(x) + 1e-30
    assert np.all(err <= bound * (1 + 1e-5))


@settings(max_examples=100, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=12),
                 elements=st.floats(float(np.float32(-1e30)), float(np.float32(1e30)), allow_nan=False, allow_infinity=False, width=32)),
    bits=st.integers(1, 8),
    symmetric=st.booleans(),
    gran=st.sampled_from(["tensor", "channel"]),
)
def test_cython_equals_numpy_reference_bit_for_bit(x, bits, symmetric, gran):
    ref = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=gran, axis=-1, kernel="numpy")
    got = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=gran, axis=-1, kernel="cython")
    np.testing.assert_array_equal(got.codes, ref.codes)
    for k in ref.params:
        np.testing.assert_array_equal(got.params[k], ref.params[k])
    np.testing.assert_array_equal(got.dequantize(), ref.dequantize())
    np.testing.assert_array_equal(got.pack(), ref.pack(kernel="numpy"))


def test_large_tensor_cython_equals_numpy_multithreaded():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((512, 1024)) * 3).astype(np.float32)
    x[::7, ::5] = np.float32(0.5) * np.float32(3.0 / 127)  # values landing near ties
    for gran, axis in (("tensor", 0), ("channel", 0), ("channel", 1), ("group", 0)):
        ref = qcore.quantize(x, "linear", bits=8, symmetric=True, granularity=gran, axis=axis, group_size=64, kernel="numpy")
        got = qcore.quantize(x, "linear", bits=8, symmetric=True, granularity=gran, axis=axis, group_size=64)
        np.testing.assert_array_equal(got.codes, ref.codes)
        np.testing.assert_array_equal(got.dequantize(), ref.dequantize())


def test_noncontiguous_and_fortran_inputs_give_the_same_result():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(20, 30)).astype(np.float32)
    ref = qcore.quantize(base.copy(), "linear", bits=8, granularity="channel")
    fortran = np.asfortranarray(base)
    np.testing.assert_array_equal(qcore.quantize(fortran, "linear", bits=8, granularity="channel").codes, ref.codes)
    strided = np.zeros((40, 30), np.float32)
    strided[::2] = base
    np.testing.assert_array_equal(qcore.quantize(strided[::2], "linear", bits=8, granularity="channel").codes, ref.codes)
    t = qcore.quantize(base.T, "linear", bits=8, granularity="channel", axis=1)
    np.testing.assert_array_equal(t.codes, ref.codes.T)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.uint8, np.int64, bool])
def test_other_dtypes_are_converted_to_float32(dtype):
    x = np.array([[0, 1, 2], [3, 4, 5]]).astype(dtype)
    qt = qcore.quantize(x, "linear", bits=8)
    np.testing.assert_allclose(qt.dequantize(), x.astype(np.float32), atol=qt.params["scale"][0] / 2)
    assert qt.dtype == np.dtype(dtype).name


def test_lists_and_zero_d_and_empty():
    qt = qcore.quantize([[1.0, -2.0], [0.5, 0.25]], "linear", bits=8)
    assert qt.shape == (2, 2)
    z = qcore.quantize(np.float32(1.5), "linear")
    assert z.shape == () and z.dequantize() == np.float32(1.5)
    e = qcore.quantize(np.zeros((0, 4), np.float32), "linear", granularity="channel", axis=1)
    assert e.shape == (0, 4) and e.dequantize().shape == (0, 4) and e.codes.size == 0


def test_calibrated_range_is_used_for_activations():
    q = qcore.get_quantizer("linear", bits=8)
    q.observe(np.array([-1.0, 1.0], np.float32))
    q.observe(np.array([2.0, -0.5], np.float32))
    qt = q.quantize(np.array([0.0, 5.0], np.float32))  # 5.0 is outside the calibrated range: clamps
    assert qt.params["scale"][0] == np.float32(3.0 / 255)
    assert qt.codes[1] == 255
    assert qt.dequantize()[1] == pytest.approx(2.0, abs=3.0 / 255)


def test_qtensor_round_trips_through_get_quantizer_and_options():
    x = np.random.default_rng(5).normal(size=(8, 16)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=4, symmetric=True, granularity="group", group_size=4)
    q2 = qcore.get_quantizer(qt.scheme, **qt.options)
    np.testing.assert_array_equal(q2.decode(qt.codes, qt.params), qt.dequantize())
    assert "bits=4" in repr(qt)
