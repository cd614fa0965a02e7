# OpenMP queries shared by every kernel extension (serial stubs without OpenMP): see qcore_omp.h.
cdef extern from "qcore_omp.h" nogil:
    int qcore_omp_max_threads()  # omp_get_max_threads(): honours OMP_NUM_THREADS; 1 without OpenMP
    int qcore_have_openmp()


cdef inline int qcore_threads_for(Py_ssize_t work, Py_ssize_t par_min, Py_ssize_t per_thread) noexcept nogil:
    """Threads for ``work`` elements: 1 below ``par_min`` (a parallel region costs microseconds), else
    omp_get_max_threads() capped at one thread per ``per_thread`` elements."""
    if work < par_min:
        return 1
    cdef int nt = qcore_omp_max_threads()
    cdef Py_ssize_t cap = work // per_thread
    if nt > cap:
        nt = <int>cap
    return nt if nt > 1 else 1
