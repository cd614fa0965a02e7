# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Scale search for the ``linear`` scheme's symmetric 3- and 4-bit codes (``qcore_plugins._scalesearch``).

``search_scales(rows, dgrid, qmin, qmax)``: for each row of a C-contiguous float32 ``(R, L)`` array (one
group, channel or tensor per row), the scale ``±max|row| / d`` (``d`` from ``dgrid``, both signs) of least
squared error with codes clamped to ``[qmin, qmax]``.  See ``scalesearch_kernels.h``; the numpy reference
is ``plugins/schemes/linear.py:search_scales_reference``.  Input is validated there (finite, shapes).
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cnp.import_array()

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_threads_for


cdef extern from "scalesearch_kernels.h" nogil:
    float ss_row(const float *x, int64_t n, const float *dgrid, int nd, float qmin, float qmax, float *err_out)


def _use_copy(int level):
    return 0  # one copy, at the build's baseline (gcc vectorizes the float loops there)


#: the instruction-set level this extension runs at (qcore/isa.py); it has only a baseline copy
ISA = isa_switch(("baseline",), _use_copy)


def search_scales(const float[:, ::1] rows, const float[::1] dgrid, int qmin, int qmax):
    """``(scale, err)``: float32 ``(R,)`` arrays, the chosen scale per row and its squared error."""
    cdef Py_ssize_t R = rows.shape[0], L = rows.shape[1], r
    cdef int nd = <int>dgrid.shape[0]
    if nd < 1:
        raise ValueError("dgrid must hold at least one candidate")
    if qmin >= 0 or qmax <= 0:
        raise ValueError("qmin must be negative and qmax positive")
    scale = np.empty(R, np.float32)
    err = np.empty(R, np.float32)
    cdef float[::1] s = scale, e = err
    if R == 0:
        return scale, err
    if L == 0:
        scale[:] = 1.0
        err[:] = 0.0
        return scale, err
    cdef int nt = qcore_threads_for(R * L * nd, 1 << 16, 1 << 14)
    cdef float fqmin = qmin, fqmax = qmax
    cdef const float *base = &rows[0, 0]
    cdef const float *grid = &dgrid[0]
    for r in prange(R, nogil=True, schedule="static", num_threads=nt):
        s[r] = ss_row(base + r * L, L, grid, nd, fqmin, fqmax, &e[r])
    return scale, err
