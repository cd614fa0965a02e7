"""compressed-tensors ``pack-quantized`` checkpoints: a Hugging Face model folder transformers and vLLM load.

Layout (as the ``compressed-tensors`` package writes and reads it, checked against version 0.20.1 in the tests):

* for each quantized Linear ``M`` (tensor ``M.weight`` of shape ``(out, in)``):
  ``M.weight_packed`` int32 ``(out, ceil(in * bits / 32))`` — signed codes ``c`` in ``[-2^(b-1), 2^(b-1) - 1]``
  stored as ``c + 2^(b-1)``, ``bits`` each, densely along each row (element ``i`` at bit ``i * bits``,
  crossing word boundaries), ``M.weight_scale`` ``(out, 1)`` per channel or ``(out, in / group_size)`` per
  group, ``M.weight_zero_point`` (affine only) — the signed zero points packed the same way along the *output*
  axis: int32 ``(ceil(out * bits / 32), groups)`` — and ``M.weight_shape`` int64 ``[out, in]``;
  the weight is ``(c - zero_point) * scale``;
* every other tensor as it is (bfloat16 stays bfloat16);
* ``config.json`` with ``quantization_config``: ``quant_method "compressed-tensors"``, ``format "pack-quantized"``,
  ``quantization_status "compressed"``, ``config_groups`` (one per distinct bits/symmetry/granularity), ``ignore``
  (Linear-shaped weights kept in float) and ``version``.

qcore's affine codes are unsigned (``u`` in ``[0, 2^b - 1]`` with zero point ``z``); they are written as
``u - 2^(b-1)`` with zero point ``z - 2^(b-1)``: the same ``(code - zero_point) * scale``.  Scales are written
in the weight's original dtype (bfloat16 for a bfloat16 model, as llm-compressor does; float32 otherwise).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..errors import FormatError
from ..metrics import report_row
from ..tensor import QTensor
from .folders import copy_side_files, same_folder, source_folder
from ..quantization.forms import Affine
from .formats import ModelFormat, check_plan_tensors
from .qmodel import QModel
from .safetensors_io import Entry, float32_to_bf16, write_safetensors
from .shards import ShardedModelWriter, ShardWriter, parse_size, stale_weight_files, write_json_atomic

PACK_FORMAT = "pack-quantized"
#: the compressed-tensors version whose layout this writes
CT_VERSION = "0.20.1"
WEIGHT_FILE = "model.safetensors"


# -- packing (the package's pack_to_int32 / unpack_from_int32, in numpy) ---------------------------------
def pack_int32(values: np.ndarray, bits: int, chunk: int = 512) -> np.ndarray:
    """Signed codes ``(rows, cols)`` -> int32 ``(rows, ceil(cols*bits/32))``, packed along each row: value ``i``
    (offset by ``2^(bits-1)``) at bits ``[i*bits, (i+1)*bits)`` of the row's little-endian bit stream."""
    values = np.asarray(values)
    rows, cols = values.shape
    nwords = -(-cols * bits // 32)
    out = np.empty((rows, nwords), dtype="<u4")
    shifts = np.arange(bits, dtype=np.uint8)
    for r in range(0, rows, chunk):  # row chunks bound the bit-expanded temporary to chunk*cols*bits bytes
        v = (values[r : r + chunk].astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
        bitmat = ((v[..., None] >> shifts) & 1).astype(np.uint8).reshape(v.shape[0], cols * bits)
        pad = nwords * 32 - cols * bits
        if pad:
            bitmat = np.concatenate([bitmat, np.zeros((v.shape[0], pad), np.uint8)], axis=1)
        out[r : r + chunk] = np.packbits(bitmat, axis=1, bitorder="little").view("<u4")
    return out.view("<i4").astype(np.int32, copy=False)


def unpack_int32(packed: np.ndarray, bits: int, cols: int, chunk: int = 512) -> np.ndarray:
    """int32 ``(rows, words)`` -> signed codes ``(rows, cols)`` (int8); the inverse of :func:`pack_int32`."""
    p = np.ascontiguousarray(np.asarray(packed).astype("<i4", copy=False))
    rows, nwords = p.shape
    if nwords != -(-cols * bits // 32):
        raise FormatError(f"packed codes of {nwords} int32 words per row do not hold {cols} values of {bits} bits")
    out = np.empty((rows, cols), dtype=np.int8)
    weights = (1 << np.arange(bits, dtype=np.int16)).astype(np.int16)
    for r in range(0, rows, chunk):
        b = np.unpackbits(p[r : r + chunk].view(np.uint8), axis=1, bitorder="little")[:, : cols * bits]
        vals = b.reshape(b.shape[0], cols, bits).astype(np.int16) @ weights
        out[r : r + chunk] = (vals - (1 << (bits - 1))).astype(np.int8)
    return out


# -- what the format holds --------------------------------------------------------------------------------
def _module_of(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _form(t: QTensor):
    """``(form, reason)``: the tensor's Affine decode form if pack-quantized holds it, else ``(None, why not)``.
    Decided from what the codes decode as and their layout, never from the scheme's name."""
    form = t.decodes_as()
    if not isinstance(form, Affine):
        how = "a lookup table" if form is not None else "its own decode"
        return None, f"scheme {t.scheme!r} at {t.bits} bits decodes through {how} (pack-quantized holds (code - zero_point) * scale)"
    if form.offset is not None:
        return None, "a minimum instead of a zero point (zero='minimum'; pack-quantized holds (code - zero_point) * scale)"
    if t.signed and np.any(form.zero_points() != 0):
        return None, "signed codes with a zero point"
    return form, None


def _why_not(name: str, t: QTensor) -> str | None:
    """Why ``t`` cannot be stored as pack-quantized, or None."""
    form, why = _form(t)
    if why:
        return why
    if not 2 <= t.bits <= 8:
        return f"{t.bits}-bit codes (pack-quantized here: 2 to 8 bits)"
    if len(t.shape) != 2:
        return f"shape {t.shape} (a Linear weight is 2-d)"
    if not name.endswith(".weight"):
        return "a name not ending in '.weight' (compressed-tensors stores Linear weights as MODULE.weight_packed)"
    layout = t.layout
    if layout.granularity not in ("channel", "group"):
        return f"granularity {layout.granularity!r} (per channel or per group only)"
    if layout.granularity == "channel" and layout.axis != 0:
        return f"axis {layout.axis} (the channels of a Linear weight are axis 0)"
    return None


def check_model(model: QModel) -> None:
    """Refuse, naming them, the tensors pack-quantized cannot hold (k-means, log, 1-bit, per-tensor, ...)."""
    bad = [f"{n}: {why}" for n, t in model.items() if isinstance(t, QTensor) and (why := _why_not(n, t))]
    if bad:
        raise ValueError(f"compressed-tensors cannot hold {len(bad)} tensor(s): {'; '.join(bad[:6])}"
                         f"{' ...' if len(bad) > 6 else ''}; save with format='qcore' or quantize them with linear "
                         f"2-8 bits per channel or group")


def check_plan(plan) -> None:
    """The same refusal from a quantization plan ``[(name, scheme, options)]``, before any work: each planned
    scheme (a planner's candidates each) quantizes a small probe whose decode form and layout are checked."""
    def why(name, qt):
        # the probe is 2-d; the layout check holds for any Linear weight, the name check for this one
        return _why_not(name if name.endswith(".weight") else name + ".weight", qt) or (
            None if name.endswith(".weight") else "not a Linear weight (MODULE.weight)")

    check_plan_tensors(plan, why, "--format compressed-tensors (pack-quantized)",
                       "it holds linear 2-8 bit weights per channel or group")


def _scheme_key(t: QTensor) -> tuple:
    layout = t.layout
    g = layout.granularity
    return (int(t.bits), bool(t.signed), g, int(layout.group_size) if g == "group" else None)


def _scale_dtype(t: QTensor) -> str:
    return str(t.dtype) if str(t.dtype) in ("bfloat16", "float16") else "float32"


def _weights_args(key: tuple) -> dict:
    bits, symmetric, g, gs = key
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "group_size": gs, "strategy": g, "dynamic": False}


def quantization_config(model: QModel) -> dict:
    """The ``quantization_config`` entry of config.json for ``model``."""
    summary = _Summary()
    for name, t in model.items():
        summary.add(name, t)
    return summary.config()


class _Summary:
    """What config.json's ``quantization_config`` says about a model, gathered tensor by tensor."""

    def __init__(self):
        self.groups: dict[tuple, list[str]] = {}
        self.ignore: list[str] = []

    def add(self, name: str, t) -> None:
        if isinstance(t, QTensor):
            self.groups.setdefault(_scheme_key(t), []).append(_module_of(name))
        elif name.endswith(".weight") and np.ndim(t) == 2:
            self.ignore.append(_module_of(name))

    def config(self) -> dict:
        single = len(self.groups) == 1
        config_groups = {}
        for i, (key, mods) in enumerate(sorted(self.groups.items(), key=lambda kv: str(kv[0]))):
            config_groups[f"group_{i}"] = {"targets": ["Linear"] if single else sorted(mods),
                                           "weights": _weights_args(key),
                                           "input_activations": None, "output_activations": None, "format": PACK_FORMAT}
        return {"quant_method": "compressed-tensors", "format": PACK_FORMAT, "quantization_status": "compressed",
                "config_groups": config_groups, "ignore": sorted(self.ignore) if single else [],
                "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {},
                "transform_config": {}, "version": CT_VERSION}


def _entries(model: QModel) -> list[Entry]:
    entries: list[Entry] = []
    for name, t in model.items():
        entries += _tensor_entries(name, t, model.dtype_of(name))
    return entries


def _tensor_entries(name: str, t, dtype: str) -> list[Entry]:
    """The safetensors entries of one model tensor (``dtype``: its original dtype, ``"bfloat16"`` for bit patterns)."""
    if not isinstance(t, QTensor):
        arr = np.ascontiguousarray(t)
        e = Entry.of(name, arr)
        if dtype == "bfloat16":
            e.dtype = "BF16"
        return [e]
    entries: list[Entry] = []
    mod = _module_of(name)
    rows, cols = t.shape
    bits, half = t.bits, 1 << (t.bits - 1)
    nwords = -(-cols * bits // 32)

    def packed(t=t, half=half, bits=bits):
        codes = np.asarray(t.codes)
        signed = codes.astype(np.int16) if t.signed else codes.astype(np.int16) - half
        return pack_int32(signed, bits)

    form, _ = _form(t)
    entries.append(Entry(f"{mod}.weight_packed", "I32", (rows, nwords), 4 * rows * nwords, packed))
    scale = np.asarray(form.scale, dtype=np.float32).reshape(rows, -1)
    sdt = _scale_dtype(t)
    if sdt == "bfloat16":
        e = Entry.of(f"{mod}.weight_scale", float32_to_bf16(scale))
        e.dtype = "BF16"
    else:
        e = Entry.of(f"{mod}.weight_scale", scale.astype(sdt))
    entries.append(e)
    if not t.signed:
        zp = form.zero_points().astype(np.int16).reshape(rows, -1) - half
        entries.append(Entry.of(f"{mod}.weight_zero_point", np.ascontiguousarray(pack_int32(zp.T, bits).T)))
    entries.append(Entry.of(f"{mod}.weight_shape", np.array([rows, cols], dtype=np.int64)))
    return entries


def _folder_of(path, source):
    """Checks of the output folder ``path`` (created); the source folder, if any."""
    out = os.fspath(path)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out!r} exists and is not a folder; compressed-tensors output is a folder")
    src_folder = source_folder(source)
    if src_folder is not None and same_folder(src_folder, out):
        raise ValueError(f"output folder {out!r} is the source folder: it would overwrite the input model")
    os.makedirs(out, exist_ok=True)
    return out, src_folder


def _write_config(out: str, src_folder: str | None, qconfig: dict) -> int:
    """The source's side files, then config.json (the source's, with ``quantization_config``); their bytes."""
    size = 0
    config: dict[str, Any] = {}
    if src_folder is not None:
        cfg = os.path.join(src_folder, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                config = json.load(f)
        for f in copy_side_files(src_folder, out):
            size += os.path.getsize(os.path.join(out, f))
    config["quantization_config"] = qconfig
    write_json_atomic(os.path.join(out, "config.json"), config)
    return size + os.path.getsize(os.path.join(out, "config.json"))


def save_compressed_tensors(model: QModel, path: str | os.PathLike, source: str | os.PathLike | None = None,
                            progress=None, max_shard_size=None) -> int:
    """Write ``model`` as a compressed-tensors ``pack-quantized`` folder ``path``; returns the bytes written.

    ``source``: the Hugging Face folder (or a file in it) the model came from: its ``config.json`` is copied with
    ``quantization_config`` added, and every other file and subfolder that is not a weight (tokenizer,
    sentence-transformers modules such as ``1_Pooling/``; see qcore/model/folders.py) is copied, so
    ``transformers.AutoModelForCausalLM.from_pretrained(path)`` (or ``SentenceTransformer(path)``) loads the
    result.  Without it only ``quantization_config`` is written to config.json (transformers then needs the
    model's config).  ``max_shard_size``: shards of at most that many bytes (``"5GB"``) and
    ``model.safetensors.index.json``, written last (qcore/model/shards.py).
    """
    if not isinstance(model, QModel):
        raise TypeError(f"expected a QModel, got {type(model).__name__}")
    check_model(model)
    if max_shard_size is not None:
        total = model.nbytes
        with CompressedTensorsWriter(path, source=source, max_shard_size=max_shard_size,
                                     progress=None if progress is None else (lambda d, _: progress(d, total))) as w:
            for name, t in model.items():
                w.add(name, t, model.info.get(name, {}), model.dtype_of(name))
            return w.close()
    out, src_folder = _folder_of(path, source)
    size = write_safetensors(os.path.join(out, WEIGHT_FILE), _entries(model), {"format": "pt"}, progress=progress)
    # a stale shard index (and its shards) from an earlier save would point transformers at other files
    for f in stale_weight_files(out):
        if not f.endswith(WEIGHT_FILE):
            os.unlink(f)
    return size + _write_config(out, src_folder, quantization_config(model))


class CompressedTensorsWriter(ShardedModelWriter):
    """A compressed-tensors folder written tensor by tensor: ``model.safetensors`` or shards, then the source's side
    files and config.json, then the shard index (last)."""

    def __init__(self, path, *, metadata=None, source=None, max_shard_size=None, progress=None):
        self.out, self.src = _folder_of(path, source)
        if max_shard_size is None:
            for f in stale_weight_files(self.out):
                os.unlink(f)
        target = self.out if max_shard_size is not None else os.path.join(self.out, WEIGHT_FILE)
        super().__init__(ShardWriter(target, max_shard_size=max_shard_size, shard_metadata=lambda units: {"format": "pt"}),
                         progress)
        self.summary = _Summary()

    def add(self, name, tensor, info=None, dtype=None):
        if isinstance(tensor, QTensor):
            why = _why_not(name, tensor)
            if why:
                raise ValueError(f"compressed-tensors cannot hold tensor {name}: {why}; save with format='qcore' or "
                                 f"quantize it with linear 2-8 bits per channel or group")
        else:
            tensor = np.asarray(tensor)
        self._write(name, _tensor_entries(name, tensor, dtype or str(tensor.dtype)))
        self.summary.add(name, tensor)

    def side_files(self) -> int:
        return _write_config(self.out, self.src, self.summary.config())


# -- reading ----------------------------------------------------------------------------------------------
def _config_of(path: str) -> tuple[str, dict | None]:
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        return folder, None
    try:
        with open(cfg, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{cfg!r} is not valid JSON: {exc}") from None
    qc = doc.get("quantization_config") if isinstance(doc, dict) else None
    return folder, qc if isinstance(qc, dict) else None


def is_compressed_tensors(path: str | os.PathLike) -> bool:
    """True for a folder (or a file in one) whose config.json has a compressed-tensors quantization_config."""
    try:
        _, qc = _config_of(os.fspath(path))
    except FormatError:
        return False
    return qc is not None and qc.get("quant_method") == "compressed-tensors"


def _scheme_of(qc: dict, module: str) -> dict:
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise FormatError("quantization_config has no config_groups")
    for g in groups.values():
        targets = g.get("targets") or []
        if module in targets or "Linear" in targets:
            w = g.get("weights")
            if isinstance(w, dict):
                return w
    raise FormatError(f"no config group of quantization_config targets {module!r}")


def load_compressed_tensors(path: str | os.PathLike, verify: bool = True) -> QModel:
    """A compressed-tensors ``pack-quantized`` folder as a :class:`QModel` of linear QTensors (no requantizing)."""
    from .tensors import load_tensors

    p = os.fspath(path)
    folder, qc = _config_of(p)
    if qc is None or qc.get("quant_method") != "compressed-tensors":
        raise FormatError(f"{p!r}: config.json has no compressed-tensors quantization_config")
    fmt = qc.get("format")
    if fmt != PACK_FORMAT:
        raise FormatError(f"{p!r}: compressed-tensors format {fmt!r} is not read by qcore (only {PACK_FORMAT!r})")
    tf = load_tensors(folder)
    names = list(tf)
    model = QModel(metadata={"source_format": "compressed-tensors", "compressed_tensors_version": str(qc.get("version", ""))})
    done = set()
    packed_mods = {n[: -len(".weight_packed")] for n in names if n.endswith(".weight_packed")}
    for name in names:
        mod = next((m for m in (name.rsplit(".", 1)[0],) if m in packed_mods and name.startswith(m + ".weight_")), None)
        if mod is None:
            if tf.source_dtype(name) == "bfloat16":
                model[name] = tf.raw(name)
                model.info[name] = {"dtype": "bfloat16"}
            else:
                model[name] = np.array(tf[name], copy=True)
            continue
        if mod in done:
            continue
        done.add(mod)
        w = _scheme_of(qc, mod)
        bits, sym, strategy, gs = int(w.get("num_bits", 8)), bool(w.get("symmetric", True)), w.get("strategy"), w.get("group_size")
        if w.get("type", "int") != "int" or not 2 <= bits <= 8 or strategy not in ("channel", "group"):
            raise FormatError(f"{p!r}: module {mod!r}: {w.get('type')} {bits}-bit {strategy} weights are not read by qcore")
        shape = tuple(int(s) for s in np.asarray(tf[f"{mod}.weight_shape"]).reshape(-1))
        if len(shape) != 2:
            raise FormatError(f"{p!r}: module {mod!r}: weight_shape {shape} is not 2-d")
        rows, cols = shape
        codes = unpack_int32(tf[f"{mod}.weight_packed"], bits, cols)
        if codes.shape[0] != rows:
            raise FormatError(f"{p!r}: module {mod!r}: weight_packed has {codes.shape[0]} rows, weight_shape says {rows}")
        sdt = tf.source_dtype(f"{mod}.weight_scale")
        scale = np.asarray(tf[f"{mod}.weight_scale"], dtype=np.float32)
        ngroups = 1 if strategy == "channel" else cols // int(gs)
        if scale.shape != (rows, ngroups):
            raise FormatError(f"{p!r}: module {mod!r}: weight_scale shape {scale.shape}, expected {(rows, ngroups)}")
        if not np.isfinite(scale).all() or (scale == 0).any() or (not sym and (scale < 0).any()):
            # symmetric scales may be negative: qcore's 3-/4-bit search gives the largest magnitude code -2^(b-1)
            raise FormatError(f"{p!r}: module {mod!r}: weight_scale holds zero, negative (affine), NaN or Inf values")
        opts: dict[str, Any] = {"granularity": strategy, "axis": 0, "symmetric": sym}
        if strategy == "group":
            opts["group_size"] = int(gs)
        half = 1 << (bits - 1)
        pshape = (rows, ngroups) if strategy == "group" else (rows,)
        if sym:
            from .. import resolve

            qmin = resolve.quantizer("linear", bits=bits, symmetric=True).qmin  # full range at 3/4 bits
            if (codes < qmin).any():
                raise FormatError(f"{p!r}: module {mod!r}: symmetric codes use -{half}, outside qcore's range "
                                  f"[{qmin}, {half - 1}] for {bits} bits")
            qcodes = codes
            params = {"scale": scale.reshape(pshape), "zero_point": np.zeros(pshape, np.int32)}
        else:
            zp = unpack_int32(np.ascontiguousarray(np.asarray(tf[f"{mod}.weight_zero_point"]).T), bits, rows).T
            qcodes = (codes.astype(np.int16) + half).astype(np.uint8)
            params = {"scale": scale.reshape(pshape), "zero_point": (zp.astype(np.int32) + half).reshape(pshape)}
        qt = _make_qtensor(qcodes, bits, params, opts, sym, sdt)
        if verify and not np.isfinite(qt.dequantize()).all():
            raise FormatError(f"{p!r}: module {mod!r}: decodes to NaN or Inf")
        model[f"{mod}.weight"] = qt
        model.info[f"{mod}.weight"] = {"source": "compressed-tensors"}
    tf.close()
    return model


def _make_qtensor(codes, bits, params, opts, symmetric, dtype) -> QTensor:
    """A linear QTensor through the scheme (so the storage conventions of the installed linear plugin apply)."""
    from ..api import get_quantizer

    q = get_quantizer("linear", bits=bits, **opts)
    # the parameters the installed linear scheme itself makes for this layout (a symmetric scheme may store no
    # zero point): fitted on a tiny array of the same granularity, then the file's values under those names
    probe = np.ones((2, int(opts.get("group_size", 2))), np.float32)
    wanted = set(q.fit(probe))
    missing = wanted - set(params)
    if missing:
        raise FormatError(f"the linear scheme needs parameters {sorted(missing)} that pack-quantized does not store")
    params = {k: v for k, v in params.items() if k in wanted}
    return QTensor(codes, "linear", bits, params, dict(opts, bits=bits), signed=symmetric, dtype=dtype, quantizer=q)


def inspect_folder(path: str | os.PathLike) -> dict:
    """A per-tensor description of a compressed-tensors folder, from headers and config.json (no data read)."""
    p = os.fspath(path)
    folder, qc = _config_of(p)
    if qc is None:
        raise FormatError(f"{p!r}: config.json has no quantization_config")
    from .tensors import load_tensors

    tf = load_tensors(folder)
    files = getattr(tf, "files", [tf.path])
    size = sum(os.path.getsize(f) for f in files)
    packed = {n[: -len(".weight_packed")] for n in tf if n.endswith(".weight_packed")}
    rows = []
    for name in tf:
        mod = name.rsplit(".", 1)[0]
        if mod in packed and name.startswith(mod + ".weight_"):
            if not name.endswith(".weight_packed"):
                continue
            w = _scheme_of(qc, mod)
            shape = [int(s) for s in np.asarray(tf[f"{mod}.weight_shape"]).reshape(-1)]
            nbytes = sum(tf.nbytes_of(f"{mod}.{k}") for k in ("weight_packed", "weight_scale", "weight_zero_point")
                         if f"{mod}.{k}" in tf)
            count = math.prod(shape)
            sdt = tf.source_dtype(f"{mod}.weight_scale")
            isz = 2 if sdt in ("bfloat16", "float16") else 4
            opts = {"granularity": w.get("strategy"), "symmetric": bool(w.get("symmetric"))}
            if w.get("strategy") == "group":
                opts["group_size"] = w.get("group_size")
            rows.append(report_row(f"{mod}.weight", scheme="linear", bits=int(w.get("num_bits")), shape=shape,
                                   bytes_fp32=4 * count, bytes_q=nbytes, sqnr_db=None, options=opts,
                                   bytes_orig=isz * count, dtype=sdt, plugin={}))
        else:
            dt = tf.source_dtype(name)
            nb = tf.nbytes_of(name)
            shape = list(tf.shape_of(name))
            fp32 = 4 * math.prod(shape) if dt in ("bfloat16", "float16", "float32", "float64") else nb
            rows.append(report_row(name, scheme=None, bits=None, shape=shape, bytes_fp32=fp32, bytes_q=nb, sqnr_db=None,
                                   options={"dtype": dt}, bytes_orig=nb, dtype=dt, plugin={}))
    tf.close()
    return {"path": p, "format": "compressed-tensors", "file_size": size, "pack_format": qc.get("format"),
            "version": qc.get("version"), "quantization_config": qc, "tensors": rows,
            "title": f"compressed-tensors model ({qc.get('format')}, version {qc.get('version')})"}


class CompressedTensorsFormat(ModelFormat):
    """compressed-tensors ``pack-quantized`` folders: what transformers and vLLM load (linear 2-8 bits per channel
    or group)."""

    name = "compressed-tensors"
    description = "a Hugging Face folder in compressed-tensors pack-quantized form (transformers, vLLM)"
    output = "folder"
    uses_source = True
    save_options = ("source", "progress", "max_shard_size")

    def sniff(self, path: str) -> bool:
        return os.path.isdir(path) and is_compressed_tensors(path)

    def check_plan(self, plan, options=None) -> None:
        check_plan(plan)

    def check_save_options(self, options: dict) -> None:
        super().check_save_options(options)
        if options.get("max_shard_size") is not None:
            parse_size(options["max_shard_size"])

    def save(self, model: QModel, path, **options) -> int:
        return save_compressed_tensors(model, path, **options)

    def open_writer(self, path, *, metadata=None, **options) -> CompressedTensorsWriter:
        self.check_save_options(options)
        return CompressedTensorsWriter(path, **options)

    def load(self, path, *, verify: bool = True) -> QModel:
        return load_compressed_tensors(path, verify=verify)

    def inspect(self, path) -> dict:
        return inspect_folder(path)


FORMAT = CompressedTensorsFormat()
