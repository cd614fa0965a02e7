"""The uint8 operations of a static CNN (qcore.ops.cnn) equal the numpy reference (qcore/kernels/conv_reference.py)
bit for bit, on every instruction-set path, with borders around inputs and outputs."""
import math

import numpy as np
import pytest

import qcore
from qcore.kernels import conv_reference as ref
from qcore.ops import cnn


def _codes(rng, b, c, h, w, border=(0, 0), scale=0.05, zp=None):
    """Random Codes with a border (filled with the zero point) and padded channels holding garbage."""
    zp = int(rng.integers(0, 256)) if zp is None else zp
    cp = -(-c // 4) * 4
    buf = rng.integers(0, 256, (b, h + 2 * border[0], w + 2 * border[1], cp), dtype=np.uint8)
    a = cnn.Codes(buf, c, scale, zp, border)
    return a, a.interior()[..., :c].copy()


def _interior(a):
    return a.interior()[..., :a.channels]


def _check_border(a):
    (bh, bw), (h, w) = a.border, a.size
    mask = np.ones(a.codes.shape[1:3], bool)
    mask[bh:bh + h, bw:bw + w] = False
    assert (a.codes[:, mask] == a.zero_point).all()


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 64, 4, 4), (3, 3, 1, 17)])
@pytest.mark.parametrize("clamp", [None, (0.0, math.inf), (0.0, 6.0)])
def test_add_matches_reference(isa, shape, clamp):
    rng = np.random.default_rng(sum(shape))
    b, c, h, w = shape
    a, qa = _codes(rng, b, c, h, w, (1, 2), scale=0.07)
    bb, qb = _codes(rng, b, c, h, w, (0, 0), scale=0.031)
    s, z = 0.09, int(rng.integers(0, 256))
    out = cnn.add(a, bb, s, z, clamp=clamp, border=(2, 1))
    lo, hi = cnn.code_bounds(*(clamp or (-math.inf, math.inf)), s, z)
    want = ref.add(qa, a.zero_point, np.float32(a.scale / s), qb, bb.zero_point, np.float32(bb.scale / s), z, lo, hi)
    np.testing.assert_array_equal(_interior(out), want)
    assert out.shape == a.shape and out.scale == s and out.zero_point == z
    _check_border(out)
    # the result is the float sum requantized (to half a step, plus the two inputs' own rounding of ma, mb)
    fa, fb = (qa.astype(np.float64) - a.zero_point) * a.scale, (qb.astype(np.float64) - bb.zero_point) * bb.scale
    y = fa + fb
    if clamp is not None:
        y = np.clip(y, *clamp)
    exp = np.clip(np.rint(y / s) + z, 0, 255)
    assert np.abs(_interior(out).astype(np.int64) - exp).max() <= 1


@pytest.mark.parametrize("k,s,p,d,ceil", [(3, 2, 1, 1, False), (2, 2, 0, 1, False), (3, 1, 1, 1, False),
                                          (3, 2, 1, 1, True), ((2, 3), (1, 2), (1, 0), (2, 1), True),
                                          (1, 3, 0, 1, False)])
def test_max_pool_matches_reference_and_torch(isa, k, s, p, d, ceil):
    rng = np.random.default_rng(3)
    a, q = _codes(rng, 2, 6, 11, 9, (1, 1))
    out = cnn.max_pool2d(a, k, s, p, d, ceil, border=(1, 0))
    kk, ss, pp, dd = (cnn._pair(v, "v", 0) for v in (k, s, p, d))
    want = ref.max_pool2d(q, kk, ss, pp, dd, out.size)
    np.testing.assert_array_equal(_interior(out), want)
    _check_border(out)


@pytest.mark.parametrize("k,s,p,ceil,include,override", [(3, 2, 1, False, True, None), (3, 2, 1, False, False, None),
                                                         (2, 2, 0, True, True, None), (3, 1, 1, True, True, 5),
                                                         ((3, 2), (2, 1), (1, 1), True, False, None)])
def test_avg_pool_matches_reference_and_torch(isa, k, s, p, ceil, include, override):
    rng = np.random.default_rng(4)
    a, q = _codes(rng, 2, 7, 9, 10, (0, 1), scale=0.1, zp=37)
    out = cnn.avg_pool2d(a, k, s, p, ceil, include, override, border=(1, 1))
    kk, ss, pp = (cnn._pair(v, "v", 0) for v in (k, s, p))
    want = ref.avg_pool2d(q, a.zero_point, kk, ss, pp, out.size, include, override)
    np.testing.assert_array_equal(_interior(out), want)
    _check_border(out)


@pytest.mark.parametrize("size,out_size", [((7, 7), (1, 1)), ((9, 10), (4, 3)), ((5, 5), (7, 5)), ((4, 6), (None, 2))])
def test_adaptive_avg_pool_matches_reference(isa, size, out_size):
    rng = np.random.default_rng(5)
    a, q = _codes(rng, 3, 13, *size, (1, 1))
    out = cnn.adaptive_avg_pool2d(a, out_size)
    osz = (size[0] if out_size[0] is None else out_size[0], size[1] if out_size[1] is None else out_size[1])
    np.testing.assert_array_equal(_interior(out), ref.adaptive_avg_pool2d(q, a.zero_point, osz))


def test_pooling_reference_is_torchs_pooling():
    """The reference pools are torch's: max pooling of the codes, and average pooling of the integer values
    q - z rounded half to even (so the codes' pools equal torch's pools of the values they stand for)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    q = rng.integers(0, 256, (2, 11, 9, 6), dtype=np.uint8)
    t = torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64))
    for k, s, p, d, ceil in [(3, 2, 1, 1, False), (3, 2, 1, 1, True), ((2, 3), (1, 2), (1, 0), (2, 1), True)]:
        kk, ss, pp, dd = (cnn._pair(v, "v", 0) for v in (k, s, p, d))
        want = F.max_pool2d(t, k, s, p, d, ceil_mode=ceil).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(ref.max_pool2d(q, kk, ss, pp, dd, want.shape[1:3]), want)
    for k, s, p, ceil, include, override in [(3, 2, 1, False, True, None), (3, 2, 1, True, False, None),
                                             (2, 2, 0, True, True, None), (3, 1, 1, True, True, 5)]:
        kk, ss, pp = (cnn._pair(v, "v", 0) for v in (k, s, p))
        want = F.avg_pool2d(t - 37, k, s, p, ceil, include, override).numpy().transpose(0, 2, 3, 1)
        got = ref.avg_pool2d(q, 37, kk, ss, pp, want.shape[1:3], include, override)
        np.testing.assert_array_equal(got, np.clip(np.rint(want) + 37, 0, 255))
    for out_size in [(1, 1), (4, 3), (13, 5)]:
        want = F.adaptive_avg_pool2d(t - 37, out_size).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(ref.adaptive_avg_pool2d(q, 37, out_size), np.clip(np.rint(want) + 37, 0, 255))


def test_lookup_and_cat_match_reference(isa):
    rng = np.random.default_rng(6)
    a, qa = _codes(rng, 2, 5, 6, 7, (1, 1), scale=0.05, zp=100)
    b, qb = _codes(rng, 2, 8, 6, 7, (0, 0), scale=0.02, zp=3)
    c, qc = _codes(rng, 2, 3, 6, 7, (2, 0), scale=0.04, zp=10)

    def hardswish(v):
        return v * np.clip(v + 3, 0, 6) / 6

    t = cnn.unary_table(hardswish, a.scale, a.zero_point, 0.03, 20)
    want_t = np.clip(np.rint(hardswish((np.arange(256) - 100) * 0.05) / 0.03) + 20, 0, 255)
    np.testing.assert_array_equal(t, want_t)
    out = cnn.lookup(a, t, 0.03, 20, border=(1, 2))
    np.testing.assert_array_equal(_interior(out), ref.lookup(qa, t))
    _check_border(out)
    # cat: the input already at the output's parameters is copied, the others requantized by their tables
    cat = cnn.cat([a, b, c], 0.04, 10, border=(1, 1))
    assert cat.channels == 16 and cat.codes.shape[3] == 16
    parts = [ref.lookup(qa, cnn.unary_table(lambda v: v, 0.05, 100, 0.04, 10)),
             ref.lookup(qb, cnn.unary_table(lambda v: v, 0.02, 3, 0.04, 10)), qc]
    np.testing.assert_array_equal(_interior(cat), np.concatenate(parts, axis=3))
    _check_border(cat)
    odd = cnn.cat([a, c], 0.05, 100)  # 8 channels ... and 5 + 3: padding channels hold the zero point
    assert odd.codes.shape[3] == 8 and odd.channels == 8
    with pytest.raises(ValueError, match="same batch and size"):
        cnn.cat([a, cnn.max_pool2d(a, 2)], 0.05, 100)


def test_quantize_dequantize_match_reference(isa):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32) * 3
    a = cnn.quantize(x, 0.05, 120, border=(1, 2))
    np.testing.assert_array_equal(_interior(a), ref.quantize(x, 0.05, 120))
    _check_border(a)
    np.testing.assert_array_equal(cnn.dequantize(a), ref.dequantize(_interior(a), 120, 0.05))
    with pytest.raises(qcore.InputError):
        x[1, 2, 3, 4] = np.nan
        cnn.quantize(x, 0.05, 120)


def test_bad_input():
    rng = np.random.default_rng(8)
    a, _ = _codes(rng, 2, 5, 6, 7)
    b, _ = _codes(rng, 2, 5, 6, 8)
    with pytest.raises(ValueError, match="shapes differ"):
        cnn.add(a, b, 0.1, 0)
    with pytest.raises(TypeError, match="Codes"):
        cnn.add(a, np.zeros((2, 6, 7, 8), np.uint8), 0.1, 0)
    with pytest.raises(ValueError, match="scale"):
        cnn.add(a, a, 0.0, 0)
    with pytest.raises(ValueError, match="zero_point"):
        cnn.lookup(a, np.zeros(256, np.uint8), 0.1, 256)
    with pytest.raises(ValueError, match="256 entries"):
        cnn.lookup(a, np.zeros(255, np.uint8), 0.1, 0)
    with pytest.raises(ValueError, match="half the kernel"):
        cnn.max_pool2d(a, 2, 1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        cnn.max_pool2d(a, 9)
    with pytest.raises(ValueError, match="divisor_override"):
        cnn.avg_pool2d(a, 2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size"):
        cnn.adaptive_avg_pool2d(a, 0)
    with pytest.raises(ValueError, match="border"):
        cnn.Codes(np.zeros((1, 2, 2, 4), np.uint8), 4, 1.0, 0, (1, 1))
    with pytest.raises(TypeError):
        cnn.Codes(np.zeros((1, 2, 2, 4), np.int8), 4, 1.0, 0)
    with pytest.raises(ValueError):
        cnn.Codes(np.zeros((1, 2, 2, 4), np.uint8), 5, 1.0, 0)
