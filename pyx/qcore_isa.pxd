# Instruction-set levels shared by the kernel extensions (see qcore_isa.h).  Every extension makes one
# qcore.isa.Switch at import with isa_switch(): the level it runs at, one for all extensions, capped by QCORE_ISA.
cdef extern from "qcore_isa.h" nogil:
    enum:
        QCORE_ISA_BASELINE
        QCORE_ISA_AVX2
        QCORE_ISA_AVX512
        QCORE_ISA_AVX512VNNI
    int qc_cpu_level()


cdef inline object isa_switch(tuple copies, use_copy):
    """The extension's ``qcore.isa.Switch``: ``copies`` are the levels its hot loops have copies for (lowest
    first, ``"baseline"`` included); ``use_copy(level)`` makes the C side run the copy of that level (a
    ``QCORE_ISA_*`` value) and returns the level of the copy it actually runs.  Raises the ``ValueError`` of a
    mistyped ``QCORE_ISA``."""
    from qcore.isa import Switch
    return Switch(copies, qc_cpu_level(), use_copy)
