"""Scheme, observer and planner interfaces.  Implementations are plugins."""
from .observer import Observer
from .planner import Planner
from .quantizer import GRANULARITIES, Quantizer

__all__ = ["Observer", "Planner", "Quantizer", "GRANULARITIES"]
