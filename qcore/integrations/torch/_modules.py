"""Quantized modules whose weight is a ``qcore.QTensor``: ``QLinear`` and ``QConv2d``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import numpy as np

import qcore
from qcore.tensor import QTensor

from .._common import bits_alias, plain, weight_options
from ._qat import ActivationFakeQuant
from ._tensors import _numpy_view, _qtensor_of


class _QWeightModule(nn.Module):
    """A module whose weight is a :class:`qcore.QTensor` and whose bias is float32.

    The module holds only the packed weight (``QTensor.packed``, ``bits`` bits per code) and its parameters: no
    float copy of the weight is cached.  ``state_dict`` holds ``weight.packed`` (uint8, the codes packed at
    ``bits`` bits, docs/format.md §3), one ``weight.<param>`` tensor per quantization parameter (``scale``,
    ``zero_point``, ``codebook`` ...), ``bias`` and ``_extra_state`` (scheme, bits, options, shape) — enough to
    rebuild the QTensor exactly; ``load_state_dict`` restores it (and may change scheme or bits), and also loads
    state dicts written before packing, which held unpacked ``weight.codes``.
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
        """The quantized weight.  Assigning a new QTensor (same shape) replaces it (kernel caches live on it)."""
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

    def dequantized_weight(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The dequantized weight as a new tensor, decoded now and **not cached** (the module keeps only the
        packed weight): use it transiently."""
        device = torch.device("cpu") if device is None else torch.device(device)
        with torch.inference_mode(False):  # a normal tensor: usable in autograd-tracked calls
            return torch.from_numpy(np.ascontiguousarray(self.weight.dequantize())).to(device=device, dtype=dtype)

    def _weight_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.weight.options.items() if k not in ("bits", "axis", "group_size")
                       or (k == "axis" and self.weight.options.get("granularity") == "channel")
                       or (k == "group_size" and self.weight.options.get("granularity") == "group"))
        return f"scheme={self.weight.scheme!r}, bits={self.weight.bits}{opts}"

    # -- state dict ----------------------------------------------------------------------------------------
    def get_extra_state(self):
        qt = self.weight
        return {"scheme": qt.scheme, "bits": qt.bits, "options": plain(qt.options), "signed": qt.signed,
                "shape": list(qt.shape), "dtype": qt.dtype, "packed": True}

    def set_extra_state(self, state):  # state is applied in _load_from_state_dict, with the codes
        pass

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        qt = self.weight
        destination[prefix + "weight.packed"] = torch.from_numpy(np.array(qt.packed))  # bits per code, not bytes
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
        pkey, ckey = prefix + "weight.packed", prefix + "weight.codes"  # packed (now) or unpacked (older dicts)
        used = {prefix + "_extra_state", pkey, ckey}
        want = tuple(self.weight.shape)
        if pkey not in state_dict and ckey not in state_dict:
            missing_keys.append(pkey)
        else:
            params = {}
            for key, value in state_dict.items():
                if key.startswith(prefix + "weight.") and key not in (pkey, ckey):
                    params[key[len(prefix) + len("weight."):]] = value.detach().cpu().numpy().copy()
                    used.add(key)
            try:
                opts, bits = dict(meta.get("options") or {}), int(meta["bits"])
                dtype = str(meta.get("dtype", "float32"))
                if pkey in state_dict:
                    shape = tuple(int(s) for s in meta.get("shape", want))
                    if shape != want:
                        raise ValueError(f"size mismatch for {pkey}: the state holds a weight of shape {shape}, "
                                         f"the module's weight has shape {want}")
                    packed = state_dict[pkey].detach().cpu().numpy()
                    if packed.dtype != np.uint8 or packed.ndim != 1:
                        raise TypeError(f"{pkey} must be a 1-d uint8 tensor, got {packed.dtype} of shape {packed.shape}")
                    qt = QTensor.from_packed(packed, shape, meta["scheme"], bits, params, opts,
                                             signed=bool(meta["signed"]), dtype=dtype)  # copied: never unpacked
                else:
                    codes = state_dict[ckey].detach().cpu().numpy()
                    if codes.shape != want:
                        raise ValueError(f"size mismatch for {ckey}: copying codes of shape {codes.shape}, "
                                         f"the module's weight has shape {want}")
                    qt = QTensor(codes, meta["scheme"], bits, params, opts,
                                 signed=bool(meta.get("signed", codes.dtype == np.int8)), dtype=dtype)
                # validates the parameters against the scheme now, not at the first forward (a few rows)
                _check_decodes(qt)
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


def _check_decodes(qt: QTensor) -> None:
    """Decode the weight (a block of rows of it when 2-D) to check its parameters fit its codes."""
    values = qt.decode_rows(0, 8) if len(qt.shape) == 2 and qt.shape[0] > 8 else qt.dequantize()
    if not np.isfinite(values).all():
        raise ValueError("the weight decodes to NaN or Inf values")


def _kernel_supported(qt: QTensor) -> bool:
    """Weights the forward runs through ``qcore.ops.qlinear``: every 2-D weight (the int8 GEMM for 8-bit codes
    that decode affinely per tensor / output channel, the low-bit kernel for other affine and table forms, and
    a rows-at-a-time decode for the rest; never a float copy)."""
    return len(qt.shape) == 2


_OPS: list = []  # qcore.ops once imported (looked up by attribute at each call, so it can be patched in tests)


def _ops():
    try:
        from qcore import ops
    except ImportError as exc:
        raise RuntimeError(f"QLinear runs qcore.ops.qlinear, which could not be imported ({exc})") from exc
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
        w = ctx.module.dequantized_weight(grad.device, grad.dtype)  # transient: freed after this product
        return grad @ w, None


class QLinear(_QWeightModule):
    """Drop-in ``nn.Linear`` with a quantized weight (a :class:`qcore.QTensor` of shape ``(out, in)``).

    The forward runs ``qcore.ops.qlinear`` on the packed weight (8-bit linear: the int8 GEMM; lower bit widths,
    groups, k-means/log/lookup-table schemes: the low-bit kernels; activations quantized dynamically inside).
    On a qcore whose ``qlinear`` lacks the low-bit path, other weights are multiplied a block of decoded rows
    at a time (at most 1M floats of workspace).  No float copy of the weight is ever kept.  Any leading batch
    shape, ``torch.inference_mode``/``no_grad``; gradients flow to the input (never to the weight), through a
    weight decoded transiently in the backward.
    """

    def __init__(self, in_features: int, out_features: int, weight: QTensor, bias: torch.Tensor | None = None,
                 input_quantizer: ActivationFakeQuant | None = None):
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"weight must have shape ({out_features}, {in_features}), got {weight.shape}")
        super().__init__(weight, bias, input_quantizer)
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    @classmethod
    def from_float(cls, linear: nn.Linear, scheme: str = "linear", bits: int | None = None, *,
                   weight_bits: int | None = None, **options) -> "QLinear":
        """Quantize ``linear``'s weight: options not given take the scheme's weight defaults (``linear``: per output
        channel, symmetric; docs/usage.md "Defaults"); ``weight_bits`` (``bits``, the same) None: the scheme's."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear, got {type(linear).__name__}")
        bits = bits_alias(bits, weight_bits, "bits", "weight_bits", warn=False)
        q = qcore.get_quantizer(scheme, **weight_options(scheme, bits, options, channel_axis=0))
        return cls(linear.in_features, linear.out_features, _qtensor_of(linear.weight, q), linear.bias)

    @property
    def uses_kernel(self) -> bool:
        """True when the forward runs ``qcore.ops.qlinear`` (every 2-D weight: the int8, low-bit or rows path)."""
        return _kernel_supported(self.weight)

    def _set_weight(self, qt: QTensor) -> None:
        super()._set_weight(qt)
        self.__dict__["_use_kernel"] = _kernel_supported(qt)
        self._hold_once()

    def _hold_once(self) -> None:
        """One copy of the weight: build the ``qlinear`` kernel layout now and let it hold the codes (the
        QTensor's own packed codes are dropped and regenerated from the layout for ``weight.packed``/``codes``,
        ``state_dict`` and saving — the same bytes; ``qcore.ops.hold_packed_once``).  A weight the layout cannot
        take keeps its codes; an error building it is left to the forward, which reports it."""
        qt = self._qweight
        if not self.__dict__.get("_use_kernel") or not qt.holds_codes:
            return
        ops = _OPS[0] if _OPS else _ops()
        hold = getattr(ops, "hold_packed_once", None)
        if hold is None:
            return
        try:
            hold(qt)
        except (ValueError, TypeError, NotImplementedError):
            pass  # the same error comes from the first forward's qlinear, where the caller expects it

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
        if self._qweight.holds_codes:  # e.g. after copy.deepcopy / unpickling: one copy again
            self._hold_once()
        y = torch.from_numpy(out.reshape(a.shape[:-1] + (self.out_features,)))
        return y if fast else y.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"QLinear expects input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if x.requires_grad and torch.is_grad_enabled():
            return _QLinearKernelFn.apply(x, self)
        return self._kernel_forward(x)

    def extra_repr(self) -> str:
        ops = _OPS[0] if _OPS else _ops()
        path = {"int8": "int8 qlinear", "lowbit": "qlinear", "rows": "qlinear (decoded rows)"}.get(
            ops.qlinear_path(self.weight), "qlinear")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._weight_repr()}, compute={path!r}")


class QConv2d(_QWeightModule):
    """``nn.Conv2d`` with a quantized weight (a :class:`qcore.QTensor`), held packed; weight-only: each forward
    decodes the weight transiently (a float tensor of the weight's size while ``F.conv2d`` runs, freed after;
    there is no fused low-bit convolution) — nothing float is cached between calls."""

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
    def from_float(cls, conv: nn.Conv2d, scheme: str = "linear", bits: int | None = None, *,
                   weight_bits: int | None = None, **options) -> "QConv2d":
        """Quantize ``conv``'s weight with the scheme's weight defaults (as :meth:`QLinear.from_float`)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_float needs an nn.Conv2d, got {type(conv).__name__}")
        bits = bits_alias(bits, weight_bits, "bits", "weight_bits", warn=False)
        q = qcore.get_quantizer(scheme, **weight_options(scheme, bits, options, channel_axis=0))
        return cls._like(conv, _qtensor_of(conv.weight, q))

    @classmethod
    def _like(cls, conv: nn.Conv2d, qt: QTensor, input_quantizer=None) -> "QConv2d":
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, qt, conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.padding_mode, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._apply_input_quantizer(x)
        b = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        w = self.dequantized_weight(x.device, x.dtype)  # transient
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, {self._weight_repr()}, compute='weight-only'")
