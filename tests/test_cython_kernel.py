"""The ``cython`` kernel equals the ``numpy`` reference bit for bit, refuses NaN/Inf, and is thread-safe.

Kernels are imported directly (not through the plugin registry).  Every comparison runs on each
instruction-set variant this CPU supports (baseline SSE2, AVX2, AVX-512).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcore.errors import InputError
from isa_levels import at_level, copy_levels
from qcore_plugins import _codebook, _quant
from qcore_plugins.kernels.cython_kernel import CythonKernel
from qcore_plugins.kernels.numpy_kernel import NumpyKernel

CK = CythonKernel()
NK = NumpyKernel()

ISAS = copy_levels(_quant)
RANGES = [(-128, 127), (0, 255), (-8, 7), (0, 15), (-1, 0), (0, 1), (-2, 1), (3, 200), (-100, -100), (255, 255)]
F32MAX = float(np.finfo(np.float32).max)


@pytest.fixture(params=ISAS)
def isa(request):
    with at_level(request.param):
        assert _quant.ISA.copy == request.param
        yield request.param


def _bits(a):
    return a.view(np.uint32) if a.dtype == np.float32 else a


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == np.float32:  # bit for bit, signed zeros included
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    else:
        np.testing.assert_array_equal(a, b)


def nasty(shape, rng):
    """float32 values of every kind: normal, tiny, huge, exact ties at .5, extremes of float32."""
    n = int(np.prod(shape))
    x = rng.standard_normal(n).astype(np.float32) * rng.choice(np.float32([1e-3, 1, 50, 1e4]), n)
    kinds = rng.integers(0, 8, n)
    x[kinds == 0] = (rng.integers(-300, 300, int((kinds == 0).sum())) + 0.5).astype(np.float32)
    x[kinds == 1] = rng.choice(np.float32([1e30, -1e30, 3.4e38, -3.4e38, F32MAX, -F32MAX]), int((kinds == 1).sum()))
    x[kinds == 2] = rng.choice(np.float32([0.0, -0.0, 1e-45, -1e-45, 1e-40, 4194304.5, 8388607.5, 2.5e7]),
                               int((kinds == 2).sum()))
    return x.reshape(shape)


def check_all(x, axis, rng, ranges=RANGES, zp_fn=None):
    C = 1 if axis is None else x.shape[axis]
    for qmin, qmax in ranges:
        # scales: ordinary, 1.0 (ties stay ties), tiny (huge products overflow to inf), huge
        for scale in (rng.uniform(0.001, 3, C), np.ones(C), np.full(C, 1e-30), np.full(C, 1e30)):
            scale = scale.astype(np.float32)
            zp = rng.integers(qmin, qmax + 1, C) if zp_fn is None else zp_fn(C)
            a = CK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis)
            with np.errstate(over="ignore"):
                b = NK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis)
                assert_same(a, b)
                assert_same(CK.dequantize_affine(a, scale, zp, axis=axis), NK.dequantize_affine(a, scale, zp, axis=axis))
    lo1, hi1 = CK.minmax(x, axis=axis)
    lo2, hi2 = NK.minmax(x, axis=axis)
    np.testing.assert_array_equal(lo1, lo2)  # +0 == -0 here: reductions may see either zero first
    np.testing.assert_array_equal(hi1, hi2)


SHAPES = [
    (1,), (1, 1), (7,), (13, 1), (1, 13), (3, 5), (2, 3, 7), (5, 17, 3), (11, 1, 19), (4, 40, 40),
    (3, 2, 1, 5), (31, 37), (1, 1000), (1000, 1), (64, 2, 2), (2, 2, 64),
]
# large enough for the parallel paths: per-tensor chunks, many runs, column splits, row blocks
BIG_SHAPES = [(200003,), (3, 70001), (70001, 3), (257, 1031), (2, 40000, 2)]


@pytest.mark.parametrize("shape", SHAPES + BIG_SHAPES)
def test_equals_numpy_reference(shape, isa):
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    x = nasty(shape, rng)
    ranges = RANGES if int(np.prod(shape)) < 10000 else RANGES[:3]
    for axis in [None] + list(range(len(shape))):
        check_all(x, axis, rng, ranges)


@pytest.mark.parametrize("shape,axis", [((5, 7), 1), ((300, 40), 0), ((9, 3, 20), 1), ((100000,), None), ((6, 5, 4), 2)])
def test_extreme_zero_points(shape, axis, isa):
    """Zero points far outside the code range (int32 extremes included) take the exact loop."""
    rng = np.random.default_rng(1)
    x = nasty(shape, rng)
    for zps in ([2**21, -(2**21)], [2**21 + 1, -(2**21) - 1], [2**30, -(2**31)], [2**31 - 1, 0], [4194303, -4194305]):
        check_all(x, axis, rng, [(-128, 127), (0, 255)], zp_fn=lambda C: rng.choice(zps, C))


@pytest.fixture
def always_stream():
    before = _quant.set_streaming("always")
    yield
    _quant.set_streaming(before)


@pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (3, 130), (1000, 7), (200003,), (3, 70001)])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_streaming_stores_equal_reference(shape, offset, isa, always_stream):
    """The streaming (non-temporal) runs give the plain runs' bits: unaligned heads, 64-wide bodies, tails,
    per-thread chunk edges; ``offset`` moves the output off its 64-byte alignment."""
    rng = np.random.default_rng(offset)
    x = nasty(shape, rng)
    n = int(np.prod(shape))
    for axis in (None, 0):
        C = 1 if axis is None else shape[0]
        for qmin, qmax in [(-128, 127), (0, 255), (-8, 7)]:
            scale = rng.uniform(0.001, 3, C).astype(np.float32)
            zp = rng.integers(qmin, qmax + 1, C)
            want = NK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis)
            qbuf = np.empty(n + offset, want.dtype)[offset:].reshape(shape)
            assert_same(CK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis, out=qbuf), want)
            fbuf = np.empty(n + offset, np.float32)[offset:].reshape(shape)
            got = CK.dequantize_affine(want, scale, zp, axis=axis, out=fbuf)
            assert_same(got, NK.dequantize_affine(want, scale, zp, axis=axis))
    bad = x.copy()
    bad.flat[n // 2] = np.nan
    with pytest.raises(InputError):
        CK.quantize_affine(bad, 0.1, 0, -128, 127)


def test_streaming_decision():
    """auto: only passes larger than the cache, and only into memory already mapped in (a fresh page is
    zeroed into cache by the OS, where plain stores are cheaper)."""
    before = _quant.set_streaming("auto")
    try:
        small = np.zeros(1 << 20, np.float32)
        assert not _quant.would_stream(small, small.nbytes)
        big = np.empty(1 << 24, np.float32)  # 64 MiB: a fresh mapping (glibc mmaps anything >= 32 MiB), untouched
        if sys.platform.startswith("linux"):
            assert not _quant.would_stream(big, big.nbytes // 4)
            big.fill(0)
            assert _quant.would_stream(big, big.nbytes // 4)
        assert _quant.set_streaming("never") == "auto"
        assert not _quant.would_stream(big, big.nbytes)
        assert _quant.set_streaming("always") == "never"
        assert _quant.would_stream(small, 1)
        with pytest.raises(ValueError, match="mode must be one of"):
            _quant.set_streaming("sometimes")
    finally:
        _quant.set_streaming(before)


def test_ties_round_half_to_even(isa):
    x = (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5))
    for axis in (None, 0):
        a = CK.quantize_affine(x, 1.0, 0, -128, 127, axis=axis)
        assert_same(a, NK.quantize_affine(x, 1.0, 0, -128, 127, axis=axis))
    a = CK.quantize_affine(np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), 1.0, 0, -128, 127)
    assert a.tolist() == [0, 2, 2, 0, -2, -2]


def test_non_contiguous_and_fortran_input():
    rng = np.random.default_rng(2)
    base = nasty((40, 60), rng)
    for x in (base[:, ::3], base.T, np.asfortranarray(base), base[::-2, 5:50]):
        for axis in (None, 0, 1):
            check_all(x, axis, rng, [(-128, 127), (0, 255)])


def test_float64_and_int_input_converted_like_reference():
    rng = np.random.default_rng(3)
    for x in (rng.standard_normal((17, 9)) * 100, rng.integers(-500, 500, (17, 9))):
        check_all(x, 1, rng, [(-128, 127)])


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def quant_cases(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9))
    x = draw(hnp.arrays(np.float32, shape, elements=finite_f32))
    axis = draw(st.none() | st.integers(0, len(shape) - 1))
    C = 1 if axis is None else shape[axis]
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    qmin = draw(st.integers(lo, hi))
    qmax = draw(st.integers(qmin, hi))
    zp = draw(hnp.arrays(np.int32, (C,), elements=st.integers(-(2**31), 2**31 - 1) | st.integers(qmin, qmax)))
    scale = draw(hnp.arrays(np.float32, (C,), elements=st.floats(float(np.float32(1e-30)), float(np.float32(1e30)), width=32)))
    return x, axis, scale, zp, qmin, qmax


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quant_cases())
def test_hypothesis_equals_reference(case):
    x, axis, scale, zp, qmin, qmax = case
    with np.errstate(over="ignore"):
        b = NK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis)
        a = CK.quantize_affine(x, scale, zp, qmin, qmax, axis=axis)
        assert_same(a, b)
        assert_same(CK.dequantize_affine(a, scale, zp, axis=axis), NK.dequantize_affine(a, scale, zp, axis=axis))
    lo1, hi1 = CK.minmax(x, axis=axis)
    lo2, hi2 = NK.minmax(x, axis=axis)
    np.testing.assert_array_equal(lo1, lo2)
    np.testing.assert_array_equal(hi1, hi2)


# -- non-finite input ---------------------------------------------------------------------------------

NONFINITE_CASES = [((7,), None), ((100003,), None), ((3, 5), 1), ((300, 40), 0), ((5, 4, 3), 1), ((2, 3, 700), 1),
                   ((70001, 3), 1), ((3, 70001), 0)]


@pytest.mark.parametrize("shape,axis", NONFINITE_CASES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(shape, axis, bad, isa):
    n = int(np.prod(shape))
    for pos in (0, n // 2, n - 1):
        x = np.ones(shape, np.float32)
        x.flat[pos] = bad
        with pytest.raises(InputError):
            CK.quantize_affine(x, 0.1, 0, -128, 127, axis=axis)
        with pytest.raises(InputError):
            CK.minmax(x, axis=axis)
        with pytest.raises(InputError):
            CK.absmax(x, axis=axis)


@pytest.mark.parametrize("shape,axis", NONFINITE_CASES)
def test_minmax_reports_nan_as_non_finite(shape, axis, isa):
    """The raw _minmax must let a NaN through (as NaN in min or max) wherever it sits."""
    from qcore.validation import as_3d

    n = int(np.prod(shape))
    rng = np.random.default_rng(4)
    for pos in (0, 1, n // 3, n - 1, int(rng.integers(n))):
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[pos] = np.nan
        lo, hi = CK._minmax(as_3d(x, axis))
        assert not (np.isfinite(lo).all() and np.isfinite(hi).all())


# -- packing --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack(bits, signed):
    rng = np.random.default_rng(bits * 2 + signed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = np.int8 if signed else np.uint8
    for n in list(range(1, 18)) + [63, 64, 65, 1001, 8 * 16384 + 5, 300007]:
        codes = rng.integers(lo, hi + 1, n).astype(dtype)
        codes[:2] = [lo, hi][: min(n, 2)]
        packed = CK.pack(codes, bits)
        assert packed.dtype == np.uint8 and packed.size == (n * bits + 7) // 8
        np.testing.assert_array_equal(packed, NK.pack(codes, bits))
        back = CK.unpack(packed, bits, n, signed)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, codes)
        np.testing.assert_array_equal(back, NK.unpack(packed, bits, n, signed))
    # any byte stream unpacks like the reference (unused high bits of the last byte set, too)
    raw = rng.integers(0, 256, 1000 * bits // 8 + 1).astype(np.uint8)
    n = (raw.size * 8) // bits
    np.testing.assert_array_equal(CK.unpack(raw[: (n * bits + 7) // 8], bits, n, signed),
                                  NK.unpack(raw[: (n * bits + 7) // 8], bits, n, signed))


def test_pack_multidimensional_and_empty():
    codes = np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % 16
    np.testing.assert_array_equal(CK.pack(codes, 4), NK.pack(codes, 4))
    assert CK.pack(np.zeros(0, np.uint8), 3).size == 0
    assert CK.unpack(np.zeros(0, np.uint8), 3, 0, True).size == 0


# -- threads --------------------------------------------------------------------------------------------

def test_thread_safety():
    rng = np.random.default_rng(5)
    jobs = []
    for i in range(12):
        shape, axis = [((300000,), None), ((513, 700), 0), ((700, 513), 1), ((9, 77, 300), 1)][i % 4]
        x = nasty(shape, rng)
        C = 1 if axis is None else shape[axis]
        scale = rng.uniform(0.01, 2, C).astype(np.float32)
        zp = rng.integers(-20, 20, C)
        jobs.append((x, axis, scale, zp))
    with np.errstate(over="ignore"):
        expect = [NK.quantize_affine(x, s, z, -128, 127, axis=a) for x, a, s, z in jobs]

    def work(i):
        x, axis, scale, zp = jobs[i % len(jobs)]
        q = CK.quantize_affine(x, scale, zp, -128, 127, axis=axis)
        d = CK.dequantize_affine(q, scale, zp, axis=axis)
        lo, hi = CK.minmax(x, axis=axis)
        p = CK.unpack(CK.pack(q, 8), 8, q.size, True)
        return i, q, d, lo, hi, p

    with ThreadPoolExecutor(max_workers=6) as pool:
        for i, q, d, lo, hi, p in pool.map(work, range(48)):
            x, axis, scale, zp = jobs[i % len(jobs)]
            assert_same(q, expect[i % len(jobs)])
            assert_same(d, NK.dequantize_affine(q, scale, zp, axis=axis))
            np.testing.assert_array_equal(lo, NK.minmax(x, axis=axis)[0])
            np.testing.assert_array_equal(p, q.reshape(-1))


# -- plugin surface ---------------------------------------------------------------------------------------

def test_plugin_attributes():
    assert CythonKernel.name == "cython" and CythonKernel.priority > NumpyKernel.priority
    assert CythonKernel.available()
    from qcore_plugins.kernels import cython_kernel

    assert cython_kernel.qcore_kernels() == [CythonKernel]
    assert _quant.max_threads() >= 1


# -- the one histogram / min-max implementation (pyx/hist_kernels.h, pyx/qcore_minmax.h) ---------------------
from qcore_plugins import _hist  # noqa: E402

HIST_ISAS = copy_levels(_hist)


@pytest.fixture(params=HIST_ISAS)
def hist_isa(request):
    with at_level(request.param):  # the min/max of the kernel comes from _quant: the same level
        assert _hist.ISA.copy == _quant.ISA.copy == request.param
        yield request.param


def _floor_bins(x3, lo, width, nb):
    """Independent reference: floor((v - lo) / width) in float64 (exact rational arithmetic would only differ
    on values within an ulp of an edge, which these tests avoid or pin explicitly), clamped to [0, nb - 1]."""
    out = np.zeros((x3.shape[1], nb))
    for c in range(x3.shape[1]):
        v = x3[:, c, :].ravel().astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            t = (v - lo[c]) * (1.0 / width[c])
        t = np.where(np.isnan(t), 0.0, t)
        out[c] = np.bincount(np.clip(np.floor(np.clip(t, -1, nb)), 0, nb - 1).astype(np.int64), minlength=nb)
    return out


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 4097), (1, 1, 300_001), (3000, 5, 1), (4, 3, 70_000),
                                   (7, 257, 3), (2, 40, 1000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_histogram_equals_reference_per_tensor_and_per_channel(shape, threads, hist_isa):
    import threadpoolctl

    rng = np.random.default_rng(sum(shape))
    x3 = (rng.laplace(size=shape) * rng.uniform(0.5, 3.0, (1, shape[1], 1))).astype(np.float32)
    nb = 301
    lo = x3.min(axis=(0, 2)).astype(np.float64) + 0.1  # a little inside: both end bins also get clamped values
    width = (x3.max(axis=(0, 2)).astype(np.float64) - 0.2 - lo) / nb
    width = np.where(width > 0, width, 1.0)
    with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
        got = np.zeros((shape[1], nb))
        CK.histogram(x3, lo, width, got, axis=1)
        mn, mx = CK.minmax(x3, 1)
    want = np.zeros((shape[1], nb))
    NK.histogram(x3, lo, width, want, axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, _floor_bins(x3, lo, width, nb))
    assert got.sum() == x3.size
    np.testing.assert_array_equal(mn, x3.min(axis=(0, 2)))
    np.testing.assert_array_equal(mx, x3.max(axis=(0, 2)))
    if shape[1] == 1:  # the fused per-tensor pass: same counts, same min/max; refused when the range is short
        lo0, w0 = float(mn[0]), (float(mx[0]) - float(mn[0])) / nb * (1 + 2**-30) or 1.0
        h1, h2 = np.zeros((1, nb)), np.zeros((1, nb))
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            r1 = CK.minmax_histogram(x3, lo0, w0, h1)
        r2 = NK.minmax_histogram(x3, lo0, w0, h2)
        assert r1 == r2 == (mn[0], mx[0], True)
        np.testing.assert_array_equal(h1, h2)
        if shape[2] > 1:
            h3 = np.full((1, nb), 7.0)
            with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
                r3 = CK.minmax_histogram(x3, lo0 + w0, w0, h3)  # the minimum lies outside now
            assert r3 == (mn[0], mx[0], False) and (h3 == 7.0).all()


def test_histogram_edges_nan_and_extreme_ranges(hist_isa):
    nb = 16
    # values exactly on edges (exact in binary), below, above and far beyond the range
    x = np.array([-1.0, -0.5, 0.0, 0.125, 0.25, 1.875, 1.99, 2.0, 3.0, 1e30, -1e30, 3e38, -3e38], np.float32)
    got = np.zeros((1, nb))
    CK.histogram(x, 0.0, 0.125, got)
    want = np.zeros(nb)
    for b in [0, 0, 0, 1, 2, 15, 15, 15, 15, 15, 0, 15, 0]:
        want[b] += 1
    np.testing.assert_array_equal(got[0], want)
    # NaN/Inf are never counted outside the histogram (histogram does not check; minmax/minmax_histogram refuse)
    bad = np.array([np.nan, np.inf, -np.inf, 1.0] * 5000, np.float32)
    h = np.zeros((1, nb))
    CK.histogram(bad, 0.0, 0.125, h)
    assert (h[0, 0], h[0, 8], h[0, 15], h.sum()) == (10000, 5000, 5000, bad.size)  # NaN, -inf -> 0; 1.0; +inf
    for where in (0, 4095, 4096, 19_999):
        y = np.ones(20_000, np.float32)
        for v in (np.nan, np.inf, -np.inf):
            y[where] = v
            h = np.zeros((1, nb))
            with pytest.raises(InputError, match="NaN or Inf"):
                CK.minmax_histogram(y, 0.0, 1.0, h)
            assert not h.any()
            with pytest.raises(InputError, match="NaN or Inf"):
                CK.minmax(y)
            y[where] = 1.0
    # constant input, a range a few ulps wide far from zero, and a range spanning almost all of float32
    for x, lo, w in [(np.full(70_000, 3.5, np.float32), 3.5, 1e-30),
                     (np.float32(1000.0) + np.arange(9, dtype=np.float32) * np.spacing(np.float32(1000.0)),
                      1000.0, 9 * float(np.spacing(np.float32(1000.0))) / nb),
                     (np.linspace(-3e38, 3e38, 100_001, dtype=np.float32), -3e38, 6e38 / nb)]:
        g, r = np.zeros((1, nb)), np.zeros((1, nb))
        CK.histogram(x, lo, w, g)
        NK.histogram(x, lo, w, r)
        np.testing.assert_array_equal(g, r)
        np.testing.assert_array_equal(g, _floor_bins(x.reshape(1, 1, -1), [lo], [w], nb))
        assert g.sum() == x.size
    # the tiny range: 9 consecutive float32 values spread over the bins as their exact positions say
    tiny = np.zeros((1, nb))
    CK.histogram(np.float32(1000.0) + np.arange(9, dtype=np.float32) * np.spacing(np.float32(1000.0)), 1000.0,
                 9 * float(np.spacing(np.float32(1000.0))) / nb, tiny)
    assert (np.flatnonzero(tiny[0]) == np.floor(np.arange(9) * nb / 9).astype(int)).all()


def test_histogram_isa_copies_agree():
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, 200_003) * 4).astype(np.float32)
    x3 = np.ascontiguousarray(rng.normal(size=(50, 6, 33)).astype(np.float32))
    outs = []
    for level in HIST_ISAS:
        with at_level(level):
            a = np.zeros((1, 2048))
            CK.histogram(x, -20.0, 40.0 / 2048, a)
            b = np.zeros((6, 100))
            CK.histogram(x3, np.full(6, -3.0), np.full(6, 0.06), b, axis=1)
            idx, cnt = np.nonzero(a)[1][None, :], a[a > 0][None, :]
            g0 = np.linspace(-9, -1, 40)[None, :]
            e = CK.histogram_sq_error(idx, cnt, [-20.0], [40.0 / 2048], g0, -2 * g0 / 255, 255.0)
            outs.append((a, b, e))
    for a, b, e in outs[1:]:
        np.testing.assert_array_equal(a, outs[0][0])
        np.testing.assert_array_equal(b, outs[0][1])
        np.testing.assert_array_equal(e, outs[0][2])  # the same lanes, in the same order, in every copy
    ref = NK.histogram_sq_error(idx, cnt, [-20.0], [40.0 / 2048], g0, -2 * g0 / 255, 255.0)
    np.testing.assert_allclose(outs[0][2], ref, rtol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
def test_minmax_histogram_spill_equals_reference(threads, hist_isa):
    import threadpoolctl

    rng = np.random.default_rng(41)
    x = rng.laplace(size=300_001).astype(np.float32)
    x[rng.choice(x.size, 50, replace=False)] = rng.uniform(30, 50, 50).astype(np.float32)  # beyond the range
    nb = 512
    for cap, expect in ((100, True), (50, True), (49, False), (0, False)):
        got, want = np.zeros((1, nb)), np.zeros((1, nb))
        with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
            mn, mx, out = CK.minmax_histogram_spill(x, -25.0, 50.0 / nb, got, cap)
        rmn, rmx, rout = NK.minmax_histogram_spill(x, -25.0, 50.0 / nb, want, cap)
        assert (mn, mx) == (rmn, rmx) == (x.min(), x.max())
        assert (out is not None) == (rout is not None) == expect, cap
        np.testing.assert_array_equal(got, want)
        if expect:
            np.testing.assert_array_equal(np.sort(out), np.sort(x[x > 25.0]))
            assert got.sum() + out.size == x.size
        else:
            assert not got.any()
    bad = x.copy()
    bad[123_456] = np.nan
    h = np.zeros((1, nb))
    with pytest.raises(InputError, match="NaN or Inf"):
        CK.minmax_histogram_spill(bad, -25.0, 50.0 / nb, h, 10_000)
    assert not h.any()


@pytest.mark.parametrize("level", copy_levels(_codebook))
@pytest.mark.parametrize("K", [2, 4, 8, 16, 32])
def test_small_codebook_codes_by_counting_equal_the_search(level, K):
    """Codebooks of up to 16 entries are coded by counting the midpoints below each value (codebook_kernels.h):
    the same codes as numpy's search over the exact float64 midpoints, at every copy, for values on, just below
    and just above each midpoint (a midpoint that float32 cannot hold included), runs not a multiple of the
    block, and the squared error summed from those codes."""
    rng = np.random.default_rng(K)
    C = 7
    cb = np.sort(rng.normal(size=(C, K)).astype(np.float32) * 3, axis=1)
    cb[1] = np.float32(1) + np.arange(K, dtype=np.float32) * np.float32(2**-23)  # adjacent floats: unrepresentable midpoints
    cb[2, :2] = cb[2, 0]  # two equal entries: a midpoint equal to both
    mid = (cb[:, :-1].astype(np.float64) + cb[:, 1:].astype(np.float64)) / 2
    x = (rng.normal(size=(C, 203)) * 3).astype(np.float32)
    m32 = mid.astype(np.float32)
    near = np.concatenate([m32, np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(-np.inf)), cb],
                          axis=1)
    x[:, :near.shape[1]] = near
    with at_level(level):
        got = CK.nearest_entry(x, cb, axis=0)
        sse = CK.nearest_entry_sse(x, cb, axis=0)
    want = np.stack([np.searchsorted(mid[c], x[c].astype(np.float64), side="left") for c in range(C)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, NK.nearest_entry(x, cb, axis=0))
    err = ((x.astype(np.float64) - np.take_along_axis(cb, want, 1).astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(sse, err, rtol=1e-12)
    if K > 2:
        assert (got[1] > 0).any() and (got[1] < K - 1).any()
