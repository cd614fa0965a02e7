"""The whole-model CLI: quantize / inspect / dequantize / report (with a PNG) / bench / demo, and clean errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

import qcore
from qcore.cli.demo import mlp_tensors, train_digits_mlp
from qcore.cli.main import main


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from safetensors.numpy import save_file

    clf, _, _ = train_digits_mlp()
    t = mlp_tensors(clf)
    t["position_ids"] = np.arange(8, dtype=np.int64)
    p = tmp_path_factory.mktemp("cli") / "digits.safetensors"
    save_file(t, str(p))
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_inspect_dequantize_report(model_file, tmp_path, capsys):
    out_q = tmp_path / "q.safetensors"
    code, out, err = run(capsys, "quantize", model_file, "-o", out_q, "--bits", "4")
    assert code == 0, err
    assert "layer0.weight" in out and "linear" in out and "wrote" in out
    qm = qcore.load_quantized(out_q)
    assert qm["layer0.weight"].bits == 4 and qm["layer0.weight"].options["granularity"] == "channel"
    assert qm["position_ids"].dtype == np.int64

    code, out, err = run(capsys, "inspect", out_q)
    assert code == 0 and "format version 2" in out and "layer1.weight" in out
    code, out, _ = run(capsys, "inspect", out_q, "--json")
    desc = json.loads(out)
    assert {t["name"] for t in desc["tensors"]} >= {"layer0.weight", "position_ids"}

    plain = tmp_path / "plain.safetensors"
    code, out, err = run(capsys, "dequantize", out_q, "-o", plain)
    assert code == 0, err
    back = qcore.load_tensors(plain)
    assert back["layer0.weight"].dtype == np.float32
    assert np.array_equal(back["layer0.weight"], qm["layer0.weight"].dequantize())
    assert np.array_equal(back["position_ids"], np.arange(8))
    from safetensors.numpy import load_file  # any framework reads it

    assert set(load_file(str(plain))) == set(back)

    png = tmp_path / "report.png"
    code, out, err = run(capsys, "report", model_file, out_q, "--plot", png)
    assert code == 0, err
    assert "SQNR" in out and "bits per quantized weight" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "report", model_file, out_q, "--json")
    rows = json.loads(out)
    w = next(r for r in rows if r["name"] == "layer0.weight")
    assert w["sqnr_db"] == pytest.approx(qcore.model.sqnr_db(qcore.load_tensors(model_file)["layer0.weight"],
                                                             qm["layer0.weight"].dequantize()))


def test_quantize_mixed_budget_and_json(model_file, tmp_path, capsys):
    out_q = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "quantize", model_file, "-o", out_q, "--scheme", "mixed", "--budget-bits", "3.5", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["output"] == str(out_q)
    qm = qcore.load_quantized(out_q)
    assert qm.average_bits <= 3.5
    before = out_q.read_bytes()
    argv = ("quantize", model_file, "-o", out_q, "--scheme", "mixed", "--target-sqnr", "20",
            "--candidates", "linear:4:channel,linear:8:channel", "--quiet")
    code, out, err = run(capsys, *argv)  # an existing output is kept unless --force
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1 and out_q.read_bytes() == before
    code, out, err = run(capsys, *argv, "--force")
    assert code == 0 and out == ""
    qm = qcore.load_quantized(out_q)
    assert {qm[n].scheme for n in qm.quantized} == {"linear"}


def test_quantize_with_a_rules_file(model_file, tmp_path, capsys):
    cfg = tmp_path / "rules.toml"
    cfg.write_text(
        'scheme = "linear"\nbits = 4\ngranularity = "channel"\nexclude = ["layer2.*"]\n'
        '[rules."layer0.weight"]\nbits = 8\n'
        '[rules."layer1.bias"]\nbits = 8\ngranularity = "tensor"\n'
    )
    out_q = tmp_path / "r.safetensors"
    code, out, err = run(capsys, "quantize", model_file, "-o", out_q, "--config", cfg, "--quiet")
    assert code == 0, err
    qm = qcore.load_quantized(out_q)
    assert qm["layer0.weight"].bits == 8 and qm["layer1.weight"].bits == 4 and qm["layer1.bias"].bits == 8
    assert isinstance(qm["layer2.weight"], np.ndarray)
    cfg.write_text("bits = [")
    code, _, err = run(capsys, "quantize", model_file, "-o", out_q, "--config", cfg)
    assert code == 2 and "TOML" in err


@pytest.mark.parametrize("argv", [
    ["inspect", "{missing}"],
    ["inspect", "{garbage}"],
    ["inspect", "{model}"],  # a plain model, not a quantized one
    ["quantize", "{model}", "-o", "{out}", "--scheme", "nope"],
    ["quantize", "{model}", "-o", "{out}", "--granularity", "group", "--group-size", "48"],
    ["quantize", "{model}", "-o", "{out}", "--scheme", "mixed", "--budget-bits", "0.5"],
    ["quantize", "{garbage}", "-o", "{out}"],
    ["dequantize", "{garbage}", "-o", "{out}"],
    ["report", "{model}", "{garbage}"],
])
def test_errors_are_one_clean_line(model_file, tmp_path, capsys, argv):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    subs = {"missing": tmp_path / "missing.safetensors", "garbage": garbage, "model": model_file, "out": tmp_path / "o.safetensors"}
    argv = [a.format(**subs) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("qcore: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2, 3]}")
    r = subprocess.run([sys.executable, "-m", "qcore", "inspect", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("qcore: error:") and "Traceback" not in r.stderr


def test_bench_command_small(capsys):
    code, out, err = run(capsys, "bench", "--params", "3e5", "--json", "--candidates", "linear:4:channel,linear:8:channel")
    assert code == 0, err
    res = json.loads(out)
    assert [r["config"] for r in res] == ["int8", "mixed@4.5"]
    assert res[1]["bits_per_weight"] <= 4.5
    assert all(r["quantize_s"] > 0 and r["peak_traced_bytes"] > 0 for r in res)


def test_demo_runs_every_scheme_and_mixed(capsys):
    code, out, err = run(capsys, "demo", "--quiet")
    assert code == 0, err
    for s in qcore.list_schemes():
        assert s in out
    assert "mixed @3 bits" in out and "accuracy" in out and "codes identical: True" in out
