"""Allocation of kernel outputs.

A large new array is placed on a 2 MiB boundary.  numpy asks the OS for transparent huge pages on
allocations of 4 MiB and more, but malloc returns memory 16 bytes past a 4 KiB page, so the first and last
partial 2 MiB of such an array still fault in one 4 KiB page at a time; starting on a 2 MiB boundary
lets all of it come in 2 MiB at a time.  For a new 64 MiB dequantize output that cut the time from
3.7 to 2.9 ms (2 threads; docs/benchmarks.md).  The extra 2 MiB of address space is never touched, so it
costs no memory.
"""
from __future__ import annotations

import math

import numpy as np

HUGE_PAGE = 2 << 20
# below this numpy does not ask for huge pages, so alignment would buy nothing
ALIGN_MIN_BYTES = 4 << 20


def new_array(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, like ``np.empty``; large ones start on a 2 MiB boundary
    (they are then views of a slightly larger buffer: ``owndata`` is False)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + HUGE_PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)
