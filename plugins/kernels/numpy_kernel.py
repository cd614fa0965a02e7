"""The ``numpy`` kernel: the reference implementation of every kernel operation.

Written for clarity, not speed: it is the oracle the ``cython`` kernel is tested against bit for bit.  The
affine and packing operations are here; the codebook and histogram operations are the :class:`qcore.Kernel`
base class's own numpy code (qcore/kernels/reference.py), which this kernel uses as it is.
"""
from __future__ import annotations

import numpy as np

import qcore
from qcore.kernels import Kernel
from qcore.validation import non_finite_error


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

    # -- low-bit GEMM reference (docs/gemm.md "Low-bit weights"): decodes one block of 32 k at a time ----------
    def _pack_lowbit(self, values, bits, scale, zero, group_size, table_bytes):
        return _NumpyLowbit(values, bits, scale, zero, group_size, table_bytes)

    def _lowbit_scales(self, p):
        return np.array(p.scale, np.float32)

    def _unpack_lowbit(self, p, flip):
        return self.pack(p.values ^ np.uint8(flip), p.bits)

    def _lowbit_shape(self, packed):
        if not isinstance(packed, _NumpyLowbit):
            raise TypeError(f"packed must come from the numpy kernel's pack_lowbit, got {type(packed).__name__}")
        return packed.values.shape

    def _lowbit_linear(self, x2, p, bias):
        if not np.isfinite(x2).all():
            raise non_finite_error(x2)
        m, k = x2.shape
        n = p.values.shape[0]
        q, sa, asum = lowbit_quantize_blocks(x2)
        nb = sa.shape[1]
        gblk = nb if p.group_size == k else p.group_size // 32
        ng = p.scale.shape[1]
        swz = (p.scale * p.zero).astype(np.float32)
        # one integral zero point for the whole weight (symmetric codes, tables): folded into the exact
        # integer dot product of each block (dot - z * asum), as the compiled kernels do
        z0 = float(p.zero.flat[0])
        zint = bool((p.zero == p.zero.flat[0]).all()) and z0 == int(z0) and -256 <= z0 <= 256
        y = np.zeros((m, n), np.float32)
        rows = np.arange(n)[:, None]
        for g in range(ng):
            s = np.zeros(m, np.float32)
            for b in range(g * gblk, min(nb, (g + 1) * gblk)):
                vb = np.zeros((n, 32), np.uint8)
                part = p.values[:, 32 * b: 32 * b + 32]
                vb[:, : part.shape[1]] = part
                if p.tables is not None:
                    vb = p.tables[0, 0][vb] if p.tables.shape[:2] == (1, 1) else p.tables[rows, g, vb]
                dot = q[:, 32 * b: 32 * b + 32].astype(np.int64) @ vb.astype(np.int64).T
                if zint:
                    dot = dot - int(z0) * asum[:, b, None].astype(np.int64)
                y = y + dot.astype(np.float32) * (sa[:, b, None] * p.scale[None, :, g])
                s = s + sa[:, b] * asum[:, b].astype(np.float32)
            if not zint:
                y = y - s[:, None] * swz[None, :, g]
        if bias is not None:
            y = y + bias
        return y.astype(np.float32)


class _NumpyLowbit:
    """The numpy kernel's packed low-bit weight: the code bit patterns (uint8, not floats) and parameters."""

    def __init__(self, values, bits, scale, zero, group_size, tables):
        self.values, self.bits, self.scale, self.zero = values.copy(), bits, scale, zero
        self.group_size, self.tables = group_size, tables

    @property
    def nbytes(self):
        return self.values.nbytes + self.scale.nbytes + self.zero.nbytes + (self.tables.nbytes if self.tables is not None else 0)


def lowbit_quantize_blocks(x2):
    """Per-32-block int8 activations: ``(q int8 (M, Kp), sa float32 (M, nb), asum int32 (M, nb))``."""
    m, k = x2.shape
    nb = -(-k // 32)
    xp = np.zeros((m, nb * 32), np.float32)
    xp[:, :k] = x2
    xb = xp.reshape(m, nb, 32)
    amax = np.abs(xb).max(axis=2)
    sa = (amax / np.float32(127)).astype(np.float32)
    ok = sa >= np.float32(1e-30)
    sa = np.where(ok, sa, np.float32(0)).astype(np.float32)
    inv = np.where(ok, np.float32(1) / np.where(ok, sa, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(xb * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(m, -1), sa, q.astype(np.int32).sum(axis=2).astype(np.int32)


@qcore.hookimpl
def qcore_kernels():
    return [NumpyKernel]
