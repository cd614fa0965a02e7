"""Writing a model tensor by tensor: one ``.safetensors`` file, or Hugging Face shards plus their index.

A format's writer (qcore/model/formats.py ``ModelFormat.open_writer``) turns each tensor into safetensors
entries and hands them here, in model order, as soon as they exist; nothing but the current tensor is kept in
memory:

* each tensor's bytes are appended to a spool file of the shard being filled (hidden, in the output folder);
* a shard is closed when the next tensor would take it past ``max_shard_size`` bytes of tensor data: its header
  is written, the spooled bytes copied after it, and the file kept under a hidden temporary name;
* :meth:`ShardWriter.close` renames the shards to ``model-0000i-of-0000n.safetensors`` (``n`` is known only then)
  and writes ``model.safetensors.index.json`` — ``{"metadata": {"total_size": ...}, "weight_map": {tensor: shard}}``,
  what transformers and :func:`qcore.load_tensors` read — last and atomically.  A model that fits one shard is
  written as ``model.safetensors`` without an index, as ``save_pretrained`` does.

So an output is complete exactly when its index (or its single file) is in place: a run that fails or is
killed midway leaves only hidden temporary files (removed on failure), never a folder that looks like a model.
Shards are cut by the tensors' sizes in model order only, so the same model always gives the same files.

A tensor (all the entries of one model tensor: a quantized tensor's codes and parameters stay together) larger
than ``max_shard_size`` is an error: :func:`check_fits` says so before any work where sizes are known.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from typing import Any, Callable

from .atomic import atomic_output, current_umask
from .formats import ModelWriter
from .safetensors_io import Entry, _header_bytes, _write_chunk
from .tensors import INDEX_NAME, SINGLE_NAME

#: file name of shard ``i`` (1-based) of ``n``
SHARD_PATTERN = "model-{i:05d}-of-{n:05d}.safetensors"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
#: bytes copied at a time from a spool file into its shard (when the kernel cannot copy file to file)
_COPY_CHUNK = 1 << 20


def parse_size(value, what: str = "max_shard_size") -> int:
    """Bytes from an int or a string such as ``"5GB"`` (10^9), ``"500MB"``, ``"2GiB"`` (2^30), ``"1.5GB"``, as
    transformers' ``max_shard_size`` reads them.  ``ValueError`` for anything else or a size below 1 byte."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of bytes or a size such as '5GB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B|B)?\s*", value, re.IGNORECASE)
        if not m:
            raise ValueError(f"{what}={value!r}: expected a size such as '5GB', '500MB' or '2GiB'")
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    else:
        raise TypeError(f"{what} must be a number of bytes or a size such as '5GB', got {type(value).__name__}")
    if size < 1:
        raise ValueError(f"{what} must be at least 1 byte, got {value!r}")
    return size


def check_fits(sizes: dict[str, int], max_shard_size: int) -> None:
    """``ValueError`` naming the largest tensor when it alone exceeds ``max_shard_size`` bytes (``sizes``: the
    bytes each tensor will take, or a lower bound of them, known before quantizing)."""
    if not sizes:
        return
    name = max(sizes, key=sizes.get)
    if sizes[name] > max_shard_size:
        raise ValueError(f"max_shard_size={_fmt(max_shard_size)} is too small: tensor {name!r} alone takes "
                         f"{_fmt(sizes[name])}; a tensor is never split across shards, so use at least "
                         f"{_fmt(sizes[name])}")


def _fmt(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def stale_weight_files(folder: str) -> list[str]:
    """The weight files of a model already in ``folder`` that a new sharded or single-file model replaces:
    its index, ``model.safetensors`` and ``model-*-of-*.safetensors``."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f in (INDEX_NAME, SINGLE_NAME) or _SHARD_RE.match(f)]


class _Shard:
    """A shard being filled: its entries (header to be) and their bytes in a spool file."""

    def __init__(self, folder: str, number: int):
        self.units: list[Any] = []
        self.entries: list[Entry] = []
        self.nbytes = 0
        fd, self.spool = tempfile.mkstemp(dir=folder, prefix=f".model-{number:05d}.", suffix=".spool")
        self.file = os.fdopen(fd, "wb")
        self.path: str | None = None  # the finished shard under its temporary name

    def add(self, entries: list[Entry], unit) -> None:
        for e in entries:
            arr = e.produce()
            if arr.nbytes != e.nbytes or tuple(arr.shape) != e.shape:
                raise RuntimeError(f"tensor {e.name!r} produced {arr.shape}/{arr.nbytes} bytes, announced "
                                   f"{e.shape}/{e.nbytes}")
            _write_chunk(self.file, arr)
            # the header needs only names, dtypes, shapes and sizes: keep no reference to the data
            self.entries.append(Entry(e.name, e.dtype, e.shape, e.nbytes, _no_data))
            self.nbytes += e.nbytes
        self.units.append(unit)

    def finish(self, path_tmp: str, metadata: dict[str, str]) -> None:
        """Header + the spooled bytes into ``path_tmp`` (flushed and fsync'ed); the spool is removed."""
        self.file.close()
        header = _header_bytes(self.entries, metadata)
        with open(path_tmp, "wb") as out, open(self.spool, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            out.flush()
            _append(data, out, self.nbytes)
            os.fsync(out.fileno())
        os.unlink(self.spool)
        self.path = path_tmp

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        for p in (self.spool, self.path):
            if p and os.path.exists(p):
                os.unlink(p)


def _append(src, dst, count: int) -> None:
    """Append ``count`` bytes of the open file ``src`` (at its start) to ``dst`` (flushed): in the kernel where
    it can (no copy through this process), else in chunks."""
    start = dst.tell()
    copy = getattr(os, "copy_file_range", None)
    if copy is not None:
        try:
            done = 0
            while done < count:
                n = copy(src.fileno(), dst.fileno(), count - done)
                if n == 0:
                    break
                done += n
            if done == count:
                return
        except OSError:  # a file system without it: copy by hand
            pass
        src.seek(0)
        dst.seek(start)
        dst.truncate(start)
    shutil.copyfileobj(src, dst, _COPY_CHUNK)
    dst.flush()


def _no_data():  # pragma: no cover - entries of a finished shard are never produced again
    raise RuntimeError("the data of this entry was written already")


class ShardWriter:
    """Writes a model's tensors in order into one file or into shards (module docstring).

    :param target: with ``max_shard_size`` None, the file to write (``.safetensors``); else the output folder
    :param max_shard_size: bytes of tensor data per shard at most (see :func:`parse_size`), or None: one file
    :param shard_metadata: ``callable(units) -> {str: str}``: the ``__metadata__`` of a shard holding the tensors
        whose ``unit`` objects (given to :meth:`add`) are ``units`` — qcore's format describes its own tensors there
    :param index_metadata: extra entries of the index's ``metadata`` (``total_size`` is always there)
    """

    def __init__(self, target: str, *, max_shard_size: int | None = None,
                 shard_metadata: Callable[[list], dict[str, str]] = lambda units: {},
                 index_metadata: dict[str, Any] | None = None):
        self.target = os.fspath(target)
        self.max = None if max_shard_size is None else parse_size(max_shard_size)
        self.folder = self.target if self.max is not None else os.path.dirname(os.path.abspath(self.target))
        self.shard_metadata = shard_metadata
        self.index_metadata = dict(index_metadata or {})
        self.done: list[_Shard] = []
        self.current: _Shard | None = None
        self.names: set[str] = set()
        self.files: list[str] = []
        self.closed = False
        if self.max is not None:
            os.makedirs(self.target, exist_ok=True)
            # the previous model's weights go first: until the new index is written, nothing here looks complete
            for f in stale_weight_files(self.target):
                os.unlink(f)

    def add(self, name: str, entries: list[Entry], unit=None) -> None:
        """Write the entries of one model tensor (``name`` for messages) now; ``unit`` is kept for the shard's
        metadata."""
        if self.closed:
            raise RuntimeError("this writer is closed")
        for e in entries:
            if e.name in self.names or e.name == "__metadata__":
                raise ValueError(f"tensor {name!r}: the stored name {e.name!r} is reserved or used twice")
            self.names.add(e.name)
        size = sum(e.nbytes for e in entries)
        if self.max is not None and size > self.max:
            raise ValueError(f"tensor {name!r} takes {_fmt(size)}, more than max_shard_size={_fmt(self.max)}; a tensor is "
                             f"never split across shards")
        if self.current is not None and self.max is not None and self.current.nbytes + size > self.max \
                and self.current.units:
            self._finish_current()
        if self.current is None:
            self.current = _Shard(self.folder, len(self.done) + 1)
        self.current.add(entries, unit)

    def _finish_current(self) -> None:
        shard = self.current
        number = len(self.done) + 1
        if self.max is None:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix="." + os.path.basename(self.target) + ".", suffix=".tmp")
            os.close(fd)
        else:
            tmp = os.path.join(self.folder, f".model-{number:05d}.safetensors.tmp")
        shard.finish(tmp, self.shard_metadata(shard.units))
        self.done.append(shard)
        self.current = None

    def close(self, before_complete: Callable[[], None] | None = None) -> int:
        """Finish the last shard, put every file in place, then the index (last, atomically); returns the bytes of
        the files written.  ``before_complete()`` runs just before the output becomes complete (a folder format
        writes its config and side files there)."""
        if self.current is not None or not self.done:
            if self.current is None:
                self.current = _Shard(self.folder, 1)
            self._finish_current()
        n = len(self.done)
        mode = 0o666 & ~current_umask()
        for s in self.done:
            os.chmod(s.path, mode)
        if self.max is None or n == 1:
            final = self.target if self.max is None else os.path.join(self.target, SINGLE_NAME)
            if before_complete is not None:
                before_complete()
            os.replace(self.done[0].path, final)
            self.files = [final]
        else:
            weight_map, total = {}, 0
            for i, s in enumerate(self.done, 1):
                final = os.path.join(self.target, SHARD_PATTERN.format(i=i, n=n))
                os.replace(s.path, final)
                s.path = final
                self.files.append(final)
                for e in s.entries:
                    weight_map[e.name] = os.path.basename(final)
                    total += e.nbytes
            if before_complete is not None:
                before_complete()
            index = {"metadata": {"total_size": total, **self.index_metadata}, "weight_map": weight_map}
            write_json_atomic(os.path.join(self.target, INDEX_NAME), index)
            self.files.append(os.path.join(self.target, INDEX_NAME))
        self.closed = True
        return sum(os.path.getsize(f) for f in self.files)

    def abort(self) -> None:
        """Remove every file this writer made (the output stays incomplete: no index, no single file)."""
        if self.closed:
            return
        for s in self.done + ([self.current] if self.current is not None else []):
            s.discard()
        self.current = None
        self.closed = True


class ShardedModelWriter(ModelWriter):
    """A format's :class:`~qcore.model.formats.ModelWriter` on a :class:`ShardWriter`: subclasses turn each tensor
    into entries and call :meth:`_write`; :meth:`side_files` writes what goes along (config, tokenizer) just
    before the output becomes complete."""

    def __init__(self, shards: ShardWriter, progress=None):
        self.shards = shards
        self.progress = progress
        self.written = 0

    def _write(self, name: str, entries: list[Entry], unit=None) -> None:
        self.shards.add(name, entries, unit)
        self.written += sum(e.nbytes for e in entries)
        if self.progress is not None:
            self.progress(self.written, None)

    def side_files(self) -> int:
        """Write the files that complete a folder output; returns their bytes (none here)."""
        return 0

    def close(self) -> int:
        extra = [0]

        def before_complete():
            extra[0] = self.side_files()

        return self.shards.close(before_complete=before_complete) + extra[0]

    def abort(self) -> None:
        self.shards.abort()


def write_json_atomic(path: str, obj: Any) -> None:
    """``obj`` as JSON into ``path`` through a temporary file renamed into place."""
    with atomic_output(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


__all__ = ["ShardWriter", "ShardedModelWriter", "parse_size", "check_fits", "stale_weight_files", "write_json_atomic", "SHARD_PATTERN"]
