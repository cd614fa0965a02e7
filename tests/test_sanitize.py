"""Kernel edge cases meant to run under AddressSanitizer + UndefinedBehaviorSanitizer (``tox -e sanitize``).

They pass in any build; under the sanitizers they make every Cython/C kernel touch its boundaries: sizes around
the SIMD widths (tails of 1..63 elements), around the OpenMP split thresholds, every instruction-set variant
(baseline / AVX2 / AVX-512 for quantize, baseline / AVX2 / AVX-512 VNNI for the GEMM), unaligned views and
extreme values, so an out-of-bounds read or write, a misaligned access or signed overflow aborts the run.

With ``QCORE_EXPECT_SANITIZER=1`` (set by the tox env) the first test also checks that the extension modules
really are the instrumented ones (linked against libasan and libubsan) and come from the tox env, not from
the source tree.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import qcore
import qcore.ops as ops
from isa_levels import at_level, copy_levels
from qcore_plugins import _quant
from qcore_plugins.kernels.cython_kernel import EXTENSIONS
SIZES = sorted({*range(0, 70), 127, 128, 129, 255, 256, 257, 1023, 1025, 4095, 4096, 4097, 16383, 16385,
                (1 << 15) - 1, 1 << 15, (1 << 15) + 1, (1 << 16) + 3})


def _needed(path: str) -> set[str]:
    """DT_NEEDED entries of an ELF shared object (a tiny parser: no readelf needed)."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = set()
    for name, typ, flags, addr, off, size, link, info, align, entsize in sections:
        if typ == 6:  # SHT_DYNAMIC
            stroff = sections[link][4]
            for j in range(0, size, 16):
                tag, val = struct.unpack_from("<qQ", data, off + j)
                if tag == 1:  # DT_NEEDED
                    end = data.index(b"\0", stroff + val)
                    out.add(data[stroff + val : end].decode())
    return out


@pytest.mark.skipif(os.environ.get("QCORE_EXPECT_SANITIZER") != "1", reason="only in the sanitize tox env")
def test_extensions_are_the_instrumented_build():
    src = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    for mod in EXTENSIONS:
        path = os.path.realpath(mod.__file__)
        assert os.path.dirname(path) != os.path.join(src, "plugins"), f"{mod.__name__} imported from the source tree: {path}"
        needed = _needed(path)
        assert any(n.startswith("libasan") for n in needed), (path, needed)
        assert any(n.startswith("libubsan") for n in needed), (path, needed)


def test_the_lowbit_tiles_are_specialised_except_in_the_sanitizer_build():
    """The sanitizer build compiles the low-bit tiles generically (tox.ini: QCORE_GENERIC_TILES); a normal build never
    ships that slower form."""
    from qcore_plugins import _lowbit

    assert _lowbit.GENERIC_TILES == (os.environ.get("QCORE_EXPECT_SANITIZER") == "1")


@pytest.fixture(params=copy_levels(_quant))
def quant_isa(request):
    with at_level(request.param):
        yield request.param


def test_quantize_kernels_at_every_size_and_isa(quant_isa):
    rng = np.random.default_rng(0)
    cy, ref = qcore.get_kernel("cython"), qcore.get_kernel("numpy")
    for n in SIZES:
        buf = (rng.standard_normal(n + 1) * 50).astype(np.float32)
        x = buf[1:]  # unaligned start
        for args in ((np.float32(0.37), 3, -128, 127), (np.float32(0.05), 128, 0, 255), (np.float32(1e-3), -7, -8, 7)):
            scale, zp, lo, hi = args
            a = cy.quantize_affine(x, scale, zp, lo, hi)
            np.testing.assert_array_equal(a, ref.quantize_affine(x, scale, zp, lo, hi))
            np.testing.assert_array_equal(cy.dequantize_affine(a, scale, zp), ref.dequantize_affine(a, scale, zp))
        if n:
            for got, want in zip(cy.minmax(x), ref.minmax(x)):
                np.testing.assert_array_equal(got, want)
        if n % 7 == 0 or n > 1000:
            # per-channel, both layouts (long runs and short rows)
            for shape, axis in (((n, 3), 1), ((3, n), 0), ((2, n, 2), 1)):
                xc = (rng.standard_normal(shape) * 4).astype(np.float32)
                C = shape[axis]
                s = rng.uniform(0.01, 1, C).astype(np.float32)
                z = rng.integers(0, 256, C).astype(np.int32)
                a = cy.quantize_affine(xc, s, z, 0, 255, axis=axis)
                np.testing.assert_array_equal(a, ref.quantize_affine(xc, s, z, 0, 255, axis=axis))
                np.testing.assert_array_equal(cy.dequantize_affine(a, s, z, axis=axis), ref.dequantize_affine(a, s, z, axis=axis))


def test_pack_unpack_at_every_size():
    rng = np.random.default_rng(1)
    cy, ref = qcore.get_kernel("cython"), qcore.get_kernel("numpy")
    for bits in range(1, 9):
        for n in SIZES[:90]:
            codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n + 3).astype(np.int8)[3:]
            p = cy.pack(codes, bits)
            np.testing.assert_array_equal(p, ref.pack(codes, bits))
            np.testing.assert_array_equal(cy.unpack(p, bits, n, True), codes)


def test_gemm_at_tile_boundaries(isa):  # every GEMM copy (the conftest fixture)
    rng = np.random.default_rng(2)
    for m, k, n in [(1, 1, 1), (1, 7, 3), (3, 5, 17), (5, 63, 33), (9, 64, 31), (17, 129, 15), (33, 4, 65),
                    (1, 1000, 1), (65, 3, 129), (2, 300, 48)]:
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        b = rng.integers(-127, 128, (n, k)).astype(np.int8)
        for za, zb in ((0, 0), (128, 0), (7, 3)):
            want = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb).T
            np.testing.assert_array_equal(ops.qgemm(a, b, za, zb), want)
        w = qcore.quantize(rng.standard_normal((n, k)).astype(np.float32), "linear", bits=8, symmetric=True,
                           granularity="channel")
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = ops.qlinear(x, w, rng.standard_normal(n).astype(np.float32))
        assert y.shape == (m, n) and np.isfinite(y).all()


def test_codebook_and_histogram_kernels_at_every_size():
    rng = np.random.default_rng(3)
    for n in SIZES[::3]:
        x = (rng.standard_normal((2, n)) * 3).astype(np.float32)
        if n == 0:
            continue
        for scheme, opts in (("log", dict(bits=4)), ("log", dict(bits=8, granularity="channel")),
                             ("kmeans", dict(bits=3, granularity="channel"))):
            if scheme == "kmeans" and n > 5000:
                continue
            qt = qcore.quantize(x, scheme, **opts)
            ref = qcore.get_quantizer(scheme, kernel="numpy", **opts).quantize(x)
            np.testing.assert_array_equal(qt.codes, ref.codes)
            np.testing.assert_array_equal(qt.dequantize(), ref.dequantize())
        for obs in ("histogram", "percentile", "mse"):
            q = qcore.get_quantizer("linear", bits=8, observer=obs, granularity="channel")
            q.observe(x)
            q.observe(x * 2)
            assert np.isfinite(q.quantize(x).dequantize()).all()
