"""Computing with a packed :class:`qcore.QTensor` weight a block of rows at a time (no framework imports).

The adapters keep only packed weights.  Where ``qcore.ops.qlinear`` does not run a weight (the scikit-learn
adapter, which computes in float64 like the estimator), the product is computed from blocks of the weight's
rows decoded to float one at a time (:meth:`qcore.QTensor.decode_rows`, the one row decoder): the workspace
is one block (``BLOCK_FLOATS`` floats), never the whole float weight.
"""
from __future__ import annotations

import numpy as np

from ..tensor import QTensor

#: floats of decoded weight held at a time (4 MiB of float32)
BLOCK_FLOATS = 1 << 20


def block_rows(qt: QTensor, block_floats: int = BLOCK_FLOATS) -> int:
    """Rows per block: a multiple of 8 (so every block starts on a byte of the packed stream)."""
    k = max(1, int(np.prod(qt.shape[1:], dtype=np.int64)))
    return max(8, (block_floats // k) // 8 * 8)


def decode_rows(qt: QTensor, n0: int, n1: int) -> np.ndarray:
    """float32 values of rows [n0, n1) of the 2-D ``qt`` (:meth:`qcore.QTensor.decode_rows`, the one row decoder)."""
    return qt.decode_rows(n0, n1)


def linear_rows(x: np.ndarray, qt: QTensor, bias=None, block_floats: int = BLOCK_FLOATS) -> np.ndarray:
    """``x @ dequantize(qt).T + bias`` (``qt`` of shape (N, K), torch layout) a block of output rows at a time
    (``qcore.ops.qlinear``'s rows path, in float32 without quantizing ``x``)."""
    from ..ops.lowbit import rows_linear

    n, k = qt.shape
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, k)
    b = None if bias is None else np.asarray(bias, np.float32)
    return rows_linear(x2, qt, b, block_floats).reshape(tuple(x.shape[:-1]) + (n,))


def matmul_rows(a: np.ndarray, qt: QTensor, dtype=np.float64, block_floats: int = BLOCK_FLOATS) -> np.ndarray:
    """``a @ dequantize(qt)`` (``qt`` of shape (K, N), the scikit-learn layout) in ``dtype``, a block of the
    weight's K rows at a time."""
    kk, n = qt.shape
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != kk:
        raise ValueError(f"cannot multiply an array of shape {a.shape} by a weight of shape {qt.shape}")
    a = a.astype(dtype, copy=False)
    out = np.zeros((a.shape[0], n), dtype)
    step = block_rows(qt, block_floats)
    for k0 in range(0, kk, step):
        k1 = min(kk, k0 + step)
        out += a[:, k0:k1] @ decode_rows(qt, k0, k1).astype(dtype, copy=False)
    return out


class PackedMatrix:
    """A quantized 2-D weight that numpy code can multiply from the left (``a @ m``) while it stays packed.

    ``np.asarray(m)`` (and ``m.toarray()``) decode it transiently; ``a @ m`` decodes a block of rows at a time
    (:func:`matmul_rows`).  ``__array_ufunc__ = None`` makes numpy hand ``a @ m`` to ``m.__rmatmul__``.
    """

    __array_ufunc__ = None

    def __init__(self, qtensor: QTensor, dtype=np.float64):
        if not isinstance(qtensor, QTensor) or len(qtensor.shape) != 2:
            raise TypeError("PackedMatrix needs a 2-D qcore.QTensor")
        self.qtensor = qtensor
        self.dtype = np.dtype(dtype)

    shape = property(lambda self: tuple(self.qtensor.shape))
    ndim = property(lambda self: 2)
    size = property(lambda self: self.qtensor.size)
    nbytes = property(lambda self: self.qtensor.nbytes)  # what it holds: the packed codes and parameters

    def toarray(self) -> np.ndarray:
        return self.qtensor.dequantize().astype(self.dtype)

    def __array__(self, dtype=None, copy=None):
        return self.toarray() if dtype is None else self.toarray().astype(dtype)

    def __rmatmul__(self, a):
        return matmul_rows(a, self.qtensor, np.result_type(np.asarray(a).dtype, self.dtype))

    @property
    def T(self) -> np.ndarray:  # backpropagation (not used by predict): decoded
        return self.toarray().T

    def __reduce__(self):
        return (PackedMatrix, (self.qtensor, self.dtype))

    def __repr__(self) -> str:
        return f"PackedMatrix({self.qtensor!r}, dtype={self.dtype.name})"
