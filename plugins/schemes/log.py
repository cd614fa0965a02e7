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

Encode, error search and decode are operations of the scheme's :class:`qcore.Kernel` (``log_encode``,
``log_sse``, ``lut_decode``; their numerics are specified in qcore/kernels/codebook.py): the default ``cython``
kernel runs them in C (GIL released, OpenMP), ``kernel="numpy"`` in the numpy reference, with the same codes
bit for bit.
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.quantization.forms import Table
from qcore.validation import as_float32

#: scales are kept above this so that |x| / scale stays finite for finite x of a sane magnitude
MIN_SCALE = np.float32(2.0**-100)
_MSE_STEPS = 16                   # candidates per octave
_MSE_OCTAVES = 2


class LogQuantizer(qcore.Quantizer):
    name = "log"
    signed = True
    bits_range = (2, 8)
    options = {"granularity": "tensor", "axis": 0, "group_size": 128, "method": "mse", "rounding": "nearest"}
    self_checking = True
    default_bits = 4
    #: a model's weights: one scale per output channel
    role_defaults = {"weight": {"granularity": "channel"}}

    def __init__(self, bits=None, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        if self.config["method"] not in ("mse", "range"):
            raise ValueError(f"method must be 'mse' or 'range', got {self.config['method']!r}")
        if self.config["rounding"] not in ("nearest", "log2"):
            raise ValueError(f"rounding must be 'nearest' or 'log2', got {self.config['rounding']!r}")
        self.levels = (1 << (self.bits - 1)) - 1  # L

    @property
    def qmin(self):
        return -self.levels  # narrow range: -2^(k-1) is never produced

    # -- helpers ---------------------------------------------------------------------------------------
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
        view = np.ascontiguousarray(view)
        steps = _MSE_STEPS * _MSE_OCTAVES
        factors = np.exp2(-np.arange(steps) / _MSE_STEPS)
        cands = np.maximum((amax.astype(np.float64)[None, :] * factors[:, None]).astype(np.float32), MIN_SCALE)
        L, rounding = self.levels, self.config["rounding"]
        errs = np.stack([self.kernel.log_sse(view, c, L, rounding, axis) for c in cands])  # (steps, C)
        best = np.argmin(errs, axis=0)  # first minimum: t = 0 (the range maximum) on ties, e.g. constants
        return cands[best, np.arange(cands.shape[1])]

    def encode(self, x, params):
        x = as_float32(x, check_finite=False)
        view, axis = self.layout(x)
        codes = self.kernel.log_encode(np.ascontiguousarray(view), params["scale"], self.levels, self.config["rounding"], axis)
        return codes.reshape(x.shape)

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

    def decodes_as(self, params):
        return Table(self.lookup_table(params))

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        view = np.ascontiguousarray(view)
        channels = 1 if axis is None else view.shape[axis]
        scale = np.asarray(params["scale"], np.float32).reshape(-1)
        if scale.size != channels:  # the table below has one row per scale; the kernel indexes it per channel
            raise ValueError(f"scale has {scale.size} values, expected {channels}")
        mag = self._magnitudes(scale)  # (C, L+1)
        code = np.arange(256).astype(np.uint8).view(np.int8).astype(np.int32)  # table index u -> int8 code
        m = np.minimum(np.abs(code), self.levels)
        table = np.where(code < 0, -mag[:, m], mag[:, m]).astype(np.float32)
        return self.kernel.lut_decode(view, table, axis).reshape(codes.shape)


@qcore.hookimpl
def qcore_quantizers():
    return [LogQuantizer]
