"""Reading and writing the safetensors container, by hand, with every field validated.

The container (https://github.com/huggingface/safetensors) is::

    8 bytes   N, unsigned 64-bit little-endian: the length of the header
    N bytes   UTF-8 JSON object: {"__metadata__": {str: str}, NAME: {"dtype": D, "shape": [...], "data_offsets": [b, e]}, ...}
    rest      the data buffer; tensor NAME is bytes [b, e) of it, C order, little-endian

We parse it ourselves (rather than trust a library) so that a truncated, corrupted or hostile file is refused
with :class:`qcore.FormatError` *before* any data is read: header length bounded by the file size, every
dtype known, every shape a list of non-negative integers, ``e - b == prod(shape) * itemsize``, offsets inside
the buffer, no two tensors overlapping, and the buffer exactly as long as the tensors need.

Writes are atomic: a temporary file in the target's folder, flushed and fsync'ed, then ``os.replace``.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import FormatError
from .atomic import atomic_output

#: safetensors dtype name -> numpy dtype (little-endian)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),  # raw 16-bit patterns; converted to float32 on read (numpy has no bfloat16)
}
_NP_TO_ST = {np.dtype(v).str if v.itemsize > 1 else np.dtype(v).char: k for k, v in DTYPES.items() if k != "BF16"}

#: a header larger than this is refused outright (the safetensors library uses the same limit)
MAX_HEADER = 100 * 1024 * 1024
#: more dimensions than this is not a tensor anyone writes
MAX_NDIM = 32


def st_dtype(arr: np.ndarray) -> str:
    dt = arr.dtype
    key = dt.newbyteorder("<").str if dt.itemsize > 1 else dt.char
    try:
        return _NP_TO_ST[key]
    except KeyError:
        raise TypeError(f"cannot store dtype {dt} in a safetensors file") from None


class TensorInfo:
    """One validated header entry."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def count(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def __repr__(self) -> str:
        return f"TensorInfo({self.name!r}, {self.dtype}, {list(self.shape)}, [{self.begin}, {self.end}))"


class Header:
    """The validated header of a safetensors file: tensor infos (in data order) and string metadata."""

    def __init__(self, path: str, tensors: dict[str, TensorInfo], metadata: dict[str, str], data_start: int, file_size: int):
        self.path = path
        self.tensors = tensors
        self.metadata = metadata
        self.data_start = data_start
        self.file_size = file_size


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def shape_fits(shape, itemsize: int) -> bool:
    """True if numpy can hold an array of ``shape`` (zero-length axes included): the product of the non-zero
    dimensions times ``itemsize`` must fit a signed 64-bit integer, as numpy checks even for empty arrays."""
    n = itemsize
    for s in shape:
        n *= max(s, 1)
    return n < 2**63


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate the header of ``path``; raises :class:`FormatError` on anything malformed."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        where = f"{path!r}"
        if file_size < 8:
            raise FormatError(f"{where} is not a safetensors file: {file_size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise FormatError(f"{where}: header length {n} exceeds the {MAX_HEADER}-byte limit (corrupted or hostile file)")
        if n > file_size - 8:
            raise FormatError(f"{where}: header length {n} runs past the end of the file ({file_size} bytes): truncated or corrupted")
        if n < 2:
            raise FormatError(f"{where}: header length {n} is too short for a JSON object")
        raw = f.read(n)
    if len(raw) != n:
        raise FormatError(f"{where}: could not read the {n}-byte header (file changed while reading?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: header is not UTF-8 ({exc})") from None
    if not text.startswith("{"):
        raise FormatError(f"{where}: header does not start with a JSON object")
    try:
        obj = json.loads(text, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: header is not a JSON object")
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError(f"{where}: __metadata__ must be an object of string to string")
    data_len = file_size - 8 - n
    infos: list[TensorInfo] = []
    for name, entry in obj.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{where}: tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise FormatError(f"{where}: tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(s) and s >= 0 for s in shape):
            raise FormatError(f"{where}: tensor {name!r}: shape must be a list of at most {MAX_NDIM} non-negative integers, got {shape!r}")
        if not shape_fits(shape, DTYPES[dtype].itemsize):
            raise FormatError(f"{where}: tensor {name!r}: shape {shape} is too large for any array")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise FormatError(f"{where}: tensor {name!r}: data_offsets must be two integers, got {offs!r}")
        b, e = offs
        if not 0 <= b <= e <= data_len:
            raise FormatError(
                f"{where}: tensor {name!r}: data_offsets [{b}, {e}] out of range of the {data_len}-byte data buffer "
                f"(truncated or corrupted file)"
            )
        info = TensorInfo(name, dtype, tuple(shape), b, e)
        need = info.count * DTYPES[dtype].itemsize
        if need != e - b:
            raise FormatError(f"{where}: tensor {name!r}: shape {shape} of {dtype} needs {need} bytes, data_offsets give {e - b}")
        infos.append(info)
    infos.sort(key=lambda i: (i.begin, i.end))
    pos = 0
    for info in infos:
        if info.begin < pos:
            raise FormatError(f"{where}: tensor {info.name!r} overlaps the previous tensor in the data buffer")
        if info.begin > pos:
            raise FormatError(f"{where}: tensor {info.name!r}: a gap of {info.begin - pos} bytes before its data (corrupted header)")
        pos = info.end
    if pos != data_len:
        raise FormatError(
            f"{where}: the tensors need {pos} data bytes but the file holds {data_len} after the header "
            f"({'truncated' if pos > data_len else 'trailing garbage'})"
        )
    return Header(path, {i.name: i for i in infos}, metadata, 8 + n, file_size)


def refuse_json_constant(name):
    """``json.loads(..., parse_constant=)``: NaN and Infinity are not JSON; files holding them are refused."""
    raise ValueError(f"{name} is not allowed")


def read_tensor(f, header: Header, name: str, raw: bool = False) -> np.ndarray:
    """The array ``name`` read from the open binary file ``f`` (a fresh, writable copy).

    bfloat16 tensors come back as float32 (exact), or with ``raw=True`` as their 16-bit patterns (``uint16``)."""
    info = header.tensors[name]
    f.seek(header.data_start + info.begin)
    data = f.read(info.nbytes)
    if len(data) != info.nbytes:
        raise FormatError(f"{header.path!r}: tensor {name!r}: expected {info.nbytes} bytes, read {len(data)} (file truncated while reading?)")
    arr = np.frombuffer(data, dtype=DTYPES[info.dtype]).copy().reshape(info.shape)
    if info.dtype == "BF16" and not raw:
        arr = bf16_to_float32(arr)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (``uint16``) -> float32 values (exact: bfloat16 is float32's upper half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values -> bfloat16 bit patterns (``uint16``), rounded to nearest even as torch does; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)
    return rounded


# -- writing -------------------------------------------------------------------------------------------
class Entry:
    """A tensor to write: its name, dtype, shape, byte size, and a callable producing its bytes when written."""

    __slots__ = ("name", "dtype", "shape", "nbytes", "produce")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int, produce: Callable[[], np.ndarray]):
        self.name, self.dtype, self.shape, self.nbytes, self.produce = name, dtype, tuple(int(s) for s in shape), int(nbytes), produce

    @classmethod
    def of(cls, name: str, arr: np.ndarray) -> "Entry":
        arr = np.asarray(arr)
        return cls(name, st_dtype(arr), arr.shape, arr.nbytes, lambda: arr)


def _header_bytes(entries: list[Entry], metadata: dict[str, str] | None) -> bytes:
    obj: dict[str, Any] = {}
    if metadata:
        obj["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for e in entries:
        if e.name == "__metadata__" or e.name in obj:
            raise ValueError(f"tensor name {e.name!r} is reserved or repeated")
        obj[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned, as the safetensors library writes
    return raw


def _write_chunk(f, arr: np.ndarray) -> None:
    """Write one tensor's bytes (little-endian, C order).  A separate function so tests can interrupt a save."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    f.write(memoryview(arr.reshape(-1)).cast("B"))


def write_safetensors(path: str | os.PathLike, entries: Iterable[Entry], metadata: dict[str, str] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``entries`` atomically to ``path``; returns the file size.  ``progress(done, total)`` (bytes), if
    given, is called after each tensor.

    The data goes to a temporary file in the same folder which replaces ``path`` only once complete, flushed
    and fsync'ed: an error or a crash midway never leaves a partial file under ``path``.
    """
    path = os.fspath(path)
    entries = list(entries)
    header = _header_bytes(entries, metadata)
    with atomic_output(path) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        total = sum(e.nbytes for e in entries)
        done = 0
        for e in entries:
            arr = np.asarray(e.produce())
            if arr.nbytes != e.nbytes or tuple(arr.shape) != e.shape:
                raise RuntimeError(f"tensor {e.name!r} produced {arr.shape}/{arr.nbytes} bytes, announced {e.shape}/{e.nbytes}")
            _write_chunk(f, arr)
            done += e.nbytes
            if progress is not None:
                progress(done, total)
    return os.path.getsize(path)
