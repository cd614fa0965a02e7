"""Which GGUF type stores a tensor exactly — decided from what its codes decode as, never from a scheme name.

A quantized tensor maps onto a 32-element block type when its layout is ``group`` with ``group_size=32`` (along the
last axis: GGUF's ``ne[0]``) and its decode form is ``Affine`` with float16-exact scales:

* signed codes (or unsigned ones with every zero point ``2^(bits-1)``), no offset: ``y = d * c`` — Q4_0 for
  2-4 bits, Q5_0 for 5 bits, Q8_0 for 6-8 bits (the codes fit the type's range, so nothing is rounded again);
* unsigned 1-4 bit codes with no zero point and a float16-exact offset (``linear`` with ``zero="minimum"``):
  ``y = d * u + m`` — Q4_1.

Anything else (k-means and log tables, per-channel or per-tensor scales, other group sizes, float32 scales, zero
points, 1-bit binary) is refused, naming the tensor and the options that map (:data:`MAPPING_HELP`): qcore never
quantizes twice on the way out.  Float tensors: 1-D ones (norms, biases) as F32, others keep their dtype (F32,
F16, BF16; float64 becomes F32).
"""
from __future__ import annotations

import numpy as np

from ...quantization.forms import Affine
from ...tensor import QTensor
from .container import BF16, F16, F32, Q4_0, Q4_1, Q5_0, Q8_0, type_name

BLOCK = 32

MAPPING_HELP = ("GGUF stores quantized weights in blocks of 32 with float16 scales; quantize with scheme 'linear', "
                "granularity='group', group_size=32, scale_dtype='float16' and either symmetric=True (bits 2-4 -> "
                "Q4_0, 5 -> Q5_0, 6-8 -> Q8_0) or zero='minimum', bits=4 (-> Q4_1); on the command line "
                "`--format gguf --bits 4` uses these options")


def _f16_exact(a: np.ndarray) -> bool:
    a = np.asarray(a, np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def block_type(qt: QTensor) -> tuple[int, dict] | str:
    """``(ggml type, {"scale", "minimum", "shift"})`` storing ``qt`` exactly, or the reason it cannot be.

    ``shift`` is subtracted from the codes to get the block codes (the zero point of unsigned codes)."""
    form = qt.decodes_as()
    if not isinstance(form, Affine):
        return (f"scheme {qt.scheme!r} at {qt.bits} bits decodes through "
                f"{'a lookup table' if form is not None else 'its own decode'}, not d*q (+ m)")
    layout = qt.layout
    if layout.granularity != "group" or layout.group_size != BLOCK:
        what = f"group size {layout.group_size}" if layout.granularity == "group" else f"{layout.granularity} scales"
        return f"{what} (GGUF blocks are 32 consecutive weights)"
    if len(qt.shape) < 1 or len(qt.shape) > 4:
        return f"{len(qt.shape)}-d tensor"
    scale = np.asarray(form.scale, np.float32)
    if not _f16_exact(scale):
        return "float32 scales (GGUF blocks hold float16 scales: scale_dtype='float16')"
    zp = form.zero_points()
    half = 1 << (qt.bits - 1)
    if form.offset is not None:
        if qt.signed or qt.bits > 4 or np.any(zp != 0):
            return f"a minimum with {'signed' if qt.signed else str(qt.bits) + '-bit'} codes or a zero point (Q4_1 is unsigned 4-bit)"
        off = np.broadcast_to(np.asarray(form.offset, np.float32).reshape(-1) if np.size(form.offset) > 1
                              else np.asarray(form.offset, np.float32).reshape(()), (scale.size,)).reshape(scale.shape)
        if not _f16_exact(off):
            return "float32 minimums (Q4_1 holds a float16 minimum)"
        return Q4_1, {"scale": scale, "minimum": off, "shift": 0}
    if qt.signed:
        if np.any(zp != 0):
            return "signed codes with a zero point"
        shift = 0
    elif np.all(zp == half) and qt.bits >= 2:
        shift = half
    else:
        return "affine codes with a zero point (GGUF's symmetric blocks need symmetric=True; Q4_1 needs zero='minimum')"
    if qt.bits == 1:
        return "1-bit codes"
    gtype = Q4_0 if qt.bits <= 4 else Q5_0 if qt.bits == 5 else Q8_0
    return gtype, {"scale": scale, "minimum": None, "shift": shift}


def float_type(arr: np.ndarray, dtype: str) -> int:
    """The GGUF type of a float tensor kept as it is: F32 for 1-D (norms, biases), else its own dtype."""
    if np.ndim(arr) <= 1:
        return F32
    return {"float16": F16, "bfloat16": BF16}.get(dtype, F32)


#: llama.cpp's general.file_type for a model mostly of one type (LLAMA_FTYPE_*)
FILE_TYPES = {F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7, Q5_0: 8, BF16: 32}


def file_type(types: list[int]) -> int:
    """``general.file_type``: the most common type among the 2-D tensors' (by count)."""
    if not types:
        return 0
    counts = {t: types.count(t) for t in set(types)}
    return FILE_TYPES.get(max(counts, key=lambda t: (counts[t], -t)), 0)


__all__ = ["block_type", "float_type", "file_type", "MAPPING_HELP", "type_name"]
