"""Finite input never dequantizes to inf: near the float32 maximum the linear grid is kept inside float32's range."""
import numpy as np
import pytest

import qcore

FMAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("kernel", ["cython", "numpy"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_values_near_float32_max_stay_finite(kernel, bits, symmetric, granularity):
    x = np.array([[3.4e38, -3.4e38, 1.0, 3.0e38, -1e38, 0.0],
                  [FMAX, -FMAX, FMAX, 2.5, -FMAX, 1e30],
                  [FMAX, 0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=granularity, kernel=kernel)
    with np.errstate(over="raise"):  # not even an intermediate overflow in the decode
        d = qt.dequantize()
    assert np.isfinite(d).all(), d
    step = np.broadcast_to(np.asarray(qt.params["scale"], np.float64).reshape(-1, 1) if granularity == "channel"
                           else np.asarray(qt.params["scale"], np.float64).reshape(1, 1), x.shape)
    # within one grid step of the input (two for the 2-bit ternary grid, whose alpha is a least-squares fit)
    tol = (2.0 if bits == 2 and symmetric else 1.0) * step
    if not (bits == 2 and symmetric):
        assert (np.abs(d.astype(np.float64) - x.astype(np.float64)) <= tol * (1 + 1e-6)).all()


def test_the_grid_ends_are_the_largest_finite_ones():
    x = np.array([3.4e38, -3.4e38], np.float32)
    qt = qcore.quantize(x, "linear", bits=8)
    s = np.float32(qt.params["scale"].reshape(-1)[0])
    zp = int(np.asarray(qt.params["zero_point"]).reshape(-1)[0])
    span = np.float32(max(255 - zp, zp))
    assert np.isfinite(span * s) and not np.isfinite(span * np.nextafter(s, np.float32(np.inf)))
    d = qt.dequantize()
    assert np.isfinite(d).all() and d[0] > 3.3e38 and d[1] < -3.3e38


# -- the rounding differences docs/usage.md states -------------------------------------------------------------
def test_torch_adds_the_zero_point_before_rounding():
    torch = pytest.importorskip("torch")
    import warnings

    s = np.float32(0.25)
    x = (np.array([0.5, 2.5, -1.5, 7.5], np.float32) * s).astype(np.float32)  # exact ties x/s = k + 1/2
    k = qcore.get_kernel()
    for zp, differs in ((1, True), (77, True), (2, False), (128, False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.quantize_per_tensor(torch.from_numpy(x), float(s), zp, torch.quint8).int_repr().numpy()
        q = k.quantize_affine(x, np.array([s], np.float32), np.array([zp], np.int32), 0, 255, axis=None)
        assert (t.astype(int) != q.astype(int)).any() == differs, (zp, t, q)
        assert np.abs(t.astype(int) - q.astype(int)).max() <= 1
    # away from ties, and with the same scale, torch multiplies by the float32 reciprocal exactly as qcore does
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(1 << 16) * 40 * s).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.quantize_per_tensor(torch.from_numpy(y), float(s), 0, torch.qint8).int_repr().numpy()
    assert np.array_equal(t, k.quantize_affine(y, np.array([s], np.float32), np.array([0], np.int32), -128, 127, axis=None))


def test_onnx_quantize_linear_divides_where_qcore_multiplies():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    s = np.float32(0.472294)
    rng = np.random.default_rng(1)
    x = ((rng.integers(-100, 100, 1 << 14).astype(np.float32) + np.float32(0.5)) * s).astype(np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, [x.size])],
                          initializer=[helper.make_tensor("s", TensorProto.FLOAT, [], [float(s)]),
                                       helper.make_tensor("z", TensorProto.INT8, [], [0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    div = np.clip(np.rint(x / s), -128, 127)
    mul = np.clip(np.rint(x * (np.float32(1) / s)), -128, 127)
    q = qcore.get_kernel().quantize_affine(x, np.array([s], np.float32), np.array([0], np.int32), -128, 127, axis=None)
    assert (div != mul).mean() > 0.01  # the two roundings really disagree on these values
    assert np.array_equal(y, div) and np.array_equal(q, mul)
