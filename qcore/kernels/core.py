"""What every kernel capability shares: :class:`KernelBase` (name, priority, declared capabilities, instruction
sets) and the small helpers of the validated public methods.

A kernel is a plugin class that implements some *capabilities* (docs/contracts.md §1).  Each capability is a
small interface class in its own module of this package, with its numpy reference beside it:

=============== ============================== ===================================================================
capability      module                         what it computes
=============== ============================== ===================================================================
``affine``      ``qcore/kernels/affine.py``     min/max, affine quantize / dequantize, bit packing, scale search
``codebook``    ``qcore/kernels/codebook.py``   table decode, nearest codebook entry, log levels
``histogram``   ``qcore/kernels/histogram.py``  histograms and the error models evaluated on them
``kmeans_fit``  ``qcore/kernels/kmeans.py``     one-dimensional k-means of many rows at once (``kmeans`` fit)
``int8_gemm``   ``qcore/kernels/int8_gemm.py``  packed int8 GEMM (``qcore.ops.qgemm``, 8-bit ``qlinear``)
``lowbit_gemm`` ``qcore/kernels/lowbit.py``     low-bit weights kept packed, computed on directly
``qconv2d``     ``qcore/kernels/conv.py``       static int8 convolution and the uint8 ops of a static CNN
=============== ============================== ===================================================================

:class:`qcore.Kernel` (qcore/kernels/base.py) is the union of the capability classes.  Each public method
validates its arguments and calls an underscore method; the underscore methods of every capability default to
the numpy reference, so a kernel overrides only what it accelerates and declares what it implements in
``capabilities``.
"""
from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np

from .. import isa as _isa
from ..validation import as_float32, normalize_axis
from .memory import new_array


def code_dtype(signed: bool) -> np.dtype:
    return np.dtype(np.int8) if signed else np.dtype(np.uint8)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


class KernelBase:
    """Name, priority, declared capabilities and instruction sets of a kernel; the helpers its methods share."""

    name: ClassVar[str] = ""
    #: among kernels that can serve a request, ``qcore.get_kernel`` picks the available one of highest priority
    priority: ClassVar[int] = 0
    #: the capabilities this kernel implements (docs/contracts.md §1); see :meth:`supports`
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def available(cls) -> bool:
        """False when the kernel cannot run here (e.g. its extension module failed to build)."""
        return True

    @classmethod
    def supports(cls, capability: str) -> bool:
        """True when the kernel declares ``capability`` (``"affine"``, ``"int8_gemm"``, ...) in ``capabilities``."""
        return capability in cls.capabilities

    def __repr__(self) -> str:
        return f"<qcore kernel {self.name!r}>"

    # -- instruction sets (qcore/isa.py; docs/contracts.md) ---------------------------------------------
    def isas(self) -> list[str]:
        """The instruction-set levels this kernel runs here, best first: none above the CPU's or the
        ``QCORE_ISA`` cap (``baseline``, ``avx2``, ``avx512``, ``avx512vnni``).  A kernel without copies per
        level runs ``["baseline"]``."""
        return ["baseline"]

    @property
    def isa(self) -> str:
        """The level this kernel runs at now (one of :meth:`isas`)."""
        return self.isas()[0]

    def set_isa(self, level: str) -> None:
        """Run at ``level`` from now on (tests and benchmarks; not while the kernel runs in other threads).
        ``ValueError`` for a name that is not a level, a level above the ``QCORE_ISA`` cap or one this kernel
        does not run here; a kernel with copies per level overrides ``_set_isa``."""
        self._set_isa(_isa.require(level, self.isas(), f"kernel {self.name!r}"))

    def _set_isa(self, level: str) -> None:
        pass

    # -- helpers shared by the public methods -------------------------------------------------------
    @staticmethod
    def _axis(x: np.ndarray, axis) -> int | None:
        return None if axis is None else normalize_axis(axis, x.ndim)

    @staticmethod
    def _output(out, shape, dtype, source) -> np.ndarray:
        """A new array, or ``out`` checked to be a writeable C-contiguous array of that shape and dtype that
        does not overlap ``source`` (the kernels read and write in parallel)."""
        if out is None:
            return new_array(shape, dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.dtype != dtype or out.shape != tuple(shape):
            raise ValueError(f"out must have dtype {np.dtype(dtype)} and shape {tuple(shape)}, got {out.dtype} {out.shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
        if np.may_share_memory(out, source):
            raise ValueError("out must not overlap the input")
        return out

    @staticmethod
    def _per_channel(values, channels: int, name: str, dtype=np.float32) -> np.ndarray:
        v = np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1))
        if v.size != channels:
            raise ValueError(f"{name} has {v.size} values, expected one per channel ({channels})")
        return v

    def _foreign(self, what: str, obj) -> TypeError:
        """The error for a packed object that another kernel (or nothing) made."""
        return TypeError(f"{what} must come from kernel {self.name!r} (its packed objects are valid only for the "
                         f"kernel that made them), got {type(obj).__name__}")


def linear_operands(x, n: int, k: int, bias):
    """The checked operands of a ``y = x @ W.T + bias`` call on an (N, K) weight: ``x`` float32 (M, K) (NaN/Inf
    are left for the kernel to refuse), ``bias`` None or contiguous float32 (N,)."""
    x = as_float32(x, "x", check_finite=False)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x must have shape (M, {k}), got {x.shape}")
    if bias is not None:
        bias = np.ascontiguousarray(np.asarray(bias, dtype=np.float32))
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    return x, bias


def rows_of(arr3):
    """``(outer, C, inner)`` -> channel index per element, broadcastable against ``arr3`` (the references)."""
    return np.arange(arr3.shape[1])[None, :, None]


_instances: dict[type, KernelBase] = {}
_instances_lock = threading.Lock()


def kernel_instance(cls: type[KernelBase]) -> KernelBase:
    """Kernels are stateless: one shared instance per class."""
    inst = _instances.get(cls)
    if inst is None:
        with _instances_lock:
            inst = _instances.setdefault(cls, cls())
    return inst
