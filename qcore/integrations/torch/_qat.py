"""Quantization-aware training: activation fake quantization and the QAT Linear/Conv2d modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from typing import Any

import numpy as np

import qcore
from qcore.quantization.forms import Affine
from qcore.tensor import QTensor

from .._common import activation_options, bits_alias, plain
from . import _fakequant as fq
from ._tensors import _FakeQuantFn, _qtensor_of


def _default_act_observer() -> str:
    return "moving_average" if "moving_average" in qcore.list_observers() else "minmax"


#: observers ActivationFakeQuant runs on torch ops (others go through numpy)
_TORCH_OBSERVERS = ("minmax", "moving_average")


class ActivationFakeQuant(nn.Module):
    """Fake quantization of activations by a qcore scheme, its range calibrated by a qcore observer.

    In training mode (and in eval mode until it has seen data) every batch is fed to the observer and the
    parameters are refitted from the observer's range; in eval mode the last parameters are used as they are.
    Backward is straight-through.  Defaults: ``linear`` with the scheme's activation defaults (8-bit affine per
    tensor), observer ``moving_average`` when installed (else ``minmax``).  ``activation_bits`` (``bits``, the
    same): None takes the scheme's default.

    ``linear`` per tensor with ``minmax`` or ``moving_average`` (and 3 bits or more when symmetric) runs on torch
    ops on the input's device: the running range is kept as tensors, exactly as those observers keep it, and
    the parameters follow the scheme's formulas (``_fakequant``).  Other schemes, observers and layouts go
    through numpy (``uses_torch_ops`` says which).  :meth:`qparams` gives the calibrated ``(scale, zero_point)``.
    """

    def __init__(self, scheme: str = "linear", bits: int | None = None, observer: str | None = None, *,
                 activation_bits: int | None = None, **options):
        super().__init__()
        self.scheme = scheme
        bits = bits_alias(bits, activation_bits, "bits", "activation_bits", warn=False)
        opts = activation_options(scheme, bits, options)  # the scheme's activation defaults under the caller's
        self.observer = observer or _default_act_observer()
        self.quantizer = qcore.get_quantizer(scheme, observer=self.observer, **opts)
        self.bits = int(self.quantizer.bits)
        self.options = {k: v for k, v in opts.items() if k != "bits"}
        self.params: dict[str, np.ndarray] | None = None
        self._reset_torch_state()

    @property
    def params(self) -> dict[str, np.ndarray] | None:
        """The scheme's parameters in use (numpy arrays, as ``quantizer.fit`` returns them), or None."""
        if self.uses_torch_ops and self._scale is not None:
            return {"scale": np.array([float(self._scale)], np.float32),
                    "zero_point": np.array([int(self._zp)], np.int32)}
        return self._params

    @params.setter
    def params(self, value) -> None:
        self._params = value

    # -- torch path ---------------------------------------------------------------------------------------
    @property
    def uses_torch_ops(self) -> bool:
        """True when forward runs on torch ops (no numpy): linear, per tensor, minmax/moving_average."""
        q = self.quantizer
        if not q.linear_rule or self.observer not in _TORCH_OBSERVERS:
            return False
        if q.config.get("granularity", "tensor") != "tensor" or (q.signed and self.bits <= 2):
            return False
        return fq.linear_options_supported(q)

    @property
    def symmetric(self) -> bool:
        return bool(self.quantizer.config.get("symmetric", False))

    def _reset_torch_state(self):
        self._lo = self._hi = None  # running range (float64 tensors, float32 on MPS), as the observer keeps it
        self._scale = self._zp = None  # float32 scalars: the parameters in use
        self._avg_c = None

    @property
    def calibrated(self) -> bool:
        """True once the quantizer has parameters (it has seen a batch, or they were loaded)."""
        return self._scale is not None if self.uses_torch_ops else self.params is not None

    def _observe_torch(self, x: torch.Tensor) -> None:
        xd = x.detach()
        wide = torch.float64 if fq._float64_ok(xd.device) else torch.float32
        blo = xd.amin().to(torch.float32).to(wide)
        bhi = xd.amax().to(torch.float32).to(wide)
        if self._lo is None:
            self._lo, self._hi = blo, bhi
        elif self.observer == "minmax":
            self._lo = torch.minimum(self._lo.to(blo.device), blo)
            self._hi = torch.maximum(self._hi.to(bhi.device), bhi)
        else:  # moving_average: min += c * (batch_min - min), as MovingAverageObserver
            c = self._averaging_constant()
            lo, hi = self._lo.to(blo.device), self._hi.to(bhi.device)
            self._lo, self._hi = lo + c * (blo - lo), hi + c * (bhi - hi)
        self._scale, self._zp = fq.affine_params(self._lo.to(torch.float32), self._hi.to(torch.float32),
                                                 self.bits, self.symmetric)

    def _averaging_constant(self) -> float:
        if getattr(self, "_avg_c", None) is None:  # the observer's default (ActivationFakeQuant sets no options)
            self._avg_c = float(qcore.get_observer(self.observer).config["averaging_constant"])
        return self._avg_c

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self._scale is None:
            with torch.no_grad():
                self._observe_torch(x)
        scale, zp = self._scale.to(x.device), self._zp.to(x.device)
        qmin, qmax = self.quant_range()
        with torch.no_grad():
            y = fq.dequantize_codes(fq.quantize_codes(x.detach().to(torch.float32), scale, zp, qmin, qmax), scale, zp)
        return fq.straight_through(x, y.to(x.dtype))

    def quant_range(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the codes: ``(0, 2^bits - 1)`` affine, ``(-(2^(bits-1) - 1), 2^(bits-1) - 1)``
        symmetric (narrow range)."""
        return int(self.quantizer.qmin), int(self.quantizer.qmax)

    def qparams(self) -> tuple[float, int]:
        """The calibrated per-tensor ``(scale, zero_point)``: codes are ``clamp(rint(x * float32(1/scale)) +
        zero_point, *quant_range())`` and values ``(q - zero_point) * scale``.  Raises if not calibrated yet or
        if the quantizer has more than one parameter set."""
        if self.uses_torch_ops:
            if self._scale is None:
                raise qcore.QcoreError("ActivationFakeQuant has not seen data yet: run calibration batches first")
            return float(self._scale), int(self._zp)
        if self.params is None:
            raise qcore.QcoreError("ActivationFakeQuant has not seen data yet: run calibration batches first")
        form = self.quantizer.decodes_as(self.params)
        if not isinstance(form, Affine) or form.offset is not None or form.scale.size != 1:
            raise ValueError("qparams(): only a quantizer whose codes decode affinely per tensor "
                             "((q - zero_point) * scale) has a single (scale, zero_point)")
        return float(form.scale.reshape(-1)[0]), int(form.zero_points().reshape(-1)[0])

    # -- numpy path ---------------------------------------------------------------------------------------
    def _fake_quant(self, a: np.ndarray) -> np.ndarray:
        q = self.quantizer
        if self.training or self.params is None:
            q.observe(a)
            self.params = {k: np.asarray(v) for k, v in q.fit(a).items()}
        return np.asarray(q.decode(q.encode(a, self.params), self.params), np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_torch_ops:
            return self._forward_torch(x)
        return _FakeQuantFn.apply(x, self._fake_quant)

    def get_extra_state(self):
        params = None if self._params is None else {k: torch.from_numpy(np.array(v)) for k, v in self._params.items()}
        torch_state = None
        if self._scale is not None:
            torch_state = {k: getattr(self, "_" + k).detach().cpu() for k in ("lo", "hi", "scale", "zp")}
        return {"scheme": self.scheme, "bits": self.bits, "observer": self.observer, "options": plain(self.options),
                "params": params, "torch": torch_state}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "scheme" not in state:
            raise ValueError("ActivationFakeQuant: extra state must be the dict written by get_extra_state()")
        self.scheme, self.bits, self.observer = state["scheme"], int(state["bits"]), state["observer"]
        self.options = dict(state.get("options") or {})
        self.quantizer = qcore.get_quantizer(self.scheme, bits=self.bits, observer=self.observer, **self.options)
        p = state.get("params")
        self.params = None if p is None else {k: v.detach().cpu().numpy().copy() for k, v in p.items()}
        self._reset_torch_state()
        t = state.get("torch")
        if t is not None:
            self._lo, self._hi, self._scale, self._zp = (t[k].clone() for k in ("lo", "hi", "scale", "zp"))

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the running range and parameters too
        out = super()._apply(fn, *args, **kwargs)
        for k in ("_lo", "_hi", "_scale", "_zp"):
            v = getattr(self, k)
            if v is not None:
                moved = fn(v)
                setattr(self, k, moved.to(v.dtype) if moved.dtype != v.dtype and v.is_floating_point() else moved)
        return out

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, bits={self.bits}, observer={self.observer!r}"


def _activation_spec(activations) -> dict[str, Any] | None:
    if activations is None or activations is False:
        return None
    if activations is True:
        return {}
    if isinstance(activations, dict):
        return dict(activations)
    raise TypeError(f"activations must be False, True or a dict of ActivationFakeQuant options, got {activations!r}")


class _QATMixin:
    """Shared by QATLinear and QATConv2d: the weight quantizer, a cached fake-quantized weight."""

    def _init_qat(self, scheme: str, options: dict[str, Any], activations: dict[str, Any] | None) -> None:
        self.scheme = scheme
        self.weight_options = dict(options)  # includes bits
        self.weight_quantizer = qcore.get_quantizer(scheme, **self.weight_options)
        self.input_quantizer = ActivationFakeQuant(**activations) if activations is not None else None
        self._fq_key = None
        self._fq_value = None

    @property
    def uses_torch_ops(self) -> bool:
        """True when the weight is fake-quantized on torch ops (linear scheme, minmax range): no numpy, any
        device; other schemes round-trip through numpy."""
        return fq.torch_supported(self.weight_quantizer)

    def _fake_quant_torch(self, w: torch.Tensor) -> torch.Tensor:
        return fq.linear_fake_quant(w, **fq.options_of(self.weight_quantizer))

    def _fake_quant_numpy(self, w: np.ndarray) -> np.ndarray:
        return self.weight_quantizer.quantize(w).dequantize()

    def fake_quant_weight(self) -> torch.Tensor:
        """``decode(encode(weight))`` by the scheme, with a straight-through gradient to ``weight``."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
        on_torch = self.uses_torch_ops
        if not torch.is_grad_enabled() or not w.requires_grad:
            if self._fq_key != key:  # eval: reuse while the weight is unchanged
                with torch.inference_mode(False):  # not an inference tensor: reusable with autograd on
                    wd = w.detach()
                    self._fq_value = (self._fake_quant_torch(wd) if on_torch
                                      else _FakeQuantFn.apply(wd, self._fake_quant_numpy))
                self._fq_key = key
            return self._fq_value
        if on_torch:
            return self._fake_quant_torch(w)
        return _FakeQuantFn.apply(w, self._fake_quant_numpy)

    def quantized_weight(self) -> QTensor:
        """The weight quantized now, as a QTensor (what :func:`convert` stores)."""
        return _qtensor_of(self.weight, self.weight_quantizer)

    def _qat_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.weight_options.items())
        return f"scheme={self.scheme!r}, {opts}"


class QATLinear(_QATMixin, nn.Linear):
    """``nn.Linear`` whose forward uses the fake-quantized weight (and optionally fake-quantized input)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scheme: str = "linear",
                 weight_options: dict[str, Any] | None = None, activations: dict[str, Any] | None = None,
                 device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_qat(scheme, weight_options or {"bits": 8}, activations)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str, weight_options: dict[str, Any], activations=None):
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme=scheme,
                  weight_options=weight_options, activations=activations, device="meta")
        new.weight = linear.weight  # the same Parameter objects: an optimizer built on them keeps working
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.fake_quant_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._qat_repr()}"


class QATConv2d(_QATMixin, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the fake-quantized weight (and optionally fake-quantized input)."""

    def __init__(self, *args, scheme: str = "linear", weight_options: dict[str, Any] | None = None,
                 activations: dict[str, Any] | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_qat(scheme, weight_options or {"bits": 8}, activations)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, scheme: str, weight_options: dict[str, Any], activations=None):
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, scheme=scheme, weight_options=weight_options,
                  activations=activations, device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self._conv_forward(x, self.fake_quant_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self._qat_repr()}"
