"""Sharded and streamed output (issue 25): ``qm.save(folder, max_shard_size=...)`` for qcore's format and
compressed-tensors, ``quantize_model(path, ..., output=...)`` writing each tensor as it is quantized.

Checked against independent readers: the ``safetensors`` package reads every shard, the index has the keys
transformers reads, and transformers itself loads a sharded compressed-tensors folder (tests/test_interop.py's
tiny Llama, built here the same way)."""
import json
import os
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import qcore
from qcore.model import shards
from qcore.model.format import load_qcore_file

RNG = np.random.default_rng(0)
TENSORS = {f"layers.{i}.weight": RNG.standard_normal((128, 256)).astype(np.float32) for i in range(5)}
TENSORS["norm"] = RNG.standard_normal(256).astype(np.float32)
TENSORS["ids"] = np.arange(7, dtype=np.int64)


def _qm():
    return qcore.quantize_model(TENSORS, "linear", bits=4, granularity="group", group_size=32, symmetric=True,
                                progress=False)


def _visible(folder):
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def test_parse_size_reads_what_transformers_reads():
    assert shards.parse_size("5GB") == 5 * 10**9
    assert shards.parse_size("500MB") == 500 * 10**6
    assert shards.parse_size("2GiB") == 2 * 2**30
    assert shards.parse_size("1.5kb") == 1500
    assert shards.parse_size(123) == 123
    for bad in ("5 parsecs", "", "-1GB", "GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            shards.parse_size(bad)
    with pytest.raises(ValueError, match="at least 1 byte"):
        shards.parse_size(0)
    for bad in (True, 1.5, None):
        with pytest.raises(TypeError):
            shards.parse_size(bad)


@pytest.mark.parametrize("fmt", ["qcore", "compressed-tensors"])
def test_shards_hold_whole_tensors_in_order_under_the_size(tmp_path, fmt):
    qm = _qm()
    out = tmp_path / "out"
    size = qm.save(out, format=fmt, max_shard_size="45kB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = [f for f in _visible(out) if f.endswith(".safetensors")]
    n = len(files)
    assert n > 2 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(files)
    total = 0
    order = []
    for f in files:  # the safetensors package reads each shard; each holds whole tensors, at most 45 kB of data
        data = load_file(out / f)
        nbytes = sum(v.nbytes for v in data.values())
        assert nbytes <= 45_000
        total += nbytes
        assert {k for k, v in index["weight_map"].items() if v == f} == set(data)
        order += list(data)
        if fmt == "qcore":  # every shard is a complete qcore file describing its own tensors
            part = load_qcore_file(out / f)
            assert all(np.array_equal(part.values(k), qm.values(k)) for k in part)
    assert index["metadata"]["total_size"] == total
    assert size == sum(os.path.getsize(out / f) for f in _visible(out)) - (
        os.path.getsize(out / "config.json") if fmt == "qcore" and (out / "config.json").exists() else 0)
    back = qcore.load_quantized(out)
    assert list(back) == list(qm)  # model order kept across shards
    for k in qm:
        np.testing.assert_array_equal(back.values(k), qm.values(k))
    desc = qcore.model.formats.inspect(out)
    assert [r["name"] for r in desc["tensors"]] == list(qm)


def test_one_shard_is_a_plain_model_file_and_stale_shards_go(tmp_path):
    qm = _qm()
    out = tmp_path / "out"
    qm.save(out, max_shard_size="45kB")
    assert len(_visible(out)) > 3
    qm.save(out, max_shard_size="10MB")  # everything fits: model.safetensors, as save_pretrained writes it
    assert _visible(out) == ["model.safetensors"]
    qm.save(out, max_shard_size="45kB")
    assert "model.safetensors" not in _visible(out) and "model.safetensors.index.json" in _visible(out)
    n = len(_visible(out)) - 1
    qm.save(out, max_shard_size="100kB")  # fewer shards: the old ones do not linger
    assert len(_visible(out)) - 1 < n
    assert all(f.endswith(f"-of-{len(_visible(out)) - 1:05d}.safetensors") for f in _visible(out) if f.startswith("model-"))
    qm.save(out)  # an existing folder, no sharding: model.safetensors, and the index is gone
    assert _visible(out) == ["model.safetensors"]
    assert qcore.load_quantized(out).keys() == qm.keys()


def test_bad_sharding_requests_are_refused(tmp_path):
    qm = _qm()
    with pytest.raises(ValueError, match="is a folder"):
        qm.save(tmp_path / "x.safetensors", max_shard_size="1MB")
    with pytest.raises(ValueError, match="layers.0.weight.*never split"):
        qm.save(tmp_path / "small", max_shard_size="10kB")
    assert not [f for f in os.listdir(tmp_path / "small") if not f.startswith(".")] if (tmp_path / "small").exists() else True
    with pytest.raises(ValueError, match="max_shard_size"):
        qm.save(tmp_path / "s", max_shard_size="lots")
    with pytest.raises(TypeError, match="max_shard_size"):
        qm.save(tmp_path / "s", format="compressed-tensors", max_shard_size=[1])


def test_a_failure_midway_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    qm = _qm()
    out = tmp_path / "out"
    qm.save(out, max_shard_size="45kB")  # a complete earlier model in the folder
    calls = []
    real = shards._write_chunk

    def failing(f, arr):
        calls.append(1)
        if len(calls) == 6:
            raise OSError(28, "No space left on device")
        real(f, arr)

    monkeypatch.setattr(shards, "_write_chunk", failing)
    with pytest.raises(OSError, match="No space"):
        qm.save(out, max_shard_size="45kB")
    assert os.listdir(out) == []  # the old index and shards went first; the new temporary files were removed
    with pytest.raises((qcore.FormatError, ValueError, FileNotFoundError)):
        qcore.load_quantized(out)


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_writes_what_save_writes_and_keeps_one_tensor_in_memory(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    big = {f"blocks.{i}.weight": RNG.standard_normal((512, 1024)).astype(np.float32) for i in range(8)}
    names = list(big)
    save_file({k: big[k] for k in names[:4]}, src / "model-00001-of-00002.safetensors")
    save_file({k: big[k] for k in names[4:]}, src / "model-00002-of-00002.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= 4)}-of-00002.safetensors" for i, k in enumerate(names)}}))
    save_file({names[0]: big[names[0]]}, tmp_path / "one.safetensors")
    del big
    opts = dict(scheme="kmeans", bits=4, granularity="group", group_size=128, progress=False)
    qcore.quantize_model(str(tmp_path / "one.safetensors"), output=str(tmp_path / "warm"), **opts)  # imports, caches
    _, one = _peak(lambda: qcore.quantize_model(str(tmp_path / "one.safetensors"), output=str(tmp_path / "one"),
                                                max_shard_size="1MB", **opts))
    written, eight = _peak(lambda: qcore.quantize_model(str(src), output=str(tmp_path / "streamed"),
                                                        max_shard_size="1MB", **opts))
    # 16 MiB of float32 in, 5 MiB out: the peak is that of one tensor's work, not the model's
    assert eight < 1.25 * one + (256 << 10), (eight, one)
    qm = qcore.quantize_model(str(src), **opts)
    qm.save(tmp_path / "saved", max_shard_size="1MB")
    for f in _visible(tmp_path / "saved"):
        assert (tmp_path / "saved" / f).read_bytes() == (tmp_path / "streamed" / f).read_bytes(), f
    assert [r["name"] for r in written.report()] == names
    assert written.report() == qm.report()
    assert written.files[-1].endswith("model.safetensors.index.json")
    assert sorted(os.path.basename(f) for f in written.files) == _visible(tmp_path / "saved")
    assert written.nbytes == qm.nbytes and written.average_bits == pytest.approx(qm.average_bits)
    assert written.load().keys() == qm.keys()


def test_streaming_refuses_a_too_small_shard_before_any_work(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"a.weight": RNG.standard_normal((256, 256)).astype(np.float32),
               "b": np.zeros(100_000, np.float32)}, src)
    with pytest.raises(ValueError, match="'b' alone takes 400.00 kB"):
        qcore.quantize_model(str(src), "linear", bits=4, granularity="channel", progress=False,
                             output=str(tmp_path / "o"), max_shard_size="100kB")
    assert not (tmp_path / "o").exists()
    with pytest.raises(TypeError, match="output="):
        qcore.quantize_model(str(src), "linear", progress=False, max_shard_size="1MB")
