"""Running tests at each instruction-set level of the ``cython`` kernel (qcore/isa.py).

The level belongs to the kernel: ``set_isa`` switches every extension together.  An extension has copies at
some levels only (``ext.ISA.copies``), so a test of one extension runs once per copy it has, not once per level.
"""
import contextlib

from qcore_plugins.kernels.cython_kernel import CythonKernel

KERNEL = CythonKernel()


def copy_levels(ext) -> list[str]:
    """The levels (lowest first) at which extension ``ext`` runs a copy of its own here, under the QCORE_ISA cap."""
    return [level for level in reversed(KERNEL.isas()) if level in ext.ISA.copies]


@contextlib.contextmanager
def at_level(level: str):
    """Run the cython kernel (every extension) at ``level`` inside the block, then restore the level before."""
    before = KERNEL.isa
    KERNEL.set_isa(level)
    try:
        yield level
    finally:
        KERNEL.set_isa(before)
