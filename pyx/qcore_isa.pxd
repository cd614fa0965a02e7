# Instruction-set variants shared by the kernel extensions (see qcore_isa.h); the choice follows QCORE_ISA
# through qcore/isa.py, the one place that reads it.
cdef extern from "qcore_isa.h" nogil:
    int qc_cpu_level()


cdef inline tuple qcore_isa_names():
    """The copies of the affine and codebook kernels (qc_cpu_level's levels 0, 1, 2)."""
    return ("baseline", "avx2", "avx512")


cdef inline int qcore_isa_requested() except -1:
    """The copy to start with: the best this CPU runs, not above ``QCORE_ISA`` (qcore/isa.py; ValueError if
    QCORE_ISA is mistyped)."""
    from qcore.isa import choose
    top = qc_cpu_level()
    return choose(qcore_isa_names(), [i <= top for i in range(3)])


cdef inline int qcore_isa_index(name) except -1:
    """The level of the variant called ``name`` (ValueError for an unknown name)."""
    names = qcore_isa_names()
    if name not in names:
        raise ValueError(f"ISA must be one of {names}, got {name!r}")
    return names.index(name)
