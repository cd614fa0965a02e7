"""PyTorch integration: post-training quantization on qcore's int8 kernels, and quantization-aware training.

::

    from qcore.integrations import torch as qtorch

    qmodel = qtorch.quantize_dynamic(model)                  # a copy: every nn.Linear -> qtorch.QLinear (int8)
    qat = qtorch.prepare_qat(model, bits=4)                  # a copy with fake-quantized Linear/Conv2d weights
    ...train qat with any optimizer...
    qmodel = qtorch.convert(qat)                             # QLinear / QConv2d holding QTensor weights

Weights are quantized by any installed qcore scheme (``scheme=``, ``bits=``, scheme options as keywords).  Unless
told otherwise the adapter quantizes weights per output channel (``granularity="channel"``, ``axis=0``) and, for
schemes with the option, symmetrically (``symmetric=True``) — the main case of ``qcore.ops.qlinear``.

``QLinear`` with an 8-bit ``linear`` weight runs ``qcore.ops.qlinear`` (dynamic int8 activations, int8 GEMM) on
the input tensor's own memory: contiguous CPU float32 input is viewed through ``Tensor.numpy()``, never copied.
Other schemes and bit widths are weight-only: the dequantized weight (computed once, cached) and ``F.linear``.

Importing this module without PyTorch raises an ``ImportError`` saying how to install it.
"""
from __future__ import annotations

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised by simulating a missing torch
    raise ImportError(
        "qcore.integrations.torch needs PyTorch, which is not installed. Install it with "
        'pip install "qcore[torch]"  (or directly: pip install torch==2.13.0)'
    ) from exc

import copy
import warnings
from typing import Any, Callable, Iterable

import numpy as np

import qcore
from qcore.tensor import QTensor

from ._common import name_selected, plain, weight_options

__all__ = [
    "quantize_dynamic", "prepare_qat", "convert",
    "QLinear", "QConv2d", "QATLinear", "QATConv2d", "ActivationFakeQuant", "fake_quantize",
]


# ------------------------------------------------------------------------------------------------------------
# tensors <-> numpy
# ------------------------------------------------------------------------------------------------------------
def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float32 C-contiguous numpy array; a view (no copy) when ``t`` already is CPU float32 contiguous."""
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        t = t.to(device="cpu", dtype=torch.float32).contiguous()
    return t.resolve_conj().resolve_neg().numpy()


def _to_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if out.device != like.device or out.dtype != like.dtype:
        out = out.to(device=like.device, dtype=like.dtype)
    return out


def _qtensor_of(weight: torch.Tensor, quantizer) -> QTensor:
    return quantizer.quantize(_numpy_view(weight))


class _FakeQuantFn(torch.autograd.Function):
    """Forward: ``fn`` (a numpy -> numpy fake quantization) on the values; backward: straight-through (identity)."""

    @staticmethod
    def forward(ctx, x, fn):
        return _to_torch(fn(_numpy_view(x)).reshape(tuple(x.shape)), x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(x: torch.Tensor, scheme: str = "linear", bits: int = 8, **options) -> torch.Tensor:
    """``decode(encode(x))`` by the qcore scheme, as a tensor with a straight-through gradient.

    Options are passed to the scheme as given (no adapter defaults).
    """
    q = qcore.get_quantizer(scheme, bits=bits, **options)
    return _FakeQuantFn.apply(x, lambda a: q.quantize(a).dequantize())


# ------------------------------------------------------------------------------------------------------------
# activation fake quantization (QAT option), calibrated by a qcore observer
# ------------------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------------------
# quantized modules: weight held as a QTensor
# ------------------------------------------------------------------------------------------------------------
class _QWeightModule(nn.Module):
    """A module whose weight is a :class:`qcore.QTensor` and whose bias is float32.

    ``state_dict`` holds ``weight.codes`` (int8/uint8), one ``weight.<param>`` tensor per quantization parameter
    (``scale``, ``zero_point``, ``codebook`` ...), ``bias`` and ``_extra_state`` (scheme, bits, options) — enough
    to rebuild the QTensor exactly; ``load_state_dict`` restores it (and may change scheme or bits).
    """

    def __init__(self, weight: QTensor, bias: torch.Tensor | None, input_quantizer: ActivationFakeQuant | None = None):
        super().__init__()
        if not isinstance(weight, QTensor):
            raise TypeError(f"weight must be a qcore.QTensor, got {type(weight).__name__}")
        self._set_weight(weight)
        if bias is not None:
            bias = bias.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
            if bias.shape != (weight.shape[0],):
                raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        self.register_buffer("bias", bias)
        self.input_quantizer = input_quantizer

    # -- weight --------------------------------------------------------------------------------------------
    @property
    def weight(self) -> QTensor:
        """The quantized weight.  Assigning a new QTensor (same shape) clears the cached dequantized weight."""
        return self._qweight

    @weight.setter
    def weight(self, qt: QTensor) -> None:
        if not isinstance(qt, QTensor):
            raise TypeError(f"weight must be a qcore.QTensor, got {type(qt).__name__}")
        old = self.__dict__.get("_qweight")
        if old is not None and tuple(qt.shape) != tuple(old.shape):
            raise ValueError(f"weight must keep the shape {tuple(old.shape)}, got {tuple(qt.shape)}")
        self._set_weight(qt)

    def _set_weight(self, qt: QTensor) -> None:
        self.__dict__["_qweight"] = qt
        self.__dict__["_dequant_cache"] = {}

    def dequantized_weight(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The dequantized weight as a tensor (cached per device and dtype)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (str(device), dtype)
        w = self._dequant_cache.get(key)
        if w is None:
            with torch.inference_mode(False):  # a normal tensor: usable later in autograd-tracked calls
                w = torch.from_numpy(np.ascontiguousarray(self.weight.dequantize())).to(device=device, dtype=dtype)
            self._dequant_cache[key] = w
        return w

    def _weight_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.weight.options.items() if k not in ("bits", "axis", "group_size")
                       or (k == "axis" and self.weight.options.get("granularity") == "channel")
                       or (k == "group_size" and self.weight.options.get("granularity") == "group"))
        return f"scheme={self.weight.scheme!r}, bits={self.weight.bits}{opts}"

    # -- state dict ----------------------------------------------------------------------------------------
    def get_extra_state(self):
        qt = self.weight
        return {"scheme": qt.scheme, "bits": qt.bits, "options": plain(qt.options), "signed": qt.signed,
                "shape": list(qt.shape), "dtype": qt.dtype}

    def set_extra_state(self, state):  # state is applied in _load_from_state_dict, with the codes
        pass

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        qt = self.weight
        codes = qt.codes
        destination[prefix + "weight.codes"] = torch.from_numpy(codes) if codes.flags.writeable else torch.tensor(codes)
        for k, v in qt.params.items():
            destination[prefix + "weight." + k] = torch.tensor(np.asarray(v))
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        destination[prefix + "_extra_state"] = self.get_extra_state()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        meta = state_dict.get(prefix + "_extra_state")
        if meta is None:
            meta = self.get_extra_state()
        ckey = prefix + "weight.codes"
        used = {prefix + "_extra_state", ckey}
        if ckey not in state_dict:
            missing_keys.append(ckey)
        else:
            codes = state_dict[ckey].detach().cpu().numpy().copy()
            params = {}
            for key, value in state_dict.items():
                if key.startswith(prefix + "weight.") and key != ckey:
                    params[key[len(prefix) + len("weight."):]] = value.detach().cpu().numpy().copy()
                    used.add(key)
            want = tuple(self.weight.shape)
            if codes.shape != want:
                error_msgs.append(f"size mismatch for {ckey}: copying codes of shape {codes.shape}, "
                                  f"the module's weight has shape {want}")
            else:
                try:
                    qt = QTensor(codes, meta["scheme"], int(meta["bits"]), params, dict(meta.get("options") or {}),
                                 signed=bool(meta.get("signed", codes.dtype == np.int8)),
                                 dtype=str(meta.get("dtype", "float32")))
                    qt.dequantize()  # validates the parameters against the scheme now, not at the first forward
                except Exception as exc:  # noqa: BLE001 - reported through load_state_dict's error list
                    error_msgs.append(f"cannot rebuild the quantized weight {prefix}weight: {exc}")
                else:
                    self._set_weight(qt)
        bkey = prefix + "bias"
        if self.bias is not None:
            if bkey in state_dict:
                b = state_dict[bkey]
                if tuple(b.shape) != tuple(self.bias.shape):
                    error_msgs.append(f"size mismatch for {bkey}: copying {tuple(b.shape)}, "
                                      f"the module's bias has shape {tuple(self.bias.shape)}")
                else:
                    with torch.no_grad():
                        self.bias.copy_(b)
                used.add(bkey)
            else:
                missing_keys.append(bkey)
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key not in used:
                    head = key[len(prefix):].split(".", 1)[0]
                    if head not in self._modules:
                        unexpected_keys.append(key)

    def _apply_input_quantizer(self, x):
        return x if self.input_quantizer is None else self.input_quantizer(x)


def _kernel_supported(qt: QTensor) -> bool:
    """Weights ``qcore.ops.qlinear`` runs in integers: the 8-bit linear scheme."""
    return qt.scheme == "linear" and qt.bits == 8


_OPS: list = []  # qcore.ops once imported (looked up by attribute at each call, so it can be patched in tests)


def _ops():
    try:
        from qcore import ops
    except ImportError as exc:
        raise RuntimeError(
            "QLinear with an int8 linear weight runs qcore.ops.qlinear, which this qcore build does not provide "
            f"({exc}); quantize with another scheme or bit width for weight-only quantization"
        ) from exc
    _OPS[:] = [ops]
    return ops


class _QLinearKernelFn(torch.autograd.Function):
    """The int8 forward; backward to the input through the dequantized weight (the weight gets no gradient)."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return module._kernel_forward(x)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.module.dequantized_weight(grad.device, grad.dtype)
        return grad @ w, None


class QLinear(_QWeightModule):
    """Drop-in ``nn.Linear`` with a quantized weight (a :class:`qcore.QTensor` of shape ``(out, in)``).

    8-bit ``linear`` weights: ``qcore.ops.qlinear`` (int8 GEMM, activations quantized dynamically inside); any
    other scheme or bit width: weight-only, ``F.linear`` with the dequantized weight.  Any leading batch shape,
    ``torch.inference_mode``/``no_grad``; gradients flow to the input (never to the weight).
    """

    def __init__(self, in_features: int, out_features: int, weight: QTensor, bias: torch.Tensor | None = None,
                 input_quantizer: ActivationFakeQuant | None = None):
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"weight must have shape ({out_features}, {in_features}), got {weight.shape}")
        super().__init__(weight, bias, input_quantizer)
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str = "linear", bits: int = 8, **options) -> "QLinear":
        """Quantize ``linear``'s weight (adapter defaults: per output channel, symmetric — see the module doc)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear, got {type(linear).__name__}")
        q = qcore.get_quantizer(scheme, **weight_options(scheme, bits, options, channel_axis=0))
        return cls(linear.in_features, linear.out_features, _qtensor_of(linear.weight, q), linear.bias)

    @property
    def uses_kernel(self) -> bool:
        """True when the forward runs ``qcore.ops.qlinear`` (8-bit linear weight)."""
        return _kernel_supported(self.weight)

    def _set_weight(self, qt: QTensor) -> None:
        super()._set_weight(qt)
        self.__dict__["_use_kernel"] = _kernel_supported(qt)

    def _bias_numpy(self):
        """The bias as float32 numpy (a view of the buffer when it is CPU float32), refreshed when it changes."""
        b = self.bias
        if b is None:
            return None
        cached = self.__dict__.get("_bias_np")
        if cached is None or cached[0] is not b or cached[1] != b._version:
            cached = (b, b._version, _numpy_view(b))
            self.__dict__["_bias_np"] = cached
        return cached[2]

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = (x.dtype is torch.float32 and not x.requires_grad and x.is_contiguous() and x.device.type == "cpu"
                and not x.is_conj() and not x.is_neg())
        a = x.numpy() if fast else _numpy_view(x)  # no copy for contiguous CPU float32 input
        ops = _OPS[0] if _OPS else _ops()
        out = ops.qlinear(a.reshape(-1, self.in_features), self.weight, self._bias_numpy())
        y = torch.from_numpy(out.reshape(a.shape[:-1] + (self.out_features,)))
        return y if fast else y.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"QLinear expects input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if not self._use_kernel:
            b = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
            return F.linear(x, self.dequantized_weight(x.device, x.dtype), b)
        if x.requires_grad and torch.is_grad_enabled():
            return _QLinearKernelFn.apply(x, self)
        return self._kernel_forward(x)

    def extra_repr(self) -> str:
        path = "int8 qlinear" if self.uses_kernel else "weight-only"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._weight_repr()}, compute={path!r}")


class QConv2d(_QWeightModule):
    """``nn.Conv2d`` with a quantized weight (a :class:`qcore.QTensor`); weight-only: the forward convolves with
    the dequantized weight (cached)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, weight: QTensor, bias=None, stride=1,
                 padding=0, dilation=1, groups: int = 1, padding_mode: str = "zeros",
                 input_quantizer: ActivationFakeQuant | None = None):
        super().__init__(weight, bias, input_quantizer)
        pair = torch.nn.modules.utils._pair
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        self.groups, self.padding_mode = int(groups), padding_mode
        want = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        if tuple(weight.shape) != want:
            raise ValueError(f"weight must have shape {want}, got {weight.shape}")
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False,
                        padding_mode=padding_mode, device="meta")  # validates the arguments like nn.Conv2d
        self._reversed_padding_repeated_twice = list(ref._reversed_padding_repeated_twice)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, scheme: str = "linear", bits: int = 8, **options) -> "QConv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_float needs an nn.Conv2d, got {type(conv).__name__}")
        q = qcore.get_quantizer(scheme, **weight_options(scheme, bits, options, channel_axis=0))
        return cls._like(conv, _qtensor_of(conv.weight, q))

    @classmethod
    def _like(cls, conv: nn.Conv2d, qt: QTensor, input_quantizer=None) -> "QConv2d":
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, qt, conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.padding_mode, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._apply_input_quantizer(x)
        b = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        w = self.dequantized_weight(x.device, x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, {self._weight_repr()}, compute='weight-only'")


# ------------------------------------------------------------------------------------------------------------
# QAT modules: float weights, fake-quantized in forward by the qcore scheme, straight-through backward
# ------------------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------------------
# model-level functions
# ------------------------------------------------------------------------------------------------------------
def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")


def _swap(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which ``make(name, child)`` returns a module; shared modules stay shared."""
    done: dict[int, nn.Module] = {}
    count = 0
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if id(child) in done:
                parent._modules[name] = done[id(child)]
                continue
            new = make(full, child)
            if new is not None:
                done[id(child)] = new
                parent._modules[name] = new
                count += 1
    return count


def quantize_dynamic(module: nn.Module, scheme: str = "linear", bits: int = 8, *,
                     include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
                     inplace: bool = False, **options) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` (exactly that type) replaced by :class:`QLinear`.

    :param scheme: any installed qcore scheme; ``bits`` and ``options`` go to it.  Adapter defaults (when the
        scheme has the option and it is not given): ``granularity="channel"``, ``axis=0``, ``symmetric=True``.
    :param include: glob pattern(s) on qualified module names (``"encoder.*.fc?"``); only those are quantized
    :param exclude: glob pattern(s) of names left in float
    :param inplace: modify ``module`` itself instead of a deep copy

    8-bit ``linear`` weights run ``qcore.ops.qlinear``; other schemes and bit widths are weight-only.
    Subclasses of ``nn.Linear`` (e.g. attention's ``out_proj``, whose weight is read directly) are left alone.
    """
    _check_module(module)
    model = module if inplace else copy.deepcopy(module)
    wopts = weight_options(scheme, bits, options, channel_axis=0)
    qcore.get_quantizer(scheme, **wopts)  # bad options fail here, before any layer is touched

    def make(name, child):
        if type(child) is nn.Linear and name_selected(name, include, exclude):
            q = qcore.get_quantizer(scheme, **wopts)
            return QLinear(child.in_features, child.out_features, _qtensor_of(child.weight, q), child.bias)
        return None

    if isinstance(model, nn.Linear) and type(model) is nn.Linear:
        if name_selected("", include, exclude):
            return make("", model)
        return model
    if _swap(model, make) == 0:
        warnings.warn("quantize_dynamic: no nn.Linear module was selected; the model is unchanged", stacklevel=2)
    return model


def prepare_qat(module: nn.Module, scheme: str = "linear", bits: int = 8, *, activations=False,
                include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
                inplace: bool = False, **options) -> nn.Module:
    """A copy of ``module`` ready for quantization-aware training.

    Every ``nn.Linear`` and ``nn.Conv2d`` (exactly those types, chosen by ``include``/``exclude`` glob patterns)
    becomes :class:`QATLinear` / :class:`QATConv2d`: the forward uses ``decode(encode(weight))`` of the qcore
    scheme (refitted on the current weight at every step), the backward is straight-through, so any optimizer
    trains the float weights.  ``activations=True`` (or a dict of :class:`ActivationFakeQuant` options such as
    ``{"bits": 8, "observer": "minmax"}``) also fake-quantizes the input of each of those layers, calibrated by a
    qcore observer while training.

    With ``inplace=False`` (default) the copy has its own parameters: build the optimizer on the returned model.
    With ``inplace=True`` the layers are swapped inside ``module`` and keep the very same ``Parameter`` objects.
    """
    _check_module(module)
    model = module if inplace else copy.deepcopy(module)
    act = _activation_spec(activations)
    if act is not None:
        ActivationFakeQuant(**act)  # bad activation options fail here
    wopts = weight_options(scheme, bits, options, channel_axis=0)
    qcore.get_quantizer(scheme, **wopts)

    def make(name, child):
        if not name_selected(name, include, exclude):
            return None
        if type(child) is nn.Linear:
            return QATLinear.from_float(child, scheme, wopts, act)
        if type(child) is nn.Conv2d:
            return QATConv2d.from_float(child, scheme, wopts, act)
        return None

    if type(model) in (nn.Linear, nn.Conv2d):
        return make("", model) or model
    if _swap(model, make) == 0:
        warnings.warn("prepare_qat: no nn.Linear or nn.Conv2d module was selected; the model is unchanged",
                      stacklevel=2)
    return model


def _frozen(aq: ActivationFakeQuant | None) -> ActivationFakeQuant | None:
    if aq is None:
        return None
    aq = copy.deepcopy(aq)
    aq.eval()
    return aq


def convert(module: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The quantized model of a QAT model: :class:`QATLinear` → :class:`QLinear`, :class:`QATConv2d` →
    :class:`QConv2d`, weights quantized by the same scheme and options as during training (so the converted
    model computes with exactly the weights the QAT model saw).  Activation fake-quantizers are kept, frozen.
    """
    _check_module(module)
    model = module if inplace else copy.deepcopy(module)

    def make(name, child):
        if isinstance(child, QATLinear):
            return QLinear(child.in_features, child.out_features, child.quantized_weight(), child.bias,
                           _frozen(child.input_quantizer))
        if isinstance(child, QATConv2d):
            return QConv2d._like(child, child.quantized_weight(), _frozen(child.input_quantizer))
        return None

    if isinstance(model, (QATLinear, QATConv2d)):
        return make("", model)
    if _swap(model, make) == 0:
        warnings.warn("convert: the model has no QAT layers (use prepare_qat first, or quantize_dynamic)",
                      stacklevel=2)
    return model
