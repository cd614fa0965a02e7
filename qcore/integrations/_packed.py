"""Computing with a packed :class:`qcore.QTensor` weight a block of rows at a time (no framework imports).

The adapters keep only packed weights.  Where ``qcore.ops.qlinear`` does not run a weight (the scikit-learn
adapter, which computes in float64 like the estimator; QLinear on a qcore without the low-bit ``qlinear``),
the product is computed from blocks of the weight's rows decoded to float one at a time: the workspace is
one block (``BLOCK_FLOATS`` floats), never the whole float weight.
"""
from __future__ import annotations

import numpy as np

from ..tensor import QTensor
from ..validation import normalize_axis

#: floats of decoded weight held at a time (4 MiB of float32)
BLOCK_FLOATS = 1 << 20


def _row_param(qt: QTensor, p: np.ndarray, n0: int, n1: int) -> np.ndarray:
    """Parameter ``p`` restricted to rows [n0, n1) of a 2-D weight: per-row (channel axis 0) and per-group
    parameters are sliced, per-tensor and per-column ones are shared."""
    opts = qt.options or {}
    gran = opts.get("granularity", "tensor")
    rows = qt.shape[0]
    per_row = gran == "group" or (gran == "channel" and normalize_axis(opts.get("axis", 0), 2) == 0)
    if per_row and p.ndim >= 1 and p.shape[0] == rows:
        return p[n0:n1]
    return p


def block_rows(qt: QTensor, block_floats: int = BLOCK_FLOATS) -> int:
    """Rows per block: a multiple of 8 (so every block starts on a byte of the packed stream)."""
    k = max(1, int(np.prod(qt.shape[1:], dtype=np.int64)))
    return max(8, (block_floats // k) // 8 * 8)


def decode_rows(qt: QTensor, n0: int, n1: int) -> np.ndarray:
    """float32 values of rows [n0, n1) of the 2-D ``qt``, decoded from its packed bytes (``n0`` a multiple of 8)."""
    if len(qt.shape) != 2:
        raise ValueError(f"decode_rows needs a 2-D weight, got shape {qt.shape}")
    k = qt.shape[1]
    if qt.bits == 8 or (n0 * k * qt.bits) % 8:
        codes = qt.codes[n0:n1]
    else:
        start = n0 * k * qt.bits // 8
        count = (n1 - n0) * k
        end = start + (count * qt.bits + 7) // 8
        part = QTensor.from_packed(qt.packed[start:end], (n1 - n0, k), qt.scheme, qt.bits, {}, qt.options,
                                   signed=qt.signed, quantizer=qt.quantizer, copy=False)
        codes = part.codes
    params = {name: _row_param(qt, np.asarray(p), n0, n1) for name, p in qt.params.items()}
    return np.asarray(qt.quantizer.decode(codes, params), dtype=np.float32).reshape(n1 - n0, k)


def linear_rows(x: np.ndarray, qt: QTensor, bias=None, block_floats: int = BLOCK_FLOATS) -> np.ndarray:
    """``x @ dequantize(qt).T + bias`` (``qt`` of shape (N, K), torch layout) a block of output rows at a time."""
    n, k = qt.shape
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, k)
    out = np.empty((x2.shape[0], n), np.float32)
    step = block_rows(qt, block_floats)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        np.matmul(x2, decode_rows(qt, n0, n1).T, out=out[:, n0:n1])
    if bias is not None:
        out += np.asarray(bias, np.float32)
    return out.reshape(tuple(x.shape[:-1]) + (n,))


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
