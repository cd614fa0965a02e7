# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Codebook kernels (``qcore_plugins._codebook``): the ``cython`` kernel's ``lut_decode``, ``nearest_entry``,
``nearest_entry_sse``, ``log_encode`` and ``log_sse`` (plugins/kernels/cython_kernel.py), which the ``log``
and ``kmeans`` schemes use.

Called with arguments already validated by :class:`qcore.Kernel`'s public methods (qcore/kernels/base.py):
C-contiguous float32 / uint8 / int8 arrays of consistent shapes.  Every function releases the
GIL, splits its work into chunks run by OpenMP threads (``prange(schedule='static')``, thread count from
``omp_get_max_threads()``, one thread below ``PAR_MIN`` elements) and shares no mutable state, so
several Python threads may call it at once.  Per-chunk partial sums are reduced in a fixed order, so
results do not depend on the thread count.

Layout: ``x`` is the ``(outer, C, inner)`` view of a tensor, ``C`` the number of parameter sets (1 per
tensor).  Run ``r`` (``outer*C`` of them, ``inner`` elements each) uses the parameters of channel ``r % C``.

Non-finite input: the encoders OR-reduce the float exponent bits and return False if any value was
NaN/Inf (the caller raises ``qcore.InputError``); codes written for such values are meaningless.
"""
from cython.parallel cimport prange
from libc.math cimport fabsf
from libc.stdint cimport int8_t, int64_t, uint8_t, uint32_t
from libc.string cimport memcpy

import numpy as np


from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_have_openmp, qcore_omp_max_threads, qcore_threads_for


cdef extern from "codebook_kernels.h" nogil:
    double (*qc_log_sse)(const float *, Py_ssize_t, float, int, uint32_t, float) noexcept nogil
    int (*qc_cb_count)(const float *, uint8_t *, Py_ssize_t, const float *, int) noexcept nogil
    float qc_cb_f32_floor(double m)
    int QC_CB_COUNT_MAX
    int qc_codebook_select_isa(int level)


cdef Py_ssize_t PAR_MIN = 1 << 15    # below this many elements: one thread
cdef Py_ssize_t CHUNK = 1 << 14      # elements per task when a run is split


def max_threads():
    return qcore_omp_max_threads()


def have_openmp():
    return bool(qcore_have_openmp())


def _use_copy(int level):
    return qc_codebook_select_isa(level)


#: the instruction-set level this extension runs at and the copy of the codebook_kernels.h loops it selects (qcore/isa.py)
ISA = isa_switch(("baseline", "avx2", "avx512"), _use_copy)


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return qcore_threads_for(work, PAR_MIN, CHUNK)


cdef inline uint32_t _fbits(float f) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &f, 4)
    return u


# ----------------------------------------------------------------------------------------------------
# log scheme:  |x| ~ s * 2^(m - L),  m = 1..L;  m = 0 is zero.  Code = +-m.
#
# y = fl(|x| / s);  y = 1.f * 2^E (float bits);  level exponent e = E + (f >= T)  (T = 0.5 of the mantissa
# for rounding to the nearest level in value, sqrt(2)-1 for rounding in log2); m = min(e + L, L);
# m < 1 becomes 1 if y >= zthr (closer to the smallest level than to zero) else 0.

cdef inline int _log_mag(float y, int L, uint32_t T, float zthr) noexcept nogil:
    cdef uint32_t b = _fbits(y)
    cdef int m = <int>(b >> 23) - 127 + <int>((b & 0x7FFFFF) >= T) + L
    if m > L:
        m = L
    if m < 1:
        m = 1
    if not (y >= zthr):
        m = 0
    return m


cdef inline int _log_run(const float *x, int8_t *q, Py_ssize_t n, float s, int L, uint32_t T,
                         float zthr) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t bad = 0, b
    cdef int m
    cdef float v
    for i in range(n):
        v = x[i]
        b = _fbits(v)
        bad |= (~b) & 0x7F800000 == 0
        m = _log_mag(fabsf(v) / s, L, T, zthr)
        q[i] = <int8_t>(-m if (b >> 31) else m)
    return bad != 0


cdef inline void _split(Py_ssize_t R, Py_ssize_t n, Py_ssize_t *k, Py_ssize_t *clen) noexcept nogil:
    k[0] = (n + CHUNK - 1) // CHUNK if R * n >= PAR_MIN else 1
    if k[0] < 1:
        k[0] = 1
    clen[0] = (n + k[0] - 1) // k[0]


def log_encode(const float[:, :, ::1] x, const float[::1] scale, int L, uint32_t T, float zthr,
               int8_t[:, :, ::1] out):
    """Signed log codes of ``x`` into ``out``; False if some input was NaN/Inf."""
    cdef Py_ssize_t O = x.shape[0], C = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t R = O * C, k, clen, t, r, s, e, c
    if R == 0 or n == 0:
        return True
    _split(R, n, &k, &clen)
    cdef int nt = _threads(R * n)
    cdef const float *xp = &x[0, 0, 0]
    cdef int8_t *qp = &out[0, 0, 0]
    cdef int bad = 0
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                bad += _log_run(xp + r * n + s, qp + r * n + s, e - s, scale[c], L, T, zthr)
    return bad == 0


def log_sse(const float[:, :, ::1] x, const float[::1] scale, int L, uint32_t T, float zthr):
    """Per-channel sum of squared errors of the log quantizer with ``scale`` (level m of channel c:
    ``scale[c] * 2^(m-L)``, 0 for m = 0)."""
    if not 1 <= L <= 127:  # 2^(m-L) must be a normal float (codebook_kernels.h)
        raise ValueError(f"L must be in [1, 127], got {L}")
    cdef Py_ssize_t O = x.shape[0], C = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t R = O * C, k, clen, t, r, s, e, c
    sse = np.zeros(C, np.float64)
    if R == 0 or n == 0:
        return sse
    _split(R, n, &k, &clen)
    part = np.zeros(R * k, np.float64)
    cdef double[::1] pv = part
    cdef int nt = _threads(R * n)
    cdef const float *xp = &x[0, 0, 0]
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                pv[t] = qc_log_sse(xp + r * n + s, e - s, scale[c], L, T, zthr)
    return part.reshape(O, C, k).sum(axis=(0, 2))


# ----------------------------------------------------------------------------------------------------
# decode through a table: out = table[c, code]  (codes read as uint8; int8 codes index as code & 0xFF)

cdef inline void _lut_run(const uint8_t *q, float *o, Py_ssize_t n, const float *tab) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = tab[q[i]]


def lut_decode(const uint8_t[:, :, ::1] q, const float[:, ::1] table, float[:, :, ::1] out):
    """``out[o, c, i] = table[c, q[o, c, i]]``; ``table`` is ``(C, 256)``."""
    cdef Py_ssize_t O = q.shape[0], C = q.shape[1], n = q.shape[2]
    cdef Py_ssize_t R = O * C, k, clen, t, r, s, e, c
    if R == 0 or n == 0:
        return
    if table.shape[0] != C or table.shape[1] != 256 or out.shape[0] != O or out.shape[1] != C or out.shape[2] != n:
        raise ValueError("lut_decode: table must be (C, 256) and out shaped like q")
    _split(R, n, &k, &clen)
    cdef int nt = _threads(R * n)
    cdef const uint8_t *qp = &q[0, 0, 0]
    cdef float *op = &out[0, 0, 0]
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                _lut_run(qp + r * n + s, op + r * n + s, e - s, &table[c, 0])


# ----------------------------------------------------------------------------------------------------
# kmeans: nearest entry of a sorted codebook of K = 2^bits entries, by branchless binary search over the
# K-1 midpoints (double, exact: (a+b)/2 of two floats).  code = number of midpoints < x, so a value exactly
# on a midpoint takes the lower entry.  Up to 16 entries the midpoints below are counted instead
# (qc_cb_count in codebook_kernels.h, vectorized; the same codes).

cdef inline int _cb_code(double v, const double *mid, int half) noexcept nogil:
    cdef int pos = 0, step = half
    while step > 0:
        if mid[pos + step - 1] < v:
            pos = pos + step
        step = step >> 1
    return pos


cdef inline int _cb_run(const float *x, uint8_t *q, Py_ssize_t n, const double *mid, int half) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t bad = 0
    cdef float v
    cdef float mf[16]
    cdef int j
    if 2 * half - 1 <= QC_CB_COUNT_MAX:  # up to 16 entries: count the midpoints below (codebook_kernels.h)
        for j in range(2 * half - 1):
            mf[j] = qc_cb_f32_floor(mid[j])
        return qc_cb_count(x, q, n, mf, 2 * half - 1)
    for i in range(n):
        v = x[i]
        bad |= (~_fbits(v)) & 0x7F800000 == 0
        q[i] = <uint8_t>_cb_code(v, mid, half)
    return bad != 0


cdef inline double _cb_sse_run(const float *x, Py_ssize_t n, const double *mid, int half,
                               const float *cb) noexcept nogil:
    cdef Py_ssize_t i, b, e
    cdef double acc = 0.0, d, v
    cdef float mf[16]
    cdef uint8_t codes[256]
    cdef int j
    if 2 * half - 1 <= QC_CB_COUNT_MAX:  # codes a block at a time by counting (as _cb_run), summed in the same order
        for j in range(2 * half - 1):
            mf[j] = qc_cb_f32_floor(mid[j])
        b = 0
        while b < n:
            e = n - b if n - b < 256 else 256
            qc_cb_count(x + b, codes, e, mf, 2 * half - 1)
            for i in range(e):
                d = <double>x[b + i] - <double>cb[codes[i]]
                acc += d * d
            b += e
        return acc
    for i in range(n):
        v = x[i]
        d = v - <double>cb[_cb_code(v, mid, half)]
        acc += d * d
    return acc


def cb_assign(const float[:, :, ::1] x, const double[:, ::1] mid, uint8_t[:, :, ::1] out):
    """Codes (indices of the nearest codebook entry) of ``x`` into ``out``; False if NaN/Inf was seen.

    ``mid`` is ``(C, K-1)`` with ``K`` a power of two >= 2.
    """
    cdef Py_ssize_t O = x.shape[0], C = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t R = O * C, k, clen, t, r, s, e, c
    cdef int half = <int>((mid.shape[1] + 1) // 2)
    if R == 0 or n == 0:
        return True
    _split(R, n, &k, &clen)
    cdef int nt = _threads(R * n)
    cdef const float *xp = &x[0, 0, 0]
    cdef uint8_t *qp = &out[0, 0, 0]
    cdef int bad = 0
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                bad += _cb_run(xp + r * n + s, qp + r * n + s, e - s, &mid[c, 0], half)
    return bad == 0


def cb_sse(const float[:, :, ::1] x, const double[:, ::1] mid, const float[:, ::1] codebook):
    """Per-channel sum of squared errors when each value takes its nearest codebook entry."""
    cdef Py_ssize_t O = x.shape[0], C = x.shape[1], n = x.shape[2]
    cdef Py_ssize_t R = O * C, k, clen, t, r, s, e, c
    cdef int half = <int>((mid.shape[1] + 1) // 2)
    if R == 0 or n == 0:
        return np.zeros(C, np.float64)
    _split(R, n, &k, &clen)
    part = np.zeros(R * k, np.float64)
    cdef double[::1] pv = part
    cdef int nt = _threads(R * n)
    cdef const float *xp = &x[0, 0, 0]
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                pv[t] = _cb_sse_run(xp + r * n + s, e - s, &mid[c, 0], half, &codebook[c, 0])
    return part.reshape(O, C, k).sum(axis=(0, 2))
