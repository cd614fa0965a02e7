"""qcore.ops.PackedConv2d: the static int8 convolution against an int64 numpy reference of the same arithmetic,
on every GEMM path (the ``isa`` fixture), plus input checks and threads.  numpy only (runs under the sanitizers)."""
import threading

import numpy as np
import pytest

import qcore
from qcore.kernels import conv_reference as ref
from qcore.ops import PackedConv2d


def ref_codes(x, scale, za, lo=0, hi=255, cp=None):
    """Static input codes, NHWC, channels padded to cp with za: rint(clip(x * f32(1/s), lo-za, hi-za)) + za."""
    inv = np.float32(1.0) / np.float32(scale)
    t = np.clip(x.astype(np.float32) * inv, np.float32(lo - za), np.float32(hi - za))
    q = np.rint(t).astype(np.int64) + za
    b, c, h, w = x.shape
    cp = cp or (c + 3) // 4 * 4
    out = np.full((b, h, w, cp), za, np.int64)
    out[..., :c] = q.transpose(0, 2, 3, 1)
    return out


def ref_conv_int(a, za, w, stride, pad, dil, groups):
    """sum over taps and channels of (a - za) * w in int64; padding holds za (i.e. a float zero)."""
    return ref.conv2d_int32(a, za, w, stride, pad, dil, groups)


def _mult(sa, sw, so=1.0):
    """M[n] = float32(sa * sw[n] / so) (docs/gemm.md §11)."""
    return (np.float64(np.float32(sa)) * sw.astype(np.float64) / so).astype(np.float32)


def ref_float(acc, sa, sw, bias, relu):
    return ref.conv_epilogue(acc, _mult(sa, sw), bias, (0.0, np.inf) if relu else None)


def ref_uint8(acc, sa, sw, bias, relu, so, zo, clamp=None):
    b = None if bias is None else (bias.astype(np.float64) / so).astype(np.float32)
    if relu:
        clamp = (0.0, np.float32(255 - zo))
    return ref.conv_epilogue(acc, _mult(sa, sw, so), b, clamp, zo).astype(np.int64)


# (C_in, C_out, kernel, stride, padding, dilation, groups, H, W)
CASES = [
    (3, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 10),     # RGB first layer (Cp = 4)
    (5, 40, (3, 3), (2, 2), (1, 1), (1, 1), 1, 8, 9),      # C not a multiple of 4, N not of 32
    (16, 64, (3, 3), (1, 1), (2, 2), (2, 2), 1, 7, 8),     # dilation
    (6, 33, (5, 3), (3, 1), (2, 0), (1, 2), 1, 11, 9),     # rectangular kernel, mixed stride/dilation
    (64, 64, (3, 3), (2, 2), (1, 1), (1, 1), 1, 8, 8),     # the benchmark's third layer
    (8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8, 6, 7),       # depthwise
    (72, 72, (3, 3), (2, 2), (1, 1), (1, 1), 72, 7, 6),    # depthwise, 64 + 8 channel chunks, stride 2
    (20, 20, (3, 3), (1, 1), (1, 1), (1, 1), 20, 5, 6),    # depthwise, 16 + 4 channels (a masked block)
    (960, 960, (3, 3), (1, 1), (1, 1), (1, 1), 960, 3, 4), # depthwise, MobileNetV2's widest
    (24, 24, (5, 5), (2, 2), (2, 2), (1, 1), 24, 9, 8),    # depthwise 5x5: 25 taps in 7 groups of 4
    (12, 12, (7, 7), (1, 1), (3, 3), (1, 1), 12, 8, 8),    # depthwise 7x7: 49 taps, the int32 loop on every copy
    (4, 8, (3, 3), (1, 1), (1, 1), (1, 1), 4, 5, 5),       # depthwise with channel multiplier 2: grouped loop
    (8, 12, (1, 1), (1, 1), (0, 0), (1, 1), 4, 5, 5),      # grouped 1x1
    (6, 4, (2, 2), (2, 2), (0, 0), (1, 1), 2, 6, 6),       # grouped, C/groups = 3
    (4, 20, (9, 9), (1, 1), (4, 4), (1, 1), 1, 10, 10),    # 81 taps: the checked (non-table) tap path
    (12, 7, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 1),      # a Linear as a 1x1 convolution
    (16, 200, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, 3),    # few pixels, many channels: units split the channels
]


@pytest.mark.parametrize("case", CASES, ids=[f"c{c[0]}n{c[1]}k{c[2][0]}x{c[2][1]}s{c[3][0]}p{c[4][0]}d{c[5][0]}g{c[6]}"
                                              for c in CASES])
def test_conv_equals_int64_reference(isa, case):
    c, n, k, s, p, d, g, h, w = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    wc = rng.integers(-127, 128, (n, c // g) + k).astype(np.int8)
    wc.flat[0] = -128  # the full int8 range is accepted
    sw = rng.uniform(0.005, 0.05, n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    x = rng.normal(size=(3, c, h, w)).astype(np.float32) * 2
    sa, za = 0.02, int(rng.integers(0, 256))
    for relu in (False, True):
        pc = PackedConv2d(wc, sw, bias, stride=s, padding=p, dilation=d, groups=g, input_scale=sa,
                          input_zero_point=za, relu=relu)
        a = pc.quantize_input(x)
        ra = ref_codes(x, sa, za)
        np.testing.assert_array_equal(a, ra)
        acc = pc.run_codes(a, "int32")
        racc = ref_conv_int(ra, za, wc, s, p, d, g)
        assert acc.shape == racc.shape and acc.dtype == np.int32
        np.testing.assert_array_equal(acc, racc)
        np.testing.assert_array_equal(pc.run_codes(a, "float"), ref_float(racc, sa, sw, bias, relu))
        np.testing.assert_array_equal(pc.run_codes(a, "float", nchw=True),
                                      ref_float(racc, sa, sw, bias, relu).transpose(0, 3, 1, 2))
        so, zo = 0.07, 5
        u = pc.run_codes(a, "uint8", so, zo)
        assert u.shape[-1] == (n + 3) // 4 * 4
        np.testing.assert_array_equal(u[..., :n], ref_uint8(racc, sa, sw, bias, relu, so, zo))
        assert (u[..., n:] == zo).all()  # padding channels hold the zero point
        np.testing.assert_array_equal(pc(x), ref_float(racc, sa, sw, bias, relu))


def test_extreme_operands_do_not_saturate(isa):
    """255 x -128 everywhere: the int32 accumulator is exact on every path (no int16 saturation)."""
    wc = np.full((32, 64, 3, 3), -128, np.int8)
    pc = PackedConv2d(wc, np.ones(32), input_scale=1.0, input_zero_point=0)
    a = np.full((2, 5, 5, 64), 255, np.uint8)
    acc = pc.run_codes(a, "int32")
    np.testing.assert_array_equal(acc, ref_conv_int(a.astype(np.int64), 0, wc, (1, 1), (0, 0), (1, 1), 1))
    assert acc[0, 0, 0, 0] == 255 * -128 * 9 * 64


def test_linear_rows_and_signed_activations(isa):
    rng = np.random.default_rng(1)
    wc = rng.integers(-127, 128, (10, 37)).astype(np.int8)
    sw = rng.uniform(0.01, 0.1, 10).astype(np.float32)
    x = rng.normal(size=(9, 37)).astype(np.float32)
    pc = PackedConv2d.linear(wc, sw, None, input_scale=0.03, input_zero_point=0, input_signed=True)
    a = pc.quantize_rows(x)
    # symmetric int8 codes clamp(rint(x/s), -127, 127), stored + 128
    q = np.clip(np.rint(x * (np.float32(1) / np.float32(0.03))), -127, 127).astype(np.int64)
    np.testing.assert_array_equal(a[:, :37], q + 128)
    acc = (q @ wc.astype(np.int64).T)
    np.testing.assert_array_equal(pc.forward_rows(x, "int32"), acc)
    np.testing.assert_array_equal(pc.forward_rows(x), ref_float(acc, 0.03, sw, None, False))
    # NHWC rows and NCHW images quantize identically
    pc2 = PackedConv2d(rng.integers(-127, 128, (8, 6, 3, 3)).astype(np.int8), np.ones(8), input_scale=0.1,
                       input_zero_point=17)
    img = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    rows = np.ascontiguousarray(img.transpose(0, 2, 3, 1)).reshape(-1, 6)
    np.testing.assert_array_equal(pc2.quantize_rows(rows).reshape(2, 5, 4, 8), pc2.quantize_input(img))


def test_bad_input_is_refused_before_the_kernel():
    wc = np.ones((4, 3, 3, 3), np.int8)
    pc = PackedConv2d(wc, np.ones(4), input_scale=0.1, input_zero_point=0)
    x = np.zeros((1, 3, 5, 5), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[0, 2, 4, 4] = bad
        with pytest.raises(qcore.InputError, match="NaN or Inf"):
            pc(y)
        with pytest.raises(qcore.InputError, match="NaN or Inf"):
            pc.quantize_rows(y.reshape(-1, 3)[:25].copy())
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        pc(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="smaller than the"):
        pc(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="uint8 NHWC"):
        pc.run_codes(np.zeros((1, 5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="output must be"):
        pc.run_codes(np.zeros((1, 5, 5, 4), np.uint8), "int8")
    with pytest.raises(ValueError, match="out_scale"):
        pc.run_codes(np.zeros((1, 5, 5, 4), np.uint8), "uint8", float("nan"))
    with pytest.raises(TypeError, match="int8"):
        PackedConv2d(wc.astype(np.int16), np.ones(4), input_scale=0.1)
    with pytest.raises(ValueError, match="weight_scale"):
        PackedConv2d(wc, -np.ones(4), input_scale=0.1)
    with pytest.raises(ValueError, match="input_scale"):
        PackedConv2d(wc, np.ones(4), input_scale=float("inf"))
    with pytest.raises(ValueError, match="input_scale"):
        PackedConv2d(wc, np.ones(4), input_scale=0.0)
    with pytest.raises(ValueError, match="outside the code range"):
        PackedConv2d(wc, np.ones(4), input_scale=0.1, input_zero_point=256)
    with pytest.raises(ValueError, match="groups"):
        PackedConv2d(wc, np.ones(4), input_scale=0.1, groups=3)
    with pytest.raises(ValueError, match="stride"):
        PackedConv2d(wc, np.ones(4), input_scale=0.1, stride=0)
    with pytest.raises(ValueError, match="too large"):
        PackedConv2d(np.full((1, 8192, 3, 3), 127, np.int8), np.ones(1), input_scale=0.1)


def test_threads_share_one_layer(isa):
    rng = np.random.default_rng(2)
    pc = PackedConv2d(rng.integers(-127, 128, (64, 32, 3, 3)).astype(np.int8), rng.uniform(0.01, 0.02, 64),
                      rng.normal(size=64), stride=2, padding=1, input_scale=0.05, input_zero_point=3, relu=True)
    xs = [rng.normal(size=(4, 32, 16, 16)).astype(np.float32) for _ in range(4)]
    want = [pc(x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(5):
                if not np.array_equal(pc(xs[i]), want[i]):
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_padded_buffers_give_the_same_results(isa):
    """quantize_input(padded=True) / out_padding / padded_input: the zero padding carried in the buffers."""
    rng = np.random.default_rng(3)
    c1 = PackedConv2d(rng.integers(-127, 128, (10, 3, 3, 3)).astype(np.int8), rng.uniform(0.01, 0.02, 10),
                      rng.normal(size=10), padding=1, input_scale=0.04, input_zero_point=9, relu=True)
    so, zo = 0.05, 4
    c2 = PackedConv2d(rng.integers(-127, 128, (8, 10, 3, 2)).astype(np.int8), np.ones(8), stride=(2, 1),
                      padding=(2, 1), dilation=(1, 2), input_scale=so, input_zero_point=zo)
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    a, ap = c1.quantize_input(x), c1.quantize_input(x, padded=True)
    assert ap.shape == (2, 9, 8, 4)
    np.testing.assert_array_equal(ap[:, 1:-1, 1:-1], a)
    border = np.ones(ap.shape[:3], bool)
    border[:, 1:-1, 1:-1] = False
    assert (ap[border] == 9).all()
    u = c1.run_codes(a, "uint8", so, zo)
    up = c1.run_codes(ap, "uint8", so, zo, padded_input=True, out_padding=(2, 1))
    assert up.shape == (2, 11, 8, 12)
    np.testing.assert_array_equal(up[:, 2:-2, 1:-1], u)
    border = np.ones(up.shape[:3], bool)
    border[:, 2:-2, 1:-1] = False
    assert (up[border] == zo).all()
    np.testing.assert_array_equal(c1.run_codes(ap, "float", padded_input=True), c1.run_codes(a, "float"))
    np.testing.assert_array_equal(c2.run_codes(up, "int32", padded_input=True), c2.run_codes(u, "int32"))
    np.testing.assert_array_equal(c2.run_codes(u, "int32"),
                                  ref_conv_int(u.astype(np.int64)[..., :12], zo, c2.weight_codes, (2, 1), (2, 1),
                                               (1, 2), 1))
    with pytest.raises(ValueError, match="out_padding"):
        c1.run_codes(a, "float", out_padding=(1, 1))


@pytest.mark.parametrize("border", [(0, 0), (1, 1), (3, 2), (1, 0)])
def test_activation_clamps_and_input_borders(isa, border):
    """A fused ReLU6 (float and uint8 output, the bounds in code units) and inputs whose border is larger or
    smaller than the padding (the crop path and the checked-tap path) equal the reference."""
    from qcore.ops.cnn import Codes, code_bounds, quantize

    rng = np.random.default_rng(11)
    wc = rng.integers(-127, 128, (20, 6, 3, 3)).astype(np.int8)
    sw = rng.uniform(0.01, 0.05, 20).astype(np.float32)
    bias = rng.normal(size=20).astype(np.float32)
    sa, za, so, zo = 0.03, 7, 0.05, 11
    pc = PackedConv2d(wc, sw, bias, stride=(2, 1), padding=(1, 1), input_scale=sa, input_zero_point=za,
                      activation=(0.0, 6.0))
    x = rng.normal(size=(2, 6, 9, 8)).astype(np.float32) * 3
    a = quantize(x, sa, za, border=border)
    assert isinstance(a, Codes)
    racc = ref_conv_int(a.interior(), za, wc, (2, 1), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(pc.run_codes(a.codes, "int32", in_border=border), racc)
    np.testing.assert_array_equal(pc.run_codes(a.codes, "float", in_border=border),
                                  ref.conv_epilogue(racc, _mult(sa, sw), bias, (0.0, 6.0)))
    u = pc.run_codes(a.codes, "uint8", so, zo, in_border=border)
    lo, hi = code_bounds(0.0, 6.0, so, zo)
    assert (lo, hi) == (0.0, np.float32(6.0 / so)) and hi < 255 - zo
    np.testing.assert_array_equal(u[..., :20], ref_uint8(racc, sa, sw, bias, False, so, zo, (lo, hi)))
    assert u[..., :20].max() == zo + 120  # the ReLU6 bound is reached
    with pytest.raises(ValueError, match="activation"):
        PackedConv2d(wc, sw, input_scale=sa, activation=(1.0, 0.0))


@pytest.mark.parametrize("case", [
    (3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 9, 13, 11),     # the stem: 9 images, tiles straddle positions
    (16, 40, (3, 3), (1, 1), (1, 1), (1, 1), 16, 4, 4),     # a small image: a third of the taps are padding
    (8, 33, (5, 3), (2, 1), (2, 1), (2, 1), 8, 7, 6),       # rectangular kernel, dilated rows
    (12, 16, (3, 3), (1, 1), (1, 1), (1, 1), 8, 1, 1),      # 1x1 image: only the centre tap is inside
], ids=["stem", "small", "rect", "1x1"])
def test_batches_of_eight_skip_the_padding_exactly(isa, case):
    """With 8 images or more and the padding carried in the input's border, the VNNI path takes output pixels
    position by position and skips the taps in the padding: the same sums as the reference."""
    from qcore.ops.cnn import quantize

    c, n, k, s, p, d, b, h, w = case
    rng = np.random.default_rng(sum(k) + b)
    wc = rng.integers(-127, 128, (n, c) + k).astype(np.int8)
    sw = rng.uniform(0.01, 0.05, n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    pc = PackedConv2d(wc, sw, bias, stride=s, padding=p, dilation=d, input_scale=0.05, input_zero_point=37,
                      relu=True)
    x = rng.normal(size=(b, c, h, w)).astype(np.float32)
    for border in (p, (p[0] + 1, p[1] + 2)):
        a = quantize(x, 0.05, 37, border=border)
        racc = ref_conv_int(a.interior(), 37, wc, s, p, d, 1)
        np.testing.assert_array_equal(pc.run_codes(a.codes, "int32", in_border=border), racc)
        u = pc.run_codes(a.codes, "uint8", 0.04, 3, in_border=border, out_padding=(1, 1))
        np.testing.assert_array_equal(u[:, 1:-1, 1:-1, :n], ref_uint8(racc, 0.05, sw, bias, True, 0.04, 3))
        assert (u[:, 0] == 3).all() and (u[:, :, -1] == 3).all()
        np.testing.assert_array_equal(pc.run_codes(a.codes, "float", in_border=border, nchw=True),
                                      ref_float(racc, 0.05, sw, bias, True).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("batch", [2, 8])
def test_fused_residual_addition_equals_the_reference(isa, batch):
    """A residual added in the epilogue (ResNet's conv -> BN -> + identity -> ReLU in one pass)."""
    from qcore.ops.cnn import quantize

    rng = np.random.default_rng(12)
    wc = rng.integers(-127, 128, (24, 16, 3, 3)).astype(np.int8)
    sw = rng.uniform(0.005, 0.02, 24).astype(np.float32)
    bias = rng.normal(size=24).astype(np.float32)
    pc = PackedConv2d(wc, sw, bias, padding=1, input_scale=0.05, input_zero_point=20, relu=True)
    x = rng.normal(size=(batch, 16, 6, 7)).astype(np.float32)
    a = quantize(x, 0.05, 20, border=(1, 1))
    r = quantize(rng.normal(size=(batch, 24, 6, 7)).astype(np.float32), 0.03, 110, border=(1, 1))
    so, zo = 0.06, 9
    u = pc.run_codes(a.codes, "uint8", so, zo, in_border=(1, 1), out_padding=(1, 1),
                     residual=(r.codes, r.scale, r.zero_point))
    racc = ref_conv_int(a.interior(), 20, wc, (1, 1), (1, 1), (1, 1), 1)
    b = (bias.astype(np.float64) / so).astype(np.float32)
    want = ref.conv_epilogue(racc, _mult(0.05, sw, so), b, (0.0, np.float32(255 - zo)), zo,
                             residual=(r.interior()[..., :24], 110, np.float32(0.03 / so)))
    np.testing.assert_array_equal(u[:, 1:-1, 1:-1, :24], want)
    assert (u[:, 0] == zo).all() and (u[..., 24:] == zo).all()
    # the float sum of the two, requantized, within a code or two
    conv_f = ref.conv_epilogue(racc, _mult(0.05, sw), bias)
    exp = np.clip(np.rint(np.maximum(conv_f + (r.interior()[..., :24].astype(np.float32) - 110) * 0.03, 0) / so) + zo,
                  0, 255)
    assert np.abs(u[:, 1:-1, 1:-1, :24].astype(np.int64) - exp).max() <= 2
    with pytest.raises(ValueError, match="residual codes"):
        pc.run_codes(a.codes, "uint8", so, zo, in_border=(1, 1), residual=(r.codes, r.scale, r.zero_point))
    dwc = PackedConv2d(rng.integers(-127, 128, (16, 1, 3, 3)).astype(np.int8), np.ones(16), padding=1, groups=16,
                       input_scale=0.05, input_zero_point=20)
    with pytest.raises(ValueError, match="groups == 1"):
        dwc.run_codes(a.codes, "uint8", so, zo, in_border=(1, 1), residual=(a.codes, 0.05, 20))


def test_cython_kernel_passes_the_qconv2d_conformance_check(isa):
    """The kit's qconv2d check (every operation, prepared calls with padding skipping, depthwise and fused
    residuals included) on the cython kernel at this level, against the numpy reference."""
    from qcore.testing._kernel import check_kernel_qconv2d

    check_kernel_qconv2d(qcore.get_kernel("cython"))


@pytest.mark.parametrize("case", [
    (3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 9, 23, 21),     # the RGB stem: 24 bytes per kernel row, not 28
    (1, 8, (3, 3), (1, 1), (1, 1), (2, 1), 2, 6, 7),        # one channel, dilated rows
    (6, 33, (3, 5), (1, 2), (0, 2), (1, 1), 1, 5, 9),       # 6 channels (Cp 8): 32 bytes per row, not 40
    (3, 16, (5, 5), (2, 2), (2, 2), (1, 1), 0, 8, 8),       # an empty batch
], ids=["stem", "c1", "c6", "empty"])
def test_float_input_in_dense_rows_equals_the_reference(isa, case):
    """run_float on few channels (dense_input): the codes laid out as pixels of C bytes, each kernel row read as
    roundup4(KW*C) bytes; the same codes as quantize_input + run_codes and the int64 reference, every output."""
    cin, n, k, stride, pad, dil, b, h, w = case
    rng = np.random.default_rng(21)
    wc = rng.integers(-127, 128, (n, cin) + k).astype(np.int8)
    sw = rng.uniform(0.005, 0.02, n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    sa, za, so, zo = 0.03, 121, 0.05, 6
    pc = PackedConv2d(wc, sw, bias, stride=stride, padding=pad, dilation=dil, input_scale=sa, input_zero_point=za,
                      relu=True)
    assert pc.dense_input
    x = (rng.normal(size=(b, cin, h, w)) * 3).astype(np.float32)
    racc = ref_conv_int(ref_codes(x, sa, za), za, wc, stride, pad, dil, 1)
    np.testing.assert_array_equal(pc.run_float(x, "int32"), racc)
    np.testing.assert_array_equal(pc.run_float(x), ref_float(racc, sa, sw, bias, True))
    np.testing.assert_array_equal(pc(x), ref_float(racc, sa, sw, bias, True))
    u = pc.run_float(x, "uint8", so, zo, out_padding=(1, 2))
    np.testing.assert_array_equal(u[:, 1:u.shape[1] - 1, 2:u.shape[2] - 2, :n], ref_uint8(racc, sa, sw, bias, True, so, zo))
    np.testing.assert_array_equal(u, pc.run_codes(pc.quantize_input(x, padded=True), "uint8", so, zo,
                                                  padded_input=True, out_padding=(1, 2)))
    y = pc.run_float(x, nchw=True)
    np.testing.assert_array_equal(y, ref_float(racc, sa, sw, bias, True).transpose(0, 3, 1, 2))


def test_dense_rows_take_only_what_fits():
    """dense_input holds for few channels only (where a row of roundup4(KW*C) bytes is shorter); bad input to
    run_float is refused like quantize_input's: NaN, wrong channel count; the kernel refuses dense rows without
    the bytes after the last window."""
    rng = np.random.default_rng(22)

    def layer(c, k=3, groups=1, dilation=1):
        return PackedConv2d(rng.integers(-127, 128, (8, c // groups, k, k)).astype(np.int8), np.ones(8), padding=1,
                            groups=groups, dilation=dilation, input_scale=0.1)

    assert layer(3, k=5).dense_input and layer(6).dense_input and layer(7, k=7).dense_input
    assert not layer(3).dense_input  # 9 bytes a row round up to 12 = 3 * 4: nothing saved
    assert not layer(4).dense_input and not layer(8).dense_input and not layer(7, k=1).dense_input
    assert not layer(6, groups=2).dense_input and not layer(3, k=5, dilation=2).dense_input
    pc = layer(3, k=5)
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    x[1, 2, 3, 4] = np.nan
    with pytest.raises(qcore.InputError):
        pc.run_float(x)
    with pytest.raises(ValueError, match="shape"):
        pc.run_float(np.zeros((2, 4, 5, 5), np.float32))
    k = pc.kernel
    packed = k.conv_pack(np.zeros((8, 3 * 12), np.int8))
    np_, _ = k.conv_columns(packed)
    args = (0, packed, None, np.zeros(np_, np.int32), np.ones(np_, np.float32), None, 1, None, 0)
    k.conv_prepare((2, 8, 7, 3), (5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 8, 1, 3), *args, crop=(0, 0, 7, 7), dense=True)
    with pytest.raises(ValueError, match="after the last window"):
        k.conv_prepare((2, 7, 7, 3), (5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 8, 1, 3), *args, dense=True)
    with pytest.raises(ValueError, match="dense rows need"):
        k.conv_prepare((2, 8, 7, 3), (5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 8, 1, 3), *args, crop=(0, 0, 7, 7), dense=True)


def test_output_buffers_are_reused_only_when_nobody_holds_them(isa):
    """A layer hands its last output array out again (no fresh multi-MB allocation per call) only once every
    reference to it is gone: a result the caller keeps — itself, a view, a buffer export such as a torch
    tensor — is never overwritten; a reused buffer gets its border and contents rewritten (garbage planted in
    it is gone).  Reuse
    is checked by the pointer of the layer's own last buffer, never by where the allocator happens to put a new
    one (under ASan freed memory is quarantined)."""
    rng = np.random.default_rng(7)
    pc = PackedConv2d(rng.integers(-127, 128, (12, 8, 3, 3)).astype(np.int8), rng.uniform(0.01, 0.02, 12),
                      rng.normal(size=12), padding=1, input_scale=0.05, input_zero_point=3, relu=True)
    x1, x2 = (rng.normal(size=(2, 8, 9, 7)).astype(np.float32) for _ in range(2))
    so, zo = 0.04, 5
    a1, a2 = pc.quantize_input(x1, padded=True), pc.quantize_input(x2, padded=True)
    assert not np.shares_memory(a1, a2)  # a1 still held: a new buffer
    want1 = pc.run_codes(a1, "uint8", so, zo, padded_input=True, out_padding=(1, 1)).copy()
    want2 = pc.run_codes(a2, "uint8", so, zo, padded_input=True, out_padding=(1, 1)).copy()

    def run(a):
        return pc.run_codes(a, "uint8", so, zo, padded_input=True, out_padding=(1, 1))

    y1 = run(a1)
    view = y1[:, 1:-1]
    y2 = run(a2)  # y1 (and a view of it) still held: a new buffer, y1 untouched
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, want1)
    np.testing.assert_array_equal(view, want1[:, 1:-1])
    np.testing.assert_array_equal(y2, want2)
    del view, y1
    y3 = run(a1)  # the layer's last buffer is y2's, still held: a new one again
    assert not np.shares_memory(y2, y3)
    np.testing.assert_array_equal(y2, want2)
    np.testing.assert_array_equal(y3, want1)
    ptr = y3.ctypes.data
    base = y3.base if y3.base is not None else y3
    base[...] = 77  # garbage in the buffer the next call will reuse
    del y3, base
    y4 = run(a1)  # nobody holds the last buffer any more: handed out again, rewritten whole
    assert y4.ctypes.data == ptr
    np.testing.assert_array_equal(y4, want1)
    exported = memoryview(y4)  # a buffer export (what torch.from_numpy and friends hold) keeps it too
    del y4
    y5 = run(a2)
    held = np.asarray(exported)
    assert not np.shares_memory(held, y5)
    np.testing.assert_array_equal(held, want1)
    np.testing.assert_array_equal(y5, want2)
    # the same layer after a copy or a pickle starts with no buffers and gives the same results
    import copy
    import pickle

    for other in (copy.deepcopy(pc), pickle.loads(pickle.dumps(pc))):
        np.testing.assert_array_equal(other.run_codes(a1, "uint8", so, zo, padded_input=True, out_padding=(1, 1)),
                                      want1)
