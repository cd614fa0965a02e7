# cython: language_level=3
"""qcore int8 GEMM kernels (``qcore_plugins._gemm``): packing, dispatch and OpenMP drivers.

Low-level and unchecked beyond what is needed for memory safety: the public, validating entry points are
``qcore.ops.qgemm`` and ``qcore.ops.qlinear``.  The C core is ``pyx/gemm_kernels.h``; the design is in
``docs/gemm.md``.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint32_t

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_omp_max_threads

cnp.import_array()

cdef extern from "gemm_kernels.h" nogil:
    enum:
        QC_ISA_PORTABLE
        QC_ISA_AVX2
        QC_ISA_VNNI
    ctypedef struct qc_epi:
        int mode
        int64_t K
        const int32_t *za
        const int32_t *rr
        const int32_t *cs
        const int32_t *zb
        const float *sa
        const float *sw
        const float *bias
    ctypedef struct qc_gemm_args:
        int isa
        const uint8_t *A
        int64_t lda
        int64_t M, N, K, Kp
        const void *B
        void *C
        int64_t ldc
        qc_epi e
        int64_t MC, NC, KC
        int64_t units_m, units_n
    int qc_isa_nr(int isa)
    int qc_isa_mr(int isa)
    int qc_isa_bpe(int isa)
    void qc_pack_b(int isa, const uint8_t *b, int64_t N, int64_t K, int64_t ldb, uint8_t flip,
                   int64_t Kp, int64_t p0, int64_t p1, void *out, int32_t *colsum)
    void qc_gemm_unit(const qc_gemm_args *g, int64_t u)
    int qc_quant_row(int isa, const float *x, int64_t K, int64_t Kp, uint8_t *q, float *scale, int32_t *zp,
                      int32_t *rowsum)
    void qc_copy_row_u8(const uint8_t *a, int64_t K, int64_t Kp, uint8_t flip, uint8_t *q, int32_t *rowsum)
    int32_t qc_row_sum_u8(const uint8_t *a, int64_t K)


from qcore.isa import ISA_NAMES

#: below this many multiply-adds a GEMM runs on one thread (starting a parallel region costs microseconds)
PARALLEL_MIN_MACS = 1 << 19
cdef int64_t _PAR_MIN = PARALLEL_MIN_MACS

# the copy new packed weights are built for (a QCORE_ISA_* level: QC_ISA_PORTABLE, QC_ISA_AVX2 or QC_ISA_VNNI)
cdef int _isa = QC_ISA_PORTABLE
# blocking overrides for tuning (0: automatic)
cdef int64_t _mc_override = 0, _nc_override = 0, _kc_override = 0


def _use_copy(int level):
    global _isa
    _isa = level
    return level


#: the instruction-set level this extension runs at and the GEMM copy it selects (qcore/isa.py).  Weights
#: packed earlier keep the layout of the copy they were packed for and keep running on it.
ISA = isa_switch(("baseline", "avx2", "avx512vnni"), _use_copy)


def _set_blocking(mc=0, nc=0, kc=0):
    """Override the cache blocking (benchmarks and tests only; 0 restores the automatic choice)."""
    global _mc_override, _nc_override, _kc_override
    _mc_override, _nc_override, _kc_override = int(mc), int(nc), int(kc)


cdef class PackedB:
    """Weights ``b`` (N x K) packed once into the panel layout of one instruction-set path.

    Attributes: ``isa`` (the copy's level name), ``n``, ``k``, ``kp`` (K rounded up to 4), ``np_`` (N rounded up to the
    panel width ``nr``), ``data`` (the packed panels), ``colsum`` (int32, length ``np_``: column sums of the
    int8 values the kernel multiplies, i.e. ``b`` for int8 input and ``b - 128`` for uint8 input),
    ``flipped`` (True if uint8 input was shifted by -128).
    """
    cdef readonly int isa_code
    cdef readonly int64_t n, k, kp, np_, nr
    cdef readonly object data, colsum
    cdef readonly bint flipped

    @property
    def isa(self):
        return ISA_NAMES[self.isa_code]

    @property
    def nbytes(self):
        return self.data.nbytes + self.colsum.nbytes

    def __repr__(self):
        return f"<PackedB {self.n}x{self.k} isa={self.isa} nr={self.nr}>"


cdef inline int64_t _roundup(int64_t x, int64_t m) nogil:
    return (x + m - 1) // m * m


def pack_b(b, isa=None):
    """Pack a C-contiguous int8 or uint8 matrix ``b`` of shape (N, K) (K >= 1, N >= 1) for the copy of level
    ``isa`` (None: the current one; ``ValueError`` above the ``QCORE_ISA`` cap or the CPU).

    uint8 values are stored as ``b - 128`` (int8); the caller shifts the zero point the same way.
    """
    cdef int code = _isa if isa is None else ISA_NAMES.index(ISA.copy_for(isa))
    if not isinstance(b, np.ndarray) or b.ndim != 2 or b.dtype not in (np.int8, np.uint8) \
            or not b.flags.c_contiguous:
        raise TypeError("pack_b expects a C-contiguous 2-D int8 or uint8 array")
    cdef bint flip = b.dtype == np.uint8
    cdef const uint8_t[:, ::1] bv = b.view(np.uint8)
    cdef int64_t N = bv.shape[0], K = bv.shape[1]
    if N < 1 or K < 1:
        raise ValueError("pack_b needs N >= 1 and K >= 1")
    cdef int64_t nr = qc_isa_nr(code)
    cdef int64_t Kp = _roundup(K, 4), Np = _roundup(N, nr), panels = Np // nr
    cdef cnp.ndarray data = np.empty(Np * Kp, dtype=np.int16 if qc_isa_bpe(code) == 2 else np.int8)
    colsum = np.zeros(Np, dtype=np.int32)
    cdef void *out = cnp.PyArray_DATA(data)
    cdef int32_t[::1] cs = colsum
    cdef uint8_t fl = 0x80 if flip else 0
    cdef int64_t p
    cdef int nt = qcore_omp_max_threads() if N * K >= (1 << 20) else 1
    with nogil:
        for p in prange(panels, schedule="static", num_threads=nt):
            qc_pack_b(code, &bv[0, 0], N, K, K, fl, Kp, p, p + 1, out, &cs[0])
    cdef PackedB pb = PackedB.__new__(PackedB)
    pb.isa_code = code
    pb.n, pb.k, pb.kp, pb.np_, pb.nr = N, K, Kp, Np, nr
    pb.data, pb.colsum, pb.flipped = data, colsum, flip
    return pb


cdef void _unpack_panels(int isa, const void *data, int64_t N, int64_t K, int64_t Kp, uint8_t flip,
                         int64_t p0, int64_t p1, uint8_t *b) noexcept nogil:
    """The inverse of qc_pack_b for panels [p0, p1): the bytes of b (N x K, row-major) back from the layouts
    described in pyx/gemm_kernels.h (values ^ flip)."""
    cdef int64_t NR = qc_isa_nr(isa), p, j, n, k
    cdef const int8_t *o8 = <const int8_t *>data
    cdef const int16_t *o16 = <const int16_t *>data
    cdef uint8_t *row
    for p in range(p0, p1):
        for j in range(NR):
            n = p * NR + j
            if n >= N:
                break
            row = b + n * K
            if qc_isa_bpe(isa) == 2:
                for k in range(K):
                    row[k] = (<uint8_t>o16[p * Kp * NR + ((k >> 1) * NR + j) * 2 + (k & 1)]) ^ flip
            elif isa == QC_ISA_PORTABLE:
                for k in range(K):
                    row[k] = (<uint8_t>o8[p * Kp * NR + k * NR + j]) ^ flip
            else:
                for k in range(K):
                    row[k] = (<uint8_t>o8[p * Kp * NR + ((k >> 2) * NR + j) * 4 + (k & 3)]) ^ flip


def unpack_b(PackedB pb):
    """The matrix :func:`pack_b` packed into ``pb``, rebuilt from its panels: (N, K) int8, or uint8 when the input
    was uint8 (``flipped``).  Lets a holder keep only the packed weight and regenerate the codes on demand."""
    out = np.empty((pb.n, pb.k), np.uint8 if pb.flipped else np.int8)
    cdef uint8_t[:, ::1] ov = out.view(np.uint8)
    cdef cnp.ndarray data = pb.data
    cdef const void *src = cnp.PyArray_DATA(data)
    cdef int64_t panels = (pb.n + pb.nr - 1) // pb.nr, p
    cdef uint8_t fl = 0x80 if pb.flipped else 0
    cdef int code = pb.isa_code
    cdef int nt = qcore_omp_max_threads() if pb.n * pb.k >= (1 << 20) else 1
    with nogil:
        for p in prange(panels, schedule="static", num_threads=nt):
            _unpack_panels(code, src, pb.n, pb.k, pb.kp, fl, p, p + 1, &ov[0, 0])
    return out


cdef void _plan(qc_gemm_args *g, int nthreads) noexcept nogil:
    """Cache blocks and work units (see docs/gemm.md, 'Blocking and threads')."""
    cdef int64_t MR = qc_isa_mr(g.isa), NR = qc_isa_nr(g.isa)
    cdef int64_t M = g.M, N = g.N, Kp = g.Kp
    cdef int64_t KC, MC, NC, units_m, units_n, target
    KC = Kp if Kp <= 1024 else 512
    if _kc_override > 0:
        KC = _roundup(_kc_override, 4)
    MC = 64 if M > 64 else _roundup(M, MR)
    if _mc_override > 0:
        MC = _roundup(_mc_override, MR)
    units_m = (M + MC - 1) // MC
    target = 4 * nthreads if nthreads > 1 else 1
    units_n = (target + units_m - 1) // units_m
    NC = _roundup((N + units_n - 1) // units_n, NR)
    if NC > 512:
        NC = 512
    if _nc_override > 0:
        NC = _roundup(_nc_override, NR)
    units_n = (N + NC - 1) // NC
    g.KC, g.MC, g.NC, g.units_m, g.units_n = KC, MC, NC, units_m, units_n


cdef int _threads_for(int64_t M, int64_t N, int64_t K) noexcept nogil:
    if M * N * K < _PAR_MIN:
        return 1
    return qcore_omp_max_threads()


cdef void _run(qc_gemm_args *g, int nthreads) noexcept nogil:
    cdef int64_t u, units
    _plan(g, nthreads)
    units = g.units_m * g.units_n
    if nthreads <= 1 or units <= 1:
        for u in range(units):
            qc_gemm_unit(g, u)
    else:
        for u in prange(units, schedule="static", num_threads=nthreads):
            qc_gemm_unit(g, u)


def gemm_s32(a, PackedB pb, za, zb, out):
    """out[M, N] (int32) = sum_k (a - za_i)(b' - zb_j), b' the packed int8 weights.

    ``a``: C-contiguous (M, K) uint8 or int8 (int8 is shifted to uint8 by +128: pass ``za`` shifted too);
    ``za``: int32 (M,) in the uint8 domain; ``zb``: int32 (np_,) in the packed int8 domain, or None for 0;
    ``out``: C-contiguous int32 (M, N).  The caller has checked that the result cannot overflow int32.
    """
    cdef bint signed_a = a.dtype == np.int8
    cdef const uint8_t[:, ::1] av = a.view(np.uint8)
    cdef int64_t M = av.shape[0], K = av.shape[1], N = pb.n, Kp = pb.kp
    if K != pb.k or out.shape != (M, N) or out.dtype != np.int32 or not out.flags.c_contiguous:
        raise ValueError("gemm_s32: inconsistent shapes")
    cdef const int32_t[::1] zav = za
    cdef const int32_t[::1] zbv = zb if zb is not None else None
    cdef const int32_t[::1] cs = pb.colsum
    if zav.shape[0] != M or (zb is not None and zbv.shape[0] != pb.np_):
        raise ValueError("gemm_s32: zero-point arrays of the wrong length")
    cdef int32_t[:, ::1] ov = out
    if M == 0:
        return out
    cdef bint need_copy = signed_a or (K % 4) != 0
    cdef bint need_rowsum = zb is not None
    cdef uint8_t[:, ::1] qa
    cdef int32_t[::1] rs = np.empty(M, np.int32)
    cdef int32_t[::1] rr = np.empty(M, np.int32)
    cdef uint8_t fl = 0x80 if signed_a else 0
    cdef qc_gemm_args g
    cdef int64_t i
    cdef int nt = _threads_for(M, N, K)
    cdef cnp.ndarray bdata = pb.data
    cdef const void *bptr = cnp.PyArray_DATA(bdata)
    if need_copy:
        qa = np.empty((M, Kp), np.uint8)
    with nogil:
        if need_copy:
            for i in prange(M, schedule="static", num_threads=nt if M * K >= 65536 else 1):
                qc_copy_row_u8(&av[i, 0], K, Kp, fl, &qa[i, 0], &rs[i])
                rr[i] = <int32_t>(<uint32_t>rs[i] - <uint32_t>K * <uint32_t>zav[i])
        elif need_rowsum:
            for i in prange(M, schedule="static", num_threads=nt if M * K >= 65536 else 1):
                rs[i] = qc_row_sum_u8(&av[i, 0], K)
                rr[i] = <int32_t>(<uint32_t>rs[i] - <uint32_t>K * <uint32_t>zav[i])
        g.isa = pb.isa_code
        g.A = &qa[0, 0] if need_copy else <uint8_t *>&av[0, 0]
        g.lda = Kp if need_copy else K
        g.M, g.N, g.K, g.Kp = M, N, K, Kp
        g.B = bptr
        g.C = &ov[0, 0]
        g.ldc = N
        g.e.mode = 0
        g.e.K = K
        g.e.za = &zav[0]
        g.e.rr = &rr[0]
        g.e.cs = &cs[0]
        g.e.zb = &zbv[0] if zb is not None else NULL
        g.e.sa = NULL
        g.e.sw = NULL
        g.e.bias = NULL
        _run(&g, nt)
    return out


def qlinear_f32(x, PackedB pb, sw, zb, bias, out):
    """out[M, N] = float32 GEMM of dynamically quantized rows of ``x`` with the packed weights.

    Returns -1, or the index of the first row of ``x`` holding NaN/Inf (then ``out`` is not written).
    ``x``: C-contiguous float32 (M, K); each row is quantized to asymmetric uint8 with its own scale and
    zero point.  ``sw``: float32 (np_,) weight scales; ``zb``: int32 (np_,) weight zero points in the packed
    int8 domain or None; ``bias``: float32 (np_,) or None; ``out``: C-contiguous float32 (M, N).
    """
    cdef const float[:, ::1] xv = x
    cdef int64_t M = xv.shape[0], K = xv.shape[1], N = pb.n, Kp = pb.kp
    if K != pb.k or out.shape != (M, N) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("qlinear_f32: inconsistent shapes")
    cdef const float[::1] swv = sw
    cdef const int32_t[::1] zbv = zb if zb is not None else None
    cdef const float[::1] bv = bias if bias is not None else None
    cdef const int32_t[::1] cs = pb.colsum
    if swv.shape[0] != pb.np_ or (zb is not None and zbv.shape[0] != pb.np_) \
            or (bias is not None and bv.shape[0] != pb.np_):
        raise ValueError("qlinear_f32: parameter arrays of the wrong length")
    cdef float[:, ::1] ov = out
    if M == 0:
        return -1
    cdef uint8_t[:, ::1] qa = np.empty((M, Kp), np.uint8)
    cdef float[::1] sa = np.empty(M, np.float32)
    cdef int32_t[::1] za = np.empty(M, np.int32)
    cdef int32_t[::1] rs = np.empty(M, np.int32)
    cdef int32_t[::1] rr = np.empty(M, np.int32)
    cdef uint8_t[::1] bad = np.empty(M, np.uint8)
    cdef qc_gemm_args g
    cdef int64_t i, first_bad = -1
    cdef int code = pb.isa_code
    cdef int nt = _threads_for(M, N, K)
    cdef cnp.ndarray bdata = pb.data
    cdef const void *bptr = cnp.PyArray_DATA(bdata)
    with nogil:
        for i in prange(M, schedule="static", num_threads=nt if M * K >= 32768 else 1):
            bad[i] = qc_quant_row(code, &xv[i, 0], K, Kp, &qa[i, 0], &sa[i], &za[i], &rs[i])
            rr[i] = <int32_t>(<uint32_t>rs[i] - <uint32_t>K * <uint32_t>za[i])
        for i in range(M):
            if bad[i]:
                first_bad = i
                break
    if first_bad >= 0:
        return first_bad
    with nogil:
        g.isa = code
        g.A = &qa[0, 0]
        g.lda = Kp
        g.M, g.N, g.K, g.Kp = M, N, K, Kp
        g.B = bptr
        g.C = &ov[0, 0]
        g.ldc = N
        g.e.mode = 1
        g.e.K = K
        g.e.za = &za[0]
        g.e.rr = &rr[0]
        g.e.cs = &cs[0]
        g.e.zb = &zbv[0] if zb is not None else NULL
        g.e.sa = &sa[0]
        g.e.sw = &swv[0]
        g.e.bias = &bv[0] if bias is not None else NULL
        _run(&g, nt)
    return -1


def quantize_rows(x):
    """Per-row asymmetric uint8 quantization of C-contiguous finite float32 (M, K), as qlinear does it.

    Returns ``(codes (M, K) uint8, scale (M,) float32, zero_point (M,) int32)`` (for tests and docs).
    """
    cdef const float[:, ::1] xv = x
    cdef int64_t M = xv.shape[0], K = xv.shape[1], Kp = _roundup(K, 4), i
    q = np.empty((M, Kp), np.uint8)
    cdef uint8_t[:, ::1] qv = q
    sa = np.empty(M, np.float32)
    za = np.empty(M, np.int32)
    cdef float[::1] sav = sa
    cdef int32_t[::1] zav = za
    cdef int32_t rs
    cdef int code = _isa
    if M == 0 or K == 0:
        return np.zeros((M, K), np.uint8), np.ones(M, np.float32), np.zeros(M, np.int32)
    with nogil:
        for i in range(M):
            qc_quant_row(code, &xv[i, 0], K, Kp, &qv[i, 0], &sav[i], &zav[i], &rs)
    return q[:, :K].copy(), sa, za
