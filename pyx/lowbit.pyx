# cython: language_level=3
"""qcore low-bit GEMM kernels (``qcore_plugins._lowbit``): packing into the bit-plane layout, dispatch, OpenMP.

Low level and unchecked beyond what memory safety needs: the validating entry points are the ``cython`` kernel's
``Kernel.pack_lowbit`` / ``Kernel.lowbit_linear`` (qcore/kernels/base.py) and ``qcore.ops.qlinear``.  The C
core and the layout are described in ``pyx/lowbit_kernels.h`` and docs/gemm.md ("Low-bit weights").
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_omp_max_threads

cnp.import_array()

cdef extern from "lowbit_kernels.h" nogil:
    enum:
        QLB_PORTABLE
        QLB_AVX2
        QLB_VNNI
        QLB_LUT_NONE
        QLB_LUT_SHARED
        QLB_LUT_COLUMN
        QLB_NP
        QLB_GENERIC_TILES
    ctypedef struct qlb_w:
        int bits
        int lut
        int wide
        int64_t N, K, Kp, nb
        int64_t P
        const uint8_t *planes
        int64_t gblk, ng
        const float *sw
        const uint16_t *sw16
        int f16
        const float *swz
        int zconst
        float zval
        int zint
        int64_t tblk, ngt
        const uint8_t *tab
    ctypedef struct qlb_a:
        int64_t M
        const int8_t *q
        const float *sa
        const float *S
        const int32_t *asum
        float *y
        const float *bias
    int qlb_tab_index(int c, int e)
    void qlb_pack(const uint8_t *u, int64_t N, int64_t K, int64_t ldu, int bits, int64_t nb,
                  int64_t p0, int64_t p1, uint8_t *out)
    void qlb_decode_panel(const qlb_w *w, int64_t p, uint8_t *out)
    int qlb_quant_row(int isa, const float *x, int64_t K, int64_t nb, int8_t *q, float *sa, int32_t *asum)
    int qlb_mrv(int isa, int64_t M)
    int qlb_nv(int isa, int mrv)
    void qlb_unit(int isa, const qlb_w *w, const qlb_a *a, int64_t r0, int64_t r1, int64_t q0, int64_t q1)

cdef extern from "lowbit_pack.h" nogil:
    void qlp_pack_stream(const uint8_t *s, int64_t N, int64_t K, int bits, unsigned flip, int64_t nb,
                         int64_t p0, int64_t p1, uint8_t *buf, uint8_t *out)
    void qlp_unpack_stream(const uint8_t *planes, int64_t N, int64_t K, int bits, unsigned flip, int64_t nb,
                           int64_t p0, int64_t p1, uint8_t *buf, uint8_t *s)


#: below this many multiply-adds a product runs on one thread
PARALLEL_MIN_MACS = 1 << 19
#: the tiles were compiled once per path with their shape as run-time values (the sanitizer build), not specialised
GENERIC_TILES = bool(QLB_GENERIC_TILES)
#: rows per work unit (the weight columns of a unit stay in cache while its rows are computed)
ROWS_PER_UNIT = 64

# the copy products run on (a QCORE_ISA_* level: QLB_PORTABLE, QLB_AVX2 or QLB_VNNI)
cdef int _isa = QLB_PORTABLE


def _use_copy(int level):
    global _isa
    _isa = level
    return level


#: the instruction-set level this extension runs at and the copy it selects (qcore/isa.py).  The packed layout
#: is the same for every copy, so weights packed earlier run on the new one.
ISA = isa_switch(("baseline", "avx2", "avx512vnni"), _use_copy)


cdef inline int64_t _cdiv(int64_t a, int64_t b) nogil:
    return (a + b - 1) // b


cdef inline int _panel_threads(int64_t N, int64_t K, int64_t P) noexcept:
    """Threads for a packing pass over ``P`` panels: more than one only from 1M values on, never more than panels."""
    cdef int nt = qcore_omp_max_threads() if N * K >= (1 << 20) else 1
    return <int>P if nt > P else nt


cdef class LowbitWeight:
    """A weight (N x K) packed once into the bit-plane panel layout (see pyx/lowbit_kernels.h).

    ``planes``: the codes at exactly ``bits`` bits each (K padded to a multiple of 32, N to a multiple of 16);
    ``sw``: (P, ng, 16) scale per panel column and scale group, float16 when every scale is exactly a float16
    value (half the bytes to stream), else float32; ``swz``: float32 scale * zero point, or None when every zero
    point is the same (``zval``: then the kernels compute it from ``sw``);
    ``tab``: the byte tables of a codebook weight (``lut`` 1: one shared table, 2: per column and table group).
    """
    cdef readonly int bits, lut, zconst
    cdef readonly float zval
    cdef readonly int64_t n, k, kp, nb, panels, gblk, ng, tblk, ngt
    cdef readonly object planes, sw, swz, tab

    @property
    def nbytes(self):
        return self.planes.nbytes + self.sw.nbytes + (self.swz.nbytes if self.swz is not None else 0) \
            + (self.tab.nbytes if self.tab is not None else 0)

    @property
    def group_blocks(self):
        return self.gblk

    def __repr__(self):
        kind = ("linear", "table", "column tables")[self.lut]
        return f"<LowbitWeight {self.n}x{self.k} bits={self.bits} {kind} group={32 * self.gblk} nbytes={self.nbytes}>"

    cdef void fill(self, qlb_w *w):
        cdef cnp.ndarray pl = self.planes, s = self.sw, z, t
        w.bits = self.bits
        w.lut = self.lut
        w.wide = 1 if (self.bits == 8 or self.lut != QLB_LUT_NONE) else 0
        w.N, w.K, w.Kp, w.nb, w.P = self.n, self.k, self.kp, self.nb, self.panels
        w.planes = <const uint8_t *>cnp.PyArray_DATA(pl)
        w.gblk, w.ng = self.gblk, self.ng
        w.f16 = 1 if self.sw.dtype == np.float16 else 0
        w.sw = NULL
        w.sw16 = NULL
        if w.f16:
            w.sw16 = <const uint16_t *>cnp.PyArray_DATA(s)
        else:
            w.sw = <const float *>cnp.PyArray_DATA(s)
        w.zconst, w.zval = self.zconst, self.zval
        # one integral zero point (symmetric codes offset by 2**(bits-1), tables at 128): the kernels subtract
        # zval * asum from the int32 dot product instead of sw * zval * S in float
        w.zint = 1 if (self.zconst and self.zval == <float>(<int>self.zval) and -256 <= self.zval <= 256) else 0
        if self.swz is not None:
            z = self.swz
            w.swz = <const float *>cnp.PyArray_DATA(z)
        else:
            w.swz = NULL
        w.tblk, w.ngt = self.tblk, self.ngt
        if self.tab is not None:
            t = self.tab
            w.tab = <const uint8_t *>cnp.PyArray_DATA(t)
        else:
            w.tab = NULL


def pack(u, int bits, sw, zero, int64_t gblk, tables=None, int64_t tblk=0):
    """Pack values ``u`` (C-contiguous uint8 (N, K), each < 2**bits) with scales ``sw`` and zero points ``zero``
    (float32 (N, ng), ng = ceil(ceil(K/32)/gblk)); ``tables``: None, uint8 (1, 16) (shared) or (N*ngt, 16) (row
    n*ngt + gt for column n, table group gt of ``tblk`` blocks).  The caller has validated everything."""
    cdef const uint8_t[:, ::1] uv = u
    cdef int64_t N = uv.shape[0], K = uv.shape[1]
    cdef int64_t nb = _cdiv(K, 32), P = _cdiv(N, QLB_NP), ng = _cdiv(nb, gblk)
    cdef int64_t BB = 64 * bits, p, c, g, e, gt, n
    cdef cnp.ndarray planes = np.empty(P * nb * BB, np.uint8)
    cdef uint8_t *pl = <uint8_t *>cnp.PyArray_DATA(planes)
    cdef int nt = _panel_threads(N, K, P)
    with nogil:
        for p in prange(P, schedule="static", num_threads=nt):
            qlb_pack(&uv[0, 0], N, K, K, bits, nb, p, p + 1, pl)
    return _assemble(planes, N, K, bits, sw, zero, gblk, tables, tblk)


def pack_stream(stream, int64_t N, int64_t K, int bits, unsigned flip, sw, zero, int64_t gblk, tables=None,
                int64_t tblk=0):
    """Like :func:`pack`, from the codes' packed bit stream (C-contiguous uint8 of ``ceil(N*K*bits/8)`` bytes,
    docs/format.md section 3); the values are the code bits ``^ flip``.  No unpacked copy of the codes is made:
    each thread decodes one panel of 16 rows into a 16*K byte buffer (pyx/lowbit_pack.h).  The caller has
    validated everything but the stream's size, checked here."""
    cdef const uint8_t[::1] sv = stream
    if N < 1 or K < 1 or not 1 <= bits <= 8 or flip >= (1u << bits):
        raise ValueError("pack_stream: bad shape, bits or flip")
    if sv.shape[0] != (N * K * bits + 7) // 8:
        raise ValueError(f"pack_stream: {N}x{K} codes of {bits} bits need {(N * K * bits + 7) // 8} bytes, "
                         f"got {sv.shape[0]}")
    cdef int64_t nb = _cdiv(K, 32), P = _cdiv(N, QLB_NP), BB = 64 * bits, t, p0, p1
    cdef cnp.ndarray planes = np.empty(P * nb * BB, np.uint8)
    cdef uint8_t *pl = <uint8_t *>cnp.PyArray_DATA(planes)
    cdef int nt = _panel_threads(N, K, P)
    cdef cnp.ndarray scratch = np.empty(nt * QLB_NP * K, np.uint8)
    cdef uint8_t *buf = <uint8_t *>cnp.PyArray_DATA(scratch)
    with nogil:
        for t in prange(nt, schedule="static", num_threads=nt):
            p0 = t * P // nt
            p1 = (t + 1) * P // nt
            qlp_pack_stream(&sv[0], N, K, bits, flip, nb, p0, p1, buf + t * QLB_NP * K, pl)
    return _assemble(planes, N, K, bits, sw, zero, gblk, tables, tblk)


def unpack_stream(LowbitWeight W, unsigned flip):
    """The codes of ``W`` as the packed bit stream (uint8, ``ceil(N*K*bits/8)`` bytes, unused high bits of the last
    byte 0): the inverse of :func:`pack_stream` with the same ``flip`` (tables are not applied)."""
    if flip >= (1u << W.bits):
        raise ValueError("unpack_stream: flip must be < 2**bits")
    cdef int64_t N = W.n, K = W.k, P = W.panels, t, p0, p1
    cdef int bits = W.bits
    out = np.zeros((N * K * bits + 7) // 8, np.uint8)
    cdef uint8_t[::1] ov = out
    cdef cnp.ndarray pl = W.planes
    cdef const uint8_t *planes = <const uint8_t *>cnp.PyArray_DATA(pl)
    cdef int nt = _panel_threads(N, K, P)
    cdef cnp.ndarray scratch = np.empty(nt * QLB_NP * K, np.uint8)
    cdef uint8_t *buf = <uint8_t *>cnp.PyArray_DATA(scratch)
    with nogil:
        for t in prange(nt, schedule="static", num_threads=nt):
            p0 = t * P // nt
            p1 = (t + 1) * P // nt
            qlp_unpack_stream(planes, N, K, bits, flip, W.nb, p0, p1, buf + t * QLB_NP * K, &ov[0])
    return out


def scales(LowbitWeight W):
    """The scales ``sw`` the weight was packed with, float32 (N, ng) (the inverse of the panel order)."""
    sw = np.asarray(W.sw).astype(np.float32)  # (P, ng, 16); float16 scales were exact
    return np.ascontiguousarray(sw.transpose(0, 2, 1).reshape(W.panels * QLB_NP, W.ng)[:W.n])


cdef object _assemble(cnp.ndarray planes, int64_t N, int64_t K, int bits, sw, zero, int64_t gblk, tables,
                      int64_t tblk):
    """The LowbitWeight around ``planes``: scales and zero points in panel order, tables in their layout."""
    cdef int64_t nb = _cdiv(K, 32), P = _cdiv(N, QLB_NP), ng = _cdiv(nb, gblk)
    cdef int64_t p, c, gt, e, n
    sw = np.asarray(sw, np.float32)
    zero = np.asarray(zero, np.float32)
    swp = np.zeros((P * QLB_NP, ng), np.float32)
    swp[:N] = sw
    swp = np.ascontiguousarray(swp.reshape(P, QLB_NP, ng).transpose(0, 2, 1))
    with np.errstate(over="ignore", under="ignore"):
        sw16 = swp.astype(np.float16)
    if np.isfinite(sw16).all() and np.array_equal(sw16.astype(np.float32), swp):
        swp = sw16  # exactly float16 values (e.g. scale_dtype="float16"): stored as such
    zconst = bool((zero == zero.flat[0]).all())
    swzp = None
    if not zconst:
        swzp = np.zeros((P * QLB_NP, ng), np.float32)
        swzp[:N] = (sw * zero).astype(np.float32)
        swzp = np.ascontiguousarray(swzp.reshape(P, QLB_NP, ng).transpose(0, 2, 1))
    cdef LowbitWeight W = LowbitWeight.__new__(LowbitWeight)
    W.bits, W.lut = bits, QLB_LUT_NONE
    W.zconst, W.zval = zconst, float(zero.flat[0])
    W.n, W.k, W.kp, W.nb, W.panels = N, K, nb * 32, nb, P
    W.gblk, W.ng, W.tblk, W.ngt = gblk, ng, 1, 1
    W.planes, W.sw, W.swz, W.tab = planes, swp, swzp, None
    cdef const uint8_t[:, ::1] tv
    cdef uint8_t[:, :, ::1] to
    if tables is not None:
        tv = tables
        if tv.shape[0] == 1:
            W.lut = QLB_LUT_SHARED
            W.tab = np.ascontiguousarray(np.tile(np.asarray(tables, np.uint8).reshape(16), 4))
        else:
            W.lut = QLB_LUT_COLUMN
            W.tblk = tblk
            W.ngt = _cdiv(nb, tblk)
            out = np.zeros((P, W.ngt, 256), np.uint8)
            to = out
            for n in range(N):
                p, c = n // QLB_NP, n % QLB_NP
                for gt in range(W.ngt):
                    for e in range(16):
                        to[p, gt, qlb_tab_index(<int>c, <int>e)] = tv[n * W.ngt + gt, e]
            W.tab = out
    return W


def decode(LowbitWeight W):
    """The values the kernels multiply, uint8 (N, Kp) (after the table of a codebook weight): for tests."""
    cdef qlb_w w
    W.fill(&w)
    out = np.empty((W.panels * QLB_NP, W.kp), np.uint8)
    cdef uint8_t[:, ::1] ov = out
    cdef int64_t p
    for p in range(W.panels):
        qlb_decode_panel(&w, p, &ov[p * QLB_NP, 0])
    return out[:W.n]


def quantize_blocks(x):
    """Per-32-block int8 quantization of C-contiguous float32 (M, K), as the GEMM does it.

    Returns ``(q int8 (M, Kp), sa float32 (M, nb), asum int32 (M, nb), bad uint8 (M,))``.
    """
    cdef const float[:, ::1] xv = x
    cdef int64_t M = xv.shape[0], K = xv.shape[1], nb = _cdiv(K, 32), i
    q = np.zeros((M, nb * 32), np.int8)
    sa = np.zeros((M, nb), np.float32)
    asum = np.zeros((M, nb), np.int32)
    bad = np.zeros(M, np.uint8)
    cdef int8_t[:, ::1] qv = q
    cdef float[:, ::1] sav = sa
    cdef int32_t[:, ::1] asv = asum
    cdef uint8_t[::1] bv = bad
    cdef int code = _isa
    if M == 0 or K == 0:
        return q, sa, asum, bad
    with nogil:
        for i in range(M):
            bv[i] = qlb_quant_row(code, &xv[i, 0], K, nb, &qv[i, 0], &sav[i, 0], &asv[i, 0])
    return q, sa, asum, bad


cdef inline int64_t _al64(int64_t n) nogil:
    return (n + 63) & ~(<int64_t>63)


def gemm(x, LowbitWeight W, bias, out):
    """out (float32 (M, N)) = the low-bit product of ``x`` (C-contiguous float32 (M, K)) and ``W``, plus bias.

    Returns -1, or the index of the first row of ``x`` holding NaN/Inf (``out`` is then not written).
    Raw pointers and one workspace allocation: at M = 1 the call overhead is a visible part of the product.
    """
    cdef cnp.ndarray xa = x, oa = out, ba
    if (xa.ndim != 2 or xa.dtype != np.float32 or not cnp.PyArray_IS_C_CONTIGUOUS(xa) or oa.ndim != 2
            or oa.dtype != np.float32 or not cnp.PyArray_IS_C_CONTIGUOUS(oa)):
        raise ValueError("lowbit gemm: x and out must be C-contiguous 2-D float32")
    cdef int64_t M = xa.shape[0], K = xa.shape[1], N = W.n, nb = W.nb, ng = W.ng, gblk = W.gblk, Kp = W.kp
    if K != W.k or oa.shape[0] != M or oa.shape[1] != N:
        raise ValueError("lowbit gemm: inconsistent shapes")
    cdef const float *bp = NULL
    if bias is not None:
        ba = bias
        if ba.ndim != 1 or ba.dtype != np.float32 or not cnp.PyArray_IS_C_CONTIGUOUS(ba) or ba.shape[0] != N:
            raise ValueError("lowbit gemm: bias must be a contiguous float32 vector of length N")
        bp = <const float *>cnp.PyArray_DATA(ba)
    if M == 0:
        return -1
    # workspace: q (M x Kp int8) | sa (M x nb) | asum (M x nb) | S (M x ng) | bad (M), 64-byte aligned parts
    cdef int64_t oq = 0, osa = _al64(M * Kp), oas = osa + _al64(4 * M * nb), oS = oas + _al64(4 * M * nb)
    cdef int64_t obad = oS + _al64(4 * M * ng), total = obad + _al64(M) + 64
    cdef cnp.ndarray ws = np.empty(total, np.uint8)
    cdef uint8_t *base = <uint8_t *>cnp.PyArray_DATA(ws)
    base = base + ((64 - (<uintptr_t>base & 63)) & 63)
    cdef int8_t *q = <int8_t *>(base + oq)
    cdef float *sa = <float *>(base + osa)
    cdef int32_t *asum = <int32_t *>(base + oas)
    cdef float *S = <float *>(base + oS)
    cdef uint8_t *bad = base + obad
    cdef const float *xp = <const float *>cnp.PyArray_DATA(xa)
    cdef float *yp = <float *>cnp.PyArray_DATA(oa)
    cdef int code = _isa
    cdef int64_t macs = M * N * K
    cdef int nt = qcore_omp_max_threads() if macs >= PARALLEL_MIN_MACS else 1
    cdef int nta = nt if M * K >= 32768 else 1
    cdef int64_t i, first_bad = -1, u, units, cu, ru, ri, ci, r0, r1, q0, q1
    cdef qlb_w w
    cdef qlb_a a
    W.fill(&w)
    cdef int mrv = qlb_mrv(code, M)
    cdef int nv = qlb_nv(code, mrv)
    cdef int64_t mc = mrv * (ROWS_PER_UNIT // mrv) if mrv < ROWS_PER_UNIT else mrv
    with nogil:
        if nta <= 1:
            for i in range(M):
                bad[i] = _act_row(code, xp + i * K, K, nb, ng, gblk, q + i * Kp, sa + i * nb, asum + i * nb, S + i * ng)
        else:
            for i in prange(M, schedule="static", num_threads=nta):
                bad[i] = _act_row(code, xp + i * K, K, nb, ng, gblk, q + i * Kp, sa + i * nb, asum + i * nb, S + i * ng)
        for i in range(M):
            if bad[i]:
                first_bad = i
                break
    if first_bad >= 0:
        return first_bad
    with nogil:
        a.M = M
        a.q = q
        a.sa = sa
        a.S = S
        a.asum = asum
        a.y = yp
        a.bias = bp
        cu = _cdiv(W.panels, nv)
        ru = _cdiv(M, mc)
        units = cu * ru
        if nt <= 1 or units <= 1:
            for u in range(units):
                ci = u // ru
                ri = u % ru
                r0 = ri * mc
                r1 = r0 + mc if r0 + mc < M else M
                q0 = ci * nv
                q1 = q0 + nv if q0 + nv < W.panels else W.panels
                qlb_unit(code, &w, &a, r0, r1, q0, q1)
        else:
            # dynamic: on a busy machine a descheduled thread's share is taken by the others
            for u in prange(units, schedule="dynamic", num_threads=nt):
                ci = u // ru
                ri = u % ru
                r0 = ri * mc
                r1 = r0 + mc if r0 + mc < M else M
                q0 = ci * nv
                q1 = q0 + nv if q0 + nv < W.panels else W.panels
                qlb_unit(code, &w, &a, r0, r1, q0, q1)
    return -1


cdef inline uint8_t _act_row(int code, const float *x, int64_t K, int64_t nb, int64_t ng, int64_t gblk, int8_t *q,
                             float *sa, int32_t *asum, float *S) noexcept nogil:
    """Quantize one activation row per block of 32 and sum sa * asum per scale group (S)."""
    cdef uint8_t bad = <uint8_t>qlb_quant_row(code, x, K, nb, q, sa, asum)
    cdef int64_t g, b, b1
    cdef float s
    for g in range(ng):
        s = 0.0
        b1 = (g + 1) * gblk
        if b1 > nb:
            b1 = nb
        for b in range(g * gblk, b1):
            s = s + sa[b] * <float>asum[b]
        S[g] = s
    return bad
