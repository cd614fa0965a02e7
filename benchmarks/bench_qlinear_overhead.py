"""qcore.ops.qlinear per-call overhead at M = 1: the public call against the kernel it dispatches to, side by side.

    OMP_NUM_THREADS=2 python benchmarks/bench_qlinear_overhead.py

``qlinear`` validates its input, finds the kernel by capability (``qcore.get_kernel(capability=...)``, memoised)
and the weight's cached plan, then calls the kernel's ``_int8_linear`` / ``_lowbit_linear``.  On small weights
that work is visible: this prints the CPU time per call (``time.thread_time``, so other processes on a busy
machine do not count) of ``qlinear`` and of the bare kernel call on the same plan, and their difference — the
cost of the ops layer.  Tiny weights keep the kernels single-threaded, so thread CPU time is the call's cost.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import qcore
import qcore.ops as ops
from qcore.ops import gemm

CASES = [("int8 per channel", dict(bits=8, symmetric=True, granularity="channel")),
         ("4-bit group 32", dict(bits=4, symmetric=True, granularity="group", group_size=32)),
         ("k-means 4-bit", dict(bits=4))]


def per_call(fn, reps: int, rounds: int) -> float:
    """Least CPU time per call over ``rounds`` rounds of ``reps`` calls (seconds)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.thread_time() - t0) / reps)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="N = K of the weight (default 64: overhead-dominated)")
    p.add_argument("--reps", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n = k = args.size
    print(f"qcore {qcore.__version__}; kernel {qcore.get_kernel(capability='int8_gemm').name} at "
          f"{qcore.get_kernel().isa}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"M x K x N = 1 x {k} x {n}; CPU microseconds per call (least of {args.rounds} rounds of {args.reps})")
    print("| weight | qlinear | kernel call | ops layer | ratio |")
    print("|---|---|---|---|---|")
    for label, opts in CASES:
        scheme = "kmeans" if label.startswith("k-means") else "linear"
        w = qcore.quantize(rng.standard_normal((n, k)).astype(np.float32), scheme, **opts)
        x = rng.standard_normal((1, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        ops.qlinear(x, w, bias)
        plan = gemm._plan_for(w)
        if plan.mode == "int8":
            bare = lambda: plan.kernel._int8_linear(x, plan.weight, bias)  # noqa: E731
        else:
            lp = plan.lowbit
            bare = lambda: lp.kernel._lowbit_linear(x, lp.packed, bias)  # noqa: E731
        full = per_call(lambda: ops.qlinear(x, w, bias), args.reps, args.rounds)
        kern = per_call(bare, args.reps, args.rounds)
        print(f"| {label} ({ops.qlinear_path(w)}) | {full * 1e6:.2f} | {kern * 1e6:.2f} | {(full - kern) * 1e6:.2f} | "
              f"{full / kern:.2f}x |")


if __name__ == "__main__":
    main()
