# cython: language_level=3
"""qcore static int8 convolution kernels (``qcore_plugins._conv``): static activation quantization to uint8
NHWC, and the indirect-GEMM int8 convolution with requantization, bias and fused ReLU.

Low-level: these functions check only what memory safety needs (dtypes, contiguity, sizes).  The validating
entry point is ``qcore.ops.conv`` (``PackedConv2d``); the C core is ``pyx/conv_kernels.h``, design in
``docs/gemm.md`` ("Static int8 convolution").
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.string cimport memset

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
        int64_t in_rs, in_is
        int64_t OH, OW, KH, KW, sh, sw, ph, pw, dh, dw
        int64_t M, N
        const void *Bp
        const int8_t *wg
        const void *dwp
        int64_t groups, Cg
        const uint8_t *zrow
        int32_t za
        const int32_t *zc
        const float *mult
        const float *bias
        int mode
        const uint8_t *res
        int32_t zr
        float mr
        int clamp
        float clo, chi
        int32_t zo
        void *out
        int64_t ldo
        int64_t MC, NC
        int nchw
        const int32_t *tapsum
        int64_t Np
        int window
        int64_t lph, lpw
        int64_t opad_h, opad_w
        int64_t Kr
        int dense
    int qc_sq_rows(int isa, const float *x, int64_t R, int64_t C, int64_t ldx, float inv, int32_t z, int32_t lo,
                   int32_t hi, uint8_t *q, int64_t Cp)
    int qc_sq_nchw(int isa, const float *x, int64_t C, int64_t HW, int64_t cstride, float inv, int32_t z,
                   int32_t lo, int32_t hi, uint8_t *q, int64_t Cp)
    int qc_conv_unit(const qc_conv_args *g, int64_t u)


from qcore.isa import ISA_NAMES

#: the fraction of taps in the padding above which a convolution skips them (qc_conv_window_mode)
WINDOW_MIN_WASTE = 0.08

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
    (B, H + 2*pad[0] (or more), W + 2*pad[1], Cp) (any Cp >= C): ``q = rint(min(max(x * inv, lo - z), hi - z)) + z``
    in the interior, padding channels set to ``z``; the spatial border (and any rows past H + 2*pad[0]) is not
    written (the caller fills it with ``z``).
    Returns True if ``x`` holds NaN or Inf (``out`` is then garbage, in range)."""
    _check(x, np.float32, 4, "x")
    _check(out, np.uint8, 4, "out")
    cdef int code = _code(isa)
    cdef int64_t B = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], Cp = out.shape[3]
    cdef int64_t ph = int(pad[0]), pw = int(pad[1])
    if ph < 0 or pw < 0 or out.shape[0] != B or out.shape[1] < H + 2 * ph or out.shape[2] != W + 2 * pw \
            or Cp < C or not (0 <= lo <= z <= hi <= 255):
        raise ValueError("quantize_nchw: inconsistent shapes or parameters")
    if x.size == 0:
        return False
    cdef const float[:, :, :, ::1] xv = x
    cdef uint8_t[:, :, :, ::1] ov = out
    cdef int64_t rows = B * H, r, b, h
    cdef uint8_t[::1] bad = np.zeros(rows, np.uint8)
    cdef int nt = qcore_omp_max_threads() if B * C * H * W >= 65536 else 1
    cdef bint whole = ph == 0 and pw == 0 and out.shape[1] == H  # images one after another: one span per image
    with nogil:
        if whole:
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


cdef class ConvCall:
    """One convolution prepared for inputs and outputs of fixed shapes: every argument validated and the kernel's
    argument block filled once (:func:`prepare`); :meth:`run` then checks only the two arrays' dtypes and shapes
    and runs the kernel (a layer calls the same shapes again and again)."""

    cdef qc_conv_args g
    cdef object keep            # the arrays the argument block points into
    cdef readonly tuple in_shape, out_shape
    cdef readonly object out_dtype
    cdef int64_t off, units, nu, nt
    cdef int64_t oph, opw, rows_out, row_bytes, OHp, OWp
    cdef readonly bint residual

    def run(self, a, out, res=None):
        """Convolve uint8 ``a`` (of ``in_shape``) into ``out`` (of ``out_shape``); for uint8 output the border
        of ``out`` (the output padding) is filled with the output zero point here.  ``res``: the residual codes,
        an array of ``out``'s shape and dtype, when the call was prepared with one."""
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != self.in_shape \
                or not a.flags.c_contiguous:
            raise ValueError(f"conv: the input must be a C-contiguous uint8 array of shape {self.in_shape}")
        if not isinstance(out, np.ndarray) or out.dtype != self.out_dtype or out.shape != self.out_shape \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"conv: the output must be a writeable C-contiguous {np.dtype(self.out_dtype).name} "
                             f"array of shape {self.out_shape}")
        cdef qc_conv_args g = self.g
        if self.residual:
            if not isinstance(res, np.ndarray) or res.dtype != np.uint8 or res.shape != self.out_shape \
                    or not res.flags.c_contiguous:
                raise ValueError(f"conv: the residual must be a C-contiguous uint8 array of shape {self.out_shape}")
            g.res = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>res)
        elif res is not None:
            raise ValueError("conv: this call was prepared without a residual")
        g.inp = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>a) + self.off
        g.out = cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef int64_t units = self.units, u, nfail = 0, b, r
        cdef int nt = self.nt
        cdef uint8_t *o = <uint8_t *>g.out
        with nogil:
            if g.mode == 2 and (self.oph or self.opw):  # the border of the padded output holds zo
                for b in range(self.rows_out // self.OHp):
                    for r in range(self.OHp):
                        if r < self.oph or r >= self.OHp - self.oph:
                            memset(o + (b * self.OHp + r) * self.row_bytes, g.zo, <size_t>self.row_bytes)
                        else:
                            memset(o + (b * self.OHp + r) * self.row_bytes, g.zo, <size_t>(self.opw * g.ldo))
                            memset(o + (b * self.OHp + r + 1) * self.row_bytes - self.opw * g.ldo, g.zo,
                                   <size_t>(self.opw * g.ldo))
            if nt <= 1:
                for u in range(units):
                    nfail += qc_conv_unit(&g, u)
            else:
                for u in prange(units, schedule="static", num_threads=nt):
                    nfail += qc_conv_unit(&g, u)
        if nfail:
            raise MemoryError("conv: out of memory for the tap pointer table")
        return out


def prepare(in_shape, geom, int za, packed, wg, zc, mult, bias, int mode, clamp, int zo, isa, opad=(0, 0),
            bint nchw=False, crop=None, dwpack=None, lpad=(0, 0), tapsum=None, residual=None, bint dense=False):
    """A :class:`ConvCall` for uint8 NHWC inputs of shape ``in_shape`` (B, H, W, Cp).

    ``geom``: (OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg).  groups == 1: ``packed`` is the
    ``qcore_plugins._gemm.PackedB`` of the (N, KH*KW*Cp) weights (its ISA is used); groups > 1: ``wg`` is the
    C-contiguous int8 (N, KH*KW, Cg) weights and ``isa`` is used (None: the current copy).  ``dwpack``:
    depthwise layers (groups == N == C): the weights packed for that copy by :func:`pack_depthwise` (else the
    grouped loop runs).  ``zc`` (``za`` times the column sums of the weights, int32 wrapping), ``mult``,
    ``bias`` (or None): int32 / float32 / float32 arrays of length >= the padded column count.
    ``crop`` = (y0, x0, H', W'): the convolution's input is the H' x W' window of each image starting at pixel
    (y0, x0) (the interior of a buffer with a border, seen with the border this layer's padding needs); None:
    the whole image.  ``lpad``: the zero padding carried inside that window (its outer ``lpad`` rows and columns
    hold ``za``): taps there are skipped where the kernel can, which needs ``tapsum`` (int32 (KH*KW, Np): per
    tap the sum over its channels of each column's weights, zero past N) to correct the zero point.
    ``residual`` = (zr, mr) (uint8 output, groups == 1): :meth:`ConvCall.run` takes residual codes laid out like
    the output, and the epilogue adds ``float32(r - zr) * mr`` after the bias, before the clamp.  ``dense``:
    "dense rows" input (an RGB image): pixels of ``Cp = C`` bytes, any C (e.g. 3), groups == 1, no padding
    outside the window (``ph = pw = 0``: a crop whose border holds it), dw == 1; the packed weights are
    (N, KH*Kr), Kr = roundup4(KW*C), each kernel row's KW*C weights ordered (kw, c) then zeros; the kernel reads
    Kr bytes from each window row, so Kr - KW*C bytes past the last window's end must lie inside the input.  ``clamp``: None, or (lo, hi) floats the output is clipped to before rounding (float
    output: the activation's bounds, e.g. (0, inf) for ReLU; uint8 output: in code units relative to ``zo``,
    within [-zo, 255 - zo]); uint8 output without a clamp clips to [-zo, 255 - zo].  ``mode``: 0 int32,
    1 float32, 2 uint8 output.  The output array is ``(B*(OH + 2*opad[0])*(OW + 2*opad[1]), ldo)`` with
    ``ldo`` = roundup(N, 4) for uint8 output (padding channels hold ``zo``; ``opad``: a border of that many
    pixels holding ``zo``, the next layer's zero padding) and N otherwise, or ``(B*N, OH*OW)`` with ``nchw``
    (float output in NCHW order).
    """
    cdef int64_t B, H, W, Cp
    B, H, W, Cp = [int(v) for v in in_shape]
    cdef int64_t Hb = H, Wb = W, y0 = 0, x0 = 0
    if crop is not None:
        y0, x0, H, W = [int(v) for v in crop]
        if y0 < 0 or x0 < 0 or H < 1 or W < 1 or y0 + H > Hb or x0 + W > Wb:
            raise ValueError("conv: crop outside the input")
    cdef int64_t OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg
    OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, N, groups, Cg = [int(v) for v in geom]
    if B < 0 or min(OH, OW, KH, KW, sh, sw, dh, dw, N, groups) < 1 or ph < 0 or pw < 0 or \
            (not dense and (Cp % 4 or Cp < 4)) or Cp < 1:
        raise ValueError("conv: bad geometry")
    cdef int64_t Kr = (KW * Cp + 3) // 4 * 4 if dense else KW * Cp
    if dense and (groups != 1 or ph or pw or dw != 1 or dwpack is not None or tapsum is not None):
        raise ValueError("conv: dense-rows input needs groups == 1, dw == 1 and no padding outside the window")
    # windows never start past the padded input (the unpadded fast path relies on it)
    if OH > (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1 or OW > (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1 \
            or H + 2 * ph < dh * (KH - 1) + 1 or W + 2 * pw < dw * (KW - 1) + 1:
        raise ValueError("conv: output size inconsistent with the input")
    cdef int64_t T = KH * KW, Np
    cdef int code
    cdef const uint8_t[::1] bp
    cdef const int8_t[:, :, ::1] wgv
    cdef int64_t oph = int(opad[0]), opw = int(opad[1])
    if oph < 0 or opw < 0 or ((oph or opw) and mode != 2):
        raise ValueError("conv: output padding is for uint8 output only")
    cdef ConvCall call = ConvCall.__new__(ConvCall)
    keep = []
    if groups == 1:
        if packed is None or packed.k != KH * Kr or packed.n != N:
            raise ValueError("conv: packed weights do not match the geometry")
        code = packed.isa_code
        Np = packed.np_
        keep.append(packed)
        bp = packed.data.view(np.uint8)
        call.g.Bp = &bp[0]
        call.g.wg = NULL
    else:
        _check(wg, np.int8, 3, "wg")
        if wg.shape != (N, T, Cg) or N % groups or groups * Cg > Cp:
            raise ValueError("conv: grouped weights do not match the geometry")
        code = _code(isa)
        Np = N
        wgv = wg
        keep.append(wg)
        call.g.Bp = NULL
        call.g.wg = &wgv[0, 0, 0]
    call.g.dwp = NULL
    cdef const uint8_t[::1] dwv
    if dwpack is not None:
        if groups == 1 or groups != N or Cg != 1:
            raise ValueError("conv: packed depthwise weights for a layer that is not depthwise")
        _check(dwpack, np.uint8, 1, "dwpack")
        if dwpack.shape[0] != depthwise_packed_bytes(N, T, code):
            raise ValueError("conv: packed depthwise weights do not match the geometry")
        dwv = dwpack
        keep.append(dwpack)
        call.g.dwp = &dwv[0]
    _check(zc, np.int32, 1, "zc")
    _check(mult, np.float32, 1, "mult")
    if bias is not None:
        _check(bias, np.float32, 1, "bias")
    cdef const int32_t[::1] csv = zc
    cdef const float[::1] mv = mult
    cdef const float[::1] bv = bias if bias is not None else None
    if csv.shape[0] < Np or mv.shape[0] < Np or (bias is not None and bv.shape[0] < Np):
        raise ValueError("conv: per-channel arrays too short")
    if mode not in (0, 1, 2) or not (0 <= za <= 255) or not (0 <= zo <= 255):
        raise ValueError("conv: bad mode or zero point")
    cdef int64_t M = B * OH * OW, ldo
    if nchw:
        if mode != 1 or N * OH * OW >= 2**31:
            raise ValueError("conv: NCHW output needs float mode and N*OH*OW < 2**31")
        ldo = N
        call.out_shape = (B * N, OH * OW)
    else:
        ldo = (N + 3) // 4 * 4 if mode == 2 else N
        call.out_shape = (B * (OH + 2 * oph) * (OW + 2 * opw), ldo)
    call.out_dtype = (np.int32, np.float32, np.uint8)[mode]
    call.in_shape = (B, Hb, Wb, Cp)
    zrow = np.full(Cp, za, np.uint8)
    keep += [zc, mult, bias, zrow]
    cdef const uint8_t[::1] zv = zrow
    call.keep = keep
    call.off = (y0 * Wb + x0) * Cp
    if dense and B > 0:  # the last window row's read of Kr bytes ends inside the buffer
        if (((B - 1) * Hb + y0 + (OH - 1) * sh + (KH - 1) * dh) * Wb + x0 + (OW - 1) * sw) * Cp + Kr > B * Hb * Wb * Cp:
            raise ValueError("conv: dense-rows input needs Kr - KW*C bytes after the last window (an extra row)")
    call.g.Kr, call.g.dense = Kr, dense
    call.g.isa = code
    call.g.inp = NULL
    call.g.H, call.g.W, call.g.Cp = H, W, Cp
    call.g.in_rs, call.g.in_is = Wb * Cp, Hb * Wb * Cp
    call.g.OH, call.g.OW, call.g.KH, call.g.KW = OH, OW, KH, KW
    call.g.sh, call.g.sw, call.g.ph, call.g.pw, call.g.dh, call.g.dw = sh, sw, ph, pw, dh, dw
    call.g.M, call.g.N = M, N
    call.g.groups, call.g.Cg = groups, Cg
    call.g.zrow = &zv[0]
    call.g.za = za
    call.g.zc = &csv[0]
    call.g.mult = &mv[0]
    call.g.bias = &bv[0] if bias is not None else NULL
    call.g.mode, call.g.zo = mode, zo
    call.g.res = NULL
    call.residual = residual is not None
    call.g.zr, call.g.mr = 0, 0.0
    if residual is not None:
        if mode != 2 or groups != 1:
            raise ValueError("conv: a residual is for uint8 output of a convolution with groups == 1")
        call.g.zr, call.g.mr = int(residual[0]), float(residual[1])
        if not 0 <= call.g.zr <= 255:
            raise ValueError("conv: the residual zero point must lie in [0, 255]")
    call.g.clamp = clamp is not None or mode == 2
    if clamp is not None:
        call.g.clo, call.g.chi = float(clamp[0]), float(clamp[1])
        if mode == 2 and not (-zo <= call.g.clo <= call.g.chi <= 255 - zo):
            raise ValueError("conv: a uint8 clamp must lie within [-zo, 255 - zo]")
    else:
        call.g.clo, call.g.chi = -zo, 255 - zo
    call.g.out = NULL
    call.g.ldo = ldo
    call.g.opad_h, call.g.opad_w = oph, opw
    call.g.lph, call.g.lpw = int(lpad[0]), int(lpad[1])
    call.g.tapsum = NULL
    call.g.Np = Np
    cdef const int32_t[:, ::1] tsv
    if tapsum is not None:
        _check(tapsum, np.int32, 2, "tapsum")
        if tapsum.shape != (T, Np) or groups != 1:
            raise ValueError("conv: tapsum must have shape (KH*KW, Np) for a convolution with groups == 1")
        tsv = tapsum
        keep.append(tapsum)
        call.g.tapsum = &tsv[0, 0]
    # skip the padding where it is at least WINDOW_MIN_WASTE of the taps (position-major order costs some input
    # locality; a large image wastes little)
    call.g.window = 0
    if (call.g.lph or call.g.lpw) and not dense:
        vh = sum(sum(1 for kh in range(KH) if call.g.lph <= oh * sh + kh * dh < H - call.g.lph) for oh in range(OH))
        vw = sum(sum(1 for kw in range(KW) if call.g.lpw <= ow * sw + kw * dw < W - call.g.lpw) for ow in range(OW))
        call.g.window = 1 - (vh * vw) / float(OH * KH * OW * KW) >= WINDOW_MIN_WASTE
    if call.g.lph < 0 or call.g.lpw < 0 or 2 * call.g.lph >= H or 2 * call.g.lpw >= W or \
            ((call.g.lph or call.g.lpw) and (ph or pw)):
        raise ValueError("conv: bad padding inside the input window")
    call.g.nchw = nchw
    call.oph, call.opw = oph, opw
    call.OHp, call.OWp = OH + 2 * oph, OW + 2 * opw
    call.rows_out = B * call.OHp
    call.row_bytes = call.OWp * ldo
    # work units: blocks of MC output pixels x blocks of NC output channels; the channels are split only when
    # the pixels alone give too few units for the threads
    cdef int nthreads = qcore_omp_max_threads()
    # pixels per unit: at most 64 and a multiple of 8 (the register tile), the size that gives the threads' static
    # shares the fewest pixels (7x7 images at batch 32 are 1568 pixels: 28 units of 56, 14 per thread, rather
    # than 25 units of 64, 13 + 12)
    cdef int64_t mc = 64, mcc, share, best = -1
    if nthreads > 1:
        for mcc in range(64, 31, -8):
            share = ((M + mcc - 1) // mcc + nthreads - 1) // nthreads * mcc
            if best < 0 or share < best:
                best, mc = share, mcc
    call.g.MC = mc
    cdef int64_t mu = (M + mc - 1) // mc, nc = N, step, nparts
    if groups == 1:
        step = qc_isa_nr(code)       # whole register panels
    elif call.g.dwp != NULL:
        step = 64                    # the depthwise kernels' channel blocks
    else:
        step = N                     # the grouped loop takes all channels
    if 0 < mu < 4 * nthreads and N > step:
        nparts = min((4 * nthreads + mu - 1) // mu, (N + step - 1) // step)
        nc = ((N + nparts - 1) // nparts + step - 1) // step * step
    call.g.NC = nc
    call.nu = (N + nc - 1) // nc
    call.units = mu * call.nu if M > 0 else 0
    call.nt = nthreads if M * N * T * Cp // max(groups, 1) >= PARALLEL_MIN_MACS and call.units > 1 else 1
    return call


def conv(a, geom, int za, packed, wg, zc, mult, bias, int mode, clamp, int zo, out, isa, opad=(0, 0),
         bint nchw=False, crop=None, dwpack=None):
    """:func:`prepare` then :meth:`ConvCall.run` (one call): the int8 convolution of uint8 NHWC ``a`` into the
    2-D ``out`` described there."""
    _check(a, np.uint8, 4, "a")
    return prepare(a.shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, isa, opad, nchw, crop,
                   dwpack).run(a, out)


def depthwise_packed_bytes(int64_t n, int64_t taps, int code):
    """Bytes of the packed depthwise weights of ``n`` channels and ``taps`` taps for copy ``code``."""
    if code == QC_ISA_VNNI:
        return ((n + 63) // 64) * taps * 256
    return taps * n * 4


def pack_depthwise(w, isa=None):
    """Depthwise int8 weights ``w`` (N, T) (T = KH*KW taps) in the layout of ``isa``'s copy (None: the current
    one), as bytes (conv_kernels.h, "Depthwise"): VNNI: per block of 64 channels and tap, 4 phase vectors of 64
    bytes, byte 4j + d of phase d = w[64b + 4j + d, t] (the other bytes 0); other copies: int32 (T, N)."""
    cdef int code = _code(isa)
    _check(w, np.int8, 2, "w")
    n, taps = w.shape
    if code == QC_ISA_VNNI:
        nb = (n + 63) // 64
        full = np.zeros((nb * 64, taps), np.int8)
        full[:n] = w
        blocks = full.reshape(nb, 16, 4, taps)                      # [b, j, d, t]: channel 64b + 4j + d
        out = np.zeros((nb, taps, 4, 16, 4), np.int8)               # [b, t, phase, j, byte]
        for d in range(4):
            out[:, :, d, :, d] = blocks[:, :, d, :].transpose(0, 2, 1)
    else:
        out = w.T.astype(np.int32)
    return np.ascontiguousarray(out).reshape(-1).view(np.uint8)


# ------------------------------------------------------------------------------------------ static CNN ops

cdef extern from "qcnn_kernels.h" nogil:
    ctypedef struct qc_pool_args:
        const uint8_t *inp "in"
        int64_t H, W, Cp, in_rs, in_is
        uint8_t *out
        int64_t OH, OW, out_rs, out_is
        const int32_t *hs
        const int32_t *he
        const int32_t *ws
        const int32_t *we
        int64_t KH, KW, sh, sw, ph, pw, dh, dw
        const double *div
        int32_t z
    void qc_add_span(int isa, const uint8_t *a, const uint8_t *b, uint8_t *o, int64_t n, int32_t za, int32_t zb,
                     float ma, float mb, float lo, float hi, int32_t zo)
    void qc_maxpool_row(int isa, const qc_pool_args *g, int64_t b, int64_t oh)
    void qc_avgpool_row(int isa, const qc_pool_args *g, int64_t b, int64_t oh, int32_t *acc)
    void qc_lut_pixels(int isa, const uint8_t *s, int64_t sld, int64_t C, uint8_t *d, int64_t dld, int64_t npix,
                       const uint8_t *T)
    void qc_dequant_row(int isa, const uint8_t *row, int64_t ld, int64_t C, int64_t W, int32_t z, float sc,
                        float *out, int64_t plane)

#: below this many bytes of output an op runs on one thread
PARALLEL_MIN_BYTES = 1 << 16


def _interior(a, border, name):
    """(H, W, Cp, row stride, image stride, byte offset of the interior) of a uint8 NHWC buffer with a border."""
    _check(a, np.uint8, 4, name)
    bh, bw = int(border[0]), int(border[1])
    hb, wb, cp = a.shape[1], a.shape[2], a.shape[3]
    if bh < 0 or bw < 0 or hb - 2 * bh < 1 or wb - 2 * bw < 1 or cp < 1:
        raise ValueError(f"{name}: border {(bh, bw)} does not fit a buffer of shape {a.shape}")
    return hb - 2 * bh, wb - 2 * bw, cp, wb * cp, hb * wb * cp, (bh * wb + bw) * cp


cdef inline uint8_t *_ptr(cnp.ndarray a, int64_t off):
    return <uint8_t *>cnp.PyArray_DATA(a) + off


def add(a, a_border, int za, float ma, b, b_border, int zb, float mb, out, out_border, int zo, float lo, float hi,
        isa=None):
    """``out = rint(clip(float(a - za) * ma + float(b - zb) * mb, lo, hi)) + zo`` over the interiors (the same
    (B, H, W, Cp)) of three uint8 NHWC buffers; [lo, hi] within [-zo, 255 - zo] (float32, no FMA)."""
    cdef int code = _code(isa)
    H, W, Cp, ars, ais, aoff = _interior(a, a_border, "a")
    bH, bW, bCp, brs, bis, boff = _interior(b, b_border, "b")
    oH, oW, oCp, ors, ois, ooff = _interior(out, out_border, "out")
    if not (a.shape[0] == b.shape[0] == out.shape[0]) or (H, W, Cp) != (bH, bW, bCp) or (H, W, Cp) != (oH, oW, oCp):
        raise ValueError("add: a, b and out must have the same batch, interior size and channels")
    if not (0 <= za <= 255 and 0 <= zb <= 255 and 0 <= zo <= 255) or not (-zo <= lo <= hi <= 255 - zo):
        raise ValueError("add: zero points must lie in [0, 255] and [lo, hi] within [-zo, 255 - zo]")
    cdef int64_t rows = a.shape[0] * H, n = W * Cp, r, bb, h
    cdef int64_t Hc = H, ars_ = ars, ais_ = ais, brs_ = brs, bis_ = bis, ors_ = ors, ois_ = ois
    cdef uint8_t *pa = _ptr(a, aoff)
    cdef uint8_t *pb = _ptr(b, boff)
    cdef uint8_t *po = _ptr(out, ooff)
    cdef int nt = qcore_omp_max_threads() if rows * n >= PARALLEL_MIN_BYTES and rows > 1 else 1
    with nogil:
        for r in prange(rows, schedule="static", num_threads=nt):
            bb = r // Hc
            h = r % Hc
            qc_add_span(code, pa + bb * ais_ + h * ars_, pb + bb * bis_ + h * brs_, po + bb * ois_ + h * ors_, n,
                        za, zb, ma, mb, lo, hi, zo)
    return out


cdef int _pool_setup(qc_pool_args *g, a, a_border, out, out_border) except -1:
    H, W, Cp, rs, is_, off = _interior(a, a_border, "a")
    OH, OW, oCp, ors, ois, ooff = _interior(out, out_border, "out")
    if out.shape[0] != a.shape[0] or oCp != Cp:
        raise ValueError("pool: out must have the batch and channels of a")
    g.inp = _ptr(a, off)
    g.H, g.W, g.Cp, g.in_rs, g.in_is = H, W, Cp, rs, is_
    g.out = _ptr(out, ooff)
    g.OH, g.OW, g.out_rs, g.out_is = OH, OW, ors, ois
    return 0


def maxpool(a, a_border, out, out_border, kernel, stride, padding, dilation, isa=None):
    """Max pooling of the interior of uint8 NHWC ``a`` into the interior of ``out`` (its size is the output
    size): output pixel (oh, ow) is the largest code over the taps (oh*sh - ph + kh*dh, ow*sw - pw + kw*dw)
    inside the input (every window must hold one)."""
    cdef int code = _code(isa)
    cdef qc_pool_args g
    _pool_setup(&g, a, a_border, out, out_border)
    g.KH, g.KW = [int(v) for v in kernel]
    g.sh, g.sw = [int(v) for v in stride]
    g.ph, g.pw = [int(v) for v in padding]
    g.dh, g.dw = [int(v) for v in dilation]
    if min(g.KH, g.KW, g.sh, g.sw, g.dh, g.dw) < 1 or g.ph < 0 or g.pw < 0:
        raise ValueError("maxpool: bad window")
    # every window holds a tap inside the input (torch's own condition: padding <= kernel / 2, and the last
    # window starts inside the input or the left padding)
    if (g.OH - 1) * g.sh - g.ph >= g.H or (g.OW - 1) * g.sw - g.pw >= g.W or g.ph > (g.KH - 1) * g.dh \
            or g.pw > (g.KW - 1) * g.dw:
        raise ValueError("maxpool: a window lies outside the input")
    cdef int64_t B = a.shape[0], rows = B * g.OH, r
    cdef int nt = qcore_omp_max_threads() if rows * g.OW * g.Cp * g.KH * g.KW >= PARALLEL_MIN_BYTES and rows > 1 else 1
    with nogil:
        for r in prange(rows, schedule="static", num_threads=nt):
            qc_maxpool_row(code, &g, r // g.OH, r % g.OH)
    return out


def avgpool(a, a_border, out, out_border, hs, he, ws, we, div, int z, isa=None):
    """Average pooling of the interior of uint8 NHWC ``a`` into the interior of ``out``: output pixel (oh, ow)
    averages input rows [hs[oh], he[oh]) x columns [ws[ow], we[ow]) (inside the input, int32 arrays) with the
    divisor ``div[oh, ow]`` (float64 (OH, OW)): ``q = clip(rint((S - n*z) / d) + z, 0, 255)``."""
    cdef int code = _code(isa)
    cdef qc_pool_args g
    _pool_setup(&g, a, a_border, out, out_border)
    _check(hs, np.int32, 1, "hs"); _check(he, np.int32, 1, "he")
    _check(ws, np.int32, 1, "ws"); _check(we, np.int32, 1, "we")
    _check(div, np.float64, 2, "div")
    if hs.shape[0] != g.OH or he.shape[0] != g.OH or ws.shape[0] != g.OW or we.shape[0] != g.OW \
            or div.shape != (g.OH, g.OW):
        raise ValueError("avgpool: window tables do not match the output size")
    if (hs < 0).any() or (he > g.H).any() or (he <= hs).any() or (ws < 0).any() or (we > g.W).any() \
            or (we <= ws).any() or not (div > 0).all() or not 0 <= z <= 255:
        raise ValueError("avgpool: windows must be non-empty and inside the input, divisors positive")
    cdef const int32_t[::1] hsv = hs, hev = he, wsv = ws, wev = we
    cdef const double[:, ::1] dv = div
    g.hs, g.he, g.ws, g.we, g.div, g.z = &hsv[0], &hev[0], &wsv[0], &wev[0], &dv[0, 0], z
    cdef int64_t B = a.shape[0], rows = B * g.OH, r
    cdef int nt = qcore_omp_max_threads() if rows * g.OW * g.Cp >= PARALLEL_MIN_BYTES // 8 and rows > 1 else 1
    cdef int32_t[:, ::1] acc = np.empty((max(nt, 1), g.Cp), np.int32)
    cdef int tid
    with nogil:
        for r in prange(rows, schedule="static", num_threads=nt):
            tid = threadid()
            qc_avgpool_row(code, &g, r // g.OH, r % g.OH, &acc[tid, 0])
    return out


def lut(a, a_border, int channels, out, out_border, int channel_offset, table, isa=None):
    """The first ``channels`` bytes of every interior pixel of ``a`` through the 256-entry uint8 ``table``
    (None: copied) into channels [channel_offset, channel_offset + channels) of the interior pixels of ``out``
    (the same batch and interior size)."""
    cdef int code = _code(isa)
    H, W, Cp, rs, is_, off = _interior(a, a_border, "a")
    oH, oW, oCp, ors, ois, ooff = _interior(out, out_border, "out")
    if out.shape[0] != a.shape[0] or (H, W) != (oH, oW):
        raise ValueError("lut: a and out must have the same batch and interior size")
    if channels < 1 or channels > Cp or channel_offset < 0 or channel_offset + channels > oCp:
        raise ValueError("lut: channels out of range")
    cdef const uint8_t[::1] tv
    cdef const uint8_t *tp = NULL
    if table is not None:
        _check(table, np.uint8, 1, "table")
        if table.shape[0] != 256:
            raise ValueError("lut: table must have 256 entries")
        tv = table
        tp = &tv[0]
    cdef int64_t rows = a.shape[0] * H, r, Hc = H, Wc = W, Cpc = Cp, oCpc = oCp, C = channels
    cdef int64_t rs_ = rs, is__ = is_, ors_ = ors, ois_ = ois
    cdef uint8_t *pa = _ptr(a, off)
    cdef uint8_t *po = _ptr(out, ooff + channel_offset)
    cdef int nt = qcore_omp_max_threads() if rows * W * channels >= PARALLEL_MIN_BYTES and rows > 1 else 1
    with nogil:
        for r in prange(rows, schedule="static", num_threads=nt):
            qc_lut_pixels(code, pa + (r // Hc) * is__ + (r % Hc) * rs_, Cpc, C,
                          po + (r // Hc) * ois_ + (r % Hc) * ors_, oCpc, Wc, tp)
    return out


def dequantize(a, a_border, int channels, int z, float scale, out, isa=None):
    """float32 NCHW ``out`` (B, channels, H, W) = ``float(q - z) * scale`` of the interior of uint8 NHWC ``a``."""
    cdef int code = _code(isa)
    H, W, Cp, rs, is_, off = _interior(a, a_border, "a")
    _check(out, np.float32, 4, "out")
    if out.shape != (a.shape[0], channels, H, W) or channels < 1 or channels > Cp or not 0 <= z <= 255:
        raise ValueError("dequantize: out must have shape (B, channels, H, W) with channels <= Cp")
    cdef int64_t rows = a.shape[0] * H, r, Hc = H, Wc = W, Cpc = Cp, C = channels, rs_ = rs, is__ = is_
    cdef uint8_t *pa = _ptr(a, off)
    cdef float *po = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef int nt = qcore_omp_max_threads() if rows * W * channels >= PARALLEL_MIN_BYTES and rows > 1 else 1
    with nogil:
        for r in prange(rows, schedule="static", num_threads=nt):
            qc_dequant_row(code, pa + (r // Hc) * is__ + (r % Hc) * rs_, Cpc, C, Wc, z, scale,
                           po + (r // Hc) * C * Hc * Wc + (r % Hc) * Wc, Hc * Wc)
    return out
