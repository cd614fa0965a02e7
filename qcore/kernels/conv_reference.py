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


def conv_epilogue(acc: np.ndarray, mult, bias=None, clamp=None, zo=None, residual=None) -> np.ndarray:
    """The convolution's epilogue on exact int32 sums ``acc`` (..., N): ``y = float32(acc) * mult + bias``;
    ``residual = (r, zr, mr)`` (uint8 output): then ``y = y + float32(r - zr) * mr`` (a residual addition fused);
    float output (``zo`` None): ``clip(y, *clamp)`` when given; uint8 output: ``rint(clip(y, *clamp)) + zo`` with
    ``clamp`` defaulting to the code range ``(-zo, 255 - zo)``."""
    y = np.asarray(acc).astype(np.int32).astype(np.float32) * np.asarray(mult, np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    if residual is not None:
        r, zr, mr = residual
        y = y + (np.asarray(r).astype(np.int32) - int(zr)).astype(np.float32) * np.float32(mr)
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


def avg_pool_windows(q, z: int, hs, he, ws, we, div) -> np.ndarray:
    """Average pooling of uint8 NHWC ``q`` over explicit windows: output pixel ``(i, j)`` averages the codes of rows
    ``[hs[i], he[i])`` x columns ``[ws[j], we[j])`` (inside the image) with the divisor ``div[i, j]``:
    ``clip(rint((S - n*z) / d) + z, 0, 255)`` in float64 (``S`` their sum, ``n`` their count)."""
    q = np.asarray(q).astype(np.int64)
    b, _, _, c = q.shape
    div = np.asarray(div, np.float64)
    out = np.zeros((b, len(hs), len(ws), c), np.uint8)
    for i, (r0, r1) in enumerate(zip(hs, he)):
        for j, (c0, c1) in enumerate(zip(ws, we)):
            n = (r1 - r0) * (c1 - c0)
            s = q[:, r0:r1, c0:c1].sum(axis=(1, 2)) - n * z
            out[:, i, j] = np.clip(np.rint(s / div[i, j]) + z, 0, 255).astype(np.uint8)
    return out


def avg_pool2d(q, z: int, kernel, stride, padding, out_size, count_include_pad=True, divisor_override=None):
    """torch's ``avg_pool2d`` on uint8 NHWC codes with the input's scale and zero point ``z``:
    ``clip(rint((sum of the codes inside the image - n*z) / d) + z, 0, 255)`` in float64, ``d`` torch's divisor
    (the window clipped to the padded input, or the taps inside the image, or ``divisor_override``)."""
    _, h, w, _ = np.shape(q)
    oh, ow = out_size
    h0 = np.arange(oh) * stride[0] - padding[0]
    h1 = np.minimum(h0 + kernel[0], h + padding[0])
    w0 = np.arange(ow) * stride[1] - padding[1]
    w1 = np.minimum(w0 + kernel[1], w + padding[1])
    hs, he, ws, we = np.maximum(h0, 0), np.minimum(h1, h), np.maximum(w0, 0), np.minimum(w1, w)
    if divisor_override:
        div = np.full((oh, ow), float(divisor_override))
    elif count_include_pad:
        div = np.outer(h1 - h0, w1 - w0).astype(np.float64)
    else:
        div = np.outer(he - hs, we - ws).astype(np.float64)
    return avg_pool_windows(q, z, hs, he, ws, we, div)


def adaptive_avg_pool2d(q, z: int, out_size) -> np.ndarray:
    """torch's ``adaptive_avg_pool2d`` on uint8 NHWC codes: windows ``[floor(i*H/OH), ceil((i+1)*H/OH))``, the
    average ``clip(rint((S - n*z) / n) + z, 0, 255)`` in float64."""
    _, h, w, _ = np.shape(q)
    oh, ow = out_size
    hs, he = (np.arange(oh) * h) // oh, -((-(np.arange(oh) + 1) * h) // oh)
    ws, we = (np.arange(ow) * w) // ow, -((-(np.arange(ow) + 1) * w) // ow)
    return avg_pool_windows(q, z, hs, he, ws, we, np.outer(he - hs, we - ws).astype(np.float64))


def lookup(q, table) -> np.ndarray:
    """``table[q]``: an elementwise function of the codes (requantization, Hardswish, ...)."""
    return np.asarray(table, np.uint8)[np.asarray(q)]


def dequantize(q, z: int, scale) -> np.ndarray:
    """float32 NCHW ``float32(q - z) * scale`` of uint8 NHWC codes."""
    v = (np.asarray(q).astype(np.int32) - z).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray(v.transpose(0, 3, 1, 2))


def quantize_codes(x, inv, z: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    """uint8 ``rint(min(max(x * inv, lo - z), hi - z)) + z`` elementwise (float32 ``x * inv``, half to even; the
    linear scheme's rule with ``inv = float32(1 / scale)``).  NaN gives some code in range."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = np.asarray(x, np.float32) * np.float32(inv)
        t = np.minimum(np.maximum(t, np.float32(lo - z)), np.float32(hi - z))
        t = np.where(np.isnan(t), np.float32(lo - z), t)
    return (np.rint(t).astype(np.int32) + z).astype(np.uint8)


def quantize(x, scale, z: int, lo: int = 0, hi: int = 255) -> np.ndarray:
    """uint8 NHWC codes of float32 NCHW ``x``: ``clip(rint(x * float32(1/scale)) + z, lo, hi)`` (the linear
    scheme's rule: ``x * inv`` clipped to ``[lo - z, hi - z]`` in float32, then rounded)."""
    inv = np.float32(1) / np.float32(scale)
    return quantize_codes(x, inv, z, lo, hi).transpose(0, 2, 3, 1)
