"""``qcore.load_tensors``: named arrays from ``.safetensors`` (lazily, tensor by tensor), Hugging Face model
folders (one ``model.safetensors`` or shards listed by ``model.safetensors.index.json``) and ``.npz`` files."""
from __future__ import annotations

import json
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
        """The dtype ``self[name]`` has (bfloat16 tensors read as float32: numpy has no bfloat16)."""
        return np.dtype(self._dtype(name))

    def source_dtype(self, name: str) -> str:
        """The dtype as stored in the file, by name: ``"bfloat16"`` for BF16 tensors, else ``str(dtype_of(name))``."""
        return str(self.dtype_of(name))

    def raw(self, name: str) -> np.ndarray:
        """The stored values without conversion: for bfloat16 tensors their 16-bit patterns as ``uint16``."""
        return self[name]

    def nbytes_of(self, name: str) -> int:
        """Bytes of ``name`` as stored (a bfloat16 tensor counts 2 bytes per element)."""
        n = 1
        for s in self.shape_of(name):
            n *= s
        return n * (2 if self.source_dtype(name) == "bfloat16" else self.dtype_of(name).itemsize)

    def close(self) -> None:
        pass

    def __reduce__(self):
        # pickles as its path (an executor's task reads its tensor where it runs; no array travels)
        return (load_tensors, (self.path,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}: {len(self)} tensors>"


class SafetensorsFile(TensorFile):
    """Tensors of a ``.safetensors`` file through ``safetensors.safe_open`` (memory-mapped, one tensor per access).

    bfloat16 tensors (which numpy cannot hold) read as float32 (exact); :meth:`raw` gives their 16-bit patterns
    as ``uint16`` and :meth:`source_dtype` says ``"bfloat16"``, so a kept tensor can be written back unchanged.
    """

    def __init__(self, path: str, header=None):
        super().__init__(path)
        from .safetensors_io import DTYPES, read_header

        self._header = header if header is not None else read_header(path)  # our own validation first: clear FormatError on a bad file
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

    def source_dtype(self, name: str) -> str:
        if name not in self._index:
            raise KeyError(name)
        return "bfloat16" if self._header.tensors[name].dtype == "BF16" else str(self._dtypes[name])

    def nbytes_of(self, name: str) -> int:
        return self._header.tensors[name].nbytes

    def raw(self, name: str) -> np.ndarray:
        if name not in self._index:
            raise KeyError(name)
        if self._header.tensors[name].dtype != "BF16":
            return self._read(name)
        from .safetensors_io import read_tensor

        with open(self.path, "rb") as fh:
            return read_tensor(fh, self._header, name, raw=True)

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


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class ShardedFile(TensorFile):
    """Tensors of a sharded Hugging Face checkpoint: ``model.safetensors.index.json``'s ``weight_map`` says which
    shard holds each tensor.  Every shard's header is validated when opened (no data read); each access reads
    one tensor from its shard, so walking the model needs memory for the largest tensor only."""

    def __init__(self, index_path: str):
        super().__init__(index_path)
        from .safetensors_io import read_header

        try:
            with open(index_path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{index_path!r} is not a valid JSON shard index: {exc}") from None
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise FormatError(f"{index_path!r}: 'weight_map' must be a non-empty object of tensor name -> shard file name")
        folder = os.path.dirname(os.path.abspath(index_path))
        self.folder = folder
        self.shards: dict[str, SafetensorsFile] = {}
        for shard in dict.fromkeys(wm.values()):
            if os.path.basename(shard) != shard or shard in ("", ".", ".."):
                raise FormatError(f"{index_path!r}: shard {shard!r} must be a file name in the index's folder")
            sp = os.path.join(folder, shard)
            if not os.path.isfile(sp):
                raise FormatError(f"{index_path!r} lists the shard {shard!r}, which is missing from {folder!r}")
            self.shards[shard] = SafetensorsFile(sp, read_header(sp))
        self._where: dict[str, SafetensorsFile] = {}
        for name, shard in wm.items():
            f = self.shards[shard]
            if name not in f:
                raise FormatError(f"{index_path!r} puts tensor {name!r} in {shard!r}, which does not hold it")
            self._where[name] = f
        for shard, f in self.shards.items():
            extra = [n for n in f if n not in self._where or self._where[n] is not f]
            if extra:
                raise FormatError(f"{shard!r} holds tensors the index does not list for it: {extra[:5]}")
        # file order: shards by file name (model-00001-of-... first; an index's keys are usually sorted by tensor
        # name, which says nothing of the model's order), tensors in data order within each
        self.shards = dict(sorted(self.shards.items()))
        self._names = [n for f in self.shards.values() for n in f if self._where[n] is f]
        self._index = set(self._names)
        self.metadata = dict(doc.get("metadata") or {}) if isinstance(doc.get("metadata"), dict) else {}

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.shards.values()]

    def _shape(self, name):
        return self._where[name].shape_of(name)

    def _dtype(self, name):
        return self._where[name].dtype_of(name)

    def source_dtype(self, name: str) -> str:
        if name not in self._index:
            raise KeyError(name)
        return self._where[name].source_dtype(name)

    def nbytes_of(self, name: str) -> int:
        return self._where[name].nbytes_of(name)

    def raw(self, name: str) -> np.ndarray:
        if name not in self._index:
            raise KeyError(name)
        return self._where[name].raw(name)

    def _read(self, name: str) -> np.ndarray:
        return self._where[name][name]


def resolve_model_path(path: str) -> str:
    """The file to read for ``path``: itself for a file; in a Hugging Face model folder its
    ``model.safetensors.index.json`` (shards) or ``model.safetensors`` (or its only ``.safetensors`` file)."""
    if not os.path.isdir(path):
        return path
    idx = os.path.join(path, INDEX_NAME)
    if os.path.isfile(idx):
        return idx
    single = os.path.join(path, SINGLE_NAME)
    if os.path.isfile(single):
        return single
    found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and not f.startswith("."))
    if len(found) == 1:
        return os.path.join(path, found[0])
    indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
    if len(indexes) == 1:
        return os.path.join(path, indexes[0])
    bins = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
    if found:
        raise ValueError(f"{path!r} holds several .safetensors files ({', '.join(found[:4])}) and no {INDEX_NAME}; "
                         f"name the file to read")
    hint = f" (it has {', '.join(sorted(bins)[:3])}: pickled PyTorch files are never loaded; convert them to safetensors)" if bins else ""
    raise ValueError(f"{path!r} is a folder without {SINGLE_NAME} or {INDEX_NAME}{hint}")


def load_tensors(path: str | os.PathLike) -> TensorFile:
    """Named arrays of a model, as a lazy read-only mapping ``name -> np.ndarray``.

    ``path`` is a ``.safetensors`` or ``.npz`` file, a Hugging Face model folder (its ``model.safetensors``, or
    the shards its ``model.safetensors.index.json`` lists) or such an index file itself.  Arrays keep their
    stored dtype, except bfloat16, which numpy cannot hold: it reads as float32 (exactly), and
    ``source_dtype(name)``/``raw(name)`` give the stored dtype and bits.  Float tensors are what
    ``quantize_model`` quantizes; non-float tensors (int64 position ids, boolean masks, ...) pass through
    untouched.  A ``.safetensors`` file is read tensor by tensor on access (memory-mapped), shards likewise;
    an ``.npz`` archive is opened with ``allow_pickle=False``.  A malformed file raises
    :class:`qcore.FormatError`; a missing one ``FileNotFoundError``.
    """
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file or folder: {p!r}")
    p = resolve_model_path(p)
    low = p.lower()
    if low.endswith(".index.json"):
        return ShardedFile(p)
    ext = os.path.splitext(low)[1]
    if ext == ".npz":
        return NpzFile(p)
    if ext == ".safetensors":
        return SafetensorsFile(p)
    raise ValueError(f"load_tensors reads .safetensors and .npz files, Hugging Face model folders and "
                     f"{INDEX_NAME} shard indexes, got {p!r}")


def shape_and_dtype(tensors: Mapping, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``tensors[name]``, without reading data when the mapping can tell."""
    if isinstance(tensors, TensorFile):
        return tensors.shape_of(name), tensors.dtype_of(name)
    arr = tensors[name]
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    return tuple(arr.shape), np.dtype(arr.dtype)
