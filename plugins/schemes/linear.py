"""The ``linear`` scheme: affine (asymmetric, unsigned codes) and symmetric (signed codes) quantization.

affine:     scale = (hi - lo) / (2^k - 1) over [min(lo, 0), max(hi, 0)],  zp = clamp(rint(-lo / scale))
            q = clamp(rint(x / scale) + zp, 0, 2^k - 1),   x' = (q - zp) * scale
symmetric:  scale = max|x| / (2^(k-1) - 1),   q = clamp(rint(x / scale), -(2^(k-1) - 1), 2^(k-1) - 1)
            (narrow range at 5..8 bits: code -2^(k-1) is never produced, so int8 GEMM never sees -128);
            no zero point is stored (``params`` holds ``scale`` only; files written before kept an all-zero one)
symmetric 3- and 4-bit, fitted on the data with the default ``minmax`` observer: the **full** signed range
                 [-2^(k-1), 2^(k-1)-1] and the scale of least squared error per group/channel/tensor among
                 ``±max|x| / d``, d in 9 steps from 2^(k-1)-1.5 to 2^(k-1)+0.5 (4 bits: 6.5, 6.75, ... 8.5) and
                 both signs.  A negative scale gives the value of largest magnitude the extra negative code
                 (llama.cpp's Q4_0 maps it to -8); decoding is still ``q * scale``.  Calibrated (``observe()``)
                 or other observers: ``max|x| / (2^(k-1)-1)`` with the full range of codes.  Measured (see
                 docs/schemes.md): 4-bit group-32 weights of a MiniLM sentence encoder, embedding cosine to fp32
                 0.962 (narrow) -> 0.973 (this search); squared error on normal weights -29%.
1-bit symmetric: binary ±α with α = mean|x| (the least-squares α for sign codes, BWN);
                 code -1 → -α, code 0 → +α.
2-bit symmetric: ternary {-α, 0, α}: α and the threshold minimise the squared error exactly (TWN, solved
                 by sorting |x|); codes -1, 0, 1.

``x / scale`` is computed as ``x * float32(1/scale)`` and ``rint`` rounds half to even (as numpy and torch).
``scale_dtype="float16"`` stores the scales as float16 (4-bit symmetric group-32: 4.5 bits per weight instead of
5.0): the scale is chosen in float32, rounded to the nearest float16 (magnitudes below 2^-24 become 2^-24),
and the codes are computed with that rounded scale; a scale above 65504 is an error.
A constant tensor (or channel) comes back exactly: its scale is the constant's magnitude.  The 1- and 2-bit
symmetric α comes from the data being quantized (least squares needs the values, not only a range).

``zero="minimum"`` (affine only): the grid starts at the range's minimum instead of containing zero exactly —
parameters ``scale`` and ``minimum`` (both in ``scale_dtype``), no zero point:

            scale = (hi - m) / (2^k - 1),  m = minimum = lo (each rounded to scale_dtype, m first)
            q = clamp(rint((x - m) / scale), 0, 2^k - 1),   x' = q * scale + m   (float32, two roundings)

This is GGUF's Q4_1 block (``y = d·q + m``, fp16 ``d`` and ``m``) with ``bits=4, granularity="group",
group_size=32, scale_dtype="float16"``, so such tensors go to GGUF exactly.  A constant comes back as
``minimum`` (exact in float32; rounded to float16 with ``scale_dtype="float16"``).  The default,
``zero="point"``, is the zero-point form above.
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.kernels.affine import search_scales as search_scales_reference  # the numpy reference (tests)
from qcore.quantization.forms import Affine, Table

#: below this a scale would make 1/scale overflow float32; ranges that small quantize to zero
MIN_SCALE = np.float32(2.0**-100)
SCALE_DTYPES = {"float32": np.float32, "float16": np.float16}
#: where the grid of an affine tensor is anchored: a zero point (zero exactly representable) or the minimum
ZEROS = ("point", "minimum")
#: symmetric bit widths that use the full signed range with a searched scale
FULL_RANGE_BITS = (3, 4)
_F16_MAX = float(np.finfo(np.float16).max)
_F16_MIN = np.float32(2.0**-24)  # the smallest positive float16 (subnormal)


def scale_divisors(bits: int) -> np.ndarray:
    """The candidate divisors ``d`` of the scale search (``scale = ±max|x| / d``), in the order tried."""
    top = 1 << (bits - 1)
    return np.linspace(top - 1.5, top + 0.5, 9).astype(np.float32)



def finite_grid(scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """``scale``, lowered where needed so both ends of the grid, ``(qmin - zp)·scale`` and ``(qmax - zp)·scale``,
    are finite float32 products.

    Near the float32 maximum (|x| ~ 3.4e38) the rounding of the zero point, or of the scale to float32, can put
    an end of the grid past float32's range, and finite input would dequantize to inf.  Such scales become the
    largest float32 keeping that end finite; values beyond it clamp to the last code (an error of at most one
    step of the grid, instead of inf)."""
    span = np.maximum(qmax - zp.astype(np.float64), zp.astype(np.float64) - qmin).astype(np.float32)
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(span * scale)
    if not bad.any():
        return scale
    scale = scale.copy()
    s = (np.finfo(np.float32).max / span[bad].astype(np.float64)).astype(np.float32)
    with np.errstate(over="ignore"):
        while True:
            over = ~np.isfinite(span[bad] * s)
            if not over.any():
                break
            s[over] = np.nextafter(s[over], np.float32(0))
    scale[bad] = s
    return scale


class LinearQuantizer(qcore.Quantizer):
    name = "linear"
    bits_range = (1, 8)
    options = {"symmetric": False, "granularity": "tensor", "axis": 0, "group_size": 128, "scale_dtype": "float32",
               "zero": "point"}
    self_checking = True
    linear_rule = True
    #: a model's weights: one scale per output channel, symmetric (no zero point; the int8 GEMM and static
    #: convolutions take them as they are); activations: the plain defaults, per tensor, affine
    role_defaults = {"weight": {"granularity": "channel", "symmetric": True}}

    def __init__(self, bits=8, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        sym = self.config["symmetric"]
        if not isinstance(sym, (bool, np.bool_)):
            raise TypeError(f"symmetric must be True or False, got {sym!r}")
        self.config["symmetric"] = bool(sym)
        self.signed = bool(sym)
        sd = self.config["scale_dtype"]
        if not isinstance(sd, str):
            raise TypeError(f"scale_dtype must be 'float32' or 'float16', got {sd!r}")
        if sd not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be 'float32' or 'float16', got {sd!r}")
        zero = self.config["zero"]
        if zero not in ZEROS:
            raise ValueError(f"zero must be one of {', '.join(map(repr, ZEROS))}, got {zero!r}")
        if zero == "minimum" and self.signed:
            raise ValueError("zero='minimum' is an affine parameterisation (unsigned codes from the minimum); it does "
                             "not combine with symmetric=True")

    @property
    def from_minimum(self) -> bool:
        """Codes count steps up from the stored minimum (``zero="minimum"``), not from a zero point."""
        return self.config["zero"] == "minimum"

    @property
    def full_range(self) -> bool:
        """Symmetric codes use the whole signed range (3 and 4 bits; see the module doc)."""
        return self.signed and self.bits in FULL_RANGE_BITS

    @property
    def qmin(self):
        # symmetric codes use the narrow range [-qmax, qmax]; 1-bit binary uses {-1, 0}
        if self.signed:
            if self.bits == 1:
                return -1
            if self.full_range:
                return -(1 << (self.bits - 1))
            return -((1 << (self.bits - 1)) - 1)
        return 0

    # -- parameters ------------------------------------------------------------------------------------
    def fit(self, x):
        view, axis = self.layout(x)
        pshape = self.param_shape(x)
        if self.from_minimum:
            if x.size == 0:
                return self._minimum_params(np.zeros(pshape, np.float32), np.zeros(pshape, np.float32))
            lo, hi = self.observed_range(x)
            return self._minimum_params(lo.reshape(pshape), hi.reshape(pshape))
        if x.size == 0:
            return self._params(np.ones(pshape, np.float32), np.zeros(pshape, np.int32))
        if self.signed and self.bits <= 2:
            qcore.validation.check_all_finite(x)  # least squares reads the values themselves
            scale = self._least_squares_alpha(view, axis)
            zp = None
        else:
            lo, hi = self.observed_range(x)
            if self.full_range and not self.calibrated and self.observer_name == "minmax":
                scale = self._searched_scale(view, axis, lo, hi)
                zp = None
            else:
                scale, zp = self._affine_params(lo.astype(np.float64), hi.astype(np.float64))
        scale = self._stored_scale(scale)
        if zp is not None and self.config["scale_dtype"] != "float32":  # the zero point of the rounded scale
            _, zp = self._affine_params(lo.astype(np.float64), hi.astype(np.float64), scale.astype(np.float64))
        return self._params(scale.reshape(pshape), None if zp is None else zp.reshape(pshape))

    def _minimum_params(self, lo, hi):
        """``scale`` and ``minimum`` of the grid ``minimum + q * scale``, q in [0, 2^k - 1], over [lo, hi]:
        the minimum is rounded to its storage dtype first and the scale spans what is left up to ``hi``."""
        sdt = SCALE_DTYPES[self.config["scale_dtype"]]
        if sdt is np.float16 and (np.abs(lo) > _F16_MAX).any():
            raise ValueError(f"scale_dtype='float16' cannot hold the minimum {float(lo[np.abs(lo) > _F16_MAX][0]):.6g} "
                             f"(float16 stops at 65504); use scale_dtype='float32'")
        m = lo.astype(np.float32).astype(sdt)
        span = np.maximum(hi.astype(np.float64) - m.astype(np.float64), 0.0)
        with np.errstate(over="ignore"):
            scale = (span / self.qmax).astype(np.float32)
        scale = np.where(scale > 0, np.maximum(scale, MIN_SCALE), np.float32(1.0))  # a constant: code 0 is m
        scale = finite_grid(scale, np.zeros(scale.shape, np.int32), 0, self.qmax)
        return {"scale": self._stored_scale(scale).astype(sdt), "minimum": m}

    def _params(self, scale, zp):
        if self.signed:  # symmetric: no zero point stored (it is 0)
            return {"scale": scale.astype(SCALE_DTYPES[self.config["scale_dtype"]])}
        return {"scale": scale.astype(SCALE_DTYPES[self.config["scale_dtype"]]), "zero_point": zp}

    def _stored_scale(self, scale):
        """``scale`` as it will be stored (float32, or float16 rounded), returned as float32."""
        scale = np.asarray(scale, np.float32)
        if self.config["scale_dtype"] == "float16":
            big = np.abs(scale) > _F16_MAX
            if big.any():
                raise ValueError(f"scale_dtype='float16' cannot hold the scale {float(scale[big].reshape(-1)[0]):.6g} "
                                 f"(float16 stops at 65504); use scale_dtype='float32'")
            tiny = (np.abs(scale) < _F16_MIN) & (scale != 0)
            scale = np.where(tiny, np.copysign(_F16_MIN, scale), scale).astype(np.float16).astype(np.float32)
        return scale

    def _searched_scale(self, view, axis, lo, hi):
        rows = np.ascontiguousarray(self._channels_first(view, axis), dtype=np.float32)
        scale, _ = self.kernel.search_scales(rows, scale_divisors(self.bits), self.qmin, self.qmax)
        const = lo == hi  # a constant comes back exactly: code 1 times |c| (as the narrow rule)
        scale = np.where(const, np.abs(lo), scale)
        scale = np.where(scale == 0, np.float32(1), np.copysign(np.maximum(np.abs(scale), MIN_SCALE), scale))
        # near the float32 maximum both ends of the grid must stay finite (code -2^(k-1) times the scale)
        mag = finite_grid(np.abs(scale).astype(np.float32), np.zeros(scale.shape, np.int32), self.qmin, self.qmax)
        return np.copysign(mag, scale).astype(np.float32)

    def _affine_params(self, lo, hi, given_scale=None):
        const = lo == hi
        if given_scale is not None:  # the zero point that goes with an already chosen (rounded) scale
            lo0 = np.minimum(lo, 0.0)
            zp = np.where(const, np.where(lo < 0, 1.0, 0.0), np.rint(-lo0 / given_scale))
            return given_scale.astype(np.float32), np.clip(zp, 0, self.qmax).astype(np.int32)
        if self.signed:
            amax = np.maximum(-lo, hi)
            scale = amax / self.qmax
            scale = np.where(const, np.abs(lo), scale)  # a constant c is code ±1 times |c|: exact
            zp = np.zeros(lo.shape, np.int32)
        else:
            lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
            scale = (hi0 - lo0) / ((1 << self.bits) - 1)
            scale = np.where(const, np.abs(lo), scale)
            zp = np.where(const & (lo < 0), 1.0, 0.0)  # c > 0: code 1; c < 0: code 0 with zp 1
            with np.errstate(divide="ignore", invalid="ignore"):
                zp = np.where(const, zp, np.rint(-lo0 / np.where(scale > 0, scale, 1.0)))
            zp = np.clip(zp, 0, self.qmax).astype(np.int32)
        scale = scale.astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), np.maximum(scale, MIN_SCALE)).astype(np.float32)
        return finite_grid(scale, zp, self.qmin, self.qmax), zp

    def _channels_first(self, view, axis):
        if axis is None:
            return view.reshape(1, -1)
        return np.moveaxis(view, axis, 0).reshape(view.shape[axis], -1)

    def _least_squares_alpha(self, view, axis):
        rows = np.abs(self._channels_first(view, axis)).astype(np.float64)
        if self.bits == 1:  # sign codes: alpha = mean |x| minimises sum (x - alpha*sign(x))^2
            alpha = rows.mean(axis=1)
        else:  # ternary: keep the m largest |x| at ±alpha; error drop is S_m^2 / m, alpha = S_m / m
            srt = -np.sort(-rows, axis=1)
            csum = np.cumsum(srt, axis=1)
            m = np.arange(1, srt.shape[1] + 1)
            best = np.argmax(csum**2 / m, axis=1)
            alpha = csum[np.arange(len(best)), best] / (best + 1)
        alpha = alpha.astype(np.float32)
        if self.bits == 1:  # decoded as alpha * (2c + 1): alpha 0 (an all-zero channel) is exact
            return alpha
        # ternary codes go through the affine kernel, which needs a positive scale
        return np.where(alpha > 0, np.maximum(alpha, MIN_SCALE), np.float32(1.0)).astype(np.float32)

    # -- codes -----------------------------------------------------------------------------------------
    def encode(self, x, params):
        view, axis = self.layout(x)
        scale = params["scale"].reshape(-1)
        if self.signed and self.bits == 1:
            qcore.validation.check_all_finite(x)  # no kernel pass here to catch NaN/Inf
            return np.where(x >= 0, 0, -1).astype(np.int8)
        if self.from_minimum:  # steps up from the minimum: quantize x - m with no zero point
            m = self._broadcast(np.asarray(params["minimum"], np.float32).reshape(-1), view, axis)
            with np.errstate(over="ignore", invalid="ignore"):
                d = np.asarray(view - m, np.float32)
            over = np.isinf(d) & np.isfinite(view)  # a finite range wider than float32: clamps to the last code
            if over.any():
                d[over] = np.copysign(np.finfo(np.float32).max, d[over])
            view = d
        codes = self.kernel.quantize_affine(view, scale.astype(np.float32), self._zero_point(params), self.qmin,
                                            self.qmax, axis=axis)
        return codes.reshape(x.shape)

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        scale = params["scale"].reshape(-1).astype(np.float32)
        if self.signed and self.bits == 1:
            alpha = self._broadcast(scale, view, axis).reshape(codes.shape)
            return (alpha * (2 * codes.astype(np.float32) + 1)).astype(np.float32)
        values = self.kernel.dequantize_affine(view, scale, self._zero_point(params), axis=axis)
        if self.from_minimum:  # q * scale, then + minimum: two float32 roundings, as GGUF's Q4_1 decodes
            values = np.asarray(values, np.float32) + self._broadcast(
                np.asarray(params["minimum"], np.float32).reshape(-1), view, axis)
        return values.reshape(codes.shape)

    def decodes_as(self, params):
        """``Affine(scale, zero_point)`` (symmetric: no zero point; 3-/4-bit scales may be negative;
        ``zero="minimum"``: ``Affine(scale, offset=minimum)``); binary 1-bit codes are the table
        ``(+alpha, -alpha)`` for the bit patterns ``0`` (code 0) and ``1`` (code -1)."""
        scale = np.asarray(params["scale"]).astype(np.float32)
        if self.signed and self.bits == 1:
            return Table(np.stack([scale, -scale], axis=-1))
        if self.from_minimum:
            return Affine(scale, offset=params["minimum"])
        return Affine(scale, params.get("zero_point"))

    @staticmethod
    def _zero_point(params):
        zp = params.get("zero_point")
        return np.zeros(1, np.int32) if zp is None else np.asarray(zp).reshape(-1)

    @staticmethod
    def _broadcast(p, view, axis):
        if axis is None:
            return np.broadcast_to(p.reshape(()), view.shape)
        shape = [1] * view.ndim
        shape[axis] = -1
        return np.broadcast_to(p.reshape(shape), view.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [LinearQuantizer]
