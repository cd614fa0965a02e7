"""The one registry of model file formats: every format qcore saves, loads, recognises and inspects.

A format is a :class:`ModelFormat` with four operations::

    fmt.sniff(path) -> bool                  # is this file/folder in this format (header only, never raises)
    fmt.save(model, path, **options) -> int  # bytes written; atomic; options: source=, max_shard_size=, ...
    fmt.load(path, *, verify=True) -> QModel
    fmt.inspect(path) -> dict                # header-only description: what ``qcore inspect`` prints
    fmt.open_writer(path, metadata=, **options) -> ModelWriter   # add(name, tensor, info) ... close(): streaming

:meth:`QModel.save` (``format=``), :func:`load_quantized` (``qcore.load_quantized``), :func:`inspect` and the
command line (``quantize``, ``inspect``, ``dequantize``, ``report``) reach formats through this registry only.

The built-in formats (qcore's own file, compressed-tensors folders, GGUF files) are listed by module name in
:data:`BUILTIN` and imported on first use, the way entry points name plugins: the format modules sit above
:class:`QModel` (they build one when loading), so the registry below it names them instead of importing them.
A third party registers its own with :func:`register_format`.
"""
from __future__ import annotations

import importlib
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import FormatError

if TYPE_CHECKING:
    from .qmodel import QModel

#: modules defining the built-in formats, each as its module-level ``FORMAT`` (a ModelFormat instance)
BUILTIN = ("qcore.model.format", "qcore.model.compressed_tensors", "qcore.model.gguf.format")


class ModelFormat:
    """Base class of a model file format.

    Class attributes a subclass sets:

    * ``name`` — what ``QModel.save(path, format=name)`` and ``--format`` take;
    * ``description`` — one line for help texts;
    * ``output`` — ``"file"`` (one file whose name ends in one of ``suffixes``) or ``"folder"``;
    * ``suffixes`` — file name endings of this format (also used to pick the format of a file that sniffs as
      nothing, so its reader can say precisely what is wrong with it);
    * ``uses_source`` — ``save`` takes ``source=`` (the Hugging Face folder the model came from), and the command
      line passes its input folder;
    * ``save_options`` — the keyword options ``save`` takes (others are refused before any work).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    output: ClassVar[str] = "file"
    suffixes: ClassVar[tuple[str, ...]] = ()
    uses_source: ClassVar[bool] = False
    save_options: ClassVar[tuple[str, ...]] = ("progress",)

    def sniff(self, path: str) -> bool:
        """True when ``path`` is a file or folder of this format; reads headers only and never raises."""
        raise NotImplementedError

    def save(self, model: "QModel", path: str, **options) -> int:
        """Write ``model`` to ``path`` atomically; returns the bytes written."""
        raise NotImplementedError

    def load(self, path: str, *, verify: bool = True) -> "QModel":
        """Read ``path`` into a :class:`QModel` (:class:`qcore.FormatError` on anything malformed)."""
        raise NotImplementedError

    def inspect(self, path: str) -> dict[str, Any]:
        """A header-only description: ``{"path", "format", "file_size", "title", "tensors": [report rows], ...}``."""
        raise NotImplementedError

    def open_writer(self, path: str, *, metadata: dict[str, str] | None = None, **options) -> "ModelWriter | None":
        """A :class:`ModelWriter` saving to ``path`` tensor by tensor, as ``quantize_model(output=...)`` produces
        them (``options``: the save options), or None (the base class): the format cannot write as it goes, and
        ``quantize_model`` collects the model in memory and calls :meth:`save` at the end."""
        return None

    # -- checks made before any work (the command line calls them before quantizing) ----------------------
    def check_plan(self, plan, options: dict | None = None) -> None:
        """Refuse, naming them, the entries of a quantization plan ``[(name, scheme, options)]`` this format
        cannot hold (``ValueError``).  ``options``: the save options that will be passed (e.g. ``source``)."""

    def default_options(self, scheme: str, options: dict) -> dict:
        """The scheme options the command line uses for this format when the user leaves some unset (default:
        ``options`` unchanged; GGUF fills in 32-weight blocks with float16 scales)."""
        return options

    def check_save_options(self, options: dict) -> None:
        """Refuse save options this format does not take or that are wrong (``ValueError``/``TypeError``),
        before anything is quantized.  The base class refuses names not in ``save_options``."""
        unknown = set(options) - set(self.save_options)
        if unknown:
            raise TypeError(f"format {self.name!r} got unknown save option(s) {', '.join(sorted(unknown))}; it takes "
                            f"{', '.join(o + '=' for o in self.save_options) or 'none'}")

    def __repr__(self) -> str:
        return f"<qcore model format {self.name!r}>"


class ModelWriter:
    """Saves a model tensor by tensor: :meth:`add` each tensor in model order, then :meth:`close`; :meth:`abort`
    on failure leaves no output that looks complete.  A context manager: leaving it by an exception aborts."""

    def add(self, name: str, tensor, info: dict | None = None, dtype: str | None = None) -> None:
        """Write one tensor: a :class:`qcore.QTensor` or an array; ``info`` its ``QModel.info`` record; ``dtype``
        its original dtype when the array does not say it (``"bfloat16"`` for uint16 bit patterns)."""
        raise NotImplementedError

    def close(self) -> int:
        """Complete the output (an index or config, if any, last); returns the bytes written."""
        raise NotImplementedError

    def abort(self) -> None:
        """Remove what was written so far."""

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


_FORMATS: dict[str, ModelFormat] = {}
_lock = threading.Lock()
_builtins_loaded = False


def _ensure_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _lock:
        if _builtins_loaded:
            return
        for modname in BUILTIN:
            fmt = importlib.import_module(modname).FORMAT
            _FORMATS.setdefault(fmt.name, fmt)
        _builtins_loaded = True


def register_format(fmt: ModelFormat, *, replace: bool = False) -> ModelFormat:
    """Add ``fmt`` (a :class:`ModelFormat` instance or subclass) to the registry; returns the instance.

    A name already registered is an error unless ``replace=True`` (never a silent overwrite)."""
    if isinstance(fmt, type) and issubclass(fmt, ModelFormat):
        fmt = fmt()
    if not isinstance(fmt, ModelFormat):
        raise TypeError(f"register_format expects a ModelFormat, got {type(fmt).__name__}")
    if not isinstance(fmt.name, str) or not fmt.name:
        raise ValueError(f"{type(fmt).__name__}.name must be a non-empty string")
    if fmt.output not in ("file", "folder"):
        raise ValueError(f"{type(fmt).__name__}.output must be 'file' or 'folder', got {fmt.output!r}")
    _ensure_builtins()
    with _lock:
        old = _FORMATS.get(fmt.name)
        if old is not None and not replace and type(old) is not type(fmt):
            raise ValueError(f"a model format named {fmt.name!r} is already registered ({type(old).__module__}."
                             f"{type(old).__name__}); pass replace=True to replace it")
        _FORMATS[fmt.name] = fmt
    return fmt


def list_formats() -> list[str]:
    """Names of the registered formats (built-ins first, in registration order)."""
    _ensure_builtins()
    return list(_FORMATS)


def get_format(name: str) -> ModelFormat:
    """The format registered under ``name`` (``ValueError`` listing the known ones otherwise)."""
    _ensure_builtins()
    fmt = _FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValueError(f"unknown model file format {name!r}; known formats: {', '.join(map(repr, _FORMATS))}")
    return fmt


def format_of(path: str | os.PathLike) -> ModelFormat:
    """The format of an existing file or folder, found by sniffing headers.

    A file that sniffs as no format is given to the format its name suggests (its suffix), else to qcore's
    own, whose reader then says precisely what is wrong with it; a folder that sniffs as none is an error."""
    _ensure_builtins()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file or folder: {p!r}")
    fmts = list(_FORMATS.values())
    for fmt in fmts:
        try:
            if fmt.sniff(p):
                return fmt
        except Exception:  # noqa: BLE001 - a sniffer that fails has not recognised the file
            continue
    if os.path.isdir(p):
        folders = ", ".join(f.name for f in fmts if f.output == "folder" or f.name == "qcore")
        raise FormatError(f"{p!r} is a folder that holds no quantized model qcore reads ({folders}); plain float "
                          f"folders load with qcore.load_tensors")
    low = p.lower()
    for fmt in fmts:
        if fmt.suffixes and low.endswith(fmt.suffixes) and fmt.output == "file":
            return fmt
    return get_format("qcore")


def probe(scheme: str, options: dict):
    """A small QTensor quantized with ``scheme`` and ``options`` (2 rows of ``2 * group_size`` or 64 values), or
    the reason it cannot be made: what a format's ``check_plan`` asks its tensor check about, before any work,
    without knowing the scheme (its decode form and layout say what it is)."""
    import numpy as np

    from ..api import get_quantizer
    from ..quantization.planner import Planner

    try:
        q = get_quantizer(scheme, **options)
        if isinstance(q, Planner):
            return f"{scheme!r} is a planner"
        cfg = getattr(q, "config", {})
        width = 2 * int(cfg["group_size"]) if cfg.get("granularity") == "group" else 64
        return q.quantize(np.linspace(-1.0, 1.5, 2 * width, dtype=np.float32).reshape(2, width))
    except (TypeError, ValueError, KeyError) as exc:
        return str(exc)


def check_plan_tensors(plan, why, what: str, help_text: str) -> None:
    """Refuse (``ValueError``) a quantization plan ``[(name, scheme, options)]`` whose tensors ``why(name, qt)``
    refuses (it returns the reason, or None); a planner's candidates (``options["candidates"]``, dicts with a
    ``"scheme"``) are each checked, and a planner without explicit candidates is refused."""
    from ..api import get_quantizer
    from ..quantization.planner import Planner

    bad = []
    for name, scheme, opts in plan:
        if scheme is None:
            continue
        cands = opts.get("candidates")
        try:
            planner = isinstance(get_quantizer(scheme, **opts), Planner)
        except Exception:  # noqa: BLE001 - the probe below reports the reason
            planner = False
        if planner or cands is not None:
            if not isinstance(cands, list) or not all(isinstance(c, dict) for c in cands):
                bad.append(f"{name}: scheme {scheme!r} with its default candidates (pass candidates that {what} holds)")
                continue
            specs = [(c.get("scheme", "linear"), {k: v for k, v in c.items() if k != "scheme"}) for c in cands]
        else:
            specs = [(scheme, opts)]
        for s, o in specs:
            qt = probe(s, o)
            reason = qt if isinstance(qt, str) else why(name, qt)
            if reason:
                bad.append(f"{name}: {s} {', '.join(f'{k}={v!r}' for k, v in o.items())}: {reason}")
                break
        if len(bad) > 20:
            break
    if bad:
        raise ValueError(f"{what} cannot hold {len(bad)}{'+' if len(bad) > 20 else ''} planned tensor(s) exactly "
                         f"({'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); {help_text}")


def load_quantized(path: str | os.PathLike, *, verify: bool = True) -> "QModel":
    """Read a quantized model in any registered format: a qcore ``.safetensors`` file (or a folder holding
    one), a compressed-tensors ``pack-quantized`` folder, or a GGUF file of the types qcore writes.

    Headers are validated completely before any tensor data is read; a scheme that is not installed raises
    :class:`qcore.SchemeNotFound` naming the plugin distribution the file needs; with ``verify=True``
    (default) every tensor is decoded once to check that its parameters fit its codes.  Anything wrong raises
    :class:`qcore.FormatError` with the reason.  Nothing is ever unpickled.  See docs/format.md and docs/deploy.md.
    """
    p = os.fspath(path)
    return format_of(p).load(p, verify=verify)


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """The header-only description of a quantized model in any registered format (``qcore inspect``)."""
    p = os.fspath(path)
    return format_of(p).inspect(p)


__all__ = ["ModelFormat", "ModelWriter", "BUILTIN", "register_format", "get_format", "format_of", "list_formats",
           "load_quantized", "inspect", "probe", "check_plan_tensors"]
