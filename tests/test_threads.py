"""Thread stress (docs/usage.md: kernels release the GIL and are safe to call from several threads at once).

Several threads quantize (every scheme), calibrate (every observer), pack/unpack, run ``qcore.ops.qlinear`` on a
*shared* weight (whose packed form is cached on first use, possibly by two threads at once) and ``qgemm``, all at
the same time, and must get bit-for-bit the results one thread gets.  Every wait has a timeout: a deadlock
fails the test (with the threads' stacks dumped) instead of hanging the suite.  A subprocess checks that the
lazy plugin loading is safe when the first registry use happens in many threads at once.
"""
from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest

import qcore
import qcore.ops

THREADS = 6
ROUNDS = int(os.environ.get("QCORE_THREAD_ROUNDS", "6"))
TIMEOUT = 120  # seconds for the whole stress run; a deadlock fails instead of hanging

rng = np.random.default_rng(7)
W = rng.standard_normal((96, 160)).astype(np.float32)
X = rng.standard_normal((33, 160)).astype(np.float32)
BIAS = rng.standard_normal(96).astype(np.float32)
BATCHES = [rng.standard_normal((16, 160)).astype(np.float32) * (1 + i) for i in range(4)]
BIG = rng.standard_normal((512, 1024)).astype(np.float32)  # large enough for the kernels' OpenMP paths

QUANT_CONFIGS = [
    ("linear", dict(bits=8)),
    ("linear", dict(bits=4, granularity="channel")),
    ("linear", dict(bits=3, symmetric=True, granularity="group", group_size=32)),
    ("linear", dict(bits=2, symmetric=True)),
    ("log", dict(bits=4, granularity="channel")),
    ("kmeans", dict(bits=3)),
]
OBSERVERS = ["minmax", "moving_average", "percentile", "histogram", "mse"]


def _quant(scheme, opts, x):
    qt = qcore.quantize(x, scheme, **opts)
    return qt.codes.copy(), {k: v.copy() for k, v in qt.params.items()}, qt.dequantize(), qt.pack()


def _calibrate(observer):
    q = qcore.get_quantizer("linear", bits=8, granularity="channel", observer=observer)
    for b in BATCHES:
        q.observe(b)
    qt = q.quantize(BATCHES[0])
    return qt.codes.copy(), qt.params["scale"].copy(), qt.params["zero_point"].copy()


def _pack(bits):
    codes = (np.arange(10007) % (1 << bits)).astype(np.uint8)
    k = qcore.get_kernel()
    p = k.pack(codes, bits)
    return p, k.unpack(p, bits, codes.size, False)


def tasks(shared_w):
    """name -> zero-argument callable; each returns arrays to compare."""
    t = {}
    for i, (scheme, opts) in enumerate(QUANT_CONFIGS):
        t[f"quantize:{scheme}:{i}"] = lambda s=scheme, o=opts: _quant(s, o, W)
    t["quantize:big"] = lambda: _quant("linear", dict(bits=8, granularity="channel"), BIG)
    t["dequantize:big"] = lambda: (qcore.quantize(BIG, "log", bits=5, method="range").dequantize(),)
    for obs in OBSERVERS:
        t[f"calibrate:{obs}"] = lambda o=obs: _calibrate(o)
    for bits in (1, 3, 4, 7):
        t[f"pack:{bits}"] = lambda b=bits: _pack(b)
    t["qlinear:shared"] = lambda: (qcore.ops.qlinear(X, shared_w, BIAS),)
    t["qlinear:fresh"] = lambda: (qcore.ops.qlinear(X, qcore.quantize(W, "linear", bits=8, symmetric=True, granularity="channel")),)
    t["qlinear:big"] = lambda: (qcore.ops.qlinear(BIG[:64], qcore.quantize(BIG[:256], "linear", bits=8, symmetric=True)),)
    codes_a = qcore.quantize(X, "linear", bits=8).codes
    codes_b = qcore.quantize(W, "linear", bits=8, symmetric=True).codes
    t["qgemm"] = lambda: (qcore.ops.qgemm(codes_a, codes_b, 3, 0),)
    return t


def _same(a, b):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def _run_all(fn_by_name, order, threads):
    results = {}
    lock = threading.Lock()

    def worker(names):
        out = []
        for n in names:
            out.append((n, fn_by_name[n]()))
        with lock:
            for n, r in out:
                results.setdefault(n, []).append(r)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, names) for names in order]
        done, pending = wait(futures, timeout=TIMEOUT)
        if pending:
            faulthandler.dump_traceback(all_threads=True)
            pytest.fail(f"{len(pending)} of {len(futures)} workers did not finish within {TIMEOUT} s (deadlock?)")
        for f in done:
            f.result()  # re-raise a worker's exception
    return results


def test_threads_get_the_results_of_one_thread():
    shared_w = qcore.quantize(W, "linear", bits=8, symmetric=True, granularity="channel")
    ref_w = qcore.quantize(W, "linear", bits=8, symmetric=True, granularity="channel")
    fns = tasks(shared_w)
    ref_fns = tasks(ref_w)
    reference = {name: fn() for name, fn in ref_fns.items()}  # one thread, before any concurrency
    names = sorted(fns)
    order_rng = np.random.default_rng(0)
    # every thread runs every task ROUNDS times, each in its own shuffled order
    order = [[names[i] for i in order_rng.permutation(len(names))] * ROUNDS for _ in range(THREADS)]
    results = _run_all(fns, order, THREADS)
    assert sorted(results) == names
    for name in names:
        assert len(results[name]) == THREADS * ROUNDS
        for r in results[name]:
            _same(reference[name], r)


def test_one_quantizer_shared_by_threads():
    """A quantizer without observe() is stateless across quantize() calls: sharing one between threads is safe."""
    qs = [qcore.get_quantizer(s, **o) for s, o in QUANT_CONFIGS]
    ref = [q.quantize(W).dequantize() for q in qs]
    fns = {f"q{i}": (lambda q=q: q.quantize(W).dequantize()) for i, q in enumerate(qs)}
    results = _run_all(fns, [list(fns) * ROUNDS for _ in range(THREADS)], THREADS)
    for i in range(len(qs)):
        for r in results[f"q{i}"]:
            np.testing.assert_array_equal(ref[i], r)


FIRST_USE = r"""
import threading, sys
import numpy as np
import qcore
barrier = threading.Barrier(8)
errors, names = [], []
def first_use(i):
    try:
        barrier.wait()
        scheme = ["linear", "log", "kmeans", "mixed"][i % 4]
        names.append(tuple(sorted(qcore.list_schemes())))
        qcore.quantize(np.sin(np.arange(4096, dtype=np.float32)).reshape(32, 128), scheme, bits=4).dequantize()
        qcore.get_observer("histogram"); qcore.get_kernel()
    except BaseException as exc:
        errors.append(repr(exc))
ts = [threading.Thread(target=first_use, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join(60) for t in ts]
assert not any(t.is_alive() for t in ts), "deadlock in first use"
assert not errors, errors
assert len(set(names)) == 1 and len(names) == 8, names
print("ok")
"""


def test_lazy_plugin_loading_from_many_threads_at_once():
    out = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
