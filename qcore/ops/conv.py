"""Static int8 convolution (and Linear as a 1x1 convolution): validation and geometry here, the arithmetic in a
kernel's ``qconv2d`` capability (qcore/kernels/conv.py; ``kernel=None``: the default one, ``cython``).

:class:`PackedConv2d` holds one layer: int8 weights (symmetric, one scale per output channel) packed once,
the calibrated input quantization parameters (per tensor) and, optionally, a fused ReLU.  It runs

    input (float32 NCHW / rows, or uint8 NHWC codes)  ->  uint8 NHWC codes (static scale / zero point)
    ->  int32 accumulation  sum (a - za) * w  over KH*KW*C  (indirect GEMM, AVX-512 VNNI / AVX2 / baseline)
    ->  float32 output (NHWC), or uint8 codes requantized for the next layer, or the raw int32 (tests)

Arithmetic (documented in docs/gemm.md, "Static int8 convolution"; the tests reproduce it exactly in numpy):

* input codes: ``q = clamp(rint(x * float32(1/sa)) + za, qmin, qmax)`` (half to even; the linear scheme's rule)
* ``C[m, n] = sum_{kh, kw, c} (q[pixel, c] - za) * w[n, c, kh, kw]`` exactly (int32; padding reads ``za``)
* float output: ``y = float32(C) * M[n] + bias[n]`` then ``clip(y, lo, hi)`` with a fused activation (ReLU:
  ``(0, inf)``, ReLU6: ``(0, 6)``), ``M[n] = float32(sa * sw[n])``
* uint8 output: the same with ``M[n] = float32(sa * sw[n] / so)``, ``bias[n] / so``, then
  ``rint(clip(y, clo, chi)) + zo`` — the next layer's input codes, NHWC, channels padded to 4; ``[clo, chi]`` is
  the code range ``[-zo, 255 - zo]`` narrowed by the activation (``qcore.ops.cnn.code_bounds``)
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ..api import get_kernel
from ..validation import as_float32, non_finite_error

_INT32_MAX = (1 << 31) - 1


def _pair(v, name, minimum):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        a, b = (int(x) for x in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {(a, b)}")
    return a, b


class _Buffers:
    """Arrays a layer hands out call after call, taken back once nobody holds them.

    Handing a layer's multi-MB activation arrays out again, instead of a fresh ``np.empty`` per call, made the
    ResNet-18 forward at batch 32 (224²) 8-10 % faster in an A/B of one build (docs/benchmarks.md, "Buffer
    reuse"); the fresh arrays did not page-fault after warm-up, so the gain is the reused memory being warm, not
    the allocation itself.  ``get(slot, shape, dtype)`` returns the array this slot gave out last time when its only
    remaining references are this cache's (every consumer — a view, a torch tensor over it, the next layer —
    has dropped it), else a new one; so a result is never overwritten while anyone can still see it.  One
    array per slot is kept (the layer's last activation of that kind)."""

    def __init__(self):
        self._slots: dict[str, np.ndarray] = {}

    def get(self, slot: str, shape, dtype) -> np.ndarray:
        buf = self._slots.get(slot)
        # references: the dict's, ``buf``'s, getrefcount's argument — nobody else's
        if buf is not None and buf.shape == tuple(shape) and buf.dtype == dtype and sys.getrefcount(buf) == 3:
            return buf
        buf = np.empty(shape, dtype)
        self._slots[slot] = buf
        return buf

    def __getstate__(self):
        return {"_slots": {}}  # activations are not state: a copy or a pickle starts empty


def _padded_empty(b, h, w, c, ph, pw, fill, buffers: _Buffers | None = None, slot: str = "padded",
                  extra_rows: int = 0) -> np.ndarray:
    """uint8 (b, h + 2ph + extra_rows, w + 2pw, c) whose spatial border (and the extra rows after the bottom one)
    is ``fill`` (the interior is left for a kernel); from ``buffers``'s ``slot`` when given."""
    shape = (b, h + 2 * ph + extra_rows, w + 2 * pw, c)
    out = np.empty(shape, np.uint8) if buffers is None else buffers.get(slot, shape, np.uint8)
    if ph:
        out[:, :ph] = fill
    if ph or extra_rows:
        out[:, h + ph:] = fill
    if pw:
        out[:, :, :pw] = fill
        out[:, :, w + pw:] = fill
    return out


def roundup4(c: int) -> int:
    return (int(c) + 3) // 4 * 4


def activation_range(bits: int, signed: bool) -> tuple[int, int, int]:
    """(qmin, qmax, shift) of activation codes in the kernel's uint8 domain: signed codes are stored + 128."""
    bits = int(bits)
    if not 2 <= bits <= 8:
        raise ValueError(f"activation bits must be in 2..8, got {bits}")
    if signed:
        q = (1 << (bits - 1)) - 1
        return 128 - q, 128 + q, 128
    return 0, (1 << bits) - 1, 0


class PackedConv2d:
    """One static int8 convolution layer (``groups`` any; Linear is the 1x1 case, see :meth:`linear`).

    :param weight_codes: int8 ``(N, C // groups, KH, KW)`` symmetric weight codes (``w ~ codes * scale[n]``)
    :param weight_scale: float32 ``(N,)`` (or a scalar) per-output-channel scales, positive and finite
    :param bias: ``None`` or float ``(N,)``
    :param input_scale, input_zero_point: the calibrated per-tensor activation parameters
    :param input_bits, input_signed: the activation codes' width and signedness (affine: unsigned)
    :param relu: fuse ``max(., 0)`` into the output (the same as ``activation=(0, inf)``)
    :param activation: ``None`` or the bounds ``(lo, hi)`` of a fused clamp (ReLU ``(0, inf)``, ReLU6 ``(0, 6)``)
    :param kernel: the kernel that computes (a name or instance declaring ``qconv2d``); None: the default
    """

    def __init__(self, weight_codes, weight_scale, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                 input_scale, input_zero_point=0, input_bits=8, input_signed=False, relu=False, activation=None,
                 kernel=None):
        self.kernel = get_kernel(kernel, capability="qconv2d")
        w = np.asarray(weight_codes)
        if w.dtype != np.int8:
            raise TypeError(f"weight_codes must be int8 (symmetric codes), got dtype {w.dtype}")
        if w.ndim != 4:
            raise ValueError(f"weight_codes must be 4-D (N, C/groups, KH, KW), got shape {w.shape}")
        n, cg, kh, kw = (int(s) for s in w.shape)
        if min(n, cg, kh, kw) < 1:
            raise ValueError(f"weight_codes must be non-empty, got shape {w.shape}")
        self.groups = int(groups)
        if self.groups < 1 or n % self.groups:
            raise ValueError(f"groups={groups} must be >= 1 and divide the {n} output channels")
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.out_channels, self.kernel_size = n, (kh, kw)
        self.in_channels = cg * self.groups
        self.cp = roundup4(self.in_channels)
        sw = np.asarray(weight_scale, dtype=np.float64).reshape(-1)
        if sw.size == 1:
            sw = np.full(n, sw[0])
        if sw.shape != (n,):
            raise ValueError(f"weight_scale must be a scalar or have shape ({n},), got {np.shape(weight_scale)}")
        if not np.all(np.isfinite(sw)) or np.any(sw <= 0):
            raise ValueError("weight_scale must be positive and finite")
        self.weight_scale = sw.astype(np.float32)
        if bias is not None:
            bias = as_float32(bias, "bias").reshape(-1)
            if bias.shape != (n,):
                raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
        self.bias = bias
        self.set_input_params(input_scale, input_zero_point, input_bits, input_signed)
        if activation is None and relu:
            activation = (0.0, math.inf)
        if activation is not None:
            lo, hi = (float(v) for v in activation)
            if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
                raise ValueError(f"activation must be bounds (lo, hi) with lo <= hi, got {activation}")
            activation = (lo, hi)
        self.activation = activation
        self.relu = activation == (0.0, math.inf)
        t = kh * kw
        wmax = int(np.abs(w.astype(np.int32)).max())
        if t * (self.cp if self.groups == 1 else cg) * 255 * max(wmax, 1) > _INT32_MAX:
            raise ValueError(f"the reduction KH*KW*C = {t * cg} is too large for an exact int32 accumulator")
        wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))  # (N, KH, KW, Cg): K ordered (kh, kw, c)
        self.weight_codes = w
        if self.groups == 1:
            full = np.zeros((n, kh, kw, self.cp), np.int8)
            full[..., :cg] = wt
            self._w2d = full.reshape(n, t * self.cp)
            self._wg = None
        else:
            self._w2d = None
            self._wg = wt.reshape(n, t, cg)
            self._wg_colsum = self._wg.astype(np.int64).sum(axis=(1, 2))
        self._packed: dict[str, object] = {}
        self._zc: dict = {}
        self._epi: dict = {}
        self._calls: dict = {}
        self._buffers = _Buffers()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_calls"] = {}  # prepared kernel calls point into this object's arrays: made again after a copy
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_buffers", _Buffers())  # pickled before the buffers existed

    @classmethod
    def linear(cls, weight_codes, weight_scale, bias=None, **kwargs) -> "PackedConv2d":
        """A Linear layer ``(N, K)`` as a 1x1 convolution on a 1x1 image; call :meth:`forward_rows`."""
        w = np.asarray(weight_codes)
        if w.ndim != 2:
            raise ValueError(f"weight_codes must be 2-D (N, K), got shape {w.shape}")
        return cls(w.reshape(w.shape + (1, 1)), weight_scale, bias, **kwargs)

    # -- parameters --------------------------------------------------------------------------------------
    def set_input_params(self, scale, zero_point=0, bits=8, signed=False) -> None:
        s = float(np.asarray(scale, dtype=np.float64).reshape(-1)[0]) if np.size(scale) == 1 else None
        if s is None:
            raise ValueError("input_scale must be one value (per-tensor activation quantization)")
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"input_scale must be positive and finite, got {s}")
        inv = np.float32(1.0) / np.float32(s)
        if not np.isfinite(inv):
            raise ValueError("input_scale is too small: 1/scale overflows float32")
        if np.size(zero_point) != 1:
            raise ValueError("input_zero_point must be one integer")
        zp = int(np.asarray(zero_point).reshape(-1)[0])
        lo, hi, shift = activation_range(bits, signed)
        zu = zp + shift
        if not lo <= zu <= hi:
            raise ValueError(f"input_zero_point {zp} is outside the code range of {bits}-bit activations")
        self.input_scale, self.input_zero_point = np.float32(s), zp
        self.input_bits, self.input_signed = int(bits), bool(signed)
        self._inv, self._za, self._qlo, self._qhi = float(inv), zu, lo, hi
        self._epi = {}
        self._zc = {}
        self._calls = {}

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return oh, ow

    def _packed_for(self, isa: str):
        """The weights packed by the kernel at its current level ``isa`` (one packing per level)."""
        p = self._packed.get(isa)
        if p is None:
            p = self._packed.setdefault(isa, self.kernel.conv_pack(self._w2d))
        return p

    @property
    def dense_input(self) -> bool:
        """Whether :meth:`run_float` takes the "dense rows" path (the kernel's ``conv_prepare(dense=True)``): an
        image with fewer channels than their padded count (RGB: 3 of 4), groups == 1, dilation 1 along the width,
        where a kernel row read as ``roundup4(KW*C)`` bytes is shorter than ``KW*roundup4(C)`` (the 7x7 RGB stem:
        24 bytes instead of 28 per kernel row)."""
        kw, c = self.kernel_size[1], self.in_channels
        return self.groups == 1 and self.dilation[1] == 1 and c != self.cp and roundup4(kw * c) < kw * self.cp

    def _dense_packed_for(self, isa: str):
        """The weights as ``(N, KH * roundup4(KW*C))`` (each kernel row's ``(kw, c)`` weights, then zeros), packed
        by the kernel at level ``isa``."""
        key = ("dense", isa)
        p = self._packed.get(key)
        if p is None:
            n, (kh, kw), c = self.out_channels, self.kernel_size, self.in_channels
            rows = np.zeros((n, kh, roundup4(kw * c)), np.int8)
            rows[:, :, :kw * c] = self.weight_codes.transpose(0, 2, 3, 1).reshape(n, kh, kw * c)
            p = self._packed.setdefault(key, self.kernel.conv_pack(rows.reshape(n, -1)))
        return p

    def _epilogue(self, np_: int, mode: int, out_scale, out_zp):
        key = (np_, mode, out_scale, out_zp)
        e = self._epi.get(key)
        if e is None:
            n = self.out_channels
            m = np.zeros(np_, np.float32)
            b = None
            if mode == 2:
                m[:n] = (np.float64(self.input_scale) * self.weight_scale.astype(np.float64) / out_scale)
                if self.bias is not None:
                    b = np.zeros(np_, np.float32)
                    b[:n] = self.bias.astype(np.float64) / out_scale
            else:
                m[:n] = np.float64(self.input_scale) * self.weight_scale.astype(np.float64)
                if self.bias is not None:
                    b = np.zeros(np_, np.float32)
                    b[:n] = self.bias
            e = self._epi.setdefault(key, (m, b))
        return e

    # -- input quantization ------------------------------------------------------------------------------
    def quantize_input(self, x, padded: bool = False) -> np.ndarray:
        """float NCHW ``(B, C, H, W)`` -> uint8 NHWC codes ``(B, H, W, Cp)`` (InputError on NaN/Inf).

        ``padded=True``: ``(B, H + 2*ph, W + 2*pw, Cp)`` with this layer's zero padding already in place (the
        border holds the zero point) — the form :meth:`run_codes` takes with ``padded_input=True``.
        """
        return self._quantize_nchw(x, self.padding if padded else (0, 0), self.cp, "padded")

    def _quantize_nchw(self, x, padding, c: int, slot: str, extra_rows: int = 0) -> np.ndarray:
        """float NCHW ``x`` -> uint8 ``(B, H + 2*ph + extra_rows, W + 2*pw, c)`` codes with a border of the zero
        point, in the layer's buffer ``slot`` (``c``: the padded channel count, or the real one for dense rows)."""
        x = as_float32(x, "x", check_finite=False)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {x.shape}")
        b, _, h, w = x.shape
        ph, pw = padding
        out = _padded_empty(b, h, w, c, ph, pw, self._za, self._buffers, slot, extra_rows)
        if self.kernel.conv_quantize_nchw(np.ascontiguousarray(x), self._inv, self._za, self._qlo, self._qhi, out,
                                          (ph, pw)):
            raise non_finite_error(x, "x")
        return out

    def run_float(self, x, output: str = "float", out_scale=None, out_zero_point=0, *, out_padding=(0, 0),
                  nchw: bool = False) -> np.ndarray:
        """float NCHW ``x`` quantized with the layer's input parameters and convolved: the result of
        ``run_codes(quantize_input(x, padded=True), output, ..., padded_input=True)``, bit for bit.  Where
        :attr:`dense_input` holds, the codes are laid out as "dense rows" (pixels of C bytes, no channel padding,
        one extra row of the zero point after each padded image so a kernel row may be read as
        ``roundup4(KW*C)`` bytes) and each output takes ``KH * roundup4(KW*C)`` multiply-adds instead of
        ``KH * KW * roundup4(C)``."""
        if not self.dense_input:
            return self.run_codes(self.quantize_input(x, padded=True), output, out_scale, out_zero_point,
                                  padded_input=True, out_padding=out_padding, nchw=nchw)
        # + 1 row after each image: a kernel row's last read
        codes = self._quantize_nchw(x, self.padding, self.in_channels, "dense", extra_rows=1)
        return self._run(codes, output, out_scale, out_zero_point, False, out_padding, nchw, self.padding, None,
                         dense=True)

    def quantize_rows(self, x) -> np.ndarray:
        """float ``(R, C)`` rows (NHWC pixels or Linear inputs) -> uint8 ``(R, Cp)``."""
        x = as_float32(x, "x", check_finite=False)
        if x.ndim != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (R, {self.in_channels}), got {x.shape}")
        out = np.empty((x.shape[0], self.cp), np.uint8)
        if self.kernel.conv_quantize_rows(np.ascontiguousarray(x), self._inv, self._za, self._qlo, self._qhi, out):
            raise non_finite_error(x, "x")
        return out

    # -- the convolution ---------------------------------------------------------------------------------
    def run_codes(self, a, output: str = "float", out_scale=None, out_zero_point=0, *, padded_input: bool = False,
                  out_padding=(0, 0), nchw: bool = False, in_border=None, residual=None) -> np.ndarray:
        """The convolution of uint8 NHWC input codes ``a`` ``(B, H, W, Cp)`` (zero point = the input's).

        ``output``: ``"float"`` -> float32 ``(B, OH, OW, N)``; ``"uint8"`` -> codes ``(B, OH, OW, roundup4(N))``
        requantized with ``out_scale``/``out_zero_point`` (the fused activation clips first); ``"int32"`` -> the
        exact ``sum (a - za) * w`` ``(B, OH, OW, N)`` (no bias, no activation).
        ``in_border=(bh, bw)``: ``a`` is an image with a border of that many pixels around it, holding the input
        zero point (``qcore.ops.cnn.Codes``); where the border is at least this layer's padding, every window lies
        inside the buffer, the fastest path.  ``padded_input``: the same with a border equal to the padding
        (:meth:`quantize_input` with ``padded=True``).  ``out_padding`` (uint8 output): write the codes into
        ``(B, OH + 2*p, OW + 2*q, Cp')`` with a border of ``out_zero_point``.  ``nchw`` (float output): float32
        ``(B, N, OH, OW)`` instead.  ``residual = (codes, scale, zero_point)`` (uint8 output, ``groups == 1``): a
        residual addition fused into the epilogue — ``codes`` laid out like the output (its border and padded
        channels), ``y = y + float32(r - zr) * float32(sr / so)`` after the bias and before the clamp.

        The kernel's arguments are validated and prepared once per input shape and output form (the kernel's
        ``conv_prepare``, cached on the layer); later calls check only the arrays.
        """
        return self._run(a, output, out_scale, out_zero_point, padded_input, out_padding, nchw, in_border, residual)

    def _run(self, a, output, out_scale, out_zero_point, padded_input, out_padding, nchw, in_border, residual,
             dense=False):
        rspec, rcodes = None, None
        if residual is not None:
            rcodes, rs, rz = residual
            rspec = (float(rs), int(rz))
        key = (self.kernel.isa, getattr(a, "shape", None), output, out_scale, out_zero_point, padded_input,
               out_padding, nchw, in_border, rspec, dense)
        hit = self._calls.get(key)
        if hit is None:
            hit = self._calls.setdefault(key, self._prepare_call(a, output, out_scale, out_zero_point, padded_input,
                                                                 out_padding, nchw, in_border, rspec, dense))
        call, shape = hit
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        out = self._buffers.get("out", call.out_shape, call.out_dtype)
        if rcodes is not None:
            if not isinstance(rcodes, np.ndarray) or rcodes.dtype != np.uint8 or rcodes.shape != shape:
                raise ValueError(f"residual codes must be uint8 of the output's shape {shape}")
            rcodes = np.ascontiguousarray(rcodes).reshape(call.out_shape)
        self.kernel.conv_call(call, a, out, rcodes)
        return out.reshape(shape)

    def _prepare_call(self, a, output, out_scale, out_zero_point, padded_input, out_padding, nchw, in_border,
                      rspec=None, dense=False):
        """(the kernel's prepared call, result shape) for inputs like ``a`` (all of :meth:`run_codes`'s
        validation).  ``dense``: ``a`` holds :meth:`run_float`'s dense rows (C bytes per pixel, one extra row
        after each image's border)."""
        cp = self.in_channels if dense else self.cp
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != cp:
            raise ValueError(f"a must be uint8 NHWC codes of shape (B, H, W, {cp})")
        bsz, hb, wb, _ = a.shape
        pad = self.padding
        if in_border is None:
            in_border = pad if padded_input else (0, 0)
        bh, bw = _pair(in_border, "in_border", 0)
        h, w = hb - 2 * bh - int(dense), wb - 2 * bw
        oh, ow = self.output_size(h, w)
        if oh < 1 or ow < 1 or h < 1 or w < 1:
            raise ValueError(f"input {h}x{w} is smaller than the (dilated) kernel {self.kernel_size} with padding "
                             f"{self.padding}: the output would be {oh}x{ow}")
        if bh >= pad[0] and bw >= pad[1]:  # the border holds the padding: windows inside the buffer
            crop, kpad, lpad = (bh - pad[0], bw - pad[1], h + 2 * pad[0], w + 2 * pad[1]), (0, 0), pad
        else:
            crop, kpad, lpad = (bh, bw, h, w), pad, (0, 0)
        mode = {"int32": 0, "float": 1, "uint8": 2}.get(output)
        if mode is None:
            raise ValueError(f"output must be 'float', 'uint8' or 'int32', got {output!r}")
        so, zo = None, 0
        opad = _pair(out_padding, "out_padding", 0)
        clamp = self.activation
        if mode == 2:
            so = float(out_scale)
            zo = int(out_zero_point)
            if not np.isfinite(so) or so <= 0 or not 0 <= zo <= 255:
                raise ValueError("out_scale must be positive and finite and out_zero_point in [0, 255]")
            lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
            clamp = (float(np.float32(max(-zo, lo / so))), float(np.float32(min(255 - zo, hi / so))))
        elif opad != (0, 0):
            raise ValueError("out_padding is for uint8 output only")
        if mode == 0:
            clamp = None
        if nchw and mode != 1:
            raise ValueError("nchw is for float output only")
        n = self.out_channels
        isa = self.kernel.isa
        tapsum = None
        if dense:  # the window carries the padding; the dense rows are read whole (no taps skipped)
            if crop[2:] != (h + 2 * pad[0], w + 2 * pad[1]):
                raise ValueError("dense rows need a border of at least the layer's padding")
            packed, lpad = self._dense_packed_for(isa), (0, 0)
            (np_, cs), wg = self.kernel.conv_columns(packed), None
        elif self.groups == 1:
            packed = self._packed_for(isa)
            (np_, cs), wg = self.kernel.conv_columns(packed), None
            if lpad != (0, 0):  # per-tap column sums: skipping the taps in the padding corrects the zero point
                tapsum = self._packed.get(("tapsum", np_))
                if tapsum is None:
                    tapsum = np.zeros((self._w2d.shape[1] // self.cp, np_), np.int32)
                    tapsum[:, :n] = self._w2d.reshape(n, -1, self.cp).astype(np.int32).sum(axis=2).T
                    tapsum = self._packed.setdefault(("tapsum", np_), tapsum)
        else:
            packed, np_, cs, wg = None, n, self._wg_colsum, self._wg
        zc = self._zc.get(isa)
        if zc is None:  # za * column sums, in the kernel's wrapping int32 arithmetic
            zc = self._zc.setdefault(isa, (np.int64(self._za) * np.asarray(cs, np.int64)).astype(np.int32))
        mult, bias = self._epilogue(np_, mode, so, zo)
        if mode == 0:
            bias = None
        res = None
        if rspec is not None:
            if mode != 2 or self.groups != 1:
                raise ValueError("a residual is fused only into uint8 output of a convolution with groups == 1")
            rs, rz = rspec
            if not (np.isfinite(rs) and rs > 0) or not 0 <= rz <= 255:
                raise ValueError("the residual's scale must be positive and finite and its zero point in [0, 255]")
            res = (rz, float(np.float32(rs / so)))
        geom = (oh, ow) + self.kernel_size + self.stride + kpad + self.dilation + (
            n, self.groups, self.in_channels // self.groups)
        call = self.kernel.conv_prepare(a.shape, geom, self._za, packed, wg, zc, mult, bias, mode, clamp, zo, opad,
                                        nchw, crop, lpad, tapsum, res, dense=dense)
        if nchw:
            shape = (bsz, n, oh, ow)
        else:
            shape = (bsz, oh + 2 * opad[0], ow + 2 * opad[1], call.out_shape[1])
        return call, shape

    def __call__(self, x) -> np.ndarray:
        """float NCHW ``(B, C, H, W)`` -> float32 NHWC ``(B, OH, OW, N)``."""
        return self.run_float(x)

    def forward_rows(self, x, output: str = "float", out_scale=None, out_zero_point=0) -> np.ndarray:
        """Linear: float ``(M, K)`` (or uint8 codes ``(M, Kp)``) -> ``(M, N)`` (uint8: ``(M, roundup4(N))``)."""
        if self.kernel_size != (1, 1) or self.groups != 1:
            raise ValueError("forward_rows is for Linear layers (1x1, groups=1)")
        if isinstance(x, np.ndarray) and x.dtype == np.uint8:
            if x.ndim != 2 or x.shape[1] != self.cp:
                raise ValueError(f"codes must have shape (M, {self.cp})")
            a = x
        else:
            a = self.quantize_rows(x)
        out = self.run_codes(a.reshape(a.shape[0], 1, 1, self.cp), output, out_scale, out_zero_point)
        return out.reshape(a.shape[0], out.shape[3])
