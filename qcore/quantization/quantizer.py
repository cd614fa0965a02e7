"""The :class:`Quantizer` interface: what a scheme plugin subclasses.

A scheme implements three methods on float32 arrays of the tensor's own shape::

    fit(x) -> params            # dict of arrays, from x or from the calibrated observer
    encode(x, params) -> codes  # integer codes, same shape as x
    decode(codes, params) -> x  # float32 values

The base class does the rest: option validation, the ``granularity``/``axis``/``group_size`` layout,
calibration through an observer, input checks, building the :class:`qcore.QTensor`, packing.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import resolve
from ..kernels.base import Kernel, code_dtype
from ..tensor import QTensor
from ..validation import as_float32, check_int, normalize_axis
from .defaults import option_defaults
from .forms import GRANULARITIES, Form, Layout, Table



class Quantizer:
    """Base class of quantization schemes.

    Class attributes a subclass sets:

    * ``name`` — unique scheme name (the plugin name users type and files record);
    * ``signed`` — codes in ``[-2^(bits-1), 2^(bits-1)-1]`` if True, ``[0, 2^bits-1]`` if False (may be
      overridden per instance in ``__init__``, e.g. by a ``symmetric`` option);
    * ``bits_range`` — ``(lowest, highest)`` supported bit width, within 1..8;
    * ``options`` — ``{option: default}`` of the scheme's own options.  Declaring ``granularity`` (with
      ``axis`` and ``group_size``) opts into the standard per-tensor / per-channel / per-group layout;
    * ``granularities`` — which of ``"tensor"``, ``"channel"``, ``"group"`` the scheme supports;
    * ``default_observer`` — the observer used when none is named;
    * ``default_bits`` — ``bits`` when none is given (8; clipped into ``bits_range``);
    * ``role_defaults`` — ``{"weight": {...}, "activation": {...}}``: option defaults for a model's weights or
      activations, used by entry points that know the role (the framework adapters, ``qcore quantize``; see
      qcore/quantization/defaults.py and the table in docs/usage.md); :meth:`defaults` lists them.
    """

    name: ClassVar[str] = ""
    signed: bool = True
    bits_range: ClassVar[tuple[int, int]] = (1, 8)
    options: ClassVar[dict[str, Any]] = {}
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES
    default_observer: ClassVar[str] = "minmax"
    default_bits: ClassVar[int] = 8
    role_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True when fit() and encode() follow the built-in ``linear`` scheme's rule exactly with the options
    #: ``symmetric``/``granularity``/``axis``/``group_size`` (docs/schemes.md; a renamed copy of it, for instance):
    #: the torch adapter then fake-quantizes on torch ops, on any device, instead of through numpy.
    #: ``qcore.testing.check_quantizer`` checks the claim (when torch is installed).
    linear_rule: ClassVar[bool] = False
    #: True when fit()/encode() themselves reject NaN/Inf and produce in-range codes of the right dtype,
    #: so the base class can skip its own extra pass over the data (built-in schemes).
    self_checking: ClassVar[bool] = False

    def __init__(self, bits: int | None = None, observer: str | None = None, kernel=None, **options):
        lo, hi = self.bits_range
        if bits is None:  # the scheme's default, or the nearest width it supports
            bits = min(max(self.default_bits, lo), hi)
        self.bits = check_int(bits, "bits", lo, hi)
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(
                f"scheme {self.name!r} got unknown option(s) {', '.join(sorted(unknown))}; "
                f"its options are bits, observer, kernel and: {known}"
            )
        self.config: dict[str, Any] = {**self.options, **options}
        if "granularity" in self.config:
            self._check_layout_options()
        # qcore.get_quantizer passes a Kernel instance; a name or None is looked up (see qcore/resolve.py)
        self.kernel = kernel if isinstance(kernel, Kernel) else resolve.kernel(kernel)
        self.observer_name = observer if observer is not None else self.default_observer
        self._observer_cls = resolve.observer_class(self.observer_name)  # fails early on an unknown name
        self.observer = None  # created by the first observe()

    @classmethod
    def defaults(cls, role: str | None = None) -> dict[str, Any]:
        """Every option's default for ``role`` (``"weight"``, ``"activation"`` or None: a plain tensor), ``bits``
        included: the one default per option, owned by the scheme."""
        return option_defaults(cls, role)

    # -- options and layout -------------------------------------------------------------------------
    def _check_layout_options(self) -> None:
        g = self.config["granularity"]
        if g not in self.granularities:
            raise ValueError(f"granularity must be one of {', '.join(map(repr, self.granularities))}, got {g!r}")
        if "axis" in self.config:
            a = self.config["axis"]
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
                raise TypeError(f"axis must be an integer, got {a!r}")
        if "group_size" in self.config:
            self.config["group_size"] = check_int(self.config["group_size"], "group_size", 1, 2**31 - 1)

    @property
    def granularity(self) -> str:
        return self.config.get("granularity", "tensor")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def layout(self, x: np.ndarray) -> tuple[np.ndarray, int | None]:
        """``(view, axis)``: the view of ``x`` whose ``axis`` indexes one parameter set each.

        tensor → ``(x, None)``; channel → ``(x, axis)``; group → ``(x.reshape(-1, group_size), 0)``: blocks
        of ``group_size`` consecutive elements along the last axis, for every index of the other axes.
        """
        g = self.granularity
        if g == "tensor":
            return x, None
        if g == "channel":
            return x, normalize_axis(self.config.get("axis", 0), x.ndim)
        gs = self.config["group_size"]
        if x.ndim == 0:
            raise ValueError("granularity='group' needs an array of at least one dimension")
        if x.shape[-1] % gs:
            raise ValueError(f"group_size={gs} does not divide the last axis of length {x.shape[-1]} (shape {x.shape})")
        return x.reshape(-1, gs), 0

    def param_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Shape of per-channel/per-group parameter arrays for input ``x``."""
        g = self.granularity
        if g == "tensor":
            return (1,)
        if g == "channel":
            return (x.shape[normalize_axis(self.config.get("axis", 0), x.ndim)],)
        if x.ndim == 0:
            raise ValueError("granularity='group' needs an array of at least one dimension")
        gs = self.config["group_size"]
        return tuple(x.shape[:-1]) + (x.shape[-1] // gs,)

    # -- calibration --------------------------------------------------------------------------------
    def _make_observer(self, axis: int | None):
        return self._observer_cls(axis=axis, kernel=self.kernel)

    def observe(self, batch) -> "Quantizer":
        """Feed a calibration batch to the observer (any number of times; memory stays bounded)."""
        x = as_float32(batch, "batch", check_finite=False)  # the observer checks NaN/Inf (Observer.update)
        view, axis = self.layout(x)
        if self.observer is None:
            self.observer = self._make_observer(axis)
        self.observer.update(view)
        return self

    @property
    def calibrated(self) -> bool:
        return self.observer is not None and self.observer.observed

    def observed_range(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` per parameter set: from the calibrated observer if ``observe`` was called, else from ``x``."""
        symmetric = bool(self.config.get("symmetric", self.signed))
        if self.calibrated:
            return self.observer.range(self.bits, symmetric)
        view, axis = self.layout(x)
        obs = self._make_observer(axis)  # a fresh one: fitting weights must not disturb calibration state
        obs.update(view)
        return obs.range(self.bits, symmetric)

    # -- the scheme contract --------------------------------------------------------------------------
    def fit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode(self, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def decode(self, codes: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def lookup_table(self, params: dict[str, np.ndarray]) -> np.ndarray | None:
        """Optional (the stage-2 spelling of ``decodes_as(params) -> Table``): the decode as a table.

        Return float32 of shape ``param_shape + (2**bits,)`` such that ``decode(codes)`` equals
        ``table[<param index of the element>, code & (2**bits - 1)]`` (the code's bit pattern, two's complement
        for signed codes).  ``None`` (the default): the scheme is not table-decodable.  See docs/plugins.md.
        """
        return None

    def decodes_as(self, params: dict[str, np.ndarray]) -> Form | None:
        """What this scheme's codes decode as, for code that computes on codes without decoding them
        (``qcore.ops.qlinear``, the torch modules, model writers; docs/contracts.md §2):

        * :class:`~qcore.quantization.forms.Affine` ``(scale, zero_point=None, offset=None)``:
          ``x = float32(q - zero_point) * scale (+ offset)``;
        * :class:`~qcore.quantization.forms.Table` ``(table)``: ``x = table[<param index>, q & (2**bits - 1)]``;
        * ``None``: only :meth:`decode` knows (every path still works, through ``decode``, more slowly).

        Arrays are laid out by :meth:`layout_of` (``param_shape``).  A declared form must reproduce
        :meth:`decode` bit for bit (``qcore.testing.check_quantizer`` checks it).  The default wraps
        :meth:`lookup_table` (``Table``) or returns None.
        """
        table = self.lookup_table(params)
        return None if table is None else Table(table)

    def layout_of(self, qt) -> Layout:
        """The :class:`~qcore.quantization.forms.Layout` (granularity, axis, group size) of a QTensor of this
        scheme, read from its stored options: which parameter set each element uses."""
        if "granularity" not in self.config:
            return Layout()
        return Layout.from_options({**self.config, **(qt.options or {})}, qt.shape)

    # -- the public entry --------------------------------------------------------------------------------
    def quantize(self, x) -> QTensor:
        """Quantize ``x`` (array-like) into a :class:`QTensor`.

        Uses the calibrated range if :meth:`observe` was called, else fits on ``x`` itself (weights).
        """
        orig_dtype = getattr(np.asarray(x) if not isinstance(x, np.ndarray) else x, "dtype", np.dtype(np.float32))
        x = as_float32(x, check_finite=not self.self_checking)
        params = {k: np.asarray(v) for k, v in self.fit(x).items()}
        codes = np.asarray(self.encode(x, params))
        codes = self._checked_codes(codes, x.shape)
        return QTensor(codes, self.name, self.bits, params, self.export_options(), signed=self.signed,
                       dtype=str(orig_dtype), quantizer=self)

    def _checked_codes(self, codes: np.ndarray, shape) -> np.ndarray:
        if codes.shape != tuple(shape):
            raise RuntimeError(f"scheme {self.name!r}: encode returned shape {codes.shape}, expected {tuple(shape)}")
        want = code_dtype(self.signed)
        if self.self_checking and codes.dtype == want:
            return codes
        if codes.dtype.kind not in "iu":
            raise RuntimeError(f"scheme {self.name!r}: encode returned {codes.dtype}, expected integer codes")
        if codes.size and (int(codes.min()) < self.qmin or int(codes.max()) > self.qmax):
            raise RuntimeError(f"scheme {self.name!r}: codes outside [{self.qmin}, {self.qmax}] for {self.bits} bits")
        return codes.astype(want)

    def dequantize(self, qt: QTensor) -> np.ndarray:
        return qt.dequantize()

    def export_options(self) -> dict[str, Any]:
        """Options stored in the QTensor (and files) to rebuild a quantizer that decodes it."""
        return {"bits": self.bits, **self.config}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.export_options().items())
        return f"<qcore quantizer {self.name!r} {opts}>"


__all__ = ["Quantizer", "GRANULARITIES"]
