# OpenMP queries shared by every kernel extension (serial stubs without OpenMP): see qcore_omp.h.
cdef extern from "qcore_omp.h" nogil:
    int qcore_omp_max_threads()  # omp_get_max_threads(): honours OMP_NUM_THREADS; 1 without OpenMP
    int qcore_have_openmp()
