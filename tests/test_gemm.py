"""qcore.ops.qgemm: exact against a numpy int64 reference on every GEMM path this CPU supports."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import qcore.ops as ops
from isa_levels import KERNEL, copy_levels
from qcore_plugins import _gemm

ISAS = copy_levels(_gemm)


def ref(a, b, za=0, zb=0):
    za = np.asarray(za, np.int64)
    zb = np.asarray(zb, np.int64)
    a64 = a.astype(np.int64) - (za[:, None] if za.ndim else za)
    b64 = b.astype(np.int64) - (zb[:, None] if zb.ndim else zb)
    return a64 @ b64.T


def rand(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)


SHAPES = [(1, 1, 1), (1, 3, 1), (2, 5, 3), (7, 13, 17), (31, 67, 97), (8, 64, 32), (9, 65, 33),
          (1, 4096, 5), (130, 257, 129), (128, 384, 1536), (3, 1031, 2)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("adt,bdt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)])
def test_random_exact(isa, m, k, n, adt, bdt):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = rand(rng, (m, k), adt), rand(rng, (n, k), bdt)
    np.testing.assert_array_equal(ops.qgemm(a, b), ref(a, b))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (33, 130, 47), (64, 1024, 64)])
def test_zero_points_exact(isa, m, k, n):
    rng = np.random.default_rng(k)
    for adt, bdt in [(np.uint8, np.int8), (np.int8, np.uint8), (np.uint8, np.uint8)]:
        a, b = rand(rng, (m, k), adt), rand(rng, (n, k), bdt)
        ia, ib = np.iinfo(adt), np.iinfo(bdt)
        za, zb = int(rng.integers(ia.min, ia.max + 1)), int(rng.integers(ib.min, ib.max + 1))
        np.testing.assert_array_equal(ops.qgemm(a, b, za, zb), ref(a, b, za, zb))
        # per-row / per-column zero points
        zav = rng.integers(ia.min, ia.max + 1, m)
        zbv = rng.integers(ib.min, ib.max + 1, n)
        np.testing.assert_array_equal(ops.qgemm(a, b, zav, zbv), ref(a, b, zav, zbv))


@pytest.mark.parametrize("k", [1, 3, 4, 63, 64, 65, 1000, 4097])
def test_extreme_operands(isa, k):
    m, n = 11, 37
    cases = [
        (np.full((m, k), 255, np.uint8), np.full((n, k), 127, np.int8)),
        (np.full((m, k), 255, np.uint8), np.full((n, k), -128, np.int8)),
        (np.full((m, k), -128, np.int8), np.full((n, k), -128, np.int8)),
        (np.full((m, k), 127, np.int8), np.full((n, k), -128, np.int8)),
        (np.full((m, k), 255, np.uint8), np.full((n, k), 255, np.uint8)),
        (np.zeros((m, k), np.uint8), np.full((n, k), 127, np.int8)),
    ]
    for a, b in cases:
        np.testing.assert_array_equal(ops.qgemm(a, b), ref(a, b))
    # pairs that make vpmaddubsw saturate (255*127 + 255*127 > 32767) and worst-case zero points
    a = np.tile(np.array([255, 255, 0, 255], np.uint8), (m, k // 4 + 1))[:, :k].copy()
    b = np.tile(np.array([127, 127, -128, -128], np.int8), (n, k // 4 + 1))[:, :k].copy()
    np.testing.assert_array_equal(ops.qgemm(a, b), ref(a, b))
    np.testing.assert_array_equal(ops.qgemm(a, b, 0, 127), ref(a, b, 0, 127))
    np.testing.assert_array_equal(ops.qgemm(a, b, 255, -128), ref(a, b, 255, -128))


def test_largest_exact_k(isa):
    # uint8 x int8 without zero points: K = 65793 is the largest that cannot overflow int32
    k = 65793
    a = np.full((2, k), 255, np.uint8)
    b = np.full((3, k), -128, np.int8)
    out = ops.qgemm(a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref(a, b))
    with pytest.raises(ValueError, match="too large"):
        ops.qgemm(np.zeros((1, k + 1), np.uint8), np.zeros((1, k + 1), np.int8))


def test_layout_is_n_by_k(isa):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    b = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.int8)  # (N=4, K=3)
    out = ops.qgemm(a, b)
    assert out.shape == (2, 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [3, 4, 5, 12]])


def test_non_contiguous_and_fortran(isa):
    rng = np.random.default_rng(3)
    a = rand(rng, (40, 90), np.uint8)
    b = rand(rng, (50, 90), np.int8)
    np.testing.assert_array_equal(ops.qgemm(a[::2, ::3], b[1::2, ::3]), ref(a[::2, ::3], b[1::2, ::3]))
    np.testing.assert_array_equal(ops.qgemm(np.asfortranarray(a), np.asfortranarray(b)), ref(a, b))


def test_packed_weights_reuse(isa):
    rng = np.random.default_rng(4)
    b = rand(rng, (70, 45), np.uint8)
    pb = ops.pack_weights(b)
    assert pb.isa == isa
    for m in (1, 5, 64):
        a = rand(rng, (m, 45), np.int8)
        np.testing.assert_array_equal(ops.qgemm(a, pb), ref(a, b))
        np.testing.assert_array_equal(ops.qgemm(a, pb, -3, 200), ref(a, b, -3, 200))


def test_empty():
    assert ops.qgemm(np.zeros((0, 5), np.uint8), np.zeros((3, 5), np.int8)).shape == (0, 3)
    assert ops.qgemm(np.zeros((2, 5), np.uint8), np.zeros((0, 5), np.int8)).shape == (2, 0)
    out = ops.qgemm(np.zeros((2, 0), np.uint8), np.zeros((3, 0), np.int8))
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.int32))


def test_bad_input():
    a = np.zeros((2, 4), np.uint8)
    b = np.zeros((3, 4), np.int8)
    with pytest.raises(TypeError, match="dtype int8 or uint8"):
        ops.qgemm(a.astype(np.int16), b)
    with pytest.raises(TypeError, match="dtype int8 or uint8"):
        ops.qgemm(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        ops.qgemm([[1, 2]], b)
    with pytest.raises(ValueError, match="2-D"):
        ops.qgemm(a[0], b)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        ops.qgemm(a, np.zeros((4, 3), np.int8))
    with pytest.raises(ValueError, match="a_zero_point"):
        ops.qgemm(a, b, a_zero_point=256)
    with pytest.raises(ValueError, match="b_zero_point"):
        ops.qgemm(a, b, b_zero_point=-129)
    with pytest.raises(ValueError, match="shape"):
        ops.qgemm(a, b, a_zero_point=np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="integer"):
        ops.qgemm(a, b, a_zero_point=0.5)
    with pytest.raises(ValueError, match="sse9"):
        KERNEL.set_isa("sse9")
    with pytest.raises(ValueError, match="sse9"):
        _gemm.pack_b(b.view(np.int8), "sse9")


def test_threads_share_packed_weights():
    rng = np.random.default_rng(5)
    b = rand(rng, (257, 300), np.int8)
    pb = ops.pack_weights(b)
    inputs = [rand(rng, (65 + i, 300), np.uint8) for i in range(6)]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = ops.qgemm(inputs[i], pb, 7, -2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, r in zip(inputs, results):
        np.testing.assert_array_equal(r, ref(a, b, 7, -2))


@pytest.mark.parametrize("name", ISAS)
def test_env_var_selects_path(name):
    code = "import qcore; from qcore_plugins import _gemm; print(qcore.get_kernel().isa, _gemm.ISA.copy)"
    env = dict(os.environ, QCORE_ISA=name)  # one variable for every extension (tests/test_isa.py)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [name, name]


def test_old_env_var_is_a_deprecated_cap():
    code = ("import warnings; warnings.simplefilter('always'); import qcore; from qcore_plugins import _gemm; "
            "print(qcore.get_kernel().isa, _gemm.ISA.copy)")
    env = {k: v for k, v in os.environ.items() if k != "QCORE_ISA"}
    env["QCORE_GEMM_ISA"] = "portable"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["baseline", "baseline"]
    assert "DeprecationWarning" in out.stderr and "QCORE_GEMM_ISA" in out.stderr
    env["QCORE_GEMM_ISA"] = "nonsense"  # a mistyped value is an error, not silently the best path
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "QCORE_GEMM_ISA" in out.stderr and "baseline" in out.stderr


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k", [(1, 1), (5, 7), (33, 65), (64, 128), (17, 1031)])
def test_unpack_b_is_the_inverse_of_pack(isa, n, k):
    """The int8 weight's panels give back the codes exactly (a QLinear keeps only the panels)."""
    rng = np.random.default_rng(n * k)
    for dtype in (np.int8, np.uint8):
        b = rand(rng, (n, k), dtype)
        back = _gemm.unpack_b(_gemm.pack_b(b, isa))
        assert back.dtype == b.dtype
        np.testing.assert_array_equal(back, b)
