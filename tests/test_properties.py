"""Properties of every built-in scheme × granularity × bits (issue 9).

For each configuration, on random data and odd shapes (1×1, primes, 0-length axes, non-contiguous views):

* codes have the input's shape, the scheme's code dtype and lie in ``[qmin, qmax]``;
* dequantize gives finite float32 values of the input's shape, within the scheme's error bound
  (linear: half a step; log: never further than zero is, i.e. ``|x' - x| <= |x|``; kmeans: never worse than
  linear at the same bits; 1/2-bit symmetric linear: least squares, never worse than all zeros);
* constant tensors come back exactly;
* packing round-trips (``QTensor.pack``/``from_packed`` and both kernels' ``pack``/``unpack``), in exactly
  ``ceil(n*bits/8)`` bytes;
* the ``cython`` kernel gives the same codes, parameters and values as the ``numpy`` reference, bit for bit;
* a non-contiguous or Fortran-order view quantizes exactly as its contiguous copy.

``mixed`` (a planner) returns one of its candidates' QTensors: it is checked for the same invariants.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcore

EXAMPLES = int(os.environ.get("QCORE_PROPERTY_EXAMPLES", "400"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# every built-in configuration: (scheme, bits, options)
CONFIGS = []
for _bits in range(1, 9):
    for _sym in (False, True):
        for _g in ("tensor", "channel", "group"):
            CONFIGS.append(("linear", _bits, {"symmetric": _sym, "granularity": _g}))
    for _g in ("tensor", "channel"):
        CONFIGS.append(("kmeans", _bits, {"granularity": _g}))
    if _bits >= 2:
        for _g in ("tensor", "channel", "group"):
            CONFIGS.append(("log", _bits, {"granularity": _g}))
        CONFIGS.append(("log", _bits, {"granularity": "channel", "rounding": "log2", "method": "range"}))


def cid(c):
    scheme, bits, opts = c
    return f"{scheme}-{bits}-" + "-".join(f"{k}={v}" for k, v in opts.items())


def options_for(opts: dict, shape: tuple) -> dict | None:
    """Concrete options for ``shape`` (axis and group size), or None if the granularity cannot apply."""
    o = dict(opts)
    g = o.get("granularity")
    if g in ("channel", "group") and len(shape) == 0:
        return None
    if g == "channel":
        o["axis"] = len(shape) - 1 if len(shape) > 1 else 0
    if g == "group":
        last = shape[-1]
        o["group_size"] = next((d for d in (4, 3, 2, 1) if last % d == 0), 1) if last else 4
    return o


def quantizer(scheme, bits, opts, kernel=None):
    return qcore.get_quantizer(scheme, bits=bits, kernel=kernel, **opts)


def check_invariants(q, x, qt):
    assert qt.shape == x.shape and qt.codes.shape == x.shape
    assert qt.codes.dtype == (np.int8 if qt.signed else np.uint8)
    if qt.codes.size:
        assert int(qt.codes.min()) >= q.qmin and int(qt.codes.max()) <= q.qmax, (q, qt.codes.min(), qt.codes.max())
    v = qt.dequantize()
    assert v.dtype == np.float32 and v.shape == x.shape and np.isfinite(v).all()
    # packing round trip, exact byte count
    packed = qt.pack()
    assert packed.dtype == np.uint8 and packed.size == (x.size * qt.bits + 7) // 8
    back = qcore.QTensor.from_packed(packed, qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
    np.testing.assert_array_equal(back.codes, qt.codes)
    np.testing.assert_array_equal(back.dequantize(), v)
    return v


def check_error_bound(scheme, bits, opts, x, qt, v):
    if x.size == 0:
        return
    x64, v64 = x.astype(np.float64), v.astype(np.float64)
    err = np.abs(x64 - v64)
    if scheme == "linear":
        if opts.get("symmetric") and bits <= 2:  # least squares (BWN/TWN): never worse than all zeros, per channel
            assert (err**2).sum() <= (x64**2).sum() * (1 + 1e-5) + 1e-30
            return
        q = qt.quantizer
        view, axis = q.layout(x)
        scale = qt.params["scale"].reshape(-1).astype(np.float64)
        if axis is None:
            step = np.full(x.shape, scale[0])
        else:
            shp = [1] * view.ndim
            shp[axis] = -1
            step = np.broadcast_to(scale.reshape(shp), view.shape).reshape(x.shape)
        # half a step, plus float32 rounding of the scale products; symmetric 3/4-bit scales are searched for
        # least squared error and may be negative or clip the largest values: add the distance to the range
        clip = 0.0
        if opts.get("symmetric") and bits in (3, 4):
            a, b = q.qmin * step, q.qmax * step
            clip = np.maximum(0, np.maximum(x64 - np.maximum(a, b), np.minimum(a, b) - x64))
        step = np.abs(step)
        assert (err <= 0.5 * step * (1 + 1e-5) + clip + 1e-6 * np.abs(x64) + 1e-30).all(), err.max()
    elif scheme == "log":
        assert (err <= np.abs(x64) * (1 + 1e-6)).all()  # nearest level in value (or in log2): never past zero
    elif scheme == "kmeans":
        lin_opts = {"granularity": opts["granularity"]}
        if "axis" in opts:
            lin_opts["axis"] = opts["axis"]
        lin = qcore.quantize(x, "linear", bits=bits, **lin_opts).dequantize().astype(np.float64)
        assert (err**2).sum() <= ((x64 - lin) ** 2).sum() * (1 + 1e-4) + 1e-12


def check_same_as_reference(scheme, bits, opts, x, qt):
    ref = quantizer(scheme, bits, opts, kernel="numpy").quantize(x)
    np.testing.assert_array_equal(ref.codes, qt.codes)
    assert sorted(ref.params) == sorted(qt.params)
    for k in ref.params:
        np.testing.assert_array_equal(ref.params[k], qt.params[k], err_msg=k)
    np.testing.assert_array_equal(ref.dequantize(), qt.dequantize())


# -- an exhaustive sweep on fixed odd shapes -------------------------------------------------------------------
SWEEP_SHAPES = [(1, 1), (7, 13), (0, 6), (5, 0), (31,)]


@pytest.mark.parametrize("config", CONFIGS, ids=cid)
def test_every_configuration_on_odd_shapes(config):
    scheme, bits, opts = config
    rng = np.random.default_rng(bits)
    for shape in SWEEP_SHAPES:
        o = options_for(opts, shape)
        if o is None:
            continue
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        q = quantizer(scheme, bits, o)
        qt = q.quantize(x)
        v = check_invariants(q, x, qt)
        check_error_bound(scheme, bits, o, x, qt, v)
        check_same_as_reference(scheme, bits, o, x, qt)
        # constants come back exactly (docs/usage.md)
        for c in (0.0, 2.5, -0.75):
            const = np.full(shape, c, np.float32)
            np.testing.assert_array_equal(quantizer(scheme, bits, o).quantize(const).dequantize(), const)


# -- hypothesis: any configuration, shape, values and memory layout --------------------------------------------
DIMS = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64])
VALUES = st.sampled_from(["normal", "uniform", "positive", "sparse", "spiky", "tiny", "huge", "ties", "const"])


def make(kind, shape, rng):
    n = int(np.prod(shape))
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, n)
    elif kind == "positive":
        x = rng.exponential(1.0, n)
    elif kind == "sparse":
        x = rng.standard_normal(n) * (rng.random(n) < 0.1)
    elif kind == "spiky":
        x = rng.standard_normal(n)
        if n:
            x[rng.integers(0, n, 2)] *= 1000
    elif kind == "tiny":
        x = rng.standard_normal(n) * 1e-30
    elif kind == "huge":
        x = rng.standard_normal(n) * 1e30
    elif kind == "ties":
        x = rng.integers(-8, 9, n) * 0.5
    else:
        x = np.full(n, 1.25)
    return x.astype(np.float32).reshape(shape)


@given(config=st.sampled_from(CONFIGS), shape=st.lists(DIMS, min_size=1, max_size=3), kind=VALUES,
       layout=st.sampled_from(["C", "F", "strided", "negative"]), seed=st.integers(0, 2**16))
@PROPS
def test_properties_hold_for_any_shape_values_and_layout(config, shape, kind, layout, seed):
    scheme, bits, opts = config
    if scheme == "kmeans" and int(np.prod(shape)) > 512:
        shape = shape[:1]  # k-means fits are the slow part; keep them small
    rng = np.random.default_rng(seed)
    base = make(kind, tuple(shape), rng)
    if layout == "F":
        x = np.asfortranarray(base)
    elif layout == "strided":  # every other element of a twice-as-long last axis
        wide = np.repeat(base, 2, axis=-1) if base.ndim else base
        x = wide[..., ::2]
    elif layout == "negative":
        x = base[..., ::-1]
        base = np.ascontiguousarray(x)
    else:
        x = base
    shape = tuple(base.shape)
    o = options_for(opts, shape)
    if o is None:
        return
    q = quantizer(scheme, bits, o)
    qt = q.quantize(x)
    v = check_invariants(q, base, qt)
    check_error_bound(scheme, bits, o, base, qt, v)
    # a view quantizes exactly as its contiguous copy, and the cython kernel equals the numpy reference
    ref = quantizer(scheme, bits, o).quantize(np.ascontiguousarray(base))
    np.testing.assert_array_equal(ref.codes, qt.codes)
    np.testing.assert_array_equal(ref.dequantize(), v)
    check_same_as_reference(scheme, bits, o, base, qt)
    if kind == "const":
        np.testing.assert_array_equal(v, base)


# -- kernels: pack/unpack and affine quantize/dequantize, cython == numpy ----------------------------------------
@given(bits=st.integers(1, 8), signed=st.booleans(), n=st.sampled_from([0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 1000, 4099]),
       seed=st.integers(0, 2**16), offset=st.integers(0, 3))
@PROPS
def test_pack_unpack_round_trip_on_both_kernels(bits, signed, n, seed, offset):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    buf = rng.integers(lo, hi + 1, n + offset).astype(np.int8 if signed else np.uint8)
    codes = buf[offset:]  # an unaligned view
    packed = {}
    for name in ("cython", "numpy"):
        k = qcore.get_kernel(name)
        p = k.pack(codes, bits)
        assert p.size == (n * bits + 7) // 8
        if n * bits % 8:
            assert p[-1] >> (n * bits % 8) == 0  # unused high bits are zero
        np.testing.assert_array_equal(k.unpack(p, bits, n, signed), codes)
        packed[name] = p
    np.testing.assert_array_equal(packed["cython"], packed["numpy"])


@given(shape=st.lists(DIMS, min_size=1, max_size=3), axis=st.integers(-1, 2), bits=st.integers(2, 8), signed=st.booleans(),
       seed=st.integers(0, 2**16), kind=VALUES)
@PROPS
def test_affine_kernels_match_the_reference(shape, axis, bits, signed, seed, kind):
    rng = np.random.default_rng(seed)
    x = make(kind, tuple(shape), rng)
    ax = None if axis >= len(shape) else axis
    C = 1 if ax is None else shape[ax]
    scale = rng.uniform(1e-3, 2, max(C, 1)).astype(np.float32)[:C] if C else np.ones(0, np.float32)
    if ax is None:
        scale = scale[:1] if scale.size else np.ones(1, np.float32)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    zp = rng.integers(qmin, qmax + 1, scale.size).astype(np.int32) if not signed else np.zeros(scale.size, np.int32)
    out = {}
    for name in ("cython", "numpy"):
        k = qcore.get_kernel(name)
        codes = k.quantize_affine(x, scale, zp, qmin, qmax, axis=ax)
        assert codes.shape == x.shape and (codes.size == 0 or (codes.min() >= qmin and codes.max() <= qmax))
        out[name] = (codes, k.dequantize_affine(codes, scale, zp, axis=ax))
        if x.size:
            lo, hi = k.minmax(x, axis=ax)
            out[name] += (lo, hi)
    for a, b in zip(out["cython"], out["numpy"]):
        np.testing.assert_array_equal(a, b)


# -- mixed: a planner that returns a candidate's QTensor ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 32), (0, 8), (31,)])
@pytest.mark.parametrize("budget", [2.0, 4.5, 8.0])
def test_mixed_returns_a_valid_candidate(shape, budget):
    x = make("normal", shape, np.random.default_rng(3))
    q = qcore.get_quantizer("mixed", budget_bits=budget)
    try:
        qt = q.quantize(x)
    except ValueError as exc:  # documented: parameters alone can exceed a small tensor's budget
        assert "budget too small" in str(exc)
        return
    assert qt.scheme in ("linear", "log", "kmeans")
    check_invariants(qt.quantizer, x, qt)
    if x.size:
        # within the budget (parameters counted), unless even the cheapest candidate is above it
        assert qt.nbytes * 8 <= budget * x.size + 1e-9 or qt.bits <= 2
