"""Exceptions raised by qcore.  Every one derives from :class:`QcoreError`."""


class QcoreError(Exception):
    """Base class of every error qcore raises on purpose."""


class PluginError(QcoreError):
    """A plugin could not be loaded (strict mode), or two plugins claim the same name."""


class _NameNotFound(QcoreError, KeyError):
    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class SchemeNotFound(_NameNotFound):
    """A scheme name (``scheme=...``: a scheme or a planner) that no installed plugin provides (a ``KeyError``)."""


class ObserverNotFound(SchemeNotFound):
    """An observer name that no installed plugin provides (a ``KeyError``).

    A subclass of :class:`SchemeNotFound` only so that code written when unknown observers raised
    ``SchemeNotFound`` keeps catching them; catch ``ObserverNotFound`` in new code."""


class PlannerNotFound(SchemeNotFound):
    """A planner name that no installed plugin provides (a ``KeyError``; a :class:`SchemeNotFound`, since
    ``scheme=`` names schemes and planners alike)."""


class KernelNotFound(SchemeNotFound):
    """A kernel name that no installed plugin provides, a kernel that cannot run here, or no available kernel
    with a requested capability (a ``KeyError``; a :class:`SchemeNotFound` like the other "not installed"
    errors)."""


class FormatError(QcoreError, ValueError):
    """A quantized-model file is truncated, corrupted or hostile."""


class InputError(QcoreError, ValueError):
    """An array argument has values or a form qcore refuses (NaN/Inf, wrong shape, ...)."""
