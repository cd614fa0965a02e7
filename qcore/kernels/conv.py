"""The ``qconv2d`` capability: the kernel-level operations of a static int8 CNN — input quantization to uint8 NHWC
codes, packed int8 weights, the convolution with its fused requantization (``qcore.ops.PackedConv2d``), and the
uint8 operations between convolutions: residual addition, max and average pooling, table lookups (concatenation,
elementwise activations), dequantization (``qcore.ops.cnn``).  The numpy reference of each is the ``_`` method's
default, built on the functions of ``qcore/kernels/conv_reference.py``.

Numerics every implementation follows bit for bit (docs/gemm.md, "Static int8 convolution" and "The uint8
operations of a static CNN"):

* input codes: ``q = rint(min(max(x * inv, lo - z), hi - z)) + z`` (float32 product, half to even); channels
  ``C..Cp-1`` of an NHWC row hold ``z``;
* ``acc[m, n] = sum_{kh, kw, c} (a[pixel, c] - za) * w[n, c, kh, kw]`` exactly (padding reads ``za``);
* output ``mode`` 0: ``acc`` (int32); 1: ``y = float32(acc) * mult[n] + bias[n]``, clipped to ``clamp`` when
  given; 2: the same ``y``, then ``rint(min(max(y, lo), hi)) + zo`` as uint8 codes, ``(lo, hi)`` the ``clamp``
  (code units relative to ``zo``) or ``(-zo, 255 - zo)`` (channels ``N..ldo-1`` of a row hold ``zo``);
* the uint8 operations: the formulas of their reference functions in ``conv_reference``.

Activations between layers are uint8 NHWC buffers with a *border* ``(bh, bw)`` of pixels around each image (the
zero padding of the convolution that reads them); the operations read and write the *interiors*.  The public
methods check shapes and ranges (``qcore.ops.PackedConv2d`` and ``qcore.ops.cnn`` validate user input before
they call them).  Packed weights are opaque and valid only for the kernel that made them; :meth:`conv_columns`
reads what the caller needs of them.
"""
from __future__ import annotations

import numpy as np

from . import conv_reference as ref
from .core import KernelBase

#: (OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg): the geometry tuple of :meth:`ConvOps.conv_run`
GEOMETRY = ("OH", "OW", "KH", "KW", "sh", "sw", "ph", "pw", "dh", "dw", "N", "groups", "Cg")


def _check(a, dtype, ndim, name):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {ndim}-D {np.dtype(dtype).name} array")


def _check_codes(z, lo, hi, cp, c):
    if cp < c or cp % 4 or not (0 <= lo <= z <= hi <= 255):
        raise ValueError("inconsistent channel padding or code range")


def interior(a, border, name="a") -> np.ndarray:
    """The interior view ``(B, H, W, Cp)`` of a C-contiguous uint8 NHWC buffer with a ``border`` of pixels."""
    _check(a, np.uint8, 4, name)
    bh, bw = int(border[0]), int(border[1])
    if bh < 0 or bw < 0 or a.shape[1] - 2 * bh < 1 or a.shape[2] - 2 * bw < 1 or a.shape[3] < 1:
        raise ValueError(f"{name}: border {(bh, bw)} does not fit a buffer of shape {a.shape}")
    return a[:, bh:a.shape[1] - bh, bw:a.shape[2] - bw]


class ConvOps(KernelBase):
    """The ``qconv2d`` capability."""

    capability = "qconv2d"

    # -- the convolution -------------------------------------------------------------------------------
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
        ``(B, H + 2*pad[0], W + 2*pad[1], Cp)`` (the spatial border is the caller's; ``out`` may have more rows
        than that after each image, also the caller's).  ``Cp >= C``: a multiple of 4, or ``C`` itself (the
        "dense rows" input of :meth:`conv_prepare`).  True if ``x`` holds NaN or Inf (``out`` then holds
        garbage, in range)."""
        _check(x, np.float32, 4, "x")
        _check(out, np.uint8, 4, "out")
        b, c, h, w = x.shape
        ph, pw = int(pad[0]), int(pad[1])
        if ph < 0 or pw < 0 or out.shape[0] != b or out.shape[1] < h + 2 * ph or out.shape[2] != w + 2 * pw:
            raise ValueError("conv_quantize_nchw: inconsistent shapes")
        cp = out.shape[3]
        _check_codes(z, lo, hi, -(-c // 4) * 4 if cp == c else cp, c)  # Cp == C: dense rows
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

    def conv_run(self, a, geom, za: int, packed, wg, zc, mult, bias, mode: int, clamp, zo: int, out,
                 opad=(0, 0), nchw: bool = False, crop=None):
        """The convolution of uint8 NHWC codes ``a`` ``(B, H, W, Cp)`` into ``out`` (module doc).

        ``crop = (y0, x0, H', W')``: the input is that window of each image of ``a`` (the interior of a buffer
        with a border, seen with the border the layer's padding needs); None: all of ``a``.  ``geom``:
        :data:`GEOMETRY`.  ``groups == 1``: ``packed`` from :meth:`conv_pack`; ``groups > 1``: ``wg`` the
        C-contiguous int8 ``(N, KH*KW, Cg)`` weights.  ``zc`` (``za`` times the column sums, int32 wrapping),
        ``mult``, ``bias`` (or None): arrays of at least the padded column count.  ``mode`` 0 / 1 / 2: int32 /
        float32 / uint8 output.  ``clamp``: None or ``(lo, hi)`` (module doc; uint8: within ``[-zo, 255 - zo]``).
        ``out``: 2-D, ``B * (OH + 2*opad[0]) * (OW + 2*opad[1])`` pixel rows of at least ``N`` elements
        (``opad``: the next layer's zero padding, uint8 output only, filled with ``zo`` by the caller; only the
        interior is written), or with ``nchw`` (float output) ``(B*N, OH*OW)``."""
        _check(a, np.uint8, 4, "a")
        geom = tuple(int(v) for v in geom)
        if len(geom) != len(GEOMETRY):
            raise ValueError(f"geom must be {GEOMETRY}")
        oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, n, groups, cg = geom
        bsz, h, w, cp = a.shape
        if crop is not None:
            y0, x0, h2, w2 = (int(v) for v in crop)
            if y0 < 0 or x0 < 0 or h2 < 1 or w2 < 1 or y0 + h2 > h or x0 + w2 > w:
                raise ValueError("conv_run: crop outside the input")
            crop, h, w = (y0, x0, h2, w2), h2, w2
        if min(oh, ow, kh, kw, sh, sw, dh, dw, n, groups) < 1 or ph < 0 or pw < 0 or cp % 4 or cp < 4:
            raise ValueError("conv_run: bad geometry")
        if oh > (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1 or ow > (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1:
            raise ValueError("conv_run: output size inconsistent with the input")
        if mode not in (0, 1, 2) or not (0 <= za <= 255 and 0 <= zo <= 255):
            raise ValueError("conv_run: bad mode or zero point")
        if clamp is not None:
            clamp = (float(clamp[0]), float(clamp[1]))
            if mode == 2 and not (-zo <= clamp[0] <= clamp[1] <= 255 - zo):
                raise ValueError("conv_run: a uint8 clamp must lie within [-zo, 255 - zo]")
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
        self._conv_run(a, geom, int(za), packed, wg, zc, mult, bias, int(mode), clamp, int(zo), out, opad,
                       bool(nchw), crop)
        return out

    def conv_prepare(self, in_shape, geom, za: int, packed, wg, zc, mult, bias, mode: int, clamp, zo: int,
                     opad=(0, 0), nchw: bool = False, crop=None, lpad=(0, 0), tapsum=None, residual=None,
                     dense: bool = False):
        """The convolution of :meth:`conv_run` prepared for uint8 NHWC inputs of shape ``in_shape`` (a layer
        calls the same shapes again and again): every argument validated once; :meth:`conv_call` runs it.

        The prepared call (opaque, this kernel's) has ``out_shape`` and ``out_dtype``: the 2-D output array
        :meth:`conv_call` takes (:meth:`conv_run`'s ``out``); it fills the output's border (``opad``) with ``zo``
        itself.  ``lpad``: the zero padding carried inside the input window (its outer rows and columns hold
        ``za``, e.g. a border at least the padding): taps there add ``(za - za) * w = 0`` and a kernel may skip
        them, correcting the zero point with ``tapsum`` (int32 ``(KH*KW, np_)``: per tap, the sum over its
        channels of each column's weights; groups == 1).  ``residual = (zr, mr)`` (uint8 output, groups == 1):
        :meth:`conv_call` takes residual codes laid out like the output, and the epilogue adds
        ``float32(r - zr) * mr`` after the bias and before the clamp.

        ``dense=True``: "dense rows" input, for an image with few channels (RGB): pixels of ``Cp = C`` bytes (no
        channel padding), ``packed`` from :meth:`conv_pack` of ``(N, KH * Kr)`` weights, ``Kr = roundup4(KW*C)``
        (each kernel row's ``KW*C`` weights ordered ``(kw, c)``, then zeros), so a kernel row is one run of
        ``Kr`` bytes: ``KH * Kr`` multiply-adds per output instead of ``KH * KW * roundup4(C)``.  It needs
        groups == 1, dw == 1, no padding outside the window (``ph = pw = 0``: the window's border holds it, no
        ``lpad``/``tapsum``), and ``Kr - KW*C`` bytes of the input after the last window (an extra row)."""
        shape = tuple(int(v) for v in in_shape)
        if len(shape) != 4 or min(shape) < 0 or (not dense and (shape[3] % 4 or shape[3] < 4)) or shape[3] < 1:
            raise ValueError(f"conv_prepare: in_shape must be (B, H, W, Cp) with Cp a multiple of 4, got {in_shape}")
        geom = tuple(int(v) for v in geom)
        if len(geom) != len(GEOMETRY):
            raise ValueError(f"geom must be {GEOMETRY}")
        groups = geom[11]
        if dense:
            kr = -(-geom[3] * shape[3] // 4) * 4
            last = crop[0] + (geom[0] - 1) * geom[4] + (geom[2] - 1) * geom[8] if crop is not None else \
                (geom[0] - 1) * geom[4] + (geom[2] - 1) * geom[8]
            x0 = crop[1] if crop is not None else 0
            if groups != 1 or geom[6] or geom[7] or geom[9] != 1 or lpad != (0, 0) or tapsum is not None:
                raise ValueError("conv_prepare: dense rows need groups == 1, dw == 1, ph = pw = 0 and no lpad/tapsum")
            if shape[0] and ((last * shape[2] + x0 + (geom[1] - 1) * geom[5]) * shape[3] + kr
                             > shape[1] * shape[2] * shape[3]):
                raise ValueError("conv_prepare: dense rows need roundup4(KW*C) - KW*C bytes after the last window")
        lpad = (int(lpad[0]), int(lpad[1]))
        if min(lpad) < 0 or (lpad != (0, 0) and (geom[6] or geom[7])):
            raise ValueError("conv_prepare: lpad is for an input window that carries the padding (ph = pw = 0)")
        if tapsum is not None:
            _check(tapsum, np.int32, 2, "tapsum")
            if groups != 1 or tapsum.shape[0] != geom[2] * geom[3]:
                raise ValueError("conv_prepare: tapsum must have shape (KH*KW, np_) for groups == 1")
        if residual is not None:
            zr, mr = int(residual[0]), float(residual[1])
            if mode != 2 or groups != 1 or not 0 <= zr <= 255:
                raise ValueError("conv_prepare: a residual is for uint8 output of groups == 1, zero point in [0, 255]")
            residual = (zr, mr)
        return self._conv_prepare(shape, geom, int(za), packed, wg, zc, mult, bias, int(mode),
                                  None if clamp is None else (float(clamp[0]), float(clamp[1])), int(zo),
                                  (int(opad[0]), int(opad[1])), bool(nchw),
                                  None if crop is None else tuple(int(v) for v in crop), lpad, tapsum, residual,
                                  bool(dense))

    def conv_call(self, prepared, a, out, res=None):
        """Run a call of :meth:`conv_prepare` on uint8 ``a`` (of its ``in_shape``) into ``out`` (of its
        ``out_shape`` and ``out_dtype``); ``res``: the residual codes (``out``'s shape, uint8) when prepared with
        one."""
        return self._conv_call(prepared, a, out, res)

    # -- the uint8 operations between convolutions --------------------------------------------------------
    def cnn_add(self, a, a_border, za: int, ma: float, b, b_border, zb: int, mb: float, out, out_border, zo: int,
                lo: float, hi: float):
        """``out = rint(clip(float32(a - za) * ma + float32(b - zb) * mb, lo, hi)) + zo`` over the interiors (the
        same ``(B, H, W, Cp)``) of three uint8 NHWC buffers; ``[lo, hi]`` within ``[-zo, 255 - zo]``."""
        ia, ib, io = interior(a, a_border), interior(b, b_border, "b"), interior(out, out_border, "out")
        if not (ia.shape == ib.shape == io.shape):
            raise ValueError("cnn_add: a, b and out must have the same batch, interior size and channels")
        if not (0 <= za <= 255 and 0 <= zb <= 255 and 0 <= zo <= 255) or not (-zo <= lo <= hi <= 255 - zo):
            raise ValueError("cnn_add: zero points must lie in [0, 255] and [lo, hi] within [-zo, 255 - zo]")
        self._cnn_add(a, a_border, int(za), float(ma), b, b_border, int(zb), float(mb), out, out_border, int(zo),
                      float(lo), float(hi))
        return out

    def cnn_maxpool(self, a, a_border, out, out_border, kernel, stride, padding, dilation):
        """Max pooling of the interior of ``a`` into the interior of ``out`` (its size is the output size): output
        pixel ``(oh, ow)`` is the largest code over the taps ``(oh*sh - ph + kh*dh, ow*sw - pw + kw*dw)`` inside
        the input (every window must hold one)."""
        ia, io = interior(a, a_border), interior(out, out_border, "out")
        k, s, p, d = (tuple(int(v) for v in t) for t in (kernel, stride, padding, dilation))
        if io.shape[0] != ia.shape[0] or io.shape[3] != ia.shape[3]:
            raise ValueError("cnn_maxpool: out must have the batch and channels of a")
        if min(k + s + d) < 1 or min(p) < 0:
            raise ValueError("cnn_maxpool: bad window")
        if (io.shape[1] - 1) * s[0] - p[0] >= ia.shape[1] or (io.shape[2] - 1) * s[1] - p[1] >= ia.shape[2] \
                or p[0] > (k[0] - 1) * d[0] or p[1] > (k[1] - 1) * d[1]:
            raise ValueError("cnn_maxpool: a window lies outside the input")
        self._cnn_maxpool(a, a_border, out, out_border, k, s, p, d)
        return out

    def cnn_avgpool(self, a, a_border, out, out_border, hs, he, ws, we, div, z: int):
        """Average pooling of the interior of ``a`` into the interior of ``out``: output pixel ``(oh, ow)``
        averages input rows ``[hs[oh], he[oh])`` x columns ``[ws[ow], we[ow])`` (int32 arrays, inside the input)
        with the divisor ``div[oh, ow]`` (float64 ``(OH, OW)``): ``q = clip(rint((S - n*z) / d) + z, 0, 255)``."""
        ia, io = interior(a, a_border), interior(out, out_border, "out")
        if io.shape[0] != ia.shape[0] or io.shape[3] != ia.shape[3]:
            raise ValueError("cnn_avgpool: out must have the batch and channels of a")
        for name, t in (("hs", hs), ("he", he), ("ws", ws), ("we", we)):
            _check(t, np.int32, 1, name)
        _check(div, np.float64, 2, "div")
        oh, ow = io.shape[1], io.shape[2]
        if hs.shape[0] != oh or he.shape[0] != oh or ws.shape[0] != ow or we.shape[0] != ow or div.shape != (oh, ow):
            raise ValueError("cnn_avgpool: window tables do not match the output size")
        if (hs < 0).any() or (he > ia.shape[1]).any() or (he <= hs).any() or (ws < 0).any() \
                or (we > ia.shape[2]).any() or (we <= ws).any() or not (div > 0).all() or not 0 <= z <= 255:
            raise ValueError("cnn_avgpool: windows must be non-empty and inside the input, divisors positive")
        self._cnn_avgpool(a, a_border, out, out_border, hs, he, ws, we, div, int(z))
        return out

    def cnn_lut(self, a, a_border, channels: int, out, out_border, channel_offset: int, table):
        """The first ``channels`` bytes of every interior pixel of ``a`` through the 256-entry uint8 ``table``
        (None: copied) into channels ``[channel_offset, channel_offset + channels)`` of the interior pixels of
        ``out`` (the same batch and interior size)."""
        ia, io = interior(a, a_border), interior(out, out_border, "out")
        if io.shape[:3] != ia.shape[:3]:
            raise ValueError("cnn_lut: a and out must have the same batch and interior size")
        if channels < 1 or channels > ia.shape[3] or channel_offset < 0 or channel_offset + channels > io.shape[3]:
            raise ValueError("cnn_lut: channels out of range")
        if table is not None:
            _check(table, np.uint8, 1, "table")
            if table.shape[0] != 256:
                raise ValueError("cnn_lut: table must have 256 entries")
        self._cnn_lut(a, a_border, int(channels), out, out_border, int(channel_offset), table)
        return out

    def cnn_dequantize(self, a, a_border, channels: int, z: int, scale: float, out):
        """float32 NCHW ``out`` ``(B, channels, H, W)`` = ``float32(q - z) * scale`` of the interior of ``a``."""
        ia = interior(a, a_border)
        _check(out, np.float32, 4, "out")
        b, h, w, cp = ia.shape
        if out.shape != (b, channels, h, w) or channels < 1 or channels > cp or not 0 <= z <= 255:
            raise ValueError("cnn_dequantize: out must have shape (B, channels, H, W) with channels <= Cp")
        self._cnn_dequantize(a, a_border, int(channels), int(z), float(scale), out)
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
        out[:, ph:ph + h, pw:pw + w, :c] = ref.quantize_codes(x, inv, z, lo, hi).transpose(0, 2, 3, 1)
        return not np.isfinite(x).all()

    def _conv_quantize_rows(self, x, inv, z, lo, hi, out) -> bool:
        out[...] = z
        out[:, :x.shape[1]] = ref.quantize_codes(x, inv, z, lo, hi)
        return not np.isfinite(x).all()

    def _conv_run(self, a, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, out, opad, nchw, crop,
                  residual=None, dense=False) -> None:
        oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, n, groups, cg = geom
        if crop is not None:
            y0, x0, h, w = crop
            a = a[:, y0:y0 + h, x0:x0 + w]
        cp = a.shape[3]
        if groups == 1 and dense:  # (N, KH * roundup4(KW*C)): each kernel row's KW*C weights, then zeros
            kr = -(-kw * cp // 4) * 4
            if not isinstance(packed, ReferenceConvWeight) or packed.codes.shape != (n, kh * kr):
                raise ValueError("conv_run: packed weights do not match the geometry")
            weights = packed.codes.reshape(n, kh, kr)[:, :, :kw * cp].reshape(n, kh, kw, cp).transpose(0, 3, 1, 2)
        elif groups == 1:
            if not isinstance(packed, ReferenceConvWeight) or packed.codes.shape != (n, kh * kw * cp):
                raise ValueError("conv_run: packed weights do not match the geometry")
            weights = packed.codes.reshape(n, kh, kw, cp).transpose(0, 3, 1, 2)
        else:
            weights = wg.reshape(n, kh, kw, cg).transpose(0, 3, 1, 2)
            a = a[..., :groups * cg]
        acc = ref.conv2d_int32(a, za, weights, (sh, sw), (ph, pw), (dh, dw), groups)[:, :oh, :ow]
        if mode == 0:
            y = acc.astype(np.int32)
        else:
            bsz = a.shape[0]
            if residual is not None:  # (codes laid out like out, zr, mr)
                rimg = residual[0].reshape(bsz, oh + 2 * opad[0], ow + 2 * opad[1], -1)
                residual = (rimg[:, opad[0]:opad[0] + oh, opad[1]:opad[1] + ow, :n], residual[1], residual[2])
            y = ref.conv_epilogue(acc, np.asarray(mult, np.float32)[:n], None if bias is None else
                                  np.asarray(bias, np.float32)[:n], clamp, zo if mode == 2 else None, residual)
        bsz = a.shape[0]
        if nchw:
            out[...] = y.transpose(0, 3, 1, 2).reshape(bsz * n, oh * ow)
            return
        img = out.reshape(bsz, oh + 2 * opad[0], ow + 2 * opad[1], out.shape[1])
        inner = img[:, opad[0]:opad[0] + oh, opad[1]:opad[1] + ow]
        inner[..., :n] = y
        if mode == 2:
            inner[..., n:] = zo

    def _conv_prepare(self, in_shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, opad, nchw, crop, lpad,
                      tapsum, residual, dense=False):
        return ReferenceConvCall(in_shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, opad, nchw, crop,
                                 residual, dense)

    def _conv_call(self, prepared, a, out, res):
        if not isinstance(prepared, ReferenceConvCall):
            raise self._foreign("prepared", prepared)
        return prepared.run(self, a, out, res)

    def _cnn_add(self, a, a_border, za, ma, b, b_border, zb, mb, out, out_border, zo, lo, hi) -> None:
        interior(out, out_border)[...] = ref.add(interior(a, a_border), za, ma, interior(b, b_border), zb, mb, zo,
                                                 lo, hi)

    def _cnn_maxpool(self, a, a_border, out, out_border, kernel, stride, padding, dilation) -> None:
        io = interior(out, out_border)
        io[...] = ref.max_pool2d(interior(a, a_border), kernel, stride, padding, dilation, io.shape[1:3])

    def _cnn_avgpool(self, a, a_border, out, out_border, hs, he, ws, we, div, z) -> None:
        interior(out, out_border)[...] = ref.avg_pool_windows(interior(a, a_border), z, hs, he, ws, we, div)

    def _cnn_lut(self, a, a_border, channels, out, out_border, channel_offset, table) -> None:
        src = interior(a, a_border)[..., :channels]
        interior(out, out_border)[..., channel_offset:channel_offset + channels] = (
            src if table is None else ref.lookup(src, table))

    def _cnn_dequantize(self, a, a_border, channels, z, scale, out) -> None:
        out[...] = ref.dequantize(interior(a, a_border)[..., :channels], z, scale)


class ReferenceConvCall:
    """The reference's prepared convolution: the arguments, run through the reference ``_conv_run``."""

    def __init__(self, in_shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, opad, nchw, crop, residual,
                 dense=False):
        oh, ow, n = geom[0], geom[1], geom[10]
        self.dense = dense
        bsz = in_shape[0]
        self.in_shape, self.args = in_shape, (geom, za, packed, wg, zc, mult, bias, mode, clamp, zo)
        self.opad, self.nchw, self.crop, self.residual = opad, nchw, crop, residual
        self.out_dtype = (np.int32, np.float32, np.uint8)[mode]
        if nchw:
            self.out_shape = (bsz * n, oh * ow)
        else:
            self.out_shape = (bsz * (oh + 2 * opad[0]) * (ow + 2 * opad[1]), (n + 3) // 4 * 4 if mode == 2 else n)

    def run(self, ops, a, out, res):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != self.in_shape:
            raise ValueError(f"conv_call: the input must be uint8 of shape {self.in_shape}")
        if not isinstance(out, np.ndarray) or out.dtype != self.out_dtype or out.shape != self.out_shape:
            raise ValueError(f"conv_call: the output must be {np.dtype(self.out_dtype).name} of shape {self.out_shape}")
        geom, za, packed, wg, zc, mult, bias, mode, clamp, zo = self.args
        if mode == 2 and self.opad != (0, 0):
            out[...] = zo
        residual = None
        if self.residual is not None:
            if not isinstance(res, np.ndarray) or res.dtype != np.uint8 or res.shape != self.out_shape:
                raise ValueError(f"conv_call: the residual must be uint8 of shape {self.out_shape}")
            residual = (res, self.residual[0], self.residual[1])
        if self.in_shape[0]:
            ops._conv_run(np.ascontiguousarray(a), geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, out,
                          self.opad, self.nchw, self.crop, residual, self.dense)
        return out


class ReferenceConvWeight:
    """The reference's packed convolution weight: the int8 ``(N, KH*KW*Cp)`` codes and their column sums."""

    def __init__(self, w2d):
        self.codes = np.array(w2d, np.int8, order="C")
        self.colsum = self.codes.astype(np.int64).sum(axis=1).astype(np.int32)

    @property
    def nbytes(self):
        return self.codes.nbytes + self.colsum.nbytes
