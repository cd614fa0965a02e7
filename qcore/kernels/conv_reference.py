"""numpy reference of the ``qconv2d`` capability: the static int8 convolution and the uint8 operations of a
static CNN (docs/gemm.md, "Static int8 convolution" and "The uint8 operations of a static CNN").

Every function here is written from the documented formulas, independently of the C kernels
(``pyx/conv_kernels.h``, ``pyx/qcnn_kernels.h``), which must equal them bit for bit.  Activations are uint8
NHWC images ``(B, H, W, C)`` without border; float arithmetic is float32 where the kernels use float32 (each
numpy operation rounds like one instruction), float64 where they use float64.
"""
from __future__ import annotations

import numpy as np

_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def conv2d_int32(a: np.ndarray, za: int, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 groups: int = 1) -> np.ndarray:
    """Exact ``C[b, oh, ow, n] = sum_{kh, kw, c} (a[b, ih, iw, c] - za) * w[n, c, kh, kw]`` (int64) of uint8 NHWC
    ``a`` (B, H, W, C) and int8 ``w`` (N, C // groups, KH, KW); taps in the zero padding contribute 0."""
    a = np.asarray(a).astype(np.int64) - int(za)
    w = np.asarray(w).astype(np.int64)
    b, h, wd, c = a.shape
    n, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ap = np.zeros((b, h + 2 * ph, wd + 2 * pw, c), np.int64)
    ap[:, ph:ph + h, pw:pw + wd] = a
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, oh, ow, n), np.int64)
    ng = n // groups
    for i in range(kh):
        for j in range(kw):
            tap = ap[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            for g in range(groups):
                out[..., g * ng:(g + 1) * ng] += tap[..., g * cg:(g + 1) * cg] @ w[g * ng:(g + 1) * ng, :, i, j].T
    return out


def round_codes(y: np.ndarray, zo: int, lo, hi) -> np.ndarray:
    """``rint(min(max(y, lo), hi)) + zo`` as uint8 (float32 ``y``, half to even)."""
    y = np.minimum(np.maximum(np.asarray(y, np.float32), np.float32(lo)), np.float32(hi))
    return (np.rint(y).astype(np.int32) + int(zo)).astype(np.uint8)


def conv_epilogue(acc: np.ndarray, mult, bias=None, clamp=None, zo=None) -> np.ndarray:
    """The convolution's epilogue on exact int32 sums ``acc`` (..., N): ``y = float32(acc) * mult + bias``;
    float output (``zo`` None): ``clip(y, *clamp)`` when given; uint8 output: ``rint(clip(y, *clamp)) + zo`` with
    ``clamp`` defaulting to the code range ``(-zo, 255 - zo)``."""
    y = np.asarray(acc).astype(np.int32).astype(np.float32) * np.asarray(mult, np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    if zo is None:
        if clamp is not None:
            y = np.minimum(np.maximum(y, np.float32(clamp[0])), np.float32(clamp[1]))
        return y
    lo, hi = clamp if clamp is not None else (-zo, 255 - zo)
    return round_codes(y, zo, lo, hi)


def add(qa, za: int, ma, qb, zb: int, mb, zo: int, lo, hi) -> np.ndarray:
    """The residual addition: ``rint(clip(float32(qa - za) * ma + float32(qb - zb) * mb, lo, hi)) + zo``."""
    ya = (np.asarray(qa).astype(np.int32) - za).astype(np.float32) * np.float32(ma)
    yb = (np.asarray(qb).astype(np.int32) - zb).astype(np.float32) * np.float32(mb)
    return round_codes(ya + yb, zo, lo, hi)


def max_pool2d(q, kernel, stride, padding, dilation, out_size) -> np.ndarray:
    """Max pooling of uint8 NHWC ``q``: the largest code among each window's taps inside the image."""
    q = np.asarray(q)
    b, h, w, c = q.shape
    oh, ow = out_size
    out = np.zeros((b, oh, ow, c), np.uint8)
    for i in range(oh):
        for j in range(ow):
            rows = [i * stride[0] - padding[0] + k * dilation[0] for k in range(kernel[0])]
            cols = [j * stride[1] - padding[1] + k * dilation[1] for k in range(kernel[1])]
            rows = [r for r in rows if 0 <= r < h]
            cols = [s for s in cols if 0 <= s < w]
            out[:, i, j] = q[:, rows][:, :, cols].max(axis=(1, 2))
    return out


def avg_pool2d(q, z: int, kernel, stride, padding, out_size, count_include_pad=True, divisor_override=None):
    """torch's ``avg_pool2d`` on uint8 NHWC codes with the input's scale and zero point ``z``:
    ``clip(rint((sum of the codes inside the image - n*z) / d) + z, 0, 255)`` in float64, ``d`` torch's divisor
    (the window clipped to the padded input, or the taps inside the image, or ``divisor_override``)."""
    q = np.asarray(q).astype(np.int64)
    b, h, w, c = q.shape
    oh, ow = out_size
    out = np.zeros((b, oh, ow, c), np.uint8)
    for i in range(oh):
        h0 = i * stride[0] - padding[0]
        h1 = min(h0 + kernel[0], h + padding[0])
        for j in range(ow):
            w0 = j * stride[1] - padding[1]
            w1 = min(w0 + kernel[1], w + padding[1])
            size = (h1 - h0) * (w1 - w0)
            r0, r1, c0, c1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
            n = (r1 - r0) * (c1 - c0)
            d = divisor_override or (size if count_include_pad else n)
            s = q[:, r0:r1, c0:c1].sum(axis=(1, 2)) - n * z
            out[:, i, j] = np.clip(np.rint(s / float(d)) + z, 0, 255).astype(np.uint8)
    return out


def adaptive_avg_pool2d(q, z: int, out_size) -> np.ndarray:
    """torch's ``adaptive_avg_pool2d`` on uint8 NHWC codes: windows ``[floor(i*H/OH), ceil((i+1)*H/OH))``, the
    average ``clip(rint((S - n*z) / n) + z, 0, 255)`` in float64."""
    q = np.asarray(q).astype(np.int64)
    b, h, w, c = q.shape
    oh, ow = out_size
    out = np.zeros((b, oh, ow, c), np.uint8)
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            n = (r1 - r0) * (c1 - c0)
            s = q[:, r0:r1, c0:c1].sum(axis=(1, 2)) - n * z
            out[:, i, j] = np.clip(np.rint(s / float(n)) + z, 0, 255).astype(np.uint8)
    return out


def lookup(q, table) -> np.ndarray:
    """``table[q]``: an elementwise function of the codes (requantization, Hardswish, ...)."""
    return np.asarray(table, np.uint8)[np.asarray(q)]


def dequantize(q, z: int, scale) -> np.ndarray:
    """float32 NCHW ``float32(q - z) * scale`` of uint8 NHWC codes."""
    v = (np.asarray(q).astype(np.int32) - z).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray(v.transpose(0, 3, 1, 2))


def quantize(x, scale, z: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    """uint8 NHWC codes of float32 NCHW ``x``: ``clip(rint(x * float32(1/scale)) + z, lo, hi)`` (the linear
    scheme's rule: ``x * inv`` clipped to ``[lo - z, hi - z]`` in float32, then rounded)."""
    inv = np.float32(1) / np.float32(scale)
    t = np.asarray(x, np.float32) * inv
    t = np.minimum(np.maximum(t, np.float32(lo - z)), np.float32(hi - z))
    return (np.rint(t).astype(np.int32) + z).astype(np.uint8).transpose(0, 2, 3, 1)
