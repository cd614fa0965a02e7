"""PyTorch integration: post-training quantization on qcore's int8 kernels, and quantization-aware training.

::

    from qcore.integrations import torch as qtorch

    qmodel = qtorch.quantize_dynamic(model)                  # a copy: every nn.Linear -> qtorch.QLinear (int8)
    qat = qtorch.prepare_qat(model, weight_bits=4)           # a copy with fake-quantized Linear/Conv2d weights
    ...train qat with any optimizer...
    qmodel = qtorch.convert(qat)                             # QLinear / QConv2d holding QTensor weights

    prepared = qtorch.prepare(model)                         # static int8: observers on Linear/Conv2d inputs
    ...run calibration batches: prepared(x)...
    qmodel = qtorch.convert(prepared)                        # StaticLinear / StaticConv2d: int8 compute

Weights are quantized by any installed qcore scheme (``scheme=``, ``weight_bits=``, scheme options as keywords).
Options left unset take the scheme's own defaults for weights (``linear``: per output channel, symmetric; docs/usage.md
"Defaults"); the adapter sets only the channel axis (``axis=0``, torch's output channels).

``QLinear`` runs every weight through ``qcore.ops.qlinear`` on the input tensor's own memory (contiguous CPU
float32 input is viewed through ``Tensor.numpy()``, never copied): 8-bit affine weights per channel on the int8
GEMM (dynamic uint8 activations), other bit widths and schemes (``kmeans``, ``log``, plugins that declare a decode
form) on the low-bit kernels with the weight kept packed, and anything else a block of decoded rows at a time.
No float copy of a weight is kept; ``QConv2d`` decodes its weight transiently for each forward.

The package is split by concern: ``_tensors`` (torch <-> numpy, fake quantization), ``_qat`` (QAT modules
and activation fake quantization), ``_modules`` (``QLinear``, ``QConv2d``), ``_model`` (the model-level functions), ``_static`` (static int8: prepare, StaticLinear, StaticConv2d), ``_onnx`` (``export_onnx``: ONNX files with
the weights kept quantized, docs/deploy.md).
New features go in modules of their own, imported here.

Importing this module without PyTorch raises an ``ImportError`` saying how to install it.
"""
from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by simulating a missing torch
    raise ImportError(
        "qcore.integrations.torch needs PyTorch, which is not installed. Install it with "
        'pip install "qcore[torch]"  (or directly: pip install torch==2.13.0)'
    ) from exc

from ._apply import apply_quantized
from ._awq import AWQLinear
from ._model import convert, prepare_qat, quantize_dynamic
from ._modules import QConv2d, QLinear
from ._onnx import ONNXExportWarning, export_onnx
from ._ptq import collect_hessians
from ._qat import ActivationFakeQuant, QATConv2d, QATLinear
from ._qops import (DequantizeActivation, QAdaptiveAvgPool2d, QAdd, QAvgPool2d, QCat, QClamp, QFlatten, QMaxPool2d,
                    QTableActivation, QuantizeActivation)
from ._graph import prepare
from ._static import ObservedConv2d, ObservedLinear, QuantizedActivation, StaticConv2d, StaticLinear
from ._tensors import fake_quantize

__all__ = [
    "quantize_dynamic", "prepare_qat", "convert", "apply_quantized", "collect_hessians", "export_onnx", "ONNXExportWarning",
    "QLinear", "AWQLinear", "QConv2d", "QATLinear", "QATConv2d", "ActivationFakeQuant", "fake_quantize",
    "prepare", "StaticLinear", "StaticConv2d", "ObservedLinear", "ObservedConv2d", "QuantizedActivation",
    "QuantizeActivation", "DequantizeActivation", "QAdd", "QCat", "QClamp", "QFlatten", "QMaxPool2d", "QAvgPool2d",
    "QAdaptiveAvgPool2d", "QTableActivation",
]
