"""An example third-party qcore plugin.

* ``nf4`` — the NormalFloat scheme of QLoRA (Dettmers et al., 2023): each block of ``group_size`` consecutive
  weights is divided by its absolute maximum, and each value becomes the index of the nearest of 16 levels
  placed at quantiles of a standard normal distribution (``bits=2`` and ``3`` give NF2/NF3 built the same way).
* ``nsigma`` — a calibration observer that clips at ``mean ± k·std``, computed from streaming moments.

Both are registered through the ``qcore`` entry point ``nf4 = "qcore_nf4.plugin"``.
"""
from .nf4 import NF4_CODEBOOK, NF4Quantizer, normal_float_codebook
from .observer import NSigmaObserver

__version__ = "0.1.0"
__all__ = ["NF4Quantizer", "NSigmaObserver", "NF4_CODEBOOK", "normal_float_codebook"]
