"""Exceptions raised by qcore.  Every one derives from :class:`QcoreError`."""


class QcoreError(Exception):
    """Base class of every error qcore raises on purpose."""


class PluginError(QcoreError):
    """A plugin could not be loaded (strict mode), or two plugins claim the same name."""


class _NameNotFound(QcoreError, KeyError):
    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class SchemeNotFound(_NameNotFound):
    """A scheme (or observer) name that no installed plugin provides (a ``KeyError``)."""


class KernelNotFound(_NameNotFound):
    """A kernel name that no installed plugin provides, or a kernel that cannot run here (a ``KeyError``)."""


class FormatError(QcoreError, ValueError):
    """A quantized-model file is truncated, corrupted or hostile."""


class InputError(QcoreError, ValueError):
    """An array argument has values or a form qcore refuses (NaN/Inf, wrong shape, ...)."""
