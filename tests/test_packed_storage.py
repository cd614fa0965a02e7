"""Sub-byte codes stay packed at rest (issue 13): QTensor storage, pickling, files old and new."""
import os
import pickle

import numpy as np
import pytest

import qcore
from qcore import QTensor
from qcore.tensor import _rebuild

DATA = os.path.join(os.path.dirname(__file__), "data")


def reference_unpack(packed, bits, n, signed):
    """docs/format.md §3, the numpy reference reader."""
    bitpos = np.arange(n)[:, None] * bits + np.arange(bits)
    stream = np.unpackbits(packed, bitorder="little")
    codes = (stream[bitpos].astype(np.int64) << np.arange(bits)).sum(axis=1)
    if signed:
        codes = np.where(codes >= 1 << (bits - 1), codes - (1 << bits), codes)
    return codes


def arrays_held(qt):
    """Every numpy array the tensor holds (storage, parameters, kernel cache)."""
    out = [qt.packed] + list(qt.params.values())
    out += [v for v in qt.cache.values() if isinstance(v, np.ndarray)]
    return out


@pytest.mark.parametrize("bits,symmetric", [(2, True), (3, False), (4, True), (4, False), (5, True), (7, False)])
def test_sub_byte_codes_are_held_packed(bits, symmetric):
    x = np.random.default_rng(bits).normal(size=(12, 64)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity="group", group_size=32)
    n = x.size
    assert qt.packed.dtype == np.uint8 and qt.packed.shape == ((n * bits + 7) // 8,)
    assert not qt.packed.flags.writeable
    # nothing of one byte per code is kept: the only code storage is the packed stream
    assert sum(a.nbytes for a in arrays_held(qt)) == qt.nbytes
    assert all(a.size < n for a in arrays_held(qt))
    codes = qt.codes
    assert codes.shape == x.shape and codes.dtype == (np.int8 if symmetric else np.uint8)
    np.testing.assert_array_equal(codes.reshape(-1), reference_unpack(qt.packed, bits, n, symmetric))
    # made on demand: a fresh array each time, and writing into it does not change the tensor
    assert qt.codes is not codes
    before = qt.dequantize()
    codes[...] = 0
    np.testing.assert_array_equal(qt.dequantize(), before)


def test_four_bit_nibble_order():
    """Element 2j is the low nibble of byte j, element 2j+1 the high nibble (the format's bit stream)."""
    codes = np.array([[1, 2, 15, 0, 7, 8]], np.uint8)
    qt = QTensor(codes, "linear", 4, {"scale": np.ones(1, np.float32), "zero_point": np.zeros(1, np.int32)})
    assert qt.packed.tolist() == [0x21, 0x0F, 0x87]
    np.testing.assert_array_equal(qt.codes, codes)


def test_eight_bit_codes_are_the_storage():
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=8, symmetric=True, granularity="channel")
    assert qt.codes is qt.codes  # no unpacking at 8 bits
    assert np.shares_memory(qt.packed, qt.codes) and qt.packed.size == x.size
    assert qt.nbytes == x.size + sum(p.nbytes for p in qt.params.values())


def test_from_packed_never_unpacks(monkeypatch):
    x = np.random.default_rng(1).normal(size=(4, 96)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=3, granularity="channel")
    packed, want = np.array(qt.packed), qt.dequantize()

    def refuse(*a, **k):
        raise AssertionError("from_packed unpacked the codes")

    monkeypatch.setattr(qcore.Kernel, "unpack", refuse)
    back = QTensor.from_packed(packed, qt.shape, "linear", 3, qt.params, qt.options, signed=False, copy=False)
    assert back.packed is packed or np.shares_memory(back.packed, packed)
    monkeypatch.undo()
    np.testing.assert_array_equal(back.dequantize(), want)


def test_from_packed_clears_the_unused_tail_bits():
    packed = np.array([0x21, 0xFF], np.uint8)  # three 4-bit codes: the high nibble of byte 1 is unused
    qt = QTensor.from_packed(packed, (3,), "linear", 4, {"scale": np.ones(1, np.float32),
                                                        "zero_point": np.zeros(1, np.int32)}, signed=False)
    assert qt.packed.tolist() == [0x21, 0x0F] and qt.codes.tolist() == [1, 2, 15]
    assert packed.tolist() == [0x21, 0xFF]  # the caller's array is untouched


def test_bad_storage_input():
    params = {"scale": np.ones(1, np.float32), "zero_point": np.zeros(1, np.int32)}
    with pytest.raises(ValueError, match="out of range"):
        QTensor(np.array([0, 16], np.uint8), "linear", 4, params)
    with pytest.raises(ValueError, match="out of range"):
        QTensor(np.array([-5, 0], np.int8), "linear", 3, params)
    with pytest.raises(TypeError, match="int8 or uint8"):
        QTensor(np.array([0, 1], np.int32), "linear", 4, params)
    with pytest.raises(TypeError, match="signed=True"):
        QTensor(np.array([0, 1], np.uint8), "linear", 4, params, signed=True)
    with pytest.raises(ValueError, match="bits"):
        QTensor(np.array([0, 1], np.uint8), "linear", 9, params)
    with pytest.raises(ValueError, match="need 2 bytes"):
        QTensor.from_packed(np.zeros(3, np.uint8), (4,), "linear", 4, params, signed=False)
    with pytest.raises(TypeError, match="1-d uint8"):
        QTensor.from_packed(np.zeros(2, np.int8), (4,), "linear", 4, params, signed=False)
    with pytest.raises(TypeError, match="unexpected"):
        QTensor.from_packed(np.zeros(2, np.uint8), (4,), "linear", 4, params, signed=False, colour="red")


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_pickle_round_trip_keeps_packed_codes(bits):
    x = np.random.default_rng(bits).normal(size=(6, 32)).astype(np.float32)
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=True, granularity="group", group_size=16)
    data = pickle.dumps(qt)
    assert len(data) < x.size * bits / 8 + 2000  # the pickle holds the packed stream, not unpacked codes
    back = pickle.loads(data)
    np.testing.assert_array_equal(back.packed, qt.packed)
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())
    assert back.nbytes == qt.nbytes


def test_pickles_of_unpacked_codes_still_load():
    """QTensors pickled before packing at rest reduced to ``_rebuild(codes, ...)`` with unpacked codes."""
    codes = np.array([[-7, 0, 3, 7]], np.int8)
    params = {"scale": np.full(1, 0.5, np.float32), "zero_point": np.zeros(1, np.int32)}
    old = _rebuild(codes, "linear", 4, params, {"bits": 4, "symmetric": True}, True, "float32")
    np.testing.assert_array_equal(old.codes, codes)
    np.testing.assert_array_equal(old.dequantize(), codes * np.float32(0.5))


def test_version_1_file_written_before_packing_at_rest_loads():
    """tests/data/format_v1.safetensors was written by qcore before issue 13 (symmetric linear with zero points)."""
    qm = qcore.load_quantized(os.path.join(DATA, "format_v1.safetensors"))
    want = np.load(os.path.join(DATA, "format_v1_expected.npz"))
    for name in ("sym4g", "aff3c", "sym8", "km4", "log4"):
        qt = qm[name]
        np.testing.assert_array_equal(qt.codes, want[name + ".codes"])
        np.testing.assert_array_equal(qt.dequantize(), want[name])
        assert qt.packed.size == (qt.size * qt.bits + 7) // 8
    np.testing.assert_array_equal(qm["bias"], want["bias"])
