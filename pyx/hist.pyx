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
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memmove

cnp.import_array()

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_omp_max_threads


cdef extern from "hist_kernels.h" nogil:
    int HIST_NSUB
    int32_t hist_bin(float v, double lo, double inv_w, int32_t nb)
    int hist_select_isa(int level)
    void hist_count_rows(const float *x, int64_t rows, int64_t len, int64_t xstride, double lo, double inv_w,
                         int32_t nb, uint32_t *h, int64_t hstride)
    int hist_count_checked(const float *x, int64_t n, double lo, double inv_w, int32_t nb, uint32_t *h,
                           double lo_limit, double hi_limit, float *mn, float *mx, int *stop, float *spill,
                           int64_t cap, int64_t *used)
    void hist_flush(uint32_t *h, int64_t nb, double *out)
    double hist_sq_error(const int64_t *idx, const double *cnt, int64_t m, double lo, double w, double g0, double s, double L)
    double hist_kl(const double *h, int64_t nb, int64_t s, int64_t e, int64_t nq)

# below this many elements a call runs on one thread (starting a parallel region costs microseconds)
cdef int64_t PARALLEL_MIN = 1 << 16
# values counted per round: no uint32 partial count can overflow within one (per thread, per bin)
cdef int64_t ROUND = 1 << 31
# piece of a per-tensor run handed to a thread (dynamic schedule: a descheduled thread holds back little)
cdef int64_t CHUNK = 1 << 16
# short-run layout: rows of a tile (about this many values) are counted channel by channel while in cache
cdef int64_t TILE = 1 << 14
# the short-run layout keeps (threads, C, bins) uint32 counts: at most this many
cdef int64_t SHORT_MAX = 1 << 24


def max_threads():
    """OpenMP threads a call may use (``OMP_NUM_THREADS``, threadpoolctl limits)."""
    return qcore_omp_max_threads()


cdef int _threads(int64_t work) noexcept nogil:
    if work < PARALLEL_MIN:
        return 1
    cdef int t = qcore_omp_max_threads()
    return t if t > 0 else 1


cdef int _count_flat(int nt, const float *px, int64_t n, double lo, double inv_w, int32_t nb, double *H, bint checked,
                     double lo_limit, double hi_limit, float *pmn, float *pmx, float *spill=NULL, int64_t cap=0,
                     int64_t *nspill=NULL) noexcept nogil:
    """Per tensor: the counts of ``px[0..n)`` added to ``H`` (``nb`` doubles).  ``checked``: also their min/max
    into ``pmn``/``pmx``; the counts of the values inside ``[lo_limit, hi_limit]`` are added, the others copied to
    ``spill`` (room for ``cap`` per thread, ``nt * cap`` floats; ``*nspill`` of them in use, packed at the front,
    at the end) — unless more than ``cap`` fall outside in all, or a value is NaN/Inf: then nothing is added.
    Returns the state (0 added, 1 too many outside, 2 NaN/Inf; always 0 unchecked) or -1 (out of memory).
    ``nt`` threads (the caller sized ``spill`` for them)."""
    cdef int64_t sub = HIST_NSUB * <int64_t> nb
    cdef uint32_t *part = <uint32_t *> calloc(nt * sub, sizeof(uint32_t))
    cdef double *acc = <double *> calloc(nb, sizeof(double))
    cdef float *tmn = <float *> malloc(nt * sizeof(float))
    cdef float *tmx = <float *> malloc(nt * sizeof(float))
    cdef int *tst = <int *> calloc(nt, sizeof(int))
    cdef int64_t *tused = <int64_t *> calloc(nt, sizeof(int64_t))
    cdef int stop = 0, st, state = 0, t
    cdef int64_t r0 = 0, r1, nch, ch, a, i, used
    if part == NULL or acc == NULL or tmn == NULL or tmx == NULL or tst == NULL or tused == NULL:
        free(part); free(acc); free(tmn); free(tmx); free(tst); free(tused)
        return -1
    for t in range(nt):
        tmn[t] = px[0]
        tmx[t] = px[0]
    while r0 < n:
        r1 = min(n, r0 + ROUND)
        nch = (r1 - r0 + CHUNK - 1) // CHUNK
        with parallel(num_threads=nt):
            t = threadid()
            for ch in prange(nch, schedule='dynamic'):
                a = r0 + ch * CHUNK
                if checked:
                    st = hist_count_checked(px + a, min(r1, a + CHUNK) - a, lo, inv_w, nb, part + t * sub,
                                            lo_limit, hi_limit, tmn + t, tmx + t, &stop, spill + t * cap, cap,
                                            tused + t)
                    if st > tst[t]:
                        tst[t] = st
                else:
                    hist_count_rows(px + a, 1, min(r1, a + CHUNK) - a, 0, lo, inv_w, nb, part + t * sub, nb)
        for t in range(nt):
            hist_flush(part + t * sub, nb, acc)
        r0 = r1
    for t in range(nt):
        state = max(state, tst[t])
        pmn[0] = min(pmn[0], tmn[t]) if t else tmn[t]
        pmx[0] = max(pmx[0], tmx[t]) if t else tmx[t]
    if nspill != NULL and state == 0:
        used = 0
        for t in range(nt):
            used += tused[t]
        if used > cap:  # each thread had room for cap values, the call has room for cap in all
            state = 1
    if state == 0:
        for i in range(nb):
            H[i] += acc[i]
    if nspill != NULL:  # pack the threads' spilled values at the front
        nspill[0] = 0
        for t in range(nt):
            memmove(spill + nspill[0], spill + t * cap, tused[t] * sizeof(float))
            nspill[0] += tused[t]
    free(part); free(acc); free(tmn); free(tmx); free(tst); free(tused)
    return state


def accumulate(const float[:, :, ::1] x3, const double[::1] lo, const double[::1] inv_w, double[:, ::1] hist):
    """Add the counts of ``x3`` (``(outer, C, inner)``) to ``hist`` ``(C, bins)``: value ``v`` of channel ``c``
    goes to bin ``trunc((v - lo[c]) * inv_w[c])`` in float64, clamped to ``[0, bins - 1]`` (``hist_bin``)."""
    cdef int64_t outer = x3.shape[0], C = x3.shape[1], inner = x3.shape[2]
    cdef int64_t nb = hist.shape[1]
    cdef int64_t n = outer * C * inner
    if hist.shape[0] != C or lo.shape[0] != C or inv_w.shape[0] != C:
        raise ValueError("accumulate: parameter shapes do not match the channels of x3")
    if nb >= (1 << 30):
        raise ValueError("accumulate: at most 2**30 bins")
    if n == 0 or nb == 0:
        return
    cdef const float *x = &x3[0, 0, 0]
    cdef double *H = &hist[0, 0]
    cdef int nt = _threads(n)
    cdef int64_t t, c, o, o0, o1, rows, per, step, i, tile, sub
    cdef int32_t nb32 = <int32_t> nb
    cdef uint32_t *part
    cdef float fdummy
    cdef int rc
    if C == 1:
        with nogil:
            rc = _count_flat(nt, x, n, lo[0], inv_w[0], nb32, H, False, 0.0, 0.0, &fdummy, &fdummy)
        if rc < 0:
            raise MemoryError()
    elif inner < 32 and outer >= 2 * nt and nt * C * nb <= SHORT_MAX:
        # short runs (e.g. channels last): threads split `outer`; each keeps (C, bins) counts and goes through
        # a tile of rows channel by channel while the tile is in cache
        part = <uint32_t *> calloc(nt * C * nb, sizeof(uint32_t))
        if part == NULL:
            raise MemoryError()
        tile = max(1, TILE // (C * inner))
        rows = max(1, ROUND // (C * inner))
        with nogil:
            o0 = 0
            while o0 < outer:
                o1 = min(outer, o0 + rows)
                per = (o1 - o0 + tile - 1) // tile
                with parallel(num_threads=nt):
                    t = threadid()
                    for step in prange(per, schedule='dynamic'):
                        o = o0 + step * tile
                        for c in range(C):
                            hist_count_rows(x + (o * C + c) * inner, min(o1, o + tile) - o, inner, C * inner,
                                            lo[c], inv_w[c], nb32, part + (t * C + c) * nb, 0)
                for t in range(nt):
                    for i in range(C * nb):
                        H[i] += part[t * C * nb + i]
                        part[t * C * nb + i] = 0
                o0 = o1
        free(part)
    else:
        # one channel per iteration, no merging: rows of `inner` values with stride C*inner
        sub = HIST_NSUB * nb
        part = <uint32_t *> calloc(nt * sub, sizeof(uint32_t))
        if part == NULL:
            raise MemoryError()
        rows = max(1, ROUND // inner)
        with nogil, parallel(num_threads=nt):
            t = threadid()
            for c in prange(C, schedule='dynamic'):
                o = 0
                while o < outer:
                    step = min(outer - o, rows)
                    hist_count_rows(x + (o * C + c) * inner, step, inner, C * inner, lo[c], inv_w[c], nb32,
                                    part + t * sub, nb)
                    hist_flush(part + t * sub, nb, H + c * nb)
                    o = o + step
        free(part)


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


def _use_copy(int level):
    return hist_select_isa(level)


#: the instruction-set level this extension runs at and the copy of the hist_kernels.h loops it selects (qcore/isa.py)
ISA = isa_switch(("baseline", "avx2", "avx512"), _use_copy)


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
                b = hist_bin(v, lo[r], sc[r], <int32_t> nb)
                cnt[r, b] += 1
                sm[r, b] += v
                if v < bmin[r, b]:
                    bmin[r, b] = v
                if v > bmax[r, b]:
                    bmax[r, b] = v


def count_flat(const float[::1] x, double lo, double width, double[:, ::1] hist,
               double lo_limit=-np.inf, double hi_limit=np.inf, int64_t spill=0):
    """Count the values of ``x`` into ``hist`` (shape ``(1, bins)``, bin ``i`` = ``[lo + i*width, ...)``) in one
    pass that also finds their min and max and whether all are finite.

    Values outside ``[lo_limit, hi_limit]`` are not counted: up to ``spill`` of them are returned (float32, in
    no particular order) for the caller to count later.  If more fall outside, or a value is NaN/Inf, ``hist``
    is left untouched (counting stops at the first block of values that overflows: the rest is only scanned for
    its min and max).  Returns ``(min, max, finite, added, outside)``; ``outside`` is None unless ``added``.
    """
    cdef int64_t n = x.shape[0], nb = hist.shape[1]
    if hist.shape[0] != 1 or nb == 0:
        raise ValueError("count_flat: hist must have shape (1, bins)")
    if nb >= (1 << 30):
        raise ValueError("count_flat: at most 2**30 bins")
    if n == 0:
        raise ValueError("count_flat: empty input")
    if not (width > 0):
        raise ValueError("count_flat: width must be > 0")
    if spill < 0:
        raise ValueError("count_flat: spill must be >= 0")
    spill = min(spill, n)
    cdef int nt = _threads(n)
    out_arr = np.empty(max(1, nt * spill), np.float32)
    cdef float[::1] sp = out_arr
    cdef float mn = 0, mx = 0
    cdef int state
    cdef int64_t used = 0
    with nogil:
        state = _count_flat(nt, &x[0], n, lo, 1.0 / width, <int32_t> nb, &hist[0, 0], True, lo_limit, hi_limit, &mn, &mx,
                            &sp[0], spill, &used)
    if state < 0:
        raise MemoryError()
    outside = out_arr[:used].copy() if state == 0 else None
    return float(mn), float(mx), state != 2, state == 0, outside
