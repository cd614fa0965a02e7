"""The kernel layer: the :class:`Kernel` interface, one module per capability with its numpy reference
(qcore/kernels/core.py lists them).  Implementations are plugins (``cython``, ``numpy``)."""
from .base import CAPABILITIES, Kernel, code_dtype, packed_size

__all__ = ["Kernel", "CAPABILITIES", "code_dtype", "packed_size"]
