# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Fast kernels of qcore's ``cython`` kernel plugin: affine quantize / dequantize, min/max, bit packing.

Called by ``qcore_plugins.kernels.cython_kernel.CythonKernel`` with arguments already validated by
``qcore.Kernel``: contiguous float32 / uint8 arrays with consistent shapes.  Every function releases the
GIL, runs its loops over OpenMP threads (``prange(schedule='static')``) when the work is large enough,
and uses no shared mutable state, so it is safe to call from several Python threads at once.

Layouts (the Python side reshapes the ``(outer, C, inner)`` views into one of these):

* *runs*: ``x`` is ``(R, n)``; row ``r`` is one run of ``n`` elements with the scalar parameters of
  channel ``r % C``.  Long runs are split into chunks so even one run (per-tensor) uses every thread.
* *rows*: ``x`` is ``(R, L)``; element ``[r, i]`` uses parameter ``i`` of vectors of length ``L``
  (per-channel along the last axis, where parameters change from one element to the next).

The inner loops are C helpers in ``quant_kernels.h`` (vectorized at baseline SSE2, with AVX2 and
AVX-512 copies; ``ISA``, the extension's ``qcore.isa.Switch``, picks one, capped by ``QCORE_ISA``).
"""

from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_have_openmp, qcore_omp_max_threads, qcore_threads_for


cdef extern from "quant_kernels.h" nogil:
    ctypedef struct qc_ops_t:
        int (*quant_run)(const float *, uint8_t *, Py_ssize_t, float, float, float, float) noexcept nogil
        int (*quant_vec)(const float *, uint8_t *, Py_ssize_t, const float *, const float *, float, float) noexcept nogil
        void (*deq_run_s8)(const int8_t *, float *, Py_ssize_t, int32_t, float) noexcept nogil
        void (*deq_run_u8)(const uint8_t *, float *, Py_ssize_t, int32_t, float) noexcept nogil
        void (*deq_vec_s8)(const int8_t *, float *, Py_ssize_t, const int32_t *, const float *) noexcept nogil
        void (*deq_vec_u8)(const uint8_t *, float *, Py_ssize_t, const int32_t *, const float *) noexcept nogil
        void (*minmax_run)(const float *, Py_ssize_t, float *, float *) noexcept nogil
        void (*minmax_vec)(const float *, Py_ssize_t, float *, float *) noexcept nogil
        int (*quant_run_stream)(const float *, uint8_t *, Py_ssize_t, float, float, float, float) noexcept nogil
        void (*deq_run_s8_stream)(const int8_t *, float *, Py_ssize_t, int32_t, float) noexcept nogil
        void (*deq_run_u8_stream)(const uint8_t *, float *, Py_ssize_t, int32_t, float) noexcept nogil
    qc_ops_t qc_ops
    int qc_stream_output(const void *out, size_t out_bytes, size_t in_bytes)
    int qc_stream_mode
    int qc_select_isa(int level)
    int qc_quant_run_exact(const float *, uint8_t *, Py_ssize_t, float, float, float, float)
    int qc_quant_vec_exact(const float *, uint8_t *, Py_ssize_t, const float *, const float *, float, float)
    float QC_MIN_UPD(float m, float v)
    float QC_MAX_UPD(float m, float v)
    void qc_pack_full(const uint8_t *c, Py_ssize_t n, int bits, uint8_t *out)
    void qc_pack_tail(const uint8_t *c, Py_ssize_t n, int bits, uint8_t *out)
    void qc_unpack_full(const uint8_t *p, Py_ssize_t n, int bits, int is_signed, uint8_t *out)
    void qc_unpack_tail(const uint8_t *p, Py_ssize_t n, int bits, int is_signed, uint8_t *out)


# Below PAR_MIN elements a call runs on one thread (opening a parallel region costs microseconds);
# above it, at most one thread per CHUNK_MIN elements.
cdef Py_ssize_t PAR_MIN = 1 << 16
cdef Py_ssize_t CHUNK_MIN = 1 << 14
# a run is never split into pieces shorter than this
cdef Py_ssize_t SPLIT_MIN = 4096

def _use_copy(int level):
    return qc_select_isa(level)


#: the instruction-set level this extension runs at and the copy it selects (qcore/isa.py)
ISA = isa_switch(("baseline", "avx2", "avx512"), _use_copy)


_STREAM_MODES = ("auto", "always", "never")


def set_streaming(mode):
    """Streaming (non-temporal) output stores for long quantize/dequantize runs: ``"auto"`` (default: for
    passes larger than the cache into memory already mapped in), ``"always"`` or ``"never"``.  Only the
    AVX-512 variant has them; the results are the same bits either way.  Returns the previous mode.

    Not meant to be called while kernels run in other threads (tests and benchmarks only).
    """
    global qc_stream_mode
    if mode not in _STREAM_MODES:
        raise ValueError(f"mode must be one of {', '.join(_STREAM_MODES)}, got {mode!r}")
    previous = _STREAM_MODES[qc_stream_mode]
    qc_stream_mode = _STREAM_MODES.index(mode)
    return previous


def would_stream(out, Py_ssize_t in_bytes):
    """Would a pass reading ``in_bytes`` and writing all of the numpy array ``out`` use streaming stores
    (under the current mode)?  For tests."""
    cdef size_t addr = out.ctypes.data
    return bool(qc_stream_output(<const void *> addr, <size_t> out.nbytes, <size_t> in_bytes))


def max_threads():
    """Threads a large call uses: ``omp_get_max_threads()`` (honours OMP_NUM_THREADS), 1 without OpenMP."""
    return qcore_omp_max_threads()


def have_openmp():
    return bool(qcore_have_openmp())


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return qcore_threads_for(work, PAR_MIN, CHUNK_MIN)


cdef inline Py_ssize_t _splits(Py_ssize_t units, Py_ssize_t length, int nt) noexcept nogil:
    """Pieces to cut each of ``units`` runs of ``length`` into, so that there are >= 4*nt tasks."""
    if nt <= 1 or units >= 4 * nt:
        return 1
    cdef Py_ssize_t k = (4 * nt + units - 1) // units
    cdef Py_ssize_t kmax = length // SPLIT_MIN
    if k > kmax:
        k = kmax
    return k if k > 1 else 1


# ----------------------------------------------------------------------------------------------------
# quantize

# ``exact``: use the slower loop valid for any int32 zero point; the fast one needs |zero_point| <= 2^21
# (see quant_kernels.h).  Both give the reference's codes bit for bit.

def quantize_runs(const float[:, ::1] x, const float[::1] inv, const float[::1] zpf, Py_ssize_t C,
                  float lo, float hi, uint8_t[:, ::1] out, bint exact=False):
    """Codes of runs ``x[r]`` with (inv, zpf)[r % C]; returns False if some input was NaN/Inf."""
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1]
    if R == 0 or n == 0:
        return True
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t k = _splits(R, n, nt)
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, r, s, e, c
    cdef int bad = 0
    # streaming stores for passes larger than the cache into memory already mapped (quant_kernels.h)
    cdef bint stream = qc_stream_output(&out[0, 0], <size_t> (R * n), <size_t> (4 * R * n))
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                if exact:
                    bad += qc_quant_run_exact(&x[r, s], &out[r, s], e - s, inv[c], zpf[c], lo, hi)
                elif stream:
                    bad += qc_ops.quant_run_stream(&x[r, s], &out[r, s], e - s, inv[c], zpf[c], lo, hi)
                else:
                    bad += qc_ops.quant_run(&x[r, s], &out[r, s], e - s, inv[c], zpf[c], lo, hi)
    return bad == 0


def quantize_rows(const float[:, ::1] x, const float[::1] inv, const float[::1] zpf,
                  float lo, float hi, uint8_t[:, ::1] out, bint exact=False):
    """Codes of ``x[r, i]`` with (inv, zpf)[i]; returns False if some input was NaN/Inf."""
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1]
    if R == 0 or n == 0:
        return True
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t k = _splits(R, n, nt)
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, r, s, e
    cdef int bad = 0
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                if exact:
                    bad += qc_quant_vec_exact(&x[r, s], &out[r, s], e - s, &inv[s], &zpf[s], lo, hi)
                else:
                    bad += qc_ops.quant_vec(&x[r, s], &out[r, s], e - s, &inv[s], &zpf[s], lo, hi)
    return bad == 0


# ----------------------------------------------------------------------------------------------------
# dequantize

def dequantize_runs(const uint8_t[:, ::1] q, bint is_signed, const float[::1] scale, const int32_t[::1] zp,
                    Py_ssize_t C, float[:, ::1] out):
    """``out[r] = float(q[r] - zp[c]) * scale[c]`` with ``c = r % C`` (q read as int8 if is_signed)."""
    cdef Py_ssize_t R = q.shape[0], n = q.shape[1]
    if R == 0 or n == 0:
        return
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t k = _splits(R, n, nt)
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, r, s, e, c
    cdef bint stream = qc_stream_output(&out[0, 0], <size_t> (4 * R * n), <size_t> (R * n))
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                c = r % C
                if is_signed and stream:
                    qc_ops.deq_run_s8_stream(<const int8_t *> &q[r, s], &out[r, s], e - s, zp[c], scale[c])
                elif is_signed:
                    qc_ops.deq_run_s8(<const int8_t *> &q[r, s], &out[r, s], e - s, zp[c], scale[c])
                elif stream:
                    qc_ops.deq_run_u8_stream(&q[r, s], &out[r, s], e - s, zp[c], scale[c])
                else:
                    qc_ops.deq_run_u8(&q[r, s], &out[r, s], e - s, zp[c], scale[c])


def dequantize_rows(const uint8_t[:, ::1] q, bint is_signed, const float[::1] scale, const int32_t[::1] zp,
                    float[:, ::1] out):
    """``out[r, i] = float(q[r, i] - zp[i]) * scale[i]``."""
    cdef Py_ssize_t R = q.shape[0], n = q.shape[1]
    if R == 0 or n == 0:
        return
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t k = _splits(R, n, nt)
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, r, s, e
    with nogil:
        for t in prange(R * k, schedule='static', num_threads=nt):
            r = t // k
            s = (t - r * k) * clen
            e = s + clen
            if e > n:
                e = n
            if e > s:
                if is_signed:
                    qc_ops.deq_vec_s8(<const int8_t *> &q[r, s], &out[r, s], e - s, &zp[s], &scale[s])
                else:
                    qc_ops.deq_vec_u8(&q[r, s], &out[r, s], e - s, &zp[s], &scale[s])


# ----------------------------------------------------------------------------------------------------
# min / max (NaN-propagating: a NaN input makes the result of its channel NaN)

def minmax_runs(const float[:, ::1] x, Py_ssize_t C, float[::1] mn, float[::1] mx):
    """``mn[c], mx[c]`` = min and max over all runs ``x[r]`` with ``r % C == c`` (R a multiple of C, >= C)."""
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1]
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t k = _splits(R, n, nt)
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, r, s, e, c, ntask = R * k
    cdef float *pmn = <float *> malloc(2 * ntask * sizeof(float))
    if pmn == NULL:
        raise MemoryError()
    cdef float *pmx = pmn + ntask
    try:
        with nogil:
            for t in prange(ntask, schedule='static', num_threads=nt):
                r = t // k
                s = (t - r * k) * clen
                e = s + clen
                if e > n:
                    e = n
                if e > s:
                    qc_ops.minmax_run(&x[r, s], e - s, &pmn[t], &pmx[t])
                else:
                    pmn[t] = x[r, 0]
                    pmx[t] = x[r, 0]
            for c in range(C):
                mn[c] = pmn[c * k]
                mx[c] = pmx[c * k]
            for t in range(ntask):
                c = (t // k) % C
                mn[c] = QC_MIN_UPD(mn[c], pmn[t])
                mx[c] = QC_MAX_UPD(mx[c], pmx[t])
    finally:
        free(pmn)


def minmax_rows(const float[:, ::1] x, float[::1] mn, float[::1] mx):
    """``mn[i], mx[i]`` = min and max of column ``x[:, i]`` (R >= 1)."""
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1]
    cdef int nt = _threads(R * n)
    cdef Py_ssize_t RB = nt if nt < R else R           # row blocks, each with its own partial result
    cdef Py_ssize_t rlen = (R + RB - 1) // RB
    RB = (R + rlen - 1) // rlen
    cdef Py_ssize_t k = _splits(RB, n, nt)              # column pieces
    cdef Py_ssize_t clen = (n + k - 1) // k
    cdef Py_ssize_t t, b, s, e, i, r0, r1
    cdef float *bmn = <float *> malloc(2 * RB * n * sizeof(float))
    if bmn == NULL:
        raise MemoryError()
    cdef float *bmx = bmn + RB * n
    try:
        with nogil:
            for t in prange(RB * k, schedule='static', num_threads=nt):
                b = t // k
                s = (t - b * k) * clen
                e = s + clen
                if e > n:
                    e = n
                if e > s:
                    r0 = b * rlen
                    r1 = r0 + rlen
                    if r1 > R:
                        r1 = R
                    memcpy(&bmn[b * n + s], &x[r0, s], (e - s) * sizeof(float))
                    memcpy(&bmx[b * n + s], &x[r0, s], (e - s) * sizeof(float))
                    for i in range(r0 + 1, r1):
                        qc_ops.minmax_vec(&x[i, s], e - s, &bmn[b * n + s], &bmx[b * n + s])
            # combine the row blocks, column pieces in parallel
            for t in prange(k, schedule='static', num_threads=nt):
                s = t * clen
                e = s + clen
                if e > n:
                    e = n
                if e > s:
                    memcpy(&mn[s], &bmn[s], (e - s) * sizeof(float))
                    memcpy(&mx[s], &bmx[s], (e - s) * sizeof(float))
                    for b in range(1, RB):
                        # each call folds one partial row into both mn and mx: folding the minima into
                        # mx (and maxima into mn) cannot change them, and keeps one helper
                        qc_ops.minmax_vec(&bmn[b * n + s], e - s, &mn[s], &mx[s])
                        qc_ops.minmax_vec(&bmx[b * n + s], e - s, &mn[s], &mx[s])
    finally:
        free(bmn)


# ----------------------------------------------------------------------------------------------------
# bit packing (little-endian bit stream)

cdef Py_ssize_t PACK_GROUPS = 1 << 14     # groups of 8 codes per parallel task


def pack(const uint8_t[::1] codes, int bits, uint8_t[::1] out):
    """Pack ``codes`` (low ``bits`` bits of each) into ``out`` (``ceil(n*bits/8)`` bytes)."""
    cdef Py_ssize_t n = codes.shape[0]
    if bits < 1 or bits > 8 or out.shape[0] != (n * bits + 7) // 8:
        raise ValueError("pack: bad bits or output size")
    cdef Py_ssize_t groups = n // 8
    cdef Py_ssize_t ntask = (groups + PACK_GROUPS - 1) // PACK_GROUPS
    cdef int nt = _threads(n)
    cdef Py_ssize_t t, g0, g1
    with nogil:
        for t in prange(ntask, schedule='static', num_threads=nt):
            g0 = t * PACK_GROUPS
            g1 = g0 + PACK_GROUPS
            if g1 > groups:
                g1 = groups
            qc_pack_full(&codes[8 * g0], 8 * (g1 - g0), bits, &out[bits * g0])
        if n > 8 * groups:
            qc_pack_tail(&codes[8 * groups], n - 8 * groups, bits, &out[bits * groups])


def unpack(const uint8_t[::1] packed, int bits, bint is_signed, uint8_t[::1] out):
    """Inverse of :func:`pack`: ``out.shape[0]`` codes, sign-extended if ``is_signed``."""
    cdef Py_ssize_t n = out.shape[0]
    if bits < 1 or bits > 8 or packed.shape[0] != (n * bits + 7) // 8:
        raise ValueError("unpack: bad bits or input size")
    cdef Py_ssize_t groups = n // 8
    cdef Py_ssize_t ntask = (groups + PACK_GROUPS - 1) // PACK_GROUPS
    cdef int nt = _threads(n)
    cdef Py_ssize_t t, g0, g1
    with nogil:
        for t in prange(ntask, schedule='static', num_threads=nt):
            g0 = t * PACK_GROUPS
            g1 = g0 + PACK_GROUPS
            if g1 > groups:
                g1 = groups
            qc_unpack_full(&packed[bits * g0], 8 * (g1 - g0), bits, is_signed, &out[8 * g0])
        if n > 8 * groups:
            qc_unpack_tail(&packed[bits * groups], n - 8 * groups, bits, is_signed, &out[8 * groups])
