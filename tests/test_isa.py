"""Instruction sets: one set of level names, one cap (``QCORE_ISA``), one level for every kernel extension.

The level belongs to the kernel (``kernel.isas()``, ``kernel.isa``, ``kernel.set_isa``, qcore/isa.py).  Under
each cap, run in a fresh process, every extension of the ``cython`` kernel reports the same level, and runs
the best copy it has at or below it — never one above the cap.  The CPU's best level is read independently
from ``/proc/cpuinfo``.  A mistyped value is a clear error naming the valid values — at the first registry use
and when an extension is imported directly — never a ``cython`` kernel silently left out.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import qcore
import qcore_plugins
from isa_levels import KERNEL, at_level
from qcore import isa
from qcore_plugins import _gemm, _lowbit, _quant
from qcore_plugins.kernels import cython_kernel

NAMES = ("baseline", "avx2", "avx512", "avx512vnni")


def _env(**values):
    env = {k: v for k, v in os.environ.items() if k not in ("QCORE_ISA", "QCORE_GEMM_ISA")}
    env.update(values)
    return env


def _run(code, **values):
    return subprocess.run([sys.executable, "-c", code], env=_env(**values), capture_output=True, text=True,
                          timeout=120)


def _extension_names():
    """Every compiled extension module of qcore_plugins (``_quant``, ``_gemm``, ...), from the files installed."""
    folder = pathlib.Path(qcore_plugins.__file__).parent
    return sorted({p.name.split(".")[0] for p in folder.iterdir() if p.name.startswith("_") and p.suffix in (".so", ".pyd")})


def _cpu_best():
    """The best level of this CPU from the kernel's own flags list (Linux), independent of the C detection."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return _quant.ISA.cpu
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.split(":", 1)[-1].split())
    best = "baseline"
    if {"avx2", "fma", "f16c"} <= flags:
        best = "avx2"
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            best = "avx512"
            if "avx512_vnni" in flags:
                best = "avx512vnni"
    return best


_REPORT = """
import importlib, json, qcore
kernel = qcore.get_kernel("cython")
mods = {n: importlib.import_module("qcore_plugins." + n) for n in %r}
print(json.dumps({"kernel": [kernel.isa, kernel.isas()],
                  "ext": {n: [m.ISA.level, m.ISA.copy, list(m.ISA.copies)] for n, m in mods.items()}}))
"""


def _report(**values):
    out = _run(_REPORT % (_extension_names(),), **values)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_names_are_one_set():
    assert isa.ISA_NAMES == NAMES
    for m in cython_kernel.EXTENSIONS:
        assert set(m.ISA.copies) <= set(NAMES) and m.ISA.copies[0] == "baseline"
    assert _quant.ISA.cpu == _cpu_best()


def test_every_extension_is_switched_by_the_kernel():
    """A new extension without a Switch, or left out of the kernel's list, fails here."""
    names = _extension_names()
    assert {"_quant", "_codebook", "_hist", "_scalesearch", "_gemm", "_lowbit", "_conv"} <= set(names)
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in cython_kernel.EXTENSIONS) == names


@pytest.mark.parametrize("cap", [None, *NAMES])
def test_every_extension_reports_the_same_level_under_each_cap(cap):
    best = _cpu_best()
    want = best if cap is None else NAMES[min(NAMES.index(cap), NAMES.index(best))]
    got = _report() if cap is None else _report(QCORE_ISA=cap)
    assert got["kernel"] == [want, list(reversed(NAMES[: NAMES.index(want) + 1]))]
    for name, (level, copy, copies) in got["ext"].items():
        assert level == want, name
        # the best copy at or below the level: never above the cap
        assert copy == max((c for c in copies if NAMES.index(c) <= NAMES.index(want)), key=NAMES.index), name
    if cap == "avx512" and best == "avx512vnni":
        # the int8 and low-bit GEMMs have no plain AVX-512 copy: they run AVX2, not the VNNI copy above the cap
        assert got["ext"]["_lowbit"][1] == got["ext"]["_gemm"][1] == got["ext"]["_conv"][1] == "avx2"
        assert got["ext"]["_quant"][1] == got["ext"]["_hist"][1] == "avx512"


def test_set_isa_switches_every_extension_together():
    levels = KERNEL.isas()
    assert levels == isa.usable(_quant.ISA.cpu) and KERNEL.isa == levels[0]
    for level in levels:
        with at_level(level):
            assert KERNEL.isa == level and qcore.get_kernel().isa == level
            for m in cython_kernel.EXTENSIONS:
                assert m.ISA.level == level and m.ISA.copy == m.ISA.copy_for(level)
    assert all(m.ISA.level == levels[0] for m in cython_kernel.EXTENSIONS)  # restored


def test_results_do_not_depend_on_the_level():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 320)).astype(np.float32)
    w = qcore.quantize(rng.standard_normal((48, 320)).astype(np.float32), "linear", bits=4, symmetric=True,
                       granularity="group", group_size=32)
    qt = {}
    for level in KERNEL.isas():
        with at_level(level):
            q = qcore.quantize(x, "linear", bits=8, granularity="channel", axis=0)
            qt[level] = (q.codes, q.params["scale"], qcore.ops.qlinear(x[:3], w))
    first = qt[KERNEL.isas()[0]]
    for codes, scale, y in qt.values():
        np.testing.assert_array_equal(codes, first[0])
        np.testing.assert_array_equal(scale, first[1])
        np.testing.assert_allclose(y, first[2], rtol=1e-5, atol=1e-5)


def test_set_isa_refuses_bad_levels():
    with pytest.raises(ValueError, match="unknown instruction-set level 'sse9'.*baseline, avx2, avx512, avx512vnni"):
        KERNEL.set_isa("sse9")
    with pytest.raises(ValueError, match="unknown instruction-set level 'portable'"):
        KERNEL.set_isa("portable")  # one set of names: the old GEMM name is gone from the kernel API
    with pytest.raises(TypeError, match="must be a str"):
        KERNEL.set_isa(2)
    assert KERNEL.isa == KERNEL.isas()[0]  # nothing switched


def test_nothing_switches_above_the_cap():
    code = """
import numpy as np, qcore
from qcore_plugins import _gemm, _lowbit
k = qcore.get_kernel()
for call in (lambda: k.set_isa("avx512"), lambda: _lowbit.ISA.set("avx512vnni"),
             lambda: _gemm.pack_b(np.ones((2, 4), np.int8), "avx512vnni")):
    try:
        call()
    except ValueError as e:
        print("refused:", e)
print(k.isa, _lowbit.ISA.copy, _gemm.ISA.copy)
"""
    out = _run(code, QCORE_ISA="avx2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    want = "avx2" if NAMES.index(_cpu_best()) >= 1 else "baseline"
    assert lines[-1].split() == [want] * 3
    assert len(lines) == 4 and all("above the cap QCORE_ISA='avx2'" in ln for ln in lines[:3]), lines


def test_a_level_the_cpu_lacks_is_refused():
    above = NAMES[NAMES.index(_quant.ISA.cpu) + 1:]
    for level in above:  # empty on a CPU with every level
        with pytest.raises(ValueError, match="cannot run"):
            KERNEL.set_isa(level)


def test_a_mistyped_value_is_an_error_naming_the_valid_ones():
    for code in ("import qcore; qcore.list_kernels()", "import qcore; qcore.quantize([1.0, 2.0])",
                 "from qcore_plugins import _quant", "from qcore_plugins import _lowbit",
                 "import qcore; qcore.get_kernel().isas()"):
        out = _run(code, QCORE_ISA="avx3")
        assert out.returncode != 0, f"{code!r} ran with QCORE_ISA=avx3"
        assert "QCORE_ISA='avx3'" in out.stderr and "baseline, avx2, avx512, avx512vnni" in out.stderr
    # the cython kernel is never silently replaced by the numpy reference
    out = _run("import qcore; k = qcore.get_kernel(); print(k.name, k.isa)", QCORE_ISA="AVX2 ")
    assert out.returncode == 0 and out.stdout.split()[0] == "cython"  # case and spaces do not matter
    assert out.stdout.split()[1] in ("avx2", "baseline")


def test_the_old_gemm_variable_is_a_deprecated_cap_for_every_extension():
    got = _report(QCORE_GEMM_ISA="portable")
    assert got["kernel"][0] == "baseline" and {v[1] for v in got["ext"].values()} == {"baseline"}
    assert _report(QCORE_GEMM_ISA="avx512vnni", QCORE_ISA="baseline")["kernel"][0] == "baseline"  # QCORE_ISA wins
    out = _run("import warnings; warnings.simplefilter('always'); import qcore; qcore.get_kernel()",
               QCORE_GEMM_ISA="avx2")
    assert out.returncode == 0 and "DeprecationWarning" in out.stderr and "QCORE_GEMM_ISA" in out.stderr
    out = _run("import qcore; qcore.list_kernels()", QCORE_GEMM_ISA="nonsense")
    assert out.returncode != 0 and "QCORE_GEMM_ISA='nonsense'" in out.stderr


def test_the_old_ops_functions_are_deprecated_aliases_of_the_kernel():
    ops = qcore.ops
    with pytest.warns(DeprecationWarning, match=r"get_kernel\(\).isas\(\)"):
        assert ops.available_isas() == KERNEL.isas()
    with pytest.warns(DeprecationWarning):
        assert ops.lowbit_isas() == KERNEL.isas()
    before = KERNEL.isa
    try:
        with pytest.warns(DeprecationWarning, match="set_gemm_isa"):
            ops.set_gemm_isa("portable")  # the old name of baseline
        assert KERNEL.isa == "baseline" and _lowbit.ISA.copy == _gemm.ISA.copy == "baseline"
        with pytest.warns(DeprecationWarning):
            assert ops.gemm_isa() == ops.lowbit_isa() == "baseline"
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="sse9"):
            ops.set_lowbit_isa("sse9")
    finally:
        KERNEL.set_isa(before)


def test_the_base_kernel_runs_baseline_only():
    class Plain(qcore.Kernel):
        name = "plain"

    k = Plain()
    assert k.isas() == ["baseline"] and k.isa == "baseline"
    k.set_isa("baseline")
    with pytest.raises(ValueError, match="kernel 'plain' cannot run instruction-set level 'avx2' here"):
        k.set_isa("avx2")
    assert qcore.get_kernel("numpy").isas() == ["baseline"]


def test_selector_in_process(monkeypatch):
    monkeypatch.delenv("QCORE_GEMM_ISA", raising=False)
    monkeypatch.delenv("QCORE_ISA", raising=False)
    assert isa.cap() == "avx512vnni" and isa.usable("avx2") == ["avx2", "baseline"]
    monkeypatch.setenv("QCORE_ISA", " AVX512 ")
    assert isa.cap() == "avx512" and isa.usable("avx512vnni") == ["avx512", "avx2", "baseline"]
    used = []
    sw = isa.Switch(("baseline", "avx2", "avx512vnni"), 3, lambda i: used.append(i) or i)
    assert (sw.level, sw.copy, used) == ("avx512", "avx2", [1])  # the best copy not above the level
    assert sw.set("baseline") == "baseline" and used[-1] == 0
    with pytest.raises(ValueError, match="above the cap QCORE_ISA='avx512'"):
        sw.set("avx512vnni")
    clipped = isa.Switch(("baseline", "avx2"), 1, lambda i: 0)  # the C side reports the copy it really runs
    assert (clipped.level, clipped.copy) == ("avx2", "baseline")
    with pytest.raises(ValueError, match="lowest first"):
        isa.Switch(("avx2", "baseline"), 3, lambda i: i)
    monkeypatch.setenv("QCORE_ISA", "nope")
    with pytest.raises(ValueError, match="QCORE_ISA='nope'"):
        isa.check()
    monkeypatch.delenv("QCORE_ISA")
    monkeypatch.setenv("QCORE_GEMM_ISA", "portable")
    with pytest.warns(DeprecationWarning, match="QCORE_GEMM_ISA"):
        assert isa.cap() == "baseline"
