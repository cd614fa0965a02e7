"""Conformance checks for :class:`qcore.Observer` subclasses (calibration plugins)."""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np

from ..errors import QcoreError
from ..quantization.observer import Observer
from ._common import Check, SkipCheck


class Spec:
    def __init__(self, obj):
        if isinstance(obj, Observer):
            self.cls, self.options = type(obj), dict(obj.config)
        elif isinstance(obj, type) and issubclass(obj, Observer):
            self.cls, self.options = obj, {}
        else:
            raise TypeError(f"check_observer needs a qcore.Observer subclass or instance, got {obj!r}")

    def make(self, axis=None) -> Observer:
        return self.cls(axis=axis, **self.options)


def _batches(n=4, shape=(16, 256), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = rng.laplace(size=shape).astype(np.float32) * (1 + i / 4)
        out.append(b)
    return out


def _ranges(obs, bits=8, symmetric=False):
    lo, hi = obs.range(bits, symmetric)
    return np.asarray(lo), np.asarray(hi)


def _check_range(lo, hi, data_lo, data_hi, what):
    C = data_lo.shape[0]
    for arr, nm in ((lo, "lo"), (hi, "hi")):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, f"{what}: range() {nm} must be a float32 array, got {getattr(arr, 'dtype', type(arr))}"
        assert arr.shape == (C,), f"{what}: range() {nm} has shape {arr.shape}, expected ({C},)"
        assert np.isfinite(arr).all(), f"{what}: range() {nm} holds NaN/Inf"
    assert (lo <= hi).all(), f"{what}: range() gave lo > hi for channel(s) {np.flatnonzero(lo > hi)[:5].tolist()}"
    amax = np.maximum(np.abs(data_lo), np.abs(data_hi))
    slack = 2 * amax + 1e-6
    assert (lo >= np.minimum(data_lo, 0) - slack).all() and (hi <= np.maximum(data_hi, 0) + slack).all(), \
        f"{what}: range [{lo.min():.4g}, {hi.max():.4g}] is far outside the observed data [{data_lo.min():.4g}, {data_hi.max():.4g}]"


# -- the checks ---------------------------------------------------------------------------------------------
def check_observer_class_contract(obj):
    """A non-empty ``name`` and an ``options`` dict of defaults; ``_update``/``_range`` implemented."""
    cls = Spec(obj).cls
    assert isinstance(cls.name, str) and cls.name and " " not in cls.name, f"`name` must be a non-empty string without spaces, got {cls.name!r}"
    assert isinstance(cls.options, dict), f"`options` must be a dict, got {type(cls.options).__name__}"
    assert "axis" not in cls.options and "kernel" not in cls.options, "`options` must not redeclare axis or kernel"
    for meth in ("_update", "_range"):
        assert getattr(cls, meth) is not getattr(Observer, meth), f"the observer must implement {meth}()"


def check_observer_options_validated(obj):
    """An unknown option raises TypeError; every declared option has a working default."""
    spec = Spec(obj)
    spec.cls(axis=None)
    try:
        spec.cls(axis=None, no_such_option_xyz=1)
    except (TypeError, ValueError):
        return
    raise AssertionError("an unknown option (no_such_option_xyz=1) was accepted; it must raise TypeError")


def check_observer_range_before_update(obj):
    """``range()`` before any ``update`` raises a clear ``qcore.QcoreError``."""
    obs = Spec(obj).make()
    assert not obs.observed, "a fresh observer claims to have observed data"
    try:
        obs.range(8, False)
    except (QcoreError, ValueError):
        return
    raise AssertionError("range() before update() returned a value; expected qcore.QcoreError")


def check_observer_per_tensor(obj):
    """Per tensor (``axis=None``): ``range`` gives float32 ``(1,)`` arrays, finite, ``lo <= hi``, near the data,
    for 4 and 8 bits, symmetric or not."""
    spec = Spec(obj)
    bs = _batches()
    obs = spec.make()
    for b in bs:
        obs.update(b)
    assert obs.observed and obs.batches == len(bs), f"after {len(bs)} updates: observed={obs.observed}, batches={obs.batches}"
    allx = np.concatenate([b.reshape(-1) for b in bs])
    for bits in (4, 8):
        for sym in (False, True):
            lo, hi = _ranges(obs, bits, sym)
            _check_range(lo, hi, np.array([allx.min()]), np.array([allx.max()]), f"axis=None bits={bits} symmetric={sym}")
            assert hi[0] > lo[0], f"bits={bits} symmetric={sym}: an empty range [{lo[0]}, {hi[0]}] for spread-out data"


def check_observer_per_channel(obj):
    """Per channel along axis 0, 1 and -1 of 3-d batches: one range per channel, each near its channel's data."""
    spec = Spec(obj)
    rng = np.random.default_rng(1)
    scales = np.array([0.1, 1.0, 10.0, 3.0, 0.5, 7.0], np.float32)
    for axis in (0, 1, -1):
        shape = [4, 6, 24]
        shape[axis] = 6
        bshape = [1, 1, 1]
        bshape[axis] = 6
        bs = [rng.normal(size=shape).astype(np.float32) * scales.reshape(bshape) for _ in range(3)]
        obs = spec.make(axis=axis)
        for b in bs:
            obs.update(b)
        stack = np.stack(bs)  # axis shifts by one
        red = tuple(i for i in range(stack.ndim) if i != (axis % 3) + 1)
        lo, hi = _ranges(obs)
        _check_range(lo, hi, stack.min(axis=red), stack.max(axis=red), f"axis={axis}")
        width = hi - lo
        assert width[2] > width[0], f"axis={axis}: channel ranges ignore the channel (width {width.tolist()})"


def check_observer_channel_mismatch(obj):
    """A per-channel observer refuses a batch with another number of channels (``ValueError``)."""
    obs = Spec(obj).make(axis=0)
    obs.update(np.ones((4, 8), np.float32))
    try:
        obs.update(np.ones((5, 8), np.float32))
    except ValueError:
        return
    raise AssertionError("a batch with 5 channels after one with 4 was accepted")


def check_observer_non_finite(obj):
    """A batch with NaN/Inf raises ``ValueError`` (``qcore.InputError``) and leaves the state as it was."""
    spec = Spec(obj)
    bs = _batches(2)
    obs = spec.make()
    obs.update(bs[0])
    before = _ranges(obs)
    for bad in (np.nan, np.inf, -np.inf):
        b = bs[1].copy()
        b[3, 7] = bad
        try:
            obs.update(b)
        except ValueError:
            pass
        else:
            raise AssertionError(f"a batch with {bad} was accepted; expected ValueError (qcore.InputError)")
        after = _ranges(obs)
        assert all(np.array_equal(x, y) for x, y in zip(before, after)), f"a refused batch with {bad} changed the range"
        assert obs.batches == 1, f"a refused batch was counted (batches={obs.batches})"


def check_observer_empty_batch(obj):
    """An empty batch raises a clear error (``ValueError`` or ``qcore.QcoreError``)."""
    obs = Spec(obj).make()
    try:
        obs.update(np.zeros((0, 4), np.float32))
    except (ValueError, QcoreError):
        return
    raise AssertionError("an empty batch was accepted")


def check_observer_reset(obj):
    """After ``reset()`` the observer behaves as a fresh one."""
    spec = Spec(obj)
    bs = _batches(3)
    obs = spec.make()
    for b in _batches(2, seed=9):
        obs.update(b * 5)
    obs.reset()
    assert not obs.observed, "observed is still True after reset()"
    fresh = spec.make()
    for b in bs:
        obs.update(b)
        fresh.update(b)
    for x, y in zip(_ranges(obs), _ranges(fresh)):
        assert np.array_equal(x, y), "after reset() the range differs from a fresh observer's"


def check_observer_deterministic(obj):
    """Two observers fed the same batches agree exactly; ``range`` called twice agrees."""
    spec = Spec(obj)
    a, b = spec.make(), spec.make()
    for x in _batches():
        a.update(x)
        b.update(x.copy())
    ra, rb, ra2 = _ranges(a), _ranges(b), _ranges(a)
    assert all(np.array_equal(x, y) for x, y in zip(ra, rb)), "two observers fed the same batches disagree"
    assert all(np.array_equal(x, y) for x, y in zip(ra, ra2)), "range() called twice gives two answers"


def check_observer_input_forms(obj):
    """``update`` never writes into its batch, and float64 / Fortran-order batches act as float32 C arrays."""
    spec = Spec(obj)
    bs = _batches(2)
    keep = [b.copy() for b in bs]
    a, b, c = spec.make(), spec.make(), spec.make(axis=1)
    for x, k in zip(bs, keep):
        a.update(x)
        assert np.array_equal(x, k), "update() modified its batch"
        b.update(np.asfortranarray(x.astype(np.float64)))
        c.update(np.asfortranarray(x))
    assert all(np.array_equal(x, y) for x, y in zip(_ranges(a), _ranges(b))), "a float64 Fortran-order batch gives another range"
    ref = spec.make(axis=1)
    for x in bs:
        ref.update(x)
    assert all(np.array_equal(x, y) for x, y in zip(_ranges(c), _ranges(ref))), "a Fortran-order batch gives another per-channel range"


def check_observer_bounded_memory(obj):
    """Memory does not grow with the number of batches (less than one batch over 40 more)."""
    spec = Spec(obj)
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(64, 512)).astype(np.float32)
    obs = spec.make()
    for _ in range(3):
        obs.update(batch)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(40):
            obs.update(batch * np.float32(1 + (i % 5) / 10))
        obs.range(8, False)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < batch.nbytes, f"40 more batches of {batch.nbytes} bytes grew memory by {end - start} bytes"


def check_observer_with_quantizer(obj):
    """The observer calibrates the ``linear`` scheme by name: per tensor and per channel, valid codes."""
    from ..api import get_quantizer, list_schemes

    if "linear" not in list_schemes():
        raise SkipCheck("the linear scheme is not installed")
    spec = Spec(obj)
    bs = _batches(3)
    for opts in ({}, {"granularity": "channel", "axis": 0}):
        q = get_quantizer("linear", bits=8, observer=spec.cls.name, **opts)
        for b in bs:
            q.observe(b)
        qt = q.quantize(bs[0])
        d = qt.dequantize()
        assert np.isfinite(d).all() and d.shape == bs[0].shape, f"{opts}: calibrated linear quantization gave bad values"
        err = float(np.mean((d - bs[0]) ** 2))
        assert err < float(np.mean(bs[0] ** 2)), f"{opts}: calibrated error {err:.4g} is not below the signal power"


def check_observer_threads(obj):
    """Separate observer instances updated in parallel threads agree with serial ones."""
    spec = Spec(obj)
    sets = [_batches(3, seed=s) for s in range(4)]
    serial = []
    for bs in sets:
        o = spec.make()
        for b in bs:
            o.update(b)
        serial.append(_ranges(o))
    out: list = [None] * 4
    errors: list = []

    def work(i):
        try:
            o = spec.make()
            for b in sets[i]:
                o.update(b)
            out[i] = _ranges(o)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, f"update raised in a thread: {errors[0]!r}"
    for i in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(serial[i], out[i])), f"thread {i} disagrees with the serial result"


OBSERVER_CHECKS = [
    check_observer_class_contract,
    check_observer_options_validated,
    check_observer_range_before_update,
    check_observer_per_tensor,
    check_observer_per_channel,
    check_observer_channel_mismatch,
    check_observer_non_finite,
    check_observer_empty_batch,
    check_observer_reset,
    check_observer_deterministic,
    check_observer_input_forms,
    check_observer_bounded_memory,
    check_observer_with_quantizer,
    check_observer_threads,
]


def observer_checks(obj=None) -> list[Check]:
    return [Check(f.__name__, f, "observer") for f in OBSERVER_CHECKS]
