"""Plugins as users get them: real distributions installed by pip, found through importlib.metadata.

A session fixture builds small throwaway distributions — a good one, one that fails to import, one whose hook
raises, one claiming the good one's scheme name — plus ``examples/qcore-plugin-example``, and installs them
with ``pip install --no-deps --no-build-isolation --no-index --target TMP`` (offline, never into this
environment).  Each scenario then runs in a subprocess with ``PYTHONPATH=TMP`` and the ``QCORE_*`` variables
it is about, and checks the documented outcome (docs/plugins.md, "Loading rules").
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qcore

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "qcore-plugin-example"

GOOD = '''
import numpy as np
import qcore


class GoodSign(qcore.Quantizer):
    """1-bit sign codes scaled by mean |x|."""
    name = "goodsign"
    signed = True
    bits_range = (1, 1)

    def fit(self, x):
        return {"alpha": np.array([np.abs(x).mean() if x.size else 1.0], np.float32)}

    def encode(self, x, params):
        return np.where(x >= 0, 0, -1).astype(np.int8)

    def decode(self, codes, params):
        return (params["alpha"][0] * (2 * codes.astype(np.float32) + 1)).astype(np.float32)


@qcore.hookimpl
def qcore_quantizers():
    return [GoodSign]
'''

DISTRIBUTIONS = {
    # distribution: (module, version, module source)
    "qcore-good": ("qcore_good", "1.2.0", GOOD),
    "qcore-broken": ("qcore_broken", "0.3.0", "import a_dependency_that_is_not_installed_xyz\n"),
    "qcore-raises": ("qcore_raises", "2.0.1", textwrap.dedent('''
        import qcore

        @qcore.hookimpl
        def qcore_quantizers():
            raise RuntimeError("boom from qcore-raises")
    ''')),
    "qcore-dup": ("qcore_dup", "0.9.0", GOOD.replace("GoodSign", "OtherSign")),
    "qcore-typo": ("qcore_typo", "0.0.1", textwrap.dedent('''
        import qcore

        @qcore.hookimpl
        def qcore_quantizer():  # the spec is qcore_quantizers
            return []
    ''')),
}


def _write_dist(base: pathlib.Path, dist: str, module: str, version: str, source: str) -> pathlib.Path:
    d = base / dist
    (d / module).mkdir(parents=True)
    (d / module / "__init__.py").write_text(source)
    (d / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"

        [project.entry-points.qcore]
        {module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    '''))
    return d


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """A directory holding the installed throwaway distributions and the example plugin (pip --target)."""
    try:
        import setuptools  # noqa: F401 - the build backend pip uses with --no-build-isolation
    except ImportError:  # pragma: no cover
        pytest.skip("setuptools is needed to build the test distributions offline")
    base = tmp_path_factory.mktemp("dists")
    target = tmp_path_factory.mktemp("site")
    srcs = [_write_dist(base, dist, *spec) for dist, spec in DISTRIBUTIONS.items()]
    # build from a copy: the build would leave build/ and *.egg-info in the source tree
    import shutil

    example = base / "qcore-plugin-example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(target)] + [str(p) for p in srcs + [example]]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=base, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert out.returncode == 0, f"pip install failed:\n{out.stdout}\n{out.stderr}"
    return target


def run(site, code: str, env: dict[str, str] | None = None, args=None, cwd=None) -> subprocess.CompletedProcess:
    """Run Python ``code`` (or ``python -m qcore ARGS``) with the installed distributions on the path."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("QCORE_")}
    full["PYTHONPATH"] = os.pathsep.join([str(site)] + ([full["PYTHONPATH"]] if full.get("PYTHONPATH") else []))
    full.update(env or {})
    argv = [sys.executable] + (["-m", "qcore"] + list(args) if args is not None else ["-c", code])
    return subprocess.run(argv, capture_output=True, text=True, env=full, cwd=cwd or ROOT, timeout=120)


PROBE = '''
import json, warnings
import qcore
warnings.simplefilter("always")
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        out["schemes"] = qcore.list_schemes()
        out["observers"] = qcore.list_observers()
        out["plugins"] = [r.as_dict() for r in qcore.plugins(all=False)]
    except Exception as exc:
        out["error"] = [type(exc).__name__, str(exc)]
out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
print(json.dumps(out))
'''


def probe(site, **env) -> dict:
    res = run(site, PROBE, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])




# -- loading rules ------------------------------------------------------------------------------------------
def test_good_plugin_is_found_and_usable(site):
    out = probe(site, QCORE_LOAD_PLUGINS="qcore-good")
    assert "error" not in out and out["warnings"] == []
    assert "goodsign" in out["schemes"] and "linear" in out["schemes"] and "nf4" not in out["schemes"]
    [rec] = out["plugins"]
    assert rec["distribution"] == "qcore-good" and rec["version"] == "1.2.0" and rec["schemes"] == ["goodsign"]
    assert rec["hooks"] == ["qcore_quantizers"] and rec["builtin"] is False
    res = run(site, "import qcore; print(qcore.quantize([1.0, -3.0, 2.0], 'goodsign', bits=1).dequantize().tolist())",
              env={"QCORE_LOAD_PLUGINS": "qcore-good"})
    assert res.returncode == 0 and res.stdout.strip() == "[2.0, -2.0, 2.0]", res.stderr


def test_plugin_failing_to_import_warns_and_is_skipped(site):
    out = probe(site, QCORE_LOAD_PLUGINS="qcore-good,qcore-broken")
    assert "error" not in out
    assert "goodsign" in out["schemes"]
    [w] = out["warnings"]
    assert w.startswith("PluginWarning: ") and "\n" not in w
    assert "qcore-broken 0.3.0" in w and "failed to import" in w and "a_dependency_that_is_not_installed_xyz" in w
    assert [r["distribution"] for r in out["plugins"]] == ["qcore-good"]


def test_plugin_whose_hook_raises_warns_and_is_skipped(site):
    out = probe(site, QCORE_LOAD_PLUGINS="qcore-good,qcore-raises")
    assert "error" not in out and "goodsign" in out["schemes"]
    [w] = out["warnings"]
    assert "qcore-raises 2.0.1" in w and "qcore_quantizers raised RuntimeError: boom from qcore-raises" in w


def test_misspelled_hook_warns_and_is_skipped(site):
    out = probe(site, QCORE_LOAD_PLUGINS="qcore-good,qcore-typo")
    assert "error" not in out and "goodsign" in out["schemes"]
    [w] = out["warnings"]
    assert "qcore-typo 0.0.1" in w and "qcore_quantizer" in w
    assert [r["distribution"] for r in out["plugins"]] == ["qcore-good"]


@pytest.mark.parametrize("bad, needle", [("qcore-broken", "qcore-broken 0.3.0"), ("qcore-raises", "qcore-raises 2.0.1"),
                                         ("qcore-typo", "qcore-typo 0.0.1")])
def test_strict_mode_makes_failures_errors(site, bad, needle):
    out = probe(site, QCORE_LOAD_PLUGINS=f"qcore-good,{bad}", QCORE_STRICT_PLUGINS="1")
    assert out["error"][0] == "PluginError" and needle in out["error"][1]
    res = run(site, "", env={"QCORE_LOAD_PLUGINS": f"qcore-good,{bad}", "QCORE_STRICT_PLUGINS": "1"}, args=["plugins"])
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_duplicate_scheme_name_is_an_error_naming_both_distributions(site):
    out = probe(site)  # everything installed loads: the duplicate stops it
    assert out["error"][0] == "PluginError"
    msg = out["error"][1]
    assert "'goodsign'" in msg and "qcore-good" in msg and "qcore-dup" in msg
    res = run(site, "", args=["plugins"])
    assert res.returncode == 2 and "qcore-good" in res.stderr and "qcore-dup" in res.stderr
    lines = res.stderr.strip().splitlines()  # one line per skipped plugin, then the error
    assert all(ln.startswith("qcore: warning: ") for ln in lines[:-1]) and lines[-1].startswith("qcore: error: ")
    assert "qcore-dup" in lines[-1] and "Traceback" not in res.stderr


def test_deny_list_resolves_the_collision(site):
    out = probe(site, QCORE_DISABLE_PLUGINS="qcore-dup, qcore_Broken,qcore-raises,QCORE.TYPO")
    assert "error" not in out and out["warnings"] == []
    assert {r["distribution"] for r in out["plugins"]} == {"qcore-good", "qcore-plugin-example"}
    assert {"goodsign", "nf4"} <= set(out["schemes"]) and "nsigma" in out["observers"]


def test_allow_list_empty_means_builtins_only(site):
    out = probe(site, QCORE_LOAD_PLUGINS="")
    assert "error" not in out and out["warnings"] == [] and out["plugins"] == []
    assert "linear" in out["schemes"] and "goodsign" not in out["schemes"] and "nf4" not in out["schemes"]


def test_allow_and_deny_together(site):
    # the deny-list wins over the allow-list
    out = probe(site, QCORE_LOAD_PLUGINS="qcore-good,qcore-dup", QCORE_DISABLE_PLUGINS="qcore-dup")
    assert "error" not in out and [r["distribution"] for r in out["plugins"]] == ["qcore-good"]


def test_loading_is_lazy(site):
    code = ("import sys, qcore\n"
            "print('qcore_good' in sys.modules, 'qcore_nf4' in sys.modules)\n"
            "qcore.list_schemes()\n"
            "print('qcore_good' in sys.modules, 'qcore_nf4' in sys.modules)\n")
    res = run(site, code, env={"QCORE_DISABLE_PLUGINS": "qcore-dup,qcore-broken,qcore-raises,qcore-typo"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "True", "True"]


# -- the `qcore plugins` command ---------------------------------------------------------------------------
def test_cli_plugins_lists_third_party_with_versions_and_names(site):
    env = {"QCORE_DISABLE_PLUGINS": "qcore-dup,qcore-typo"}
    res = run(site, "", env=env, args=["plugins"])
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "qcore-good" in text and "1.2.0" in text and "goodsign" in text
    assert "qcore-plugin-example" in text and "0.1.0" in text and "nf4" in text and "nsigma" in text
    assert "linear" not in text  # built-ins hidden without --all
    # skipped plugins are reported, one line each, on stderr
    warn_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(warn_lines) == 2 and any("qcore-broken 0.3.0" in ln for ln in warn_lines) and any("qcore-raises 2.0.1" in ln for ln in warn_lines)

    res = run(site, "", env=env, args=["plugins", "--all"])
    assert res.returncode == 0 and "linear" in res.stdout and "qcore-good" in res.stdout and "(built-in)" in res.stdout

    res = run(site, "", env=env, args=["plugins", "--json"])
    assert res.returncode == 0, res.stderr
    records = {r["distribution"]: r for r in json.loads(res.stdout)}
    assert set(records) == {"qcore-good", "qcore-plugin-example"}
    ex = records["qcore-plugin-example"]
    assert ex["version"] == "0.1.0" and ex["schemes"] == ["nf4"] and ex["observers"] == ["nsigma"]
    assert sorted(ex["hooks"]) == ["qcore_observers", "qcore_quantizers"] and ex["builtin"] is False

    res = run(site, "", env=env, args=["plugins", "--json", "--all"])
    dists = [r["distribution"] for r in json.loads(res.stdout)]
    assert "qcore" in dists and "qcore-good" in dists


def test_cli_plugins_with_no_third_party(site):
    res = run(site, "", env={"QCORE_LOAD_PLUGINS": ""}, args=["plugins"])
    assert res.returncode == 0 and "no third-party plugins" in res.stdout
    res = run(site, "", env={"QCORE_LOAD_PLUGINS": ""}, args=["plugins", "--json"])
    assert res.returncode == 0 and json.loads(res.stdout) == []


# -- the example package, installed ----------------------------------------------------------------------------
EXAMPLE_ENV = {"QCORE_LOAD_PLUGINS": "qcore-plugin-example"}


def test_example_usable_by_name(site):
    code = textwrap.dedent('''
        import numpy as np, qcore
        w = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
        qt = qcore.quantize(w, "nf4")
        assert qt.scheme == "nf4" and qt.codes.max() <= 15 and qt.params["absmax"].shape == (64, 4)
        err = float(np.mean((qt.dequantize() - w) ** 2))
        q = qcore.get_quantizer("linear", bits=8, observer="nsigma")
        q.observe(w)
        print(err, q.quantize(w).scheme)
    ''')
    res = run(site, code, env=EXAMPLE_ENV)
    assert res.returncode == 0, res.stderr
    err, scheme = res.stdout.split()
    assert float(err) < 0.02 and scheme == "linear"


def test_example_test_suite_passes_installed(site):
    """The example's own tests (qcore.testing + public API only) pass against the installed package."""
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True, text=True, cwd=site, timeout=300,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("QCORE_")},
             "PYTHONPATH": str(site), **EXAMPLE_ENV},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last
    # installed, with the model layer present: nothing is skipped (the entry-point test runs)
    assert "skipped" not in last, res.stdout[-2000:]


def test_example_scheme_in_a_model_file(site, tmp_path):
    assert hasattr(qcore, "quantize_model")  # a built-in: its absence is a failure, never a skip
    code = textwrap.dedent(f'''
        import numpy as np, qcore
        rng = np.random.default_rng(0)
        tensors = {{"a.weight": rng.normal(size=(32, 128)).astype(np.float32),
                    "b.weight": rng.normal(size=(16, 64)).astype(np.float32)}}
        qm = qcore.quantize_model(tensors, scheme="nf4", progress=False)
        qm.save({str(tmp_path / "api.safetensors")!r})
        back = qcore.load_quantized({str(tmp_path / "api.safetensors")!r})
        a, b = qm.dequantize(), back.dequantize()
        assert all(np.array_equal(a[k], b[k]) for k in a)
        print(sorted(r["scheme"] for r in back.report()))
    ''')
    res = run(site, code, env=EXAMPLE_ENV)
    assert res.returncode == 0, res.stderr
    assert "nf4" in res.stdout
    # a file needing nf4 without the plugin: SchemeNotFound naming what it needs
    code = (f"import qcore\ntry:\n    qcore.load_quantized({str(tmp_path / 'api.safetensors')!r}).dequantize()\n"
            f"except qcore.SchemeNotFound as e:\n    print('NOTFOUND', e)\n")
    res = run(site, code, env={"QCORE_LOAD_PLUGINS": ""})
    assert res.returncode == 0 and "NOTFOUND" in res.stdout and "nf4" in res.stdout, res.stdout + res.stderr
    assert "qcore-plugin-example" in res.stdout  # the file says which plugin it needs


def test_example_scheme_from_the_command_line(site, tmp_path):
    from qcore.cli.main import build_parser

    assert "quantize" in build_parser()._subparsers._group_actions[0].choices  # a built-in command: never skipped
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    src = tmp_path / "model.safetensors"
    save_file({"l1.weight": rng.normal(size=(32, 128)).astype(np.float32),
               "l2.weight": rng.normal(size=(8, 64)).astype(np.float32)}, str(src))
    out = tmp_path / "model.nf4.safetensors"
    res = run(site, "", env=EXAMPLE_ENV, args=["quantize", str(src), "-o", str(out), "--scheme", "nf4", "--quiet"])
    if res.returncode != 0 and "--quiet" in res.stderr:
        res = run(site, "", env=EXAMPLE_ENV, args=["quantize", str(src), "-o", str(out), "--scheme", "nf4"])
    assert res.returncode == 0, res.stderr
    code = textwrap.dedent(f'''
        import numpy as np, qcore
        qm = qcore.load_quantized({str(out)!r})
        print(sorted({{r["scheme"] for r in qm.report()}}), sorted(qm.dequantize()))
    ''')
    res = run(site, code, env=EXAMPLE_ENV)
    assert res.returncode == 0, res.stderr
    assert "['nf4']" in res.stdout and "l1.weight" in res.stdout
    res = run(site, "", env=EXAMPLE_ENV, args=["inspect", str(out)])
    assert res.returncode == 0 and "nf4" in res.stdout, res.stderr


def test_pytest_fixture_keeps_installed_plugins_out(site, tmp_path):
    """With every broken and duplicate plugin installed, a test using the qcore_plugins fixture still sees the
    built-ins only (third-party autoload off) plus what it registers."""
    (tmp_path / "test_isolated.py").write_text(textwrap.dedent('''
        import numpy as np
        import qcore
        from qcore_nf4 import plugin

        def test_builtins_only(qcore_plugins):
            names = qcore.list_schemes()
            assert "linear" in names and "goodsign" not in names and "nf4" not in names
            qcore_plugins.register(plugin)
            assert qcore.quantize(np.ones((2, 64), np.float32), "nf4").scheme == "nf4"

        def test_default_registry_sees_the_duplicate():
            import pytest
            with pytest.raises(qcore.PluginError, match="qcore-dup"):
                qcore.list_schemes()
    '''))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QCORE_")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 passed" in res.stdout
