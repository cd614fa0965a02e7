"""Exact sub-byte storage for every built-in scheme: nbytes and pack/unpack round trips at 1..8 bits."""
import math

import numpy as np
import pytest

import qcore
from qcore import QTensor

CASES = (
    [("linear", {}, b) for b in range(1, 9)]
    + [("linear", {"symmetric": True}, b) for b in range(1, 9)]
    + [("linear", {"granularity": "group", "group_size": 13}, b) for b in (3, 5)]
    + [("log", {}, b) for b in range(2, 9)]
    + [("log", {"granularity": "channel"}, b) for b in (3, 6)]
    + [("kmeans", {}, b) for b in range(1, 9)]
    + [("kmeans", {"granularity": "channel"}, b) for b in (2, 7)]
)


@pytest.mark.parametrize("scheme,opts,bits", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("kernel", ["cython", "numpy"])
def test_exact_storage_and_round_trip(scheme, opts, bits, kernel):
    x = np.random.default_rng(bits).laplace(size=(7, 39)).astype(np.float32)  # 273 codes: ragged bit streams
    qt = qcore.quantize(x, scheme, bits=bits, **opts)
    n = x.size
    assert qt.nbytes == math.ceil(n * bits / 8) + sum(p.nbytes for p in qt.params.values())
    packed = qt.pack(kernel=kernel)
    assert packed.dtype == np.uint8 and packed.shape == (math.ceil(n * bits / 8),)
    back = QTensor.from_packed(packed, qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed, kernel=kernel)
    assert back.codes.dtype == qt.codes.dtype
    assert np.array_equal(back.codes, qt.codes)
    assert np.array_equal(back.dequantize(), qt.dequantize())


@pytest.mark.parametrize("scheme", ["linear", "log", "kmeans"])
def test_cython_and_numpy_packings_are_the_same_bytes(scheme):
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    for bits in range(2, 9):
        qt = qcore.quantize(x, scheme, bits=bits)
        assert np.array_equal(qt.pack(kernel="cython"), qt.pack(kernel="numpy"))


def test_three_bit_codes_take_three_eighths_of_a_byte():
    x = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    for scheme in ("linear", "log", "kmeans"):
        qt = qcore.quantize(x, scheme, bits=3)
        assert qt.pack().size == 3000
    assert qcore.quantize(x, "kmeans", bits=3).nbytes == 3000 + 8 * 4  # + the float32 codebook
    assert qcore.quantize(x, "log", bits=3).nbytes == 3000 + 4          # + one float32 scale


def test_empty_tensor_packs_to_nothing():
    for scheme in ("linear", "log", "kmeans"):
        qt = qcore.quantize(np.zeros((0, 3), np.float32), scheme, bits=5)
        assert qt.pack().size == 0
        back = QTensor.from_packed(qt.pack(), qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
        assert back.shape == (0, 3)
