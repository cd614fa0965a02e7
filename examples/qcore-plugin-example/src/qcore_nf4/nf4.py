"""The ``nf4`` scheme: QLoRA's 4-bit NormalFloat codes with block-wise absmax scaling.

For each block (by default 64 consecutive weights along the last axis, ``granularity="group"``)::

    absmax = max |x|                      (over the block; from the calibrated observer after observe())
    code   = argmin_i |x / absmax - level[i]|      levels: NF4_CODEBOOK, 16 values in [-1, 1] including 0
    x'     = level[code] * absmax

Codes are unsigned (0..15 at 4 bits).  A value exactly half-way between two levels takes the lower one.
The block's largest-magnitude value comes back exactly, and so does zero.  ``granularity="channel"`` (one
absmax per index of ``axis``) and ``"tensor"`` work too.  ``bits=2`` and ``bits=3`` use the same
construction with 4 and 8 levels.  Parameters stored per block: ``absmax`` (float32).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

import qcore

#: The 16 NF4 levels exactly as published with QLoRA (bitsandbytes' table).
NF4_CODEBOOK = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982403755188, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=np.float32,
)

#: QLoRA's offset: the outermost quantile, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2
NF_OFFSET = 0.9677083


def normal_float_codebook(bits: int) -> np.ndarray:
    """The ``2**bits`` NormalFloat levels: ``2**(bits-1)`` positive and ``2**(bits-1) - 1`` negative normal
    quantiles and an exact zero, scaled into ``[-1, 1]`` (QLoRA's construction; 4 bits gives NF4_CODEBOOK)."""
    if bits == 4:
        return NF4_CODEBOOK.copy()
    nd, half = NormalDist(), 1 << (bits - 1)
    pos = [nd.inv_cdf(p) for p in np.linspace(NF_OFFSET, 0.5, half + 1)[:-1]]
    neg = [-nd.inv_cdf(p) for p in np.linspace(NF_OFFSET, 0.5, half)[:-1]]
    levels = np.array(sorted(pos + neg + [0.0]))
    return (levels / levels.max()).astype(np.float32)


class NF4Quantizer(qcore.Quantizer):
    name = "nf4"
    signed = False  # codes are indices 0 .. 2**bits - 1
    bits_range = (2, 4)
    options = {"granularity": "group", "axis": 0, "group_size": 64}

    def __init__(self, bits: int = 4, observer=None, kernel=None, **options):
        super().__init__(bits, observer, kernel, **options)
        self.codebook = normal_float_codebook(self.bits)
        self._midpoints = ((self.codebook[1:] + self.codebook[:-1]) / 2).astype(np.float32)

    def _per_element(self, p: np.ndarray, view: np.ndarray, axis) -> np.ndarray:
        """Broadcast one parameter per block/channel over ``view`` (the layout of the data)."""
        p = p.reshape(-1)
        if axis is None:
            return p.reshape(())
        shape = [1] * view.ndim
        shape[axis] = -1
        return p.reshape(shape)

    def fit(self, x):
        self.layout(x)  # validates the layout first (a 0-d array cannot be cut into groups: ValueError)
        pshape = self.param_shape(x)
        if x.size == 0:
            return {"absmax": np.ones(pshape, np.float32)}
        lo, hi = self.observed_range(x)  # the observer's range per block (minmax: the block's min and max)
        absmax = np.maximum(-lo, hi).astype(np.float32)
        absmax = np.where(absmax > 0, absmax, np.float32(1.0)).astype(np.float32)  # an all-zero block: codes for 0
        return {"absmax": absmax.reshape(pshape)}

    def encode(self, x, params):
        view, axis = self.layout(x)
        normed = view / self._per_element(params["absmax"], view, axis)
        codes = np.searchsorted(self._midpoints, normed, side="left")  # nearest level; ties to the lower one
        return codes.astype(np.uint8).reshape(x.shape)

    def lookup_table(self, params) -> np.ndarray:
        """The decode as a table (qcore's lookup-table contract, docs/plugins.md): float32 of shape
        ``absmax.shape + (2**bits,)`` with ``table[p, c] = level[c] * absmax[p]``, so ``decode(codes)`` is
        ``table[<block of the element>, code]``.  ``qcore.ops.qlinear`` uses it to run NF4 weights on its fused
        low-bit kernel (a 16-entry table decode in the inner loop)."""
        absmax = np.asarray(params["absmax"], np.float32)
        return (self.codebook * absmax[..., None]).astype(np.float32)

    def decode(self, codes, params):
        codes = np.asarray(codes)
        view, axis = self.layout(codes)
        values = self.codebook[view.astype(np.intp)] * self._per_element(params["absmax"], view, axis)
        return values.astype(np.float32).reshape(codes.shape)
