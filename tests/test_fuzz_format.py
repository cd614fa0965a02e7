"""Fuzzing the quantized-model loader (docs/format.md, docs/reliability.md).

Valid files are mutated at three levels and handed to ``qcore.load_quantized``:

* **bytes** — flips, overwrites with interesting values, truncation, insertion, deletion, appended garbage;
* **container header** — the safetensors JSON (``dtype``, ``shape``, ``data_offsets``, extra/missing keys,
  header length), re-serialized;
* **qcore description** — every field of the per-tensor JSON (scheme names, bits, signed, shape, dtype, options
  of every scheme, references to codes/params), the format version, and — structure-aware — the *data* of the
  parameter tensors (resized consistently in the container, so that only the qcore metadata lies, or filled with
  0, negatives, NaN, Inf, denormals, huge values).

The oracle, for every mutated file:

* the load either succeeds — and then every tensor dequantizes to finite float32 values of its described shape —
  or raises ``qcore.FormatError`` / ``qcore.SchemeNotFound``; any other exception is a bug;
* no ``MemoryError`` hides behind a FormatError (a hostile size must be refused before it is allocated);
* the peak of traced allocations (Python and numpy, via ``tracemalloc``) stays below a small multiple of the
  file size plus a constant, and the load finishes in a few seconds (hypothesis ``deadline``).

Budget: ``QCORE_FUZZ_EXAMPLES`` examples per strategy (default 400, about 15 s in all on 2 cores); docs/reliability.md
records the long runs (``QCORE_FUZZ_EXAMPLES=20000``).
"""
from __future__ import annotations

import copy
import json
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcore

EXAMPLES = int(os.environ.get("QCORE_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

#: the allocation bound: a loader may hold the file, its decoded values (4 bytes per code, at most 8 codes per
#: byte at 1 bit) and per-channel decode tables; anything far beyond that is an amplification bug
ALLOC_FACTOR = 600
ALLOC_CONST = 8 << 20


# -- a small valid model covering every kind of storage -------------------------------------------------------
def _model() -> qcore.QModel:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    m = qcore.QModel()
    m["lin_t8"] = qcore.quantize(w, "linear", bits=8)
    m["lin_c3"] = qcore.quantize(w, "linear", bits=3, granularity="channel", axis=1)
    m["lin_g4s"] = qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=8)
    m["lin_b1"] = qcore.quantize(w[:2], "linear", bits=1, symmetric=True, granularity="channel")
    m["lin_t2"] = qcore.quantize(w[:3, :5], "linear", bits=2, symmetric=True)
    m["log_c4"] = qcore.quantize(w, "log", bits=4, granularity="channel")
    m["km_t2"] = qcore.quantize(w[:4], "kmeans", bits=2)
    m["km_c1"] = qcore.quantize(w[:3], "kmeans", bits=1, granularity="channel")
    m["empty"] = qcore.quantize(np.zeros((0, 4), np.float32), "linear", bits=5, granularity="channel")
    m["bias"] = rng.standard_normal(6).astype(np.float32)
    m["ids"] = np.arange(5, dtype=np.int64)
    m["half"] = np.ones((2, 2), np.float16)
    return m


class _Raw(bytes):
    """The valid file's bytes, with a short repr (hypothesis prints fixtures in falsifying examples)."""

    def __repr__(self):
        return f"<valid model file, {len(self)} bytes>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "valid.safetensors"
    _model().save(path)
    return _Raw(path.read_bytes())


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzzcase") / "case.safetensors"


# -- the container, taken apart and put back together ------------------------------------------------------
def split(raw: bytes):
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    meta = header.pop("__metadata__")
    doc = json.loads(meta["qcore"])
    blobs = {k: data[v["data_offsets"][0] : v["data_offsets"][1]] for k, v in header.items()}
    return header, blobs, meta, doc


def join_header(header: dict, data: bytes, *, length: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def build(entries: dict, blobs: dict, meta: dict, doc: dict | None) -> bytes:
    """A container whose offsets are consistent with ``blobs`` (whatever dtype/shape ``entries`` claim)."""
    header, pos, data = {}, 0, []
    for name, e in entries.items():
        b = blobs[name]
        header[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        data.append(b)
    meta = dict(meta)
    if doc is not None:
        meta["qcore"] = json.dumps(doc)
    header = {"__metadata__": meta, **header}
    return join_header(header, b"".join(data))


# -- the oracle ------------------------------------------------------------------------------------------------
OUTCOMES: dict[str, int] = {}


def check_load(raw: bytes, path) -> str:
    """Load ``raw``; return ``"ok"``, ``"FormatError"`` or ``"SchemeNotFound"``; fail on anything else."""
    path.write_bytes(raw)
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    try:
        try:
            model = qcore.load_quantized(path)
            outcome = "ok"
        except qcore.SchemeNotFound:
            outcome = "SchemeNotFound"
        except qcore.FormatError as exc:
            msg = str(exc)
            assert "MemoryError" not in msg and "Unable to allocate" not in msg, f"a hostile size was allocated: {msg}"
            outcome = "FormatError"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    limit = ALLOC_FACTOR * len(raw) + ALLOC_CONST
    assert peak <= limit, f"loading a {len(raw)}-byte file allocated {peak} bytes (limit {limit})"
    assert elapsed < 10, f"loading a {len(raw)}-byte file took {elapsed:.1f} s"
    if outcome == "ok":  # a correct load: every tensor comes back as finite values of its shape
        for name, t in model.items():
            if isinstance(t, qcore.QTensor):
                v = t.dequantize()
                assert v.dtype == np.float32 and v.shape == t.shape and np.isfinite(v).all(), name
                assert t.codes.shape == t.shape
                assert ((t.codes >= -(1 << (t.bits - 1))) & (t.codes < (1 << t.bits))).all()
            else:
                assert isinstance(t, np.ndarray)
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1
    return outcome


def test_the_valid_file_loads(valid, fuzz_path):
    assert check_load(valid, fuzz_path) == "ok"
    m = qcore.load_quantized(fuzz_path)
    ref = _model()
    for name in ref:
        a, b = ref[name], m[name]
        if isinstance(a, qcore.QTensor):
            np.testing.assert_array_equal(a.dequantize(), b.dequantize())
        else:
            np.testing.assert_array_equal(a, b)


# -- strategies ------------------------------------------------------------------------------------------------
BIG = [2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64, 2**64 + 7, 10**30]
INTS = st.one_of(st.integers(-3, 300), st.sampled_from(BIG + [-b for b in BIG]))
JUNK = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6), st.lists(st.integers(-2, 9), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SHAPES = st.one_of(
    st.lists(st.integers(0, 40), max_size=4),
    st.lists(st.sampled_from([0, 1, 2, 3, 6, 16, 96] + BIG), min_size=1, max_size=5),
    st.lists(st.integers(0, 2), min_size=33, max_size=40),
    JUNK,
)
SCHEMES = st.one_of(st.sampled_from(["linear", "log", "kmeans", "mixed", "LINEAR", "", "nf4", "no_such_scheme"]), st.text(max_size=8), JUNK)
BITS = st.one_of(st.integers(-1, 10), st.sampled_from([True, False, 1.0, 4.5, "4", None, 2**64]))
DTYPES_ST = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8", "u8", "", "Q4"]
OPTION_VALUES = {
    "granularity": st.one_of(st.sampled_from(["tensor", "channel", "group", "block", ""]), JUNK),
    "axis": st.one_of(st.integers(-6, 6), st.sampled_from(BIG + [-b for b in BIG]), JUNK),
    "group_size": st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, 32, 128, -8] + BIG), JUNK),
    "symmetric": st.one_of(st.booleans(), JUNK),
    "method": st.one_of(st.sampled_from(["mse", "range", "x"]), JUNK),
    "rounding": st.one_of(st.sampled_from(["nearest", "log2", "up"]), JUNK),
    "random_state": JUNK,
    "bins": st.one_of(st.sampled_from([None, 15, 16, 1 << 24, (1 << 24) + 1]), JUNK),
    "max_iter": st.one_of(st.sampled_from([0, 1, 100000, 100001]), JUNK),
    "budget_bits": JUNK,
    "observer": st.one_of(st.sampled_from(["minmax", "histogram", "nope"]), JUNK),
    "kernel": st.one_of(st.sampled_from(["numpy", "cython", "nope"]), JUNK),
    "bits": BITS,
    "unknown_option": JUNK,
}
QUANTIZED_FIELDS = ["scheme", "bits", "signed", "shape", "dtype", "options", "codes", "params", "plugin",
                    "sqnr_db", "planned_by", "plan", "kind", "name"]


@st.composite
def byte_mutation(draw, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "append", "length"]))
        if not b:
            break
        pos = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            val = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord("9"), ord("-"), ord('"'), ord("{"), ord("]")]))
            b[pos] = val
        elif op == "truncate":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del b[pos : pos + draw(st.integers(1, 64))]
        elif op == "append":
            b += draw(st.binary(min_size=1, max_size=64))
        else:  # rewrite the header length
            n = draw(st.one_of(st.integers(0, len(b) + 16), st.sampled_from([2**63, 2**64 - 1, 100 * 2**20 + 1])))
            b[:8] = struct.pack("<Q", n)
    return bytes(b)


@given(data=st.data())
@FUZZ
def test_fuzz_bytes(valid, fuzz_path, data):
    check_load(data.draw(byte_mutation(valid)), fuzz_path)


@given(data=st.data())
@FUZZ
def test_fuzz_container_header(valid, fuzz_path, data):
    """The safetensors header: dtype, shape, data_offsets and the entry keys of one tensor, or the metadata."""
    (n,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8 : 8 + n])
    payload = valid[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names))
        e = header[name]
        what = data.draw(st.sampled_from(["dtype", "shape", "offsets", "offset_one", "keys", "metadata", "dup"]))
        if what == "dtype":
            e["dtype"] = data.draw(st.one_of(st.sampled_from(DTYPES_ST), JUNK))
        elif what == "shape":
            e["shape"] = data.draw(SHAPES)
        elif what == "offsets":
            e["data_offsets"] = data.draw(st.one_of(st.lists(INTS, max_size=3), JUNK))
        elif what == "offset_one":
            offs = e.get("data_offsets")
            if isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs):
                offs[data.draw(st.integers(0, 1))] += data.draw(st.sampled_from([-8, -1, 1, 4, 2**40, -(2**40)]))
        elif what == "keys":
            if data.draw(st.booleans()) and e:
                e.pop(data.draw(st.sampled_from(sorted(e))))
            else:
                e[data.draw(st.text(max_size=4))] = data.draw(JUNK)
        elif what == "metadata":
            header["__metadata__"] = data.draw(st.one_of(JUNK, st.dictionaries(st.text(max_size=5), JUNK, max_size=3)))
        else:
            header[name + "x"] = copy.deepcopy(e)
    check_load(join_header(header, payload), fuzz_path)


@st.composite
def doc_mutation(draw, raw: bytes) -> bytes:
    """Mutate the qcore description (and, consistently, the container) of a valid file."""
    entries, blobs, meta, doc = split(raw)
    tlist = doc["tensors"]
    q = [d for d in tlist if d["kind"] == "quantized"]
    for _ in range(draw(st.integers(1, 3))):
        d = draw(st.sampled_from(tlist))
        op = draw(st.sampled_from(
            ["field", "field", "option", "option", "option", "drop_option", "scheme_swap", "param_data",
             "param_resize", "codes_resize", "swap_refs", "doc", "drop_field", "shape_consistent"]))
        try:
            _mutate_doc(draw, op, d, q, tlist, doc, entries, blobs)
        except (KeyError, TypeError, AttributeError, IndexError):
            pass  # an earlier mutation broke what this one edits: the file goes out as it is
    return build(entries, blobs, meta, doc)


def _mutate_doc(draw, op, d, q, tlist, doc, entries, blobs):
    if True:
        if op == "field":
            field = draw(st.sampled_from(QUANTIZED_FIELDS))
            strat = {"scheme": SCHEMES, "bits": BITS, "shape": SHAPES, "signed": st.one_of(st.booleans(), JUNK),
                     "dtype": st.one_of(st.sampled_from(["float32", "float16", "object", "V99999999999", "<U5", "int64"]), JUNK),
                     "kind": st.one_of(st.sampled_from(["quantized", "tensor", "other"]), JUNK),
                     "codes": st.one_of(st.sampled_from(sorted(entries)), JUNK),
                     "name": st.one_of(st.sampled_from([t.get("name") for t in tlist]), JUNK)}.get(field, JUNK)
            d[field] = draw(strat)
        elif op == "drop_field":
            if d:
                d.pop(draw(st.sampled_from(sorted(d))))
        elif op == "option" and isinstance(d.get("options"), dict):
            key = draw(st.sampled_from(sorted(OPTION_VALUES)))
            d["options"][key] = draw(OPTION_VALUES[key])
        elif op == "drop_option" and isinstance(d.get("options"), dict) and d["options"]:
            d["options"].pop(draw(st.sampled_from(sorted(d["options"]))))
        elif op == "scheme_swap" and q:
            # a valid description of another tensor, under this tensor's data (or another scheme's name)
            src = draw(st.sampled_from(q))
            for key in ("scheme", "bits", "signed", "options"):
                if key in src and d.get("kind") == "quantized":
                    d[key] = copy.deepcopy(src[key])
        elif op in ("param_data", "param_resize", "codes_resize") and d.get("kind") == "quantized":
            if op == "codes_resize":
                key = d["codes"]
            else:
                key = draw(st.sampled_from(sorted(d["params"].values())))
            e = entries[key]
            item = {"F32": 4, "I32": 4, "U8": 1, "F16": 2, "I64": 8}.get(e["dtype"], 1)
            if op == "param_data":
                vals = draw(st.sampled_from([0.0, -1.0, 1e-45, 1e-38, 3e38, float("nan"), float("inf"), 2**31, -(2**31), 255.0, 1e10]))
                count = len(blobs[key]) // item
                arr = np.full(count, vals, {"F32": np.float32, "I32": np.float64}.get(e["dtype"], np.float64))
                if e["dtype"] == "F32":
                    blobs[key] = arr.astype("<f4").tobytes()
                elif e["dtype"] in ("I32", "I64", "U8"):
                    dt = {"I32": "<i4", "I64": "<i8", "U8": "u1"}[e["dtype"]]
                    info = np.iinfo(dt)
                    blobs[key] = np.clip(np.nan_to_num(arr), info.min, info.max).astype(dt).tobytes()
            else:  # a different number of elements, container kept consistent: only the qcore metadata lies
                count = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 64, 257]))
                blobs[key] = draw(st.binary(min_size=count * item, max_size=count * item)) if count < 8 else bytes(count * item)
                e["shape"] = [count]
                if draw(st.booleans()) and count:
                    e["shape"] = [1, count]
                if op == "param_resize" and draw(st.booleans()):  # change the dtype as well
                    e["dtype"] = draw(st.sampled_from(["U8", "I8", "BOOL"]))
                    blobs[key] = blobs[key][: count]
                    e["shape"] = [len(blobs[key])]
        elif op == "shape_consistent" and d.get("kind") == "quantized":
            # a new shape with codes resized to match it exactly: only the parameters disagree
            shape = draw(st.one_of(st.lists(st.integers(0, 12), max_size=3),
                                   st.lists(st.sampled_from([0, 1, 10**8, 2**40, 2**62, 2**64]), min_size=2, max_size=3)))
            count = int(np.prod(shape, dtype=object))
            bits = d["bits"] if isinstance(d["bits"], int) and 1 <= d["bits"] <= 8 else 8
            nb = (count * bits + 7) // 8
            if nb > 4096:
                return
            d["shape"] = shape
            blobs[d["codes"]] = bytes(nb)
            entries[d["codes"]]["shape"] = [nb]
        elif op == "swap_refs" and len(q) >= 2:
            a, b = draw(st.sampled_from(q)), draw(st.sampled_from(q))
            if a is not b and draw(st.booleans()):
                a["params"], b["params"] = b["params"], a["params"]
            else:
                a["codes"], b["codes"] = b["codes"], a["codes"]
        elif op == "doc":
            key = draw(st.sampled_from(["format", "format_version", "tensors", "metadata", "qcore_version"]))
            doc[key] = draw(st.one_of(st.sampled_from([0, 1, 2, 99, "1", None, []]), JUNK))


@given(data=st.data())
@FUZZ
def test_fuzz_qcore_description(valid, fuzz_path, data):
    check_load(data.draw(doc_mutation(valid)), fuzz_path)


@given(data=st.data())
@FUZZ
def test_fuzz_raw_qcore_metadata(valid, fuzz_path, data):
    """The qcore metadata string itself: byte-level edits inside the JSON text (deep nesting, NaN, truncation)."""
    entries, blobs, meta, doc = split(valid)
    text = meta["qcore"]
    op = data.draw(st.sampled_from(["cut", "splice", "nest", "nan"]))
    if op == "cut":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif op == "splice":
        pos = data.draw(st.integers(0, len(text)))
        text = text[:pos] + data.draw(st.text(max_size=12)) + text[pos:]
    elif op == "nest":
        depth = data.draw(st.sampled_from([10, 1000, 100_000]))
        text = text.replace('"metadata": {}', '"metadata": ' + "[" * depth + "]" * depth, 1)
    else:
        text = text.replace('"sqnr_db": ', '"sqnr_db": NaN, "x": ', 1)
    meta = dict(meta, qcore=text)
    check_load(build(entries, blobs, meta, None), fuzz_path)


# -- hostile files found by fuzzing (regressions) ------------------------------------------------------------
def _hostile(valid, edit) -> bytes:
    entries, blobs, meta, doc = split(valid)
    edit(entries, blobs, doc, {d["name"]: d for d in doc["tensors"]})
    return build(entries, blobs, meta, doc)


def _empty_with_huge_channels(entries, blobs, doc, by):
    # zero elements, so zero code bytes, but 10^9 channels: decoding must not broadcast the scale to 10^9 values
    d = by["empty"]
    d["shape"] = [10**9, 0]
    for key, raw in (("scale", np.float32(1).tobytes()), ("zero_point", np.int32(0).tobytes())):
        blobs[d["params"][key]] = raw
        entries[d["params"][key]]["shape"] = [1]


def _log_scale_too_short(entries, blobs, doc, by):
    # a per-channel log tensor with one scale for six channels: decoding read past the end of its table
    d = by["log_c4"]
    key = d["params"]["scale"]
    blobs[key] = blobs[key][:4]
    entries[key]["shape"] = [1]


def _kmeans_codebook_one_row(entries, blobs, doc, by):
    d = by["km_c1"]
    key = d["params"]["codebook"]
    blobs[key] = blobs[key][:8]
    entries[key]["shape"] = [1, 2]


@pytest.mark.parametrize("edit", [_empty_with_huge_channels, _log_scale_too_short, _kmeans_codebook_one_row],
                         ids=lambda f: f.__name__.strip("_"))
def test_hostile_regressions(valid, fuzz_path, edit):
    # check_load bounds the allocations; an empty tensor with one (broadcast) scale is a valid, empty tensor
    want = ("ok", "FormatError") if edit is _empty_with_huge_channels else ("FormatError",)
    assert check_load(_hostile(valid, edit), fuzz_path) in want


def test_log_decode_refuses_a_scale_count_that_does_not_match_the_channels():
    # found by fuzzing: log's decode built a (len(scale), 256) table and the kernel read row c for every channel c
    q = qcore.get_quantizer("log", bits=4, granularity="channel")
    with pytest.raises(ValueError, match="scale has 1 values, expected 64"):
        q.decode(np.zeros((64, 10), np.int8), {"scale": np.ones(1, np.float32)})


def test_decoding_an_empty_tensor_does_not_broadcast_parameters_to_its_channels():
    # found by fuzzing: shape [10**9, 0] with one scale allocated 9 GB (np.full over 10**9 channels) to decode nothing
    q = qcore.get_quantizer("linear", bits=8, granularity="channel")
    tracemalloc.start()
    try:
        out = q.decode(np.zeros((10**9, 0), np.uint8), {"scale": np.ones(1, np.float32), "zero_point": np.zeros(1, np.int32)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (10**9, 0) and peak < 1 << 20
    with pytest.raises(ValueError, match="one value per channel"):
        q.decode(np.zeros((10**9, 0), np.uint8), {"scale": np.ones(2, np.float32), "zero_point": np.zeros(2, np.int32)})


def test_unhashable_dtype_in_the_header_is_a_format_error(valid, fuzz_path):
    # found by test_fuzz_container_header: `"dtype": []` raised TypeError (unhashable) instead of FormatError
    (n,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8 : 8 + n])
    header["qcore:lin_t8:scale"]["dtype"] = []
    with pytest.raises(qcore.FormatError, match="unknown dtype"):
        fuzz_path.write_bytes(join_header(header, valid[8 + n :]))
        qcore.load_quantized(fuzz_path)


def test_report_outcomes():
    """Print how the fuzz cases of this run ended (visible with ``pytest -s``; docs/reliability.md)."""
    print(f"\nfuzz outcomes ({EXAMPLES} examples per strategy): {OUTCOMES}")


@pytest.mark.parametrize("where", ["container", "description"])
@pytest.mark.parametrize("shape", [[0, 2**31 - 1, 2**31 - 1], [0, 2**64], [2**62, 0, 2**62]])
def test_empty_shapes_too_large_for_numpy_are_format_errors(valid, fuzz_path, where, shape):
    # found by test_fuzz_container_header: a 0-element shape whose other dimensions overflow numpy's size limit
    # raised ValueError ("array is too big") from the container, OverflowError from the qcore description
    def edit(entries, blobs, doc, by):
        if where == "container":
            entries[by["empty"]["params"]["scale"]]["shape"] = shape
        else:
            by["empty"]["shape"] = shape

    fuzz_path.write_bytes(_hostile(valid, edit))
    with pytest.raises(qcore.FormatError, match="too large for any array"):
        qcore.load_quantized(fuzz_path)
