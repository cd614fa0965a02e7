# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""k-means fitting kernels (``qcore_plugins._kmeans``): the ``cython`` kernel's ``kmeans_fit_groups`` and
``kmeans_fit_weighted`` (capability ``"kmeans_fit"``, qcore/kernels/kmeans.py), which the ``kmeans`` scheme
fits its codebooks with.  The work of one row is in pyx/kmeans_kernels.h; here rows are spread over OpenMP
threads.

Arrays arrive validated by the capability's public methods: C-contiguous float32 rows, float64 weights,
sorted alternative codebooks.  Each row is computed by one thread from its own data only, so results are the
same bits whatever the thread count or schedule (``quantize_model`` on several workers relies on it).  The GIL
is released; scratch memory is per thread, so several Python threads may call at once.
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_omp_max_threads


cdef extern from "kmeans_kernels.h" nogil:
    ctypedef struct qc_km_scratch:
        pass
    qc_km_scratch *qc_km_alloc(int64_t n, int K)
    void qc_km_free(qc_km_scratch *s)
    int qc_km_fit_group(const float *row, int64_t n, int K, int max_iter, const float *alt, int f16, float *out,
                        qc_km_scratch *s)
    int qc_km_fit_weighted(const float *x, const double *w, int64_t n, int K, double tol, int max_iter,
                           float *out, qc_km_scratch *s)
    qc_km_scratch *qc_km_alloc_bins(int64_t bins, int K)
    int qc_km_fit_row(const float *row, int64_t n, int K, double lo, double hi, double tol_rel, int max_iter,
                      float *out, qc_km_scratch *s)
    float qc_km_round_f16(float f)
    int qc_km_select_isa(int level)
    double qc_km_cbrt(double w)

def _use_copy(int level):
    return qc_km_select_isa(level)


#: the instruction-set level this extension runs at (qcore/isa.py) and the copy of the sort it selects
#: (pyx/kmeans_kernels.h: a sorting network at AVX2 and AVX-512, a radix sort at baseline; the same sorted rows
#: whichever runs)
ISA = isa_switch(("baseline", "avx2", "avx512"), _use_copy)

# rows handed to a thread at a time (dynamic schedule: rows differ in their number of iterations)
cdef int64_t CHUNK = 16
# below this many values in all a call runs on one thread
cdef int64_t PAR_MIN = 1 << 14


cdef int _threads(int64_t rows, int64_t values) noexcept nogil:
    if values < PAR_MIN or rows < 2:
        return 1
    cdef int t = qcore_omp_max_threads()
    if t > rows:
        t = <int>rows
    return t if t > 0 else 1


def fit_groups(const float[:, ::1] rows, int K, int max_iter, alt, bint f16, float[:, ::1] out):
    """Codebooks of the groups ``rows`` into ``out`` (G, K); returns 0, or 1 if a value was NaN/Inf, 2 if an
    alternative codebook is unsorted or not finite (3: both)."""
    cdef int64_t G = rows.shape[0], n = rows.shape[1], g
    cdef const float[:, ::1] altv
    cdef const float *ap = NULL
    if alt is not None:
        altv = alt
        ap = &altv[0, 0]
    cdef int nt = _threads(G, G * n)
    cdef int bad = 0
    cdef int nomem[1]
    nomem[0] = 0
    cdef qc_km_scratch *s
    with nogil, parallel(num_threads=nt):
        s = qc_km_alloc(n, K)  # every thread its own scratch (and every thread meets the prange)
        for g in prange(G, schedule='dynamic', chunksize=CHUNK):
            if s == NULL:
                nomem[0] = 1
            else:
                bad |= qc_km_fit_group(&rows[g, 0], n, K, max_iter, (ap + g * K) if ap != NULL else NULL, f16,
                                       &out[g, 0], s)
        qc_km_free(s)
    if nomem[0]:
        raise MemoryError("kmeans_fit_groups: no memory for the scratch buffers")
    return bad


def fit_weighted(const float[:, ::1] x, const double[:, ::1] w, int K, double tol, int max_iter,
                 float[:, ::1] out, signed char[::1] ok):
    """Codebooks of the weighted rows into ``out`` (R, K); ``ok[r]``: 1, 0 where the start had equal entries,
    -1 where the row is invalid (unsorted, NaN/Inf, negative or no weights)."""
    cdef int64_t R = x.shape[0], n = x.shape[1], r
    cdef int nt = _threads(R, R * n)
    cdef int nomem[1]
    nomem[0] = 0
    cdef qc_km_scratch *s
    with nogil, parallel(num_threads=nt):
        s = qc_km_alloc(n, K)
        for r in prange(R, schedule='dynamic', chunksize=CHUNK):
            if s == NULL:
                nomem[0] = 1
            else:
                ok[r] = <signed char>qc_km_fit_weighted(&x[r, 0], &w[r, 0], n, K, tol, max_iter, &out[r, 0], s)
        qc_km_free(s)
    if nomem[0]:
        raise MemoryError("kmeans_fit_weighted: no memory for the scratch buffers")


def fit_rows(const float[:, ::1] rows, int K, int bins, const double[::1] lo, const double[::1] hi, double tol,
             int max_iter, float[:, ::1] out, signed char[::1] status):
    """Codebooks of the rows (a histogram of ``bins`` bins each, then the weighted fit) into ``out`` (R, K);
    ``status[r]`` as qc_km_fit_row returns it."""
    cdef int64_t R = rows.shape[0], n = rows.shape[1], r
    cdef int nt = _threads(R, R * n)
    cdef int nomem[1]
    nomem[0] = 0
    cdef qc_km_scratch *s
    with nogil, parallel(num_threads=nt):
        s = qc_km_alloc_bins(bins, K)
        for r in prange(R, schedule='dynamic', chunksize=CHUNK):
            if s == NULL:
                nomem[0] = 1
            else:
                status[r] = <signed char>qc_km_fit_row(&rows[r, 0], n, K, lo[r], hi[r], tol, max_iter, &out[r, 0], s)
        qc_km_free(s)
    if nomem[0]:
        raise MemoryError("kmeans_fit_rows: no memory for the scratch buffers")


def round_f16(const float[::1] v, float[::1] out):
    """``out[i]``: ``v[i]`` rounded to float16 and back (tests compare it with numpy's conversion)."""
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        out[i] = qc_km_round_f16(v[i])


def cbrt(const double[::1] v, double[::1] out):
    """``out[i]``: the cube root of ``v[i]`` as the kernel computes it (tests compare it with the reference)."""
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        out[i] = qc_km_cbrt(v[i])
