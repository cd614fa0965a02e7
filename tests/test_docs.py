"""docs/plugins.md stays true: every hook spec, environment variable and conformance check is documented,
and its runnable examples run."""
from __future__ import annotations

import inspect
import pathlib
import re

import numpy as np
import pytest

import qcore
from qcore.plugin import hookspecs
from qcore.testing import KERNEL_CHECKS, OBSERVER_CHECKS, PLANNER_CHECKS, QUANTIZER_CHECKS

DOC = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")


def _hookspecs():
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if getattr(fn, f"{hookspecs.PROJECT_NAME}_spec", None) is not None]


def test_there_are_hookspecs():
    assert set(_hookspecs()) >= {"qcore_quantizers", "qcore_observers", "qcore_kernels"}


@pytest.mark.parametrize("hook", _hookspecs())
def test_every_hookspec_is_documented(hook):
    assert re.search(rf"^### `{hook}`$", DOC, re.M), f"docs/plugins.md has no '### `{hook}`' section"
    section = DOC.split(f"### `{hook}`", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert f"def {hook}(" in section, f"the {hook} section shows no signature"
    ret = inspect.signature(getattr(hookspecs, hook)).return_annotation
    kind = re.search(r"type\[(\w+)\]", str(ret)).group(1)
    assert f"qcore.{kind}" in section, f"the {hook} section does not say it returns qcore.{kind} subclasses"
    assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring in hookspecs.py"


@pytest.mark.parametrize("var", ["QCORE_LOAD_PLUGINS", "QCORE_DISABLE_PLUGINS", "QCORE_STRICT_PLUGINS"])
def test_environment_variables_are_documented(var):
    assert re.search(rf"^\| `{var}` \|", DOC, re.M), f"{var} is missing from the environment-variable table"


@pytest.mark.parametrize("check", [f.__name__ for f in QUANTIZER_CHECKS + OBSERVER_CHECKS + KERNEL_CHECKS + PLANNER_CHECKS])
def test_every_conformance_check_is_documented(check):
    assert f"`{check}`" in DOC


def test_documented_sections_exist():
    for heading in ("Hooks", "The subclass contracts", "Options and file round trips", "The conformance kit",
                    "Packaging", "Loading rules", "Call order", "Name collisions", "Environment variables"):
        assert re.search(rf"^## {heading}$", DOC, re.M), heading


def test_runnable_examples_run():
    """The ```python blocks run in order in one namespace (```py blocks are fragments)."""
    from qcore.testing import isolated_plugins

    blocks = re.findall(r"^```python\n(.*?)^```", DOC, re.S | re.M)
    assert len(blocks) >= 2
    ns: dict = {}
    with isolated_plugins():
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/plugins.md[python block {i}]", "exec"), ns)
    assert "pow2" not in qcore.list_schemes()  # the example registered it for its with-block only
    assert ns["qt"].scheme == "pow2"
    # the scheme of the guide is shift-friendly: every scale is a power of two
    s = ns["qt"].params["scale"]
    assert np.all(np.exp2(np.round(np.log2(s))) == s)


def test_example_package_is_linked_and_matches():
    assert "examples/qcore-plugin-example" in DOC
    pyproject = (pathlib.Path(__file__).resolve().parents[1] / "examples" / "qcore-plugin-example" / "pyproject.toml").read_text()
    assert "[project.entry-points.qcore]" in pyproject and "[project.entry-points.qcore]" in DOC
