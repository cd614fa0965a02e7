"""Memory: 10,000 quantize / dequantize / qlinear calls (plus packing, calibration, file loads and refused inputs)
do not grow the process (issue 9).

Two measures: the resident set size (``/proc/self/statm``; catches leaks in C/Cython helpers and OpenMP
buffers) must grow by less than a small bound between a warmed-up point and the end; and the memory traced by
``tracemalloc`` (Python objects and numpy buffers) must come back to where it was, so nothing accumulates in
caches either.
"""
from __future__ import annotations

import gc
import os
import sys
import tracemalloc

import numpy as np
import pytest

import qcore
import qcore.ops

CALLS = int(os.environ.get("QCORE_MEMORY_CALLS", "10000"))
RSS_BOUND = 24 << 20  # bytes of RSS growth tolerated over the run (allocator noise, lazily touched pages)

rng = np.random.default_rng(11)
W = rng.standard_normal((64, 96)).astype(np.float32)
X = rng.standard_normal((8, 96)).astype(np.float32)
BIAS = rng.standard_normal(64).astype(np.float32)
BAD = X.copy()
BAD[3, 5] = np.nan


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_workload(tmp_path):
    path = tmp_path / "m.safetensors"
    qcore.QModel({"w": qcore.quantize(W, "linear", bits=4, granularity="channel"), "b": BIAS}).save(path)
    shared = qcore.quantize(W, "linear", bits=8, symmetric=True, granularity="channel")
    configs = [
        ("linear", dict(bits=8)), ("linear", dict(bits=4, granularity="channel")),
        ("linear", dict(bits=3, symmetric=True, granularity="group", group_size=32)),
        ("linear", dict(bits=1, symmetric=True)), ("log", dict(bits=4, granularity="channel")),
    ]

    def step(i):
        """One call (of the CALLS): which one depends on i."""
        r = i % 10
        if r < 3:
            scheme, opts = configs[i % len(configs)]
            qcore.quantize(W, scheme, **opts)
        elif r < 5:
            shared.dequantize()
        elif r < 7:
            qcore.ops.qlinear(X, shared, BIAS)
        elif r == 7:  # a fresh weight each time: its packed-weight cache must go away with it
            qcore.ops.qlinear(X, qcore.quantize(W, "linear", bits=8, symmetric=True))
        elif r == 8:
            sub = i // 10 % 5
            if sub == 0:
                qt = qcore.quantize(W, "linear", bits=3, granularity="channel")
                qcore.QTensor.from_packed(qt.pack(), qt.shape, qt.scheme, qt.bits, qt.params, qt.options, signed=qt.signed)
            elif sub == 1:
                q = qcore.get_quantizer("linear", bits=8, observer="histogram")
                q.observe(X)
                q.quantize(X)
            elif sub == 2:
                qcore.load_quantized(path).dequantize()
            elif sub == 3 and i % 100 == 38:
                qcore.quantize(W, "kmeans", bits=2)
            else:
                qcore.quantize(W, "log", bits=5, method="range").dequantize()
        else:  # refused inputs: error paths must not leak either
            try:
                if i % 20 == 9:
                    qcore.ops.qlinear(BAD, shared)
                else:
                    qcore.quantize(BAD, "linear", bits=8, granularity="channel")
            except qcore.InputError:
                pass

    return step


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_ten_thousand_calls_do_not_grow_the_process(tmp_path):
    step = make_workload(tmp_path)
    warm = max(CALLS // 10, 200)
    for i in range(warm):
        step(i)
    gc.collect()
    start = rss()
    marks = []
    for i in range(CALLS):
        step(i)
        if i % (CALLS // 4) == CALLS // 4 - 1:
            gc.collect()
            marks.append(rss() - start)
    growth = rss() - start
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {CALLS} calls (checkpoints {[m >> 20 for m in marks]} MiB)"


def test_traced_memory_returns_to_its_level(tmp_path):
    step = make_workload(tmp_path)
    n = max(CALLS // 5, 100)
    for i in range(200):
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(n):
            step(i)
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
        snap = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = now - base
    if growth >= 256 << 10:
        top = "\n".join(str(s) for s in snap.statistics("lineno")[:10])
        pytest.fail(f"{growth} bytes still allocated after {n} calls (peak {peak}); largest:\n{top}")
