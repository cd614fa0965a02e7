"""The ``numpy`` kernel: the reference implementation of every kernel capability.

It is :class:`qcore.Kernel` itself: each capability's numpy reference lives beside its interface in
``qcore/kernels/`` (written for clarity, not speed) and is what this kernel runs.  It is the oracle the
``cython`` kernel (and the conformance kit, ``qcore.testing.check_kernel``) is compared with.
"""
from __future__ import annotations

import qcore
from qcore.kernels import CAPABILITIES, Kernel


class NumpyKernel(Kernel):
    name = "numpy"
    priority = 0
    capabilities = CAPABILITIES


@qcore.hookimpl
def qcore_kernels():
    return [NumpyKernel]
