"""The ``qconv2d`` capability: the kernel-level operations of a static int8 CNN (``qcore.ops.PackedConv2d``) —
input quantization to uint8 NHWC codes, packed int8 weights, the convolution with its fused requantization —
with the numpy reference beside each operation (the ``_`` methods' defaults, exact in int64).

Numerics every implementation follows bit for bit (docs/gemm.md, "Static int8 convolution"):

* input codes: ``q = rint(min(max(x * inv, lo - z), hi - z)) + z`` (float32 product, half to even); channels
  ``C..Cp-1`` of an NHWC row hold ``z``;
* ``acc[m, n] = sum_{kh, kw, c} (a[pixel, c] - za) * w[n, c, kh, kw]`` exactly (padding reads ``za``);
* output ``mode`` 0: ``acc`` (int32); 1: ``y = float32(acc) * mult[n] + bias[n]``, then ``max(y, 0)`` with
  ``relu``; 2: the same ``y``, then ``rint(min(max(y, 0 if relu else -zo), 255 - zo)) + zo`` as uint8 codes
  (channels ``N..ldo-1`` of a row hold ``zo``).

The public methods check what the reference needs (dtypes, shapes, the geometry); ``qcore.ops.PackedConv2d``
validates user input before it calls them.  Packed weights are opaque and valid only for the kernel that made
them; :meth:`conv_columns` reads what the caller needs of them.
"""
from __future__ import annotations

import numpy as np

from .core import KernelBase

#: (OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg): the geometry tuple of :meth:`ConvOps.conv_run`
GEOMETRY = ("OH", "OW", "KH", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "N", "groups", "Cg")


def _check(a, dtype, ndim, name):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {ndim}-D {np.dtype(dtype).name} array")


def _check_codes(z, lo, hi, cp, c):
    if cp < c or cp % 4 or not (0 <= lo <= z <= hi <= 255):
        raise ValueError("inconsistent channel padding or code range")


class ConvOps(KernelBase):
    """The ``qconv2d`` capability."""

    capability = "qconv2d"

    # -- public operations -----------------------------------------------------------------------------
    def conv_pack(self, w2d):
        """Pack int8 weights ``(N, KH*KW*Cp)`` (taps ordered ``(kh, kw, c)``, channels padded to ``Cp`` with
        zeros) once for :meth:`conv_run` with ``groups == 1``."""
        _check(w2d, np.int8, 2, "w2d")
        if w2d.shape[0] < 1 or w2d.shape[1] < 1:
            raise ValueError("conv_pack needs a non-empty weight")
        return self._conv_pack(w2d)

    def conv_columns(self, packed) -> tuple[int, np.ndarray]:
        """``(np_, colsum)`` of packed weights: the padded column count (per-channel arrays passed to
        :meth:`conv_run` hold at least ``np_`` values) and the int32 ``(np_,)`` column sums of the weights."""
        return self._conv_columns(packed)

    def conv_quantize_nchw(self, x, inv: float, z: int, lo: int, hi: int, out, pad=(0, 0)) -> bool:
        """float32 NCHW ``x`` ``(B, C, H, W)`` to uint8 NHWC codes in the interior of ``out``
        ``(B, H + 2*pad[0], W + 2*pad[1], Cp)`` (the spatial border is the caller's).  True if ``x`` holds NaN
        or Inf (``out`` then holds garbage, in range)."""
        _check(x, np.float32, 4, "x")
        _check(out, np.uint8, 4, "out")
        b, c, h, w = x.shape
        ph, pw = int(pad[0]), int(pad[1])
        if ph < 0 or pw < 0 or out.shape[:3] != (b, h + 2 * ph, w + 2 * pw):
            raise ValueError("conv_quantize_nchw: inconsistent shapes")
        _check_codes(z, lo, hi, out.shape[3], c)
        if x.size == 0:
            return False
        return bool(self._conv_quantize_nchw(x, float(np.float32(inv)), int(z), int(lo), int(hi), out, (ph, pw)))

    def conv_quantize_rows(self, x, inv: float, z: int, lo: int, hi: int, out) -> bool:
        """float32 rows ``x`` ``(R, C)`` (NHWC pixels or Linear inputs) to uint8 ``out`` ``(R, Cp)``.  True if ``x``
        holds NaN or Inf."""
        _check(x, np.float32, 2, "x")
        _check(out, np.uint8, 2, "out")
        if out.shape[0] != x.shape[0]:
            raise ValueError("conv_quantize_rows: inconsistent shapes")
        _check_codes(z, lo, hi, out.shape[1], x.shape[1])
        if x.shape[0] == 0 or x.shape[1] == 0:
            out[...] = z
            return False
        return bool(self._conv_quantize_rows(x, float(np.float32(inv)), int(z), int(lo), int(hi), out))

    def conv_run(self, a, geom, za: int, packed, wg, zc, mult, bias, mode: int, relu: bool, zo: int, out,
                 opad=(0, 0), nchw: bool = False):
        """The convolution of uint8 NHWC codes ``a`` ``(B, H, W, Cp)`` into ``out`` (module doc).

        ``geom``: :data:`GEOMETRY`.  ``groups == 1``: ``packed`` from :meth:`conv_pack`; ``groups > 1``: ``wg``
        the C-contiguous int8 ``(N, KH*KW, Cg)`` weights.  ``zc`` (``za`` times the column sums, int32
        wrapping), ``mult``, ``bias`` (or None): arrays of at least the padded column count.  ``mode`` 0 / 1 / 2:
        int32 / float32 / uint8 output.  ``out``: 2-D, ``B * (OH + 2*opad[0]) * (OW + 2*opad[1])`` pixel rows of
        at least ``N`` elements (``opad``: the next layer's zero padding, uint8 output only, filled with ``zo``
        by the caller; only the interior is written), or with ``nchw`` (float output) ``(B*N, OH*OW)``."""
        _check(a, np.uint8, 4, "a")
        geom = tuple(int(v) for v in geom)
        if len(geom) != len(GEOMETRY):
            raise ValueError(f"geom must be {GEOMETRY}")
        oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, n, groups, cg = geom
        bsz, h, w, cp = a.shape
        if min(oh, ow, kh, kw, sh, sw, dh, dw, n, groups) < 1 or ph < 0 or pw < 0 or cp % 4 or cp < 4:
            raise ValueError("conv_run: bad geometry")
        if oh > (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1 or ow > (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1:
            raise ValueError("conv_run: output size inconsistent with the input")
        if mode not in (0, 1, 2) or not (0 <= za <= 255 and 0 <= zo <= 255):
            raise ValueError("conv_run: bad mode or zero point")
        if groups > 1:
            _check(wg, np.int8, 3, "wg")
            if wg.shape != (n, kh * kw, cg) or n % groups or groups * cg > cp:
                raise ValueError("conv_run: grouped weights do not match the geometry")
        want = (np.int32, np.float32, np.uint8)[mode]
        if not isinstance(out, np.ndarray) or out.dtype != want or out.ndim != 2 or not out.flags.c_contiguous:
            raise ValueError("conv_run: bad output array")
        opad = (int(opad[0]), int(opad[1]))
        if min(opad) < 0 or (opad != (0, 0) and mode != 2) or (nchw and mode != 1):
            raise ValueError("conv_run: output padding is for uint8 output, NCHW for float output")
        rows = bsz * (oh + 2 * opad[0]) * (ow + 2 * opad[1])
        if (out.shape != (bsz * n, oh * ow)) if nchw else (out.shape[0] != rows or out.shape[1] < n):
            raise ValueError("conv_run: bad output array")
        if bsz == 0:
            return out
        self._conv_run(a, geom, int(za), packed, wg, zc, mult, bias, int(mode), bool(relu), int(zo), out, opad,
                       bool(nchw))
        return out

    # -- the reference (a kernel overrides what it accelerates) ------------------------------------------
    def _conv_pack(self, w2d):
        return ReferenceConvWeight(w2d)

    def _conv_columns(self, packed):
        if not isinstance(packed, ReferenceConvWeight):
            raise self._foreign("packed", packed)
        return packed.codes.shape[0], packed.colsum

    def _conv_quantize_nchw(self, x, inv, z, lo, hi, out, pad) -> bool:
        b, c, h, w = x.shape
        ph, pw = pad
        out[:, ph:ph + h, pw:pw + w, :] = z
        out[:, ph:ph + h, pw:pw + w, :c] = quantize_codes(x.transpose(0, 2, 3, 1), inv, z, lo, hi)
        return not np.isfinite(x).all()

    def _conv_quantize_rows(self, x, inv, z, lo, hi, out) -> bool:
        out[...] = z
        out[:, :x.shape[1]] = quantize_codes(x, inv, z, lo, hi)
        return not np.isfinite(x).all()

    def _conv_run(self, a, geom, za, packed, wg, zc, mult, bias, mode, relu, zo, out, opad, nchw) -> None:
        oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, n, groups, cg = geom
        if groups == 1:
            if not isinstance(packed, ReferenceConvWeight) or packed.codes.shape != (n, kh * kw * a.shape[3]):
                raise ValueError("conv_run: packed weights do not match the geometry")
            weights = packed.codes.reshape(n, kh * kw, a.shape[3])
        else:
            weights = wg
        acc = conv_int64(a, za, weights, geom)
        if mode == 0:
            y = acc.astype(np.int32)
        else:
            y = acc.astype(np.int32).astype(np.float32) * np.asarray(mult, np.float32)[:n]
            if bias is not None:
                y = y + np.asarray(bias, np.float32)[:n]
            if relu:
                y = np.maximum(y, np.float32(0))
            if mode == 2:
                y = np.minimum(np.maximum(y, np.float32(0 if relu else -zo)), np.float32(255 - zo))
                y = (np.rint(y).astype(np.int32) + zo).astype(np.uint8)
        bsz = a.shape[0]
        if nchw:
            out[...] = y.transpose(0, 3, 1, 2).reshape(bsz * n, oh * ow)
            return
        img = out.reshape(bsz, oh + 2 * opad[0], ow + 2 * opad[1], out.shape[1])
        inner = img[:, opad[0]:opad[0] + oh, opad[1]:opad[1] + ow]
        inner[..., :n] = y
        if mode == 2:
            inner[..., n:] = zo


class ReferenceConvWeight:
    """The reference's packed convolution weight: the int8 ``(N, KH*KW*Cp)`` codes and their column sums."""

    def __init__(self, w2d):
        self.codes = np.array(w2d, np.int8, order="C")
        self.colsum = self.codes.astype(np.int64).sum(axis=1).astype(np.int32)

    @property
    def nbytes(self):
        return self.codes.nbytes + self.colsum.nbytes


def quantize_codes(x, inv: float, z: int, lo: int, hi: int) -> np.ndarray:
    """uint8 ``rint(min(max(x * inv, lo - z), hi - z)) + z`` (float32; NaN/Inf give some code in range)."""
    with np.errstate(invalid="ignore", over="ignore"):
        t = np.asarray(x, np.float32) * np.float32(inv)
        t = np.minimum(np.maximum(t, np.float32(lo - z)), np.float32(hi - z))
        t = np.where(np.isnan(t), np.float32(lo - z), t)
    return (np.rint(t).astype(np.int32) + z).astype(np.uint8)


def conv_int64(a, za: int, weights, geom) -> np.ndarray:
    """Exact ``acc[b, oh, ow, n] = sum_{t, c} (a[b, ih, iw, c] - za) * weights[n, t, c]`` (int64) of uint8 NHWC
    ``a`` and int8 ``weights`` ``(N, KH*KW, Cg)`` (``Cg`` the channels of one group; taps ordered ``(kh, kw)``);
    positions in the zero padding contribute 0."""
    oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, n, groups, cg = geom
    bsz, h, w, cp = a.shape
    ap = np.zeros((bsz, h + 2 * ph, w + 2 * pw, cp), np.int64)
    ap[:, ph:ph + h, pw:pw + w] = a.astype(np.int64) - za
    wt = np.asarray(weights).astype(np.int64)
    acc = np.zeros((bsz, oh, ow, n), np.int64)
    ng = n // groups
    for i in range(kh):
        for j in range(kw):
            tap = ap[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            t = i * kw + j
            for g in range(groups):
                cin = tap[..., g * cg:(g + 1) * cg] if groups > 1 else tap[..., :wt.shape[2]]
                acc[..., g * ng:(g + 1) * ng] += cin @ wt[g * ng:(g + 1) * ng, t, :].T
    return acc
