"""The quantized-model file: a safetensors container with qcore's JSON description in its metadata.

See docs/format.md for the specification.  In short: every quantized tensor ``NAME`` is stored as the tensor
``qcore:NAME:codes`` (uint8, its codes packed at ``bits`` bits each) and one tensor ``qcore:NAME:PARAM`` per
parameter; tensors kept as they were are stored under their own name.  ``__metadata__["qcore"]`` holds a JSON
document describing each tensor (scheme, bits, signedness, shape, options, the plugin distribution that
provides the scheme, ...) and the format version.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from .._version import __version__
from ..api import get_quantizer
from ..errors import FormatError, SchemeNotFound
from ..kernels.base import packed_size
from ..metrics import check_plan_info, plan_columns, plan_info, report_row
from ..plugin.manager import get_manager
from ..tensor import QTensor
from .folders import copy_file, copy_side_files, same_folder, source_folder
from .formats import ModelFormat
from .qmodel import QModel
from .safetensors_io import (DTYPES, MAX_NDIM, Entry, Header, read_header, read_tensor, refuse_json_constant, shape_fits,
                             st_dtype, write_safetensors)
from .shards import ShardedModelWriter, ShardWriter, parse_size, stale_weight_files
from .tensors import INDEX_NAME, ShardedFile

FORMAT_NAME = "qcore.quantized-model"
FORMAT_VERSION = 2  # 2: symmetric linear without zero_point, float16 scales (scale_dtype); 1 still reads
META_KEY = "qcore"
_SCALARS = (str, int, float, bool, type(None))


def codes_key(name: str) -> str:
    return f"qcore:{name}:codes"


def param_key(name: str, param: str) -> str:
    return f"qcore:{name}:{param}"


def _plugin_of(scheme: str) -> dict[str, str]:
    try:
        rec = get_manager().owner("scheme", scheme)
    except Exception:  # noqa: BLE001 - a description, never a reason to fail a save
        rec = None
    if rec is None:
        return {"distribution": "unknown", "version": "unknown"}
    return {"distribution": rec.distribution, "version": rec.version}


def _json_value(v):
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            raise ValueError(f"option value {v!r} cannot be saved")
        return float(v)
    raise TypeError(f"option value {v!r} of type {type(v).__name__} cannot be saved (only str, int, float, bool, None)")


def describe_tensor(name: str, t, info: dict, dtype: str) -> tuple[list[Entry], dict[str, Any]]:
    """The safetensors entries that store one model tensor and its entry in qcore's description.

    ``t``: a :class:`QTensor` or an array; ``info``: its ``QModel.info`` record; ``dtype``: its original dtype
    (``QModel.dtype_of``: ``"bfloat16"`` for arrays holding bfloat16 bit patterns)."""
    if isinstance(t, QTensor):
        entries = []
        params = {}
        for pname in sorted(t.params):
            arr = np.ascontiguousarray(t.params[pname])
            st_dtype(arr)  # refuses dtypes the container cannot hold
            key = param_key(name, pname)
            params[pname] = key
            entries.append(Entry.of(key, arr))
        # codes first in the data buffer would be nicer to read, but params are tiny: order is free
        nb = packed_size(t.size, t.bits)
        entries.append(Entry(codes_key(name), "U8", (nb,), nb, lambda t=t: t.pack()))
        snr = info.get("sqnr_db")
        d = {
            "name": name, "kind": "quantized", "scheme": t.scheme, "bits": t.bits, "signed": t.signed,
            "shape": list(t.shape), "dtype": str(t.dtype),
            "options": {str(k): _json_value(v) for k, v in t.options.items()},
            "codes": codes_key(name), "params": params, "plugin": _plugin_of(t.scheme),
            "sqnr_db": None if snr is None or not math.isfinite(float(snr)) else float(snr),
        }
        if info.get("planned_by"):
            d["planned_by"] = str(info["planned_by"])
        plan = plan_info(info)
        if plan:
            d["plan"] = plan
        return entries, d
    arr = np.ascontiguousarray(t)
    e = Entry.of(name, arr)
    if dtype == "bfloat16":  # bit patterns held as uint16: stored as what they are
        if arr.dtype != np.uint16:
            raise TypeError(f"tensor {name!r} is recorded as bfloat16 but holds {arr.dtype}, not its uint16 bit patterns")
        e.dtype = "BF16"
    return [e], {"name": name, "kind": "tensor", "tensor": name}


def file_metadata(described: list[dict[str, Any]], metadata: dict[str, str]) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a file holding the tensors ``described`` (qcore's description)."""
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "qcore_version": __version__,
           "tensors": described, "metadata": dict(metadata)}
    return {"format": "qcore", "qcore_format_version": str(FORMAT_VERSION), META_KEY: json.dumps(doc, allow_nan=False)}


def describe(model: QModel) -> tuple[list[Entry], dict[str, str]]:
    """The safetensors entries and metadata that store ``model``."""
    entries: list[Entry] = []
    described: list[dict[str, Any]] = []
    for name, t in model.tensors.items():
        e, d = describe_tensor(name, t, model.info.get(name, {}), model.dtype_of(name))
        entries += e
        described.append(d)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"tensor names collide with qcore's storage names: {dup}; rename them")
    return entries, file_metadata(described, model.metadata)


def save_qmodel(model: QModel, path: str | os.PathLike, progress=None) -> int:
    """Write ``model`` atomically (temporary file in the same folder, then rename); returns the file size.

    ``progress``: optional ``callable(bytes_written, total_bytes)`` called after each tensor."""
    if not isinstance(model, QModel):
        raise TypeError(f"expected a QModel, got {type(model).__name__}")
    entries, meta = describe(model)
    return write_safetensors(path, entries, meta, progress=progress)


# -- reading --------------------------------------------------------------------------------------------
class _Bad:
    def __init__(self, path):
        self.path = path

    def __call__(self, msg: str) -> FormatError:
        return FormatError(f"{self.path!r}: {msg}")


def parse_description(header: Header) -> list[dict[str, Any]]:
    """Validate qcore's JSON description against the container header; no tensor data is read.

    Returns the per-tensor descriptions.  Raises :class:`FormatError` on anything inconsistent.
    """
    bad = _Bad(header.path)
    raw = header.metadata.get(META_KEY)
    if raw is None:
        raise bad("not a qcore quantized-model file (no 'qcore' entry in the safetensors metadata); "
                  "plain tensors load with qcore.load_tensors")
    try:
        doc = json.loads(raw, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError) as exc:
        raise bad(f"the qcore metadata is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise bad(f"the qcore metadata does not describe a {FORMAT_NAME!r}")
    ver = doc.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise bad(f"format_version must be a positive integer, got {ver!r}")
    if ver > FORMAT_VERSION:
        raise bad(f"format version {ver} is newer than this qcore reads ({FORMAT_VERSION}); upgrade qcore")
    tensors = doc.get("tensors")
    if not isinstance(tensors, list):
        raise bad("'tensors' must be a list")
    meta = doc.get("metadata", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("'metadata' must be an object of strings")
    used: set[str] = set()
    names: set[str] = set()

    def claim(key, what, dtype=None):
        if not isinstance(key, str) or key not in header.tensors:
            raise bad(f"{what} refers to {key!r}, which is not in the file")
        if key in used:
            raise bad(f"{what} refers to {key!r}, already used by another entry")
        if dtype is not None and header.tensors[key].dtype != dtype:
            raise bad(f"{what} {key!r} must be {dtype}, the header says {header.tensors[key].dtype}")
        used.add(key)
        return header.tensors[key]

    out = []
    for i, d in enumerate(tensors):
        if not isinstance(d, dict):
            raise bad(f"tensor entry {i} is not an object")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"tensor entry {i} has no valid name")
        if name in names:
            raise bad(f"tensor {name!r} is described twice")
        names.add(name)
        kind = d.get("kind")
        what = f"tensor {name!r}"
        if kind == "tensor":
            claim(d.get("tensor"), what)
        elif kind == "quantized":
            scheme, bits, signed, shape = d.get("scheme"), d.get("bits"), d.get("signed"), d.get("shape")
            if not isinstance(scheme, str) or not scheme:
                raise bad(f"{what}: scheme must be a non-empty string, got {scheme!r}")
            if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
                raise bad(f"{what}: bits must be an integer in [1, 8], got {bits!r}")
            if not isinstance(signed, bool):
                raise bad(f"{what}: signed must be true or false, got {signed!r}")
            if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
                raise bad(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
            if not shape_fits(shape, 4):  # decodes to float32
                raise bad(f"{what}: shape {shape} is too large for any array")
            if not isinstance(d.get("dtype", "float32"), str):
                raise bad(f"{what}: dtype must be a string")
            opts = d.get("options")
            if not isinstance(opts, dict) or not all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in opts.items()):
                raise bad(f"{what}: options must be an object of scalars, got {opts!r}")
            if opts.get("bits", bits) != bits:
                raise bad(f"{what}: options say bits={opts.get('bits')!r} but the entry says bits={bits}")
            count = 1
            for s in shape:
                count *= s
            codes = claim(d.get("codes"), f"{what}: codes", "U8")
            need = packed_size(count, bits)
            if codes.shape != (need,):
                raise bad(f"{what}: shape {shape} at {bits} bits needs {need} bytes of packed codes, "
                          f"the file holds {codes.shape} (metadata and data disagree)")
            params = d.get("params")
            if not isinstance(params, dict) or not params:
                raise bad(f"{what}: params must be a non-empty object naming parameter tensors")
            for pname, key in params.items():
                info = claim(key, f"{what}: parameter {pname!r}")
                if info.dtype == "BF16":
                    raise bad(f"{what}: parameter {pname!r} has unsupported dtype BF16")
            snr = d.get("sqnr_db")
            if snr is not None and (not isinstance(snr, (int, float)) or isinstance(snr, bool)):
                raise bad(f"{what}: sqnr_db must be a number or null")
            plugin = d.get("plugin", {})
            if not isinstance(plugin, dict) or not all(isinstance(v, str) for v in plugin.values()):
                raise bad(f"{what}: plugin must be an object of strings")
            try:
                check_plan_info(d.get("plan", {}))
            except (TypeError, ValueError) as exc:
                raise bad(f"{what}: plan: {exc}") from None
        else:
            raise bad(f"{what}: unknown kind {kind!r}")
        out.append(d)
    extra = sorted(set(header.tensors) - used)
    if extra:
        raise bad(f"tensors {extra[:5]} are in the file but described by no entry")
    return out


def _check_schemes(path: str, descs: list[dict]) -> None:
    installed = set(get_manager().registries()["scheme"])  # encodings: a planner never decodes
    for d in descs:
        if d["kind"] == "quantized" and d["scheme"] not in installed:
            plugin = d.get("plugin") or {}
            dist = plugin.get("distribution", "unknown")
            ver = plugin.get("version", "")
            hint = (f"install the plugin distribution {dist!r}" + (f" (the file was written with version {ver})" if ver else "")
                    + (f", e.g. `pip install {dist}`" if dist not in ("unknown", "<in-process>") else ""))
            raise SchemeNotFound(
                f"{path!r}: tensor {d['name']!r} needs the scheme {d['scheme']!r}, which is not installed: {hint}; "
                f"installed schemes: {', '.join(sorted(installed)) or 'none'}"
            )


def load_qcore_file(path: str | os.PathLike, *, verify: bool = True) -> QModel:
    """Read a qcore quantized-model ``.safetensors`` file (:func:`qcore.load_quantized` reads every format).

    The container header and qcore's description are validated completely before any tensor data is read;
    a scheme that is not installed raises :class:`qcore.SchemeNotFound` naming the plugin distribution the
    file needs.  Each tensor's options must be accepted by its scheme, parameters must be finite, and with
    ``verify=True`` (default) every tensor is decoded once to check that its parameters fit its codes.
    Anything wrong raises :class:`qcore.FormatError` with the reason.  Nothing is ever unpickled.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file: {p!r}")
    header = read_header(p)
    descs = parse_description(header)
    _check_schemes(p, descs)
    bad = _Bad(p)
    quantizers = {}
    for d in descs:
        if d["kind"] != "quantized":
            continue
        opts = {k: v for k, v in d["options"].items() if k not in ("bits", "kernel", "observer")}
        try:
            q = get_quantizer(d["scheme"], bits=d["bits"], **opts)
        except (TypeError, ValueError, KeyError) as exc:
            raise bad(f"tensor {d['name']!r}: scheme {d['scheme']!r} rejects the stored options {d['options']}: {exc}") from None
        if bool(q.signed) != d["signed"]:
            raise bad(f"tensor {d['name']!r}: the file says signed={d['signed']} but scheme {d['scheme']!r} "
                      f"with these options makes {'signed' if q.signed else 'unsigned'} codes")
        quantizers[d["name"]] = q
    doc = json.loads(header.metadata[META_KEY])
    model = QModel(metadata=doc.get("metadata", {}))
    with open(p, "rb") as f:
        for d in descs:
            name = d["name"]
            if d["kind"] == "tensor":
                bf16 = header.tensors[d["tensor"]].dtype == "BF16"
                model[name] = read_tensor(f, header, d["tensor"], raw=bf16)
                if bf16:
                    model.info[name] = {"dtype": "bfloat16"}
                continue
            params = {}
            for pname, key in d["params"].items():
                arr = read_tensor(f, header, key)
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise bad(f"tensor {name!r}: parameter {pname!r} holds NaN or Inf")
                params[pname] = arr
            q = quantizers[name]
            packed = read_tensor(f, header, d["codes"])
            shape = tuple(d["shape"])
            try:
                qt = QTensor.from_packed(packed, shape, d["scheme"], d["bits"], params, dict(d["options"]),
                                         signed=d["signed"], dtype=d.get("dtype", "float32"), quantizer=q,
                                         copy=False)  # the packed bytes become the storage: never unpacked
            except (TypeError, ValueError) as exc:
                raise bad(f"tensor {name!r}: codes do not unpack: {exc}") from None
            if verify:
                try:
                    values = qt.dequantize()
                except Exception as exc:  # noqa: BLE001 - any failure to decode means the file lies
                    raise bad(f"tensor {name!r}: parameters do not fit the codes ({type(exc).__name__}: {exc})") from None
                if values.shape != shape:
                    raise bad(f"tensor {name!r}: decodes to shape {values.shape}, the file says {shape}")
                if not np.isfinite(values).all():
                    raise bad(f"tensor {name!r}: decodes to NaN or Inf values")
                del values
            model[name] = qt
            info: dict[str, Any] = {"sqnr_db": d.get("sqnr_db"), "plugin": d.get("plugin")}
            if d.get("planned_by"):
                info["planned_by"] = d["planned_by"]
            info.update(d.get("plan", {}))
            model.info[name] = info
    return model


def inspect_file(path: str | os.PathLike) -> dict[str, Any]:
    """The description of a quantized-model file from its header alone (no data read, no plugin needed)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file: {p!r}")
    header = read_header(p)
    descs = parse_description(header)
    doc = json.loads(header.metadata[META_KEY])
    rows = []
    for d in descs:
        if d["kind"] == "quantized":
            count = int(np.prod(d["shape"], dtype=np.int64))
            nbytes = header.tensors[d["codes"]].nbytes + sum(header.tensors[k].nbytes for k in d["params"].values())
            dt = str(d.get("dtype", "float32"))
            isz = 2 if dt == "bfloat16" else (np.dtype(dt).itemsize if dt in ("float16", "float32", "float64") else 4)
            rows.append(report_row(d["name"], scheme=d["scheme"], bits=d["bits"], shape=d["shape"], bytes_fp32=4 * count,
                                   bytes_q=nbytes, sqnr_db=d.get("sqnr_db"),
                                   options={k: v for k, v in d["options"].items() if k != "bits"},
                                   planned_by=d.get("planned_by"), bytes_orig=isz * count, dtype=dt,
                                   plugin=d.get("plugin", {}), **plan_columns(d.get("plan", {}))))
        else:
            info = header.tensors[d["tensor"]]
            dt = "bfloat16" if info.dtype == "BF16" else str(DTYPES[info.dtype])
            fp32 = 4 * info.count if info.dtype in ("BF16", "F16", "F32", "F64") else info.nbytes
            rows.append(report_row(d["name"], scheme=None, bits=None, shape=info.shape, bytes_fp32=fp32,
                                   bytes_q=info.nbytes, sqnr_db=None, options={"dtype": dt}, bytes_orig=info.nbytes,
                                   dtype=dt, plugin={}))
    return {"path": p, "format": "qcore", "file_size": header.file_size, "format_version": doc["format_version"],
            "qcore_version": doc.get("qcore_version"), "metadata": doc.get("metadata", {}), "tensors": rows,
            "title": f"qcore quantized model, format version {doc['format_version']}, written by qcore "
                     f"{doc.get('qcore_version')}"}


# -- the format in the registry -------------------------------------------------------------------------------
#: the weight file of a qcore model written as a folder
FOLDER_FILE = "model.safetensors"


def _is_qcore_file(path: str) -> bool:
    try:
        return META_KEY in read_header(path).metadata
    except (FormatError, OSError):
        return False


def model_file(path: str) -> str:
    """The qcore ``.safetensors`` file of ``path``: the file itself, or in a folder its shard index
    (``model.safetensors.index.json``) or ``FOLDER_FILE``."""
    if not os.path.isdir(path):
        return path
    index = os.path.join(path, INDEX_NAME)
    return index if os.path.isfile(index) else os.path.join(path, FOLDER_FILE)


def model_files(path: str) -> list[str]:
    """The qcore files of ``path`` in model order: the shards its index lists (validated against the index,
    :class:`qcore.FormatError` otherwise), or the one file."""
    f = model_file(path)
    if not f.endswith(INDEX_NAME):
        return [f]
    shards = ShardedFile(f)
    return shards.files


def folder_target(path: str, options: dict) -> bool:
    """Whether :meth:`QcoreFormat.save` writes a folder: ``source=`` or ``max_shard_size=`` given, or ``path`` an
    existing folder or a name ending in a path separator."""
    return (options.get("source") is not None or options.get("max_shard_size") is not None or os.path.isdir(path)
            or path.endswith(("/", os.sep)))


def _folder_output(p: str, source) -> str | None:
    """Checks of a folder output ``p`` (created); the source folder, if any."""
    if p.lower().endswith(".safetensors") and not os.path.isdir(p):
        raise ValueError(f"{p!r}: with source= or max_shard_size= the qcore output is a folder (model.safetensors or "
                         f"its shards, next to the source's other files); pass a folder name")
    src = source_folder(source)
    if src is not None and os.path.isdir(p) and same_folder(src, p):
        raise ValueError(f"output folder {p!r} is the source folder: it would overwrite the input model")
    os.makedirs(p, exist_ok=True)
    return src


def _copy_source_files(src: str | None, p: str) -> int:
    """The source folder's non-weight files and its ``config.json`` (as it is) into ``p``; their bytes."""
    if src is None:
        return 0
    size = 0
    for rel in copy_side_files(src, p):
        size += os.path.getsize(os.path.join(p, rel))
    cfg = os.path.join(src, "config.json")
    if os.path.isfile(cfg):
        copy_file(cfg, os.path.join(p, "config.json"))
        size += os.path.getsize(cfg)
    return size


class QcoreWriter(ShardedModelWriter):
    """qcore's format written tensor by tensor: one file, or a folder of shards each of which is a complete qcore
    file describing its own tensors (plus ``model.safetensors.index.json``); see qcore/model/shards.py."""

    def __init__(self, path, *, metadata=None, source=None, max_shard_size=None, progress=None):
        p = os.fspath(path)
        self.metadata = dict(metadata or {})
        self.src = None
        self.path = p
        target = p
        if folder_target(p, {"source": source, "max_shard_size": max_shard_size}):
            self.src = _folder_output(p, source)
            if max_shard_size is None:  # one file in the folder; a sharded model there goes, index first
                target = os.path.join(p, FOLDER_FILE)
                for f in stale_weight_files(p):
                    os.unlink(f)
        super().__init__(ShardWriter(target, max_shard_size=max_shard_size,
                                     shard_metadata=lambda described: file_metadata(described, self.metadata),
                                     index_metadata={"format": "qcore"}), progress)

    def add(self, name, tensor, info=None, dtype=None):
        if not isinstance(tensor, QTensor):
            tensor = np.asarray(tensor)
        entries, d = describe_tensor(name, tensor, dict(info or {}), dtype or str(getattr(tensor, "dtype", "")))
        self._write(name, entries, d)

    def side_files(self) -> int:
        return _copy_source_files(self.src, self.path)


class QcoreFormat(ModelFormat):
    """qcore's own file (docs/format.md): any scheme, any bits; a ``.safetensors`` file, or a folder holding it as
    ``model.safetensors`` (or as shards with ``max_shard_size=``) next to the source model's other files
    (``source=``)."""

    name = "qcore"
    description = "qcore's quantized-model .safetensors file (any scheme; docs/format.md)"
    output = "file"
    suffixes = (".safetensors",)
    save_options = ("source", "progress", "max_shard_size")

    def sniff(self, path: str) -> bool:
        f = model_file(path)
        if f.endswith(INDEX_NAME):
            try:
                f = model_files(path)[0]
            except (FormatError, OSError, IndexError):
                return False
        return os.path.isfile(f) and _is_qcore_file(f)

    def check_save_options(self, options: dict) -> None:
        super().check_save_options(options)
        if options.get("max_shard_size") is not None:
            parse_size(options["max_shard_size"])

    def save(self, model: QModel, path, *, source=None, progress=None, max_shard_size=None) -> int:
        """Write ``model`` to ``path`` (a ``.safetensors`` file), or with ``source=`` (a Hugging Face folder) or
        ``max_shard_size=`` to the folder ``path``: ``model.safetensors`` — or shards of at most ``max_shard_size``
        bytes and their index — plus every file of ``source`` that is not a weight (qcore/model/folders.py),
        ``config.json`` included as it is.  Returns the bytes written."""
        p = os.fspath(path)
        if max_shard_size is not None:
            total = model.nbytes
            with QcoreWriter(p, metadata=model.metadata, source=source, max_shard_size=max_shard_size,
                             progress=None if progress is None else (lambda done, _: progress(done, total))) as w:
                for name, t in model.items():
                    w.add(name, t, model.info.get(name, {}), model.dtype_of(name))
                return w.close()
        if not folder_target(p, {"source": source}):
            return save_qmodel(model, p, progress=progress)
        src = _folder_output(p, source)
        for f in stale_weight_files(p):  # an earlier sharded model here: its index must not outlive it
            if not f.endswith(FOLDER_FILE):
                os.unlink(f)
        size = save_qmodel(model, os.path.join(p, FOLDER_FILE), progress=progress)
        return size + _copy_source_files(src, p)

    def open_writer(self, path, *, metadata=None, **options) -> QcoreWriter:
        self.check_save_options(options)
        return QcoreWriter(path, metadata=metadata, **options)

    def load(self, path, *, verify: bool = True) -> QModel:
        files = model_files(os.fspath(path))
        if len(files) == 1:
            return load_qcore_file(files[0], verify=verify)
        model = None
        for f in files:
            part = load_qcore_file(f, verify=verify)
            if model is None:
                model = QModel(metadata=part.metadata)
            for name, t in part.items():
                if name in model:
                    raise FormatError(f"{path!r}: tensor {name!r} is in two shards")
                model[name] = t
                if name in part.info:
                    model.info[name] = part.info[name]
        return model

    def inspect(self, path) -> dict[str, Any]:
        p = os.fspath(path)
        files = model_files(p)
        descs = [inspect_file(f) for f in files]
        desc = descs[0]
        if len(files) > 1:
            desc = dict(desc, tensors=[r for d in descs for r in d["tensors"]],
                        file_size=sum(d["file_size"] for d in descs), shards=len(files),
                        title=f"{desc['title']}, in {len(files)} shards")
        desc["path"] = p
        return desc


FORMAT = QcoreFormat()
