"""Quantization-aware training: activation fake quantization and the QAT Linear/Conv2d modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from typing import Any

import numpy as np

import qcore
from qcore.tensor import QTensor

from .._common import plain
from ._tensors import _FakeQuantFn, _qtensor_of


def _default_act_observer() -> str:
    return "moving_average" if "moving_average" in qcore.list_observers() else "minmax"


class ActivationFakeQuant(nn.Module):
    """Fake quantization of activations by a qcore scheme, its range calibrated by a qcore observer.

    In training mode (and in eval mode until it has seen data) every batch is fed to the observer and the
    parameters are refitted from the observer's range; in eval mode the last parameters are used as they are.
    Backward is straight-through.  Defaults: ``linear`` 8-bit affine per tensor, observer ``moving_average``
    when installed (else ``minmax``).
    """

    def __init__(self, scheme: str = "linear", bits: int = 8, observer: str | None = None, **options):
        super().__init__()
        self.scheme = scheme
        self.bits = int(bits)
        self.observer = observer or _default_act_observer()
        self.options = dict(options)
        self.quantizer = qcore.get_quantizer(scheme, bits=self.bits, observer=self.observer, **self.options)
        self.params: dict[str, np.ndarray] | None = None

    def _fake_quant(self, a: np.ndarray) -> np.ndarray:
        q = self.quantizer
        if self.training or self.params is None:
            q.observe(a)
            self.params = {k: np.asarray(v) for k, v in q.fit(a).items()}
        return np.asarray(q.decode(q.encode(a, self.params), self.params), np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuantFn.apply(x, self._fake_quant)

    def get_extra_state(self):
        params = None if self.params is None else {k: torch.from_numpy(np.array(v)) for k, v in self.params.items()}
        return {"scheme": self.scheme, "bits": self.bits, "observer": self.observer, "options": plain(self.options),
                "params": params}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "scheme" not in state:
            raise ValueError("ActivationFakeQuant: extra state must be the dict written by get_extra_state()")
        self.scheme, self.bits, self.observer = state["scheme"], int(state["bits"]), state["observer"]
        self.options = dict(state.get("options") or {})
        self.quantizer = qcore.get_quantizer(self.scheme, bits=self.bits, observer=self.observer, **self.options)
        p = state.get("params")
        self.params = None if p is None else {k: v.detach().cpu().numpy().copy() for k, v in p.items()}

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

    def _fake_quant_numpy(self, w: np.ndarray) -> np.ndarray:
        return self.weight_quantizer.quantize(w).dequantize()

    def fake_quant_weight(self) -> torch.Tensor:
        """``decode(encode(weight))`` by the scheme, with a straight-through gradient to ``weight``."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype, tuple(w.shape))
        if not torch.is_grad_enabled() or not w.requires_grad:
            if self._fq_key != key:  # eval: reuse while the weight is unchanged
                with torch.inference_mode(False):  # not an inference tensor: reusable with autograd on
                    self._fq_value = _FakeQuantFn.apply(w.detach(), self._fake_quant_numpy)
                self._fq_key = key
            return self._fq_value
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
