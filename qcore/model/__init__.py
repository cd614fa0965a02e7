"""Whole models: load named tensors, quantize them by rules or under a bit budget, save and load them in every
registered file format (qcore/model/formats.py)."""
from .format import FORMAT_VERSION, inspect_file, save_qmodel
from .formats import ModelFormat, format_of, get_format, list_formats, load_quantized, register_format
from .qmodel import QModel, sqnr_db
from .quantize import WrittenModel, plan_tensors, quantize_model
from .tensors import load_tensors

__all__ = ["QModel", "load_tensors", "quantize_model", "load_quantized", "save_qmodel", "inspect_file",
           "plan_tensors", "sqnr_db", "FORMAT_VERSION", "ModelFormat", "register_format", "get_format", "format_of",
           "list_formats", "WrittenModel"]
