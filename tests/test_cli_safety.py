"""The command line never hurts its user: every mistake is one 'qcore: error:' line, exit status 2, before any
work starts and with nothing written; inputs in all forms (files, HF folders, shards) and dtypes kept."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import qcore
from qcore.cli.main import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    t = {"layer0.weight": rng.standard_normal((32, 64)).astype(np.float32),
         "layer0.bias": rng.standard_normal(32).astype(np.float32),
         "layer1.weight": rng.standard_normal((16, 32)).astype(np.float32)}
    d = tmp_path_factory.mktemp("safety")
    p = d / "model.safetensors"
    save_file(t, str(p))
    return p


@pytest.fixture
def watch(monkeypatch):
    """Records whether any quantization work started."""
    import qcore.model.quantize as mq

    calls = []
    real = mq.quantize_model
    monkeypatch.setattr(mq, "quantize_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    import qcore.model as m

    monkeypatch.setattr(m, "quantize_model", mq.quantize_model)
    return calls


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("qcore: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_output_equal_to_input_is_refused_also_through_links(model, tmp_path, capsys, watch):
    before = model.read_bytes()
    sym = tmp_path / "sym.safetensors"
    sym.symlink_to(model)
    hard = tmp_path / "hard.safetensors"
    os.link(model, hard)
    for out in (model, sym, hard):
        code, _, err = run(capsys, "quantize", model, "-o", out)
        one_line_error(code, err, "input")
    qfile = tmp_path / "q.safetensors"
    assert run(capsys, "quantize", model, "-o", qfile, "--quiet")[0] == 0
    qbytes = qfile.read_bytes()
    code, _, err = run(capsys, "dequantize", qfile, "-o", qfile)
    one_line_error(code, err, "input")
    link = tmp_path / "qlink.safetensors"
    link.symlink_to(qfile)
    code, _, err = run(capsys, "dequantize", qfile, "-o", link)
    one_line_error(code, err, "input")
    assert model.read_bytes() == before and qfile.read_bytes() == qbytes
    assert len(watch) == 1  # only the good run did any work


@pytest.mark.parametrize("argv,words", [
    (["--scheme", "mixed", "--budget-bits", "4.5", "--target-sqnr", "20"], ["--budget-bits and --target-sqnr"]),
    (["--budget-bits", "4"], ["--budget-bits", "mixed"]),
    (["--target-sqnr", "20"], ["--target-sqnr", "mixed"]),
    (["--scheme", "kmeans", "--candidates", "linear:4:channel"], ["--candidates", "kmeans"]),
    (["--group-size", "32"], ["--group-size", "--granularity group"]),
    (["--granularity", "channel", "--group-size", "32"], ["--group-size", "channel"]),
    (["--granularity", "tensor", "--axis", "1"], ["--axis"]),
    (["--scheme", "mixed", "--candidates", "linear:4:chanel"], ["linear:4:chanel", "granularity"]),
    (["--scheme", "mixed", "--candidates", "lienar:4"], ["lienar:4"]),
    (["--include", "layer9.*"], ["layer9.*", "no tensor"]),
    (["--exclude", "nothing*"], ["nothing*", "no tensor"]),
    (["--scheme", "nope"], ["nope"]),
    (["--scheme", "kmeans", "--symmetric"], ["symmetric"]),
])
def test_bad_options_fail_before_any_work(model, tmp_path, capsys, watch, argv, words):
    out = tmp_path / "o.safetensors"
    code, _, err = run(capsys, "quantize", model, "-o", out, *argv)
    one_line_error(code, err, *words)
    assert not out.exists() and not watch


def test_too_small_a_budget_is_stated_in_bits_per_weight_before_measuring(model, tmp_path, capsys, monkeypatch):
    from qcore.api import get_quantizer

    cls = type(get_quantizer("mixed"))
    measured = []
    monkeypatch.setattr(cls, "measure", lambda self, *a, **k: measured.append(1) or [])
    out = tmp_path / "o.safetensors"
    code, _, err = run(capsys, "quantize", model, "-o", out, "--scheme", "mixed", "--budget-bits", "1.5",
                       "--candidates", "linear:2:channel,linear:4:channel")
    one_line_error(code, err, "budget_bits=1.5", "2.000 bits per weight")
    assert not measured and not out.exists()


def test_rules_and_keys_that_match_nothing(model, tmp_path, capsys, watch):
    out = tmp_path / "o.safetensors"
    cfg = tmp_path / "r.toml"
    cfg.write_text('[rules."layer0.weight"]\nbits = 4\n[rules."encoder.*"]\nbits = 8\n')
    code, _, err = run(capsys, "quantize", model, "-o", out, "--config", cfg)
    one_line_error(code, err, "encoder.*", "rule")
    cfg.write_text('scheme = "mixed"\ncandidates = ["linear:4:channel", "linear:8:channel"]\n'
                   '[sensitivity]\n"layer0.*" = 2.0\n"decoder.*" = 5.0\n')
    code, _, err = run(capsys, "quantize", model, "-o", out, "--config", cfg)
    one_line_error(code, err, "decoder.*", "sensitivity")
    assert not watch and not out.exists()


@pytest.mark.parametrize("case", ["npz-name", "folder", "dot", "missing-folder", "unwritable", "ct-file-name"])
def test_output_names_and_folders(model, tmp_path, capsys, watch, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, extra, words = {
        "npz-name": (tmp_path / "q.npz", [], [".safetensors"]),
        "folder": (tmp_path, [], ["folder"]),
        "dot": (".", [], ["folder"]),
        "missing-folder": (tmp_path / "nope" / "q.safetensors", [], ["does not exist"]),
        "unwritable": ("/proc/q.safetensors", [], ["cannot write"]),
        "ct-file-name": (tmp_path / "q.safetensors", ["--format", "compressed-tensors"], ["folder"]),
    }[case]
    code, _, err = run(capsys, "quantize", model, "-o", out, *extra)
    one_line_error(code, err, *words)
    assert "tmp" not in err.split("error:")[1].split("'")[0]  # no internal temporary file names
    assert not watch


def test_quantized_input_is_refused(model, tmp_path, capsys, watch):
    q = tmp_path / "q.safetensors"
    assert run(capsys, "quantize", model, "-o", q, "--quiet")[0] == 0
    code, _, err = run(capsys, "quantize", q, "-o", tmp_path / "qq.safetensors")
    one_line_error(code, err, "already quantized")
    assert len(watch) == 1


def test_compressed_tensors_refuses_schemes_it_cannot_hold(model, tmp_path, capsys, watch):
    code, _, err = run(capsys, "quantize", model, "-o", tmp_path / "ct", "--format", "compressed-tensors",
                       "--scheme", "kmeans", "--bits", "4")
    one_line_error(code, err, "kmeans", "compressed-tensors")
    code, _, err = run(capsys, "quantize", model, "-o", tmp_path / "ct", "--format", "compressed-tensors",
                       "--granularity", "tensor")
    one_line_error(code, err, "granularity 'tensor'")
    assert not watch and not (tmp_path / "ct").exists()


def test_help_shows_defaults_and_installed_schemes(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "installed schemes:" in out
    for s in qcore.list_schemes():
        assert s in out.split("installed schemes:")[1]
    assert "default: qcore" in out and "default: channel" in out and "default for mixed: 4.5" in out


def test_closed_pipe_ends_quietly(model, tmp_path):
    q = tmp_path / "q.safetensors"
    assert main(["quantize", str(model), "-o", str(q), "--quiet"]) == 0
    r = subprocess.run(f"{sys.executable} -m qcore inspect {q} | head -1", shell=True, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.count("\n") == 1 and "qcore quantized model" in r.stdout
    assert r.stderr == "", r.stderr


def test_bad_qcore_isa_is_an_error_naming_the_valid_values(model, tmp_path):
    env = dict(os.environ, QCORE_ISA="avx3")
    r = subprocess.run([sys.executable, "-m", "qcore", "quantize", str(model), "-o", str(tmp_path / "q.safetensors"),
                        "--scheme", "log", "--bits", "4", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0, "a mistyped QCORE_ISA must not silently run a slower kernel"
    assert "QCORE_ISA" in r.stderr and "avx2" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_disabled_plugins_are_listed_as_disabled(monkeypatch, capsys):
    """An installed plugin kept out by QCORE_DISABLE_PLUGINS is listed as disabled, not 'none installed'."""
    from importlib import metadata

    class Dist:
        metadata = {"Name": "qcore-foo"}
        version = "1.2"

    class EP:
        name, dist, group = "foo", Dist(), "qcore"

    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [EP()] if kw.get("group") == "qcore" else real(**kw))
    monkeypatch.setenv("QCORE_DISABLE_PLUGINS", "qcore-foo")
    from qcore.cli.main import disabled_plugins

    assert disabled_plugins() == [("foo", "qcore-foo", "1.2", "QCORE_DISABLE_PLUGINS")]
    monkeypatch.setattr("qcore.api.plugins", lambda all=True: [])
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "qcore-foo" in out and "disabled (QCORE_DISABLE_PLUGINS)" in out
    assert "no third-party plugins installed" not in out
    monkeypatch.delenv("QCORE_DISABLE_PLUGINS")
    monkeypatch.setenv("QCORE_LOAD_PLUGINS", "")
    assert disabled_plugins()[0][3] == "not in QCORE_LOAD_PLUGINS"


def test_progress_counts_weights_and_names_phases(model):
    seen = []
    qcore.quantize_model(qcore.load_tensors(model), "mixed", budget_bits=6,
                         candidates=["linear:4:channel", "linear:8:channel"], progress=lambda *a: seen.append(a))
    phases = [p for p, _, _ in seen]
    assert phases[0] == "measuring" and phases[-1] == "quantizing"
    weights = 32 * 64 + 16 * 32
    assert seen[-1][1:] == (weights, weights)  # counts weights, not tensors
    assert {t for _, _, t in seen} == {weights}


def test_writing_phase_is_reported(model, tmp_path):
    qm = qcore.quantize_model(model, "linear", bits=8, granularity="channel", progress=False)
    seen = []
    size = qm.save(tmp_path / "w.safetensors", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and size > seen[-1][1]
