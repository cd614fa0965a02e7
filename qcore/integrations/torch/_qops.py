"""The quantized operations a converted static CNN runs between its convolutions (``qtorch.convert`` in graph
mode): each takes and returns :class:`QuantizedActivation` (uint8 NHWC codes with their own border), and on float
tensors computes the float op, so a module reached by float values still gives the float model's result.

Ops that keep their input's scale and zero point (max/average/adaptive pooling, ReLU/ReLU6 and other clamps,
flatten) need no calibration; the others (residual addition, concatenation, table activations such as
Hardswish) requantize to the calibrated parameters of their output.  The arithmetic is ``qcore.ops.cnn``'s
(docs/gemm.md, "The uint8 operations of a static CNN").
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._static import QuantizedActivation, _RELU
from ._tensors import _numpy_view


def _cnn():
    from qcore.ops import cnn

    return cnn


def _float(x):
    return x.dequantize() if isinstance(x, QuantizedActivation) else x


def _image(x):
    """The Codes of an image QuantizedActivation, else None (rows, flattened, or a float tensor)."""
    return x.image() if isinstance(x, QuantizedActivation) and x.is_image else None


def _wrap(codes, like, nonnegative=False):
    return QuantizedActivation.of_image(codes, like.device, like.dtype, nonnegative)


class _QOp(nn.Module):
    """Base: ``output_border`` (the zero padding of the convolutions that read the output, carried in its codes)
    and output parameters for ops that requantize, kept in the state dict's extra state."""

    def __init__(self, scale=None, zero_point=0, border=(0, 0)):
        super().__init__()
        self.output_scale = None if scale is None else float(scale)
        self.output_zero_point = int(zero_point)
        self.output_border = (int(border[0]), int(border[1]))

    def get_extra_state(self):
        return {"output_scale": self.output_scale, "output_zero_point": self.output_zero_point,
                "output_border": list(self.output_border)}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "output_border" not in state:
            raise ValueError(f"{type(self).__name__}: extra state must be the dict written by get_extra_state()")
        self.output_scale = state.get("output_scale")
        self.output_zero_point = int(state.get("output_zero_point", 0))
        self.output_border = tuple(int(v) for v in state["output_border"])

    def _params_repr(self):
        p = "" if self.output_scale is None else f"scale={self.output_scale:.6g}, zero_point={self.output_zero_point}, "
        return p + f"border={self.output_border}"


class QuantizeActivation(_QOp):
    """float NCHW -> codes with the calibrated ``scale``/``zero_point`` (where a float value enters quantized ops)."""

    def forward(self, x):
        if isinstance(x, QuantizedActivation):
            return x
        t = x.detach()
        codes = _cnn().quantize(_numpy_view(t), self.output_scale, self.output_zero_point, border=self.output_border)
        return QuantizedActivation.of_image(codes, x.device, x.dtype)

    def extra_repr(self):
        return self._params_repr()


class DequantizeActivation(nn.Module):
    """codes -> the float tensor they stand for (where a quantized value leaves for a float op or the output)."""

    def forward(self, x):
        return _float(x)


class QAdd(_QOp):
    """``a + b`` of two images, requantized to the output's calibrated parameters, a fused activation clamp
    (``activation = (lo, hi)``: ReLU after the add) applied before rounding."""

    def __init__(self, scale, zero_point, activation=None, border=(0, 0)):
        super().__init__(scale, zero_point, border)
        self.activation = None if activation is None else tuple(float(v) for v in activation)

    def forward(self, a, b):
        ia, ib = _image(a), _image(b)
        if ia is not None and ib is not None and ia.shape == ib.shape and ia.codes.shape[3] == ib.codes.shape[3]:
            out = _cnn().add(ia, ib, self.output_scale, self.output_zero_point, clamp=self.activation,
                             border=self.output_border)
            return _wrap(out, a, nonnegative=self.activation is not None and self.activation[0] >= 0)
        y = _float(a) + _float(b)
        return y if self.activation is None else y.clamp(*self.activation)

    def get_extra_state(self):
        return {**super().get_extra_state(), "activation": None if self.activation is None else list(self.activation)}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        act = state.get("activation")
        self.activation = None if act is None else tuple(float(v) for v in act)

    def extra_repr(self):
        return self._params_repr() + ("" if self.activation is None else f", activation={self.activation}")


class QMaxPool2d(_QOp):
    """Max pooling (the same parameters as the input)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, border=(0, 0)):
        super().__init__(border=border)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, bool(ceil_mode)

    def forward(self, x):
        img = _image(x)
        if img is None:
            return F.max_pool2d(_float(x), self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        out = _cnn().max_pool2d(img, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                border=self.output_border)
        return _wrap(out, x, x.nonnegative)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, {self._params_repr()}")


class QAvgPool2d(_QOp):
    """Average pooling (the same parameters as the input; rounding half to even)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, border=(0, 0)):
        super().__init__(border=border)
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, bool(ceil_mode)
        self.count_include_pad, self.divisor_override = bool(count_include_pad), divisor_override

    def forward(self, x):
        img = _image(x)
        if img is None:
            return F.avg_pool2d(_float(x), self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override)
        out = _cnn().avg_pool2d(img, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override, border=self.output_border)
        return _wrap(out, x, x.nonnegative)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}, {self._params_repr()}")


class QAdaptiveAvgPool2d(_QOp):
    """Adaptive average pooling (``flatten=True``: the mean over H and W without keepdim, i.e. then flattened)."""

    def __init__(self, output_size, flatten=False, border=(0, 0)):
        super().__init__(border=border)
        self.output_size, self.flatten = output_size, bool(flatten)

    def forward(self, x):
        img = _image(x)
        if img is None:
            y = F.adaptive_avg_pool2d(_float(x), self.output_size)
            return torch.flatten(y, 1) if self.flatten else y
        out = _wrap(_cnn().adaptive_avg_pool2d(img, self.output_size, border=self.output_border), x, x.nonnegative)
        return QFlatten.of(out) if self.flatten else out

    def extra_repr(self):
        return f"output_size={self.output_size}, flatten={self.flatten}, {self._params_repr()}"


class QFlatten(nn.Module):
    """``torch.flatten(x, 1)``: an image's codes are kept as they are and seen as ``(B, C*H*W)`` (a Linear layer
    converted for it reads them as a convolution)."""

    @staticmethod
    def of(x: QuantizedActivation) -> QuantizedActivation:
        b, c, h, w = x.shape
        return QuantizedActivation(x.codes, x.scale, x.zero_point, x.channels, None, x.device, x.dtype, x.pad,
                                   x.nonnegative, flat=(c, h, w))

    def forward(self, x):
        if isinstance(x, QuantizedActivation) and x.is_image:
            return self.of(x)
        return torch.flatten(_float(x), 1)


class QClamp(_QOp):
    """``clamp(x, lo, hi)`` (ReLU, ReLU6, Hardtanh) on codes, the same parameters as the input."""

    def __init__(self, lo, hi, border=(0, 0)):
        super().__init__(border=border)
        self.lo, self.hi = float(lo), float(hi)
        self._tables = {}

    def forward(self, x):
        img = _image(x)
        if img is None:
            return _float(x).clamp(self.lo, self.hi)
        key = (img.scale, img.zero_point)
        t = self._tables.get(key)
        if t is None:
            lo, hi = self.lo, self.hi
            t = self._tables.setdefault(key, _cnn().unary_table(lambda v: np.clip(v, lo, hi), *key, *key))
        out = _cnn().lookup(img, t, img.scale, img.zero_point, border=self.output_border)
        return _wrap(out, x, x.nonnegative or self.lo >= 0)

    def extra_repr(self):
        return f"lo={self.lo}, hi={self.hi}, {self._params_repr()}"


def _hardswish(v):
    return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0


def _gelu(v):
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))


#: elementwise activations computed as a table on the codes (float64 functions of the dequantized value)
TABLE_FUNCTIONS = {
    "hardswish": (_hardswish, F.hardswish),
    "hardsigmoid": (lambda v: np.clip(v + 3.0, 0.0, 6.0) / 6.0, F.hardsigmoid),
    "sigmoid": (lambda v: 1.0 / (1.0 + np.exp(-v)), torch.sigmoid),
    "tanh": (np.tanh, torch.tanh),
    "silu": (lambda v: v / (1.0 + np.exp(-v)), F.silu),
    "gelu": (_gelu, F.gelu),
}


class QTableActivation(_QOp):
    """An elementwise activation (``TABLE_FUNCTIONS``: Hardswish, Sigmoid, ...) as a 256-entry table from the
    input's codes to codes of the output's calibrated parameters."""

    def __init__(self, function: str, scale, zero_point, border=(0, 0)):
        super().__init__(scale, zero_point, border)
        if function not in TABLE_FUNCTIONS:
            raise ValueError(f"unknown table activation {function!r}; expected one of {sorted(TABLE_FUNCTIONS)}")
        self.function = function
        self._tables = {}

    def forward(self, x):
        fn, torch_fn = TABLE_FUNCTIONS[self.function]
        img = _image(x)
        if img is None:
            return torch_fn(_float(x))
        key = (img.scale, img.zero_point)
        t = self._tables.get(key)
        if t is None:
            t = self._tables.setdefault(key, _cnn().unary_table(fn, *key, self.output_scale, self.output_zero_point))
        return _wrap(_cnn().lookup(img, t, self.output_scale, self.output_zero_point, border=self.output_border), x)

    def get_extra_state(self):
        return {**super().get_extra_state(), "function": self.function}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.function = state.get("function", self.function)
        self._tables = {}

    def extra_repr(self):
        return f"{self.function}, {self._params_repr()}"


class QCat(_QOp):
    """``torch.cat`` of images along the channels, each input requantized to the output's calibrated parameters
    (copied when it already has them)."""

    def forward(self, *items):
        imgs = [_image(x) for x in items]
        if all(i is not None for i in imgs) and len(imgs) > 0:
            out = _cnn().cat(imgs, self.output_scale, self.output_zero_point, border=self.output_border)
            return _wrap(out, items[0])
        return torch.cat([_float(x) for x in items], 1)

    def extra_repr(self):
        return self._params_repr()


__all__ = ["QuantizeActivation", "DequantizeActivation", "QAdd", "QMaxPool2d", "QAvgPool2d", "QAdaptiveAvgPool2d",
           "QFlatten", "QClamp", "QTableActivation", "QCat", "TABLE_FUNCTIONS", "_RELU"]
