"""Hook specifications of qcore's plugin system (pluggy project name ``"qcore"``).

A plugin is a module (or any object) with functions marked ``@qcore.hookimpl`` whose names match the
specs below.  It is found through the ``qcore`` entry-point group::

    [project.entry-points.qcore]
    myscheme = "my_package"

Each hook returns an iterable of *classes*; each class carries a unique ``name``.  The order in which
plugins are called does not matter: two plugins that provide the same name are an error naming both
distributions (never a silent overwrite).  Implementations may accept a subset of the arguments of a
spec, so arguments can be added to a spec later without breaking plugins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ..kernels.base import Kernel
    from ..quantization.observer import Observer
    from ..quantization.planner import Planner
    from ..quantization.quantizer import Quantizer

PROJECT_NAME = "qcore"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def qcore_quantizers() -> Iterable[type[Quantizer]]:
    """Return the quantization schemes this plugin provides.

    :return: an iterable of :class:`qcore.Quantizer` subclasses; each one's ``name`` is the scheme name
        users pass to :func:`qcore.quantize` and that quantized files record.
    """


@hookspec
def qcore_observers() -> Iterable[type[Observer]]:
    """Return the calibration observers this plugin provides.

    :return: an iterable of :class:`qcore.Observer` subclasses; each one's ``name`` is what users pass as
        ``observer=`` to :func:`qcore.get_quantizer`.
    """


@hookspec
def qcore_kernels() -> Iterable[type[Kernel]]:
    """Return the compute kernels this plugin provides.

    :return: an iterable of :class:`qcore.Kernel` subclasses; each one's ``name`` is what users pass as
        ``kernel=``.  :func:`qcore.get_kernel` with no name picks the available kernel of highest
        ``priority``.
    """


@hookspec
def qcore_planners() -> Iterable[type[Planner]]:
    """Return the planners this plugin provides: plugins that choose a scheme and options per tensor.

    :return: an iterable of :class:`qcore.Planner` subclasses; each one's ``name`` is used like a scheme name
        (``qcore.quantize(w, "mixed", budget_bits=4)``, ``qcore.quantize_model(..., scheme="mixed")``) and must
        not clash with any scheme's.  A planner returns the chosen candidate's QTensor, so files never record it.
    """
