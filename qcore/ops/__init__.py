"""Integer compute: ``qlinear`` (float in, float out, int8 / low-bit GEMM inside) and ``qgemm`` (the raw int32 product).

See ``docs/gemm.md`` for the kernel design (layouts, zero-point correction, dispatch).
"""
from .conv import PackedConv2d
from .gemm import hold_packed_once, pack_weights, qgemm, qlinear, qlinear_path
from .isa import available_isas, gemm_isa, lowbit_isa, lowbit_isas, set_gemm_isa, set_lowbit_isa  # deprecated

__all__ = ["qlinear", "qlinear_path", "qgemm", "pack_weights", "available_isas", "gemm_isa", "set_gemm_isa", "PackedConv2d",
           "lowbit_isas", "lowbit_isa", "set_lowbit_isa", "hold_packed_once"]
