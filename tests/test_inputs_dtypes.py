"""Model inputs in every form a user has (file, Hugging Face folder, shards + index, the index itself), shards read
lazily, and dtypes kept: bfloat16 stays bfloat16 through quantize, save, load and dequantize."""
import json
import weakref

import numpy as np
import pytest

import qcore
from qcore.cli.main import main
from qcore.model.safetensors_io import Entry, bf16_to_float32, float32_to_bf16, write_safetensors


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.fc.weight": rng.standard_normal((64, 128)).astype(np.float32) for i in range(6)} | {
        "norm.weight": np.ones(128, np.float32), "position_ids": np.arange(8, dtype=np.int64)}


def _shard(folder, tensors, n):
    """Write ``tensors`` as ``n`` shards + model.safetensors.index.json, the way transformers does."""
    from safetensors.numpy import save_file

    names = list(tensors)
    wm = {}
    for k in range(n):
        part = names[k::n]
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({m: tensors[m] for m in part}, str(folder / fname), metadata={"format": "pt"})
        wm.update({m: fname for m in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}))
    (folder / "config.json").write_text("{}")


def test_folder_index_and_single_file_give_the_same_tensors(tmp_path):
    from safetensors.numpy import save_file

    t = _tensors()
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    _shard(sharded, t, 3)
    single = tmp_path / "single"
    single.mkdir()
    save_file(t, str(single / "model.safetensors"))
    for src in (sharded, sharded / "model.safetensors.index.json", single, single / "model.safetensors"):
        tf = qcore.load_tensors(src)
        assert set(tf) == set(t), src
        for n in t:
            assert tf.dtype_of(n) == t[n].dtype and tf.shape_of(n) == t[n].shape
            assert np.array_equal(tf[n], t[n])


def test_shards_are_read_lazily_one_tensor_at_a_time(tmp_path, monkeypatch):
    """Opening reads headers only; walking the model holds one tensor at a time (no timing involved: every array
    quantized is tracked by a weak reference, and no earlier one may still be alive when the next is read)."""
    from qcore.model import tensors as mt

    t = _tensors()
    _shard(tmp_path, t, 3)
    reads, alive = [], []
    real = mt.SafetensorsFile._read

    def spy(self, name):
        alive[:] = [r for r in alive if r() is not None]
        assert not alive, f"reading {name!r} while {len(alive)} earlier tensor(s) are still held"
        arr = real(self, name)
        reads.append(name)
        if name.endswith("fc.weight"):  # tensors that are quantized; kept ones are part of the output
            alive.append(weakref.ref(arr))
        return arr

    monkeypatch.setattr(mt.SafetensorsFile, "_read", spy)
    tf = qcore.load_tensors(tmp_path)
    assert reads == [] and len(tf.shards) == 3
    qm = qcore.quantize_model(tf, "linear", bits=8, granularity="channel", progress=False)
    quantized = [n for n in t if n.endswith("fc.weight")]
    assert sorted(qm.quantized) == sorted(quantized)
    assert sorted(reads) == sorted(t)  # every tensor read exactly once


def test_bad_folders_and_indexes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model.safetensors"):
        qcore.load_tensors(tmp_path / "empty")
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="never loaded"):
        qcore.load_tensors(tmp_path / "pt")
    d = tmp_path / "idx"
    d.mkdir()
    _shard(d, _tensors(), 2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(qcore.FormatError, match="missing"):
        qcore.load_tensors(d)
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    with pytest.raises(qcore.FormatError, match="file name"):
        qcore.load_tensors(d)


def test_cli_quantizes_a_sharded_folder(tmp_path, capsys):
    _shard(tmp_path, _tensors(), 2)
    out = tmp_path.parent / (tmp_path.name + "-q.safetensors")
    assert main(["quantize", str(tmp_path), "-o", str(out), "--bits", "4", "--quiet"]) == 0
    assert sorted(qcore.load_quantized(out).quantized) == sorted(n for n in _tensors() if n.endswith("fc.weight"))
    # the output may not land on a shard
    code = main(["quantize", str(tmp_path), "-o", str(tmp_path / "model-00001-of-00002.safetensors")])
    assert code == 2 and "input" in capsys.readouterr().err


def test_bf16_roundtrip_helpers_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([1.0, -2.5, 3.14159, 1e-30, 6.5e4, -0.0, 3.3e38, np.nan], np.float32)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = float32_to_bf16(x)
    assert np.array_equal(got[:-1], ref[:-1]) and np.isnan(bf16_to_float32(got[-1:])).all()


@pytest.fixture
def bf16_model(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    norm = (1 + 0.01 * rng.standard_normal(64)).astype(np.float32)
    wb, nb = float32_to_bf16(w), float32_to_bf16(norm)
    e = [Entry.of("fc.weight", wb), Entry.of("norm.weight", nb)]
    for x in e:
        x.dtype = "BF16"
    p = tmp_path / "bf16.safetensors"
    write_safetensors(p, e, {"format": "pt"})
    return p, wb, nb


def test_bf16_kept_tensors_stay_bf16_and_sizes_are_against_bf16(bf16_model, tmp_path, capsys):
    src, wb, nb = bf16_model
    tf = qcore.load_tensors(src)
    assert tf.source_dtype("norm.weight") == "bfloat16" and tf.dtype_of("norm.weight") == np.float32
    qm = qcore.quantize_model(tf, "linear", bits=8, granularity="channel", progress=False)
    assert qm.dtype_of("norm.weight") == "bfloat16" and qm["fc.weight"].dtype == "bfloat16"
    rows = {r["name"]: r for r in qm.report()}
    assert rows["norm.weight"]["bytes_orig"] == 2 * 64 and rows["fc.weight"]["bytes_orig"] == 2 * 32 * 64
    out = tmp_path / "q.safetensors"
    qm.save(out)
    back = qcore.load_quantized(out)
    assert back.dtype_of("norm.weight") == "bfloat16" and np.array_equal(back["norm.weight"], nb)
    from qcore.model.safetensors_io import read_header

    assert read_header(out).tensors["norm.weight"].dtype == "BF16"
    # dequantize: each tensor's original dtype by default, or the one asked for
    plain = tmp_path / "plain.safetensors"
    assert main(["dequantize", str(out), "-o", str(plain)]) == 0
    h = read_header(plain)
    assert h.tensors["fc.weight"].dtype == "BF16" and h.tensors["norm.weight"].dtype == "BF16"
    assert h.metadata["format"] == "pt"  # what transformers 4.x insists on
    got = qcore.load_tensors(plain)
    assert np.array_equal(got.raw("norm.weight"), nb)
    assert np.array_equal(got.raw("fc.weight"), float32_to_bf16(back["fc.weight"].dequantize()))
    for dt, st in (("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16")):
        assert main(["dequantize", str(out), "-o", str(plain), "--dtype", dt, "--force"]) == 0
        h = read_header(plain)
        assert h.tensors["fc.weight"].dtype == st and h.tensors["norm.weight"].dtype == st
    capsys.readouterr()
    # the table compares against the bf16 bytes: 8-bit codes of a bf16 weight are ~2x smaller, not ~4x
    assert main(["inspect", str(out), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    fc = next(r for r in desc["tensors"] if r["name"] == "fc.weight")
    assert fc["bytes_orig"] == 2 * 32 * 64 and fc["dtype"] == "bfloat16"
    assert 1.5 < fc["bytes_orig"] / fc["bytes_q"] < 2.0
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch = pytest.importorskip("torch")
    loaded = safetensors_torch.load_file(str(plain))
    assert loaded["norm.weight"].dtype == torch.bfloat16
