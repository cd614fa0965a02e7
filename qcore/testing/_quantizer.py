"""Conformance checks for :class:`qcore.Quantizer` subclasses (scheme plugins)."""
from __future__ import annotations

import itertools
import json
import os
import pickle
import tempfile
import threading
from typing import Any

import numpy as np

from ..errors import QcoreError
from ..kernels.base import packed_size
from ..quantization.quantizer import GRANULARITIES, Quantizer
from ..tensor import QTensor
from ._common import Check, SkipCheck

SHAPE = (8, 64)  # small: every check stays fast, even for schemes that run k-means
GROUP_SIZE = 16  # divides SHAPE[-1]
_CLEAR_ERRORS = (ValueError, TypeError, QcoreError)


# -- what is under test ---------------------------------------------------------------------------------
class Spec:
    """A quantizer class plus the option sets the checks try it with.

    From a class: its defaults, each bit width among the lowest, 4 and the highest of ``bits_range`` (crossed
    with ``symmetric`` if the scheme has that option) and each declared granularity.  From an instance: that
    instance's own options only.
    """

    def __init__(self, obj):
        if isinstance(obj, Quantizer):
            self.cls = type(obj)
            opts = dict(obj.export_options())
            if getattr(obj, "observer_name", None) not in (None, self.cls.default_observer):
                opts["observer"] = obj.observer_name
            self.configs = [opts]
        elif isinstance(obj, type) and issubclass(obj, Quantizer):
            self.cls = obj
            self.configs = _class_configs(obj)
        else:
            raise TypeError(f"check_quantizer needs a qcore.Quantizer subclass or instance, got {obj!r}")

    def make(self, config: dict[str, Any] | None = None) -> Quantizer:
        return self.cls(**(self.configs[0] if config is None else config))

    def instances(self):
        for cfg in self.configs:
            yield cfg, self.cls(**cfg)


def _class_configs(cls) -> list[dict[str, Any]]:
    lo, hi = cls.bits_range
    bit_choices = sorted({lo, hi} | ({4} if lo <= 4 <= hi else set()))
    options = getattr(cls, "options", {}) or {}
    sym_choices = [False, True] if "symmetric" in options else [None]
    configs: list[dict[str, Any]] = [{}]
    for bits, sym in itertools.product(bit_choices, sym_choices):
        cfg: dict[str, Any] = {"bits": bits}
        if sym is not None:
            cfg["symmetric"] = sym
        configs.append(cfg)
    if "granularity" in options:
        for gran, sym in itertools.product(cls.granularities, sym_choices):
            cfg = {"granularity": gran}
            if gran == "group" and "group_size" in options:
                cfg["group_size"] = GROUP_SIZE
            if gran == "channel" and "axis" in options:
                cfg["axis"] = 0
            if sym is not None:
                cfg["symmetric"] = sym
            configs.append(cfg)
    out, seen = [], set()
    for cfg in configs:
        if cfg.get("granularity", options.get("granularity")) == "group" and "group_size" in options:
            cfg.setdefault("group_size", GROUP_SIZE)  # the default group size may not divide the test data
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _data(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    x.reshape(-1)[:: max(1, x.size // 7)] *= 4.0  # a few outliers, as real weights have
    return x


def _label(cfg) -> str:
    return "defaults" if not cfg else ", ".join(f"{k}={v!r}" for k, v in cfg.items())


def _same(a: QTensor, b: QTensor, what: str) -> None:
    if a.codes.shape != b.codes.shape or not np.array_equal(a.codes, b.codes):
        raise AssertionError(f"{what}: codes differ")
    if sorted(a.params) != sorted(b.params):
        raise AssertionError(f"{what}: parameter names differ ({sorted(a.params)} vs {sorted(b.params)})")
    for k in a.params:
        if not np.array_equal(a.params[k], b.params[k]):
            raise AssertionError(f"{what}: parameter {k!r} differs")


def _quantize_clear(q, x, what):
    """quantize ``x``; ``None`` if it was refused with a clear error; AssertionError for any other exception."""
    try:
        return q.quantize(x)
    except _CLEAR_ERRORS:
        return None
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{what}: expected a QTensor or a clear ValueError/TypeError/qcore.QcoreError, "
                             f"got {type(exc).__name__}: {exc}") from None


# -- the checks ---------------------------------------------------------------------------------------------
def check_class_contract(obj):
    """Class attributes: a name, ``signed``, ``bits_range`` within 1..8, ``options``, granularities, the three methods."""
    cls = Spec(obj).cls
    name = cls.name
    assert isinstance(name, str) and name, f"`name` must be a non-empty string, got {name!r}"
    assert name == name.strip() and " " not in name and "," not in name, f"`name` {name!r} must have no spaces or commas"
    assert isinstance(cls.signed, (bool, np.bool_)), f"`signed` must be True or False, got {cls.signed!r}"
    lo, hi = cls.bits_range
    assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 8, \
        f"`bits_range` must be (lo, hi) with 1 <= lo <= hi <= 8, got {cls.bits_range!r}"
    assert isinstance(cls.options, dict), f"`options` must be a dict of option -> default, got {type(cls.options).__name__}"
    reserved = {"bits", "observer", "kernel"} & set(cls.options)
    assert not reserved, f"`options` must not redeclare {sorted(reserved)}: every scheme takes them"
    bad = set(cls.granularities) - set(GRANULARITIES)
    assert not bad, f"`granularities` must be among {GRANULARITIES}, got {sorted(bad)}"
    for meth in ("fit", "encode", "decode"):
        assert getattr(cls, meth) is not getattr(Quantizer, meth), f"the scheme must implement {meth}()"
    assert isinstance(cls.default_observer, str), "`default_observer` must be an observer name"


def check_default_construction(obj):
    """Every option has a default: ``cls()`` builds a quantizer whose ``bits`` lie in ``bits_range``."""
    cls = Spec(obj).cls
    q = cls()
    lo, hi = cls.bits_range
    assert lo <= q.bits <= hi, f"default bits {q.bits} outside bits_range {cls.bits_range}"
    json.dumps(q.export_options())  # options must be JSON-serialisable: files store them


def check_options_validated(obj):
    """An unknown option, ``bits`` outside ``bits_range`` or not an integer, a bad granularity: clear errors."""
    spec = Spec(obj)
    cls, base = spec.cls, dict(spec.configs[0])
    try:
        cls(**base, no_such_option_xyz=1)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError("an unknown option (no_such_option_xyz=1) was accepted; it must raise TypeError")
    lo, hi = cls.bits_range
    bad_bits = [b for b in (lo - 1, hi + 1, 0, 9) if not lo <= b <= hi] + ["4", 4.5, True]
    for b in bad_bits:
        try:
            cls(**{**base, "bits": b})
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"bits={b!r} was accepted (bits_range {cls.bits_range}); expected ValueError or TypeError")
    if "granularity" in cls.options:
        try:
            cls(**{**base, "granularity": "no-such-granularity"})
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError("granularity='no-such-granularity' was accepted")
        x = _data()
        if "channel" in cls.granularities and "axis" in cls.options:
            q = cls(**{**base, "granularity": "channel", "axis": 5})
            try:
                q.quantize(x)
            except (ValueError, IndexError) as exc:
                assert isinstance(exc, ValueError), f"axis=5 on a 2-d array raised {type(exc).__name__}, expected ValueError"
            else:
                raise AssertionError("granularity='channel', axis=5 on a 2-d array was accepted")
        if "group" in cls.granularities and "group_size" in cls.options:
            q = cls(**{**base, "granularity": "group", "group_size": 24})
            try:
                q.quantize(x)
            except ValueError:
                pass
            else:
                raise AssertionError(f"group_size=24 not dividing the last axis ({x.shape[-1]}) was accepted")


def check_round_trip(obj):
    """``quantize`` then ``dequantize``: a QTensor of the input's shape, float32 finite values, better than zeros."""
    spec = Spec(obj)
    x = _data()
    for cfg, q in spec.instances():
        qt = q.quantize(x)
        assert isinstance(qt, QTensor), f"[{_label(cfg)}] quantize returned {type(qt).__name__}, expected qcore.QTensor"
        assert qt.shape == x.shape, f"[{_label(cfg)}] QTensor shape {qt.shape}, expected {x.shape}"
        d = qt.dequantize()
        assert isinstance(d, np.ndarray) and d.dtype == np.float32, f"[{_label(cfg)}] dequantize gave {getattr(d, 'dtype', type(d))}, expected float32"
        assert d.shape == x.shape, f"[{_label(cfg)}] dequantize shape {d.shape}, expected {x.shape}"
        assert np.isfinite(d).all(), f"[{_label(cfg)}] dequantize gave NaN/Inf"
        mse, power = float(np.mean((d - x) ** 2)), float(np.mean(x**2))
        assert mse < power, f"[{_label(cfg)}] squared error {mse:.4g} is not below the signal power {power:.4g} (all zeros would do as well)"


def check_error_decreases_with_bits(obj):
    """The highest bit width is at least as accurate as the lowest (same other options)."""
    spec = Spec(obj)
    lo, hi = spec.cls.bits_range
    if lo == hi:
        raise SkipCheck("one bit width only")
    x = _data(1)
    base = {k: v for k, v in spec.configs[0].items() if k != "bits"}
    errs = {}
    for b in (lo, hi):
        d = spec.cls(**base, bits=b).quantize(x).dequantize()
        errs[b] = float(np.mean((d - x) ** 2))
    assert errs[hi] <= errs[lo] * (1 + 1e-6) + 1e-12, f"{hi}-bit error {errs[hi]:.4g} > {lo}-bit error {errs[lo]:.4g}"


def check_codes_in_range(obj):
    """Codes: int8 for ``signed`` schemes, uint8 otherwise, same shape as the input, inside ``[qmin, qmax]``
    and inside the range ``bits`` and ``signed`` declare."""
    spec = Spec(obj)
    x = _data(2)
    x.reshape(-1)[3] = 1e4  # a value far outside the others
    for cfg, q in spec.instances():
        qt = q.quantize(x)
        want = np.int8 if q.signed else np.uint8
        assert qt.codes.dtype == want, f"[{_label(cfg)}] codes are {qt.codes.dtype}, expected {np.dtype(want)} (signed={q.signed})"
        assert qt.codes.shape == x.shape, f"[{_label(cfg)}] codes shape {qt.codes.shape}, expected {x.shape}"
        assert qt.signed == bool(q.signed), f"[{_label(cfg)}] QTensor.signed={qt.signed} but the quantizer says signed={q.signed}"
        lo, hi = (-(1 << (q.bits - 1)), (1 << (q.bits - 1)) - 1) if q.signed else (0, (1 << q.bits) - 1)
        cmin, cmax = int(qt.codes.min()), int(qt.codes.max())
        assert lo <= q.qmin <= q.qmax <= hi, f"[{_label(cfg)}] [qmin, qmax] = [{q.qmin}, {q.qmax}] outside [{lo}, {hi}]"
        assert q.qmin <= cmin and cmax <= q.qmax, f"[{_label(cfg)}] codes span [{cmin}, {cmax}], outside [{q.qmin}, {q.qmax}]"


def check_qtensor_fields(obj):
    """``scheme``, ``bits``, ``options`` (JSON, with ``bits``), ``params`` (numeric arrays) and ``nbytes``
    (packed codes plus parameters) describe the tensor truthfully."""
    spec = Spec(obj)
    x = _data(3)
    for cfg, q in spec.instances():
        qt = q.quantize(x)
        tag = f"[{_label(cfg)}]"
        assert qt.scheme == spec.cls.name, f"{tag} QTensor.scheme {qt.scheme!r}, expected {spec.cls.name!r}"
        assert qt.bits == q.bits, f"{tag} QTensor.bits {qt.bits}, expected {q.bits}"
        assert qt.options.get("bits") == q.bits, f"{tag} QTensor.options must record bits={q.bits}, got {qt.options.get('bits')!r}"
        try:
            json.dumps(qt.options)
        except TypeError as exc:
            raise AssertionError(f"{tag} QTensor.options {qt.options!r} are not JSON-serialisable ({exc}); files store them") from None
        bad = {k: v for k, v in qt.options.items() if not isinstance(v, (str, int, float, bool, type(None)))}
        assert not bad, f"{tag} option values must be str, int, float, bool or None (files store them), got {bad!r}"
        assert isinstance(qt.params, dict), f"{tag} params must be a dict"
        for k, v in qt.params.items():
            assert isinstance(k, str) and k, f"{tag} parameter names must be strings, got {k!r}"
            assert isinstance(v, np.ndarray) and v.dtype.kind in "biuf", f"{tag} parameter {k!r} must be a numeric array, got {getattr(v, 'dtype', type(v))}"
        want = packed_size(x.size, q.bits) + sum(int(v.nbytes) for v in qt.params.values())
        assert qt.nbytes == want, f"{tag} nbytes {qt.nbytes}, expected {want} (packed codes plus parameters)"
        assert isinstance(repr(q), str) and isinstance(repr(qt), str)


def check_deterministic(obj):
    """The same input gives the same codes and parameters: twice on one instance, and on a fresh instance."""
    spec = Spec(obj)
    x = _data(4)
    for cfg, q in spec.instances():
        a, b = q.quantize(x), q.quantize(x.copy())
        _same(a, b, f"[{_label(cfg)}] two calls on one instance")
        _same(a, spec.make(cfg).quantize(x), f"[{_label(cfg)}] a fresh instance")


def check_input_unchanged(obj):
    """``quantize`` never writes into its input."""
    spec = Spec(obj)
    x = _data(5)
    keep = x.copy()
    for cfg, q in spec.instances():
        q.quantize(x)
        assert np.array_equal(x, keep), f"[{_label(cfg)}] quantize modified its input array"


def check_input_forms(obj):
    """float64, float16, integer, list, Fortran-order and strided inputs give the same result as the
    equivalent C-contiguous float32 array."""
    spec = Spec(obj)
    q = spec.make()
    x = _data(6)
    ref = q.quantize(x)
    _same(q.quantize(x.astype(np.float64)), ref, "float64 input")
    _same(q.quantize(x.tolist()), ref, "list input")
    _same(q.quantize(np.asfortranarray(x)), ref, "Fortran-order input")
    big = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)
    big[:, ::2] = x
    _same(q.quantize(big[:, ::2]), ref, "strided (non-contiguous) input")
    h = x.astype(np.float16)
    _same(q.quantize(h), q.quantize(h.astype(np.float32)), "float16 input")
    i = np.rint(x * 10).astype(np.int32)
    _same(q.quantize(i), q.quantize(i.astype(np.float32)), "int32 input")


def check_non_finite_rejected(obj):
    """NaN, +Inf and -Inf in the input raise ``ValueError`` (``qcore.InputError``) — never garbage codes."""
    spec = Spec(obj)
    for cfg, q in spec.instances():
        for bad in (np.nan, np.inf, -np.inf):
            x = _data(7)
            x[1, 5] = bad
            try:
                qt = q.quantize(x)
            except ValueError:
                continue
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"[{_label(cfg)}] input with {bad} raised {type(exc).__name__}: {exc}; expected ValueError (qcore.InputError)") from None
            raise AssertionError(f"[{_label(cfg)}] input with {bad} was accepted (QTensor {qt!r}); expected ValueError (qcore.InputError)")


def check_empty_input(obj):
    """An empty tensor gives an empty QTensor (whose dequantize is empty, same shape) or a clear error."""
    spec = Spec(obj)
    for cfg, q in spec.instances():
        for shape in ((0,), (0, SHAPE[1])):
            x = np.zeros(shape, np.float32)
            qt = _quantize_clear(q, x, f"[{_label(cfg)}] empty input of shape {shape}")
            if qt is None:
                continue
            assert qt.shape == shape, f"[{_label(cfg)}] empty input: QTensor shape {qt.shape}, expected {shape}"
            d = qt.dequantize()
            assert d.shape == shape and d.dtype == np.float32, f"[{_label(cfg)}] empty input: dequantize gave {d.dtype} {d.shape}"
            assert qt.pack().size == 0, f"[{_label(cfg)}] empty input packs to a non-empty byte string"


def check_zero_dim_input(obj):
    """A 0-d array (one number) round-trips with shape ``()``, or is refused with a clear error."""
    spec = Spec(obj)
    for cfg, q in spec.instances():
        qt = _quantize_clear(q, np.float32(1.5), f"[{_label(cfg)}] 0-d input")
        if qt is None:
            continue
        assert qt.shape == (), f"[{_label(cfg)}] 0-d input: QTensor shape {qt.shape}, expected ()"
        d = qt.dequantize()
        assert d.shape == () and np.isfinite(d), f"[{_label(cfg)}] 0-d input: dequantize gave {d!r}"


def check_constant_input(obj):
    """An all-zero tensor comes back as exact zeros; a constant tensor comes back as that constant
    (scale 0 must never divide by zero)."""
    spec = Spec(obj)
    for cfg, q in spec.instances():
        for c in (0.0, 0.75, -2.5):
            x = np.full(SHAPE, c, np.float32)
            d = q.quantize(x).dequantize()
            assert np.isfinite(d).all(), f"[{_label(cfg)}] constant {c}: dequantize gave NaN/Inf"
            if c == 0.0:
                assert np.array_equal(d, x), f"[{_label(cfg)}] an all-zero tensor came back as {np.unique(d)[:5]}"
            else:
                worst = float(np.max(np.abs(d - x)))
                assert worst <= 1e-6 * abs(c), f"[{_label(cfg)}] a constant tensor of {c} comes back {worst:.3g} off (e.g. {d.reshape(-1)[0]!r})"


def check_packing_round_trip(obj):
    """``qt.pack()`` holds exactly ``ceil(n*bits/8)`` bytes and ``QTensor.from_packed`` restores the codes."""
    spec = Spec(obj)
    x = _data(8, shape=(3, 48))  # n*bits is not a multiple of 8 for odd bit widths
    for cfg, q in spec.instances():
        if q.config.get("granularity") == "group" and x.shape[-1] % q.config.get("group_size", 1):
            x = _data(8)
        qt = q.quantize(x)
        packed = qt.pack()
        assert packed.dtype == np.uint8 and packed.ndim == 1, f"[{_label(cfg)}] pack gave {packed.dtype} {packed.shape}"
        assert packed.size == packed_size(x.size, q.bits), f"[{_label(cfg)}] {x.size} {q.bits}-bit codes packed into {packed.size} bytes, expected {packed_size(x.size, q.bits)}"
        back = QTensor.from_packed(packed, qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
        assert np.array_equal(back.codes, qt.codes), f"[{_label(cfg)}] codes differ after pack/unpack"
        assert np.array_equal(back.dequantize(), qt.dequantize()), f"[{_label(cfg)}] values differ after pack/unpack"


def check_rebuild_from_options(obj):
    """What a file stores is enough: ``get_quantizer(qt.scheme, **options)`` (options through JSON) decodes
    the codes to the same values, and a pickled QTensor dequantizes the same."""
    from ..api import get_quantizer

    spec = Spec(obj)
    x = _data(9)
    for cfg, q in spec.instances():
        qt = q.quantize(x)
        opts = json.loads(json.dumps(qt.options))
        q2 = get_quantizer(qt.scheme, **opts)
        assert type(q2) is spec.cls, f"[{_label(cfg)}] get_quantizer({qt.scheme!r}) gave {type(q2).__name__}, not the class under test"
        params = {k: np.array(v) for k, v in qt.params.items()}
        d = np.asarray(q2.decode(qt.codes.copy(), params), np.float32).reshape(qt.shape)
        assert np.array_equal(d, qt.dequantize()), f"[{_label(cfg)}] a quantizer rebuilt from options {opts} decodes differently"
        back = pickle.loads(pickle.dumps(qt))
        assert np.array_equal(back.dequantize(), qt.dequantize()), f"[{_label(cfg)}] a pickled QTensor dequantizes differently"


def check_file_round_trip(obj):
    """Save with ``qcore.quantize_model(...).save(path)``, load with ``qcore.load_quantized``: the same codes,
    parameters and values."""
    import qcore

    spec = Spec(obj)
    x = _data(10)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (cfg, q) in enumerate(spec.instances()):
            opts = {k: v for k, v in cfg.items()}
            qm = qcore.quantize_model({"layer.weight": x}, scheme=spec.cls.name, progress=False, **opts)
            path = os.path.join(tmp, f"m{i}.safetensors")
            qm.save(path)
            back = qcore.load_quantized(path)
            a, b = qm.dequantize()["layer.weight"], back.dequantize()["layer.weight"]
            assert a.shape == x.shape, f"[{_label(cfg)}] quantize_model changed the shape to {a.shape}"
            assert np.array_equal(a, b), f"[{_label(cfg)}] values differ after save/load_quantized"
            assert np.array_equal(a, q.quantize(x).dequantize()), f"[{_label(cfg)}] quantize_model disagrees with quantize"


def check_calibration(obj):
    """``observe`` on batches then ``quantize``: valid codes, even for values outside the calibrated range;
    a scheme that cannot calibrate says so with a clear error."""
    spec = Spec(obj)
    batches = [_data(20 + i) for i in range(3)]
    for cfg, q in spec.instances():
        try:
            for b in batches:
                q.observe(b)
        except (NotImplementedError, QcoreError, TypeError) as exc:
            if not str(exc):
                raise AssertionError(f"[{_label(cfg)}] observe raised {type(exc).__name__} without a message") from None
            continue
        x = _data(30) * 3  # values beyond the calibrated range clamp
        qt = q.quantize(x)
        assert qt.codes.shape == x.shape
        cmin, cmax = int(qt.codes.min()), int(qt.codes.max())
        assert q.qmin <= cmin and cmax <= q.qmax, f"[{_label(cfg)}] calibrated codes span [{cmin}, {cmax}], outside [{q.qmin}, {q.qmax}]"
        assert np.isfinite(qt.dequantize()).all(), f"[{_label(cfg)}] calibrated dequantize gave NaN/Inf"


def check_decode_form(obj):
    """A declared decode form (``decodes_as(params)``: ``Affine``/``Table``, docs/contracts.md §2) fits the
    tensor's layout and reproduces ``decode`` bit for bit, on the whole tensor and on blocks of rows; ``None``
    (no form) is always allowed.  ``qt.layout`` names the granularity without knowing the scheme."""
    from ..quantization import forms

    spec = Spec(obj)
    x = _data(11, shape=(16, 64))
    x.reshape(-1)[5] = 0.0
    for cfg, q in spec.instances():
        tag = f"[{_label(cfg)}]"
        qt = q.quantize(x)
        layout = qt.layout
        assert isinstance(layout, forms.Layout), f"{tag} layout_of() returned {type(layout).__name__}, expected a Layout"
        assert tuple(layout.param_shape(qt.shape)) == tuple(q.param_shape(x)), \
            f"{tag} layout {layout} gives param_shape {layout.param_shape(qt.shape)}, the scheme {q.param_shape(x)}"
        form = q.decodes_as(qt.params)
        if form is None:
            continue
        forms.check_form(form, layout, qt.shape, qt.bits, f"{tag} decodes_as")
        want = qt.dequantize()
        got = forms.decode(form, qt.codes, layout, qt.bits)
        if not np.array_equal(got, want):
            bad = int(np.count_nonzero(got != want))
            raise AssertionError(f"{tag} decodes_as returned {form!r}, which decodes {bad} of {want.size} values "
                                 f"differently from decode() (max difference {float(np.max(np.abs(got - want))):.3g})")
        rows = qt.decode_rows(8, 16)
        assert np.array_equal(rows, want[8:16]), f"{tag} QTensor.decode_rows(8, 16) differs from the whole decode"


def check_linear_rule(obj):
    """A scheme that declares ``linear_rule = True`` fits and encodes exactly as the built-in ``linear`` scheme:
    the torch adapter's fake quantization on torch ops (qcore/integrations/torch/_fakequant.py) gives its
    ``quantize(x).dequantize()`` bit for bit.  Chosen only for schemes that declare the flag; skipped without torch."""
    spec = Spec(obj)
    if not getattr(spec.cls, "linear_rule", False):
        raise SkipCheck("the scheme does not declare linear_rule")
    try:
        import torch

        from ..integrations.torch import _fakequant as fq
    except ImportError:
        raise SkipCheck("torch is not installed") from None
    x = _data(12)
    for cfg, q in spec.instances():
        if not fq.torch_supported(q):
            continue
        want = q.quantize(x).dequantize()
        got = fq.linear_fake_quant_values(torch.from_numpy(x.copy()), **fq.options_of(q)).numpy()
        assert np.array_equal(got, want), f"[{_label(cfg)}] the linear rule on torch ops differs from quantize().dequantize()"


def check_thread_safety(obj):
    """One instance used from several threads at once gives the results of one thread."""
    spec = Spec(obj)
    q = spec.make()
    xs = [_data(40 + i) for i in range(8)]
    serial = [(qt.codes.copy(), qt.dequantize()) for qt in (q.quantize(x) for x in xs)]
    results: list = [None] * len(xs)
    errors: list = []
    barrier = threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            for rep in range(3):
                for i in range(t, len(xs), 4):
                    qt = q.quantize(xs[i])
                    results[i] = (qt.codes.copy(), qt.dequantize())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"quantize raised in a thread: {type(errors[0]).__name__}: {errors[0]}")
    for i, ((c1, d1), (c2, d2)) in enumerate(zip(serial, results)):
        assert np.array_equal(c1, c2) and np.array_equal(d1, d2), f"tensor {i}: threaded results differ from serial ones"


QUANTIZER_CHECKS = [
    check_class_contract,
    check_default_construction,
    check_options_validated,
    check_round_trip,
    check_error_decreases_with_bits,
    check_codes_in_range,
    check_qtensor_fields,
    check_deterministic,
    check_input_unchanged,
    check_input_forms,
    check_non_finite_rejected,
    check_empty_input,
    check_zero_dim_input,
    check_constant_input,
    check_packing_round_trip,
    check_rebuild_from_options,
    check_file_round_trip,
    check_calibration,
    check_decode_form,
    check_linear_rule,
    check_thread_safety,
]


def quantizer_checks(obj=None) -> list[Check]:
    """The checks that apply to ``obj``, chosen by what its class declares (scikit-learn's tag-driven checks):
    ``check_linear_rule`` only for schemes that declare ``linear_rule``."""
    cls = obj if isinstance(obj, type) else type(obj)
    declared = bool(getattr(cls, "linear_rule", False)) if obj is not None else True
    return [Check(f.__name__, f, "scheme") for f in QUANTIZER_CHECKS if declared or f is not check_linear_rule]
