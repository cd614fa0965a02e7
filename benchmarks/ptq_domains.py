"""Text domains for calibrating and evaluating data-aware PTQ on the sentence encoder (docs/ptq.md).

Calibration text is in the repository (``benchmarks/data``), written for it:

* ``sentences``: ``ptq_calibration.txt``, everyday English sentences, one per line;
* ``docs``: ``ptq_calibration_docs.txt``, technical documentation sentences, one per line;
* ``code``: ``ptq_calibration_code.txt``, source code snippets (Python, JavaScript, SQL, shell, C, Rust, Go,
  ...), separated by blank lines.

Evaluation text is never used for calibration, and two of its three domains are not in the repository at all:

* ``sentences``: ``ptq_heldout.txt`` (other everyday sentences);
* ``docs``: the first paragraph of docstrings of functions and classes of installed packages (the standard
  library, numpy, scipy, scikit-learn, torch), drawn at run time;
* ``code``: function bodies (docstrings removed) of the same installed modules, drawn at run time.

The draw is deterministic for a given installation (sorted names, every n-th item).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap

DATA = pathlib.Path(__file__).resolve().parent / "data"
DOMAINS = ("sentences", "docs", "code")

#: modules whose docstrings and function bodies make the evaluation text (installed, not in this repository)
EVAL_MODULES = (
    "argparse", "asyncio.tasks", "calendar", "collections", "csv", "datetime", "difflib", "email.message",
    "fractions", "ftplib", "functools", "gzip", "heapq", "http.client", "imaplib", "inspect", "ipaddress",
    "json.encoder", "logging", "mailbox", "pathlib", "pickle", "shutil", "smtplib", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tokenize", "urllib.parse",
    "urllib.request", "uuid", "wave", "zipfile",
    "numpy.lib._function_base_impl", "numpy.linalg._linalg", "scipy.linalg._basic", "scipy.signal._signaltools",
    "sklearn.linear_model._base", "sklearn.preprocessing._data", "sklearn.model_selection._split",
    "torch.nn.modules.conv", "torch.optim.lr_scheduler",
)


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _blocks(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [b.strip("\n") for b in text.split("\n\n") if b.strip()]


def calibration_texts(domain: str) -> list[str]:
    """The repository's calibration text of ``domain``."""
    if domain == "sentences":
        return _lines("ptq_calibration.txt")
    if domain == "docs":
        return _lines("ptq_calibration_docs.txt")
    if domain == "code":
        return _blocks("ptq_calibration_code.txt")
    raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")


def _modules():
    for name in EVAL_MODULES:
        try:
            yield name, importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module missing from this installation: skipped
            continue


def _docstrings() -> list[str]:
    out = []
    for _, mod in _modules():
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", None) != mod.__name__:
                continue
            doc = inspect.getdoc(obj) or ""
            para = " ".join(doc.split("\n\n")[0].split())
            if 60 <= len(para) <= 600:
                out.append(para)
    return out


def _bodies() -> list[str]:
    out = []
    for _, mod in _modules():
        try:
            src = inspect.getsource(mod)
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            if not body:
                continue
            head = lines[node.lineno - 1:node.body[0].lineno - 1][:1]  # the def line
            start, end = body[0].lineno - 1, min(body[-1].end_lineno, body[0].lineno - 1 + 14)
            chunk = textwrap.dedent("\n".join(lines[start:end]))
            if 3 <= chunk.count("\n") + 1 and len(chunk) >= 80:
                out.append("\n".join([*(h.strip() for h in head), chunk]))
    return sorted(set(out))


def evaluation_texts(domain: str, n: int = 200) -> list[str]:
    """``n`` evaluation texts of ``domain`` (fewer if the installation has fewer), never calibration text."""
    if domain == "sentences":
        texts = _lines("ptq_heldout.txt")
    elif domain == "docs":
        texts = sorted(set(_docstrings()))
    elif domain == "code":
        texts = _bodies()
    else:
        raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")
    if len(texts) > n:
        step = len(texts) / n
        texts = [texts[int(i * step)] for i in range(n)]
    calib = set(calibration_texts(domain))
    return [t for t in texts if t not in calib]
