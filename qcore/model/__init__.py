"""Whole models: load named tensors, quantize them by rules or under a bit budget, save and load the file format."""
from .format import FORMAT_VERSION, inspect_file, load_quantized, save_qmodel
from . import compressed_tensors  # noqa: F401 - registers QModel.save(format="compressed-tensors")
from .qmodel import QModel, sqnr_db
from .quantize import plan_tensors, quantize_model
from .tensors import load_tensors

__all__ = ["QModel", "load_tensors", "quantize_model", "load_quantized", "save_qmodel", "inspect_file",
           "plan_tensors", "sqnr_db", "FORMAT_VERSION"]
