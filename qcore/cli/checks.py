"""Checks the command line makes before any work starts, so a mistake costs nothing and harms nothing.

Each raises :class:`UsageError` (a ``ValueError``: ``main`` prints it as one ``qcore: error:`` line and exits 2).
"""
from __future__ import annotations

import json
import os
import tempfile


class UsageError(ValueError):
    """A command-line mistake found before any work was done."""


# -- files -------------------------------------------------------------------------------------------------
def input_files(path: str) -> list[str]:
    """Every file the model input ``path`` consists of: the file itself, or a folder's model file(s), or an
    index and its shards.  Used to refuse an output that would overwrite any of them."""
    from ..model.tensors import resolve_model_path

    files = []
    if os.path.isdir(path):
        files.extend(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    p = resolve_model_path(path) if os.path.exists(path) else path
    files.append(p)
    if p.endswith(".index.json") and os.path.isfile(p):
        try:
            with open(p, "rb") as f:
                wm = json.loads(f.read().decode("utf-8")).get("weight_map") or {}
            folder = os.path.dirname(os.path.abspath(p))
            files.extend(os.path.join(folder, s) for s in set(wm.values()) if isinstance(s, str))
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            pass  # load_tensors reports a bad index properly
    return files


def same_file(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are the same file: same path after resolving symlinks, or hard links to one inode."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(output: str, inputs: list[str], what: str = "output") -> None:
    for src in inputs:
        if same_file(output, src):
            extra = "" if os.path.realpath(output) == os.path.realpath(src) and not os.path.islink(output) else " (through a link)"
            raise UsageError(f"{what} {output!r} is the input file {src!r}{extra}: writing it would destroy the input; "
                             f"choose another name")


def check_writable_folder(folder: str, what: str) -> None:
    """``folder`` exists, is a folder, and a file can be created in it (tried, not guessed from permissions)."""
    folder = folder or "."
    if not os.path.exists(folder):
        raise UsageError(f"the folder of {what} does not exist: {folder!r} (create it first)")
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of {what}, {folder!r}, is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".qcore-write-test-")
    except OSError as exc:
        raise UsageError(f"cannot write to the folder of {what}, {folder!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(output: str, inputs: list[str], suffixes: tuple[str, ...], what: str, force: bool = True) -> None:
    """A single-file output: the right suffix, not a folder, not an input, in a writable folder; an existing file
    only with ``force`` (``--force``)."""
    if os.path.isdir(output) or output.endswith((os.sep, "/")):
        raise UsageError(f"-o {output!r} is a folder; {what} is a file: name it, e.g. -o {os.path.join(output, 'model' + suffixes[0])!r}")
    if not output.lower().endswith(suffixes):
        raise UsageError(f"-o {output!r}: {what} is written as {' or '.join(suffixes)}; a name ending otherwise would "
                         f"mislabel its contents (e.g. -o {os.path.splitext(output)[0] + suffixes[0]!r})")
    check_not_an_input(output, inputs)
    check_writable_folder(os.path.dirname(os.path.abspath(output)), f"-o {output!r}")
    if not force and os.path.exists(output):
        raise UsageError(f"-o {output!r} exists; pass --force to replace it")


def check_output_folder(output: str, inputs: list[str], what: str, force: bool = True) -> None:
    """A folder output (compressed-tensors): not a file name, not holding or being an input, parent writable; a
    folder that already holds files only with ``force`` (``--force``)."""
    low = output.lower()
    if low.endswith((".safetensors", ".npz", ".json")):
        raise UsageError(f"-o {output!r}: {what} is a folder (a Hugging Face model folder), not a "
                         f"{os.path.splitext(low)[1]} file; e.g. -o {os.path.splitext(output)[0]!r}")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"-o {output!r} exists and is not a folder; {what} is a folder")
    for src in inputs:
        src_dir = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
        if os.path.isdir(output) and same_file(output, src_dir):
            raise UsageError(f"-o {output!r} is the folder of the input {src!r}: writing there would overwrite the "
                             f"input model; choose another folder")
    if os.path.isdir(output):
        check_writable_folder(output, f"-o {output!r}")
        if not force and os.listdir(output):
            raise UsageError(f"-o {output!r} is a folder that already holds files; pass --force to write the model "
                             f"into it (files of the same names are replaced)")
    else:
        check_writable_folder(os.path.dirname(os.path.abspath(output)), f"-o {output!r}")


def check_exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")


# -- names -------------------------------------------------------------------------------------------------
def unmatched(patterns, names) -> list[str]:
    """The glob patterns (or exact names) of ``patterns`` that match none of ``names``."""
    from ..metrics import matches  # the one glob rule of qcore.quantize_model's include/exclude

    names = list(names)
    out = []
    for p in patterns or ():
        if p in names:
            continue
        if not any(matches(n, p) for n in names):
            out.append(p)
    return out


def check_patterns_match(kind: str, patterns, names) -> None:
    bad = unmatched(patterns, names)
    if bad:
        sample = ", ".join(list(names)[:4])
        raise UsageError(f"{kind} {', '.join(map(repr, bad))} match{'es' if len(bad) == 1 else ''} no tensor of the model "
                         f"(names look like: {sample}{', ...' if len(names) > 4 else ''}); patterns are case-sensitive "
                         f"fnmatch globs")


# -- quantized inputs --------------------------------------------------------------------------------------
def quantized_kind(path: str) -> str | None:
    """The format name (``"qcore"``, ``"compressed-tensors"``, ...) when ``path`` already holds a
    quantized model, or another quantization method named by its config.json, else ``None``.

    Reads headers and ``config.json`` only."""
    from ..model.formats import get_format, list_formats
    from ..model.safetensors_io import read_header
    from ..model.tensors import resolve_model_path

    for name in list_formats():
        try:
            if get_format(name).sniff(path):
                return name
        except Exception:  # noqa: BLE001 - a sniffer that fails has not recognised the input
            continue

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cfg = os.path.join(folder, "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("quantization_config"), dict):
                return str(doc["quantization_config"].get("quant_method") or "quantized (config.json quantization_config)")
        except (ValueError, UnicodeDecodeError, OSError):
            pass
    try:
        p = resolve_model_path(path)
    except (ValueError, OSError):
        return None
    if not p.lower().endswith(".safetensors"):
        return None
    try:
        h = read_header(p)
    except Exception:  # noqa: BLE001 - a bad file is load_tensors' to report
        return None
    if "qcore" in h.metadata:
        return "qcore"
    if any(n.endswith(".weight_packed") for n in h.tensors):
        return "compressed-tensors"
    return None
