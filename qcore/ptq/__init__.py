"""Data-aware post-training quantization: GPTQ for any installed scheme (``qcore.gptq``) and Hessian helpers."""
from .gptq import HessianAccumulator, check_hessian, gptq, hessian, output_error

__all__ = ["gptq", "hessian", "HessianAccumulator", "output_error", "check_hessian"]
