"""load_tensors, quantize_model (selection, rules, 1-d tensors, pass-through), QModel (report, nbytes, dequantize),
and memory: a file is quantized tensor by tensor."""
import io
import math
import tracemalloc

import numpy as np
import pytest

import qcore
from qcore.cli.demo import accuracy_with, mlp_tensors, train_digits_mlp


@pytest.fixture(scope="module")
def trained():
    clf, Xte, yte = train_digits_mlp()
    return clf, Xte, yte


@pytest.fixture(scope="module")
def tensors(trained):
    t = mlp_tensors(trained[0])
    t["position_ids"] = np.arange(16, dtype=np.int64).reshape(2, 8)
    t["mask"] = np.array([[True, False], [False, True]])
    return t


@pytest.fixture
def st_file(tensors, tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "model.safetensors"
    save_file(tensors, str(p))
    return p


# -- load_tensors ---------------------------------------------------------------------------------------
def test_load_tensors_safetensors_is_lazy_and_exact(st_file, tensors):
    tf = qcore.load_tensors(st_file)
    assert set(tf) == set(tensors) and len(tf) == len(tensors)
    assert tf.shape_of("layer0.weight") == (64, 128) and tf.dtype_of("position_ids") == np.int64
    for name, arr in tensors.items():
        got = tf[name]
        assert got.dtype == arr.dtype and np.array_equal(got, arr)
    assert "nope" not in tf
    with pytest.raises(KeyError):
        tf["nope"]
    assert dict(tf).keys() == set(tensors)


def test_load_tensors_npz(tensors, tmp_path):
    p = tmp_path / "model.npz"
    np.savez(p, **tensors)
    tf = qcore.load_tensors(p)
    for name, arr in tensors.items():
        assert tf[name].dtype == arr.dtype and np.array_equal(tf[name], arr)


def test_load_tensors_never_unpickles(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, w=np.ones(3, np.float32), obj=np.array([{"a": 1}], dtype=object))
    tf = qcore.load_tensors(p)
    assert np.array_equal(tf["w"], np.ones(3, np.float32))
    with pytest.raises(qcore.FormatError, match="unpickling"):
        tf["obj"]


def test_load_tensors_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        qcore.load_tensors(tmp_path / "missing.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="safetensors"):
        qcore.load_tensors(tmp_path / "x.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(qcore.FormatError):
        qcore.load_tensors(tmp_path / "bad.safetensors")
    (tmp_path / "bad.npz").write_bytes(b"PK not a zip")
    with pytest.raises(qcore.FormatError):
        qcore.load_tensors(tmp_path / "bad.npz")
    with pytest.raises(TypeError):
        qcore.load_tensors(3)


def test_load_tensors_bfloat16_is_converted(tmp_path):
    import json
    import struct

    vals = np.array([1.0, -2.5, 0.15625], np.float32)
    bf16 = (vals.view(np.uint32) >> 16).astype(np.uint16)
    h = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    p = tmp_path / "bf.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + bf16.tobytes())
    tf = qcore.load_tensors(p)
    assert tf.dtype_of("w") == np.float32
    assert np.array_equal(tf["w"], vals)


# -- quantize_model ---------------------------------------------------------------------------------------
def test_default_selection_quantizes_float_matrices_only(tensors):
    qm = qcore.quantize_model(tensors, "linear", bits=8, granularity="channel")
    assert qm.quantized == ["layer0.weight", "layer1.weight", "layer2.weight"]
    assert qm["layer0.bias"] is tensors["layer0.bias"]  # 1-d: kept float, untouched
    assert qm["position_ids"] is tensors["position_ids"] and qm["mask"] is tensors["mask"]  # non-float: untouched
    assert list(qm) == list(tensors)


def test_quantized_model_keeps_accuracy(tensors, trained):
    clf, Xte, yte = trained
    base = accuracy_with(clf, tensors, Xte, yte)
    qm = qcore.quantize_model(tensors, "linear", bits=8, granularity="channel", axis=1)
    assert accuracy_with(clf, qm.dequantize(), Xte, yte) >= base - 0.01


def test_include_and_exclude_globs(tensors):
    qm = qcore.quantize_model(tensors, include="layer[01].*")
    assert qm.quantized == ["layer0.weight", "layer1.weight"]
    qm = qcore.quantize_model(tensors, exclude=["layer0.*", "*2.weight"])
    assert qm.quantized == ["layer1.weight"]
    qm = qcore.quantize_model(tensors, include="*.bias")  # include alone does not quantize 1-d tensors
    assert qm.quantized == []
    with pytest.raises(TypeError, match="include"):
        qcore.quantize_model(tensors, include=5)


def test_rules_give_per_tensor_options_first_match_wins(tensors):
    rules = {
        "layer0.weight": {"bits": 8},
        "layer*.weight": {"bits": 2, "granularity": "tensor"},
        "layer1.bias": {"bits": 8},  # asking explicitly: 1-d tensors are quantized
        "layer2.bias": {"scheme": "kmeans", "bits": 2} if "kmeans" in qcore.list_schemes() else {"bits": 3},
        "layer2.*": None,  # never reached for layer2.weight/bias (the rules above matched first)
        "layer0.bias": {"skip": True},
    }
    qm = qcore.quantize_model(tensors, "linear", bits=4, granularity="channel", rules=rules)
    assert qm["layer0.weight"].bits == 8 and qm["layer0.weight"].options["granularity"] == "channel"
    assert qm["layer1.weight"].bits == 2 and qm["layer1.weight"].options["granularity"] == "tensor"
    assert qm["layer1.bias"].bits == 8
    assert isinstance(qm["layer2.bias"], qcore.QTensor)
    assert isinstance(qm["layer0.bias"], np.ndarray)
    assert qm.info["layer0.weight"]["rule"] == "layer0.weight"
    # non-float tensors pass through even when a rule matches them
    qm = qcore.quantize_model(tensors, rules={"position_ids": {"bits": 4}})
    assert qm["position_ids"] is tensors["position_ids"]
    # a list of pairs keeps its order
    qm = qcore.quantize_model(tensors, rules=[("layer0.weight", {"bits": 3}), ("*", {"bits": 5})])
    assert qm["layer0.weight"].bits == 3 and qm["layer0.bias"].bits == 5


def test_rule_changing_scheme_does_not_inherit_other_options(tensors):
    assert "kmeans" in qcore.list_schemes()  # a built-in scheme: a broken one fails here instead of skipping
    qm = qcore.quantize_model(tensors, "linear", bits=4, granularity="channel", symmetric=True,
                              rules={"layer2.weight": {"scheme": "kmeans", "bits": 3}})
    assert qm["layer2.weight"].scheme == "kmeans" and qm["layer2.weight"].bits == 3


def test_errors_name_the_tensor(tensors):
    with pytest.raises(ValueError, match="layer2.weight"):
        qcore.quantize_model(tensors, "linear", granularity="group", group_size=32)
    with pytest.raises(qcore.SchemeNotFound):
        qcore.quantize_model(tensors, "nope")
    with pytest.raises(TypeError, match="unknown option"):
        qcore.quantize_model(tensors, "linear", colour="red")
    with pytest.raises(ValueError, match="budget_bits"):
        qcore.quantize_model(tensors, "linear", budget_bits=4)
    with pytest.raises(ValueError, match="budget_bits"):
        qcore.quantize_model(tensors, "mixed", budget_bits=-1)
    with pytest.raises(TypeError):
        qcore.quantize_model([1, 2, 3])
    with pytest.raises(TypeError, match="rule"):
        qcore.quantize_model(tensors, rules={"x": 3})


def test_quantize_model_from_a_path(st_file, tensors):
    qm = qcore.quantize_model(str(st_file), "linear", bits=4, granularity="channel")
    direct = qcore.quantize_model(tensors, "linear", bits=4, granularity="channel")
    assert set(qm.quantized) == set(direct.quantized)
    for n in qm.quantized:
        assert np.array_equal(qm[n].codes, direct[n].codes)
    assert qm["position_ids"].dtype == np.int64 and np.array_equal(qm["position_ids"], tensors["position_ids"])


def test_no_progress_bar_off_a_terminal(tensors, capsys):
    qcore.quantize_model(tensors, "linear", bits=4, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_bar_on_a_terminal(tensors, monkeypatch):
    import sys

    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    qcore.quantize_model(tensors, "linear", bits=4, progress=True)
    assert "quantizing" in fake.getvalue()
    fake2 = Tty()
    monkeypatch.setattr(sys, "stderr", fake2)
    qcore.quantize_model(tensors, "linear", bits=4, progress=False)
    assert fake2.getvalue() == ""


# -- QModel ----------------------------------------------------------------------------------------------
def test_report_and_sizes(tensors):
    qm = qcore.quantize_model(tensors, "linear", bits=4, granularity="channel")
    rows = qm.report()
    assert [r["name"] for r in rows] == list(tensors)
    keys = {"name", "scheme", "bits", "shape", "bytes_fp32", "bytes_q", "sqnr_db"}
    assert all(keys <= set(r) for r in rows)
    by = {r["name"]: r for r in rows}
    w = by["layer0.weight"]
    assert w["scheme"] == "linear" and w["bits"] == 4 and w["shape"] == [64, 128]
    assert w["bytes_fp32"] == 64 * 128 * 4
    assert w["bytes_q"] == 64 * 128 // 2 + 64 * 4 + 64 * 4  # packed 4-bit codes + scale + zero point per channel
    assert w["sqnr_db"] == pytest.approx(qcore.model.sqnr_db(tensors["layer0.weight"], qm["layer0.weight"].dequantize()))
    assert 15 < w["sqnr_db"] < 30
    assert by["layer0.bias"]["scheme"] is None and math.isinf(by["layer0.bias"]["sqnr_db"])
    assert qm.nbytes == sum(r["bytes_q"] for r in rows)
    assert qm.nbytes_fp32 == sum(r["bytes_fp32"] for r in rows)
    assert 4.0 < qm.average_bits < 5.0
    ref = qm.report(reference=tensors)
    assert ref[0]["sqnr_db"] == pytest.approx(w["sqnr_db"])
    deq = qm.dequantize()
    assert deq["layer0.weight"].dtype == np.float32 and deq["layer0.weight"].shape == (64, 128)
    assert "QModel(" in repr(qm)


def test_qmodel_by_hand():
    qm = qcore.QModel()
    qm["w"] = qcore.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), bits=4)
    qm["b"] = [1.0, 2.0]
    assert qm.quantized == ["w"] and isinstance(qm["b"], np.ndarray)
    with pytest.raises(TypeError):
        qm[3] = np.ones(2)
    assert qm.report()[0]["sqnr_db"] is None  # not recorded, no reference given


def test_empty_and_constant_tensors(tmp_path):
    t = {"const": np.full((4, 8), 0.5, np.float32), "empty": np.zeros((0, 8), np.float32)}
    qm = qcore.quantize_model(t, "linear", bits=4, granularity="channel")
    assert np.array_equal(qm["const"].dequantize(), t["const"])
    assert qm["empty"].dequantize().shape == (0, 8)
    qm.save(tmp_path / "e.safetensors")
    back = qcore.load_quantized(tmp_path / "e.safetensors")
    assert back["empty"].shape == (0, 8) and np.array_equal(back["const"].dequantize(), t["const"])


def test_nan_weights_are_refused_with_the_tensor_name():
    t = {"w": np.ones((4, 4), np.float32)}
    t["w"][1, 1] = np.nan
    with pytest.raises(ValueError, match="'w'"):
        qcore.quantize_model(t)


# -- memory ------------------------------------------------------------------------------------------------
def test_quantizing_a_file_needs_about_one_tensor_at_a_time(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    model = {f"layer{i}.weight": rng.standard_normal((256, 1024)).astype(np.float32) for i in range(24)}
    path = tmp_path / "big.safetensors"
    save_file(model, str(path))
    whole = sum(v.nbytes for v in model.values())  # 24 MiB
    largest = max(v.nbytes for v in model.values())  # 1 MiB
    del model
    qcore.quantize_model({"w": np.ones((2, 2), np.float32)}, "linear", bits=8, granularity="channel")  # imports, plugins
    tracemalloc.start()
    try:
        qm = qcore.quantize_model(str(path), "linear", bits=8, granularity="channel")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output = sum(qm[n].codes.nbytes for n in qm.quantized)  # unpacked int8 codes: whole / 4
    # the output (int8 codes, unpacked) plus a few copies of one tensor - never the whole model in float
    assert peak < output + 6 * largest, (peak, output, largest, whole)
    assert peak < whole / 2
