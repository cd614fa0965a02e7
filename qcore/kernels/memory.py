"""Allocation of kernel outputs.

A large new array is placed on a 2 MiB boundary.  numpy asks the OS for transparent huge pages on
allocations of 4 MiB and more, but malloc returns memory 16 bytes past a 4 KiB page, so the first and last
partial 2 MiB of such an array still fault in one 4 KiB page at a time; starting on a 2 MiB boundary
lets all of it come in 2 MiB at a time.  For a new 64 MiB dequantize output that cut the median time from
4.3-8.1 to 3.4-3.7 ms (2 threads, alternating A/B in one process; docs/benchmarks.md).  The extra 2 MiB
of address space is never touched, so it costs no memory.

Only from 32 MiB: glibc serves every allocation that large with a fresh mmap (its largest dynamic mmap
threshold), so its pages are always faulted in anew and alignment decides their size.  Smaller blocks are
often reused from the heap, already mapped; there the 2 MiB of padding only moved blocks around and made
a 16 MiB quantize output 0.1-0.5 ms slower.
"""
from __future__ import annotations

import math

import numpy as np

HUGE_PAGE = 2 << 20
# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: blocks this large are always new mappings
ALIGN_MIN_BYTES = 32 << 20


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
