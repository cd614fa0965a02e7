"""Calibration observers: moving_average, percentile, histogram (entropy / l2), mse — and minmax as baseline."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import qcore
from qcore_plugins.observers._histogram import scheme_grid

HIST_OBSERVERS = ["percentile", "histogram", "mse"]
ALL_OBSERVERS = ["minmax", "moving_average"] + HIST_OBSERVERS


def laplace_with_outliers(rng, n=1_000_000):
    """Laplace(0, 1) activations with one or two huge outliers (|x| 40..80) per batch."""
    x = rng.laplace(0.0, 1.0, n).astype(np.float32)
    k = int(rng.integers(1, 3))
    x[rng.integers(0, n, k)] = rng.choice([-1.0, 1.0], k) * rng.uniform(40, 80, k)
    return x


@pytest.fixture(scope="module")
def outlier_batches():
    rng = np.random.default_rng(1)
    return [laplace_with_outliers(rng) for _ in range(4)]


def calibrated_error(batches, observer, symmetric=False, bits=8, **_):
    q = qcore.get_quantizer("linear", bits=bits, observer=observer, symmetric=symmetric)
    for b in batches:
        q.observe(b)
    x = np.concatenate(batches)
    return float(np.mean((q.quantize(x).dequantize() - x) ** 2))


# -- acceptance: better ranges than minmax, and than torch ---------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
def test_clipping_observers_halve_minmax_error(outlier_batches, symmetric):
    base = calibrated_error(outlier_batches, "minmax", symmetric)
    for name in HIST_OBSERVERS:
        err = calibrated_error(outlier_batches, name, symmetric)
        assert err < 0.5 * base, f"{name}: {err:.4g} vs minmax {base:.4g}"


@pytest.mark.parametrize("symmetric", [False, True])
def test_best_of_histogram_and_mse_beats_torch(outlier_batches, symmetric):
    torch = pytest.importorskip("torch")
    obs = torch.ao.quantization.HistogramObserver(
        dtype=torch.qint8 if symmetric else torch.quint8,
        qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
    )
    for b in outlier_batches:
        obs(torch.from_numpy(b))
    scale, zp = obs.calculate_qparams()
    x = np.concatenate(outlier_batches)
    if symmetric:
        # torch's symmetric int8 uses 255 levels [-128, 127], qcore's narrow range 254: compare the observers on
        # the same grid by giving torch's clipping range (amax = 127.5 * scale) to qcore's quantizer
        amax = float(scale) * 127.5
        params = qcore.get_quantizer("linear", bits=8, symmetric=True).fit(np.array([-amax, amax], np.float32))
        q = qcore.get_quantizer("linear", bits=8, symmetric=True)
        y = q.decode(q.encode(x, params), params)
    else:
        y = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(scale), int(zp), 0, 255).numpy()
    torch_err = float(np.mean((y - x) ** 2))
    ours = min(calibrated_error(outlier_batches, n, symmetric) for n in ("histogram", "mse"))
    assert ours <= torch_err, f"best of histogram/mse {ours:.5g} > torch HistogramObserver {torch_err:.5g}"


def test_entropy_method_beats_minmax_symmetric(outlier_batches):
    base = calibrated_error(outlier_batches, "minmax", True)
    q = qcore.get_quantizer("linear", bits=8, symmetric=True)
    obs = qcore.get_observer("histogram", method="entropy")
    for b in outlier_batches:
        obs.update(b)
    lo, hi = obs.range(8, True)
    assert 5.0 < hi[0] < 40.0 and lo[0] == pytest.approx(-hi[0], rel=1e-3)
    q.observer = obs
    x = np.concatenate(outlier_batches)
    assert np.mean((q.quantize(x).dequantize() - x) ** 2) < 0.5 * base


def test_mse_knows_bits():
    """Fewer bits make the quantization noise larger, so the optimal clip moves in."""
    rng = np.random.default_rng(3)
    x = rng.laplace(size=200_000).astype(np.float32)
    obs = qcore.get_observer("mse")
    obs.update(x)
    a8 = obs.range(8, True)[1][0]
    a4 = obs.range(4, True)[1][0]
    assert a4 < 0.6 * a8 <= 0.6 * np.abs(x).max()


def test_percentile_value():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 3, 400_000).astype(np.float32)
    obs = qcore.get_observer("percentile", percentile=99.0)
    for part in np.array_split(x, 7):
        obs.update(part)
    lo, hi = obs.range(8, False)
    ref_lo, ref_hi = np.percentile(x, [1.0, 99.0])
    assert lo[0] == pytest.approx(ref_lo, abs=0.01) and hi[0] == pytest.approx(ref_hi, abs=0.01)
    alo, ahi = obs.range(8, True)  # symmetric: the percentile of |x|
    assert ahi[0] == pytest.approx(np.percentile(np.abs(x), 99.0), abs=0.01)
    assert alo[0] == pytest.approx(max(-ahi[0], x.min()))  # never beyond the data


def test_moving_average_equals_hand_computation():
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(16, 3)).astype(np.float32) * (i + 1) for i in range(6)]
    c = 0.25
    for axis in (None, 1):
        obs = qcore.get_observer("moving_average", axis=axis, averaging_constant=c)
        red = None if axis is None else 0
        lo, hi = batches[0].min(axis=red), batches[0].max(axis=red)
        for i, b in enumerate(batches):
            obs.update(b)
            if i:
                lo = lo + c * (b.min(axis=red) - lo)
                hi = hi + c * (b.max(axis=red) - hi)
        glo, ghi = obs.range()
        np.testing.assert_allclose(glo, np.reshape(lo, -1), rtol=1e-6)
        np.testing.assert_allclose(ghi, np.reshape(hi, -1), rtol=1e-6)
    # default constant is torch's 0.01
    assert qcore.get_observer("moving_average").config["averaging_constant"] == 0.01


def test_moving_average_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    tobs = torch.ao.quantization.MovingAverageMinMaxObserver()
    obs = qcore.get_observer("moving_average")
    for i in range(5):
        b = rng.normal(size=1000).astype(np.float32) * (1 + i)
        tobs(torch.from_numpy(b))
        obs.update(b)
    lo, hi = obs.range()
    assert lo[0] == pytest.approx(float(tobs.min_val), rel=1e-5) and hi[0] == pytest.approx(float(tobs.max_val), rel=1e-5)


# -- bounded memory ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HIST_OBSERVERS)
def test_memory_does_not_grow_with_batches(name):
    rng = np.random.default_rng(7)
    pool = [rng.laplace(size=1_000_000).astype(np.float32) for _ in range(3)]
    obs = qcore.get_observer(name)
    obs.update(pool[0])
    state = obs.nbytes
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 150):
            obs.update(pool[i % 3] * np.float32(1.0 + 0.01 * i))  # the range keeps growing: rebinning
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert obs.nbytes == state <= 64 * 1024
    assert after - before < pool[0].nbytes / 20, f"memory grew by {after - before} bytes over 149 batches"
    assert obs.hist.sum() == 150 * 1_000_000  # exact counts after all the rebinning
    assert obs.batches == 150


# -- the histogram itself ---------------------------------------------------------------------------------
def reference_hist(x3, lo, width, nb):
    """Independent of the kernels: bin ``floor((v - lo) / width)`` in float64, clamped to ``[0, nb - 1]``."""
    out = np.zeros((x3.shape[1], nb))
    for c in range(x3.shape[1]):
        v = x3[:, c, :].ravel().astype(np.float64)
        b = np.clip(np.floor((v - lo[c]) * (1.0 / width[c])), 0, nb - 1).astype(np.int64)
        out[c] = np.bincount(b, minlength=nb)
    return out


@pytest.mark.parametrize("kernel", ["cython", "numpy"])
@pytest.mark.parametrize("shape", [(1, 1, 300_001), (4000, 7, 1), (3, 5, 70_000), (5, 3000, 2), (2, 300, 100), (1, 1, 5)])
def test_kernel_histogram_and_minmax_match_numpy(shape, kernel):
    """What the histogram observers count with: the kernel's minmax and histogram (qcore/kernels/affine.py, histogram.py)."""
    k = qcore.get_kernel(kernel)
    rng = np.random.default_rng(8)
    x3 = rng.laplace(size=shape).astype(np.float32)
    lo, hi = k.minmax(x3, 1)
    np.testing.assert_array_equal(lo, x3.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, x3.max(axis=(0, 2)))
    nb = 257
    L = lo.astype(np.float64)
    W = (hi.astype(np.float64) - L) / nb
    h = np.zeros((shape[1], nb))
    k.histogram(x3, L, W, h, axis=1)
    np.testing.assert_array_equal(h, reference_hist(x3, L, W, nb))
    if shape[1] == 1:  # the fused per-tensor pass: min, max and the same counts
        h2 = np.zeros((1, nb))
        mn, mx, added = k.minmax_histogram(x3, L[0], W[0], h2)
        assert (mn, mx, added) == (lo[0], hi[0], True)
        np.testing.assert_array_equal(h2, h)


def test_kernel_minmax_flags_nonfinite():
    for kernel in ("cython", "numpy"):
        k = qcore.get_kernel(kernel)
        for bad in (np.nan, np.inf, -np.inf):
            for shape, where in [((1, 1, 10_000), (0, 0, 7777)), ((500, 4, 1), (250, 2, 0)), ((2, 3, 100), (1, 1, 99))]:
                x3 = np.ones(shape, np.float32)
                x3[where] = bad
                with pytest.raises(qcore.InputError, match="NaN or Inf"):
                    k.minmax(x3, 1)
                if shape[1] == 1:
                    h = np.zeros((1, 16))
                    with pytest.raises(qcore.InputError):
                        k.minmax_histogram(x3, 0.0, 1.0, h)
                    assert not h.any()  # refused: nothing counted


@pytest.mark.parametrize("name", HIST_OBSERVERS)
def test_values_near_float32_limits(name):
    big = np.float32(3e38)
    x = np.array([-big, 0.0, 1.0, big, big / 2], np.float32)
    obs = qcore.get_observer(name)
    obs.update(x)
    obs.update(x[::-1].copy())
    nb = obs.hist.shape[1]
    assert obs.hist.sum() == 10 and obs.hist[0, 0] == 2 and obs.hist[0, -1] == 2
    assert obs.hist[0, nb // 2 - 1 : nb // 2 + 1].sum() == 4  # 0 and 1 sit at the middle edge
    lo, hi = obs.range(8, False)
    assert np.isfinite(lo).all() and np.isfinite(hi).all() and -big <= lo[0] <= 0 <= hi[0] <= big


def test_same_range_again_does_not_regrow():
    x = np.random.default_rng(15).laplace(size=100_000).astype(np.float32)
    obs = qcore.get_observer("mse")
    obs.update(x)
    lo, width = obs.lo.copy(), obs.width.copy()
    obs.update(x[::-1].copy())
    assert obs.lo == lo and obs.width == width and obs.hist.sum() == 200_000


def test_growth_is_exact_and_keeps_resolution():
    rng = np.random.default_rng(9)
    obs = qcore.get_observer("histogram", bins=512)
    scale = 1.0
    for i in range(40):
        scale *= 1.15
        obs.update(rng.normal(size=5000).astype(np.float32) * scale + i * 0.1)
    assert obs.hist.sum() == 40 * 5000
    span = obs.max[0] - obs.min[0]
    assert obs.width[0] * 512 <= 4 * span  # at least a quarter of the bins cover data
    assert obs.lo[0] <= obs.min[0] and obs.lo[0] + 512 * obs.width[0] >= obs.max[0]


def test_sq_error_matches_monte_carlo():
    """The closed-form error of the grid on a histogram equals quantizing uniform data bin by bin."""
    rng = np.random.default_rng(10)
    nb, w, lo = 64, 0.1, -3.0
    counts = rng.integers(0, 50, nb).astype(np.float64)
    vals = np.concatenate([lo + (i + rng.random(int(n) * 400)) * w for i, n in enumerate(counts)])
    g0, step, levels = scheme_grid(np.array([[-2.0]]), np.array([[1.5]]), 4, False)
    q = np.clip(np.rint((vals - g0[0, 0]) / step[0, 0]), 0, levels) * step[0, 0] + g0[0, 0]
    mc = np.mean((vals - q) ** 2) * counts.sum()
    idx = np.arange(nb, dtype=np.int64)[None, :]
    for kernel in ("cython", "numpy"):
        got = qcore.get_kernel(kernel).histogram_sq_error(idx, counts[None, :], [lo], [w], g0, step, levels)[0, 0]
        assert got == pytest.approx(mc, rel=0.02)


# -- per channel, any axis ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_OBSERVERS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_any_axis(name, axis):
    rng = np.random.default_rng(11)
    scales = np.array([0.5, 1.0, 4.0, 20.0], np.float32)
    shape = [20, 30, 40]
    shape[axis] = 4
    bshape = [1, 1, 1]
    bshape[axis] = 4
    q = qcore.get_quantizer("linear", bits=8, observer=name, granularity="channel", axis=axis)
    for _ in range(3):
        q.observe(rng.normal(size=shape).astype(np.float32) * scales.reshape(bshape))
    lo, hi = q.observer.range(8, False)
    assert lo.shape == hi.shape == (4,)
    assert np.all(hi > 0) and np.all(lo < 0)
    ratio = hi / scales
    assert ratio.max() / ratio.min() < 1.6, ratio  # each channel sees its own scale
    x = rng.normal(size=shape).astype(np.float32) * scales.reshape(bshape)
    qt = q.quantize(x)
    assert qt.params["scale"].shape == (4,)
    rel = np.mean((qt.dequantize() - x) ** 2) / np.mean(x**2)
    assert rel < 1e-3


def test_group_granularity_weights_fit_directly():
    rng = np.random.default_rng(12)
    w = rng.normal(size=(64, 256)).astype(np.float32)
    base = qcore.get_quantizer("linear", bits=4, granularity="group", group_size=32).quantize(w).dequantize()
    for name in ("mse", "histogram"):
        y = qcore.get_quantizer("linear", bits=4, observer=name, granularity="group", group_size=32).quantize(w).dequantize()
        assert np.mean((y - w) ** 2) < np.mean((base - w) ** 2)


def test_many_channels_cap_the_bins():
    obs = qcore.get_observer("percentile", axis=0)
    obs.update(np.random.default_rng(0).normal(size=(20_000, 3)).astype(np.float32))
    assert obs.hist.shape == (20_000, 838) and obs.hist.size <= 1 << 24


# -- edge cases and bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HIST_OBSERVERS + ["moving_average"])
def test_constant_data_comes_back_exactly(name):
    q = qcore.get_quantizer("linear", bits=8, observer=name)
    for _ in range(3):
        q.observe(np.full(1000, -2.5, np.float32))
    np.testing.assert_array_equal(q.quantize(np.full(7, -2.5, np.float32)).dequantize(), np.full(7, -2.5, np.float32))


@pytest.mark.parametrize("name", HIST_OBSERVERS)
def test_nonfinite_after_first_batch_per_tensor(name):
    """Per tensor, later batches are counted in one fused pass: a NaN/Inf there must still be refused, and a
    batch beyond the range must grow it, leaving no trace of the refused or first-try counts."""
    obs = qcore.get_observer(name)
    obs.update(np.linspace(-1, 1, 300_000, dtype=np.float32))
    before = obs.hist.copy()
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(300_000, np.float32)
        x[123_456] = bad
        with pytest.raises(qcore.InputError):
            obs.update(x)
        np.testing.assert_array_equal(obs.hist, before)
    obs.update(np.linspace(-3, 0.5, 300_000, dtype=np.float32))
    assert obs.hist.sum() == 600_000 and obs.min[0] == -3.0 and obs.max[0] == 1.0
    assert obs.batches == 2


@pytest.mark.parametrize("name", HIST_OBSERVERS + ["moving_average"])
def test_bad_batches(name):
    q = qcore.get_quantizer("linear", bits=8, observer=name, granularity="channel", axis=1)
    q.observe(np.ones((10, 4), np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((10, 4), np.float32)
        x[3, 2] = bad
        with pytest.raises(qcore.InputError):
            q.observe(x)
        with pytest.raises(qcore.InputError):
            q.observer.update(x)  # the observer checks too, not only the quantizer
    with pytest.raises(ValueError, match="channels"):
        q.observe(np.ones((10, 5), np.float32))
    with pytest.raises(qcore.InputError):
        q.observer.update(np.ones((0, 4), np.float32))
    assert q.observer.batches == 1


@pytest.mark.parametrize("name", ALL_OBSERVERS)
def test_range_before_observing(name):
    obs = qcore.get_observer(name)
    with pytest.raises(qcore.QcoreError, match="observe"):
        obs.range(8, False)
    # a quantizer that never observed fits on the tensor it quantizes (documented fallback)
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    y = qcore.get_quantizer("linear", bits=8, observer=name).quantize(x).dequantize()
    assert np.abs(y - x).max() < 0.01


@pytest.mark.parametrize(
    "name, options, exc",
    [
        ("moving_average", {"averaging_constant": 0.0}, ValueError),
        ("moving_average", {"averaging_constant": 1.5}, ValueError),
        ("moving_average", {"averaging_constant": "0.1"}, TypeError),
        ("percentile", {"percentile": 40}, ValueError),
        ("percentile", {"percentile": 100.5}, ValueError),
        ("percentile", {"percentile": float("nan")}, ValueError),
        ("percentile", {"bins": 8}, ValueError),
        ("percentile", {"bins": 100.0}, TypeError),
        ("histogram", {"method": "kl"}, ValueError),
        ("histogram", {"bins": True}, TypeError),
        ("mse", {"rounds": -1}, ValueError),
        ("mse", {"bins": 2048, "nonsense": 1}, TypeError),
    ],
)
def test_bad_options(name, options, exc):
    with pytest.raises(exc):
        qcore.get_observer(name, **options)


@pytest.mark.parametrize("name", ALL_OBSERVERS)
def test_reset_and_determinism(name):
    rng = np.random.default_rng(13)
    batches = [rng.laplace(size=50_000).astype(np.float32) for _ in range(3)]
    obs = qcore.get_observer(name)
    ranges = []
    for _ in range(2):
        obs.reset()
        for b in batches:
            obs.update(b)
        ranges.append(obs.range(8, False))
    np.testing.assert_array_equal(ranges[0][0], ranges[1][0])
    np.testing.assert_array_equal(ranges[0][1], ranges[1][1])


def test_threads_share_nothing():
    """Separate observers updated from several threads at once give the same result as one thread."""
    rng = np.random.default_rng(14)
    batches = [rng.laplace(size=300_000).astype(np.float32) for _ in range(4)]
    serial = qcore.get_observer("histogram")
    for b in batches:
        serial.update(b)
    observers = [qcore.get_observer("histogram") for _ in range(4)]

    def work(o):
        for b in batches:
            o.update(b)

    threads = [threading.Thread(target=work, args=(o,)) for o in observers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in observers:
        np.testing.assert_array_equal(o.hist, serial.hist)


@pytest.mark.parametrize("name", ALL_OBSERVERS)
def test_conformance_kit(name):
    from qcore.testing import check_observer

    check_observer(type(qcore.get_observer(name)))


def test_batches_beyond_the_range_in_one_pass_count_as_two_passes(monkeypatch):
    """A later batch reaching beyond the histogram is counted in one pass (values beyond set aside, the range grown
    with this batch's counts merged, then those values counted): the same histogram as the two-pass path."""
    from qcore_plugins.observers import _histogram

    rng = np.random.default_rng(19)
    batches = [rng.laplace(size=200_000).astype(np.float32) for _ in range(3)]
    batches[1][rng.integers(0, 200_000, 20)] = rng.uniform(30, 60, 20).astype(np.float32)
    batches[2][:5] = -90.0
    one = qcore.get_observer("histogram")
    for b in batches:
        one.update(b)
    monkeypatch.setattr(_histogram, "SPILL_MIN", 0)
    monkeypatch.setattr(_histogram, "SPILL_FRACTION", 1 << 40)  # no room: every growing batch takes two passes
    two = qcore.get_observer("histogram")
    for b in batches:
        two.update(b)
    np.testing.assert_array_equal(one.lo, two.lo)
    np.testing.assert_array_equal(one.width, two.width)
    np.testing.assert_array_equal(one.hist, two.hist)
    assert one.hist.sum() == 600_000 and one.min == two.min and one.max == two.max
    for a, b in zip(one.range(8, False), two.range(8, False)):
        np.testing.assert_array_equal(a, b)
