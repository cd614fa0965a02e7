"""The ``numpy`` kernel: the reference implementation of every kernel operation.

Written for clarity, not speed: it is the oracle the ``cython`` kernel is tested against bit for bit.  The
affine and packing operations are here; the codebook and histogram operations are the :class:`qcore.Kernel`
base class's own numpy code (qcore/kernels/reference.py), which this kernel uses as it is.
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.kernels import Kernel


class NumpyKernel(Kernel):
    name = "numpy"
    priority = 0

    def _minmax(self, x3):
        return x3.min(axis=(0, 2)).astype(np.float32), x3.max(axis=(0, 2)).astype(np.float32)

    def _quantize_affine(self, x3, inv_scale, zero_point, qmin, qmax, out3):
        if not np.isfinite(x3).all():
            return False
        inv = inv_scale.reshape(1, -1, 1)
        zp = zero_point.reshape(1, -1, 1).astype(np.float32)
        v = np.rint(x3 * inv)  # float32 product, rounded half to even
        q = np.clip(v + zp, qmin, qmax)
        out3[...] = q.astype(out3.dtype)
        return True

    def _dequantize_affine(self, q3, scale, zero_point, out3):
        diff = q3.astype(np.int32) - zero_point.reshape(1, -1, 1)
        out3[...] = diff.astype(np.float32) * scale.reshape(1, -1, 1)

    def _pack(self, codes_u8, bits, out):
        # bit j of code i goes to stream bit i*bits + j (little-endian bit stream)
        mask = np.uint8((1 << bits) - 1)
        codes = codes_u8 & mask
        stream = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
        packed = np.packbits(stream, bitorder="little")
        out[: packed.size] = packed

    def _unpack(self, packed, bits, count, signed, out):
        stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
        weights = (1 << np.arange(bits)).astype(np.int32)
        vals = stream.astype(np.int32) @ weights
        if signed:
            vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals)
        out[...] = vals.astype(out.dtype)


@qcore.hookimpl
def qcore_kernels():
    return [NumpyKernel]
