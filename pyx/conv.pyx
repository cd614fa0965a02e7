# cython: language_level=3
"""qcore static int8 convolution kernels (``qcore_plugins._conv``): static activation quantization to uint8
NHWC, and the indirect-GEMM int8 convolution with requantization, bias and fused ReLU.

Low-level: these functions check only what memory safety needs (dtypes, contiguity, sizes).  The validating
entry point is ``qcore.ops.conv`` (``PackedConv2d``); the C core is ``pyx/conv_kernels.h``, design in
``docs/gemm.md`` ("Static int8 convolution").
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from qcore_isa cimport isa_switch
from qcore_omp cimport qcore_omp_max_threads

cnp.import_array()

cdef extern from "conv_kernels.h" nogil:
    enum:
        QC_ISA_PORTABLE
        QC_ISA_AVX2
        QC_ISA_VNNI
    int qc_isa_nr(int isa)
    int qc_isa_bpe(int isa)
    ctypedef struct qc_conv_args:
        int isa
        const uint8_t *inp "in"
        int64_t H, W, Cp
        int64_t OH, OW, KH, KW, sh, sw, ph, pw, dh, dw
        int64_t M, N
        const void *Bp
        const int8_t *wg
        int64_t groups, Cg
        const uint8_t *zrow
        int32_t za
        const int32_t *zc
        const float *mult
        const float *bias
        int mode
        int relu
        int32_t zo
        void *out
        int64_t ldo
        int64_t MC
        int nchw
        int64_t opad_h, opad_w
    int qc_sq_rows(int isa, const float *x, int64_t R, int64_t C, int64_t ldx, float inv, int32_t z, int32_t lo,
                   int32_t hi, uint8_t *q, int64_t Cp)
    int qc_sq_nchw(int isa, const float *x, int64_t C, int64_t HW, int64_t cstride, float inv, int32_t z,
                   int32_t lo, int32_t hi, uint8_t *q, int64_t Cp)
    int qc_conv_unit(const qc_conv_args *g, int64_t u)


from qcore.isa import ISA_NAMES

#: below this many multiply-adds a convolution runs on one thread
PARALLEL_MIN_MACS = 1 << 19

# the copy used when a call passes isa=None (a QCORE_ISA_* level: QC_ISA_PORTABLE, QC_ISA_AVX2 or QC_ISA_VNNI)
cdef int _isa = QC_ISA_PORTABLE


def _use_copy(int level):
    global _isa
    _isa = level
    return level


#: the instruction-set level this extension runs at and the copy it selects (qcore/isa.py); the copies are the
#: int8 GEMM's (packed weights carry their own)
ISA = isa_switch(("baseline", "avx2", "avx512vnni"), _use_copy)


cdef int _code(isa) except -1:
    """The copy of level ``isa`` (None: the current one); ValueError above the QCORE_ISA cap or the CPU."""
    return _isa if isa is None else ISA_NAMES.index(ISA.copy_for(isa))


def _check(a, dtype, ndim, name):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {ndim}-D {np.dtype(dtype).name} array")


def quantize_nchw(x, float inv, int z, int lo, int hi, out, isa, pad=(0, 0)):
    """Static quantization of float32 NCHW ``x`` (B, C, H, W) into uint8 NHWC ``out``
    (B, H + 2*pad[0], W + 2*pad[1], Cp): ``q = rint(min(max(x * inv, lo - z), hi - z)) + z`` in the interior,
    padding channels set to ``z``; the spatial border is not written (the caller fills it with ``z``).
    Returns True if ``x`` holds NaN or Inf (``out`` is then garbage, in range)."""
    _check(x, np.float32, 4, "x")
    _check(out, np.uint8, 4, "out")
    cdef int code = _code(isa)
    cdef int64_t B = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], Cp = out.shape[3]
    cdef int64_t ph = int(pad[0]), pw = int(pad[1])
    if ph < 0 or pw < 0 or out.shape[:3] != (B, H + 2 * ph, W + 2 * pw) or Cp < C or Cp % 4 \
            or not (0 <= lo <= z <= hi <= 255):
        raise ValueError("quantize_nchw: inconsistent shapes or parameters")
    if x.size == 0:
        return False
    cdef const float[:, :, :, ::1] xv = x
    cdef uint8_t[:, :, :, ::1] ov = out
    cdef int64_t rows = B * H, r, b, h
    cdef uint8_t[::1] bad = np.zeros(rows, np.uint8)
    cdef int nt = qcore_omp_max_threads() if B * C * H * W >= 65536 else 1
    with nogil:
        if ph == 0 and pw == 0:
            for b in prange(B, schedule="static", num_threads=nt):
                bad[b] = qc_sq_nchw(code, &xv[b, 0, 0, 0], C, H * W, H * W, inv, z, lo, hi, &ov[b, 0, 0, 0], Cp)
        else:
            for r in prange(rows, schedule="static", num_threads=nt):
                b = r // H
                h = r % H
                bad[r] = qc_sq_nchw(code, &xv[b, 0, h, 0], C, W, H * W, inv, z, lo, hi, &ov[b, h + ph, pw, 0], Cp)
    return bool(np.any(np.asarray(bad)))


def quantize_rows(x, float inv, int z, int lo, int hi, out, isa):
    """Static quantization of float32 rows ``x`` (R, C) into uint8 ``out`` (R, Cp), padding set to ``z``
    (NHWC activations with R = B*H*W, or Linear inputs).  Returns True if ``x`` holds NaN or Inf."""
    _check(x, np.float32, 2, "x")
    _check(out, np.uint8, 2, "out")
    cdef int code = _code(isa)
    cdef int64_t R = x.shape[0], C = x.shape[1], Cp = out.shape[1]
    if out.shape[0] != R or Cp < C or Cp % 4 or not (0 <= lo <= z <= hi <= 255):
        raise ValueError("quantize_rows: inconsistent shapes or parameters")
    if R == 0 or C == 0:
        out[...] = z
        return False
    cdef const float[:, ::1] xv = x
    cdef uint8_t[:, ::1] ov = out
    cdef int64_t chunk = max(1, 16384 // max(C, 1)), nchunks = (R + chunk - 1) // chunk, u, r0, rn
    cdef uint8_t[::1] bad = np.zeros(nchunks, np.uint8)
    cdef int nt = qcore_omp_max_threads() if R * C >= 65536 else 1
    with nogil:
        for u in prange(nchunks, schedule="static", num_threads=nt):
            r0 = u * chunk
            rn = R - r0 if R - r0 < chunk else chunk
            bad[u] = qc_sq_rows(code, &xv[r0, 0], rn, C, C, inv, z, lo, hi, &ov[r0, 0], Cp)
    return bool(np.any(np.asarray(bad)))


def conv(a, geom, int za, packed, wg, zc, mult, bias, int mode, bint relu, int zo, out, isa, opad=(0, 0),
         bint nchw=False):
    """The int8 convolution of uint8 NHWC ``a`` (B, H, W, Cp) into ``out`` (B*OH*OW rows of ``ldo`` elements).

    ``geom``: (OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg).  groups == 1: ``packed`` is the
    ``qcore_plugins._gemm.PackedB`` of the (N, KH*KW*Cp) weights (its ISA is used); groups > 1: ``wg`` is the
    C-contiguous int8 (N, KH*KW, Cg) weights and ``isa`` is used.  ``zc`` (``za`` times the column sums of the
    weights, int32 wrapping), ``mult``, ``bias`` (or None): int32 / float32 / float32 arrays of length >= the
    padded column count.  ``opad`` (uint8 output only): ``out`` holds (B, OH + 2*opad[0], OW + 2*opad[1])
    pixel rows — the next layer's zero padding, filled with ``zo`` by the caller — and only the interior is
    written.  ``nchw`` (float output only): ``out`` is (B*N, OH*OW), i.e. float32 NCHW.  ``mode``: 0 int32, 1 float32,
    2 uint8 output.
    """
    _check(a, np.uint8, 4, "a")
    cdef int64_t B = a.shape[0], H = a.shape[1], W = a.shape[2], Cp = a.shape[3]
    cdef int64_t OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg
    OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg = [int(v) for v in geom]
    if min(OH, OW, KH, KW, sh, sw, dh, dw, N, groups) < 1 or ph < 0 or pw < 0 or Cp % 4 or Cp < 4:
        raise ValueError("conv: bad geometry")
    # windows never start past the padded input (the unpadded fast path relies on it)
    if OH > (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1 or OW > (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1 \
            or H + 2 * ph < dh * (KH - 1) + 1 or W + 2 * pw < dw * (KW - 1) + 1:
        raise ValueError("conv: output size inconsistent with the input")
    cdef int64_t T = KH * KW, Np, i
    cdef int code
    cdef const uint8_t[::1] bp
    cdef const int8_t[:, :, ::1] wgv
    cdef int64_t oph = int(opad[0]), opw = int(opad[1])
    if oph < 0 or opw < 0 or ((oph or opw) and mode != 2):
        raise ValueError("conv: output padding is for uint8 output only")
    if groups == 1:
        if packed is None or packed.k != T * Cp or packed.n != N:
            raise ValueError("conv: packed weights do not match the geometry")
        code = packed.isa_code
        Np = packed.np_
        bp = packed.data.view(np.uint8)
    else:
        _check(wg, np.int8, 3, "wg")
        if wg.shape != (N, T, Cg) or N % groups or groups * Cg > Cp:
            raise ValueError("conv: grouped weights do not match the geometry")
        code = _code(isa)
        Np = N
        wgv = wg
    cdef const int32_t[::1] csv = zc
    cdef const float[::1] mv = mult
    cdef const float[::1] bv = bias if bias is not None else None
    if csv.shape[0] < Np or mv.shape[0] < Np or (bias is not None and bv.shape[0] < Np):
        raise ValueError("conv: per-channel arrays too short")
    cdef int64_t M = B * OH * OW, ldo
    if mode not in (0, 1, 2) or not (0 <= za <= 255) or not (0 <= zo <= 255):
        raise ValueError("conv: bad mode or zero point")
    want = (np.int32, np.float32, np.uint8)[mode]
    if not isinstance(out, np.ndarray) or out.dtype != want or out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError("conv: bad output array")
    if nchw:
        if mode != 1 or out.shape != (B * N, OH * OW) or N * OH * OW >= 2**31:
            raise ValueError("conv: NCHW output needs float mode, shape (B*N, OH*OW) and N*OH*OW < 2**31")
        ldo = N
    else:
        if out.shape[0] != B * (OH + 2 * oph) * (OW + 2 * opw) or out.shape[1] < N:
            raise ValueError("conv: bad output array")
        ldo = out.shape[1]
    if M == 0:
        return out
    zrow = np.full(Cp, za, np.uint8)
    cdef const uint8_t[::1] zv = zrow
    cdef cnp.ndarray outa = out
    cdef qc_conv_args g
    g.isa = code
    cdef cnp.ndarray aa = a
    g.inp = <const uint8_t *>cnp.PyArray_DATA(aa)
    g.H, g.W, g.Cp = H, W, Cp
    g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = OH, OW, KH, KW, sh, sw, ph, pw, dh, dw
    g.M, g.N = M, N
    g.Bp = &bp[0] if groups == 1 else NULL
    g.wg = &wgv[0, 0, 0] if groups > 1 else NULL
    g.groups, g.Cg = groups, Cg
    g.zrow = &zv[0]
    g.za = za
    g.zc = &csv[0]
    g.mult = &mv[0]
    g.bias = &bv[0] if bias is not None else NULL
    g.mode, g.relu, g.zo = mode, relu, zo
    g.out = cnp.PyArray_DATA(outa)
    g.ldo = ldo
    g.MC = 64
    g.opad_h, g.opad_w = oph, opw
    g.nchw = nchw
    cdef int64_t units = (M + g.MC - 1) // g.MC, u
    cdef int nt = qcore_omp_max_threads() if M * N * T * Cp >= PARALLEL_MIN_MACS and units > 1 else 1
    cdef uint8_t[::1] fail = np.zeros(units, np.uint8)
    with nogil:
        if nt <= 1:
            for u in range(units):
                fail[u] = qc_conv_unit(&g, u)
        else:
            for u in prange(units, schedule="static", num_threads=nt):
                fail[u] = qc_conv_unit(&g, u)
    if np.any(np.asarray(fail)):
        raise MemoryError("conv: out of memory for the tap pointer table")
    return out
