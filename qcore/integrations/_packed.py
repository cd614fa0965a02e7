"""Computing with a packed :class:`qcore.QTensor` weight a block of rows at a time (no framework imports).

The adapters keep only packed weights and compute with ``qcore.ops.qlinear``.  Where it does not run a weight
(a plugin scheme without a decode form the kernels know; QLinear on a qcore without the low-bit ``qlinear``),
the product is computed from blocks of the weight's rows decoded to float one at a time: the workspace is
one block (``BLOCK_FLOATS`` floats), never the whole float weight.  :class:`PackedMatrix` is the
scikit-learn adapter's weight.
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


class PackedMatrix:
    """A scikit-learn weight ``(n_in, n_out)`` held as the packed :class:`qcore.QTensor` of its transpose
    ``(n_out, n_in)`` — the ``(N, K)`` layout ``qcore.ops.qlinear`` computes with, so groups and per-input scales
    run along the inputs ``K``.

    ``a @ m`` is ``qcore.ops.qlinear(a, m.qtensor)`` (activations quantized per row / per block of 32 as for the
    torch adapter, integer product on the packed codes): float32, cast to ``m.dtype`` when that differs.  A weight
    ``qlinear`` cannot run (a plugin scheme whose quantizer declares no lookup table) is multiplied in float32
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
