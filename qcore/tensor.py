"""``QTensor``: integer codes plus the few parameters needed to get floats back.

Storage: codes below 8 bits are kept **packed** in memory, in the file format's little-endian bit stream
(docs/format.md §3: code ``i`` in stream bits ``i*bits .. i*bits+bits-1``; at 4 bits element ``2j`` is the low
nibble and ``2j+1`` the high nibble of byte ``j``).  ``qt.packed`` is that byte stream (read-only);
``qt.codes`` unpacks it on demand into a fresh int8/uint8 array each time it is read (nothing is cached).
8-bit codes need no packing: they are stored as the int8/uint8 array itself.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import resolve
from .kernels.base import code_dtype, packed_size


def _kernel(name=None):
    """The kernel that packs and unpacks codes (``None``: the fastest installed), looked up by the API layer
    (see qcore/resolve.py)."""
    return resolve.kernel(name)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class QTensor:
    """A quantized tensor.

    :ivar codes: integer codes, unpacked, ``int8`` for signed schemes and ``uint8`` for unsigned, shape ``shape``;
        for ``bits < 8`` a fresh array unpacked from :attr:`packed` at every read (writing into it does not
        change the tensor)
    :ivar packed: the codes packed at exactly ``bits`` bits each (1-d ``uint8``, read-only; at 8 bits a byte
        view of the codes), the storage that :attr:`nbytes` counts
    :ivar scheme: the name of the scheme that made it (a plugin name)
    :ivar bits: bits per code, sign included
    :ivar shape: the original shape
    :ivar params: ``{"scale": ..., "zero_point": ..., "codebook": ...}`` — arrays, scheme-specific
    :ivar options: the constructor options of the quantizer (``bits``, ``granularity``, ...), enough to rebuild it
        with ``qcore.get_quantizer(qt.scheme, **qt.options)``
    :ivar cache: per-tensor scratch space for kernels (e.g. GEMM-packed weights); never saved
    """

    __slots__ = ("_store", "scheme", "bits", "shape", "_params", "options", "signed", "dtype", "cache", "_quantizer",
                 "_lock", "_regen", "_param_regen", "__weakref__")

    def __init__(self, codes, scheme: str, bits: int, params: dict[str, np.ndarray], options: dict[str, Any] | None = None,
                 *, signed: bool | None = None, dtype: str = "float32", quantizer=None):
        codes = np.asarray(codes)
        if codes.dtype not in (np.int8, np.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        self._setup(scheme, bits, tuple(int(s) for s in codes.shape), params, options,
                    bool(codes.dtype == np.int8) if signed is None else bool(signed), dtype, quantizer)
        if codes.dtype != code_dtype(self.signed):
            raise TypeError(f"signed={self.signed} needs {code_dtype(self.signed)} codes, got {codes.dtype}")
        if self.bits == 8:
            self._store = np.ascontiguousarray(codes)
        else:  # pack once; the kernel checks every code fits in `bits` bits
            kernel = getattr(quantizer, "kernel", None) or _kernel()
            self._store = _read_only(kernel.pack(codes, self.bits))

    def _setup(self, scheme, bits, shape, params, options, signed, dtype, quantizer) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
            raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
        self.scheme = str(scheme)
        self.bits = int(bits)
        self.shape = shape
        self.params = {k: np.asarray(v) for k, v in params.items()}
        self.options = dict(options or {})
        self.options.setdefault("bits", self.bits)
        self.signed = signed
        self.dtype = dtype  # dtype of the original input, for information
        self.cache: dict[str, Any] = {}
        self._quantizer = quantizer
        self._lock = threading.Lock()
        self._regen = None
        self._param_regen: dict[str, Any] = {}

    # -- storage held elsewhere ------------------------------------------------------------------------
    def _storage(self) -> np.ndarray:
        """The stored codes: the packed stream (bits < 8) or the int8/uint8 code array (8 bits)."""
        store = self._store
        if store is None:  # held by a kernel layout (see hold_codes_in): made again, same bytes
            store = self._regen()
            if self.bits < 8:
                store = _read_only(store)
        return store

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The parameter arrays by name; those held by a kernel layout (:meth:`hold_codes_in`) are made again at
        each read (a new dict then: change parameters by building a new QTensor, never in place)."""
        regen = self._param_regen
        if not regen:
            return self._params
        return {k: (regen[k]() if k in regen else v) for k, v in self._params.items()}

    @params.setter
    def params(self, value) -> None:
        self._params = value
        self._param_regen = {}

    def hold_codes_in(self, regenerate, params=None) -> None:
        """Drop this tensor's own copy of the codes: from now on ``regenerate()`` rebuilds them on demand.

        For holders that keep the codes in another layout already (``qcore.ops.hold_packed_once``: the GEMM
        kernels' packed weight).  ``regenerate()`` must return exactly the stored codes — the packed stream
        (1-d uint8, ``ceil(size*bits/8)`` bytes, unused high bits 0) below 8 bits, the int8/uint8 code array of
        shape ``shape`` at 8 bits.  ``params`` maps names of parameters the holder can also rebuild exactly (e.g.
        the scales, which the kernel keeps in its own order) to callables returning them: those are dropped too.
        ``codes``, ``packed``, ``params``, ``nbytes``, pickling and files behave as before; ``packed``/``codes``
        (and the held parameters) are then made fresh at each read.
        """
        if not callable(regenerate):
            raise TypeError("regenerate must be callable")
        params = dict(params or {})
        for name, fn in params.items():
            if name not in self._params or not callable(fn):
                raise ValueError(f"params must map names of this tensor's parameters to callables, got {name!r}")
        self._regen = regenerate
        self._store = None
        if params:
            self._param_regen = {**self._param_regen, **params}
            self._params = {k: (None if k in self._param_regen else v) for k, v in self._params.items()}

    @property
    def holds_codes(self) -> bool:
        """False once :meth:`hold_codes_in` moved the codes to another holder."""
        return self._store is not None

    # -- codes ---------------------------------------------------------------------------------------
    @property
    def codes(self) -> np.ndarray:
        """The codes, unpacked (int8 if signed else uint8, shape ``shape``); made on demand below 8 bits."""
        if self.bits == 8:
            return self._storage()
        kernel = getattr(self._quantizer, "kernel", None) or _kernel()
        return kernel.unpack(self._storage(), self.bits, self.size, self.signed).reshape(self.shape)

    @property
    def packed(self) -> np.ndarray:
        """The codes as the packed bit stream (1-d uint8, ``ceil(size*bits/8)`` bytes, read-only)."""
        if self.bits == 8:
            flat = np.ascontiguousarray(self._storage()).reshape(-1).view(np.uint8)
            return _read_only(flat.view()) if flat.flags.writeable else flat
        return self._storage()

    # -- values --------------------------------------------------------------------------------------
    @property
    def quantizer(self):
        """The quantizer that decodes this tensor (rebuilt from ``scheme`` and ``options`` when needed)."""
        if self._quantizer is None:
            with self._lock:
                if self._quantizer is None:
                    self._quantizer = resolve.quantizer(self.scheme, **self.options)  # see qcore/resolve.py
        return self._quantizer

    def dequantize(self) -> np.ndarray:
        """float32 values of the original shape (codes are unpacked transiently for the decode)."""
        out = np.asarray(self.quantizer.decode(self.codes, self.params), dtype=np.float32)
        return out.reshape(self.shape)

    @property
    def layout(self):
        """The :class:`~qcore.quantization.forms.Layout` of the parameters (granularity, axis, group size), as the
        scheme reads it from the stored options (``quantizer.layout_of(qt)``): no need to know the scheme."""
        return self.quantizer.layout_of(self)

    def decodes_as(self):
        """What the codes decode as (``quantizer.decodes_as(params)``): an ``Affine`` or ``Table`` form, or None."""
        return self.quantizer.decodes_as(self.params)

    def decode_rows(self, start: int, stop: int) -> np.ndarray:
        """float32 values of rows ``[start, stop)`` of a 2-D tensor, decoded by the scheme from those rows' codes
        only (unpacked from the packed bytes when the rows start on a byte boundary, e.g. ``start`` a multiple of
        8) and their parameters (sliced by :attr:`layout`): the one way to compute with a weight a block of rows
        at a time without a float copy of all of it."""
        codes = self.row_codes(start, stop)
        layout = self.layout
        params = {name: layout.rows(p, start, stop, self.shape[0]) for name, p in self.params.items()}
        return np.asarray(self.quantizer.decode(codes, params), dtype=np.float32).reshape(codes.shape)

    def row_codes(self, start: int, stop: int) -> np.ndarray:
        """The codes of rows ``[start, stop)`` of a 2-D tensor (int8/uint8 ``(stop - start, K)``), unpacked from
        those rows' bytes only when they start on a byte boundary (else from all the codes)."""
        if len(self.shape) != 2:
            raise ValueError(f"row_codes/decode_rows need a 2-D tensor, got shape {self.shape}")
        n, k = self.shape
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows [{start}, {stop}) are out of range for {n} rows")
        if self.bits == 8 or (start * k * self.bits) % 8:
            return self.codes[start:stop]
        first = start * k * self.bits // 8
        count = (stop - start) * k
        part = np.ascontiguousarray(self.packed[first:first + packed_size(count, self.bits)])
        kernel = getattr(self._quantizer, "kernel", None) or _kernel()
        return kernel.unpack(part, self.bits, count, self.signed).reshape(stop - start, k)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    # -- storage -------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """True storage: packed codes (``ceil(n*bits/8)`` bytes) plus every parameter array."""
        return packed_size(self.size, self.bits) + sum(int(p.nbytes) for p in self.params.values())

    def pack(self, kernel=None) -> np.ndarray:
        """Codes packed at exactly ``bits`` bits each (little-endian bit stream, see docs/format.md).

        Without ``kernel`` this is the stored stream itself (read-only, no work); naming a kernel re-packs the
        codes with it (to compare kernels).
        """
        if kernel is None:
            return self.packed
        return _kernel(kernel).pack(self.codes, self.bits)

    @classmethod
    def from_packed(cls, packed, shape, scheme, bits, params, options=None, *, signed: bool, kernel=None,
                    copy: bool = True, **kw) -> "QTensor":
        """A QTensor over codes already packed at ``bits`` bits (the :meth:`pack` / file layout).

        The codes are never unpacked: ``packed`` (1-d uint8 of exactly ``ceil(prod(shape)*bits/8)`` bytes) becomes
        the storage — a copy of it unless ``copy=False`` (then the caller must not modify it).  The unused high
        bits of the last byte are cleared.  ``kernel`` is accepted for compatibility (nothing is unpacked).
        """
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must hold non-negative sizes, got {shape}")
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise TypeError(f"packed must be a 1-d uint8 array, got {packed.dtype} of shape {packed.shape}")
        self = cls.__new__(cls)
        self._setup(scheme, bits, shape, params, options, bool(signed), kw.pop("dtype", "float32"), kw.pop("quantizer", None))
        if kw:
            raise TypeError(f"from_packed got unexpected keyword argument(s) {', '.join(sorted(kw))}")
        need = packed_size(self.size, self.bits)
        if packed.size != need:
            raise ValueError(f"{self.size} codes of {self.bits} bits need {need} bytes, got {packed.size}")
        tail = (self.size * self.bits) % 8
        dirty = bool(tail and packed[-1] >> tail)
        if copy or dirty or not packed.flags.c_contiguous:
            packed = np.array(packed, copy=True)
        if dirty:
            packed[-1] &= (1 << tail) - 1
        if self.bits == 8:
            self._store = packed.view(code_dtype(self.signed)).reshape(shape)
        else:
            self._store = _read_only(packed)
        return self

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "bits")
        return f"QTensor(scheme={self.scheme!r}, bits={self.bits}, shape={self.shape}{', ' + opts if opts else ''}, nbytes={self.nbytes})"

    def __reduce__(self):
        return (_rebuild_packed, (np.array(self.packed), self.shape, self.scheme, self.bits, self.params, self.options,
                                  self.signed, self.dtype))


def _rebuild(codes, scheme, bits, params, options, signed, dtype):
    """Unpickles QTensors pickled by qcore before codes were kept packed (they stored unpacked codes)."""
    return QTensor(codes, scheme, bits, params, options, signed=signed, dtype=dtype)


def _rebuild_packed(packed, shape, scheme, bits, params, options, signed, dtype):
    return QTensor.from_packed(packed, shape, scheme, bits, params, options, signed=signed, dtype=dtype, copy=False)
