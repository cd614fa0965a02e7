"""Data-aware post-training quantization: GPTQ for any installed scheme (``qcore.gptq``) and Hessian helpers."""
from .gptq import check_hessian, correct_for_input_shift, gptq, output_error
from .hessian import HessianAccumulator, HessianFile, HessianFolds, hessian, load_hessians, save_hessians

__all__ = ["gptq", "correct_for_input_shift", "hessian", "HessianAccumulator", "HessianFolds", "HessianFile", "load_hessians", "save_hessians",
           "output_error", "check_hessian"]
