"""The uint8 operations of a static int8 CNN besides the convolution: residual addition, pooling, table lookups
(concatenation, elementwise activations), quantization to and from float.

Activations travel between layers as :class:`Codes`: uint8 NHWC images whose channels are padded to a multiple
of 4, with a border of ``border = (bh, bw)`` pixels around each image holding the zero point (the zero padding
of the convolutions that read it), one per-tensor ``scale`` and ``zero_point``.  Each function validates its
arguments and runs a kernel's ``qconv2d`` capability (qcore/kernels/conv.py; ``kernel=None``: the default one,
``cython``, whose C kernels are ``pyx/qcnn_kernels.h``); the numpy reference is ``qcore/kernels/conv_reference.py``
(``kernel="numpy"``), and docs/gemm.md ("The uint8 operations of a static CNN") has the arithmetic.
"""
from __future__ import annotations

import math

import numpy as np

from ..api import get_kernel
from ..validation import as_float32, non_finite_error
from .conv import _pair, _padded_empty, roundup4


class Codes:
    """uint8 NHWC activation codes: ``codes`` (B, H + 2*bh, W + 2*bw, Cp), ``channels`` real channels (the
    rest up to Cp is padding), ``border`` (bh, bw) pixels around each image holding ``zero_point``, and the
    per-tensor ``scale``/``zero_point`` (value = (code - zero_point) * scale)."""

    __slots__ = ("codes", "border", "channels", "scale", "zero_point")

    def __init__(self, codes: np.ndarray, channels: int, scale: float, zero_point: int, border=(0, 0)):
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 4:
            raise TypeError("codes must be a uint8 NHWC array (B, H, W, Cp)")
        self.codes, self.channels = codes, int(channels)
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.border = (int(border[0]), int(border[1]))
        if not 0 < self.channels <= codes.shape[3] or min(self.border) < 0 \
                or codes.shape[1] <= 2 * self.border[0] or codes.shape[2] <= 2 * self.border[1]:
            raise ValueError(f"codes of shape {codes.shape} cannot hold {channels} channels with border {border}")
        if not (math.isfinite(self.scale) and self.scale > 0) or not 0 <= self.zero_point <= 255:
            raise ValueError(f"scale must be positive and finite and zero_point in [0, 255], got "
                             f"{self.scale}, {self.zero_point}")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image (without the border)."""
        return self.codes.shape[1] - 2 * self.border[0], self.codes.shape[2] - 2 * self.border[1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, C, H, W): the shape of the float tensor these codes stand for."""
        h, w = self.size
        return (self.codes.shape[0], self.channels, h, w)

    def interior(self) -> np.ndarray:
        """A view of the image without the border (B, H, W, Cp)."""
        (bh, bw), (h, w) = self.border, self.size
        return self.codes[:, bh:bh + h, bw:bw + w]

    def like(self, codes, scale=None, zero_point=None, border=(0, 0), channels=None) -> "Codes":
        return Codes(codes, self.channels if channels is None else channels, self.scale if scale is None else scale,
                     self.zero_point if zero_point is None else zero_point, border)


def _kernel(kernel):
    return get_kernel(kernel, capability="qconv2d")


def _new(b, h, w, cp, border, fill) -> np.ndarray:
    return _padded_empty(b, h, w, cp, border[0], border[1], fill)


def _check_codes(a, name="a") -> Codes:
    if not isinstance(a, Codes):
        raise TypeError(f"{name} must be qcore.ops.cnn.Codes, got {type(a).__name__}")
    return a


def _params(scale, zero_point):
    s, z = float(scale), int(zero_point)
    if not (math.isfinite(s) and s > 0) or not 0 <= z <= 255:
        raise ValueError(f"scale must be positive and finite and zero_point in [0, 255], got {scale}, {zero_point}")
    return s, z


def code_bounds(lo: float, hi: float, scale: float, zero_point: int) -> tuple[np.float32, np.float32]:
    """An activation's bounds ``[lo, hi]`` (e.g. ReLU6: 0, 6) in code units relative to the zero point, within the
    code range: ``float32(max(-z, lo / s))``, ``float32(min(255 - z, hi / s))`` (the divisions in float64)."""
    z = int(zero_point)
    return np.float32(max(-z, lo / scale)), np.float32(min(255 - z, hi / scale))


# ------------------------------------------------------------------------------------------------ float <-> codes


def quantize(x, scale, zero_point, border=(0, 0), *, kernel=None) -> Codes:
    """float32 NCHW ``x`` -> :class:`Codes` (``clip(rint(x * float32(1/scale)) + z, 0, 255)``); NaN/Inf raise
    :class:`qcore.InputError`."""
    k = _kernel(kernel)
    s, z = _params(scale, zero_point)
    x = as_float32(x, "x", check_finite=False)
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"x must be a non-empty float NCHW array (B, C, H, W), got shape {x.shape}")
    b, c, h, w = x.shape
    bh, bw = _pair(border, "border", 0)
    out = _new(b, h, w, roundup4(c), (bh, bw), z)
    inv = float(np.float32(1) / np.float32(s))
    if k.conv_quantize_nchw(np.ascontiguousarray(x), inv, z, 0, 255, out, (bh, bw)):
        raise non_finite_error(x, "x")
    return Codes(out, c, s, z, (bh, bw))


def dequantize(a: Codes, *, kernel=None) -> np.ndarray:
    """float32 NCHW ``float32(code - z) * scale`` of the image's real channels."""
    k = _kernel(kernel)
    a = _check_codes(a)
    b, c, h, w = a.shape
    out = np.empty((b, c, h, w), np.float32)
    return k.cnn_dequantize(a.codes, a.border, c, a.zero_point, a.scale, out)


# ------------------------------------------------------------------------------------------------ add


def add(a: Codes, b: Codes, scale, zero_point, *, clamp=None, border=(0, 0), kernel=None) -> Codes:
    """The residual addition ``a + b`` requantized to its own ``scale``/``zero_point``:
    ``rint(clip(float32(qa - za) * ma + float32(qb - zb) * mb, lo, hi)) + z`` with ``ma = float32(sa / s)``,
    ``mb = float32(sb / s)`` and ``[lo, hi]`` the code range, narrowed by ``clamp = (lo, hi)`` float bounds of a
    fused activation (ReLU: ``(0, inf)``) as :func:`code_bounds` computes them."""
    k = _kernel(kernel)
    a, b = _check_codes(a), _check_codes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"add: the operands' shapes differ: {a.shape} and {b.shape}")
    if a.codes.shape[3] != b.codes.shape[3]:
        raise ValueError("add: the operands' padded channel counts differ")
    s, z = _params(scale, zero_point)
    lo, hi = code_bounds(*(clamp if clamp is not None else (-math.inf, math.inf)), s, z)
    bt, c, h, w = a.shape
    out = _new(bt, h, w, a.codes.shape[3], _pair(border, "border", 0), z)
    ma, mb = np.float32(a.scale / s), np.float32(b.scale / s)
    k.cnn_add(a.codes, a.border, a.zero_point, float(ma), b.codes, b.border, b.zero_point, float(mb), out, border, z,
              float(lo), float(hi))
    return Codes(out, c, s, z, border)


# ------------------------------------------------------------------------------------------------ pooling


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (with ``ceil_mode``, a last window starting in the right padding is dropped)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_args(a, kernel_size, stride, padding, dilation, ceil_mode):
    k = _pair(kernel_size, "kernel_size", 1)
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride", 1)
    p = _pair(padding, "padding", 0)
    d = _pair(dilation, "dilation", 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")
    h, w = a.size
    oh = pool_output_size(h, k[0], s[0], p[0], d[0], ceil_mode)
    ow = pool_output_size(w, k[1], s[1], p[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling window {k} does not fit the {h}x{w} input")
    return k, s, p, d, oh, ow


def max_pool2d(a: Codes, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               border=(0, 0), kernel=None) -> Codes:
    """torch's ``max_pool2d`` on codes (the largest code of each window; same scale and zero point)."""
    kern = _kernel(kernel)
    a = _check_codes(a)
    k, s, p, d, oh, ow = _pool_args(a, kernel_size, stride, padding, dilation, ceil_mode)
    border = _pair(border, "border", 0)
    out = _new(a.codes.shape[0], oh, ow, a.codes.shape[3], border, a.zero_point)
    kern.cnn_maxpool(a.codes, a.border, out, border, k, s, p, d)
    return a.like(out, border=border)


def _avg(a, hs, he, ws, we, div, border, kernel):
    k = _kernel(kernel)
    border = _pair(border, "border", 0)
    out = _new(a.codes.shape[0], len(hs), len(ws), a.codes.shape[3], border, a.zero_point)
    k.cnn_avgpool(a.codes, a.border, out, border, np.asarray(hs, np.int32), np.asarray(he, np.int32),
                  np.asarray(ws, np.int32), np.asarray(we, np.int32), np.ascontiguousarray(div, np.float64),
                  a.zero_point)
    return a.like(out, border=border)


def avg_pool2d(a: Codes, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, border=(0, 0), kernel=None) -> Codes:
    """torch's ``avg_pool2d`` on codes, with the input's scale and zero point:
    ``clip(rint((S - n*z) / d) + z, 0, 255)`` (float64; S the sum of the n codes inside the image, d torch's
    divisor)."""
    a = _check_codes(a)
    k, s, p, _, oh, ow = _pool_args(a, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and int(divisor_override) < 1:
        raise ValueError(f"divisor_override must be positive, got {divisor_override}")
    h, w = a.size

    def windows(n_out, size, k_, s_, p_):
        start = np.arange(n_out) * s_ - p_
        end = np.minimum(start + k_, size + p_)
        return start, end, np.maximum(start, 0), np.minimum(end, size)

    h0, h1, hs, he = windows(oh, h, k[0], s[0], p[0])
    w0, w1, ws, we = windows(ow, w, k[1], s[1], p[1])
    if divisor_override is not None:
        div = np.full((oh, ow), float(divisor_override))
    elif count_include_pad:
        div = np.outer(h1 - h0, w1 - w0).astype(np.float64)
    else:
        div = np.outer(he - hs, we - ws).astype(np.float64)
    return _avg(a, hs, he, ws, we, div, border, kernel)


def adaptive_avg_pool2d(a: Codes, output_size, *, border=(0, 0), kernel=None) -> Codes:
    """torch's ``adaptive_avg_pool2d`` on codes (windows ``[floor(i*H/OH), ceil((i+1)*H/OH))``), with the input's
    scale and zero point; ``output_size`` an int or a pair (None keeps that dimension)."""
    a = _check_codes(a)
    h, w = a.size
    if isinstance(output_size, (int, np.integer)):
        output_size = (output_size, output_size)
    oh, ow = (h if output_size[0] is None else int(output_size[0]), w if output_size[1] is None else int(output_size[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    hs = (np.arange(oh) * h) // oh
    he = -((-(np.arange(oh) + 1) * h) // oh)
    ws = (np.arange(ow) * w) // ow
    we = -((-(np.arange(ow) + 1) * w) // ow)
    return _avg(a, hs, he, ws, we, np.outer(he - hs, we - ws).astype(np.float64), border, kernel)


# ------------------------------------------------------------------------------------------------ tables


def unary_table(fn, scale_in, zero_in, scale_out, zero_out) -> np.ndarray:
    """The 256-entry table of an elementwise function between two quantizations, in float64:
    ``T[q] = clip(rint(fn((q - zero_in) * scale_in) / scale_out) + zero_out, 0, 255)``."""
    v = (np.arange(256, dtype=np.float64) - int(zero_in)) * float(scale_in)
    y = np.asarray(fn(v), np.float64)
    if y.shape != (256,) or not np.isfinite(y).all():
        raise ValueError("fn must map a float64 array of 256 values to 256 finite values")
    return np.clip(np.rint(y / float(scale_out)) + int(zero_out), 0, 255).astype(np.uint8)


def lookup(a: Codes, table, scale, zero_point, *, border=(0, 0), kernel=None) -> Codes:
    """Every code through a 256-entry uint8 ``table`` (:func:`unary_table`), giving codes of ``scale`` and
    ``zero_point``."""
    k = _kernel(kernel)
    a = _check_codes(a)
    s, z = _params(scale, zero_point)
    t = np.ascontiguousarray(table, np.uint8)
    if t.shape != (256,):
        raise ValueError(f"table must have 256 entries, got shape {t.shape}")
    border = _pair(border, "border", 0)
    b, c, h, w = a.shape
    cp = a.codes.shape[3]
    out = _new(b, h, w, cp, border, z)
    k.cnn_lut(a.codes, a.border, cp, out, border, 0, t)
    return Codes(out, c, s, z, border)


def cat(items, scale, zero_point, *, border=(0, 0), kernel=None) -> Codes:
    """Channel concatenation (torch.cat along dim 1) of codes of the same batch and size, requantized to
    ``scale``/``zero_point`` (copied where an input already has them)."""
    k = _kernel(kernel)
    items = [_check_codes(a, f"items[{i}]") for i, a in enumerate(items)]
    if not items:
        raise ValueError("cat needs at least one input")
    s, z = _params(scale, zero_point)
    b, _, h, w = items[0].shape
    for a in items:
        if a.shape[0] != b or a.size != (h, w):
            raise ValueError(f"cat: inputs must have the same batch and size, got {[x.shape for x in items]}")
    c = sum(a.channels for a in items)
    cp = roundup4(c)
    border = _pair(border, "border", 0)
    out = _new(b, h, w, cp, border, z)
    off = 0
    for a in items:
        same = a.scale == s and a.zero_point == z
        t = None if same else unary_table(lambda v: v, a.scale, a.zero_point, s, z)
        k.cnn_lut(a.codes, a.border, a.channels, out, border, off, t)
        off += a.channels
    if cp > c:
        (bh, bw) = border
        out[:, bh:bh + h, bw:bw + w, c:] = z
    return Codes(out, c, s, z, border)
