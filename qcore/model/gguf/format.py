"""GGUF files for llama.cpp (and ollama): ``qm.save("model.gguf", format="gguf", source=hf_folder)``.

Weights go out exactly as qcore quantized them — the codes and float16 parameters become ggml blocks with no
second rounding (qcore/model/gguf/mapping.py says which tensors map and why others do not) — under llama.cpp's
names and row order (llama.py), with the hyperparameters of the source's config.json and its vocabulary
(tokenizer.py).  ``qcore.load_quantized("model.gguf")`` reads back the types qcore writes (F32, F16, BF16, Q8_0,
Q4_0, Q5_0, Q4_1) under the Hugging Face names, rows in their original order: the same QModel.  See docs/deploy.md.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from ..._version import __version__
from ...api import get_quantizer
from ...errors import FormatError
from ...metrics import report_row
from ...tensor import QTensor
from ..folders import source_folder
from ..formats import ModelFormat, check_plan_tensors, probe
from ..qmodel import QModel
from ..safetensors_io import bf16_to_float32
from . import blocks, llama
from .container import (BF16, F16, F32, OutTensor, STRING, TENSOR_TYPES, UINT32, read_header, read_tensor_bytes,
                        type_name, write_gguf)
from .mapping import MAPPING_HELP, block_type, file_type, float_type
from .tokenizer import tokenizer_metadata

#: ggml's quantization version (GGML_QNT_VERSION) of the block layouts written here
QUANTIZATION_VERSION = 2
#: the linear options of each block type qcore reads back
READ_OPTIONS = {
    blocks.Q8_0: dict(bits=8, symmetric=True), blocks.Q4_0: dict(bits=4, symmetric=True),
    blocks.Q5_0: dict(bits=5, symmetric=True), blocks.Q4_1: dict(bits=4, zero="minimum"),
}
_FLOAT_DTYPES = {F32: np.dtype("<f4"), F16: np.dtype("<f2"), BF16: np.dtype("<u2")}


class GGUFWarning(UserWarning):
    """Something a GGUF file will lack (e.g. a vocabulary), said once when it is written."""


def _config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"source {folder!r} has no config.json: the GGUF writer needs the model's Hugging Face "
                         f"folder (architecture and hyperparameters)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path!r} is not a JSON object")
    return cfg


def _gguf_names(names, arch: str) -> dict[str, str | None]:
    out, unknown = {}, []
    for n in names:
        try:
            out[n] = llama.gguf_name(n)
        except KeyError:
            unknown.append(n)
    if unknown:
        raise ValueError(f"{len(unknown)} tensor(s) are not tensors of a {arch} model llama.cpp knows: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return out


class _Target:
    """The source folder, its config and architecture, checked once."""

    def __init__(self, source):
        if source is None:
            raise ValueError("format='gguf' needs source=: the Hugging Face folder the model came from (its "
                             "config.json gives the architecture and hyperparameters, its tokenizer the vocabulary)")
        self.folder = source_folder(source)
        self.config = _config(self.folder)
        self.hf_arch, self.arch = llama.architecture_of(self.config)
        llama.check_config(self.config)
        self.n_head, self.n_kv, self.head_dim = llama.heads(self.config)


def _perm(gname: str, target: _Target, rows: int):
    return llama.row_permutation(gname, target.arch, target.n_head, target.n_kv, rows)


def _probe_reason(scheme: str, opts: dict) -> str | None:
    """Why a tensor quantized with ``scheme`` and ``opts`` would not map onto a GGUF type (None: it maps)."""
    qt = probe(scheme, opts)
    if isinstance(qt, str):
        return qt
    got = block_type(qt)
    return got if isinstance(got, str) else None


class GGUFFormat(ModelFormat):
    """llama.cpp's GGUF file, written from a quantized llama-family model and its Hugging Face folder."""

    name = "gguf"
    description = "a GGUF file for llama.cpp / ollama (llama-family models; Q8_0, Q4_0, Q5_0, Q4_1)"
    output = "file"
    suffixes = (".gguf",)
    uses_source = True
    save_options = ("source", "progress")
    #: options the command line adds for ``--format gguf`` when the user gives none of them (and the scheme takes
    #: them): 32-weight blocks with float16 scales, symmetric (Q8_0 at the default 8 bits, Q4_0 with --bits 4)
    cli_defaults = {"granularity": "group", "group_size": 32, "scale_dtype": "float16", "symmetric": True}

    def sniff(self, path: str) -> bool:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"

    # -- checks before any work ------------------------------------------------------------------------------
    def check_save_options(self, options: dict) -> None:
        super().check_save_options(options)
        _Target(options.get("source"))

    def check_plan(self, plan, options=None) -> None:
        target = _Target((options or {}).get("source"))
        _gguf_names([name for name, _, _ in plan], target.arch)

        def why(name, qt):
            got = block_type(qt)
            return got if isinstance(got, str) else None

        check_plan_tensors(plan, why, "GGUF", MAPPING_HELP)

    def default_options(self, scheme: str, options: dict) -> dict:
        """``options`` completed with :attr:`cli_defaults` where the scheme takes them and the result maps."""
        for drop in ((), ("symmetric",)):
            merged = {**{k: v for k, v in self.cli_defaults.items() if k not in drop}, **options}
            if _probe_reason(scheme, merged) is None:
                return merged
        return options

    # -- writing ---------------------------------------------------------------------------------------------
    def save(self, model: QModel, path, *, source=None, progress=None) -> int:
        """Write ``model`` (quantized from the Hugging Face folder ``source``) as the GGUF file ``path``;
        returns its size.  Refuses, before writing anything, architectures and tensors GGUF cannot hold exactly."""
        if not isinstance(model, QModel):
            raise TypeError(f"expected a QModel, got {type(model).__name__}")
        out = os.fspath(path)
        target = _Target(source)
        if os.path.isdir(out):
            raise ValueError(f"{out!r} is a folder; a GGUF model is one file (e.g. {os.path.join(out, 'model.gguf')!r})")
        for f in os.listdir(target.folder):
            src = os.path.join(target.folder, f)
            if os.path.isfile(src) and os.path.exists(out) and os.path.samefile(src, out):
                raise ValueError(f"output {out!r} is the source file {src!r}: writing it would destroy the input")
        names = _gguf_names(model.keys(), target.arch)
        tensors, problems, types = [], [], []
        for name, t in model.items():
            gname = names[name]
            if gname is None:
                continue
            if isinstance(t, QTensor):
                got = block_type(t)
                if isinstance(got, str):
                    problems.append(f"{name}: {got}")
                    continue
                gtype, info = got
                tensors.append(OutTensor(gname, gtype, t.shape, _block_producer(t, gtype, info, _perm(gname, target, t.shape[0]))))
            else:
                dt = model.dtype_of(name)
                gtype = float_type(t, dt)
                tensors.append(OutTensor(gname, gtype, tuple(np.shape(t)),
                                         _float_producer(model, name, gtype, _perm(gname, target, np.shape(t)[0] if np.ndim(t) else 1))))
            if len(tensors[-1].shape) >= 2:
                types.append(gtype)
        if problems:
            raise ValueError(f"GGUF cannot hold {len(problems)} tensor(s) exactly: {'; '.join(problems[:4])}"
                             f"{' ...' if len(problems) > 4 else ''}; {MAPPING_HELP}")
        meta = llama.metadata(target.config, os.path.basename(os.path.normpath(target.folder)))
        meta += [("general.file_type", UINT32, file_type(types)),
                 ("general.quantization_version", UINT32, QUANTIZATION_VERSION),
                 ("general.quantized_by", STRING, f"qcore {__version__}")]
        vocab, warning = tokenizer_metadata(target.folder, target.config)
        if warning:
            warnings.warn(f"GGUF {out}: {warning}", GGUFWarning, stacklevel=2)
        return write_gguf(out, meta + vocab, tensors, progress=progress)

    # -- reading ---------------------------------------------------------------------------------------------
    def load(self, path, *, verify: bool = True) -> QModel:
        return load_gguf(path, verify=verify)

    def inspect(self, path) -> dict[str, Any]:
        p = os.fspath(path)
        h = read_header(p)
        rows = []
        for t in h.tensors:
            count = int(np.prod(t.shape, dtype=np.int64))
            opts = {"gguf_type": t.type_name}
            if t.ggml_type in READ_OPTIONS:
                opts.update({k: v for k, v in READ_OPTIONS[t.ggml_type].items() if k != "bits"},
                            granularity="group", group_size=blocks.BLOCK, scale_dtype="float16")
                rows.append(report_row(t.name, scheme="linear", bits=READ_OPTIONS[t.ggml_type]["bits"], shape=t.shape,
                                       bytes_fp32=4 * count, bytes_q=t.nbytes, sqnr_db=None, options=opts,
                                       bytes_orig=4 * count, dtype="float32", plugin={}))
            else:
                dt = {F32: "float32", F16: "float16", BF16: "bfloat16"}[t.ggml_type]
                opts["dtype"] = dt
                rows.append(report_row(t.name, scheme=None, bits=None, shape=t.shape, bytes_fp32=4 * count,
                                       bytes_q=t.nbytes, sqnr_db=None, options=opts, bytes_orig=t.nbytes, dtype=dt,
                                       plugin={}))
        md = {k: (v if isinstance(v, (str, int, float, bool)) else f"[{len(v)} items]") for k, v in h.metadata.items()}
        arch = h.metadata.get("general.architecture", "?")
        return {"path": p, "format": "gguf", "file_size": h.file_size, "version": h.version, "metadata": md,
                "tensors": rows, "title": f"GGUF v{h.version} model, architecture {arch}, tokenizer "
                                          f"{h.metadata.get('tokenizer.ggml.model', 'none')}"}


def _block_producer(t: QTensor, gtype: int, info: dict, perm):
    def produce():
        codes = np.asarray(t.codes).astype(np.int16) - np.int16(info["shift"])
        pshape = tuple(t.shape[:-1]) + (t.shape[-1] // blocks.BLOCK,)
        scale = np.asarray(info["scale"], np.float32).reshape(pshape)
        minimum = None if info["minimum"] is None else np.asarray(info["minimum"], np.float32).reshape(pshape)
        if perm is not None:
            codes, scale = codes[perm], scale[perm]
            minimum = None if minimum is None else minimum[perm]
        return blocks.encode(gtype, codes, scale.astype(np.float16), None if minimum is None else minimum.astype(np.float16))
    return produce


def _float_producer(model: QModel, name: str, gtype: int, perm):
    def produce():
        if gtype == BF16:  # held as bfloat16 bit patterns: written as they are
            arr = np.asarray(model[name], np.uint16)
        else:
            arr = np.asarray(model.values(name), _FLOAT_DTYPES[gtype])
        if perm is not None:
            arr = arr[perm]
        return np.ascontiguousarray(arr).view(np.uint8)
    return produce


def load_gguf(path, *, verify: bool = True) -> QModel:
    """A GGUF file of the types qcore writes as a :class:`QModel`: block types as ``linear`` QTensors (no
    rounding: the codes and float16 parameters as stored), float tensors as arrays.  Tensors of a llama-family
    file get their Hugging Face names and original row order back."""
    p = os.fspath(path)
    h = read_header(p)
    md = h.metadata
    arch = md.get("general.architecture")
    known = arch in llama.PERMUTES_QK
    n_head, n_kv = md.get(f"{arch}.attention.head_count"), md.get(f"{arch}.attention.head_count_kv")
    if known and llama.PERMUTES_QK[arch] and not (isinstance(n_head, int) and n_head > 0):
        raise FormatError(f"{p!r}: {arch}.attention.head_count is missing: the q/k rows cannot be put back in order")
    n_kv = n_kv if isinstance(n_kv, int) and n_kv > 0 else n_head
    model = QModel(metadata={"source_format": "gguf", "gguf_architecture": str(arch)})
    quantizers = {}
    with open(p, "rb") as f:
        for info in h.tensors:
            name = llama.hf_name(info.name) if known else info.name
            if name in model:
                raise FormatError(f"{p!r}: two tensors map to the name {name!r}")
            shape = info.shape
            try:
                perm = llama.row_permutation(info.name, arch, n_head, n_kv, shape[0]) if known else None
            except ValueError as exc:
                raise FormatError(f"{p!r}: {exc}") from None
            inv = None if perm is None else np.argsort(perm)
            raw = read_tensor_bytes(f, h, info)
            if info.ggml_type in _FLOAT_DTYPES:
                arr = raw.view(_FLOAT_DTYPES[info.ggml_type]).reshape(shape)
                arr = (arr if inv is None else arr[inv]).astype(arr.dtype.newbyteorder("="))
                if verify and info.ggml_type != BF16 and not np.isfinite(arr).all():
                    raise FormatError(f"{p!r}: tensor {info.name!r} holds NaN or Inf")
                if verify and info.ggml_type == BF16 and not np.isfinite(bf16_to_float32(arr)).all():
                    raise FormatError(f"{p!r}: tensor {info.name!r} holds NaN or Inf")
                model[name] = np.ascontiguousarray(arr)
                if info.ggml_type == BF16:
                    model.info[name] = {"dtype": "bfloat16"}
                continue
            codes, d, m = blocks.decode(info.ggml_type, raw, shape)
            if inv is not None:
                codes, d = codes[inv], d[inv]
                m = None if m is None else m[inv]
            key = info.ggml_type
            if key not in quantizers:
                quantizers[key] = get_quantizer("linear", granularity="group", group_size=blocks.BLOCK,
                                                scale_dtype="float16", **READ_OPTIONS[key])
            q = quantizers[key]
            if codes.size and (int(codes.min()) < q.qmin or int(codes.max()) > q.qmax):
                raise FormatError(f"{p!r}: tensor {info.name!r} ({info.type_name}) uses codes outside [{q.qmin}, "
                                  f"{q.qmax}], the range of qcore's {q.bits}-bit linear codes (a file qcore did not "
                                  f"write; read it with llama.cpp's tools)")
            params = {"scale": d} if m is None else {"scale": d, "minimum": m}
            try:
                qt = QTensor(np.ascontiguousarray(codes).astype(np.int8 if q.signed else np.uint8), q.name, q.bits,
                             params, q.export_options(), signed=q.signed, dtype="float32", quantizer=q)
            except (TypeError, ValueError) as exc:
                raise FormatError(f"{p!r}: tensor {info.name!r}: {exc}") from None
            if verify and not np.isfinite(qt.dequantize()).all():
                raise FormatError(f"{p!r}: tensor {info.name!r} decodes to NaN or Inf")
            model[name] = qt
            model.info[name] = {"source": "gguf", "gguf_type": info.type_name}
    return model


FORMAT = GGUFFormat()

__all__ = ["GGUFFormat", "FORMAT", "GGUFWarning", "load_gguf", "QUANTIZATION_VERSION", "TENSOR_TYPES", "type_name"]
