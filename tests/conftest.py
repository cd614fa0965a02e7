import os

import pytest

# Tests must not depend on the thread count of the machine they run on; kernels still run in parallel.
# (Set before anything loads the OpenMP runtime.)
os.environ.setdefault("OMP_NUM_THREADS", "2")

import qcore.ops as ops  # noqa: E402


@pytest.fixture(params=ops.available_isas())
def isa(request):
    """Run a test once on every int8 GEMM path this CPU supports, restoring the default after."""
    old = ops.gemm_isa()
    ops.set_gemm_isa(request.param)
    yield request.param
    ops.set_gemm_isa(old)


@pytest.fixture(params=ops.lowbit_isas())
def lowbit_isa(request):
    """Run a test once on every low-bit GEMM path this CPU supports, restoring the default after."""
    old = ops.lowbit_isa()
    ops.set_lowbit_isa(request.param)
    yield request.param
    ops.set_lowbit_isa(old)
