"""What a scheme's codes decode as: the forms a :class:`qcore.Quantizer` declares through ``decodes_as(params)``.

Code that computes on codes without decoding them to float (``qcore.ops.qlinear``'s int8 and low-bit GEMMs,
the torch modules, the model writers) asks the scheme for one of these instead of recognising it by name
(docs/contracts.md §2):

* :class:`Affine` — ``x = (q - zero_point) * scale (+ offset)``;
* :class:`Table` — ``x = table[<param index>, q & (2**bits - 1)]``;
* ``None`` — only the scheme's ``decode`` knows (every path still works through ``decode``, more slowly).

The arrays of a form are laid out by the tensor's :class:`Layout` (``param_shape``): one entry per tensor,
per channel of ``axis``, or per group of ``group_size`` consecutive elements of the last axis.
:func:`decode` is the reference meaning of a form; ``qcore.testing.check_quantizer`` checks that a declared
form reproduces the scheme's ``decode`` bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ..validation import normalize_axis

GRANULARITIES = ("tensor", "channel", "group")


def _float_array(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)  # float16 parameters widen exactly
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return arr


@dataclass(frozen=True, eq=False)
class Affine:
    """Codes decode as ``x = float32(q - zero_point) * scale`` (then ``+ offset`` when given), in float32.

    :param scale: float array, one value per parameter set (``param_shape``); may be negative, never NaN/Inf
    :param zero_point: None (0) or an integer-valued array of the same layout (or a single value)
    :param offset: None or a float array of the same layout (or a single value): the "minimum"
        parameterisation (``x = q * scale + offset`` with ``zero_point`` None; GGUF Q4_1)
    """

    scale: np.ndarray
    zero_point: np.ndarray | None = None
    offset: np.ndarray | None = None

    def __post_init__(self):
        scale = _float_array(self.scale, "scale")
        object.__setattr__(self, "scale", scale)
        if self.zero_point is not None:
            zp = np.asarray(self.zero_point)
            if zp.dtype.kind not in "iuf" or (zp.dtype.kind == "f" and not np.array_equal(zp, np.round(zp))):
                raise TypeError(f"zero_point must hold integers, got {zp.dtype} values")
            if zp.size and np.abs(zp.astype(np.float64)).max() > 2**30:
                raise ValueError("zero_point values must lie within +-2**30")
            object.__setattr__(self, "zero_point", zp.astype(np.int32))
        if self.offset is not None:
            object.__setattr__(self, "offset", _float_array(self.offset, "offset"))
        for name in ("zero_point", "offset"):
            v = getattr(self, name)
            if v is not None and v.size not in (1, scale.size):
                raise ValueError(f"{name} has {v.size} values; expected one, or one per scale ({scale.size})")

    def zero_points(self) -> np.ndarray:
        """int32 zero points shaped like ``scale`` (zeros when there are none)."""
        if self.zero_point is None:
            return np.zeros(self.scale.shape, np.int32)
        return np.broadcast_to(self.zero_point.reshape(-1) if self.zero_point.size > 1 else self.zero_point.reshape(()),
                               (self.scale.size,)).reshape(self.scale.shape).astype(np.int32)

    def __repr__(self) -> str:
        extra = "" if self.zero_point is None else ", zero_point"
        extra += "" if self.offset is None else ", offset"
        return f"Affine(scale{list(self.scale.shape)}{extra})"


@dataclass(frozen=True, eq=False)
class Table:
    """Codes decode as ``x = table[<param index>, q & (E - 1)]``: the code's bit pattern (two's complement for
    signed codes) indexes a row of ``E = 2**bits`` float values, one row per parameter set.

    :param table: float array of shape ``param_shape + (2**bits,)`` (``E`` a power of two, 2..256), finite
    """

    table: np.ndarray

    def __post_init__(self):
        t = _float_array(self.table, "table")
        if t.ndim < 2:
            raise ValueError(f"table must have shape param_shape + (2**bits,), got {t.shape}")
        e = t.shape[-1]
        if not 2 <= e <= 256 or e & (e - 1):
            raise ValueError(f"a table's last axis must have 2**bits entries (2..256), got {e}")
        object.__setattr__(self, "table", t)

    @property
    def entries(self) -> int:
        return int(self.table.shape[-1])

    def __repr__(self) -> str:
        return f"Table(table{list(self.table.shape)})"


Form = Union[Affine, Table]


@dataclass(frozen=True)
class Layout:
    """How a tensor's parameter sets map onto its elements (``granularity``, ``axis``, ``group_size``).

    ``tensor``: one set; ``channel``: one per index of ``axis`` (non-negative); ``group``: one per block of
    ``group_size`` consecutive elements along the last axis, for every index of the other axes.
    """

    granularity: str = "tensor"
    axis: int | None = None
    group_size: int | None = None

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "channel" and (self.axis is None or self.axis < 0):
            raise ValueError("a channel layout needs a non-negative axis")
        if self.granularity == "group" and not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"a group layout needs a positive group_size, got {self.group_size!r}")

    @classmethod
    def from_options(cls, options, shape) -> "Layout":
        """The layout a quantizer with ``options`` (``granularity``, ``axis``, ``group_size``) gives a tensor of ``shape``."""
        options = options or {}
        gran = options.get("granularity", "tensor")
        if gran == "channel":
            return cls("channel", normalize_axis(options.get("axis", 0), len(shape)))
        if gran == "group":
            return cls("group", group_size=int(options["group_size"]))
        return cls(gran)

    def param_shape(self, shape) -> tuple[int, ...]:
        shape = tuple(shape)
        if self.granularity == "tensor":
            return (1,)
        if self.granularity == "channel":
            return (shape[self.axis],)
        return shape[:-1] + (shape[-1] // self.group_size,)

    @property
    def rows_are_sets(self) -> bool:
        """For a 2-D ``(N, K)`` tensor: each parameter set lies within one row (channel axis 0, or groups)."""
        return self.granularity == "group" or (self.granularity == "channel" and self.axis == 0)

    def param_index(self, shape, row_start: int = 0) -> np.ndarray:
        """Flat index of the parameter set of every element of a tensor of ``shape`` (an int64 array that
        broadcasts against ``shape``).  ``row_start``: the elements are rows ``row_start:`` of a taller tensor
        (index 0 of the first axis is row ``row_start``)."""
        shape = tuple(shape)
        nd = len(shape)
        if self.granularity == "tensor":
            return np.zeros((1,) * nd, np.int64)
        if self.granularity == "channel":
            idx = np.arange(shape[self.axis], dtype=np.int64) + (row_start if self.axis == 0 else 0)
            view = [1] * nd
            view[self.axis] = shape[self.axis]
            return idx.reshape(view)
        gs = self.group_size
        groups = shape[-1] // gs
        lead = np.arange(int(np.prod(shape[:-1], dtype=np.int64)), dtype=np.int64)
        if nd > 1 and row_start:
            lead = lead + row_start * int(np.prod(shape[1:-1], dtype=np.int64))
        col = np.arange(shape[-1], dtype=np.int64) // gs
        return (lead.reshape(shape[:-1] + (1,)) * groups + col).reshape(shape)

    def rows(self, param: np.ndarray, n0: int, n1: int, nrows: int) -> np.ndarray:
        """``param`` (laid out by this layout, first axis per row when :attr:`rows_are_sets`) restricted to
        rows ``[n0, n1)`` of a 2-D tensor of ``nrows`` rows; shared parameters are returned whole."""
        param = np.asarray(param)
        if self.rows_are_sets and param.ndim >= 1 and param.shape[0] == nrows:
            return param[n0:n1]
        return param


def decode(form: Form, codes, layout: Layout, bits: int, row_start: int = 0) -> np.ndarray:
    """The reference meaning of ``form``: float32 values of ``codes`` (int8/uint8, any shape) laid out by ``layout``.

    ``row_start``: ``codes`` are rows ``row_start:`` of a taller tensor (the form covers the whole tensor).
    """
    codes = np.asarray(codes)
    idx = layout.param_index(codes.shape, row_start)
    if isinstance(form, Affine):
        flat = form.scale.reshape(-1)
        scale = flat[idx] if flat.size > 1 else flat.reshape(())
        zp = form.zero_points().reshape(-1)
        zp = zp[idx] if zp.size > 1 else zp.reshape(())
        x = (codes.astype(np.int32) - zp).astype(np.float32) * scale
        if form.offset is not None:
            off = form.offset.reshape(-1)
            x = x + (off[idx] if off.size > 1 else off.reshape(()))
        return np.asarray(x, np.float32)
    if isinstance(form, Table):
        e = form.entries
        mask = min(e, 1 << bits) - 1
        t = form.table.reshape(-1, e)
        return np.asarray(t[idx if t.shape[0] > 1 else 0, codes.view(np.uint8) & np.uint8(mask)], np.float32)
    raise TypeError(f"form must be qcore.quantization.forms.Affine or Table, got {type(form).__name__}")


def check_form(form, layout: Layout, shape, bits: int, what: str = "decodes_as") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``form`` is a form whose arrays fit ``layout`` for ``shape``."""
    if form is None:
        return
    pshape = layout.param_shape(shape)
    size = int(np.prod(pshape, dtype=np.int64))
    if isinstance(form, Affine):
        if form.scale.size not in (1, size):
            raise ValueError(f"{what}: Affine scale has shape {form.scale.shape}, expected param_shape {pshape}")
    elif isinstance(form, Table):
        if form.entries != 1 << bits:
            raise ValueError(f"{what}: Table rows have {form.entries} entries, expected 2**bits = {1 << bits}")
        rows = int(np.prod(form.table.shape[:-1], dtype=np.int64))
        if rows not in (1, size):
            raise ValueError(f"{what}: Table has shape {form.table.shape}, expected {pshape + (1 << bits,)}")
    else:
        raise TypeError(f"{what} must return qcore.quantization.forms.Affine, Table or None, got {type(form).__name__}")


__all__ = ["Affine", "Table", "Form", "Layout", "decode", "check_form"]
