"""One instruction-set variable, ``QCORE_ISA``, with one set of values for every kernel extension (qcore/isa.py).

A mistyped value is a clear error naming the valid values — at the first registry use and when an extension
is imported directly — never a ``cython`` kernel silently left out in favour of the numpy reference.
"""
import os
import subprocess
import sys

import pytest

from qcore import isa
from qcore_plugins import _codebook, _gemm, _hist, _quant

EXTENSIONS = {"_quant": "current_isa", "_codebook": "current_isa", "_hist": "current_isa", "_gemm": "get_isa"}


def _env(**values):
    env = {k: v for k, v in os.environ.items() if k not in ("QCORE_ISA", "QCORE_GEMM_ISA")}
    env.update(values)
    return env


def _run(code, **values):
    return subprocess.run([sys.executable, "-c", code], env=_env(**values), capture_output=True, text=True)


def _in_use(**values):
    code = "import json\nfrom qcore_plugins import _quant, _codebook, _hist, _gemm\n" + (
        "print(json.dumps({m: getattr(globals()[m], f)() for m, f in %r.items()}))" % EXTENSIONS)
    out = _run(code, **values)
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout)


def _best(variants, cpu_ok, ceiling):
    return max((v for v, ok in zip(variants, cpu_ok) if ok and isa.ISA_NAMES.index(v) <= isa.ISA_NAMES.index(ceiling)),
               key=isa.ISA_NAMES.index)


def test_every_extension_follows_one_variable():
    quant = ("baseline", "avx2", "avx512")
    quant_ok = [v in quant[: quant.index(_quant.cpu_isa()) + 1] for v in quant]
    gemm = ("baseline", "avx2", "avx512vnni")
    gemm_ok = [v in _gemm.available_isas() for v in gemm]
    for level in isa.ISA_NAMES:
        got = _in_use(QCORE_ISA=level)
        assert got["_quant"] == got["_codebook"] == got["_hist"] == _best(quant, quant_ok, level)
        assert got["_gemm"] == _best(gemm, gemm_ok, level)
    best = _in_use()
    assert best["_quant"] == _quant.cpu_isa() and best["_hist"] == _hist.cpu_isa()
    assert best["_gemm"] == _gemm.available_isas()[0]


def test_a_mistyped_value_is_an_error_naming_the_valid_ones():
    for code in ("import qcore; qcore.list_kernels()", "import qcore; qcore.quantize([1.0, 2.0])",
                 "from qcore_plugins import _quant", "import qcore.ops as o; o.gemm_isa()"):
        out = _run(code, QCORE_ISA="avx3")
        assert out.returncode != 0, f"{code!r} ran with QCORE_ISA=avx3"
        assert "QCORE_ISA='avx3'" in out.stderr and "baseline, avx2, avx512, avx512vnni" in out.stderr
    # the cython kernel is never silently replaced by the numpy reference
    out = _run("import qcore; print(qcore.get_kernel().name)", QCORE_ISA="AVX2 ")
    assert out.returncode == 0 and out.stdout.strip() == "cython"  # case and spaces do not matter


def test_the_old_gemm_variable_reaches_only_the_gemm():
    got = _in_use(QCORE_GEMM_ISA="portable")
    assert got["_gemm"] == "baseline" and got["_quant"] == _quant.cpu_isa()
    assert _in_use(QCORE_GEMM_ISA="avx2", QCORE_ISA="baseline")["_gemm"] == "baseline"  # QCORE_ISA wins
    out = _run("import qcore; qcore.list_kernels()", QCORE_GEMM_ISA="nonsense")
    assert out.returncode != 0 and "QCORE_GEMM_ISA='nonsense'" in out.stderr


def test_requested_in_process(monkeypatch):
    monkeypatch.delenv("QCORE_GEMM_ISA", raising=False)
    monkeypatch.setenv("QCORE_ISA", "avx2")
    assert isa.requested() == "avx2" and isa.choose(("baseline", "avx2", "avx512"), [True, True, True]) == 1
    assert isa.choose(("baseline", "avx512vnni"), [True, True]) == 0  # no copy at or below avx2 but baseline
    monkeypatch.setenv("QCORE_ISA", "nope")
    with pytest.raises(ValueError, match="QCORE_ISA='nope'"):
        isa.check()
    monkeypatch.delenv("QCORE_ISA")
    monkeypatch.setenv("QCORE_GEMM_ISA", "portable")
    assert isa.requested() is None  # the old variable is the GEMM's only
    with pytest.warns(DeprecationWarning, match="QCORE_GEMM_ISA"):
        assert isa.requested(gemm=True) == "baseline"
