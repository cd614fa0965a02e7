"""Conformance checks for :class:`qcore.Kernel` subclasses: bit-for-bit agreement with the ``numpy`` reference."""
from __future__ import annotations

import threading

import numpy as np

from ..errors import InputError
from ..kernels.base import CAPABILITIES, Kernel
from ._common import Check, SkipCheck

SHAPES = [(1,), (7,), (1031,), (3, 5), (4, 33), (2, 3, 17), (5, 1, 40)]


class Spec:
    def __init__(self, obj):
        if isinstance(obj, Kernel):
            self.cls, self.kernel = type(obj), obj
        elif isinstance(obj, type) and issubclass(obj, Kernel):
            self.cls, self.kernel = obj, None
        else:
            raise TypeError(f"check_kernel needs a qcore.Kernel subclass or instance, got {obj!r}")

    def make(self) -> Kernel:
        if not self.cls.available():
            raise SkipCheck(f"kernel {self.cls.name!r} is not available here (available() is False)")
        return self.kernel if self.kernel is not None else self.cls()


def _reference() -> Kernel:
    from ..api import get_kernel

    return get_kernel("numpy")


def _x(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 3).astype(np.float32)


def _eq(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype}, the numpy reference gives {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape}, the numpy reference gives {b.shape}"
    if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
        bad = np.flatnonzero(a.reshape(-1) != b.reshape(-1))
        i = int(bad[0]) if bad.size else 0
        raise AssertionError(f"{what}: {bad.size} element(s) differ from the numpy reference (first at flat index {i}: "
                             f"{a.reshape(-1)[i]!r} vs {b.reshape(-1)[i]!r})")


def _axes(shape):
    return [None] + list(range(len(shape))) + [-1]


def _params(shape, axis, seed, signed):
    rng = np.random.default_rng(seed)
    C = 1 if axis is None else shape[axis]
    scale = (rng.uniform(0.01, 0.5, C)).astype(np.float32)
    zp = np.zeros(C, np.int32) if signed else rng.integers(0, 256, C).astype(np.int32)
    return scale, zp


# -- the checks ---------------------------------------------------------------------------------------------
def check_kernel_class_contract(obj):
    """A non-empty ``name``, an integer ``priority``, ``available()`` returning a bool, ``capabilities`` a
    frozenset of known capability names (``supports`` agreeing with it), ``isas()`` levels and ``isa`` among them."""
    cls = Spec(obj).cls
    assert isinstance(cls.name, str) and cls.name and " " not in cls.name, f"`name` must be a non-empty string without spaces, got {cls.name!r}"
    assert isinstance(cls.priority, int), f"`priority` must be an int, got {cls.priority!r}"
    assert isinstance(cls.available(), bool), f"available() must return a bool, got {cls.available()!r}"
    caps = cls.capabilities
    assert isinstance(caps, frozenset), f"`capabilities` must be a frozenset, got {type(caps).__name__}"
    unknown = caps - CAPABILITIES
    assert not unknown, f"`capabilities` names unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}"
    assert caps, "`capabilities` is empty: declare what the kernel implements"
    for cap in CAPABILITIES:
        assert cls.supports(cap) == (cap in caps), f"supports({cap!r}) disagrees with `capabilities`"
    if cls.available():
        k = Spec(obj).make()
        levels = k.isas()
        assert levels and all(isinstance(v, str) for v in levels), f"isas() must list level names, got {levels!r}"
        assert k.isa in levels, f"isa {k.isa!r} is not among isas() {levels}"


def check_kernel_minmax(obj):
    """``minmax`` equals the reference per tensor and along every axis; NaN/Inf raise ``qcore.InputError``."""
    k, ref = Spec(obj).make(), _reference()
    for shape in SHAPES:
        x = _x(shape, 1)
        for axis in _axes(shape):
            for got, want, nm in zip(k.minmax(x, axis), ref.minmax(x, axis), ("min", "max")):
                _eq(got, want, f"minmax {nm} shape={shape} axis={axis}")
    x = _x((6, 40), 2)
    x[2, 3] = np.nan
    for axis in (None, 0, 1):
        try:
            k.minmax(x, axis)
        except InputError:
            continue
        raise AssertionError(f"minmax of an array with NaN (axis={axis}) did not raise qcore.InputError")


def check_kernel_quantize_affine(obj):
    """``quantize_affine`` equals the reference bit for bit: signed and unsigned, every axis, ties (round
    half to even), values far outside the range (clamp), non-contiguous input; NaN/Inf raise ``InputError``."""
    k, ref = Spec(obj).make(), _reference()
    for si, shape in enumerate(SHAPES):
        x = _x(shape, 3 + si)
        for axis in _axes(shape):
            for signed, (qmin, qmax) in ((False, (0, 255)), (False, (0, 15)), (True, (-127, 127)), (True, (-8, 7)), (True, (-1, 0))):
                scale, zp = _params(shape, axis, si, signed)
                zp = np.clip(zp, qmin if qmin > 0 else 0, max(qmax, 0))
                _eq(k.quantize_affine(x, scale, zp, qmin, qmax, axis=axis), ref.quantize_affine(x, scale, zp, qmin, qmax, axis=axis),
                    f"quantize_affine shape={shape} axis={axis} [{qmin}, {qmax}]")
    # exact ties: (n + 0.5) * scale with scale a power of two
    n = np.arange(-300, 300, dtype=np.float32)
    ties = np.concatenate([(n + 0.5) * 0.25, n * 0.25, np.array([1e30, -1e30, 3.4e38, -3.4e38], np.float32)]).astype(np.float32)
    for qmin, qmax, zp in ((0, 255, 128), (-128, 127, 0), (0, 15, 3)):
        with np.errstate(over="ignore"):  # 3.4e38 * 4 overflows to inf, which clamps
            _eq(k.quantize_affine(ties, [0.25], [zp], qmin, qmax), ref.quantize_affine(ties, [0.25], [zp], qmin, qmax),
                f"quantize_affine ties/clamp [{qmin}, {qmax}] zp={zp}")
    big = _x((9, 70), 7)
    view = big[::2, 1::3]
    _eq(k.quantize_affine(view, [0.1], [5], 0, 255, axis=None), ref.quantize_affine(np.ascontiguousarray(view), [0.1], [5], 0, 255),
        "quantize_affine of a non-contiguous view")
    for bad in (np.nan, np.inf, -np.inf):
        x = _x((4, 50), 8)
        x[3, 49] = bad
        try:
            k.quantize_affine(x, [0.1], [0], -127, 127)
        except InputError:
            continue
        raise AssertionError(f"quantize_affine of an array holding {bad} did not raise qcore.InputError")
    out = k.quantize_affine(np.zeros((0, 3), np.float32), [1.0], [0], 0, 255)
    assert out.shape == (0, 3) and out.dtype == np.uint8, f"empty input gave {out.dtype} {out.shape}"


def check_kernel_dequantize_affine(obj):
    """``dequantize_affine`` equals the reference bit for bit for int8 and uint8 codes along every axis."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(11)
    for si, shape in enumerate(SHAPES):
        for signed in (False, True):
            codes = rng.integers(-128 if signed else 0, 128 if signed else 256, size=shape).astype(np.int8 if signed else np.uint8)
            for axis in _axes(shape):
                scale, zp = _params(shape, axis, si + 50, signed)
                _eq(k.dequantize_affine(codes, scale, zp, axis=axis), ref.dequantize_affine(codes, scale, zp, axis=axis),
                    f"dequantize_affine shape={shape} axis={axis} {codes.dtype}")


def check_kernel_pack_unpack(obj):
    """``pack`` gives the reference's bytes (``ceil(n*bits/8)``) for 1..8 bits; ``unpack`` restores the codes;
    codes that do not fit raise ``ValueError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(12)
    for bits in range(1, 9):
        for signed in (False, True):
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            for n in (0, 1, 7, 8, 9, 1001):
                codes = rng.integers(lo, hi + 1, size=n).astype(np.int8 if signed else np.uint8)
                packed = k.pack(codes, bits)
                _eq(packed, ref.pack(codes, bits), f"pack bits={bits} signed={signed} n={n}")
                _eq(k.unpack(packed, bits, n, signed), codes, f"unpack(pack) bits={bits} signed={signed} n={n}")
            if bits < 8:
                too_big = np.array([hi + 1], np.int8 if signed and hi + 1 <= 127 else np.uint8)
                if too_big.dtype == (np.int8 if signed else np.uint8):
                    try:
                        k.pack(too_big, bits)
                    except ValueError:
                        pass
                    else:
                        raise AssertionError(f"pack accepted code {hi + 1} at {bits} bits")


def check_kernel_input_unchanged(obj):
    """No operation writes into its input."""
    k = Spec(obj).make()
    x = _x((5, 64), 13)
    keep = x.copy()
    k.minmax(x, 0)
    codes = k.quantize_affine(x, [0.05], [0], -127, 127)
    ckeep = codes.copy()
    k.dequantize_affine(codes, [0.05], [0])
    k.pack(codes, 8)
    assert np.array_equal(x, keep) and np.array_equal(codes, ckeep), "an operation modified its input"


def check_kernel_thread_safety(obj):
    """Several threads calling the kernel at once get the single-thread results."""
    k = Spec(obj).make()
    xs = [_x((64, 257), 20 + i) for i in range(8)]
    serial = [k.quantize_affine(x, [0.02], [3], 0, 255) for x in xs]
    out: list = [None] * len(xs)
    errors: list = []
    barrier = threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            for _ in range(3):
                for i in range(t, len(xs), 4):
                    c = k.quantize_affine(xs[i], [0.02], [3], 0, 255)
                    d = k.dequantize_affine(c, [0.02], [3])
                    k.minmax(d)
                    out[i] = c
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, f"a kernel call raised in a thread: {errors[0]!r}"
    for i in range(len(xs)):
        _eq(out[i], serial[i], f"threaded quantize_affine #{i}")


def _close(a, b, what, rtol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape}, the numpy reference gives {b.shape}"
    assert np.allclose(a, b, rtol=rtol, atol=0, equal_nan=True), (
        f"{what}: differs from the numpy reference beyond rtol {rtol} (max |diff| {np.nanmax(np.abs(a - b))})")


def check_kernel_table_decode(obj):
    """``lut_decode`` equals the reference for int8 and uint8 codes, full and short tables, every axis."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(11)
    for shape in SHAPES:
        for axis in _axes(shape):
            C = 1 if axis is None else shape[axis]
            for dtype, T in ((np.uint8, 256), (np.int8, 256), (np.uint8, 16)):
                codes = rng.integers(0, T, shape).astype(np.uint8).view(dtype)
                table = rng.normal(size=(C, T)).astype(np.float32)
                _eq(k.lut_decode(codes, table, axis), ref.lut_decode(codes, table, axis), f"lut_decode {dtype.__name__} T={T} {shape} axis={axis}")


def check_kernel_nearest_entry(obj):
    """``nearest_entry`` equals the reference (values exactly on a midpoint take the lower entry), its squared
    error agrees, and NaN/Inf raise ``qcore.InputError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(12)
    for shape in SHAPES:
        for axis in _axes(shape):
            C = 1 if axis is None else shape[axis]
            for K in (2, 16, 256):
                cb = np.sort(rng.normal(size=(C, K)).astype(np.float32) * 3, axis=1)
                x = _x(shape, K)
                if x.size > 4:  # midpoints exactly (when representable) and the entries themselves
                    x.reshape(-1)[:2] = [(cb[0, 0] + cb[0, 1]) / 2, cb[0, -1]]
                _eq(k.nearest_entry(x, cb, axis), ref.nearest_entry(x, cb, axis), f"nearest_entry K={K} {shape} axis={axis}")
                _close(k.nearest_entry_sse(x, cb, axis), ref.nearest_entry_sse(x, cb, axis), f"nearest_entry_sse K={K} {shape}")
    x = _x((4, 33), 3)
    x[1, 2] = np.nan
    try:
        k.nearest_entry(x, np.sort(rng.normal(size=(1, 4)).astype(np.float32), axis=1))
    except InputError:
        pass
    else:
        raise AssertionError("nearest_entry accepted NaN input")


def check_kernel_log_levels(obj):
    """``log_encode`` equals the reference for both roundings and several level counts (values on the level
    thresholds included), ``log_sse`` agrees, and NaN/Inf raise ``qcore.InputError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(13)
    for shape in SHAPES:
        for axis in _axes(shape):
            C = 1 if axis is None else shape[axis]
            scale = rng.uniform(0.5, 4.0, C).astype(np.float32)
            x = _x(shape, 5)
            flat = x.reshape(-1)
            flat[: min(4, flat.size)] = np.array([0.0, -0.0, 1.5, 2.0**-3], np.float32)[: min(4, flat.size)]
            for L in (1, 3, 7, 127):
                for rounding in ("nearest", "log2"):
                    _eq(k.log_encode(x, scale, L, rounding, axis), ref.log_encode(x, scale, L, rounding, axis),
                        f"log_encode L={L} {rounding} {shape} axis={axis}")
                    _close(k.log_sse(x, scale, L, rounding, axis), ref.log_sse(x, scale, L, rounding, axis),
                           f"log_sse L={L} {rounding} {shape} axis={axis}")
    x = _x((4, 33), 3)
    x[0, 0] = np.inf
    try:
        k.log_encode(x, [1.0], 7)
    except InputError:
        pass
    else:
        raise AssertionError("log_encode accepted Inf input")


def check_kernel_histograms(obj):
    """``histogram``, ``minmax_histogram`` and ``minmax_histogram_spill`` count like the reference (values at bin centres, per tensor and per
    channel), ``bin_stats`` gives the same counts, minima and maxima (sums agree), and ``histogram_sq_error`` and
    ``histogram_kl`` agree with the reference."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(14)
    nb = 64
    for shape, axis in (((5000,), None), ((300, 7), 1), ((6, 3, 50), 1), ((40, 9), 0)):
        C = 1 if axis is None else shape[axis]
        lo = rng.uniform(-2, 0, C)
        width = rng.uniform(0.01, 0.1, C)
        j = rng.integers(-3, nb + 3, shape)  # bin indices, a few beyond either end (they clamp)
        ax = None if axis is None else axis
        bshape = [1] * len(shape)
        if ax is not None:
            bshape[ax] = C
        x = (lo.reshape(bshape) + (j + 0.5) * width.reshape(bshape)).astype(np.float32)
        got, want = np.zeros((C, nb)), np.zeros((C, nb))
        k.histogram(x, lo, width, got, axis=ax)
        ref.histogram(x, lo, width, want, axis=ax)
        _eq(got, want, f"histogram {shape} axis={axis}")
        assert got.sum() == x.size, f"histogram {shape}: {got.sum()} counts for {x.size} values"
        rows = np.ascontiguousarray(np.moveaxis(x, ax, 0)).reshape(C, -1) if ax is not None else x.reshape(1, -1)
        rlo, rhi = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
        a, b = k.bin_stats(rows, rlo, rhi, 97), ref.bin_stats(rows, rlo, rhi, 97)
        for name, u, v in zip(("counts", "sums", "minima", "maxima"), a, b):
            (_close if name == "sums" else _eq)(u, v, f"bin_stats {name} {shape}")
    x = (np.float32(-1.0) + (rng.integers(0, nb, 4000) + 0.5) * np.float32(0.05)).astype(np.float32)
    for lo, width in ((-1.0, 0.05), (-0.5, 0.05)):  # all inside, then not all inside (nothing added)
        got, want = np.zeros((1, nb)), np.zeros((1, nb))
        r1, r2 = k.minmax_histogram(x, lo, width, got), ref.minmax_histogram(x, lo, width, want)
        assert r1 == r2, f"minmax_histogram lo={lo}: {r1}, the numpy reference gives {r2}"
        _eq(got, want, f"minmax_histogram counts lo={lo}")
    for lo, width, cap in ((-1.0, 0.05, 0), (-0.5, 0.02, 4000), (-0.5, 0.02, 10)):  # nothing, some, too many outside
        got, want = np.zeros((1, nb)), np.zeros((1, nb))
        r1 = k.minmax_histogram_spill(x, lo, width, got, cap)
        r2 = ref.minmax_histogram_spill(x, lo, width, want, cap)
        assert r1[:2] == r2[:2] and (r1[2] is None) == (r2[2] is None), (
            f"minmax_histogram_spill lo={lo} capacity={cap}: min/max {r1[:2]}, outside {r1[2] is not None}; the numpy "
            f"reference gives {r2[:2]}, {r2[2] is not None}")
        if r2[2] is not None:
            _eq(np.sort(r1[2]), np.sort(r2[2]), f"minmax_histogram_spill values outside lo={lo}")
        _eq(got, want, f"minmax_histogram_spill counts lo={lo} capacity={cap}")
    hist = np.zeros((3, nb))
    for c in range(3):
        ref.histogram(_x((2000,), 30 + c), [-8.0], [16.0 / nb], hist[c:c + 1])
    rows_, cols = np.nonzero(hist)
    M = int(np.bincount(rows_, minlength=3).max())
    idx = np.zeros((3, M), np.int64)
    cnt = np.zeros((3, M))
    for c in range(3):
        nz = np.flatnonzero(hist[c])
        idx[c, : nz.size], cnt[c, : nz.size] = nz, hist[c, nz]
    g0 = -rng.uniform(1, 6, (3, 5))
    step = -2 * g0 / 15
    step[0, 0] = 0.0  # a single grid point
    args = (idx, cnt, np.full(3, -8.0), np.full(3, 16.0 / nb), g0, step, 15.0)
    _close(k.histogram_sq_error(*args), ref.histogram_sq_error(*args), "histogram_sq_error", rtol=1e-9)
    start = rng.integers(0, nb // 2, (3, 6))
    end = start + rng.integers(0, nb // 2, (3, 6))
    _close(k.histogram_kl(hist, start, end, 7), ref.histogram_kl(hist, start, end, 7), "histogram_kl", rtol=1e-9)


def check_kernel_search_scales(obj):
    """``search_scales`` (the ``linear`` scheme's symmetric 3/4-bit scale search) equals the numpy reference bit for
    bit: rows of different lengths (a multiple of 8 and not), an all-zero row, rows near the float32 maximum."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(31)
    dgrid = np.linspace(6.5, 8.5, 9).astype(np.float32)
    for r, n in ((5, 64), (3, 37), (2, 1), (4, 200)):
        rows = (rng.standard_normal((r, n)) * rng.uniform(0.01, 10, (r, 1))).astype(np.float32)
        rows[0] = 0.0
        if r > 2:
            rows[2] = (rows[2] / np.abs(rows[2]).max() * np.float32(3e38)).astype(np.float32)
        got, want = k.search_scales(rows, dgrid, -8, 7), ref.search_scales(rows, dgrid, -8, 7)
        for name, u, v in zip(("scale", "err"), got, want):
            _eq(u, v, f"search_scales {name} ({r}, {n})")


def check_kernel_lowbit_linear(obj):
    """``pack_lowbit``/``lowbit_linear`` agree with the numpy reference: linear codes of 1-8 bits per row
    and per group, affine zero points, shared and per-column 16-entry tables, K not a multiple of 32; float sums
    within 2e-6 of the largest output; NaN/Inf activations raise ``qcore.InputError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(30)
    cases = [(4, 128, 32, None), (3, 100, 100, None), (8, 96, 32, None), (1, 64, 64, None), (2, 64, 32, "shared"),
             (4, 160, 32, "column"), (4, 70, 70, "column")]
    for bits, kk, gs, table in cases:
        n, m, g = 19, 5, kk // gs
        values = rng.integers(0, 1 << bits, (n, kk)).astype(np.uint8)
        if table is None:
            args = (values, bits, rng.uniform(0.01, 1, (n, g)).astype(np.float32),
                    rng.integers(0, 1 << bits, (n, g)).astype(np.float32), gs)
            kw = {}
        else:
            rows = 1 if table == "shared" else n
            args = (values, bits, None, None, gs)
            kw = dict(table=rng.standard_normal((rows, g, 1 << bits)).astype(np.float32), table_group_size=gs)
        x = (rng.standard_normal((m, kk)) * 3).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        got = k.lowbit_linear(x, k.pack_lowbit(*args, **kw), bias)
        want = ref.lowbit_linear(x, ref.pack_lowbit(*args, **kw), bias)
        assert got.shape == want.shape and got.dtype == np.float32, f"lowbit_linear gave {got.dtype} {got.shape}"
        err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        assert err <= 2e-6, f"lowbit_linear bits={bits} K={kk} group={gs} table={table}: off the reference by {err:.3g}"
        x[m - 1, kk - 1] = np.nan
        try:
            k.lowbit_linear(x, k.pack_lowbit(*args, **kw))
        except InputError:
            continue
        raise AssertionError("lowbit_linear of activations holding NaN did not raise qcore.InputError")


def check_kernel_int8_gemm(obj):
    """``qgemm`` equals the exact int64 product for int8/uint8 operands, scalar and per-row/column zero points,
    packed and unpacked weights; ``int8_linear`` equals the reference bit for bit (per-row uint8 activations,
    per-column scales and zero points, bias; odd K); ``unpack_int8`` restores the codes; NaN/Inf activations raise
    ``qcore.InputError``; a packed object of another kernel is a ``TypeError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(40)
    for m, kk, n in ((1, 1, 1), (3, 37, 5), (17, 64, 33), (70, 130, 19)):
        for adt, bdt in ((np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)):
            lo_a, hi_a = (0, 256) if adt == np.uint8 else (-128, 128)
            lo_b, hi_b = (0, 256) if bdt == np.uint8 else (-128, 128)
            a = rng.integers(lo_a, hi_a, (m, kk)).astype(adt)
            b = rng.integers(lo_b, hi_b, (n, kk)).astype(bdt)
            for za, zb in ((0, 0), (int(rng.integers(lo_a, hi_a)), rng.integers(lo_b, hi_b, n))):
                want = ((a.astype(np.int64) - za) @ (b.astype(np.int64) - np.reshape(zb, (-1, 1))).T).astype(np.int32)
                _eq(k.qgemm(a, b, za, zb), want, f"qgemm {np.dtype(adt).name}x{np.dtype(bdt).name} ({m}, {kk}, {n})")
                _eq(k.qgemm(a, k.pack_int8(b), za, zb), want, f"qgemm with packed weights ({m}, {kk}, {n})")
    for m, kk, n, signed in ((1, 64, 48, True), (5, 37, 9, False), (33, 300, 70, True)):
        codes = rng.integers(-127 if signed else 0, 128 if signed else 256, (n, kk)).astype(np.int8 if signed else np.uint8)
        scale = rng.uniform(0.001, 0.1, n).astype(np.float32)
        zp = np.zeros(n, np.int64) if signed else rng.integers(0, 256, n)
        x = (rng.standard_normal((m, kk)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
        x[0, :] = np.abs(x[0, :])  # a row without negative values: zero point 0
        bias = rng.standard_normal(n).astype(np.float32)
        w = k.int8_weight(codes, scale, zp)
        _eq(k.int8_linear(x, w, bias), ref.int8_linear(x, ref.int8_weight(codes, scale, zp), bias),
            f"int8_linear ({m}, {kk}, {n}) {codes.dtype}")
        _eq(k.unpack_int8(w), codes, "unpack_int8")
        assert k.int8_shape(w) == (n, kk, codes.dtype), f"int8_shape gave {k.int8_shape(w)}"
        x[m - 1, kk - 1] = np.inf
        try:
            k.int8_linear(x, w)
        except InputError:
            pass
        else:
            raise AssertionError("int8_linear of activations holding Inf did not raise qcore.InputError")
    try:
        k.int8_linear(np.zeros((1, 4), np.float32), object())
    except TypeError:
        pass
    else:
        raise AssertionError("int8_linear accepted an object its kernel did not pack (expected TypeError)")


def _conv_weight_operands(kern, wt, groups, cin, cp, za, mult, bias):
    """A convolution's weight operands for ``kern``: ``(packed, grouped weight, padded dense weight or None,
    zero-point column correction, multipliers, bias)``, the last three over the kernel's padded columns."""
    n, taps, _ = wt.shape
    full = None
    if groups == 1:
        full = np.zeros((n, taps, cp), np.int8)
        full[..., :cin] = wt
        packed, wg = kern.conv_pack(full.reshape(n, -1)), None
        np_, cs = kern.conv_columns(packed)
    else:
        packed, wg = None, wt
        np_, cs = n, wt.astype(np.int64).sum(axis=(1, 2))
    zc = (np.int64(za) * np.asarray(cs, np.int64)[:np_]).astype(np.int32)
    m, bi = np.zeros(np_, np.float32), np.zeros(np_, np.float32)
    m[:n], bi[:n] = mult[:n], bias[:n]
    return packed, wg, full, zc, m, bi


def _conv_case(rng, k, ref, groups, stride, pad, dil, mode, clamp, nchw, opad, crop=None):
    b, cin, h, w, n, kh, kw = 2, 6 if groups > 1 else 5, 9, 8, 12 if groups > 1 else 7, 3, 2
    cp = (cin + 3) // 4 * 4
    cg = cin // groups
    za = int(rng.integers(0, 256))
    bh, bw = (0, 0) if crop is None else crop
    codes = np.full((b, h + 2 * bh, w + 2 * bw, cp), za, np.uint8)  # the image inside a border of za
    codes[:, bh:bh + h, bw:bw + w, :cin] = rng.integers(0, 256, (b, h, w, cin))
    window = None if crop is None else (bh, bw, h, w)
    wt = rng.integers(-127, 128, (n, kh * kw, cg)).astype(np.int8)
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    geom = (oh, ow, kh, kw) + stride + pad + dil + (n, groups, cg)
    mult = rng.uniform(1e-4, 1e-2, n + 16).astype(np.float32)
    bias = rng.standard_normal(n + 16).astype(np.float32)
    zo = 7 if mode == 2 else 0
    results = []
    for kern in (k, ref):
        packed, wg, _, zc, m, bi = _conv_weight_operands(kern, wt, groups, cin, cp, za, mult, bias)
        cols = (n + 3) // 4 * 4 if mode == 2 else n
        if nchw:
            out = np.empty((b * n, oh * ow), np.float32)
        else:
            rows = b * (oh + 2 * opad[0]) * (ow + 2 * opad[1])
            out = np.full((rows, cols), zo, (np.int32, np.float32, np.uint8)[mode])
        kern.conv_run(codes, geom, za, packed, wg, zc, m, bi, mode, clamp, zo, out, opad, nchw, window)
        results.append(out)
    return results


def _prepared_case(rng, k, ref, b, cin, n, groups, ksize, stride, pad, border, residual):
    """``conv_prepare`` / ``conv_call`` of both kernels on one case: uint8 output with output padding, the input
    inside a border at least the padding (``lpad`` and ``tapsum`` given: the padding may be skipped), optionally a
    fused residual."""
    h, w = 7, 6
    kh, kw = ksize
    cp = (cin + 3) // 4 * 4
    cg = cin // groups
    za, zo = int(rng.integers(0, 256)), 5
    bh, bw = border
    codes = np.full((b, h + 2 * bh, w + 2 * bw, cp), za, np.uint8)
    codes[:, bh:bh + h, bw:bw + w, :cin] = rng.integers(0, 256, (b, h, w, cin))
    crop = (bh - pad[0], bw - pad[1], h + 2 * pad[0], w + 2 * pad[1])
    wt = rng.integers(-127, 128, (n, kh * kw, cg)).astype(np.int8)
    oh = (h + 2 * pad[0] - kh) // stride[0] + 1
    ow = (w + 2 * pad[1] - kw) // stride[1] + 1
    geom = (oh, ow, kh, kw) + stride + (0, 0) + (1, 1) + (n, groups, cg)
    mult = rng.uniform(1e-4, 1e-2, n + 32).astype(np.float32)
    bias = rng.standard_normal(n + 32).astype(np.float32)
    opad = (1, 1)
    cols = (n + 3) // 4 * 4
    res = rng.integers(0, 256, (b * (oh + 2) * (ow + 2), cols)).astype(np.uint8) if residual else None
    rspec = (int(rng.integers(0, 256)), 0.37) if residual else None
    results = []
    for kern in (k, ref):
        packed, wg, full, zc, m, bi = _conv_weight_operands(kern, wt, groups, cin, cp, za, mult, bias)
        tapsum = None
        if full is not None:
            tapsum = np.zeros((kh * kw, len(zc)), np.int32)
            tapsum[:, :n] = full.astype(np.int32).sum(axis=2).T
        call = kern.conv_prepare(codes.shape, geom, za, packed, wg, zc, m, bi, 2, (-5.0, 200.5), zo, opad, False,
                                 crop, pad, tapsum, rspec)
        out = np.empty(call.out_shape, call.out_dtype)
        kern.conv_call(call, codes, out, res)
        results.append(out)
    return results


def _dense_case(rng, k, ref, b, cin, n, ksize, stride, dil_h, pad, out_mode):
    """``conv_prepare(dense=True)`` of both kernels: "dense rows" input (pixels of ``cin`` bytes, the padding in
    the buffer, one extra row after each image), weights ``(N, KH * roundup4(KW*C))``; the bytes past each kernel
    row's ``KW*C`` (the next pixel's) meet zero weights."""
    h, w = 9, 7
    kh, kw = ksize
    kr = (kw * cin + 3) // 4 * 4
    za, zo = int(rng.integers(0, 256)), 3
    hp, wp = h + 2 * pad[0], w + 2 * pad[1]
    codes = rng.integers(0, 256, (b, hp + 1, wp, cin)).astype(np.uint8)  # border and extra row: any values
    codes[:, :pad[0]] = za
    codes[:, pad[0] + h:hp] = za
    codes[:, :, :pad[1]] = za
    codes[:, :, pad[1] + w:] = za
    wt = rng.integers(-127, 128, (n, kh, kw * cin)).astype(np.int8)
    rows = np.zeros((n, kh, kr), np.int8)
    rows[:, :, :kw * cin] = wt
    oh = (hp - dil_h * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - kw) // stride[1] + 1
    geom = (oh, ow, kh, kw) + stride + (0, 0) + (dil_h, 1) + (n, 1, cin)
    mult = rng.uniform(1e-4, 1e-2, n + 32).astype(np.float32)
    bias = rng.standard_normal(n + 32).astype(np.float32)
    results = []
    for kern in (k, ref):
        packed = kern.conv_pack(rows.reshape(n, -1))
        np_, cs = kern.conv_columns(packed)
        zc = (np.int64(za) * np.asarray(cs, np.int64)[:np_]).astype(np.int32)
        m, bi = np.zeros(np_, np.float32), np.zeros(np_, np.float32)
        m[:n], bi[:n] = mult[:n], bias[:n]
        call = kern.conv_prepare(codes.shape, geom, za, packed, None, zc, m, bi, out_mode,
                                 (-3.0, 200.5) if out_mode == 2 else None, zo if out_mode == 2 else 0,
                                 (1, 1) if out_mode == 2 else (0, 0), False, (0, 0, hp, wp), dense=True)
        out = np.empty(call.out_shape, call.out_dtype)
        kern.conv_call(call, codes, out)
        results.append(out)
    return results


def check_kernel_qconv2d(obj):
    """The ``qconv2d`` operations equal the reference bit for bit: input quantization (NCHW with padding, rows;
    NaN reported), the convolution with packed and grouped weights, stride, padding and dilation, an input inside
    a border, int32 / float (clamped, NCHW) / uint8 (requantized, clamped, output padding) outputs; residual
    addition, max and average pooling, table lookups and dequantization on buffers with borders."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(50)
    x = (rng.standard_normal((2, 3, 5, 6)) * 4).astype(np.float32)
    x[0, 1, 2, 3] = 1e30  # clamps
    for pad in ((0, 0), (1, 2)):
        outs = []
        for kern in (k, ref):
            o = np.full((2, 5 + 2 * pad[0], 6 + 2 * pad[1], 4), 9, np.uint8)
            assert not kern.conv_quantize_nchw(x, np.float32(1 / 0.05), 9, 0, 255, o, pad)
            outs.append(o)
        _eq(outs[0], outs[1], f"conv_quantize_nchw pad={pad}")
    outs = []
    for kern in (k, ref):  # dense rows: pixels of C = 3 bytes, one extra row after each image
        o = np.full((2, 5 + 2 + 1, 6 + 6, 3), 9, np.uint8)
        assert not kern.conv_quantize_nchw(x, np.float32(1 / 0.05), 9, 0, 255, o, (1, 3))
        outs.append(o)
    _eq(outs[0], outs[1], "conv_quantize_nchw into dense rows (Cp = C = 3)")
    rows = (rng.standard_normal((13, 10)) * 3).astype(np.float32)
    outs = []
    for kern in (k, ref):
        o = np.empty((13, 12), np.uint8)
        assert not kern.conv_quantize_rows(rows, np.float32(1 / 0.03), 128, 1, 255, o)
        outs.append(o)
    _eq(outs[0], outs[1], "conv_quantize_rows")
    rows[4, 7] = np.nan
    assert k.conv_quantize_rows(rows, 10.0, 0, 0, 255, np.empty((13, 12), np.uint8)), \
        "conv_quantize_rows did not report NaN"
    for groups, stride, pad, dil in ((1, (1, 1), (1, 0), (1, 1)), (1, (2, 1), (0, 1), (1, 2)), (3, (1, 2), (1, 1), (1, 1))):
        for mode, clamp, nchw, opad, crop in ((0, None, False, (0, 0), None), (1, (0.0, np.inf), False, (0, 0), None),
                                              (1, (-0.5, 6.0), True, (0, 0), (2, 1)), (2, (-7.0, 40.5), False, (0, 0), None),
                                              (2, None, False, (1, 2), (1, 3))):
            got, want = _conv_case(rng, k, ref, groups, stride, pad, dil, mode, clamp, nchw, opad, crop)
            _eq(got, want, f"conv_run groups={groups} stride={stride} pad={pad} dilation={dil} mode={mode} "
                           f"clamp={clamp} nchw={nchw} out_padding={opad} in a border {crop}")
    # prepared calls: batches of 8+ with the padding inside the window (a kernel may skip it), depthwise layers,
    # fused residual additions
    for b, cin, n, groups, ksize, stride, pad, border, residual in (
            (9, 5, 40, 1, (3, 3), (1, 1), (1, 1), (1, 2), False),
            (8, 3, 33, 1, (7, 5), (2, 1), (3, 2), (3, 2), False),
            (3, 6, 20, 1, (3, 3), (1, 1), (1, 1), (1, 1), True),
            (8, 16, 16, 1, (1, 1), (1, 1), (0, 0), (1, 1), True),
            (4, 40, 40, 40, (3, 3), (2, 2), (1, 1), (1, 1), False),
            (2, 24, 24, 24, (5, 5), (1, 1), (2, 2), (2, 2), False)):
        got, want = _prepared_case(rng, k, ref, b, cin, n, groups, ksize, stride, pad, border, residual)
        _eq(got, want, f"conv_prepare/conv_call batch={b} channels={cin}->{n} groups={groups} kernel={ksize} "
                       f"stride={stride} padding={pad} border={border} residual={residual}")
    for b, cin, n, ksize, stride, dil_h, pad, mode in ((9, 3, 64, (7, 7), (2, 2), 1, (3, 3), 2),
                                                       (2, 1, 33, (3, 3), (1, 1), 2, (2, 1), 1),
                                                       (3, 6, 20, (3, 5), (1, 2), 1, (0, 2), 0),
                                                       (1, 5, 40, (3, 3), (2, 1), 1, (1, 1), 2)):
        got, want = _dense_case(rng, k, ref, b, cin, n, ksize, stride, dil_h, pad, mode)
        _eq(got, want, f"conv_prepare(dense=True) batch={b} channels={cin}->{n} kernel={ksize} stride={stride} "
                       f"dilation=({dil_h}, 1) padding={pad} mode={mode}")
    _check_cnn_ops(k, ref, rng)


def _check_cnn_ops(k, ref, rng):
    """The uint8 operations between convolutions, on buffers with borders, against the reference."""
    a = rng.integers(0, 256, (2, 7 + 2, 6 + 4, 8)).astype(np.uint8)  # interior 7x6, border (1, 2)
    b = rng.integers(0, 256, (2, 7, 6, 8)).astype(np.uint8)
    outs = []
    for kern in (k, ref):
        o = np.full((2, 7 + 4, 6 + 2, 8), 3, np.uint8)  # border (2, 1)
        outs.append(kern.cnn_add(a, (1, 2), 120, 0.031, b, (0, 0), 7, 0.77, o, (2, 1), 3, -3.0, 200.25))
    _eq(outs[0], outs[1], "cnn_add")
    for kernel, stride, padding, dilation in (((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (0, 1), (2, 1))):
        oh = (7 + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        ow = (6 + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        outs = [kern.cnn_maxpool(a, (1, 2), np.zeros((2, oh, ow, 8), np.uint8), (0, 0), kernel, stride, padding,
                                 dilation) for kern in (k, ref)]
        _eq(outs[0], outs[1], f"cnn_maxpool kernel={kernel} stride={stride} padding={padding} dilation={dilation}")
    hs, he = np.array([0, 2, 4], np.int32), np.array([3, 5, 7], np.int32)
    ws, we = np.array([0, 3], np.int32), np.array([4, 6], np.int32)
    div = np.array([[12.0, 9.0], [12.0, 7.0], [9.0, 9.0]])
    outs = [kern.cnn_avgpool(a, (1, 2), np.zeros((2, 3 + 2, 2, 8), np.uint8), (1, 0), hs, he, ws, we, div, 131)
            for kern in (k, ref)]
    _eq(outs[0], outs[1], "cnn_avgpool")
    table = rng.integers(0, 256, 256).astype(np.uint8)
    for tab, off in ((table, 4), (None, 0)):
        outs = [kern.cnn_lut(a, (1, 2), 3, np.full((2, 7, 6, 8), 9, np.uint8), (0, 0), off, tab) for kern in (k, ref)]
        _eq(outs[0], outs[1], f"cnn_lut table={'yes' if tab is not None else 'copy'} offset={off}")
    outs = [kern.cnn_dequantize(a, (1, 2), 5, 77, 0.0625, np.empty((2, 5, 7, 6), np.float32)) for kern in (k, ref)]
    _eq(outs[0], outs[1], "cnn_dequantize")


def _kmeans_rows(rng, G, n):
    """Groups for the k-means checks: Gaussian, with ties, constant, few values, -0.0 and 0.0, offset far from 0."""
    rows = rng.standard_normal((G, n)).astype(np.float32)
    rows[1] = np.round(rows[1])
    rows[2] = 3.5
    rows[3, : n // 2] = -0.0
    rows[3, n // 2:] = 0.0
    rows[4] = rows[4] * np.float32(1e-3) + np.float32(1e3)
    rows[5, ::3] = rows[5, 0]
    return rows


def check_kernel_kmeans_fit(obj):
    """``kmeans_fit_groups``, ``kmeans_fit_rows`` and ``kmeans_fit_weighted`` (capability ``"kmeans_fit"``) equal the
    numpy reference bit for bit: groups of 1 to 300 values at 1, 2, 4 and 8 bits, with and without an alternative
    codebook and float16 rounding; rows through their histograms (exact, few-bin, fitted and equal-start rows);
    weighted rows with points of weight 0 in between, starts with equal entries, two tolerances.  NaN in a group or
    a row raises ``qcore.InputError``; an unsorted weighted row ``ValueError``."""
    k, ref = Spec(obj).make(), _reference()
    rng = np.random.default_rng(40)
    for n, K in ((128, 16), (32, 16), (7, 4), (1, 2), (300, 4), (64, 256), (100, 2)):
        rows = _kmeans_rows(rng, 9, n) if n >= 6 else rng.standard_normal((9, n)).astype(np.float32)
        _eq(k.kmeans_fit_groups(rows, K), ref.kmeans_fit_groups(rows, K), f"kmeans_fit_groups n={n} K={K}")
        alt = np.sort(rng.standard_normal((9, K)).astype(np.float32), axis=1)
        _eq(k.kmeans_fit_groups(rows, K, max_iter=5, alt=alt, float16=True),
            ref.kmeans_fit_groups(rows, K, max_iter=5, alt=alt, float16=True),
            f"kmeans_fit_groups n={n} K={K} with alt and float16")
    x = np.sort(rng.standard_normal((6, 500)).astype(np.float32), axis=1)
    w = rng.integers(0, 40, (6, 500)).astype(np.float64)
    w[1, ::2] = 0.0
    x[2, :] = np.float32(0.25)  # one value: a start with equal entries
    x[3, 100:] = x[3, 100]      # few distinct values
    for K, tol in ((16, 1e-6), (4, 0.0), (256, 1e-4)):
        got, want = k.kmeans_fit_weighted(x, w, K, tol=tol), ref.kmeans_fit_weighted(x, w, K, tol=tol)
        _eq(got[1], want[1], f"kmeans_fit_weighted ok K={K}")
        _eq(got[0][want[1]], want[0][want[1]], f"kmeans_fit_weighted K={K} tol={tol}")
    rows = rng.standard_normal((7, 700)).astype(np.float32)
    rows[1] = 1.5                                                  # one value: exact
    rows[2] = np.round(rows[2] * 2)                                # a few values: exact
    rows[3, :690] = 0.5                                            # few bins: left to the caller
    rows[4] = np.concatenate([np.ones(680, np.float32), rows[4, :20]])  # a start with equal entries
    for K, bins in ((16, 1024), (4, 64), (256, 4096)):
        got = k.kmeans_fit_rows(rows, K, bins=bins, lo=rows.min(1), hi=rows.max(1))
        want = ref.kmeans_fit_rows(rows, K, bins=bins, lo=rows.min(1), hi=rows.max(1))
        _eq(got[1], want[1], f"kmeans_fit_rows status K={K} bins={bins}")
        done = (want[1] == 1) | (want[1] == 2)
        _eq(got[0][done], want[0][done], f"kmeans_fit_rows K={K} bins={bins}")
    bad = rng.standard_normal((3, 50)).astype(np.float32)
    bad[1, 7] = np.nan
    try:
        k.kmeans_fit_rows(bad, 4, bins=64, lo=-5, hi=5)
    except InputError:
        pass
    else:
        raise AssertionError("kmeans_fit_rows of a row holding NaN did not raise qcore.InputError")
    try:
        k.kmeans_fit_groups(bad, 4)
    except InputError:
        pass
    else:
        raise AssertionError("kmeans_fit_groups of a group holding NaN did not raise qcore.InputError")
    try:
        k.kmeans_fit_weighted(x[:, ::-1], w, 4)
    except ValueError:
        pass
    else:
        raise AssertionError("kmeans_fit_weighted of unsorted points did not raise ValueError")


#: (check, the capability it needs; None: every kernel)
_KERNEL_CHECKS = [
    (check_kernel_class_contract, None),
    (check_kernel_minmax, "affine"),
    (check_kernel_quantize_affine, "affine"),
    (check_kernel_dequantize_affine, "affine"),
    (check_kernel_pack_unpack, "affine"),
    (check_kernel_table_decode, "codebook"),
    (check_kernel_nearest_entry, "codebook"),
    (check_kernel_log_levels, "codebook"),
    (check_kernel_histograms, "histogram"),
    (check_kernel_search_scales, "affine"),
    (check_kernel_kmeans_fit, "kmeans_fit"),
    (check_kernel_input_unchanged, "affine"),
    (check_kernel_thread_safety, "affine"),
    (check_kernel_lowbit_linear, "lowbit_gemm"),
    (check_kernel_int8_gemm, "int8_gemm"),
    (check_kernel_qconv2d, "qconv2d"),
]
KERNEL_CHECKS = [f for f, _ in _KERNEL_CHECKS]
#: check name -> the capability that selects it
KERNEL_CHECK_CAPABILITY = {f.__name__: cap for f, cap in _KERNEL_CHECKS}


def kernel_checks(obj=None) -> list[Check]:
    """The checks of ``obj``'s declared capabilities (scikit-learn's tag-driven checks): every declared capability
    is checked against the ``numpy`` reference; without ``obj``, all of them."""
    cls = obj if obj is None or isinstance(obj, type) else type(obj)
    caps = getattr(cls, "capabilities", None) if cls is not None else None
    return [Check(f.__name__, f, "kernel") for f, cap in _KERNEL_CHECKS
            if caps is None or cap is None or cap in caps]
