"""Input checks at the Python boundary (the input policy of docs/usage.md).  Kernels may assume what these functions guarantee.

Documented policy:

* lists, tuples and scalars are converted with ``np.asarray``;
* float16, float64 and integer/bool arrays are converted to float32 (values beyond float32's range are refused);
  complex, object and string arrays are refused with ``TypeError``;
* non-contiguous and Fortran-order arrays are copied to C order (results are the same as for a C array);
* NaN or ±Inf values are refused with :class:`qcore.InputError` (a ``ValueError``);
* empty arrays are allowed and give empty results; 0-d arrays are treated as one value.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np

from .errors import InputError


def as_float32(x, name: str = "x", check_finite: bool = True) -> np.ndarray:
    """``x`` as a C-contiguous float32 ndarray, refusing what cannot be quantized meaningfully."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if hasattr(x, "__array__") or isinstance(x, (list, tuple, int, float, np.generic)):
            try:
                arr = np.asarray(x)
            except (ValueError, TypeError) as exc:
                raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}: {exc}") from None
        else:
            raise TypeError(f"{name} must be a numpy array (or array-like of numbers), got {type(x).__name__}")
    kind = arr.dtype.kind
    if kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers (float, int or bool), got dtype {arr.dtype}")
    if kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        with np.errstate(invalid="ignore"):
            big = np.abs(arr[np.isfinite(arr)]).max(initial=0.0)
        if big > np.finfo(np.float32).max:
            raise InputError(f"{name} holds values beyond float32's range (|x| up to {big:.3g})")
    arr = np.asarray(arr, dtype=np.float32, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if check_finite:
        check_all_finite(arr, name)
    return arr


def non_finite_error(arr, name: str = "x") -> InputError:
    """The one NaN/Inf message: ``InputError`` naming the argument and how many values are not finite."""
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(arr))))
    return InputError(f"{name} contains {bad} NaN or Inf value(s); qcore refuses non-finite input (clean or clip it first)")


def check_all_finite(arr: np.ndarray, name: str = "x") -> None:
    if arr.size and not np.isfinite(arr).all():
        raise non_finite_error(arr, name)


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(axis).__name__}") from None
    if ndim == 0:
        raise ValueError(f"{name}={axis} is out of range for a 0-d array (use granularity='tensor')")
    if not -ndim <= a < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimension(s)")
    return a % ndim


def as_3d(x: np.ndarray, axis: int | None) -> np.ndarray:
    """View of C-contiguous ``x`` as ``(outer, C, inner)``: ``C`` the size of ``axis`` (1 if None).  No copy."""
    if axis is None:
        return x.reshape(1, 1, x.size)
    shape = x.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return x.reshape(outer, shape[axis], inner)


def check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def check_number(value, name, lo, hi, *, lo_open=False, hi_open=False, integer=False):
    """Validate a numeric option: ``TypeError`` for a non-number, ``ValueError`` out of ``[lo, hi]`` (or open ends)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integer and not isinstance(value, numbers.Integral)):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    v = int(value) if integer else float(value)
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = v >= hi if hi_open else v > hi
    if bad_lo or bad_hi or v != v:
        raise ValueError(
            f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {value!r}"
        )
    return v
