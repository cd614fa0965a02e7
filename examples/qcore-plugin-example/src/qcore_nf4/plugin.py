"""The module the ``qcore`` entry point names: the hook implementations, nothing else."""
import qcore

from .nf4 import NF4Quantizer
from .observer import NSigmaObserver


@qcore.hookimpl
def qcore_quantizers():
    return [NF4Quantizer]


@qcore.hookimpl
def qcore_observers():
    return [NSigmaObserver]
