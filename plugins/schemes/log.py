"""The ``log`` scheme: sign + power-of-two magnitudes, with a code for zero.

With ``bits = k`` (2..8, sign included) there are ``L = 2^(k-1) - 1`` magnitude levels::

    code c in [-L, L] (signed int8);   decode(c) = sign(c) * scale * 2^(|c| - L),   decode(0) = 0

so the largest level is ``scale`` and consecutive levels are a factor 2 apart (``scale*2^(1-L)`` is the
smallest).  Code ``-2^(k-1)`` is never produced (it decodes as ``-scale``).  Negative values are quantized
like positive ones (sign bit), unlike the reference article, which leaves them in float.

Rounding (option ``rounding``), decided on ``y = fl(|x| / scale)`` from its float bits
``y = 1.f * 2^E``:

* ``"nearest"`` (default): nearest level in value — ``y`` in ``[2^E, 2^(E+1))`` goes up when ``f >= 0.5``
  (threshold ``1.5 * 2^E``, ties to the larger level).  Inside the range ``[scale*2^(1-L), scale]`` the
  relative error ``|x' - x| / |x|`` is at most **1/3**; it minimises squared error for the given levels.
* ``"log2"``: nearest level in ``log2`` — goes up when ``1.f >= sqrt(2)``.  Relative error at most
  **sqrt(2) - 1 ≈ 0.414** (at most ``1 - 1/sqrt(2)`` when rounding down).

Values above ``scale`` take the top level (relative error < 1 in general; none with ``method="range"``).
Below the smallest level ``m = scale*2^(1-L)``, ``|x| < m/2`` (``"nearest"``) or ``|x| < m/sqrt(2)``
(``"log2"``) becomes 0, anything larger the smallest level.  Zero stays zero, signs are kept.

Scale (option ``method``):

* ``"range"``: ``scale = max|x|`` from the observer's range (``observe()`` calibration, else the tensor);
* ``"mse"`` (default): the candidate ``max|x| * 2^(-t/16)``, ``t = 0..31`` (two octaves below the range
  maximum), with the least squared error on the tensor being quantized (the range bound comes from the
  observer when calibrated).

A constant tensor (or channel) comes back exactly (its scale is ``|c|``); an all-zero one gets scale 1 and
code 0.  NaN/Inf raise :class:`qcore.InputError`.  Granularity ``tensor``, ``channel`` or ``group``.

Encode, error search and decode run in the Cython extension ``qcore_plugins._codebook`` (GIL released,
OpenMP); ``kernel="numpy"`` uses the numpy reference below, which gives the same codes bit for bit.
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.validation import as_3d, as_float32

try:
    from qcore_plugins import _codebook
except ImportError:  # extension not built: numpy reference
    _codebook = None

#: scales are kept above this so that |x| / scale stays finite for finite x of a sane magnitude
MIN_SCALE = np.float32(2.0**-100)
_T_NEAREST = np.uint32(0x400000)  # mantissa 0.5
_T_LOG2 = np.uint32(0x3504F4)     # first float32 mantissa with 1.f > sqrt(2) (float32(sqrt 2) = 1 + 0x3504F3/2^23 < sqrt 2)
_MSE_STEPS = 16                   # candidates per octave
_MSE_OCTAVES = 2


def use_extension(kernel) -> bool:
    """True when the Cython extension should run (it is built and the numpy reference was not asked for)."""
    return _codebook is not None and getattr(kernel, "name", None) != "numpy"


def lut_decode(codes3: np.ndarray, table: np.ndarray, ext: bool) -> np.ndarray:
    """``out[o, c, i] = table[c, code & 0xFF]`` for an ``(outer, C, inner)`` int8/uint8 code array."""
    q = np.ascontiguousarray(codes3).view(np.uint8)
    table = np.ascontiguousarray(table, dtype=np.float32)
    out = np.empty(q.shape, np.float32)
    if q.size == 0:
        return out
    if ext:
        _codebook.lut_decode(q, table, out)
    else:
        out[...] = table[np.arange(table.shape[0])[None, :, None], q]
    return out


def channels_3d(view: np.ndarray, axis) -> np.ndarray:
    return as_3d(np.ascontiguousarray(view), axis)


class LogQuantizer(qcore.Quantizer):
    name = "log"
    signed = True
    bits_range = (2, 8)
    options = {"granularity": "tensor", "axis": 0, "group_size": 128, "method": "mse", "rounding": "nearest"}
    self_checking = True

    def __init__(self, bits=4, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        if self.config["method"] not in ("mse", "range"):
            raise ValueError(f"method must be 'mse' or 'range', got {self.config['method']!r}")
        if self.config["rounding"] not in ("nearest", "log2"):
            raise ValueError(f"rounding must be 'nearest' or 'log2', got {self.config['rounding']!r}")
        self.levels = (1 << (self.bits - 1)) - 1  # L
        self._ext = use_extension(self.kernel)

    @property
    def qmin(self):
        return -self.levels  # narrow range: -2^(k-1) is never produced

    # -- helpers ---------------------------------------------------------------------------------------
    @property
    def _threshold(self):
        return _T_NEAREST if self.config["rounding"] == "nearest" else _T_LOG2

    @property
    def _zero_threshold(self) -> np.float32:
        """In units of scale: below it |x| becomes 0 (half / 1/sqrt(2) of the smallest level)."""
        L = self.levels
        return np.float32(2.0**-L if self.config["rounding"] == "nearest" else 2.0 ** (0.5 - L))

    def _magnitudes(self, scale: np.ndarray) -> np.ndarray:
        """``(C, L+1)`` float32: level ``m`` of channel ``c`` is ``scale[c] * 2^(m-L)``, level 0 is 0."""
        L = self.levels
        e = np.arange(L + 1, dtype=np.float64) - L
        mag = scale.astype(np.float64)[:, None] * np.exp2(e)[None, :]  # exact in float64
        mag[:, 0] = 0.0
        return mag.astype(np.float32)

    # -- parameters ------------------------------------------------------------------------------------
    def fit(self, x):
        pshape = self.param_shape(x)
        if x.size == 0:
            return {"scale": np.ones(pshape, np.float32)}
        lo, hi = self.observed_range(x)  # InputError on NaN/Inf
        amax = np.maximum(-lo.astype(np.float32), hi.astype(np.float32)).reshape(-1)
        if self.config["method"] == "range":
            scale = amax
        else:
            scale = self._mse_scale(x, amax)
        scale = np.where(amax > 0, np.maximum(scale, MIN_SCALE), np.float32(1.0)).astype(np.float32)
        return {"scale": scale.reshape(pshape)}

    def _mse_scale(self, x, amax):
        view, axis = self.layout(x)
        x3 = channels_3d(view, axis)
        steps = _MSE_STEPS * _MSE_OCTAVES
        factors = np.exp2(-np.arange(steps) / _MSE_STEPS)
        cands = np.maximum((amax.astype(np.float64)[None, :] * factors[:, None]).astype(np.float32), MIN_SCALE)
        errs = np.stack([self._sse(x3, c) for c in cands])  # (steps, C)
        best = np.argmin(errs, axis=0)  # first minimum: t = 0 (the range maximum) on ties, e.g. constants
        return cands[best, np.arange(cands.shape[1])]

    def _sse(self, x3, scale):
        scale = np.ascontiguousarray(scale, np.float32)
        if self._ext:
            return _codebook.log_sse(x3, scale, self.levels, self._threshold, self._zero_threshold)
        mag = self._magnitudes(scale)
        m = self._np_mag(x3, scale)
        a = np.abs(x3).astype(np.float64)
        d = a - mag[np.arange(mag.shape[0])[None, :, None], m].astype(np.float64)
        return (d * d).sum(axis=(0, 2))

    # -- codes -----------------------------------------------------------------------------------------
    def _np_mag(self, x3, scale):
        """numpy reference of the magnitude code (same float32 operations as the Cython kernel)."""
        L = self.levels
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.abs(x3) / scale.reshape(1, -1, 1)
        b = y.view(np.uint32)
        m = (b >> 23).astype(np.int32) - 127 + ((b & 0x7FFFFF) >= self._threshold) + L
        m = np.clip(m, 1, L)
        return np.where(y >= self._zero_threshold, m, 0)

    def encode(self, x, params):
        x = as_float32(x, check_finite=False)
        view, axis = self.layout(x)
        x3 = channels_3d(view, axis)
        scale = np.ascontiguousarray(params["scale"], np.float32).reshape(-1)
        if scale.size != x3.shape[1]:
            raise ValueError(f"scale has {scale.size} values, expected {x3.shape[1]}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scale must be finite and > 0")
        out = np.empty(x3.shape, np.int8)
        if x.size == 0:
            return out.reshape(x.shape)
        if self._ext:
            ok = _codebook.log_encode(x3, scale, self.levels, self._threshold, self._zero_threshold, out)
        else:
            ok = bool(np.isfinite(x3).all())
            m = self._np_mag(x3, scale)
            out[...] = np.where(np.signbit(x3), -m, m)
        if not ok:
            raise qcore.InputError("x contains NaN or Inf values; qcore refuses non-finite input")
        return out.reshape(x.shape)

    def lookup_table(self, params):
        """``param_shape + (2**bits,)``: entry ``u`` is the value of the code whose bit pattern is ``u``."""
        scale = np.asarray(params["scale"], np.float32)
        mag = self._magnitudes(scale.reshape(-1))  # (C, L+1)
        e = 1 << self.bits
        u = np.arange(e)
        code = np.where(u >= e // 2, u - e, u)  # two's complement of `bits` bits
        m = np.minimum(np.abs(code), self.levels)
        table = np.where(code < 0, -mag[:, m], mag[:, m]).astype(np.float32)
        return table.reshape(scale.shape + (e,))

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        q3 = channels_3d(view, axis)
        scale = np.asarray(params["scale"], np.float32).reshape(-1)
        if scale.size != q3.shape[1]:  # the table below has one row per scale; the kernel indexes it per channel
            raise ValueError(f"scale has {scale.size} values, expected {q3.shape[1]}")
        mag = self._magnitudes(scale)  # (C, L+1)
        code = np.arange(256).astype(np.uint8).view(np.int8).astype(np.int32)  # table index u -> int8 code
        m = np.minimum(np.abs(code), self.levels)
        table = np.where(code < 0, -mag[:, m], mag[:, m]).astype(np.float32)
        return lut_decode(q3, table, self._ext).reshape(codes.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [LogQuantizer]
