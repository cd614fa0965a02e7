"""Data-aware post-training quantization: GPTQ for any installed scheme (``qcore.gptq``) and Hessian helpers."""
from .gptq import check_hessian, gptq, output_error
from .hessian import HessianAccumulator, HessianFile, HessianFolds, hessian, load_hessians, save_hessians

__all__ = ["gptq", "hessian", "HessianAccumulator", "HessianFolds", "HessianFile", "load_hessians", "save_hessians",
           "output_error", "check_hessian"]
