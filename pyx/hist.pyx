# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Histogram kernels (``qcore_plugins._hist``): the ``cython`` kernel's ``histogram``, ``minmax_histogram``,
``bin_stats``, ``histogram_sq_error`` and ``histogram_kl`` (plugins/kernels/cython_kernel.py), used by the
histogram observers and the ``kmeans`` scheme.  The one histogram implementation in C (pyx/hist_kernels.h).

Arrays arrive validated by :class:`qcore.Kernel`'s public methods (qcore/kernels/base.py): float32 input viewed
as C-contiguous ``(outer, C, inner)``, per-channel parameters as float64 ``(C,)``, histograms as float64
``(C, bins)``.  Every loop releases the GIL and runs on OpenMP threads: per-thread partial histograms of
``uint32`` counts are merged once per call.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport calloc, malloc, free

cnp.import_array()

from qcore_omp cimport qcore_omp_max_threads


cdef extern from "hist_kernels.h" nogil:
    int hist_minmax_run(const float *x, int64_t n, float *lo, float *hi)
    int64_t hist_bin(float v, double lo, double inv_w, int64_t nb)
    int hist_cpu_level()
    int hist_select_isa(int level)
    void hist_count_run4(const float *x, int64_t n, double lo, double inv_w, int64_t nb, uint32_t *h)
    void hist_count_rows4(const float *x, int64_t rows, int64_t len, int64_t stride,
                          double lo, double inv_w, int64_t nb, uint32_t *h)
    void hist_flush4(uint32_t *h4, int64_t nb, double *out)
    double hist_sq_error(const int64_t *idx, const double *cnt, int64_t m, double lo, double w, double g0, double s, double L)
    double hist_kl(const double *h, int64_t nb, int64_t s, int64_t e, int64_t nq)
    int hist_count_fused(const float *x, int64_t n, float lo, float inv_w, int64_t nb, uint32_t *h,
                         float *mn, float *mx)

# below this many elements a call runs on one thread (starting a parallel region costs microseconds)
cdef int64_t PARALLEL_MIN = 1 << 16
# uint32 partial counts are flushed to float64 at least this often (per thread, per channel)
cdef int64_t FLUSH_EVERY = 1 << 30
# smallest piece of work handed to a thread by the dynamic schedules
cdef int64_t CHUNK_MIN = 1 << 17


def max_threads():
    """OpenMP threads a call may use (``OMP_NUM_THREADS``, threadpoolctl limits)."""
    return qcore_omp_max_threads()


cdef int _threads(int64_t work) noexcept nogil:
    if work < PARALLEL_MIN:
        return 1
    cdef int t = qcore_omp_max_threads()
    return t if t > 0 else 1


def accumulate(const float[:, :, ::1] x3, const double[::1] lo, const double[::1] inv_w, double[:, ::1] hist):
    """Add the counts of ``x3`` (``(outer, C, inner)``) to ``hist`` ``(C, bins)``: value ``v`` of channel ``c``
    goes to bin ``floor((v - lo[c]) * inv_w[c])`` clamped to ``[0, bins - 1]``."""
    cdef int64_t outer = x3.shape[0], C = x3.shape[1], inner = x3.shape[2]
    cdef int64_t nb = hist.shape[1]
    cdef int64_t n = outer * C * inner
    if hist.shape[0] != C or lo.shape[0] != C or inv_w.shape[0] != C:
        raise ValueError("accumulate: parameter shapes do not match the channels of x3")
    if n == 0 or nb == 0:
        return
    cdef const float *x = &x3[0, 0, 0]
    cdef double *H = &hist[0, 0]
    cdef int nt = _threads(n)
    cdef int64_t t, c, a, b, per, o, s, step, i, nch, ch
    cdef uint32_t *part
    cdef double *dpart
    if C == 1:
        count_flat(np.asarray(x3).reshape(-1), lo[0], 1.0 / inv_w[0], hist)
    elif inner < 32 and outer >= 2 * nt and C * nb * nt <= (1 << 24):
        # small inner runs (e.g. channels last): split `outer`, per-thread (C, bins) partial histograms
        per = (outer + nt - 1) // nt
        part = <uint32_t *> calloc(nt * C * nb, sizeof(uint32_t))
        dpart = <double *> calloc(nt * C * nb, sizeof(double))
        if part == NULL or dpart == NULL:
            free(part); free(dpart)
            raise MemoryError()
        with nogil:
            for t in prange(nt, num_threads=nt, schedule='static'):
                a = t * per
                b = min(outer, a + per)
                s = a
                while s < b:
                    step = min(b - s, FLUSH_EVERY // inner)
                    for o in range(s, s + step):
                        for c in range(C):
                            hist_count_run_1(x + (o * C + c) * inner, inner, lo[c], inv_w[c], nb,
                                             part + (t * C + c) * nb)
                    for i in range(C * nb):
                        dpart[t * C * nb + i] += part[t * C * nb + i]
                        part[t * C * nb + i] = 0
                    s = s + step
            for t in range(nt):
                for i in range(C * nb):
                    H[i] += dpart[t * C * nb + i]
        free(part); free(dpart)
    else:
        # one channel per iteration, no merging: rows of `inner` values with stride C*inner
        part = <uint32_t *> calloc(nt * 4 * nb, sizeof(uint32_t))
        if part == NULL:
            raise MemoryError()
        with nogil, parallel(num_threads=nt):
            t = threadid()
            for c in prange(C, schedule='static'):
                o = 0
                while o < outer:
                    step = min(outer - o, max(1, FLUSH_EVERY // inner))
                    hist_count_rows4(x + (o * C + c) * inner, step, inner, C * inner, lo[c], inv_w[c], nb,
                                     part + t * 4 * nb)
                    hist_flush4(part + t * 4 * nb, nb, H + c * nb)
                    o = o + step
        free(part)


cdef inline void hist_count_run_1(const float *x, int64_t n, double lo, double inv_w, int64_t nb,
                                  uint32_t *h) noexcept nogil:
    cdef int64_t i, bb
    cdef double v
    for i in range(n):
        v = (x[i] - lo) * inv_w
        # clamp before converting: NaN and values beyond int64 (Inf) must never index outside [0, nb)
        if not (v >= 0):
            bb = 0
        elif v >= nb - 1:
            bb = nb - 1
        else:
            bb = <int64_t> v
        h[bb] += 1


def sq_error(const int64_t[:, ::1] idx, const double[:, ::1] cnt, const double[::1] lo, const double[::1] w,
             const double[:, ::1] g0, const double[:, ::1] step, double levels):
    """Squared quantization error of every candidate grid: ``out[c, k]`` is the error of channel ``c``'s
    histogram on the grid ``g0[c, k] + j * step[c, k]``, ``j = 0..levels`` (values beyond clamp).

    The histogram comes compacted: channel ``c`` holds ``cnt[c, m]`` values in bin ``idx[c, m]`` (bin ``i`` is
    ``[lo[c] + i * w[c], lo[c] + (i + 1) * w[c])``); padding entries have ``cnt == 0``."""
    cdef int64_t C = idx.shape[0], M = idx.shape[1], K = g0.shape[1]
    if (cnt.shape[0] != C or cnt.shape[1] != M or lo.shape[0] != C or w.shape[0] != C or g0.shape[0] != C
            or step.shape[0] != C or step.shape[1] != K):
        raise ValueError("sq_error: shapes do not match")
    out_arr = np.empty((C, K), np.float64)
    cdef double[:, ::1] out = out_arr
    cdef int64_t i, c, k
    cdef int nt = _threads(C * K * M // 2)
    if C * K == 0:
        return out_arr
    if M == 0:
        out_arr[...] = 0.0
        return out_arr
    with nogil:
        for i in prange(C * K, num_threads=nt, schedule='dynamic', chunksize=4):
            c = i // K
            k = i % K
            out[c, k] = hist_sq_error(&idx[c, 0], &cnt[c, 0], M, lo[c], w[c], g0[c, k], step[c, k], levels)
    return out_arr


def kl_divergence(const double[:, ::1] hist, const int64_t[:, ::1] start, const int64_t[:, ::1] end, int64_t nq):
    """KL divergence of clipping channel ``c``'s histogram to bins ``[start[c, k], end[c, k])`` and
    quantizing them to ``nq`` levels (TensorRT's entropy calibration); ``inf`` for empty windows."""
    cdef int64_t C = hist.shape[0], nb = hist.shape[1], K = start.shape[1]
    if start.shape[0] != C or end.shape[0] != C or end.shape[1] != K:
        raise ValueError("kl_divergence: shapes do not match")
    out_arr = np.empty((C, K), np.float64)
    cdef double[:, ::1] out = out_arr
    cdef int64_t idx, c, k, s, e
    cdef int nt = _threads(C * K * nb // 4)
    if C * K == 0:
        return out_arr
    with nogil:
        for idx in prange(C * K, num_threads=nt, schedule='dynamic', chunksize=4):
            c = idx // K
            k = idx % K
            s = max(0, min(nb, start[c, k]))
            e = max(0, min(nb, end[c, k]))
            out[c, k] = hist_kl(&hist[c, 0], nb, s, e, nq)
    return out_arr


# instruction-set copies (QCORE_ISA through qcore/isa.py, like the other extensions): baseline or AVX2
_ISA_NAMES = ("baseline", "avx2")
cdef int _isa_level = 0


def cpu_isa():
    """The best copy this CPU runs: 'baseline' or 'avx2'."""
    return _ISA_NAMES[hist_cpu_level()]


def select_isa(name):
    """Use the ``name`` copy (clipped to what the CPU runs); returns the copy in use (tests and benchmarks)."""
    global _isa_level
    if name not in _ISA_NAMES:
        raise ValueError(f"ISA must be one of {_ISA_NAMES}, got {name!r}")
    _isa_level = hist_select_isa(_ISA_NAMES.index(name))
    return _ISA_NAMES[_isa_level]


def current_isa():
    """The copy in use."""
    return _ISA_NAMES[_isa_level]


def _init_isa():
    from qcore.isa import choose
    return hist_select_isa(choose(_ISA_NAMES, [True, hist_cpu_level() >= 1]))


_isa_level = _init_isa()


def bin_stats(const float[:, ::1] x, const double[::1] lo, const double[::1] sc,
              int64_t[:, ::1] cnt, double[:, ::1] sm, float[:, ::1] bmin, float[:, ::1] bmax):
    """Row ``r`` of ``x`` into ``nb = cnt.shape[1]`` equal bins starting at ``lo[r]``, ``sc[r]`` bins per unit
    (``hist_bin``, the binning of every histogram here): per bin the count, sum, minimum and maximum (the
    weighted points k-means is fitted on).  Accumulates into the outputs (initialise counts/sums with 0, bmin
    with +inf, bmax with -inf); values beyond the range land in the first/last bin."""
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1], nb = cnt.shape[1], r, i
    cdef int64_t b
    cdef float v
    if R == 0 or n == 0:
        return
    if (lo.shape[0] != R or sc.shape[0] != R or cnt.shape[0] != R or sm.shape[0] != R or bmin.shape[0] != R
            or bmax.shape[0] != R or sm.shape[1] != nb or bmin.shape[1] != nb or bmax.shape[1] != nb or nb == 0):
        raise ValueError("bin_stats: shapes do not match")
    cdef int nt = _threads(R * n)
    with nogil:
        for r in prange(R, schedule='static', num_threads=nt):
            for i in range(n):
                v = x[r, i]
                b = hist_bin(v, lo[r], sc[r], nb)
                cnt[r, b] += 1
                sm[r, b] += v
                if v < bmin[r, b]:
                    bmin[r, b] = v
                if v > bmax[r, b]:
                    bmax[r, b] = v


def count_flat(const float[::1] x, double lo, double width, double[:, ::1] hist,
               double lo_limit=-np.inf, double hi_limit=np.inf):
    """Count the values of ``x`` into ``hist`` (shape ``(1, bins)``, bin ``i`` = ``[lo + i*width, ...)``) in one
    pass that also finds their min and max and whether all are finite.

    The counts are added only if every value is finite and within ``[lo_limit, hi_limit]``; otherwise ``hist`` is
    left untouched.  Returns ``(min, max, finite, added)``.
    """
    cdef int64_t n = x.shape[0], nb = hist.shape[1]
    if hist.shape[0] != 1 or nb == 0:
        raise ValueError("count_flat: hist must have shape (1, bins)")
    if n == 0:
        raise ValueError("count_flat: empty input")
    if not (width > 0):
        raise ValueError("count_flat: width must be > 0")
    cdef const float *px = &x[0]
    cdef double *H = &hist[0, 0]
    cdef float flo = <float> lo
    cdef float finv = <float> (1.0 / width)
    cdef int nt = _threads(n)
    cdef int64_t nch = max(1, min(64, n // CHUNK_MIN)) if nt > 1 else 1
    cdef int64_t per = min((n + nch - 1) // nch, FLUSH_EVERY)
    nch = (n + per - 1) // per
    cdef uint32_t *part = <uint32_t *> calloc(nt * 4 * nb, sizeof(uint32_t))
    cdef double *dpart = <double *> calloc(nt * nb, sizeof(double))
    cdef float *cmn = <float *> malloc(nch * sizeof(float))
    cdef float *cmx = <float *> malloc(nch * sizeof(float))
    cdef int *cbad = <int *> calloc(nch, sizeof(int))
    if part == NULL or dpart == NULL or cmn == NULL or cmx == NULL or cbad == NULL:
        free(part); free(dpart); free(cmn); free(cmx); free(cbad)
        raise MemoryError()
    cdef int64_t t, ch, a, b, i
    cdef float mn, mx
    cdef int bad = 0
    cdef bint add
    # ranges near float32's limit: (v - lo) in float32 could overflow, so count in float64 there
    cdef bint wide = not (-1e37 < lo < 1e37 and -1e37 < lo + nb * width < 1e37)
    t = 0
    with nogil:
        with parallel(num_threads=nt):
            t = threadid()
            for ch in prange(nch, schedule='dynamic'):
                a = ch * per
                b = min(n, a + per)
                cmn[ch] = px[a]
                cmx[ch] = px[a]
                if wide:  # float32 (v - lo) could overflow: scalar float64 bins, separate min/max pass
                    cbad[ch] = hist_minmax_run(px + a, b - a, cmn + ch, cmx + ch)
                    if not cbad[ch]:
                        hist_count_run4(px + a, b - a, lo, 1.0 / width, nb, part + t * 4 * nb)
                else:
                    cbad[ch] = hist_count_fused(px + a, b - a, flo, finv, nb, part + t * 4 * nb, cmn + ch, cmx + ch)
                hist_flush4(part + t * 4 * nb, nb, dpart + t * nb)
        mn = cmn[0]
        mx = cmx[0]
        for ch in range(nch):
            bad |= cbad[ch]
            if cmn[ch] < mn:
                mn = cmn[ch]
            if cmx[ch] > mx:
                mx = cmx[ch]
        add = (not bad) and mn >= lo_limit and mx <= hi_limit
        if add:
            for t in range(nt):
                for i in range(nb):
                    H[i] += dpart[t * nb + i]
    free(part); free(dpart); free(cmn); free(cmx); free(cbad)
    return float(mn), float(mx), not bad, bool(add)
