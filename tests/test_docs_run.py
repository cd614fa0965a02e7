"""Every code block of README.md and docs/*.md that claims to run, runs as written.

The convention for fenced blocks (this test keeps it):

* ```python — a runnable example.  The blocks of one file run in order in one namespace (a later block may use
  names an earlier one defined), each file in a fresh temporary working folder holding ``model.safetensors`` (a small
  float32 model: ``embed.weight``, ``layer0.weight``/``bias``, ``layer1.weight``/``bias``, ``lm_head.weight``) and
  nothing else.  Imports and every other name must be in the blocks themselves.
* ```bash — each line that starts with ``qcore `` (after an optional ``$ ``) runs as a qcore command in that same
  folder, after the file's python blocks, and must exit 0.  Other lines of a bash block (``pip install``, ``tox``,
  ``pytest``) install or test the project itself and are not run here.
* ```py, ```text and fences without a language are fragments (signatures, formulas, output): never run.

Plugins are isolated to the built-ins while the blocks run (``qcore.testing.isolated_plugins``), so a block that
registers a scheme for its example does not leak it into other tests.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(path: pathlib.Path, lang: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(path.read_text(encoding="utf-8")) if m.group(1) == lang]


def commands(path: pathlib.Path) -> list[str]:
    out = []
    for block in blocks(path, "bash"):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if line.startswith("qcore "):
                out.append(line)
    return out


def _model_file(folder: pathlib.Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"embed.weight": rng.standard_normal((64, 32)).astype(np.float32),
               "layer0.weight": rng.standard_normal((64, 32)).astype(np.float32),
               "layer0.bias": rng.standard_normal(64).astype(np.float32),
               "layer1.weight": rng.standard_normal((32, 64)).astype(np.float32),
               "layer1.bias": rng.standard_normal(32).astype(np.float32),
               "lm_head.weight": rng.standard_normal((64, 32)).astype(np.float32)}, str(folder / "model.safetensors"))


RUNNABLE = [p for p in FILES if blocks(p, "python") or commands(p)]


def test_the_convention_covers_every_file():
    assert ROOT / "README.md" in RUNNABLE
    for p in FILES:  # a language the convention does not know would silently never run
        for m in FENCE.finditer(p.read_text(encoding="utf-8")):
            assert m.group(1) in ("python", "py", "bash", "text", "toml", "json", ""), (p.name, m.group(1))


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.relative_to(ROOT).as_posix() for p in RUNNABLE])
def test_doc_blocks_run(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from qcore.cli.main import main
    from qcore.testing import isolated_plugins

    _model_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns: dict = {"__name__": f"docs:{path.name}"}
    with isolated_plugins():
        for i, block in enumerate(blocks(path, "python")):
            try:
                exec(compile(block, f"{path.relative_to(ROOT)}[python block {i}]", "exec"), ns)
            except Exception as exc:  # noqa: BLE001 - say which block failed, then fail
                pytest.fail(f"{path.relative_to(ROOT)} python block {i} failed: {type(exc).__name__}: {exc}\n{block}")
        for cmd in commands(path):
            code = main(shlex.split(cmd)[1:])
            assert code == 0, f"{path.relative_to(ROOT)}: `{cmd}` exited {code}"
