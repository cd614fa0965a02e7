import os

import pytest

# Tests must not depend on the thread count of the machine they run on; kernels still run in parallel.
# (Set before anything loads the OpenMP runtime.)
os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcore_plugins import _gemm, _lowbit  # noqa: E402

from isa_levels import at_level, copy_levels  # noqa: E402


@pytest.fixture(params=copy_levels(_gemm))
def isa(request):
    """Run a test once on every int8 GEMM copy this CPU runs (the kernel at that level), restoring the level after."""
    with at_level(request.param):
        yield request.param


@pytest.fixture(params=copy_levels(_lowbit))
def lowbit_isa(request):
    """Run a test once on every low-bit GEMM copy this CPU runs (the kernel at that level), restoring the level after."""
    with at_level(request.param):
        yield request.param
