"""qcore.ops.qlinear: dynamic per-row uint8 activations x linear-scheme weights, on every GEMM path."""
import threading

import numpy as np
import pytest

import qcore
import qcore.ops as ops
from isa_levels import at_level, copy_levels
from qcore.kernels import int8_gemm
from qcore.ops import gemm as gemm_mod
from qcore_plugins import _gemm

ISAS = copy_levels(_gemm)


def quantize_rows_ref(x):
    """The documented activation quantization, in numpy: per row, asymmetric uint8, half-to-even."""
    x = np.asarray(x, np.float32)
    lo = np.minimum(x.min(axis=1), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1), 0).astype(np.float32)
    scale = ((hi.astype(np.float64) - lo) / 255.0).astype(np.float32)
    scale = np.where(hi > lo, np.maximum(scale, np.float32(1e-30)), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / scale).astype(np.float32)
    zp = np.clip(np.rint(-lo * inv), 0, 255).astype(np.int32)
    q = np.clip(np.rint(x * inv[:, None]) + zp[:, None], 0, 255).astype(np.uint8)
    return q, scale, zp


def exact_ref(x, w, bias):
    """qlinear's result computed in float64 from the same quantized activations."""
    k = w.shape[1]
    x2 = np.asarray(x, np.float32).reshape(-1, k)
    q, s, z = quantize_rows_ref(x2)
    xq = (q.astype(np.float64) - z[:, None]) * s[:, None]
    y = xq @ w.dequantize().astype(np.float64).T
    if bias is not None:
        y = y + bias
    return y.reshape(*np.shape(x)[:-1], w.shape[0]), x2, s


WEIGHTS = {
    "sym8-channel": dict(bits=8, symmetric=True, granularity="channel", axis=0),
    "aff8-tensor": dict(bits=8, symmetric=False, granularity="tensor"),
    "aff8-channel": dict(bits=8, symmetric=False, granularity="channel", axis=0),
    "sym8-tensor": dict(bits=8, symmetric=True, granularity="tensor"),
}  # 8-bit per tensor / per channel: the int8 GEMM (fewer bits and groups: tests/test_lowbit.py)


def test_activation_quantization_matches_reference(isa):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 301)).astype(np.float32) * rng.uniform(0.01, 100, (37, 1)).astype(np.float32)
    x[3] = 0.0                # all zero row
    x[4] = np.abs(x[4])       # all positive: zero point 0
    x[5] = -np.abs(x[5])      # all negative: zero point 255
    x[6] = 1e-40              # denormal constant
    qr, sr, zr = quantize_rows_ref(x)
    # the cython kernel's extension and the numpy kernel's reference (qcore/kernels/int8_gemm.py)
    for q, s, z in (_gemm.quantize_rows(x), int8_gemm.quantize_rows(x)):
        np.testing.assert_array_equal(s, sr)
        np.testing.assert_array_equal(z, zr)
        np.testing.assert_array_equal(q, qr)


@pytest.mark.parametrize("kind", list(WEIGHTS))
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 67, 97), (64, 256, 48), (130, 384, 200)])
def test_matches_reference(isa, kind, m, k, n):
    rng = np.random.default_rng(m + k + n)
    w = qcore.quantize(rng.standard_normal((n, k)).astype(np.float32), "linear", **WEIGHTS[kind])
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = ops.qlinear(x, w, bias)
    assert y.dtype == np.float32 and y.shape == (m, n)
    r, _, _ = exact_ref(x, w, bias)
    np.testing.assert_allclose(y, r, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(r).max()))
    assert w.cache  # the packed weight is cached on the QTensor


@pytest.mark.parametrize("kind", ["sym8-channel", "aff8-tensor"])
def test_error_within_activation_quantization(isa, kind):
    rng = np.random.default_rng(1)
    n, k = 96, 512
    w = qcore.quantize(rng.standard_normal((n, k)).astype(np.float32), "linear", **WEIGHTS[kind])
    x = rng.standard_normal((2, 9, k)).astype(np.float32)
    y = ops.qlinear(x, w)
    wd = w.dequantize().astype(np.float64)
    exact = x.astype(np.float64) @ wd.T
    _, _, s = exact_ref(x, w, None)
    # each activation moves by at most half a step: |error| <= scale_row / 2 * sum_k |w_jk|
    bound = 0.5 * s.reshape(2, 9, 1) * np.abs(wd).sum(axis=1) * (1 + 1e-4) + 1e-4
    assert np.all(np.abs(y - exact) <= bound)
    rel = np.abs(y - exact).max() / np.abs(exact).max()
    assert rel < 0.02


def test_leading_shapes_and_1d(isa):
    rng = np.random.default_rng(2)
    w = qcore.quantize(rng.standard_normal((10, 24)).astype(np.float32), "linear", **WEIGHTS["sym8-channel"])
    x = rng.standard_normal((2, 3, 4, 24)).astype(np.float32)
    y = ops.qlinear(x, w)
    assert y.shape == (2, 3, 4, 10)
    np.testing.assert_allclose(y.reshape(-1, 10), ops.qlinear(x.reshape(-1, 24), w), rtol=0, atol=0)
    y1 = ops.qlinear(x[0, 0, 0], w)
    assert y1.shape == (10,)
    np.testing.assert_array_equal(y1, y[0, 0, 0])


def test_converted_and_strided_input(isa):
    rng = np.random.default_rng(3)
    w = qcore.quantize(rng.standard_normal((33, 40)).astype(np.float32), "linear", **WEIGHTS["aff8-channel"])
    x = rng.standard_normal((80, 40))
    y64 = ops.qlinear(x, w)                        # float64 is converted to float32
    y32 = ops.qlinear(x.astype(np.float32), w)
    np.testing.assert_array_equal(y64, y32)
    xs = x.astype(np.float32)[::2]                 # strided
    np.testing.assert_array_equal(ops.qlinear(xs, w), y32[::2])
    np.testing.assert_array_equal(ops.qlinear(np.asfortranarray(x.astype(np.float32)), w), y32)


def test_zero_rows_give_bias(isa):
    w = qcore.quantize(np.random.default_rng(4).standard_normal((20, 12)).astype(np.float32), "linear",
                       **WEIGHTS["aff8-tensor"])
    bias = np.arange(20, dtype=np.float32)
    y = ops.qlinear(np.zeros((3, 12), np.float32), w, bias)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (3, 20)))


@pytest.mark.parametrize("opts,mode", [
    (dict(bits=4, symmetric=True, granularity="group", group_size=16), "rows"),
    (dict(bits=8, granularity="channel", axis=1), "rows"),
    (dict(bits=1, symmetric=True), "kernel"),
    (dict(bits=2, symmetric=True, granularity="channel"), "kernel"),
    (dict(bits=4, symmetric=True, granularity="group", group_size=32), "kernel"),
])
def test_other_weight_kinds(isa, opts, mode):
    # not the int8 GEMM: the low-bit kernel or its rows path (tests/test_lowbit.py checks them in depth)
    rng = np.random.default_rng(5)
    w = qcore.quantize(rng.standard_normal((24, 64)).astype(np.float32), "linear", **opts)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    y = ops.qlinear(x, w)
    plan = gemm_mod._plan_for(w)
    assert plan.mode == "lowbit" and plan.lowbit.mode == mode
    exact = x @ w.dequantize().T
    if mode == "rows":
        np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(y, exact, rtol=0, atol=0.03 * np.abs(exact).max())


def test_cache_reused_and_per_isa():
    rng = np.random.default_rng(6)
    w = qcore.quantize(rng.standard_normal((40, 32)).astype(np.float32), "linear", **WEIGHTS["sym8-channel"])
    x = rng.standard_normal((4, 32)).astype(np.float32)
    y = ops.qlinear(x, w)
    p1 = gemm_mod._plan_for(w)
    ops.qlinear(x, w)
    assert gemm_mod._plan_for(w) is p1
    for name in ISAS:
        with at_level(name):
            np.testing.assert_allclose(ops.qlinear(x, w), y, rtol=1e-6, atol=1e-6)
    assert len([key for key in w.cache if key.startswith("qcore.ops.qlinear")]) == len(ISAS)


def test_the_plan_is_cached_on_the_qtensor():
    """The packed weights live in ``w.cache`` (every QTensor has one) and a second call reuses them."""
    rng = np.random.default_rng(7)
    w = qcore.quantize(rng.standard_normal((8, 16)).astype(np.float32), "linear", **WEIGHTS["sym8-channel"])
    x = rng.standard_normal((2, 16)).astype(np.float32)
    y = ops.qlinear(x, w)
    (key,) = [k for k in w.cache if k.startswith(gemm_mod._CACHE_KEY)]
    plan = w.cache[key]
    assert plan.mode == "int8" and plan.kernel is qcore.get_kernel(capability="int8_gemm")
    np.testing.assert_array_equal(ops.qlinear(x, w), y)
    assert w.cache[key] is plan and len(w.cache) == 1


def test_threads():
    rng = np.random.default_rng(8)
    w = qcore.quantize(rng.standard_normal((200, 300)).astype(np.float32), "linear", **WEIGHTS["aff8-channel"])
    xs = [rng.standard_normal((50 + i, 300)).astype(np.float32) for i in range(6)]
    want = [ops.qlinear(x, w) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(3):
            got[i] = ops.qlinear(xs[i], w)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, r in zip(got, want):
        np.testing.assert_array_equal(g, r)


def test_empty():
    w = qcore.quantize(np.ones((6, 4), np.float32), "linear", **WEIGHTS["sym8-channel"])
    assert ops.qlinear(np.zeros((0, 4), np.float32), w).shape == (0, 6)
    assert ops.qlinear(np.zeros((2, 0, 4), np.float32), w).shape == (2, 0, 6)


def test_bad_input():
    rng = np.random.default_rng(9)
    w = qcore.quantize(rng.standard_normal((6, 4)).astype(np.float32), "linear", **WEIGHTS["sym8-channel"])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x.copy()
        xb[1, 2] = bad
        with pytest.raises(qcore.InputError):
            ops.qlinear(xb, w)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        ops.qlinear(rng.standard_normal((3, 5)).astype(np.float32), w)
    with pytest.raises(ValueError):
        ops.qlinear(np.float32(1.0), w)
    with pytest.raises(TypeError, match="QTensor"):
        ops.qlinear(x, w.dequantize())
    with pytest.raises(TypeError):
        ops.qlinear(x.astype(np.complex64), w)
    class NoForm(qcore.Quantizer):  # a scheme that declares no decode form: qlinear decodes rows with decode()
        name = "no-form"

        def decode(self, codes, params):
            return (codes.astype(np.float32) * params["scale"].reshape(-1, 1)).astype(np.float32)

    other = qcore.QTensor(w.codes, "no-form", 8, w.params, {}, quantizer=NoForm(bits=8))
    assert other.decodes_as() is None
    np.testing.assert_allclose(ops.qlinear(x, other), x @ other.dequantize().T, rtol=1e-5, atol=1e-5)

    class Broken(NoForm):  # a scheme whose decode fails: its error comes through
        name = "broken"

        def decode(self, codes, params):
            raise ValueError("broken decode")

    with pytest.raises(ValueError, match="broken decode"):
        ops.qlinear(x, qcore.QTensor(w.codes, "broken", 8, w.params, {}, quantizer=Broken(bits=8)))
    with pytest.raises(ValueError, match="bias"):
        ops.qlinear(x, w, np.zeros(5, np.float32))
    with pytest.raises(qcore.InputError):
        ops.qlinear(x, w, np.full(6, np.nan, np.float32))
    w3 = qcore.quantize(rng.standard_normal((2, 3, 4)).astype(np.float32), "linear")
    with pytest.raises(ValueError, match="2-D"):
        ops.qlinear(x, w3)


@pytest.mark.parametrize("kind", ["sym8-channel", "aff8-tensor"])
def test_non_finite_detected_in_every_position(isa, kind):
    rng = np.random.default_rng(10)
    k = 37  # not a multiple of 16: the masked tail is checked too
    w = qcore.quantize(rng.standard_normal((9, k)).astype(np.float32), "linear", **WEIGHTS[kind])
    x = rng.standard_normal((70, k)).astype(np.float32)
    for row, col in [(0, 0), (69, k - 1), (33, 16), (5, 35)]:
        for bad in (np.nan, np.inf, -np.inf):
            xb = x.copy()
            xb[row, col] = bad
            with pytest.raises(qcore.InputError, match="NaN or Inf"):
                ops.qlinear(xb, w)
            with pytest.raises(qcore.InputError):
                ops.qlinear(xb.astype(np.float64), w)
    np.testing.assert_array_equal(ops.qlinear(x, w), ops.qlinear(x.copy(), w))  # clean input still fine


def test_non_finite_detected_on_float_path():
    rng = np.random.default_rng(11)
    w = qcore.quantize(rng.standard_normal((4, 32)).astype(np.float32), "linear", bits=4, granularity="group", group_size=16)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    x[2, 5] = np.nan
    with pytest.raises(qcore.InputError):
        ops.qlinear(x, w)


def test_non_finite_detected_on_large_input(isa):
    # large enough for the fused parallel path (rows quantized inside the GEMM's parallel region)
    rng = np.random.default_rng(12)
    w = qcore.quantize(rng.standard_normal((64, 600)).astype(np.float32), "linear", **WEIGHTS["sym8-channel"])
    x = rng.standard_normal((300, 600)).astype(np.float32)
    y = ops.qlinear(x, w)
    r, _, _ = exact_ref(x, w, None)
    np.testing.assert_allclose(y, r, rtol=2e-5, atol=2e-5 * np.abs(r).max())
    for row in (0, 150, 299):
        xb = x.copy()
        xb[row, 599] = np.inf
        with pytest.raises(qcore.InputError):
            ops.qlinear(xb, w)
