"""The ``cython`` kernel: the fast default, equal bit for bit to the ``numpy`` reference.

It implements every kernel capability (docs/contracts.md §1).  The work happens in extensions, each a plain
set of functions on validated arrays:

* ``qcore_plugins._quant`` (``pyx/quant.pyx``, ``pyx/quant_kernels.h``): min/max, affine quantize and
  dequantize, bit packing;
* ``qcore_plugins._codebook`` (``pyx/codebook.pyx``, ``pyx/codebook_kernels.h``): table decode, nearest
  codebook entry, log levels and their squared errors (the ``log`` and ``kmeans`` schemes);
* ``qcore_plugins._hist`` (``pyx/hist.pyx``, ``pyx/hist_kernels.h``): histograms — streaming counts, per-bin
  statistics (``kmeans``) — and the error models evaluated on them (the histogram observers);
* ``qcore_plugins._scalesearch``: the ``linear`` scheme's low-bit scale search;
* ``qcore_plugins._gemm`` (``pyx/gemm.pyx``): the int8 GEMM (``int8_gemm``); ``qcore_plugins._lowbit``
  (``pyx/lowbit.pyx``): the low-bit GEMM (``lowbit_gemm``); ``qcore_plugins._conv`` (``pyx/conv.pyx``): the
  static int8 convolution (``qconv2d``).

One fused pass per operation, GIL released, OpenMP threads over rows/chunks (``OMP_NUM_THREADS`` honoured;
small calls stay on one thread), inner loops vectorized at baseline x86-64 with AVX2 / AVX-512 copies: one
instruction-set level for every extension of the kernel, the best the CPU runs up to the ``QCORE_ISA`` cap,
switched together by ``set_isa`` (qcore/isa.py, docs/usage.md).  The schemes and observers reach these only through this kernel.

This module only maps the ``(outer, C, inner)`` views the :class:`qcore.Kernel` base class hands over
onto the two layouts the extension knows:

* *runs* — ``inner`` long enough (or one channel): each ``(o, c)`` row of ``inner`` elements is a run with
  scalar parameters; a single long run (per-tensor) is cut into chunks, one group per thread;
* *rows* — short ``inner`` (per-channel along the last axis, ``inner == 1``): parameters become vectors
  of length ``C*inner`` (tiled a few times when that is short) applied element by element.

NaN/Inf detection for ``quantize_affine`` happens inside the same pass over the input (exponent bits
OR-reduced), so validation adds no extra pass over memory.
"""
from __future__ import annotations

import numpy as np

from qcore import Kernel, hookimpl
from qcore.kernels import CAPABILITIES
from qcore.validation import non_finite_error

try:
    from qcore_plugins import _codebook, _hist, _quant, _scalesearch
except ImportError as exc:  # extensions not built: the kernel reports itself unavailable (the numpy one remains)
    _quant = _codebook = _hist = _scalesearch = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _IMPORT_ERROR = None
try:
    from qcore_plugins import _kmeans
except ImportError:  # pragma: no cover - only without a built extension
    _kmeans = None
try:
    from qcore_plugins import _lowbit
except ImportError:  # pragma: no cover - only without a built extension
    _lowbit = None
try:  # the int8 GEMM and convolution (qcore.ops)
    from qcore_plugins import _conv, _gemm
except ImportError:  # pragma: no cover - only without a built extension
    _gemm = _conv = None

#: every extension of this kernel: each holds a ``qcore.isa.Switch`` (``ISA``), and ``set_isa`` switches all
EXTENSIONS = tuple(m for m in (_quant, _codebook, _hist, _scalesearch, _gemm, _lowbit, _conv, _kmeans)
                   if m is not None)

# runs shorter than this use the element-wise "rows" layout instead of one call per run
_RUN_MIN = 16
# rows shorter than this are processed several at a time (parameter vectors tiled)
_ROW_MIN = 512
# zero points up to this magnitude take the fast quantize loop (see pyx/quant_kernels.h)
_FAST_ZP_MAX = 1 << 21
# bin_stats rows longer than this are split between threads
_SPLIT_MIN = 1 << 16


def _row_tiling(outer: int, width: int) -> tuple[int, int]:
    """``(m, main)``: process rows ``m`` at a time (``m*width >= _ROW_MIN``); rows ``main:`` are left over."""
    m = 1 if width >= _ROW_MIN else min(outer, -(-_ROW_MIN // width))
    return m, (outer // m) * m


class CythonKernel(Kernel):
    name = "cython"
    priority = 100
    capabilities = CAPABILITIES

    @classmethod
    def available(cls) -> bool:
        return _quant is not None

    # -- instruction sets: one level for every extension (qcore/isa.py) -------------------------------------
    def isas(self):
        return _quant.ISA.levels()

    @property
    def isa(self):
        return _quant.ISA.level

    def _set_isa(self, level):
        for ext in EXTENSIONS:
            ext.ISA.set(level)

    # -- k-means fitting (capability "kmeans_fit", pyx/kmeans.pyx) ---------------------------------------
    def _kmeans_fit_groups(self, rows, K, max_iter, alt, float16):
        out = np.empty((rows.shape[0], K), np.float32)
        return out, _kmeans.fit_groups(rows, K, max_iter, alt, float16, out)  # status: see KMeansFit

    def _kmeans_fit_rows(self, rows, K, bins, lo, hi, tol, max_iter):
        out = np.zeros((rows.shape[0], K), np.float32)
        status = np.zeros(rows.shape[0], np.int8)
        _kmeans.fit_rows(rows, K, bins, lo, hi, tol, max_iter, out, status)
        return out, status

    def _kmeans_fit_weighted(self, x, w, K, tol, max_iter):
        out = np.zeros((x.shape[0], K), np.float32)
        status = np.zeros(x.shape[0], np.int8)
        _kmeans.fit_weighted(x, w, K, tol, max_iter, out, status)
        return out, status

    # -- min / max ------------------------------------------------------------------------------------
    def _minmax(self, x3):
        outer, C, inner = x3.shape
        if C == 1 or inner >= _RUN_MIN:
            runs = x3.reshape(-1, inner) if C != 1 else x3.reshape(1, -1)
            mn = np.empty(C, np.float32)
            mx = np.empty(C, np.float32)
            _quant.minmax_runs(runs, C, mn, mx)
            return mn, mx
        width = C * inner
        x2 = x3.reshape(outer, width)
        m, main = _row_tiling(outer, width)
        parts_mn, parts_mx = [], []
        for block, w in ((x2[:main].reshape(-1, width * m), width * m), (x2[main:], width)):
            if block.shape[0] == 0:
                continue
            cmn = np.empty(w, np.float32)
            cmx = np.empty(w, np.float32)
            _quant.minmax_rows(block, cmn, cmx)
            # numpy min/max propagate NaN, as the kernel does
            parts_mn.append(cmn.reshape(-1, C, inner).min(axis=(0, 2)))
            parts_mx.append(cmx.reshape(-1, C, inner).max(axis=(0, 2)))
        mn = parts_mn[0] if len(parts_mn) == 1 else np.minimum(parts_mn[0], parts_mn[1])
        mx = parts_mx[0] if len(parts_mx) == 1 else np.maximum(parts_mx[0], parts_mx[1])
        return mn.astype(np.float32, copy=False), mx.astype(np.float32, copy=False)

    # -- quantize ----------------------------------------------------------------------------------------
    def _quantize_affine(self, x3, inv_scale, zero_point, qmin, qmax, out3):
        outer, C, inner = x3.shape
        out8 = out3.view(np.uint8)
        inv = np.ascontiguousarray(inv_scale, dtype=np.float32)
        zpf = zero_point.astype(np.float32)  # float(zero_point) rounded exactly as the reference does
        lo, hi = float(qmin), float(qmax)
        # the fast loop clamps x*inv_scale to +-2^22 before rounding: exact while |zero_point| <= 2^21
        exact = bool(np.abs(zero_point.astype(np.int64)).max() > _FAST_ZP_MAX)
        if C == 1 or inner >= _RUN_MIN:
            shape = (-1, inner) if C != 1 else (1, -1)
            return bool(_quant.quantize_runs(x3.reshape(shape), inv, zpf, C, lo, hi, out8.reshape(shape), exact))
        width = C * inner
        x2 = x3.reshape(outer, width)
        o2 = out8.reshape(outer, width)
        inv_w = np.repeat(inv, inner)
        zpf_w = np.repeat(zpf, inner)
        m, main = _row_tiling(outer, width)
        ok = True
        if main:
            ok &= bool(
                _quant.quantize_rows(
                    x2[:main].reshape(-1, width * m), np.tile(inv_w, m), np.tile(zpf_w, m), lo, hi,
                    o2[:main].reshape(-1, width * m), exact,
                )
            )
        if main < outer:
            ok &= bool(_quant.quantize_rows(x2[main:], inv_w, zpf_w, lo, hi, o2[main:], exact))
        return ok

    # -- dequantize --------------------------------------------------------------------------------------
    def _dequantize_affine(self, q3, scale, zero_point, out3):
        outer, C, inner = q3.shape
        signed = q3.dtype == np.int8
        q8 = q3.view(np.uint8)
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        zp = np.ascontiguousarray(zero_point, dtype=np.int32)
        if C == 1 or inner >= _RUN_MIN:
            shape = (-1, inner) if C != 1 else (1, -1)
            _quant.dequantize_runs(q8.reshape(shape), signed, scale, zp, C, out3.reshape(shape))
            return
        width = C * inner
        q2 = q8.reshape(outer, width)
        o2 = out3.reshape(outer, width)
        scale_w = np.repeat(scale, inner)
        zp_w = np.repeat(zp, inner)
        m, main = _row_tiling(outer, width)
        if main:
            _quant.dequantize_rows(
                q2[:main].reshape(-1, width * m), signed, np.tile(scale_w, m), np.tile(zp_w, m),
                o2[:main].reshape(-1, width * m),
            )
        if main < outer:
            _quant.dequantize_rows(q2[main:], signed, scale_w, zp_w, o2[main:])

    # -- bit packing -------------------------------------------------------------------------------------
    def _pack(self, codes_u8, bits, out):
        _quant.pack(codes_u8, int(bits), out)

    def _unpack(self, packed, bits, count, signed, out):
        _quant.unpack(packed, int(bits), bool(signed), out.view(np.uint8))

    # -- codebooks ---------------------------------------------------------------------------------------
    def _lut_decode(self, q3_u8, table256, out3):
        _codebook.lut_decode(q3_u8, table256, out3)

    def _nearest_entry(self, x3, mid, out3):
        return bool(_codebook.cb_assign(x3, mid, out3))

    def _nearest_entry_sse(self, x3, mid, codebook):
        return _codebook.cb_sse(x3, mid, codebook)

    def _log_encode(self, x3, scale, L, T, zthr, out3):
        return bool(_codebook.log_encode(x3, scale, L, T, zthr, out3))

    def _log_sse(self, x3, scale, L, T, zthr):
        return _codebook.log_sse(x3, scale, L, T, zthr)

    # -- histograms --------------------------------------------------------------------------------------
    def _histogram(self, x3, lo, width, out):
        _hist.accumulate(x3, lo, 1.0 / width, out)

    def _minmax_histogram(self, x, lo, width, out):
        nb = out.shape[1]
        return _hist.count_flat(x, lo, width, out, lo, lo + nb * width)[:4]

    def _minmax_histogram_spill(self, x, lo, width, out, capacity):
        nb = out.shape[1]
        mn, mx, finite, added, outside = _hist.count_flat(x, lo, width, out, lo, lo + nb * width, capacity)
        return mn, mx, finite, outside

    def _bin_stats(self, rows, lo, sc, cnt, sm, bmin, bmax):
        C, N = rows.shape
        nb = cnt.shape[1]
        nt = _hist.max_threads()
        parts = 1 if (C >= nt or N < _SPLIT_MIN) else nt
        if parts == 1:
            _hist.bin_stats(rows, lo, sc, cnt, sm, bmin, bmax)
            return
        m = N // parts
        # each row cut into `parts` pieces, each piece binned by one thread, then merged
        pieces = rows[:, : m * parts].reshape(C * parts, m)
        pc = np.zeros((C * parts, nb), np.int64)
        ps = np.zeros((C * parts, nb), np.float64)
        pmin = np.full((C * parts, nb), np.inf, np.float32)
        pmax = np.full((C * parts, nb), -np.inf, np.float32)
        _hist.bin_stats(pieces, np.repeat(lo, parts), np.repeat(sc, parts), pc, ps, pmin, pmax)
        if N > m * parts:
            _hist.bin_stats(np.ascontiguousarray(rows[:, m * parts:]), lo, sc, cnt, sm, bmin, bmax)
        cnt += pc.reshape(C, parts, nb).sum(axis=1)
        sm += ps.reshape(C, parts, nb).sum(axis=1)
        np.minimum(bmin, pmin.reshape(C, parts, nb).min(axis=1), out=bmin)
        np.maximum(bmax, pmax.reshape(C, parts, nb).max(axis=1), out=bmax)

    def _histogram_sq_error(self, idx, cnt, lo, width, g0, step, levels):
        return _hist.sq_error(idx, cnt, lo, width, g0, step, levels)

    def _histogram_kl(self, hist, start, end, levels):
        return _hist.kl_divergence(hist, start, end, levels)

    # -- the linear scheme's low-bit scale search (qcore_plugins._scalesearch) ---------------------------
    def _search_scales(self, rows, dgrid, qmin, qmax):
        return _scalesearch.search_scales(rows, dgrid, qmin, qmax)

    # -- low-bit GEMM (qcore_plugins._lowbit: pyx/lowbit.pyx, pyx/lowbit_kernels.h) ----------------------------
    def _pack_lowbit(self, values, bits, scale, zero, group_size, table_bytes):
        if _lowbit is None:  # pragma: no cover
            raise NotImplementedError("the cython kernel was built without qcore_plugins._lowbit")
        n, k = values.shape
        nb = -(-k // 32)
        gblk = nb if group_size == k else group_size // 32
        tables = None
        if table_bytes is not None:
            tables = np.ascontiguousarray(table_bytes.reshape(-1, 16))
        return _lowbit.pack(values, int(bits), scale, zero, gblk, tables, gblk)

    def _pack_lowbit_packed(self, packed, n, k, bits, flip, scale, zero, group_size, table_bytes):
        if _lowbit is None:  # pragma: no cover
            raise NotImplementedError("the cython kernel was built without qcore_plugins._lowbit")
        nb = -(-k // 32)
        gblk = nb if group_size == k else group_size // 32
        tables = None
        if table_bytes is not None:
            tables = np.ascontiguousarray(table_bytes.reshape(-1, 16))
        # straight from the packed stream, one panel of 16 rows at a time (pyx/lowbit_pack.h)
        return _lowbit.pack_stream(packed, n, k, int(bits), int(flip), scale, zero, gblk, tables, gblk)

    def _lowbit_scales(self, packed):
        return _lowbit.scales(packed)

    def _unpack_lowbit(self, packed, flip):
        return _lowbit.unpack_stream(packed, int(flip))

    def _lowbit_shape(self, packed):
        if _lowbit is None or not isinstance(packed, _lowbit.LowbitWeight):
            raise TypeError(f"packed must come from the cython kernel's pack_lowbit, got {type(packed).__name__}")
        return packed.n, packed.k

    def _lowbit_linear(self, x2, packed, bias):
        out = np.empty((x2.shape[0], packed.n), np.float32)
        if _lowbit.gemm(x2, packed, bias, out) >= 0:
            raise non_finite_error(x2)
        return out

    # -- int8 GEMM (qcore_plugins._gemm: pyx/gemm.pyx, pyx/gemm_kernels.h) -------------------------------------
    # weights packed into the panels of the current level's copy (PackedB keeps its copy); activations uint8
    # (int8 shifted by +128), weights int8 (uint8 shifted by -128, the zero point alike)
    def _pack_int8(self, b):
        return _gemm.pack_b(b)

    def _int8_info(self, packed):
        if isinstance(packed, _Int8Weight):
            packed = packed.packed
        if _gemm is None or not isinstance(packed, _gemm.PackedB):
            raise self._foreign("packed", packed)
        return packed.n, packed.k, np.dtype(np.uint8 if packed.flipped else np.int8)

    def _qgemm(self, a, packed, za, zb):
        m, n = a.shape[0], packed.n
        za_u = (za + (128 if a.dtype == np.int8 else 0)).astype(np.int32)
        zb_s = zb - (128 if packed.flipped else 0)
        zb_arr = None
        if np.any(zb_s):
            zb_arr = np.zeros(packed.np_, np.int32)
            zb_arr[:n] = zb_s
        out = np.empty((m, n), np.int32)
        _gemm.gemm_s32(a, packed, za_u, zb_arr, out)
        return out

    def _int8_weight(self, codes, scale, zero_point):
        return _Int8Weight(_gemm.pack_b(codes), scale, zero_point)

    def _int8_linear(self, x2, w, bias):
        bias_p = None
        if bias is not None:
            bias_p = np.zeros(w.np_, np.float32)
            bias_p[:w.n] = bias
        out = np.empty((x2.shape[0], w.n), np.float32)
        if _gemm.qlinear_f32(x2, w.packed, w.sw, w.zb, bias_p, out) >= 0:
            raise non_finite_error(x2, "x")  # the kernel saw NaN/Inf (the one message, qcore/validation.py)
        return out

    def _unpack_int8(self, packed):
        return _gemm.unpack_b(packed.packed if isinstance(packed, _Int8Weight) else packed)

    # -- static int8 convolution (qcore_plugins._conv: pyx/conv.pyx, pyx/conv_kernels.h) -------------------------
    def _conv_pack(self, w2d):
        return _gemm.pack_b(w2d)

    def _conv_columns(self, packed):
        if _gemm is None or not isinstance(packed, _gemm.PackedB):
            raise self._foreign("packed", packed)
        return packed.np_, packed.colsum

    def _conv_quantize_nchw(self, x, inv, z, lo, hi, out, pad):
        return _conv.quantize_nchw(x, inv, z, lo, hi, out, None, pad)

    def _conv_quantize_rows(self, x, inv, z, lo, hi, out):
        return _conv.quantize_rows(x, inv, z, lo, hi, out, None)

    def _conv_run(self, a, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, out, opad, nchw, crop):
        _conv.conv(a, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, out, None, opad, nchw, crop)

    # the uint8 operations between convolutions (pyx/conv.pyx, pyx/qcnn_kernels.h), at the current level's copy
    def _conv_prepare(self, in_shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, opad, nchw, crop, lpad,
                      tapsum, residual, dense=False):
        n, groups, cg = geom[10], geom[11], geom[12]
        dw = None
        if groups > 1 and groups == n and cg == 1 and wg is not None:  # depthwise: weights packed for the copy
            dw = _conv.pack_depthwise(np.ascontiguousarray(wg[:, :, 0]))
        return _conv.prepare(in_shape, geom, za, packed, wg, zc, mult, bias, mode, clamp, zo, None, opad, nchw, crop,
                             dw, lpad, tapsum, residual, dense)

    def _conv_call(self, prepared, a, out, res):
        if _conv is None or not isinstance(prepared, _conv.ConvCall):
            raise self._foreign("prepared", prepared)
        return prepared.run(a, out, res)

    def _cnn_add(self, a, a_border, za, ma, b, b_border, zb, mb, out, out_border, zo, lo, hi):
        _conv.add(a, a_border, za, ma, b, b_border, zb, mb, out, out_border, zo, lo, hi)

    def _cnn_maxpool(self, a, a_border, out, out_border, kernel, stride, padding, dilation):
        _conv.maxpool(a, a_border, out, out_border, kernel, stride, padding, dilation)

    def _cnn_avgpool(self, a, a_border, out, out_border, hs, he, ws, we, div, z):
        _conv.avgpool(a, a_border, out, out_border, hs, he, ws, we, div, z)

    def _cnn_lut(self, a, a_border, channels, out, out_border, channel_offset, table):
        _conv.lut(a, a_border, channels, out, out_border, channel_offset, table)

    def _cnn_dequantize(self, a, a_border, channels, z, scale, out):
        _conv.dequantize(a, a_border, channels, z, scale, out)


class _Int8Weight:
    """A weight for ``int8_linear``: the packed panels and the per-column scale and zero point, padded to the
    panel width (the zero point moved to the packed int8 domain)."""

    __slots__ = ("packed", "sw", "zb", "n", "np_")

    def __init__(self, packed, scale, zero_point):
        self.packed, self.n, self.np_ = packed, packed.n, packed.np_
        self.sw = np.zeros(packed.np_, np.float32)
        self.sw[:packed.n] = scale
        zb = zero_point - (128 if packed.flipped else 0)
        self.zb = None
        if np.any(zb):
            self.zb = np.zeros(packed.np_, np.int32)
            self.zb[:packed.n] = zb

    @property
    def nbytes(self):
        return self.packed.nbytes + self.sw.nbytes + (self.zb.nbytes if self.zb is not None else 0)


@hookimpl
def qcore_kernels():
    return [CythonKernel]
