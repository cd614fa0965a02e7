"""Computing with a packed :class:`qcore.QTensor` weight a block of rows at a time (no framework imports).

The adapters keep only packed weights and compute with ``qcore.ops.qlinear`` (which takes every 2-D weight:
one whose scheme declares no decode form runs its rows path).  :func:`linear_rows` is that rows path without
quantizing the activations: blocks of the weight's rows decoded to float one at a time
(:meth:`qcore.QTensor.decode_rows`, the one row decoder), a workspace of one block (``BLOCK_FLOATS`` floats),
never the whole float weight.  :class:`PackedMatrix` is the scikit-learn adapter's weight.
"""
from __future__ import annotations

import numpy as np

from ..tensor import QTensor

#: floats of decoded weight held at a time (4 MiB of float32)
BLOCK_FLOATS = 1 << 20


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


class PackedMatrix:
    """A scikit-learn weight ``(n_in, n_out)`` held as the packed :class:`qcore.QTensor` of its transpose
    ``(n_out, n_in)`` — the ``(N, K)`` layout ``qcore.ops.qlinear`` computes with, so groups and per-input scales
    run along the inputs ``K``.

    ``a @ m`` is ``qcore.ops.qlinear(a, m.qtensor)`` (activations quantized per row / per block of 32 as for the
    torch adapter, integer product on the packed codes): float32, cast to ``m.dtype`` when that differs.  A weight
    ``qlinear`` refuses (a plugin scheme whose declared decode form is invalid) is multiplied in float32
    from blocks of decoded rows instead (:func:`linear_rows`; ``m.uses_kernel`` False).  ``np.asarray(m)`` and
    ``m.toarray()`` decode it transiently in the ``(n_in, n_out)`` layout.  ``__array_ufunc__ = None`` makes
    numpy hand ``a @ m`` to ``m.__rmatmul__``.
    """

    __array_ufunc__ = None

    def __init__(self, qtensor: QTensor, dtype=np.float64):
        if not isinstance(qtensor, QTensor) or len(qtensor.shape) != 2:
            raise TypeError("PackedMatrix needs a 2-D qcore.QTensor (the (n_out, n_in) transpose of the weight)")
        self.qtensor = qtensor
        self.dtype = np.dtype(dtype)
        self.uses_kernel = _runs_in_qlinear(qtensor)

    shape = property(lambda self: tuple(self.qtensor.shape[::-1]))
    ndim = property(lambda self: 2)
    size = property(lambda self: self.qtensor.size)
    nbytes = property(lambda self: self.qtensor.nbytes)  # what it holds: the packed codes and parameters

    def toarray(self) -> np.ndarray:
        return np.ascontiguousarray(self.qtensor.dequantize().T, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        return self.toarray() if dtype is None else self.toarray().astype(dtype)

    def __rmatmul__(self, a):
        if hasattr(a, "toarray") and not isinstance(a, np.ndarray):  # scipy sparse input (dense for the kernel)
            a = a.toarray()
        a = np.asarray(a)
        k, n = self.shape
        if a.ndim != 2 or a.shape[1] != k:
            raise ValueError(f"cannot multiply an array of shape {a.shape} by a weight of shape {self.shape}")
        if self.uses_kernel:
            from .. import ops

            y = ops.qlinear(a, self.qtensor)
        else:
            y = linear_rows(a, self.qtensor)
        return y.astype(self.dtype, copy=False)

    @property
    def T(self) -> np.ndarray:  # backpropagation (not used by predict): decoded
        return self.toarray().T

    def __reduce__(self):
        return (PackedMatrix, (self.qtensor, self.dtype))

    def __repr__(self) -> str:
        return f"PackedMatrix({self.qtensor!r}, dtype={self.dtype.name})"


def _runs_in_qlinear(qt: QTensor) -> bool:
    """True when ``qcore.ops.qlinear`` takes ``qt`` (its plan is built now and cached on ``qt``, and made the one
    copy of the codes); False for weights it refuses (no decode form it knows), which take :func:`linear_rows`."""
    from .. import ops

    if 0 in qt.shape:
        return False
    try:
        ops.qlinear(np.zeros((1, qt.shape[1]), np.float32), qt)
    except ValueError:
        return False
    ops.hold_packed_once(qt)
    return True
