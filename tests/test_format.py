"""The quantized-model file: exact round trip, compatibility with the safetensors library, a battery of
corrupted/hostile files (each a FormatError), atomic saves, and SchemeNotFound naming the plugin a file needs."""
import json
import os
import struct

import numpy as np
import pytest

import qcore
from qcore.cli.demo import mlp_tensors, train_digits_mlp
from qcore.model import format as fmt
from qcore.model import safetensors_io


@pytest.fixture(scope="module")
def tensors():
    clf, _, _ = train_digits_mlp()
    t = mlp_tensors(clf)
    t["position_ids"] = np.arange(12, dtype=np.int64).reshape(1, 12)
    return t


@pytest.fixture(scope="module")
def model(tensors):
    # one tensor per kind of storage: 4-bit per channel, 3-bit per group (odd bit width), 8-bit per tensor
    return qcore.quantize_model(tensors, "linear", bits=4, granularity="channel", rules={
        "layer1.weight": {"bits": 3, "granularity": "group", "group_size": 32},
        "layer2.weight": {"bits": 8, "symmetric": True},
    })


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "m.safetensors"
    model.save(path)
    return path


def split(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(path, header, data, pad=True):
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def edit_meta(path, fn):
    header, data = split(path)
    doc = json.loads(header["__metadata__"]["qcore"])
    fn(doc)
    header["__metadata__"]["qcore"] = json.dumps(doc)
    join(path, header, data)


def entry(doc, name):
    return next(d for d in doc["tensors"] if d["name"] == name)


# -- round trip ------------------------------------------------------------------------------------------
def test_round_trip_is_exact_for_codes_params_and_kept_tensors(model, saved, tensors):
    back = qcore.load_quantized(saved)
    assert list(back) == list(model)
    for name in model:
        a, b = model[name], back[name]
        if isinstance(a, qcore.QTensor):
            assert (b.scheme, b.bits, b.shape, b.signed) == (a.scheme, a.bits, a.shape, a.signed)
            assert b.options == a.options
            assert np.array_equal(b.codes, a.codes) and b.codes.dtype == a.codes.dtype
            assert set(b.params) == set(a.params)
            for k in a.params:
                assert b.params[k].dtype == a.params[k].dtype
                assert np.array_equal(b.params[k], a.params[k])
            assert np.array_equal(b.dequantize(), a.dequantize())
        else:
            assert b.dtype == a.dtype and np.array_equal(a, b)
    assert back["position_ids"].dtype == np.int64
    assert back.nbytes == model.nbytes
    rep_a, rep_b = model.report(), back.report()
    for ra, rb in zip(rep_a, rep_b):
        assert ra["name"] == rb["name"] and ra["bytes_q"] == rb["bytes_q"]
        assert ra["sqnr_db"] == pytest.approx(rb["sqnr_db"])


def test_file_size_is_packed_codes_plus_params_plus_header(model, saved):
    header, data = split(saved)
    assert len(data) == model.nbytes  # codes packed at exactly `bits` bits, nothing else in the data
    codes = header["qcore:layer1.weight:codes"]
    assert codes["dtype"] == "U8" and codes["shape"] == [(128 * 64 * 3 + 7) // 8]


def test_file_is_readable_by_the_safetensors_library(saved, model):
    from safetensors import safe_open

    with safe_open(str(saved), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "qcore" and meta["qcore_format_version"] == str(fmt.FORMAT_VERSION)
        assert np.array_equal(f.get_tensor("layer0.bias"), model["layer0.bias"])
        packed = f.get_tensor("qcore:layer0.weight:codes")
    assert np.array_equal(packed, model["layer0.weight"].pack())


def test_metadata_records_scheme_plugin_and_version(saved):
    header, _ = split(saved)
    doc = json.loads(header["__metadata__"]["qcore"])
    assert doc["format_version"] == fmt.FORMAT_VERSION
    e = entry(doc, "layer0.weight")
    assert e["scheme"] == "linear" and e["bits"] == 4 and e["shape"] == [64, 128]
    assert e["plugin"]["distribution"] == "qcore"
    assert e["options"]["granularity"] == "channel"


def test_load_quantized_refuses_plain_safetensors_and_npz(tmp_path, tensors):
    from safetensors.numpy import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": tensors["layer0.weight"]}, str(p))
    with pytest.raises(qcore.FormatError, match="not a qcore"):
        qcore.load_quantized(p)
    z = tmp_path / "x.npz"
    np.savez(z, w=tensors["layer0.weight"])
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(z)
    with pytest.raises(FileNotFoundError):
        qcore.load_quantized(tmp_path / "missing.safetensors")


# -- corrupted and hostile files --------------------------------------------------------------------------
def test_truncated_anywhere_is_a_format_error(saved, tmp_path):
    raw = saved.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cuts = sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, (8 + n + len(raw)) // 2, len(raw) - 1}
                  | set(range(0, len(raw), max(1, len(raw) // 40))))
    bad = tmp_path / "t.safetensors"
    for cut in cuts:
        if cut >= len(raw):
            continue
        bad.write_bytes(raw[:cut])
        with pytest.raises(qcore.FormatError):
            qcore.load_quantized(bad)


@pytest.mark.parametrize("garbage", [
    b"not json at all!",
    b"\xff\xfe\xfa garbage \x00",
    b"[1, 2, 3]",
    b'{"a": NaN}',
    b'{"__metadata__": {"qcore": 5}}',
    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}',
    b'{"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}',
    b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
    b'{"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}',
    b"[" * 100000,
])
def test_header_garbage_is_a_format_error(tmp_path, garbage):
    p = tmp_path / "g.safetensors"
    p.write_bytes(struct.pack("<Q", len(garbage)) + garbage + b"\0" * 4)
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(p)


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 2**40, safetensors_io.MAX_HEADER + 1, "file", "file+1"])
def test_huge_header_length_is_a_format_error(saved, length):
    raw = bytearray(saved.read_bytes())
    n = {"file": len(raw) - 8, "file+1": len(raw) - 7}.get(length, length)
    if length == "file":  # the whole rest as header: not valid JSON with the binary data inside
        pass
    raw[:8] = struct.pack("<Q", n)
    saved.write_bytes(bytes(raw))
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(saved)


def _offsets(fn):
    def edit(path):
        header, data = split(path)
        fn(header, len(data))
        join(path, header, data)
    return edit


@pytest.mark.parametrize("edit", [
    _offsets(lambda h, n: h["layer0.bias"].update(data_offsets=[n - 4, n + 508])),           # past the end
    _offsets(lambda h, n: h["layer0.bias"].update(data_offsets=[n + 100, n + 612])),         # beyond the buffer
    _offsets(lambda h, n: h["layer0.bias"].update(data_offsets=[0, 512])),                    # overlaps another
    _offsets(lambda h, n: h["layer0.bias"].update(data_offsets=[-8, 504])),                   # negative
    _offsets(lambda h, n: h["layer0.bias"].update(data_offsets=[0.5, 512])),                  # not an integer
    _offsets(lambda h, n: h["layer0.bias"].update(shape=[129])),                              # shape vs size
    _offsets(lambda h, n: h["layer0.bias"].update(dtype="F64")),                              # dtype vs size
    _offsets(lambda h, n: h.pop("layer0.bias")),                                              # a hole in the data
    _offsets(lambda h, n: h["qcore:layer0.weight:codes"].update(shape=[2**62], data_offsets=[0, 2**62])),
])
def test_offsets_out_of_range_or_inconsistent_are_format_errors(saved, edit):
    edit(saved)
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(saved)


def test_trailing_garbage_is_a_format_error(saved):
    saved.write_bytes(saved.read_bytes() + b"extra")
    with pytest.raises(qcore.FormatError, match="trailing"):
        qcore.load_quantized(saved)


def _swap_scales(doc):
    a, b = entry(doc, "layer0.weight"), entry(doc, "layer1.weight")  # 64 scales vs 128x2
    a["params"]["scale"], b["params"]["scale"] = b["params"]["scale"], a["params"]["scale"]


LIES = {
    "shape larger": lambda d: entry(d, "layer0.weight").update(shape=[64, 129]),
    "shape smaller": lambda d: entry(d, "layer0.weight").update(shape=[64, 127]),
    "shape huge": lambda d: entry(d, "layer0.weight").update(shape=[2**40, 2**40]),
    "shape negative": lambda d: entry(d, "layer0.weight").update(shape=[-64, -128]),
    "shape not a list": lambda d: entry(d, "layer0.weight").update(shape="64x128"),
    "bits more": lambda d: entry(d, "layer0.weight").update(bits=5),
    "bits fewer": lambda d: entry(d, "layer1.weight").update(bits=2),
    "bits 9": lambda d: entry(d, "layer2.weight").update(bits=9),
    "bits 0": lambda d: entry(d, "layer2.weight").update(bits=0),
    "bits string": lambda d: entry(d, "layer2.weight").update(bits="8"),
    "bits bool": lambda d: entry(d, "layer2.weight").update(bits=True),
    "options disagree on bits": lambda d: entry(d, "layer0.weight")["options"].update(bits=8),
    "signed flipped": lambda d: entry(d, "layer0.weight").update(signed=True),
    "unknown option": lambda d: entry(d, "layer0.weight")["options"].update(evil=1),
    "option not scalar": lambda d: entry(d, "layer0.weight")["options"].update(axis=[0]),
    "granularity changed": lambda d: entry(d, "layer0.weight")["options"].update(granularity="tensor"),
    "group size changed": lambda d: entry(d, "layer1.weight")["options"].update(group_size=64),
    "axis out of range": lambda d: entry(d, "layer0.weight")["options"].update(axis=5),
    "params swapped": _swap_scales,
    "param missing tensor": lambda d: entry(d, "layer0.weight")["params"].update(scale="nope"),
    "param reused": lambda d: entry(d, "layer0.weight")["params"].update(scale="qcore:layer2.weight:scale"),
    "param dropped": lambda d: entry(d, "layer0.weight")["params"].pop("zero_point"),
    "no params": lambda d: entry(d, "layer0.weight").update(params={}),
    "codes wrong dtype": lambda d: entry(d, "layer0.weight").update(codes="layer0.bias") or d["tensors"].remove(entry(d, "layer0.bias")),
    "duplicate name": lambda d: d["tensors"].append(dict(entry(d, "layer0.bias"))),
    "entry dropped": lambda d: d["tensors"].remove(entry(d, "layer0.bias")),
    "kind unknown": lambda d: entry(d, "layer0.bias").update(kind="pickle"),
    "version newer": lambda d: d.update(format_version=99),
    "version missing": lambda d: d.pop("format_version"),
    "format wrong": lambda d: d.update(format="something else"),
    "tensors not a list": lambda d: d.update(tensors={}),
    "entry not an object": lambda d: d["tensors"].append(3),
    "scheme empty": lambda d: entry(d, "layer0.weight").update(scheme=""),
    "sqnr not a number": lambda d: entry(d, "layer0.weight").update(sqnr_db="high"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_metadata_that_lies_is_a_format_error(saved, lie):
    edit_meta(saved, LIES[lie])
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(saved)


def test_metadata_not_json_is_a_format_error(saved):
    header, data = split(saved)
    header["__metadata__"]["qcore"] = "{not json"
    join(saved, header, data)
    with pytest.raises(qcore.FormatError, match="JSON"):
        qcore.load_quantized(saved)


def test_nan_scale_in_the_data_is_a_format_error(saved):
    header, data = split(saved)
    b, _ = header["qcore:layer0.weight:scale"]["data_offsets"]
    data = bytearray(data)
    data[b : b + 4] = np.float32(np.nan).tobytes()
    join(saved, header, bytes(data))
    with pytest.raises(qcore.FormatError, match="NaN"):
        qcore.load_quantized(saved)


def test_random_byte_flips_never_crash(saved, tmp_path):
    """Any single corrupted byte gives either a valid model or a FormatError (or SchemeNotFound) - nothing else."""
    raw = saved.read_bytes()
    rng = np.random.default_rng(0)
    p = tmp_path / "flip.safetensors"
    for pos in rng.integers(0, len(raw), 150):
        b = bytearray(raw)
        b[pos] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(b))
        try:
            qcore.load_quantized(p)
        except (qcore.FormatError, qcore.SchemeNotFound):
            pass


# -- atomic save --------------------------------------------------------------------------------------------
def test_interrupted_save_leaves_no_file_under_the_target_name(model, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = safetensors_io._write_chunk

    def failing(f, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        real(f, arr)

    monkeypatch.setattr(safetensors_io, "_write_chunk", failing)
    target = tmp_path / "out.safetensors"
    with pytest.raises(OSError, match="simulated"):
        model.save(target)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # the temporary file is removed too


def test_interrupted_save_keeps_the_previous_file_intact(model, tmp_path, monkeypatch):
    target = tmp_path / "out.safetensors"
    model.save(target)
    before = target.read_bytes()

    def failing(f, arr):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_io, "_write_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        model.save(target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_names_that_collide_with_storage_names_are_refused(tmp_path):
    m = qcore.QModel({"w": qcore.quantize(np.ones((4, 4), np.float32)), "qcore:w:codes": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="collide"):
        m.save(tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


# -- plugins ------------------------------------------------------------------------------------------------
def test_unknown_scheme_names_the_plugin_distribution(saved):
    def rename(d):
        e = entry(d, "layer0.weight")
        e["scheme"] = "fancy"
        e["plugin"] = {"distribution": "qcore-fancy", "version": "1.2.3"}
    edit_meta(saved, rename)
    with pytest.raises(qcore.SchemeNotFound) as info:
        qcore.load_quantized(saved)
    msg = str(info.value)
    assert "qcore-fancy" in msg and "'fancy'" in msg and "1.2.3" in msg and "linear" in msg
    # inspect needs no plugin: it reads the header only
    desc = qcore.model.inspect_file(saved)
    assert entry(desc, "layer0.weight")["plugin"]["distribution"] == "qcore-fancy"


def test_third_party_scheme_is_recorded_and_needed(tmp_path):
    from qcore.plugin.manager import get_manager
    from qcore_plugins.schemes.linear import LinearQuantizer

    class Fancy(LinearQuantizer):
        name = "fancy_test_scheme"

    class Plugin:
        @staticmethod
        @qcore.hookimpl
        def qcore_quantizers():
            return [Fancy]

    mgr = get_manager()
    reg = mgr.register(Plugin, name="fancy-test", distribution="qcore-fancy-test", version="0.9")
    try:
        m = qcore.quantize_model({"w": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)},
                                 "fancy_test_scheme", bits=4)
        m.save(tmp_path / "f.safetensors")
        back = qcore.load_quantized(tmp_path / "f.safetensors")
        assert back["w"].scheme == "fancy_test_scheme"
    finally:
        mgr.unregister(reg)
    with pytest.raises(qcore.SchemeNotFound, match="qcore-fancy-test"):
        qcore.load_quantized(tmp_path / "f.safetensors")


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_packing_matches_the_reference_reader_of_docs_format(bits, signed):
    """The numpy reader given in docs/format.md §3 decodes what qcore writes."""
    rng = np.random.default_rng(bits)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    n = 1000 + bits
    codes = rng.integers(lo, hi + 1, n).astype(np.int8 if signed else np.uint8)
    packed = qcore.get_kernel().pack(codes, bits)
    assert packed.size == (n * bits + 7) // 8
    bitpos = np.arange(n)[:, None] * bits + np.arange(bits)
    stream = np.unpackbits(packed, bitorder="little")
    got = (stream[bitpos].astype(np.int64) << np.arange(bits)).sum(axis=1)
    if signed:
        got = np.where(got >= 1 << (bits - 1), got - (1 << bits), got)
    assert np.array_equal(got, codes.astype(np.int64))


def test_worked_packing_examples_of_docs_format():
    k = qcore.get_kernel()
    assert k.pack(np.array([1, 2, 15], np.uint8), 4).tolist() == [0x21, 0x0F]
    assert k.pack(np.array([-1, 2, 0, -4], np.int8), 3).tolist() == [0x17, 0x08]


def test_a_saved_plan_is_validated(tmp_path):
    """The per-tensor plan a planner recorded (candidate, held-out and in-sample errors) round-trips; a
    malformed one is a FormatError naming the tensor."""
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    qm = qcore.quantize_model({"w": w}, "mixed", budget_bits=5.0, progress=False,
                              calibrate={"w": np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)})
    path = tmp_path / "m.safetensors"
    qm.save(path)
    info = qcore.load_quantized(path).info["w"]
    assert {k: info[k] for k in ("candidate", "error", "error_in_sample", "held_out")} == \
           {k: qm.info["w"][k] for k in ("candidate", "error", "error_in_sample", "held_out")}
    for bad in ({"error": "big"}, {"error": -1.0}, {"held_out": 1}, {"surprise": 1}, ["candidate"]):
        p = tmp_path / "bad.safetensors"
        p.write_bytes(path.read_bytes())
        edit_meta(p, lambda doc, bad=bad: entry(doc, "w").__setitem__("plan", bad))
        with pytest.raises(qcore.FormatError, match="'w': plan"):
            qcore.load_quantized(p)
