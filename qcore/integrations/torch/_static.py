"""Static int8 quantization: ``prepare`` (observers on the inputs of Linear/Conv2d) -> calibration ->
``convert`` (``StaticLinear`` / ``StaticConv2d`` computing in int8 on qcore's kernels).

The arithmetic is :class:`qcore.ops.PackedConv2d`'s (docs/gemm.md, "Static int8 convolution"): the input is
quantized per tensor with the calibrated scale and zero point, weights are int8 per output channel
(symmetric), products accumulate in int32, and the output is float32 — or, between two static layers that
follow each other in an ``nn.Sequential``, uint8 codes already requantized for the next layer
(:class:`QuantizedActivation`), so a conv -> ReLU -> conv chain never goes back to float.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import qcore
from qcore.quantization.forms import Affine

from ._tensors import _numpy_view

_ACT_SCHEME = "linear"
_RELU = (0.0, math.inf)
_RELU_FUNCS = (torch.nn.functional.relu, torch.relu, torch.relu_, torch.nn.functional.relu_, torch.Tensor.relu,
               torch.Tensor.relu_)


def _ops():
    from qcore import ops

    return ops


# ------------------------------------------------------------------------------------------------ codes


class QuantizedActivation:
    """uint8 activation codes handed from one static layer or quantized op to the next.

    ``codes``: numpy uint8, an NHWC image ``(B, H + 2*ph, W + 2*pw, Cp)`` with a border of ``pad = (ph, pw)``
    pixels holding the zero point (the zero padding of the convolutions that read it), or ``(M, Cp)`` rows for
    Linear layers (``lead``: the leading shape of the float input); channels padded to a multiple of 4.
    ``flat = (C, H, W)``: the image seen flattened, as ``torch.flatten(x, 1)`` gives it (shape ``(B, C*H*W)``);
    a Linear layer converted for it reads the image directly.  ``scale`` and ``zero_point`` are the per-tensor
    calibrated parameters.  Any other consumer can call :meth:`dequantize` (float32, NCHW / ``(..., N)``, as the
    float model would see); torch functions given one (``F.relu(a)``, ``torch.flatten(a, 1)``, ...) see that float
    tensor, except the ReLU functions, which return the codes themselves when the producer fused a ReLU
    (``nonnegative``).
    """

    __slots__ = ("codes", "scale", "zero_point", "channels", "lead", "device", "dtype", "pad", "nonnegative", "flat")

    def __init__(self, codes: np.ndarray, scale: float, zero_point: int, channels: int, lead=None,
                 device=None, dtype=torch.float32, pad=(0, 0), nonnegative=False, flat=None):
        self.pad = (int(pad[0]), int(pad[1]))
        self.nonnegative = bool(nonnegative)  # every code >= zero_point (a fused ReLU)
        self.codes, self.scale, self.zero_point, self.channels = codes, float(scale), int(zero_point), int(channels)
        self.lead = tuple(lead) if lead is not None else None  # Linear: the leading shape of the float input
        self.flat = None if flat is None else tuple(int(v) for v in flat)
        # of the float tensor that entered the chain: float outputs further on are given back on it
        self.device, self.dtype = torch.device("cpu") if device is None else device, dtype

    @classmethod
    def of_image(cls, image, device=None, dtype=torch.float32, nonnegative=False) -> "QuantizedActivation":
        """From :class:`qcore.ops.cnn.Codes`."""
        return cls(image.codes, image.scale, image.zero_point, image.channels, device=device, dtype=dtype,
                   pad=image.border, nonnegative=nonnegative)

    def image(self):
        """The image as :class:`qcore.ops.cnn.Codes` (the same codes; None for Linear rows)."""
        if self.codes.ndim != 4:
            return None
        from qcore.ops.cnn import Codes

        return Codes(self.codes, self.channels, self.scale, self.zero_point, self.pad)

    @property
    def is_image(self) -> bool:
        """An NHWC image (not Linear rows, not flattened)."""
        return self.lead is None and self.flat is None

    @property
    def shape(self) -> tuple:
        if self.flat is not None:
            return (self.codes.shape[0], self.flat[0] * self.flat[1] * self.flat[2])
        if self.lead is not None:
            return self.lead + (self.channels,)
        b, h, w, _ = self.codes.shape
        return (b, self.channels, h - 2 * self.pad[0], w - 2 * self.pad[1])

    def size(self, dim=None):
        shape = torch.Size(self.shape)
        return shape if dim is None else shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    ndim = property(dim)

    def dequantize(self) -> torch.Tensor:
        if self.lead is None:  # an image (possibly seen flattened)
            from qcore.ops.cnn import dequantize

            t = torch.from_numpy(dequantize(self.image()))
            if self.flat is not None:
                t = t.reshape(self.shape)
        else:
            v = (self.codes[..., : self.channels].astype(np.float32) - np.float32(self.zero_point)) \
                * np.float32(self.scale)
            t = torch.from_numpy(v).reshape(self.shape)
        return t if (self.device.type == "cpu" and self.dtype == torch.float32) else t.to(self.device, self.dtype)

    def relu(self) -> "QuantizedActivation":
        """ReLU on the codes: ``max(q, zero_point)`` (itself when the producer fused a ReLU)."""
        if self.nonnegative:
            return self
        return QuantizedActivation(np.maximum(self.codes, np.uint8(self.zero_point)), self.scale, self.zero_point,
                                   self.channels, self.lead, self.device, self.dtype, self.pad, True, self.flat)

    relu_ = relu

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS and args and isinstance(args[0], QuantizedActivation):
            return args[0].relu()
        from torch.utils._pytree import tree_map

        def real(v):
            return v.dequantize() if isinstance(v, QuantizedActivation) else v

        return func(*tree_map(real, tuple(args)), **tree_map(real, kwargs))

    def __repr__(self) -> str:
        return f"QuantizedActivation(shape={self.shape}, scale={self.scale:.6g}, zero_point={self.zero_point})"


# ------------------------------------------------------------------------------------------------ prepare


class _ObservedMixin:
    def _init_observer(self, bits: int, observer: str, symmetric: bool) -> None:
        self.activation_bits, self.activation_observer, self.activation_symmetric = int(bits), observer, bool(symmetric)
        self.input_quantizer = qcore.get_quantizer(_ACT_SCHEME, bits=self.activation_bits, observer=observer,
                                                   symmetric=self.activation_symmetric)
        self.observed_batches = 0
        self.observe_input = True  # False: the quantizer is shared with an observer of the same value (graph mode)

    def _observe(self, x: torch.Tensor) -> None:
        if not self.observe_input:
            return
        a = _numpy_view(x)
        if a.size:
            self.input_quantizer.observe(a)
            self.observed_batches += 1

    def input_params(self) -> tuple[float, int]:
        """The calibrated per-tensor ``(scale, zero_point)`` of this layer's input."""
        q = self.input_quantizer
        if not q.calibrated:
            raise RuntimeError(f"{type(self).__name__} has not seen any calibration batch: run representative inputs "
                               "through the prepared model (model(x)) before qtorch.convert")
        p = q.fit(np.zeros(1, np.float32))  # from the observer's range (calibrated)
        return float(np.asarray(p["scale"]).reshape(-1)[0]), int(np.asarray(p["zero_point"]).reshape(-1)[0])

    def _observer_repr(self) -> str:
        return (f"activations: bits={self.activation_bits}, observer={self.activation_observer!r}, "
                f"symmetric={self.activation_symmetric}, observed_batches={self.observed_batches}")


class ObservedLinear(_ObservedMixin, nn.Linear):
    """``nn.Linear`` (same parameters) whose input is fed to a qcore observer at every forward."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bits, observer, symmetric, weight_bits):
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new._init_observer(bits, observer, symmetric)
        new.weight_bits = weight_bits
        new.train(linear.training)
        return new

    def forward(self, x):
        self._observe(x)
        return nn.Linear.forward(self, x)

    def extra_repr(self):
        return f"{nn.Linear.extra_repr(self)}, {self._observer_repr()}"


class ObservedConv2d(_ObservedMixin, nn.Conv2d):
    """``nn.Conv2d`` (same parameters) whose input is fed to a qcore observer at every forward."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits, observer, symmetric, weight_bits):
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new._init_observer(bits, observer, symmetric)
        new.weight_bits = weight_bits
        new.train(conv.training)
        return new

    def forward(self, x):
        self._observe(x)
        return nn.Conv2d.forward(self, x)

    def extra_repr(self):
        return f"{nn.Conv2d.extra_repr(self)}, {self._observer_repr()}"


def _conv_supported(conv: nn.Conv2d) -> bool:
    """Convolutions the static path computes: zero padding given as numbers, "valid", or a symmetric "same"."""
    if conv.padding_mode != "zeros":
        return False
    if conv.padding == "same":
        return all(d * (k - 1) % 2 == 0 for k, d in zip(conv.kernel_size, conv.dilation))
    return True


# ------------------------------------------------------------------------------------------------ static modules


def _weight_codes(w: torch.Tensor, bits: int):
    """Symmetric per-output-channel codes of a float weight with qcore's linear scheme (int8, scale (N,))."""
    q = qcore.get_quantizer("linear", bits=bits, symmetric=True, granularity="channel", axis=0)
    qt = q.quantize(_numpy_view(w))
    return qt


def _affine_qtensor_parts(qt):
    """(codes int8, scale (N,)) of a QTensor with signed codes that decode as ``codes * scale`` per tensor or per
    output channel (an ``Affine`` form without zero point or offset, e.g. symmetric linear), else None."""
    form = qt.decodes_as()
    if not isinstance(form, Affine) or form.offset is not None or not qt.signed or qt.bits < 2:
        return None
    if np.any(form.zero_points() != 0):
        return None
    lay = qt.layout
    n = qt.shape[0]
    scale = form.scale.reshape(-1).astype(np.float32)
    if lay.granularity == "tensor" and scale.size == 1:
        scale = np.full(n, scale[0], np.float32)
    elif not (lay.granularity == "channel" and lay.axis == 0 and scale.size == n):
        return None
    codes = qt.codes
    neg = scale < 0
    if neg.any():  # symmetric 3-/4-bit scales may be negative (docs/schemes.md): codes*scale == (-codes)*(-scale)
        rows = codes.reshape(n, -1)
        if (rows[neg] == -128).any():
            return None
        codes = np.where(neg.reshape((n,) + (1,) * (codes.ndim - 1)), -codes.astype(np.int16), codes).astype(np.int8)
        scale = np.abs(scale).astype(np.float32)
    return codes, scale


class _StaticBase(nn.Module):
    """Shared by StaticLinear and StaticConv2d: buffers, the packed plan, input/output code handling."""

    def _init_static(self, codes: np.ndarray, wscale: np.ndarray, bias, in_scale: float, in_zp: int, bits: int,
                     signed: bool, weight_bits: int, relu: bool):
        self.register_buffer("weight_codes", torch.from_numpy(np.ascontiguousarray(codes, np.int8)))
        self.register_buffer("weight_scale", torch.from_numpy(np.ascontiguousarray(wscale, np.float32)))
        b = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        self.register_buffer("bias", b)
        self.input_scale, self.input_zero_point = float(in_scale), int(in_zp)
        self.activation_bits, self.activation_signed, self.weight_bits = int(bits), bool(signed), int(weight_bits)
        self.activation = _RELU if relu else None  # a fused clamp (lo, hi): ReLU (0, inf), ReLU6 (0, 6), ...
        self.output_scale: float | None = None  # set by convert when the next layer takes uint8 codes
        self.output_zero_point = 0
        self.output_padding = (0, 0)  # the border of the uint8 output: the zero padding of the convolutions reading it
        self.__dict__["_plan"] = None
        self._build()

    @property
    def relu(self) -> bool:
        """A fused ReLU (``activation == (0, inf)``); setting it to False removes any fused activation."""
        return self.activation == _RELU

    @relu.setter
    def relu(self, value: bool) -> None:
        self.activation = _RELU if value else None

    def _build(self):
        raise NotImplementedError

    def _plan_kwargs(self):
        return dict(input_scale=self.input_scale, input_zero_point=self.input_zero_point,
                    input_bits=self.activation_bits, input_signed=self.activation_signed, activation=self.activation)

    @property
    def plan(self):
        """The :class:`qcore.ops.PackedConv2d` this layer runs (rebuilt after ``load_state_dict``)."""
        if self.__dict__.get("_plan") is None or self.__dict__.get("_plan_activation") != self.activation:
            self._build()
        return self.__dict__["_plan"]

    def _set_plan(self, plan):
        self.__dict__["_plan"] = plan
        self.__dict__["_plan_activation"] = self.activation

    def get_extra_state(self):
        return {"input_scale": self.input_scale, "input_zero_point": self.input_zero_point,
                "activation_bits": self.activation_bits, "activation_signed": self.activation_signed,
                "weight_bits": self.weight_bits, "relu": self.relu, "output_scale": self.output_scale,
                "activation": None if self.activation is None else [float(v) for v in self.activation],
                "output_zero_point": self.output_zero_point, "output_padding": list(self.output_padding)}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "input_scale" not in state:
            raise ValueError(f"{type(self).__name__}: extra state must be the dict written by get_extra_state()")
        self.input_scale, self.input_zero_point = float(state["input_scale"]), int(state["input_zero_point"])
        self.activation_bits, self.activation_signed = int(state["activation_bits"]), bool(state["activation_signed"])
        self.weight_bits, self.relu = int(state["weight_bits"]), bool(state["relu"])
        if state.get("activation") is not None:
            self.activation = tuple(float(v) for v in state["activation"])
        self.output_scale = state.get("output_scale")
        self.output_zero_point = int(state.get("output_zero_point", 0))
        self.output_padding = tuple(int(v) for v in state.get("output_padding", (0, 0)))
        self.__dict__["_plan"] = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.__dict__["_plan"] = None

    def _accepts(self, x: QuantizedActivation) -> bool:
        """``x``'s codes are this layer's input codes (its calibrated parameters, 8-bit affine)."""
        p = self.plan
        return x.scale == float(p.input_scale) and x.zero_point == p._za and p._qlo == 0 and p._qhi == 255

    def _link(self, consumer: "_StaticBase | None") -> None:
        """Hand uint8 codes to ``consumer`` (its input parameters) instead of float output; None: float output."""
        if consumer is None:
            self.output_scale, self.output_zero_point, self.output_padding = None, 0, (0, 0)
        else:
            cp = consumer.plan
            self.output_scale, self.output_zero_point = float(cp.input_scale), int(cp._za)
            self.output_padding = tuple(cp.padding) if isinstance(consumer, StaticConv2d) else (0, 0)

    def _weight_repr(self):
        return (f"weight_bits={self.weight_bits}, input_scale={self.input_scale:.6g}, "
                f"input_zero_point={self.input_zero_point}, relu={self.relu}"
                + ("" if self.activation in (None, _RELU) else f", activation={self.activation}")
                + ("" if self.output_scale is None else ", output='uint8 codes'"))


def _check_input_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor (or the QuantizedActivation of a previous static layer), "
                        f"got {type(x).__name__}")


class StaticLinear(_StaticBase):
    """A Linear layer with static int8 input quantization, int8 per-channel weights and int32 accumulation."""

    def __init__(self, in_features: int, out_features: int, codes, wscale, bias, in_scale, in_zp, *, bits=8,
                 signed=False, weight_bits=8, relu=False):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if tuple(np.shape(codes)) != (self.out_features, self.in_features):
            raise ValueError(f"weight codes must have shape ({out_features}, {in_features}), got {np.shape(codes)}")
        #: (C, H, W) of the flattened image last given: the layer runs as a (H, W) convolution on the image's
        #: codes (``torch.flatten`` of NCHW is the convolution's (c, h, w) reduction order)
        self.image_shape: tuple | None = None
        self._init_static(codes, wscale, bias, in_scale, in_zp, bits, signed, weight_bits, relu)

    def _build(self):
        p = _ops().PackedConv2d.linear(self.weight_codes.numpy(), self.weight_scale.numpy(),
                                       None if self.bias is None else self.bias.numpy(), **self._plan_kwargs())
        self._set_plan(p)
        self.__dict__["_image_plan_cache"] = None

    def _image_plan(self):
        ip = self.__dict__.get("_image_plan_cache")
        if ip is None or ip[0] != self.image_shape:
            c, h, w = self.image_shape
            p = _ops().PackedConv2d(self.weight_codes.numpy().reshape(self.out_features, c, h, w),
                                    self.weight_scale.numpy(), None if self.bias is None else self.bias.numpy(),
                                    **self._plan_kwargs())
            ip = self.__dict__["_image_plan_cache"] = (self.image_shape, p)
        return ip[1]

    def forward(self, x):
        p = self.plan
        if isinstance(x, QuantizedActivation):
            if self._accepts(x):
                if x.lead is not None and x.codes.shape[-1] == p.cp:
                    return self._run(x.codes, x.lead, x.device, x.dtype)
                if x.flat is not None and math.prod(x.flat) == self.in_features:  # the image, read by a (H, W)
                    self.image_shape = x.flat                                        # convolution
                    ip = self._image_plan()
                    if self.output_scale is not None:
                        out = ip.run_codes(x.codes, "uint8", self.output_scale, self.output_zero_point,
                                           in_border=x.pad)
                        return QuantizedActivation(out.reshape(out.shape[0], -1), self.output_scale,
                                                   self.output_zero_point, self.out_features, (out.shape[0],),
                                                   x.device, x.dtype, nonnegative=self.relu)
                    y = torch.from_numpy(ip.run_codes(x.codes, "float", in_border=x.pad).reshape(-1, self.out_features))
                    return y if (x.device.type == "cpu" and x.dtype == torch.float32) else y.to(x.device, x.dtype)
            x = x.dequantize()
        _check_input_tensor(x, "StaticLinear")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"StaticLinear expects input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        lead = tuple(x.shape[:-1])
        a = _numpy_view(x).reshape(-1, self.in_features)
        return self._run(p.quantize_rows(a), lead, x.device, x.dtype)

    def _run(self, codes, lead, device, dtype):
        p = self.plan
        if self.output_scale is not None:
            out = p.forward_rows(codes, "uint8", self.output_scale, self.output_zero_point)
            return QuantizedActivation(out, self.output_scale, self.output_zero_point, self.out_features, lead,
                                       device, dtype, nonnegative=self.relu)
        y = torch.from_numpy(p.forward_rows(codes)).reshape(lead + (self.out_features,))
        return y if (device.type == "cpu" and dtype == torch.float32) else y.to(device=device, dtype=dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"{self._weight_repr()}"


class StaticConv2d(_StaticBase):
    """A Conv2d layer (any stride, padding, dilation, groups) computing in int8: static input quantization,
    int8 per-channel weights, int32 accumulation, float32 (channels-last) or uint8-code output."""

    def __init__(self, in_channels, out_channels, kernel_size, codes, wscale, bias, in_scale, in_zp, *, stride=1,
                 padding=0, dilation=1, groups=1, bits=8, signed=False, weight_bits=8, relu=False):
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding, self.groups = pair(padding), int(groups)
        want = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        if tuple(np.shape(codes)) != want:
            raise ValueError(f"weight codes must have shape {want}, got {np.shape(codes)}")
        self._init_static(codes, wscale, bias, in_scale, in_zp, bits, signed, weight_bits, relu)

    @staticmethod
    def _padding_of(conv: nn.Conv2d):
        if isinstance(conv.padding, str):  # "same" (stride 1) / "valid"
            if conv.padding == "valid":
                return (0, 0)
            pads = []
            for k, d in zip(conv.kernel_size, conv.dilation):
                total = d * (k - 1)
                if total % 2:
                    raise ValueError("padding='same' with an even dilated kernel is asymmetric; not supported")
                pads.append(total // 2)
            return tuple(pads)
        return tuple(conv.padding)

    def _build(self):
        p = _ops().PackedConv2d(self.weight_codes.numpy(), self.weight_scale.numpy(),
                                None if self.bias is None else self.bias.numpy(), stride=self.stride,
                                padding=self.padding, dilation=self.dilation, groups=self.groups,
                                **self._plan_kwargs())
        self._set_plan(p)

    def forward(self, x, residual=None):
        """``x``: float NCHW or the input's codes; ``residual``: codes added before the activation (a residual
        addition fused by ``convert``; its parameters given, the output's are this layer's output ones)."""
        p = self.plan
        if residual is not None:
            return self._forward_residual(x, residual)
        if isinstance(x, QuantizedActivation):
            if x.is_image and self._accepts(x) and x.codes.shape[-1] == p.cp:
                return self._run(x.codes, x.device, x.dtype, x.pad)
            x = x.dequantize()
        _check_input_tensor(x, "StaticConv2d")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"StaticConv2d expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        xd = x.detach()
        if xd.device.type == "cpu" and xd.dtype == torch.float32 and not xd.is_contiguous() \
                and xd.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = xd.shape  # NHWC memory: quantize pixel rows in place
            rows = xd.permute(0, 2, 3, 1).numpy().reshape(b * h * w, c)
            codes = p.quantize_rows(rows).reshape(b, h, w, p.cp)
            if p.padding != (0, 0):
                (ph, pw), z = p.padding, p._za
                codes = np.pad(codes, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=z)
        elif p.dense_input:  # an RGB image: the quantized rows read densely by the convolution (run_float)
            return self._run(_numpy_view(xd), x.device, x.dtype, None)
        else:
            codes = p.quantize_input(_numpy_view(xd), padded=True)
        return self._run(codes, x.device, x.dtype, p.padding)

    def _forward_residual(self, x, residual):
        p = self.plan
        if self.output_scale is None:
            raise ValueError("a residual is added into uint8 output only: set the layer's output parameters")
        if not isinstance(x, QuantizedActivation):
            _check_input_tensor(x, "StaticConv2d")
            x = QuantizedActivation(p.quantize_input(_numpy_view(x.detach()), padded=True), p.input_scale, p._za,
                                    self.in_channels, device=x.device, dtype=x.dtype, pad=p.padding)
        if isinstance(residual, QuantizedActivation) and residual.is_image and x.is_image and self._accepts(x) \
                and x.codes.shape[-1] == p.cp:
            b, _, h, w = x.shape
            oh, ow = p.output_size(h, w)
            want = (b, oh + 2 * self.output_padding[0], ow + 2 * self.output_padding[1], (self.out_channels + 3) // 4 * 4)
            if residual.codes.shape == want and residual.pad == tuple(self.output_padding):
                out = p.run_codes(x.codes, "uint8", self.output_scale, self.output_zero_point, in_border=x.pad,
                                  out_padding=self.output_padding,
                                  residual=(residual.codes, residual.scale, residual.zero_point))
                return QuantizedActivation(out, self.output_scale, self.output_zero_point, self.out_channels,
                                           device=x.device, dtype=x.dtype, pad=self.output_padding,
                                           nonnegative=self.activation is not None and self.activation[0] >= 0)
        # another layout: the float sum, clamped, quantized (the unfused arithmetic)
        if not (x.is_image and self._accepts(x) and x.codes.shape[-1] == p.cp):
            x = QuantizedActivation(p.quantize_input(_numpy_view(x.dequantize()), padded=True), p.input_scale,
                                    p._za, self.in_channels, device=x.device, dtype=x.dtype, pad=p.padding)
        acc = p.run_codes(x.codes, "int32", in_border=x.pad)
        m, bias = p._epilogue(self.out_channels, 1, None, 0)
        y = acc.astype(np.float32) * m + (0 if bias is None else bias)
        y = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
        r = residual.dequantize() if isinstance(residual, QuantizedActivation) else residual
        y = y + r.to(torch.float32)
        if self.activation is not None:
            y = y.clamp(*self.activation)
        from qcore.ops.cnn import quantize

        codes = quantize(_numpy_view(y), self.output_scale, self.output_zero_point, border=self.output_padding)
        return QuantizedActivation.of_image(codes, x.device, x.dtype)

    def _run(self, codes, device, dtype, border):
        """``codes`` with a ``border`` through the layer; ``border`` None: ``codes`` is the float NCHW input
        (:meth:`qcore.ops.PackedConv2d.run_float`)."""
        p = self.plan
        if self.output_scale is not None:
            if border is None:
                out = p.run_float(codes, "uint8", self.output_scale, self.output_zero_point,
                                  out_padding=self.output_padding)
            else:
                out = p.run_codes(codes, "uint8", self.output_scale, self.output_zero_point, in_border=border,
                                  out_padding=self.output_padding)
            return QuantizedActivation(out, self.output_scale, self.output_zero_point, self.out_channels,
                                       device=device, dtype=dtype, pad=self.output_padding,
                                       nonnegative=self.activation is not None and self.activation[0] >= 0)
        y = torch.from_numpy(p.run_float(codes, nchw=True) if border is None else
                             p.run_codes(codes, in_border=border, nchw=True))  # contiguous NCHW
        return y if (device.type == "cpu" and dtype == torch.float32) else y.to(device=device, dtype=dtype)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._weight_repr()}")


# ------------------------------------------------------------------------------------------------ convert


def _fake_quant_params(aq):
    """(scale, zero_point, bits, signed) of a calibrated 8-bit ActivationFakeQuant whose codes decode affinely
    per tensor (its ``qparams()``), else None."""
    if aq is None or int(getattr(aq, "bits", 0)) != 8 or not hasattr(aq, "qparams"):
        return None
    try:
        scale, zp = aq.qparams()  # the calibrated (scale, zero_point) of the fake quantizer
    except (qcore.QcoreError, ValueError):
        return None
    signed = bool(getattr(getattr(aq, "quantizer", None), "signed", False))
    if not math.isfinite(scale) or scale <= 0:
        return None
    return float(scale), int(zp), 8, signed


def _bn_affine(bn: nn.BatchNorm2d):
    """(a, c) of an eval-mode BatchNorm2d as ``y = a * x + c`` per channel, float32 numpy (running statistics)."""
    with torch.no_grad():
        inv = torch.rsqrt(bn.running_var.detach().float().cpu() + bn.eps)
        gamma = bn.weight.detach().float().cpu() if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias.detach().float().cpu() if bn.bias is not None else torch.zeros_like(inv)
        a = gamma * inv
        c = beta - bn.running_mean.detach().float().cpu() * a
    return a.numpy(), c.numpy()


def static_from_observed(child, bn: nn.BatchNorm2d | None = None) -> _StaticBase:
    """The static module of a prepared layer; ``bn``: a BatchNorm2d following the convolution, folded into its
    float weights and bias before they are quantized (``torch.nn.utils.fusion.fuse_conv_bn_weights``, the
    function torch.ao's fusion uses), so the weight quantization sees the folded weights."""
    scale, zp = child.input_params()
    weight, bias = child.weight, child.bias
    if bn is not None:
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(weight.detach(), None if bias is None else bias.detach(),
                                                bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    qt = _weight_codes(weight.detach(), child.weight_bits)
    codes, wscale = _affine_qtensor_parts(qt)
    new = _static_module(child, codes, wscale, scale, zp, child.activation_bits, child.activation_symmetric,
                         child.weight_bits, bias=bias)
    new.folded_bn = bn is not None
    return new


def static_from_qat(child, bn: nn.BatchNorm2d | None = None) -> _StaticBase | None:
    """The static int8 module of a QAT layer with an 8-bit linear per-tensor activation fake quantizer and a
    symmetric linear weight (per tensor or per output channel); None if it does not qualify.

    ``bn``: a BatchNorm2d after the convolution, folded exactly into the trained codes' per-channel scales
    (``w * a = codes * (scale * a)``; a negative ``a`` negates the channel's codes) and into the bias — the codes
    stay those the QAT model trained with.  If a channel cannot be negated (a code of -128) it is not folded
    (``folded_bn`` False: the BN stays a float module after the layer)."""
    act = _fake_quant_params(getattr(child, "input_quantizer", None))
    if act is None:
        return None
    parts = _affine_qtensor_parts(child.quantized_weight())
    if parts is None:
        return None
    codes, wscale = parts
    bias, folded = child.bias, False
    if bn is not None:
        a, c = _bn_affine(bn)
        n = codes.shape[0]
        rows = codes.reshape(n, -1)
        if not (rows[a < 0] == -128).any():
            sign = np.where(a < 0, -1, 1).astype(np.int16).reshape((n,) + (1,) * (codes.ndim - 1))
            codes = (codes.astype(np.int16) * sign).astype(np.int8)
            wscale = (wscale * np.abs(a)).astype(np.float32)
            b0 = np.zeros(n, np.float32) if child.bias is None else child.bias.detach().float().cpu().numpy()
            bias, folded = torch.from_numpy((b0 * a + c).astype(np.float32)), True
    scale, zp, bits, signed = act
    new = _static_module(child, codes, wscale, scale, zp, bits, signed, int(child.weight_options.get("bits", 8)),
                         bias=bias)
    new.folded_bn = folded
    return new


def _static_module(child, codes, wscale, scale, zp, bits, signed, weight_bits, bias=None):
    if isinstance(child, nn.Linear):
        return StaticLinear(child.in_features, child.out_features, codes, wscale, bias, scale, zp, bits=bits,
                            signed=signed, weight_bits=weight_bits)
    return StaticConv2d(child.in_channels, child.out_channels, child.kernel_size, codes, wscale, bias, scale,
                        zp, stride=child.stride, padding=StaticConv2d._padding_of(child), dilation=child.dilation,
                        groups=child.groups, bits=bits, signed=signed, weight_bits=weight_bits)
