"""qcore: quantization of neural-network tensors and models, with schemes, observers and kernels as plugins.

Plugins load lazily on first registry use, never at import.
"""
from ._version import __version__
from .errors import (FormatError, InputError, KernelNotFound, ObserverNotFound, PlannerNotFound, PluginError, QcoreError,
                     SchemeNotFound)
from .plugin.hookspecs import hookimpl
from .kernels.base import Kernel
from .tensor import QTensor
from .quantization import Observer, Planner, Quantizer
from .api import (get_kernel, get_observer, get_quantizer, list_kernels, list_observers, list_planners, list_schemes,
                  plugins, quantize)
from .model import QModel, load_quantized, load_tensors, quantize_model
from .ptq import gptq

__all__ = [
    "__version__", "hookimpl",
    "Quantizer", "Observer", "Kernel", "QTensor", "Planner",
    "list_schemes", "list_planners", "list_observers", "list_kernels", "get_quantizer", "get_observer", "get_kernel", "plugins", "quantize",
    "QModel", "load_tensors", "quantize_model", "load_quantized", "gptq",
    "QcoreError", "SchemeNotFound", "ObserverNotFound", "PlannerNotFound", "KernelNotFound", "FormatError", "PluginError", "InputError",
]


def __getattr__(name):
    # ``qcore.ops`` (int8 compute) and ``qcore.testing`` (the conformance kit) work after a plain
    # ``import qcore`` without being loaded up front (ops loads the GEMM extension)
    if name in ("ops", "testing"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'qcore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"ops", "testing"})
