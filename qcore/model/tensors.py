"""``qcore.load_tensors``: named arrays from ``.safetensors`` (lazily, tensor by tensor) and ``.npz`` files."""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from ..errors import FormatError


class TensorFile(Mapping):
    """A read-only mapping ``name -> np.ndarray`` over a file, reading each tensor only when asked.

    Iteration follows the file's order.  ``shape_of(name)``/``dtype_of(name)`` answer from the header
    without reading data.  Every access reads the tensor again (nothing is cached), so walking the model
    once needs memory for one tensor at a time.  ``dict(tf)`` loads everything.
    """

    def __init__(self, path: str):
        self.path = path

    # subclasses: _names (list), _shape(name), _dtype(name), _read(name)
    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._index:
            raise KeyError(name)
        return self._read(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self._shape(name))

    def dtype_of(self, name: str) -> np.dtype:
        return np.dtype(self._dtype(name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}: {len(self)} tensors>"


class SafetensorsFile(TensorFile):
    """Tensors of a ``.safetensors`` file through ``safetensors.safe_open`` (memory-mapped, one tensor per access).

    bfloat16 tensors (which numpy cannot hold) are converted to float32.
    """

    def __init__(self, path: str):
        super().__init__(path)
        from .safetensors_io import DTYPES, read_header

        self._header = read_header(path)  # our own validation first: clear FormatError on a bad file
        self._names = sorted(self._header.tensors, key=lambda n: self._header.tensors[n].begin)
        self._index = set(self._names)
        self._dtypes = {n: (np.dtype(np.float32) if i.dtype == "BF16" else DTYPES[i.dtype]) for n, i in self._header.tensors.items()}

    def _shape(self, name):
        return self._header.tensors[name].shape

    def _dtype(self, name):
        return self._dtypes[name]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._header.metadata)

    def _read(self, name: str) -> np.ndarray:
        info = self._header.tensors[name]
        if info.dtype != "BF16":
            from safetensors import safe_open  # a dependency (setup.py)

            try:
                with safe_open(self.path, framework="numpy") as f:
                    arr = f.get_tensor(name)
                return np.array(arr, copy=True) if not arr.flags.writeable else arr
            except Exception as exc:  # noqa: BLE001 - the library's own error type
                raise FormatError(f"{self.path!r}: cannot read tensor {name!r}: {exc}") from None
        from .safetensors_io import read_tensor

        with open(self.path, "rb") as fh:
            return read_tensor(fh, self._header, name)


class NpzFile(TensorFile):
    """Arrays of a ``.npz`` archive (``np.load(..., allow_pickle=False)``: object arrays are refused, never unpickled)."""

    def __init__(self, path: str):
        super().__init__(path)
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise FormatError(f"{path!r} is not a readable .npz archive: {exc}") from None
        if not hasattr(self._npz, "files"):
            raise FormatError(f"{path!r} holds a single array, not an .npz archive of named arrays")
        self._names = list(self._npz.files)
        self._index = set(self._names)
        self._meta: dict[str, tuple] = {}

    def _info(self, name):
        if name not in self._meta:
            arr = self[name]
            self._meta[name] = (arr.shape, arr.dtype)
        return self._meta[name]

    def _shape(self, name):
        return self._info(name)[0]

    def _dtype(self, name):
        return self._info(name)[1]

    def _read(self, name: str) -> np.ndarray:
        try:
            arr = self._npz[name]
        except ValueError as exc:  # object arrays need pickle: refused
            raise FormatError(f"{self.path!r}: array {name!r} cannot be loaded without unpickling ({exc})") from None
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise FormatError(f"{self.path!r}: array {name!r} is corrupted: {exc}") from None
        self._meta[name] = (arr.shape, arr.dtype)
        return arr

    def close(self) -> None:
        self._npz.close()


def load_tensors(path: str | os.PathLike) -> TensorFile:
    """Named arrays of a ``.safetensors`` or ``.npz`` file, as a lazy read-only mapping ``name -> np.ndarray``.

    Arrays keep their stored dtype: float tensors are what ``quantize_model`` quantizes, and non-float tensors
    (int64 position ids, boolean masks, ...) pass through untouched.  A ``.safetensors`` file is read tensor by
    tensor on access (memory-mapped); an ``.npz`` archive is opened with ``allow_pickle=False``.  A malformed
    file raises :class:`qcore.FormatError`; a missing one ``FileNotFoundError``.
    """
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file: {p!r}")
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npz":
        return NpzFile(p)
    if ext == ".safetensors":
        return SafetensorsFile(p)
    raise ValueError(f"load_tensors reads .safetensors and .npz files, got {p!r}")


def shape_and_dtype(tensors: Mapping, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``tensors[name]``, without reading data when the mapping can tell."""
    if isinstance(tensors, TensorFile):
        return tensors.shape_of(name), tensors.dtype_of(name)
    arr = tensors[name]
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    return tuple(arr.shape), np.dtype(arr.dtype)
