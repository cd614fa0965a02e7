"""``QTensor``: integer codes plus the few parameters needed to get floats back."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import resolve
from .kernels.base import packed_size


class QTensor:
    """A quantized tensor.

    :ivar codes: integer codes, unpacked, ``int8`` for signed schemes and ``uint8`` for unsigned, shape ``shape``
    :ivar scheme: the name of the scheme that made it (a plugin name)
    :ivar bits: bits per code, sign included
    :ivar shape: the original shape
    :ivar params: ``{"scale": ..., "zero_point": ..., "codebook": ...}`` — arrays, scheme-specific
    :ivar options: the constructor options of the quantizer (``bits``, ``granularity``, ...), enough to rebuild it
        with ``qcore.get_quantizer(qt.scheme, **qt.options)``
    :ivar cache: per-tensor scratch space for kernels (e.g. GEMM-packed weights); never saved
    """

    __slots__ = ("codes", "scheme", "bits", "shape", "params", "options", "signed", "dtype", "cache", "_quantizer", "_lock", "__weakref__")

    def __init__(self, codes, scheme: str, bits: int, params: dict[str, np.ndarray], options: dict[str, Any] | None = None,
                 *, signed: bool | None = None, dtype: str = "float32", quantizer=None):
        codes = np.asarray(codes)
        if codes.dtype not in (np.int8, np.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        self.codes = codes
        self.scheme = str(scheme)
        self.bits = int(bits)
        self.shape = tuple(int(s) for s in codes.shape)
        self.params = {k: np.asarray(v) for k, v in params.items()}
        self.options = dict(options or {})
        self.options.setdefault("bits", self.bits)
        self.signed = bool(codes.dtype == np.int8) if signed is None else bool(signed)
        self.dtype = dtype  # dtype of the original input, for information
        self.cache: dict[str, Any] = {}
        self._quantizer = quantizer
        self._lock = threading.Lock()

    # -- values --------------------------------------------------------------------------------------
    @property
    def quantizer(self):
        """The quantizer that decodes this tensor (rebuilt from ``scheme`` and ``options`` when needed)."""
        if self._quantizer is None:
            with self._lock:
                if self._quantizer is None:  # looked up by the API layer (see qcore/resolve.py)
                    self._quantizer = resolve.quantizer(self.scheme, **self.options)
        return self._quantizer

    def dequantize(self) -> np.ndarray:
        """float32 values of the original shape."""
        out = np.asarray(self.quantizer.decode(self.codes, self.params), dtype=np.float32)
        return out.reshape(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    # -- storage -------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """True storage: packed codes (``ceil(n*bits/8)`` bytes) plus every parameter array."""
        return packed_size(self.size, self.bits) + sum(int(p.nbytes) for p in self.params.values())

    def pack(self, kernel=None) -> np.ndarray:
        """Codes packed at exactly ``bits`` bits each (little-endian bit stream, see docs/format.md)."""
        return resolve.kernel(kernel).pack(self.codes, self.bits)

    @classmethod
    def from_packed(cls, packed, shape, scheme, bits, params, options=None, *, signed: bool, kernel=None, **kw) -> "QTensor":
        count = int(np.prod(shape, dtype=np.int64))
        codes = resolve.kernel(kernel).unpack(packed, bits, count, signed).reshape(shape)
        return cls(codes, scheme, bits, params, options, signed=signed, **kw)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "bits")
        return f"QTensor(scheme={self.scheme!r}, bits={self.bits}, shape={self.shape}{', ' + opts if opts else ''}, nbytes={self.nbytes})"

    def __reduce__(self):
        return (_rebuild, (self.codes, self.scheme, self.bits, self.params, self.options, self.signed, self.dtype))


def _rebuild(codes, scheme, bits, params, options, signed, dtype):
    return QTensor(codes, scheme, bits, params, options, signed=signed, dtype=dtype)
