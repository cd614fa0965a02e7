"""Kernel capabilities (docs/contracts.md §1): kernels declare what they implement, ``qcore.get_kernel`` finds one
by capability, ``qcore.ops`` reaches kernels only that way, and the conformance kit checks what is declared.

The third-party kernel here is written only to the documented contract (qcore/kernels/int8_gemm.py and
qcore/kernels/lowbit.py): its own numpy implementation of the int8 and low-bit GEMMs, checked against the
reference kernel and then serving ``qcore.ops.qlinear`` / ``qgemm`` end to end."""
import numpy as np
import pytest

import qcore
import qcore.ops as ops
from qcore.kernels import CAPABILITIES
from qcore.testing import check_kernel, checks_for


class _Int8:
    def __init__(self, codes, scale=None, zero_point=None):
        self.codes = np.array(codes)
        self.f = self.codes.astype(np.float64)  # exact: |sum| < 2**53
        self.scale, self.zero_point = scale, zero_point


class _Lowbit:
    def __init__(self, values, bits, scale, zero, group_size, tables):
        self.values, self.bits, self.scale, self.zero, self.gs, self.tables = values.copy(), bits, scale, zero, group_size, tables


class MatmulKernel(qcore.Kernel):
    """int8 and low-bit GEMMs in float64 numpy, from the documented arithmetic (not the reference's code)."""

    name = "test-matmul"
    priority = 1000  # above cython: the default for the capabilities it declares
    capabilities = frozenset({"int8_gemm", "lowbit_gemm"})

    # int8_gemm
    def _pack_int8(self, b):
        return _Int8(b)

    def _int8_info(self, p):
        if not isinstance(p, _Int8):
            raise self._foreign("packed", p)
        return p.codes.shape + (p.codes.dtype,)

    def _qgemm(self, a, p, za, zb):
        return ((a.astype(np.float64) - za[:, None]) @ (p.f - zb[:, None]).T).astype(np.int32)

    def _int8_weight(self, codes, scale, zero_point):
        return _Int8(codes, scale, zero_point)

    def _unpack_int8(self, p):
        return p.codes.copy()

    def _int8_linear(self, x2, p, bias):
        if not np.isfinite(x2).all():
            raise qcore.InputError("x holds NaN or Inf")
        lo = np.minimum(x2.min(axis=1), 0).astype(np.float32)
        hi = np.maximum(x2.max(axis=1), 0).astype(np.float32)
        s = ((hi.astype(np.float64) - lo) / 255).astype(np.float32)
        s = np.where(hi > lo, np.maximum(s, np.float32(1e-30)), np.float32(1)).astype(np.float32)
        inv = (np.float32(1) / s).astype(np.float32)
        z = np.clip(np.rint(-lo * inv), 0, 255)
        q = np.clip(np.rint(x2 * inv[:, None]) + z[:, None], 0, 255)
        acc = (q.astype(np.float64) - z[:, None]) @ (p.f - p.zero_point[:, None]).T
        y = acc.astype(np.float32) * p.scale * s[:, None]
        return (y + bias if bias is not None else y).astype(np.float32)

    # lowbit_gemm
    def _pack_lowbit(self, values, bits, scale, zero, group_size, table_bytes):
        return _Lowbit(values, bits, scale, zero, group_size, table_bytes)

    def _lowbit_shape(self, p):
        if not isinstance(p, _Lowbit):
            raise self._foreign("packed", p)
        return p.values.shape

    def _lowbit_scales(self, p):
        return np.array(p.scale, np.float32)

    def _unpack_lowbit(self, p, flip):
        return self.pack(p.values ^ np.uint8(flip), p.bits)

    def _lowbit_linear(self, x2, p, bias):
        if not np.isfinite(x2).all():
            raise qcore.InputError("x holds NaN or Inf")
        m, k = x2.shape
        n = p.values.shape[0]
        nb = -(-k // 32)
        xb = np.zeros((m, nb * 32), np.float32)
        xb[:, :k] = x2
        xb = xb.reshape(m, nb, 32)
        sa = (np.abs(xb).max(axis=2) / np.float32(127)).astype(np.float32)
        sa = np.where(sa >= np.float32(1e-30), sa, np.float32(0)).astype(np.float32)
        inv = np.where(sa > 0, np.float32(1) / np.where(sa > 0, sa, 1), 0).astype(np.float32)
        q = np.clip(np.rint(xb * inv[:, :, None]), -127, 127).reshape(m, -1)[:, :k]
        v = p.values.astype(np.float64)
        if p.tables is not None:  # v = t8 + 128 from the byte tables
            tb = p.tables.reshape(p.tables.shape[0], -1, 16)
            g = np.arange(k) // p.gs
            v = (tb[0, 0][p.values] if tb.shape[:2] == (1, 1) else tb[np.arange(n)[:, None], g[None, :], p.values]).astype(np.float64)
        ng = p.scale.shape[1]
        gsz = k if ng == 1 else p.gs
        w = np.repeat(p.scale.astype(np.float64), gsz, axis=1)[:, :k] * (v - np.repeat(p.zero.astype(np.float64), gsz, axis=1)[:, :k])
        xq = q * np.repeat(sa.astype(np.float64), 32, axis=1)[:, :k]
        y = xq @ w.T
        return (y + bias if bias is not None else y).astype(np.float32)


@pytest.fixture
def matmul_kernel(qcore_plugins):
    qcore_plugins.register(MatmulKernel)
    return qcore.get_kernel("test-matmul")


def test_the_reference_and_cython_declare_every_capability():
    for name in ("numpy", "cython"):
        k = qcore.get_kernel(name)
        assert k.capabilities == CAPABILITIES and all(k.supports(c) for c in CAPABILITIES)
        assert {c.name for c in checks_for(k)} >= {"check_kernel_int8_gemm", "check_kernel_qconv2d", "check_kernel_lowbit_linear"}
    assert qcore.get_kernel() is qcore.get_kernel("cython")
    for cap in CAPABILITIES:
        assert qcore.get_kernel(capability=cap) is qcore.get_kernel("cython")
        assert qcore.get_kernel("numpy", capability=cap).name == "numpy"


def test_kernel_not_found_by_capability():
    assert issubclass(qcore.KernelNotFound, qcore.SchemeNotFound)
    with pytest.raises(qcore.KernelNotFound, match="capabilities"):
        qcore.get_kernel(capability="no-such-capability")
    with pytest.raises(qcore.KernelNotFound, match="no kernel named"):
        qcore.get_kernel("no-such-kernel")


def test_a_partial_kernel_passes_the_kit_on_what_it_declares(matmul_kernel):
    names = {c.name for c in checks_for(MatmulKernel)}
    assert names == {"check_kernel_class_contract", "check_kernel_int8_gemm", "check_kernel_lowbit_linear"}
    results = check_kernel(MatmulKernel)
    assert all(r.status == "passed" for r in results), results
    # a broken implementation of a declared capability is caught, by name
    Broken = type("Broken", (MatmulKernel,), {"name": "test-broken", "_qgemm": lambda self, a, p, za, zb:
                                              MatmulKernel._qgemm(self, a, p, za, zb) + np.int32(1)})
    failed = {r.check for r in check_kernel(Broken, on_fail=None) if r.status == "failed"}
    assert failed == {"check_kernel_int8_gemm"}


def test_a_partial_kernel_serves_the_ops_by_capability(matmul_kernel):
    assert qcore.get_kernel(capability="int8_gemm") is matmul_kernel
    assert qcore.get_kernel(capability="lowbit_gemm") is matmul_kernel
    assert qcore.get_kernel().name == "cython"  # schemes keep the complete kernel
    with pytest.raises(qcore.KernelNotFound, match="does not declare"):
        qcore.get_kernel("test-matmul", capability="qconv2d")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    wf = rng.standard_normal((40, 96)).astype(np.float32)
    for opts, path in ((dict(bits=8, symmetric=True, granularity="channel"), "int8"),
                       (dict(bits=8, granularity="tensor"), "int8"),
                       (dict(bits=4, symmetric=True, granularity="group", group_size=32), "lowbit"),
                       (dict(bits=3, granularity="channel"), "lowbit")):
        w = qcore.quantize(wf, "linear", **opts)
        assert ops.qlinear_path(w) == path
        y = ops.qlinear(x, w, bias)
        plan = next(v for key, v in w.cache.items() if key.startswith("qcore.ops.qlinear/test-matmul"))
        assert (plan.kernel if path == "int8" else plan.lowbit.kernel) is matmul_kernel
        ref = ops.qlinear(x, w, bias, kernel="numpy")
        if path == "int8":
            np.testing.assert_array_equal(y, ref)
        else:
            np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
        np.testing.assert_allclose(y, x @ w.dequantize().T + bias, atol=0.03 * np.abs(ref).max())
    a = rng.integers(0, 256, (4, 96)).astype(np.uint8)
    b = rng.integers(-128, 128, (40, 96)).astype(np.int8)
    want = (a.astype(np.int64) - 3) @ b.astype(np.int64).T
    np.testing.assert_array_equal(ops.qgemm(a, b, 3), want)
    packed = ops.pack_weights(b)
    assert isinstance(packed, _Int8)  # the default int8 kernel packed it
    np.testing.assert_array_equal(ops.qgemm(a, packed, 3), want)
    with pytest.raises(TypeError, match="must come from kernel 'cython'"):
        ops.qgemm(a, packed, 3, kernel="cython")


def test_qlinear_with_the_numpy_kernel_is_the_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    for scheme, opts in (("linear", dict(bits=8, granularity="channel")), ("linear", dict(bits=8, symmetric=True)),
                         ("linear", dict(bits=4, granularity="group", group_size=32)), ("kmeans", dict(bits=4))):
        w = qcore.quantize(rng.standard_normal((24, 128)).astype(np.float32), scheme, **opts)
        ref = ops.qlinear(x, w, kernel="numpy")
        y = ops.qlinear(x, w)
        if ops.qlinear_path(w) == "int8":  # the int8 GEMM is bit for bit the int64 reference
            np.testing.assert_array_equal(y, ref)
        else:
            np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
        assert ops.qlinear_path(w, kernel="numpy") == ops.qlinear_path(w)


def test_packed_conv2d_on_the_reference_kernel_equals_cython():
    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float32)
    kw = dict(padding=1, input_scale=0.02, input_zero_point=120, relu=True)
    fast = ops.PackedConv2d(w, rng.uniform(0.01, 0.1, 6), rng.standard_normal(6), **kw)
    ref = ops.PackedConv2d(w, fast.weight_scale, fast.bias, kernel="numpy", **kw)
    assert fast.kernel.name == "cython" and ref.kernel.name == "numpy"
    np.testing.assert_array_equal(fast(x), ref(x))
    codes = fast.quantize_input(x)
    np.testing.assert_array_equal(codes, ref.quantize_input(x))
    for output, extra in (("int32", {}), ("uint8", dict(out_scale=0.05, out_zero_point=3))):
        np.testing.assert_array_equal(fast.run_codes(codes, output, **extra), ref.run_codes(codes, output, **extra))


def test_a_kernel_without_a_capability_cannot_serve_it(qcore_plugins):
    Affine = type("AffineOnly", (qcore.Kernel,), {"name": "test-affine-only", "capabilities": frozenset({"affine"})})
    qcore_plugins.register(Affine)
    w = qcore.quantize(np.ones((4, 8), np.float32), "linear", bits=8)
    with pytest.raises(qcore.KernelNotFound, match="neither int8_gemm nor lowbit_gemm"):
        ops.qlinear(np.ones((1, 8), np.float32), w, kernel="test-affine-only")
    with pytest.raises(qcore.KernelNotFound, match="qconv2d"):
        ops.PackedConv2d(np.ones((1, 1, 1, 1), np.int8), 1.0, input_scale=1.0, kernel="test-affine-only")


def test_a_broken_convolution_op_fails_its_check():
    class OffByOne(qcore.Kernel):
        name = "test-conv-off"
        capabilities = frozenset({"qconv2d"})

        def _cnn_maxpool(self, a, a_border, out, out_border, kernel, stride, padding, dilation):
            super()._cnn_maxpool(a, a_border, out, out_border, kernel, stride, padding, dilation)
            out[..., 0] ^= 1

    results = {r.check: r for r in check_kernel(OffByOne, on_fail=None)}
    assert set(results) == {"check_kernel_class_contract", "check_kernel_qconv2d"}
    assert results["check_kernel_qconv2d"].status == "failed" and "cnn_maxpool" in results["check_kernel_qconv2d"].message
