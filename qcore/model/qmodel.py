"""``QModel``: many named tensors, some quantized (:class:`qcore.QTensor`), the rest kept as they were.

A plain container: it knows nothing about files.  :meth:`QModel.save` hands the model to the format registered
under the ``format`` name it is given (qcore/model/formats.py, the one registry of file formats); loading is the
registry's too (``qcore.load_quantized``).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Mapping

import numpy as np

from ..metrics import plan_columns, report_row, sqnr_db  # sqnr_db is also qcore.model.sqnr_db
from ..tensor import QTensor


class QModel:
    """An ordered collection of named tensors: :class:`QTensor` for quantized ones, ``np.ndarray`` for the rest.

    :ivar tensors: ``{name: QTensor | np.ndarray}`` in model order
    :ivar info: ``{name: {...}}`` per-tensor facts recorded at quantization time (``sqnr_db``, ``planned_by``,
        ``rule``) and saved with the file
    :ivar metadata: ``{str: str}`` free-form metadata saved with the file
    """

    def __init__(self, tensors: Mapping[str, Any] | None = None, info: Mapping[str, dict] | None = None,
                 metadata: Mapping[str, str] | None = None):
        self.tensors: dict[str, QTensor | np.ndarray] = {}
        for name, t in (tensors or {}).items():
            self[name] = t
        self.info: dict[str, dict] = {k: dict(v) for k, v in (info or {}).items()}
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}

    # -- mapping -------------------------------------------------------------------------------------------
    def __getitem__(self, name: str):
        return self.tensors[name]

    def __setitem__(self, name: str, value) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(value, QTensor):
            value = np.asarray(value)
        self.tensors[name] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name) -> bool:
        return name in self.tensors

    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    @property
    def quantized(self) -> list[str]:
        """Names of the quantized tensors."""
        return [n for n, t in self.tensors.items() if isinstance(t, QTensor)]

    # -- sizes ---------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """True storage of the model: packed codes and parameters of quantized tensors, plus the others as they are."""
        return sum(int(t.nbytes) for t in self.tensors.values())

    @property
    def nbytes_fp32(self) -> int:
        """The same model with every float tensor in float32 (non-float tensors as they are)."""
        return sum(_bytes_fp32(t, self.dtype_of(n)) for n, t in self.tensors.items())

    @property
    def nbytes_original(self) -> int:
        """The model as it was before quantization: each tensor in its original dtype (bfloat16: 2 bytes)."""
        return sum(_bytes_orig(t, self.dtype_of(n)) for n, t in self.tensors.items())

    def dtype_of(self, name: str) -> str:
        """The original dtype of ``name`` (``"bfloat16"`` for bf16 tensors, which are held as uint16 bit patterns)."""
        t = self.tensors[name]
        if isinstance(t, QTensor):
            return str(t.dtype)
        return str(self.info.get(name, {}).get("dtype") or t.dtype)

    @property
    def average_bits(self) -> float:
        """Bits per quantized weight, parameters counted (``nan`` if nothing is quantized)."""
        q = [self.tensors[n] for n in self.quantized]
        count = sum(t.size for t in q)
        return 8.0 * sum(t.nbytes for t in q) / count if count else math.nan

    # -- values --------------------------------------------------------------------------------------------
    def dequantize(self) -> dict[str, np.ndarray]:
        """``{name: array}``: quantized tensors decoded to float32 (original shape), the others unchanged
        (bfloat16 ones, held as bit patterns, as float32 values)."""
        return {n: self.values(n) for n in self.tensors}

    def values(self, name: str) -> np.ndarray:
        """One tensor's values: decoded to float32 if quantized; kept bfloat16 as float32; others as stored."""
        t = self.tensors[name]
        if isinstance(t, QTensor):
            return t.dequantize()
        if self.dtype_of(name) == "bfloat16":
            from .safetensors_io import bf16_to_float32

            return bf16_to_float32(t)
        return t

    def report(self, reference: Mapping[str, np.ndarray] | None = None) -> list[dict]:
        """One dict per tensor: ``name, scheme, bits, shape, bytes_fp32, bytes_q, sqnr_db`` (+ ``options``,
        ``planned_by``, and the plan's ``candidate``, ``error``, ``error_in_sample``, ``held_out``).

        ``sqnr_db`` is measured against ``reference`` (the float model) when given, else it is the value
        recorded at quantization time (saved in the file; ``None`` if unknown).  Tensors kept as they were
        have ``scheme None``, ``bits`` of their dtype and ``sqnr_db inf``.  A tensor a planner chose with
        calibration data has its candidate's output error on held-out data (``error``, ``held_out`` True) and on
        the data it was fitted on (``error_in_sample``); the others have None there.
        """
        rows = []
        for name, t in self.tensors.items():
            info = self.info.get(name, {})
            if isinstance(t, QTensor):
                if reference is not None and name in reference:
                    snr = sqnr_db(reference[name], t.dequantize())
                else:
                    snr = info.get("sqnr_db")
                    snr = None if snr is None else float(snr)
                rows.append(report_row(
                    name, scheme=t.scheme, bits=t.bits, shape=t.shape, bytes_fp32=4 * t.size, bytes_q=int(t.nbytes),
                    sqnr_db=snr, options={k: v for k, v in t.options.items() if k != "bits"},
                    planned_by=info.get("planned_by"), bytes_orig=_bytes_orig(t, str(t.dtype)), dtype=str(t.dtype),
                    **plan_columns(info)))
            else:
                dt = self.dtype_of(name)
                rows.append(report_row(
                    name, scheme=None, bits=int(t.dtype.itemsize * 8), shape=t.shape, bytes_fp32=_bytes_fp32(t, dt),
                    bytes_q=int(t.nbytes), sqnr_db=math.inf, options={"dtype": dt}, bytes_orig=int(t.nbytes), dtype=dt))
        return rows

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, format: str = "qcore", **options) -> int:
        """Write the model in ``format`` (a name of :func:`qcore.model.formats.list_formats`: ``"qcore"``, the
        default, one ``.safetensors`` file, see docs/format.md; ``"compressed-tensors"``), atomically;
        returns the size written in bytes.  ``options`` are the format's (``source=`` a Hugging Face folder, ...)."""
        from .formats import get_format

        fmt = get_format(format)
        fmt.check_save_options(options)
        return fmt.save(self, os.fspath(path), **options)

    def __repr__(self) -> str:
        nq = len(self.quantized)
        return (f"QModel({len(self)} tensors, {nq} quantized, {self.nbytes} bytes "
                f"vs {self.nbytes_fp32} in float32, {self.average_bits:.2f} bits/weight)")


def _bytes_fp32(t, dtype: str | None = None) -> int:
    if isinstance(t, QTensor):
        return 4 * t.size
    return 4 * int(t.size) if (t.dtype.kind == "f" or dtype == "bfloat16") else int(t.nbytes)


def _bytes_orig(t, dtype: str) -> int:
    """Bytes of ``t`` in its original dtype (bfloat16: 2 per element; a QTensor: its input's dtype)."""
    if isinstance(t, QTensor):
        try:
            size = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        except TypeError:
            size = 4
        return size * t.size
    return int(t.nbytes)
