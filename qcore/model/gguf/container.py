"""The GGUF container (version 3), read and written by hand with every field validated.

Layout (all little-endian; the format is documented in llama.cpp's ``docs/gguf.md`` and the ``gguf`` package)::

    u32  magic "GGUF"          u32  version (3)
    u64  tensor count           u64  metadata key/value count
    key/value pairs:            string key, u32 value type, value
    tensor infos:               string name, u32 n_dims, u64 ne[n_dims] (ne[0] varies fastest: a torch
                                (out, in) weight is ne = [in, out]), u32 ggml type, u64 offset in the data
    padding to ``general.alignment`` (default 32)
    data:                       each tensor at its offset, every offset a multiple of the alignment

    string = u64 length + UTF-8 bytes;  array = u32 item type + u64 count + items

The reader refuses, with :class:`qcore.FormatError` and before reading tensor data, a wrong magic or version,
counts or lengths that run past the end of the file, unknown value or tensor types, tensors that overlap or run
past the file, and ``ne[0]`` that is not a whole number of blocks.  Writes go to a temporary file in the target's
folder, renamed into place when complete.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ...errors import FormatError
from ..atomic import atomic_output

MAGIC = b"GGUF"
VERSION = 3
DEFAULT_ALIGNMENT = 32

# -- metadata value types -------------------------------------------------------------------------------------
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4", FLOAT32: "<f4",
           BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}
VALUE_TYPE_NAMES = {UINT8: "u8", INT8: "i8", UINT16: "u16", INT16: "i16", UINT32: "u32", INT32: "i32", FLOAT32: "f32",
                    BOOL: "bool", STRING: "str", ARRAY: "array", UINT64: "u64", INT64: "i64", FLOAT64: "f64"}

# -- tensor types: ggml type id -> (name, elements per block, bytes per block) ----------------------------------
F32, F16, Q4_0, Q4_1, Q5_0, Q8_0, BF16 = 0, 1, 2, 3, 6, 8, 30
TENSOR_TYPES: dict[int, tuple[str, int, int]] = {
    F32: ("F32", 1, 4), F16: ("F16", 1, 2), BF16: ("BF16", 1, 2),
    Q4_0: ("Q4_0", 32, 18), Q4_1: ("Q4_1", 32, 20), Q5_0: ("Q5_0", 32, 22), Q8_0: ("Q8_0", 32, 34),
}
#: ggml types that exist but qcore does not read (named in the error)
OTHER_TYPE_NAMES = {7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
                    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
                    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0",
                    35: "TQ2_0", 39: "MXFP4"}

MAX_DIMS = 4          # GGML_MAX_DIMS
MAX_STRING = 1 << 30  # a single key, name or token longer than this is not a model file


def type_name(t: int) -> str:
    if t in TENSOR_TYPES:
        return TENSOR_TYPES[t][0]
    return OTHER_TYPE_NAMES.get(t, f"type {t}")


def tensor_nbytes(ggml_type: int, ne: Iterable[int]) -> int:
    """Bytes of a tensor of ``ggml_type`` with dimensions ``ne`` (``ne[0]`` a whole number of blocks)."""
    _, block, size = TENSOR_TYPES[ggml_type]
    ne = list(ne)
    count = 1
    for d in ne:
        count *= int(d)
    return count // block * size


@dataclass
class TensorInfo:
    """A tensor of a GGUF file: ``name``, ``ggml_type``, ``ne`` (GGUF order, fastest first), byte ``offset`` in
    the data section and ``nbytes``."""

    name: str
    ggml_type: int
    ne: tuple[int, ...]
    offset: int = 0
    nbytes: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy / torch shape (``ne`` reversed)."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


@dataclass
class Header:
    """The validated header of a GGUF file."""

    path: str
    version: int
    metadata: dict[str, Any]
    types: dict[str, tuple]          # key -> (value type,) or (ARRAY, item type)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    file_size: int
    by_name: dict[str, TensorInfo] = field(default_factory=dict)


# -- reading --------------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, f, size: int, path: str):
        self.f, self.size, self.path = f, size, path

    def bad(self, msg: str) -> FormatError:
        return FormatError(f"{self.path!r}: {msg}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise self.bad(f"the header runs past the end of the file ({self.size} bytes): truncated or corrupted")
        data = self.f.read(n)
        if len(data) != n:
            raise self.bad("the file ended while reading the header")
        return data

    def scalar(self, code: str):
        dt = np.dtype(code)
        return np.frombuffer(self.take(dt.itemsize), dtype=dt)[0].item()

    def string(self) -> str:
        n = self.scalar("<u8")
        if n > MAX_STRING or n > self.size:
            raise self.bad(f"a string of {n} bytes is longer than the file")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad("a string of the header is not UTF-8") from None

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == STRING:
            return self.string()
        raise self.bad(f"unknown metadata value type {vtype}")

    def array(self):
        """``(item type, items)``: strings as a list, numbers as a numpy array."""
        itype = self.scalar("<u4")
        count = self.scalar("<u8")
        if itype not in _SCALAR and itype != STRING:
            raise self.bad(f"unknown or nested array item type {itype}")
        if count > self.size:
            raise self.bad(f"an array of {count} items is longer than the file")
        if itype == STRING:
            return itype, [self.string() for _ in range(count)]
        dt = np.dtype(_SCALAR[itype])
        return itype, np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate the header of the GGUF file ``path`` (no tensor data is read)."""
    p = os.fspath(path)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        r = _Reader(f, size, p)
        if size < 24 or f.read(4) != MAGIC:
            raise FormatError(f"{p!r} is not a GGUF file (no 'GGUF' magic)")
        version = r.scalar("<u4")
        if version not in (2, 3):
            raise r.bad(f"GGUF version {version} is not read here (versions 2 and 3 are)")
        n_tensors, n_kv = r.scalar("<u8"), r.scalar("<u8")
        if n_tensors > size or n_kv > size:
            raise r.bad(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit a {size}-byte file")
        metadata: dict[str, Any] = {}
        types: dict[str, tuple] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<u4")
            if key in metadata:
                raise r.bad(f"metadata key {key!r} appears twice")
            if vtype == ARRAY:
                itype, metadata[key] = r.array()
                types[key] = (ARRAY, itype)
            else:
                metadata[key] = r.value(vtype)
                types[key] = (vtype,)
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1) or alignment > 1 << 20:
            raise r.bad(f"general.alignment must be a power of two, got {alignment!r}")
        tensors: list[TensorInfo] = []
        for _ in range(n_tensors):
            name = r.string()
            nd = r.scalar("<u4")
            if not 1 <= nd <= MAX_DIMS:
                raise r.bad(f"tensor {name!r}: {nd} dimensions (1 to {MAX_DIMS} allowed)")
            ne = tuple(r.scalar("<u8") for _ in range(nd))
            gtype = r.scalar("<u4")
            offset = r.scalar("<u8")
            if gtype not in TENSOR_TYPES:
                raise r.bad(f"tensor {name!r} has GGUF type {type_name(gtype)}, which qcore does not read (it reads "
                            f"{', '.join(v[0] for v in TENSOR_TYPES.values())}: the types it writes)")
            block = TENSOR_TYPES[gtype][1]
            if any(d > size * 64 for d in ne) or ne[0] % block:
                raise r.bad(f"tensor {name!r}: dimensions {list(ne)} do not fit type {type_name(gtype)} "
                            f"(ne[0] must be a multiple of {block})")
            if offset % alignment:
                raise r.bad(f"tensor {name!r}: offset {offset} is not a multiple of the alignment {alignment}")
            tensors.append(TensorInfo(name, gtype, ne, offset, tensor_nbytes(gtype, ne)))
        header_end = f.tell()
    data_start = -(-header_end // alignment) * alignment
    by_name: dict[str, TensorInfo] = {}
    spans = []
    for t in tensors:
        if t.name in by_name:
            raise FormatError(f"{p!r}: tensor {t.name!r} appears twice")
        by_name[t.name] = t
        if data_start + t.offset + t.nbytes > size:
            raise FormatError(f"{p!r}: tensor {t.name!r} ({t.nbytes} bytes at offset {t.offset}) runs past the end "
                              f"of the file: truncated or corrupted")
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FormatError(f"{p!r}: tensors {an!r} and {bn!r} overlap in the data section")
    return Header(p, version, metadata, types, tensors, alignment, data_start, size, by_name)


def read_tensor_bytes(f, header: Header, info: TensorInfo) -> np.ndarray:
    """The raw bytes (uint8) of one tensor, from the open file ``f``."""
    f.seek(header.data_start + info.offset)
    data = f.read(info.nbytes)
    if len(data) != info.nbytes:
        raise FormatError(f"{header.path!r}: tensor {info.name!r}: read {len(data)} of {info.nbytes} bytes")
    return np.frombuffer(data, dtype=np.uint8)


# -- writing --------------------------------------------------------------------------------------------------
@dataclass
class OutTensor:
    """A tensor to write: its GGUF ``name``, ``ggml_type``, ``shape`` (numpy order) and a callable producing
    its bytes (uint8 array of :func:`tensor_nbytes` bytes) when it is written."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.ne)


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(vtype: int, value, item_type: int | None = None) -> bytes:
    if vtype == STRING:
        return _pack_string(str(value))
    if vtype == ARRAY:
        if item_type is None:
            raise ValueError("an array value needs its item type")
        items = list(value) if item_type == STRING else np.asarray(value, dtype=_SCALAR[item_type])
        head = struct.pack("<IQ", item_type, len(items))
        if item_type == STRING:
            return head + b"".join(_pack_string(str(v)) for v in items)
        return head + np.ascontiguousarray(items).tobytes()
    if vtype in _SCALAR:
        return np.asarray(value, dtype=_SCALAR[vtype]).tobytes()
    raise ValueError(f"unknown metadata value type {vtype}")


def header_bytes(metadata: list[tuple], tensors: list[OutTensor], alignment: int = DEFAULT_ALIGNMENT) -> bytes:
    """The header (padded to ``alignment``) for ``metadata`` — ``(key, value type, value[, item type])`` tuples in
    order — and ``tensors``, laid out back to back at aligned offsets."""
    out = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    keys = set()
    for entry in metadata:
        key, vtype, value = entry[:3]
        if key in keys:
            raise ValueError(f"metadata key {key!r} given twice")
        keys.add(key)
        out.append(_pack_string(key) + struct.pack("<I", vtype) + _pack_value(vtype, value, *entry[3:]))
    offset = 0
    names = set()
    for t in tensors:
        if t.name in names:
            raise ValueError(f"tensor name {t.name!r} given twice")
        names.add(t.name)
        ne = t.ne
        out.append(_pack_string(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                   + struct.pack("<IQ", t.ggml_type, offset))
        offset += -(-t.nbytes // alignment) * alignment
    raw = b"".join(out)
    return raw + b"\0" * (-len(raw) % alignment)


def write_gguf(path: str | os.PathLike, metadata: list[tuple], tensors: list[OutTensor],
               alignment: int = DEFAULT_ALIGNMENT, progress: Callable[[int, int], None] | None = None) -> int:
    """Write a GGUF file atomically (temporary file in the same folder, then rename); returns its size.

    Tensors are produced and written one at a time (streaming); ``progress(done, total)`` in bytes."""
    p = os.fspath(path)
    head = header_bytes(metadata, tensors, alignment)
    with atomic_output(p) as f:
        f.write(head)
        total = sum(t.nbytes for t in tensors)
        done = 0
        for t in tensors:
            data = np.ascontiguousarray(t.produce(), dtype=np.uint8).reshape(-1)
            if data.size != t.nbytes:
                raise RuntimeError(f"tensor {t.name!r} produced {data.size} bytes, announced {t.nbytes}")
            f.write(memoryview(data))
            f.write(b"\0" * (-t.nbytes % alignment))
            done += t.nbytes
            if progress is not None:
                progress(done, total)
    return os.path.getsize(p)
