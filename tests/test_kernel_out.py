"""``out=`` of quantize_affine / dequantize_affine: same values as a fresh array, checked arguments."""
import numpy as np
import pytest

import qcore


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_out_gives_the_same_values_as_a_new_array(kernel, axis):
    k = qcore.get_kernel(kernel)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 257)).astype(np.float32)
    c = 1 if axis is None else x.shape[axis]
    scale = rng.uniform(0.01, 0.05, c).astype(np.float32)
    zp = rng.integers(-5, 5, c).astype(np.int32)
    ref = k.quantize_affine(x, scale, zp, -128, 127, axis=axis)
    buf = np.full(x.shape, 99, np.int8)
    got = k.quantize_affine(x, scale, zp, -128, 127, axis=axis, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, ref)
    deq = k.dequantize_affine(ref, scale, zp, axis=axis)
    fbuf = np.full(x.shape, np.nan, np.float32)
    assert k.dequantize_affine(ref, scale, zp, axis=axis, out=fbuf) is fbuf
    np.testing.assert_array_equal(fbuf, deq)


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
def test_out_is_checked(kernel):
    k = qcore.get_kernel(kernel)
    x = np.ones((4, 6), np.float32)
    codes = np.ones((4, 6), np.uint8)
    with pytest.raises(ValueError, match="dtype"):
        k.quantize_affine(x, 0.1, 0, 0, 255, out=np.empty((4, 6), np.int8))  # uint8 codes expected
    with pytest.raises(ValueError, match="shape"):
        k.quantize_affine(x, 0.1, 0, 0, 255, out=np.empty((6, 4), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        k.quantize_affine(x, 0.1, 0, 0, 255, out=np.empty((6, 4), np.uint8).T)
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        k.dequantize_affine(codes, 0.1, 0, out=ro)
    with pytest.raises(TypeError):
        k.dequantize_affine(codes, 0.1, 0, out=[0.0] * 24)
    shared = np.zeros(24 * 5, np.uint8)
    src = shared[:24].reshape(4, 6)
    dst = shared[:96].view(np.float32).reshape(4, 6)
    with pytest.raises(ValueError, match="overlap"):
        k.dequantize_affine(src, 0.1, 0, out=dst)


@pytest.mark.parametrize("shape,dtype", [((3, 4), np.float32), ((0,), np.int8), ((1 << 20,), np.float32),
                                         ((1023, 1031, 5), np.uint8), (((1 << 23) + 5,), np.float32),
                                         ((3, 11, 1 << 20), np.int8)])
def test_new_array_is_an_empty_array_large_ones_on_a_huge_page_boundary(shape, dtype):
    from qcore.kernels.memory import ALIGN_MIN_BYTES, HUGE_PAGE, new_array

    a = new_array(shape, dtype)
    assert a.shape == shape and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable
    if a.nbytes >= ALIGN_MIN_BYTES:
        assert a.ctypes.data % HUGE_PAGE == 0
        assert a.base is not None and a.base.nbytes == a.nbytes + HUGE_PAGE
    else:
        assert a.flags.owndata
    a.reshape(-1)[-1:] = 7  # all of it is usable
    assert a.size == 0 or a.reshape(-1)[-1] == 7


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
def test_large_kernel_outputs_start_on_a_huge_page(kernel):
    k = qcore.get_kernel(kernel)
    x = np.linspace(-3, 3, 1 << 23, dtype=np.float32)  # 8 MiB of codes, 32 MiB of values
    codes = k.quantize_affine(x, np.float32(6 / 255), 0, -128, 127)
    values = k.dequantize_affine(codes, np.float32(6 / 255), 0)
    assert values.ctypes.data % (2 << 20) == 0
    np.testing.assert_allclose(values, x, atol=3 / 255 + 1e-6)
