"""Scheme and observer interfaces.  Implementations are plugins."""
from .observer import Observer
from .quantizer import GRANULARITIES, Quantizer

__all__ = ["Observer", "Quantizer", "GRANULARITIES"]
