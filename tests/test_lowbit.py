"""Low-bit GEMM (qcore.ops.qlinear on packed 1-8 bit linear, k-means, log and table-declaring plugin weights).

* kernel level: the cython kernel's ``pack_lowbit`` / ``lowbit_linear`` on every instruction-set path equals
  the numpy kernel (the reference of the same arithmetic): decoded values and activation codes exactly, the
  float result to ~1e-6 (block sums in the same order; the SIMD paths fuse multiply-adds);
* qlinear level: every scheme x bits x granularity x symmetric/affine takes the documented path and equals the
  numpy kernel's plan, and stays within the documented error of ``x @ w.dequantize().T``;
* bad input, the lookup-table contract, QTensor variants (no zero point, float16 scales), threads.
"""
import threading

import numpy as np
import pytest

import qcore
import qcore.ops as ops
from qcore.kernels.lowbit import lowbit_table_bytes
from qcore.ops import lowbit
from qcore.quantization import forms
from qcore_plugins import _lowbit
from qcore.kernels.lowbit import lowbit_quantize_blocks

CY = qcore.get_kernel("cython")
NP = qcore.get_kernel("numpy")


def _close(y, r, tol=2e-6):
    np.testing.assert_allclose(y, r, rtol=0, atol=tol * max(1.0, float(np.abs(r).max())))


# ------------------------------------------------------------------------------------------------ kernel level

KERNEL_SHAPES = [(1, 64, 16, 32), (3, 100, 37, 100), (5, 256, 70, 32), (9, 96, 33, 96), (17, 512, 130, 128), (1, 2048, 48, 64)]


# the kernel's tables hold at most 16 entries (bits <= 4); wider tables take qlinear's rows path (tested below)
@pytest.mark.parametrize("bits,lut", [(b, "none") for b in range(1, 9)]
                         + [(b, lut) for b in range(1, 5) for lut in ("shared", "column")])
def test_kernel_matches_reference(lowbit_isa, bits, lut):
    rng = np.random.default_rng(bits * 7 + len(lut))
    for m, k, n, gs in KERNEL_SHAPES:
        g = k // gs
        values = rng.integers(0, 1 << bits, (n, k)).astype(np.uint8)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 10, (m, 1))).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        if lut == "none":
            scale = rng.uniform(0.01, 1, (n, g)).astype(np.float32)
            zero = rng.integers(0, 1 << bits, (n, g)).astype(np.float32)
            args = (values, bits, scale, zero, gs)
            kw = {}
        else:
            if lut == "shared":  # one table up to a scale per group: a single byte table (like log)
                base = rng.standard_normal((1, 1, 1 << bits)).astype(np.float32)
                table = base * np.exp2(rng.integers(-3, 3, (1, g, 1))).astype(np.float32)
            else:
                table = rng.standard_normal((n, g, 1 << bits)).astype(np.float32)
            args = (values, bits, None, None, gs)
            kw = dict(table=table, table_group_size=gs)
        pc, pn = CY.pack_lowbit(*args, **kw), NP.pack_lowbit(*args, **kw)
        assert pc.lut == (0 if lut == "none" else (1 if lut == "shared" else 2))
        # the values the kernels multiply: exactly the reference's
        dec = _lowbit.decode(pc)[:, :k]
        if pn.tables is None:
            want = values
        elif pn.tables.shape[:2] == (1, 1):
            want = pn.tables[0, 0][values]
        else:
            want = pn.tables[np.arange(n)[:, None], np.arange(k)[None, :] // gs, values]
        np.testing.assert_array_equal(dec, want)
        _close(CY.lowbit_linear(x, pc, bias), NP.lowbit_linear(x, pn, bias))
        if lut == "none":  # one integral zero point everywhere: folded into the integer dot products
            z = np.full((n, g), (1 << bits) // 2, np.float32)
            yc = CY.lowbit_linear(x, CY.pack_lowbit(values, bits, scale, z, gs), bias)
            _close(yc, NP.lowbit_linear(x, NP.pack_lowbit(values, bits, scale, z, gs), bias))
            exact = x.astype(np.float64) @ (np.repeat(scale, gs, axis=1) * (values - z[:, :1])).T + bias
            _, sa, _ = lowbit_quantize_blocks(x)  # within the activation rounding of the exact product
            wabs = np.abs(np.repeat(scale, gs, axis=1) * (values - z[:, :1]))
            bound = 0.5 * sa.astype(np.float64) @ wabs.reshape(n, -1, 32).sum(axis=2).T if k % 32 == 0 else None
            if bound is not None:
                assert np.all(np.abs(yc - exact) <= bound * 1.001 + 1e-5 * np.abs(exact).max())


def test_activation_quantization_matches_reference(lowbit_isa):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 301)) * rng.uniform(1e-3, 1e3, (7, 1))).astype(np.float32)
    x[1] = 0.0
    x[2, :40] = 1e-35  # a tiny block: scale 0, codes 0
    x[3, 5] = 1e30
    x[4, ::2] = (np.arange(151) - 75) * 0.5  # exact ties after scaling
    q, sa, asum, bad = _lowbit.quantize_blocks(x)
    rq, rsa, rasum = lowbit_quantize_blocks(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(sa, rsa)
    np.testing.assert_array_equal(asum, rasum)
    assert not bad.any()
    assert sa[1].max() == 0 and sa[2, 0] == 0 and not q[2, :32].any()


def test_table_bytes():
    t = np.array([[[0.0, 1.0, -0.5, 0.25]], [[0.0, 0.0, 0.0, 0.0]]], np.float32)
    v, s = lowbit_table_bytes(t)
    np.testing.assert_array_equal(v[0, 0, :4].astype(int) - 128, [0, 127, -64, 32])  # -63.5 and 31.75: half to even
    assert np.all(v[:, :, 4:] == 128) and s[1, 0] == 1 and np.all(v[1] == 128)
    np.testing.assert_allclose(s[0, 0], 1 / 127)


def test_kernel_bad_input():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 16, (8, 64)).astype(np.uint8)
    sc = np.ones((8, 2), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        CY.pack_lowbit(values, 4, np.ones((8, 4), np.float32), np.zeros((8, 4), np.float32), 16)
    with pytest.raises(ValueError, match="< 2\\*\\*bits"):
        CY.pack_lowbit(values, 3, sc, sc, 32)
    with pytest.raises(ValueError, match="shape"):
        CY.pack_lowbit(values, 4, sc[:, :1], sc, 32)
    with pytest.raises(ValueError, match="finite"):
        CY.pack_lowbit(values, 4, np.full((8, 2), np.nan, np.float32), sc, 32)
    with pytest.raises(ValueError, match="table must have shape"):
        CY.pack_lowbit(values, 4, None, None, 32, table=np.zeros((8, 2, 8), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        CY.pack_lowbit(values, 4, None, None, 32, table=np.full((1, 2, 16), np.inf, np.float32))
    with pytest.raises(ValueError):
        CY.pack_lowbit(values, 5, None, None, 32, table=np.zeros((1, 2, 32), np.float32))
    with pytest.raises(TypeError):
        CY.pack_lowbit(values.astype(np.int8), 4, sc, sc, 32)
    p = CY.pack_lowbit(values, 4, sc, sc, 32)
    with pytest.raises(ValueError, match="shape"):
        CY.lowbit_linear(np.zeros((2, 63), np.float32), p)
    with pytest.raises(ValueError, match="bias"):
        CY.lowbit_linear(np.zeros((2, 64), np.float32), p, np.zeros(7, np.float32))
    with pytest.raises(TypeError):
        CY.lowbit_linear(np.zeros((2, 64), np.float32), NP.pack_lowbit(values, 4, sc, sc, 32))
    x = rng.standard_normal((40, 64)).astype(np.float32)
    for kern, packed in ((CY, p), (NP, NP.pack_lowbit(values, 4, sc, sc, 32))):
        for bad in (np.nan, np.inf, -np.inf):
            xb = x.copy()
            xb[39, 63] = bad
            with pytest.raises(qcore.InputError):
                kern.lowbit_linear(xb, packed)
    assert CY.lowbit_linear(np.zeros((0, 64), np.float32), p).shape == (0, 8)


# ------------------------------------------------------------------------------------------------ qlinear level

W_CASES = [
    ("linear", dict(bits=4, symmetric=True, granularity="group", group_size=32), "kernel"),
    ("linear", dict(bits=4, symmetric=False, granularity="group", group_size=32), "kernel"),
    ("linear", dict(bits=4, symmetric=True, granularity="group", group_size=128), "kernel"),
    ("linear", dict(bits=4, symmetric=False, granularity="channel"), "kernel"),
    ("linear", dict(bits=4, symmetric=True, granularity="tensor"), "kernel"),
    ("linear", dict(bits=1, symmetric=True, granularity="channel"), "kernel"),
    ("linear", dict(bits=1, symmetric=False, granularity="group", group_size=64), "kernel"),
    ("linear", dict(bits=2, symmetric=True, granularity="group", group_size=32), "kernel"),
    ("linear", dict(bits=2, symmetric=False, granularity="tensor"), "kernel"),
    ("linear", dict(bits=3, symmetric=True, granularity="group", group_size=64), "kernel"),
    ("linear", dict(bits=3, symmetric=False, granularity="channel"), "kernel"),
    ("linear", dict(bits=5, symmetric=True, granularity="channel"), "kernel"),
    ("linear", dict(bits=6, symmetric=False, granularity="group", group_size=32), "kernel"),
    ("linear", dict(bits=7, symmetric=True, granularity="tensor"), "kernel"),
    ("linear", dict(bits=8, symmetric=True, granularity="group", group_size=64), "kernel"),
    ("linear", dict(bits=8, symmetric=False, granularity="group", group_size=32), "kernel"),
    ("linear", dict(bits=4, symmetric=True, granularity="group", group_size=16), "rows"),
    ("linear", dict(bits=4, granularity="channel", axis=1), "rows"),
    ("kmeans", dict(bits=4), "kernel"),
    ("kmeans", dict(bits=4, granularity="channel"), "kernel"),
    ("kmeans", dict(bits=2, granularity="channel"), "kernel"),
    ("kmeans", dict(bits=3), "kernel"),
    ("kmeans", dict(bits=5), "rows"),
    ("kmeans", dict(bits=4, granularity="group", group_size=128), "kernel"),
    ("kmeans", dict(bits=4, granularity="group", group_size=64, codebook_dtype="float16"), "kernel"),
    ("kmeans", dict(bits=2, granularity="group", group_size=32), "kernel"),
    ("kmeans", dict(bits=4, granularity="group", group_size=16), "rows"),  # not a multiple of 32: rows path
    ("kmeans", dict(bits=6, granularity="group", group_size=64), "rows"),
    ("log", dict(bits=4), "kernel"),
    ("log", dict(bits=4, granularity="channel"), "kernel"),
    ("log", dict(bits=4, granularity="group", group_size=32), "kernel"),
    ("log", dict(bits=2, granularity="group", group_size=64), "kernel"),
    ("log", dict(bits=3, granularity="channel"), "kernel"),
    ("log", dict(bits=6), "rows"),
    ("log", dict(bits=4, granularity="channel", axis=1), "rows"),
]


def _weight(n, k, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * rng.uniform(0.2, 2, (n, 1))).astype(np.float32)


@pytest.mark.parametrize("scheme,opts,mode", W_CASES, ids=lambda v: str(v) if not isinstance(v, dict) else
                         "-".join(f"{a}{b}" for a, b in v.items()))
def test_qlinear_paths(scheme, opts, mode):
    n, k = 40, 256
    w = qcore.quantize(_weight(n, k, 3), scheme, **opts)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    plan = lowbit.plan_for(w)
    assert plan.mode == mode, plan
    y = ops.qlinear(x, w, bias)
    assert y.shape == (2, 3, n) and y.dtype == np.float32
    x2 = x.reshape(-1, k)
    ref = lowbit.run(lowbit.plan_for(w, NP), w, x2, bias)  # the numpy kernel: same arithmetic
    _close(y.reshape(-1, n), ref)
    exact = x2.astype(np.float64) @ w.dequantize().astype(np.float64).T + bias
    if mode == "rows":
        _close(y.reshape(-1, n), exact, 1e-5)
    else:
        # documented accuracy: activations move by at most half a step of their block (sa/2 per element);
        # table entries by at most half a step of the table (max|T|/254); nothing else is rounded
        _, sa, _ = lowbit_quantize_blocks(x2)
        wd = np.abs(w.dequantize().astype(np.float64))
        nb = sa.shape[1]
        wb = np.zeros((n, nb * 32))
        wb[:, :k] = wd
        act = 0.5 * sa.astype(np.float64) @ wb.reshape(n, nb, 32).sum(axis=2).T
        tab = 0.0
        form = lowbit.form_of(w)
        if isinstance(form, forms.Table) and w.bits > 1:  # (1-bit +-alpha tables run as affine: exact)
            table = form.table
            xa = np.abs(x2).astype(np.float64)
            half_step = np.abs(table).max(axis=-1, keepdims=True) / 254.0
            per_el = forms.decode(forms.Table(np.broadcast_to(half_step, table.shape)), w.codes, w.layout, w.bits)
            tab = (xa + 0.5 * sa.repeat(32, axis=1)[:, :k]) @ per_el.T.astype(np.float64)
        bound = act + tab + 1e-5 * np.abs(exact).max()
        assert np.all(np.abs(y.reshape(-1, n) - exact) <= bound * 1.001)
    assert any(key.startswith("qcore.ops.qlinear") for key in w.cache)


@pytest.mark.parametrize("m", [1, 2, 5, 8, 70])
def test_qlinear_shapes_and_isas(lowbit_isa, m):
    # odd K (padded to whole blocks), N not a multiple of the panel width, several tile heights
    n, k = 37, 199
    for scheme, opts in (("linear", dict(bits=4, symmetric=True)), ("kmeans", dict(bits=4, granularity="channel")),
                         ("kmeans", dict(bits=4, granularity="group", group_size=199))):  # odd K, one group per row
        w = qcore.quantize(_weight(n, k, m), scheme, **opts)
        x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        _close(ops.qlinear(x, w), lowbit.run(lowbit.plan_for(w, NP), w, x, None))


def test_qtensor_variants():
    rng = np.random.default_rng(5)
    n, k = 24, 128
    w = qcore.quantize(_weight(n, k, 5), "linear", bits=4, symmetric=True, granularity="group", group_size=32)
    x = rng.standard_normal((4, k)).astype(np.float32)
    y = ops.qlinear(x, w)
    # float16 scales, the full signed range -8..7, and (where the scheme decodes without one) no zero point
    codes = np.asarray(w.codes).copy()
    codes[0, :5] = -8
    zp = w.params.get("zero_point", np.zeros(np.shape(w.params["scale"]), np.int32))
    for params in ({"scale": np.asarray(w.params["scale"]).astype(np.float16), "zero_point": zp},
                   {"scale": np.asarray(w.params["scale"]).astype(np.float16)}):
        w2 = qcore.QTensor(codes, "linear", 4, params, dict(w.options), signed=True)
        try:
            deq = w2.dequantize()
        except KeyError:  # this linear scheme still needs its zero point stored
            continue
        y2 = ops.qlinear(x, w2)
        _close(y2, lowbit.run(lowbit.plan_for(w2, NP), w2, x, None))
        np.testing.assert_allclose(y2, x @ deq.T, atol=0.03 * np.abs(y).max())


class _TableScheme(qcore.Quantizer):
    """A plugin-style scheme with a 4-bit per-channel table (NF4-like), for the lookup_table contract."""

    name = "test-table4"
    signed = False
    bits_range = (4, 4)
    options = {"granularity": "channel", "axis": 0, "bad": None}
    granularities = ("channel",)

    LEVELS = np.array([-1, -0.69, -0.52, -0.39, -0.28, -0.18, -0.09, 0, 0.08, 0.16, 0.25, 0.34, 0.44, 0.56, 0.72, 1], np.float32)

    def fit(self, x):
        return {"absmax": np.maximum(np.abs(x).max(axis=1), 1e-6).astype(np.float32)}

    def encode(self, x, params):
        y = x / params["absmax"][:, None]
        return np.abs(y[..., None] - self.LEVELS).argmin(axis=-1).astype(np.uint8)

    def _levels(self, n):  # per channel a slightly different table, so the byte tables differ per column
        return (self.LEVELS[None, :] + 0.03 * (np.arange(n) % 4)[:, None]).astype(np.float32)

    def decode(self, codes, params):
        lv = self._levels(codes.shape[0])
        return (np.take_along_axis(lv, codes.astype(np.int64), axis=1) * params["absmax"].reshape(-1, 1)).astype(np.float32)

    def lookup_table(self, params):
        t = (params["absmax"][:, None] * self._levels(params["absmax"].shape[0])).astype(np.float32)
        if self.config["bad"] == "shape":
            return t[:, :8]
        if self.config["bad"] == "nan":
            t = t.copy()
            t[0, 0] = np.nan
        return t


def test_plugin_lookup_table_contract():
    q = _TableScheme(bits=4, kernel="numpy", observer="minmax")
    wf = _weight(20, 96, 6)
    w = q.quantize(wf)
    form = lowbit.form_of(w)
    assert isinstance(form, forms.Table)  # the default decodes_as wraps lookup_table
    np.testing.assert_array_equal(forms.decode(form, w.codes, w.layout, w.bits), w.dequantize())  # the contract holds
    x = np.random.default_rng(6).standard_normal((3, 96)).astype(np.float32)
    plan = lowbit.plan_for(w)
    assert plan.mode == "kernel" and plan.packed.lut == 2  # per-column tables in the inner loop
    _close(ops.qlinear(x, w), lowbit.run(lowbit.plan_for(w, NP), w, x, None))
    for bad, match in (("shape", "expected"), ("nan", "NaN or Inf")):
        wb = _TableScheme(bits=4, kernel="numpy", bad=bad).quantize(wf)
        with pytest.raises(ValueError, match=match):
            ops.qlinear(x, wb)


def test_builtin_tables_follow_the_contract():
    wf = _weight(16, 64, 7)
    for scheme, opts in (("kmeans", dict(bits=3, granularity="channel")), ("log", dict(bits=4, granularity="group", group_size=32)),
                         ("log", dict(bits=8))):
        w = qcore.quantize(wf, scheme, **opts)
        table = w.quantizer.lookup_table(w.params)
        assert table.dtype == np.float32 and table.shape == tuple(w.quantizer.param_shape(wf)) + (1 << w.bits,)
        form = w.decodes_as()
        assert isinstance(form, forms.Table)
        np.testing.assert_array_equal(form.table, table)
        np.testing.assert_array_equal(forms.decode(form, w.codes, w.layout, w.bits), w.dequantize())
    assert qcore.get_quantizer("linear").lookup_table({}) is None  # linear declares an Affine form instead


def test_bad_input_qlinear():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    for scheme, opts in (("linear", dict(bits=4, symmetric=True, granularity="group", group_size=32)),
                         ("linear", dict(bits=4, granularity="group", group_size=16)),  # rows path
                         ("log", dict(bits=4))):
        w = qcore.quantize(_weight(8, 64, 8), scheme, **opts)
        for bad in (np.nan, np.inf):
            xb = x.copy()
            xb[2, 63] = bad
            with pytest.raises(qcore.InputError):
                ops.qlinear(xb, w)
        with pytest.raises(ValueError, match="features"):
            ops.qlinear(x[:, :63], w)
        with pytest.raises(ValueError, match="bias"):
            ops.qlinear(x, w, np.zeros(9, np.float32))


def test_threads_share_one_weight():
    rng = np.random.default_rng(9)
    ws = [qcore.quantize(_weight(96, 320, 9), "linear", bits=4, symmetric=True, granularity="group", group_size=32),
          qcore.quantize(_weight(96, 320, 10), "kmeans", bits=4, granularity="channel")]
    xs = [rng.standard_normal((1 + 13 * i, 320)).astype(np.float32) for i in range(6)]
    want = [[ops.qlinear(x, w) for x in xs] for w in ws]
    fresh = [qcore.QTensor(w.codes, w.scheme, w.bits, w.params, w.options, signed=w.signed) for w in ws]  # empty caches
    got = [[None] * len(xs) for _ in ws]
    errors = []
    barrier = threading.Barrier(6)

    def work(i):
        try:
            barrier.wait(timeout=60)
            for _ in range(3):
                for j, w in enumerate(fresh):
                    got[j][i] = ops.qlinear(xs[i], w)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors
    for j in range(len(ws)):
        for g, r in zip(got[j], want[j]):
            np.testing.assert_array_equal(g, r)


# ------------------------------------------------------------------------------------------------ packing from the
# packed stream (no unpacked copy) and back: the adapters keep only the kernel layout (qcore.ops.hold_packed_once)

def _codes(rng, n, k, bits, signed):
    if signed:
        return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (n, k)).astype(np.int8)
    return rng.integers(0, 1 << bits, (n, k)).astype(np.uint8)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("n,k,gs", [(1, 1, 1), (5, 33, 33), (17, 64, 32), (40, 100, 100), (33, 96, 32), (16, 320, 64)])
def test_pack_from_packed_stream_equals_pack_from_codes(bits, signed, n, k, gs):
    rng = np.random.default_rng(bits * 100 + n + k)
    codes = _codes(rng, n, k, bits, signed)
    stream = CY.pack(codes, bits)  # the QTensor's stored stream (docs/format.md §3)
    flip = (1 << (bits - 1)) if signed else 0
    values = (codes.view(np.uint8) & np.uint8((1 << bits) - 1)) ^ np.uint8(flip)
    g = k // gs
    scale = (rng.random((n, g)) + 0.1).astype(np.float32)
    zero = rng.integers(0, 1 << bits, (n, g)).astype(np.float32)
    for kern in (CY, NP):
        want = kern.pack_lowbit(values, bits, scale, zero, gs)
        got = kern.pack_lowbit_packed(stream, (n, k), bits, scale, zero, gs, flip=flip)
        if kern is CY:
            for name in ("planes", "sw", "swz"):
                a, b = getattr(want, name), getattr(got, name)
                assert (a is None and b is None) or np.array_equal(a, b), name
            np.testing.assert_array_equal(_lowbit.decode(got)[:, :k], values)
        else:
            np.testing.assert_array_equal(got.values, values)
        # the inverse gives back the stream bit for bit (unused high bits of the last byte 0)
        np.testing.assert_array_equal(kern.unpack_lowbit(got, flip), stream)
        x = rng.standard_normal((3, k)).astype(np.float32)
        np.testing.assert_array_equal(kern.lowbit_linear(x, got), kern.lowbit_linear(x, want))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_pack_from_packed_stream_with_tables(bits):
    rng = np.random.default_rng(bits)
    n, k = 20, 96
    codes = _codes(rng, n, k, bits, False)
    stream = CY.pack(codes, bits)
    for rows, gs in ((1, k), (n, 32)):
        table = rng.standard_normal((rows, k // gs, 1 << bits)).astype(np.float32)
        want = CY.pack_lowbit(codes, bits, None, None, gs, table=table, table_group_size=gs)
        got = CY.pack_lowbit_packed(stream, (n, k), bits, None, None, gs, table=table, table_group_size=gs)
        assert np.array_equal(want.planes, got.planes) and np.array_equal(want.tab, got.tab)
        np.testing.assert_array_equal(_lowbit.decode(got), _lowbit.decode(want))
        np.testing.assert_array_equal(CY.unpack_lowbit(got), stream)


def test_pack_from_packed_stream_bad_input():
    stream = CY.pack(np.zeros((4, 40), np.uint8), 4)
    sc, z = np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)
    with pytest.raises(ValueError, match="need 80 packed bytes, got 79"):
        CY.pack_lowbit_packed(stream[:-1], (4, 40), 4, sc, z, 40)
    with pytest.raises(TypeError, match="1-d uint8"):
        CY.pack_lowbit_packed(stream.view(np.int8), (4, 40), 4, sc, z, 40)
    with pytest.raises(ValueError, match="flip"):
        CY.pack_lowbit_packed(stream, (4, 40), 4, sc, z, 40, flip=16)
    with pytest.raises(ValueError, match="shape"):
        CY.pack_lowbit_packed(stream, (4, 40, 1), 4, sc, z, 40)
    with pytest.raises(ValueError, match="non-empty"):
        CY.pack_lowbit_packed(np.zeros(0, np.uint8), (0, 40), 4, sc, z, 40)
    with pytest.raises(ValueError, match="scale and zero"):
        CY.pack_lowbit_packed(stream, (4, 40), 4, sc[:2], z, 40)
    with pytest.raises(ValueError, match="bits"):
        CY.pack_lowbit_packed(stream, (4, 40), 9, sc, z, 40)
    w = CY.pack_lowbit_packed(stream, (4, 40), 4, sc, z, 40)
    with pytest.raises(ValueError, match="flip"):
        CY.unpack_lowbit(w, 16)
    with pytest.raises(TypeError, match="cython kernel"):
        CY.unpack_lowbit(NP.pack_lowbit_packed(stream, (4, 40), 4, sc, z, 40))


@pytest.mark.parametrize("scheme,opts", [
    ("linear", {"bits": 4, "symmetric": True, "granularity": "group", "group_size": 32}),
    ("linear", {"bits": 4, "symmetric": True, "granularity": "group", "group_size": 32, "scale_dtype": "float16"}),
    ("linear", {"bits": 2, "symmetric": False, "granularity": "group", "group_size": 32}),
    ("linear", {"bits": 1, "symmetric": True, "granularity": "channel"}),
    ("linear", {"bits": 3, "granularity": "channel"}),
    ("linear", {"bits": 1, "symmetric": True}),
    ("linear", {"bits": 8, "symmetric": False, "granularity": "group", "group_size": 32}),
    ("linear", {"bits": 8, "granularity": "channel"}),  # the int8 GEMM
    ("kmeans", {"bits": 4, "granularity": "channel"}),
    ("kmeans", {"bits": 3, "granularity": "group", "group_size": 32}),
    ("log", {"bits": 4})])
def test_hold_packed_once_keeps_one_copy_and_the_same_bytes(scheme, opts):
    w = _weight(40, 97 if scheme != "kmeans" and opts.get("granularity") != "group" else 96, 3)
    qt = qcore.quantize(w, scheme, **opts)
    ref = qcore.QTensor.from_packed(qt.packed, qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
    x = np.random.default_rng(4).standard_normal((5, w.shape[1])).astype(np.float32)
    want = ops.qlinear(x, ref)
    assert qt.holds_codes and ops.hold_packed_once(qt) and not qt.holds_codes
    assert ops.hold_packed_once(qt)  # idempotent
    np.testing.assert_array_equal(qt.packed, ref.packed)
    assert not qt.packed.flags.writeable
    np.testing.assert_array_equal(qt.codes, ref.codes)
    assert qt.codes.dtype == ref.codes.dtype
    assert qt.nbytes == ref.nbytes
    assert list(qt.params) == list(ref.params)
    for name, p in ref.params.items():  # the scales may be held by the layout too: the same values and dtype
        assert qt.params[name].dtype == p.dtype and qt.params[name].shape == p.shape
        np.testing.assert_array_equal(qt.params[name], p)
    np.testing.assert_array_equal(qt.dequantize(), ref.dequantize())
    np.testing.assert_array_equal(ops.qlinear(x, qt), want)  # bit for bit
    import pickle

    back = pickle.loads(pickle.dumps(qt))
    assert back.holds_codes
    np.testing.assert_array_equal(back.packed, ref.packed)


def test_hold_packed_once_leaves_rows_path_weights_alone():
    qt = qcore.quantize(_weight(16, 48, 5), "linear", bits=4, granularity="group", group_size=16)  # not 32k
    assert not ops.hold_packed_once(qt) and qt.holds_codes
    with pytest.raises(TypeError, match="QTensor"):
        ops.hold_packed_once(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="callable"):
        qt.hold_codes_in(None)


def test_plan_is_built_without_unpacking_the_codes(monkeypatch):
    """build_plan packs from qt.packed: it unpacks at most the few rows it checks the decode on."""
    qt = qcore.quantize(_weight(64, 256, 6), "linear", bits=4, symmetric=True, granularity="group", group_size=32)
    seen = []
    real = type(CY).unpack

    def spy(self, packed, bits, count, signed):
        seen.append(count)
        return real(self, packed, bits, count, signed)

    monkeypatch.setattr(type(CY), "unpack", spy)
    lowbit.build_plan(qt, CY)
    assert seen and max(seen) <= lowbit._CHECK_ROWS * 256
