"""The ``linear`` scheme: affine (asymmetric, unsigned codes) and symmetric (signed codes) quantization.

affine:     scale = (hi - lo) / (2^k - 1) over [min(lo, 0), max(hi, 0)],  zp = clamp(rint(-lo / scale))
            q = clamp(rint(x / scale) + zp, 0, 2^k - 1),   x' = (q - zp) * scale
symmetric:  scale = max|x| / (2^(k-1) - 1),   q = clamp(rint(x / scale), -(2^(k-1) - 1), 2^(k-1) - 1)
            (narrow range: code -2^(k-1) is never produced, so int8 GEMM never sees -128)
1-bit symmetric: binary ±α with α = mean|x| (the least-squares α for sign codes, BWN);
                 code -1 → -α, code 0 → +α.
2-bit symmetric: ternary {-α, 0, α}: α and the threshold minimise the squared error exactly (TWN, solved
                 by sorting |x|); codes -1, 0, 1.

``x / scale`` is computed as ``x * float32(1/scale)`` and ``rint`` rounds half to even (as numpy and torch).
A constant tensor (or channel) comes back exactly: its scale is the constant's magnitude.  The 1- and 2-bit
symmetric α comes from the data being quantized (least squares needs the values, not only a range).
"""
from __future__ import annotations

import numpy as np

import qcore

#: below this a scale would make 1/scale overflow float32; ranges that small quantize to zero
MIN_SCALE = np.float32(2.0**-100)


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
    options = {"symmetric": False, "granularity": "tensor", "axis": 0, "group_size": 128}
    self_checking = True

    def __init__(self, bits=8, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        sym = self.config["symmetric"]
        if not isinstance(sym, (bool, np.bool_)):
            raise TypeError(f"symmetric must be True or False, got {sym!r}")
        self.config["symmetric"] = bool(sym)
        self.signed = bool(sym)

    @property
    def qmin(self):
        # symmetric codes use the narrow range [-qmax, qmax]; 1-bit binary uses {-1, 0}
        if self.signed:
            return -1 if self.bits == 1 else -((1 << (self.bits - 1)) - 1)
        return 0

    # -- parameters ------------------------------------------------------------------------------------
    def fit(self, x):
        view, axis = self.layout(x)
        pshape = self.param_shape(x)
        if x.size == 0:
            return {"scale": np.ones(pshape, np.float32), "zero_point": np.zeros(pshape, np.int32)}
        if self.signed and self.bits <= 2:
            qcore.validation.check_all_finite(x)  # least squares reads the values themselves
            scale = self._least_squares_alpha(view, axis)
            zp = np.zeros_like(scale, dtype=np.int32)
        else:
            lo, hi = self.observed_range(x)
            scale, zp = self._affine_params(lo.astype(np.float64), hi.astype(np.float64))
        return {"scale": scale.reshape(pshape), "zero_point": zp.reshape(pshape)}

    def _affine_params(self, lo, hi):
        const = lo == hi
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
        zp = params["zero_point"].reshape(-1)
        codes = self.kernel.quantize_affine(view, scale, zp, self.qmin, self.qmax, axis=axis)
        return codes.reshape(x.shape)

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        scale = params["scale"].reshape(-1).astype(np.float32)
        if self.signed and self.bits == 1:
            alpha = self._broadcast(scale, view, axis).reshape(codes.shape)
            return (alpha * (2 * codes.astype(np.float32) + 1)).astype(np.float32)
        zp = params["zero_point"].reshape(-1)
        return self.kernel.dequantize_affine(view, scale, zp, axis=axis).reshape(codes.shape)

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
