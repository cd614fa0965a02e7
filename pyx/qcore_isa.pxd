# Instruction-set variants shared by the kernel extensions (see qcore_isa.h).
cdef extern from "qcore_isa.h" nogil:
    int qc_cpu_level()


cdef inline tuple qcore_isa_names():
    return ("baseline", "avx2", "avx512")


cdef inline int qcore_isa_requested() except -1:
    """The level to start with: ``QCORE_ISA`` if set (for tests), else the best the CPU supports."""
    import os
    names = qcore_isa_names()
    want = os.environ.get("QCORE_ISA", "").strip().lower() or names[qc_cpu_level()]
    if want not in names:
        raise ImportError(f"QCORE_ISA must be one of {', '.join(names)}, got {want!r}")
    return names.index(want)


cdef inline int qcore_isa_index(name) except -1:
    """The level of the variant called ``name`` (ValueError for an unknown name)."""
    names = qcore_isa_names()
    if name not in names:
        raise ValueError(f"ISA must be one of {names}, got {name!r}")
    return names.index(name)
