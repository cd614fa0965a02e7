"""Whole-model quantization: time and peak memory to quantize a synthetic transformer-shaped safetensors model
(default 21M float32 weights) to int8 per channel and to mixed precision at 4.5 bits per weight.

Each configuration runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own; the
baseline RSS after imports and plugin loading is reported too, and the
difference is what quantizing the model cost.  Python-level peak allocation (``tracemalloc``, which sees numpy's
buffers) is measured in a second, separate run so its overhead does not distort the timing.

    python benchmarks/bench_model.py                 # 21M weights
    python benchmarks/bench_model.py --params 5e6    # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import numpy as np
import qcore
from qcore.model.bench import run_one
src, dst, config, budget, cands, trace = sys.argv[1:7]
qcore.list_schemes()  # imports and plugin loading count in the baseline, not in the work
qcore.quantize_model({"w": np.ones((4, 256), np.float32)}, "linear", bits=8, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
r = run_one(src, dst, config, float(budget), cands or None, trace=trace == "1")
r["rss_baseline_bytes"] = base
r["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(r))
"""


def child(src, dst, config, budget, candidates, trace):
    out = subprocess.run([sys.executable, "-c", CHILD, src, dst, config, str(budget), candidates or "", "1" if trace else "0"],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{config} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=21e6)
    ap.add_argument("--budget-bits", type=float, default=4.5)
    ap.add_argument("--candidates", default=None, help="mixed candidates (default: the built-in list)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    mib = 2**20
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model.safetensors")
        # written by a subprocess: on Linux a child's ru_maxrss starts at its parent's RSS at fork time, so the
        # parent must stay small for the children's peak-RSS figures to mean anything
        n = int(subprocess.run([sys.executable, "-c", "import sys; from qcore.model.bench import write_synthetic; "
                                "print(write_synthetic(sys.argv[1], int(float(sys.argv[2]))))", src, str(args.params)],
                               capture_output=True, text=True, check=True).stdout.split()[-1])
        size = os.path.getsize(src)
        print(f"synthetic model: {n / 1e6:.1f}M weights in 2-d tensors, file {size / mib:.1f} MiB; "
              f"{os.cpu_count()} CPUs; qcore schemes: {', '.join(__import__('qcore').list_schemes())}")
        for config in ("int8", "mixed"):
            dst = os.path.join(tmp, f"{config}.safetensors")
            r = child(src, dst, config, args.budget_bits, args.candidates, trace=False)
            t = child(src, dst, config, args.budget_bits, args.candidates, trace=True)
            r["peak_traced_bytes"] = t["peak_traced_bytes"]
            results.append(r)
            print(f"{r['config']:10s} quantize {r['quantize_s']:7.2f} s   save {r['save_s']:5.2f} s   "
                  f"{r['bits_per_weight']:.3f} bits/weight   {r['bytes_in'] / mib:6.1f} -> {r['bytes_out'] / mib:6.1f} MiB   "
                  f"peak RSS {r['rss_peak_bytes'] / mib:6.1f} MiB (baseline {r['rss_baseline_bytes'] / mib:5.1f}, "
                  f"+{(r['rss_peak_bytes'] - r['rss_baseline_bytes']) / mib:5.1f})   "
                  f"peak traced {r['peak_traced_bytes'] / mib:6.1f} MiB   largest tensor {r['largest_tensor_fp32_bytes'] / mib:.1f} MiB   "
                  f"min SQNR {r['sqnr_db_min']:.1f} dB")
            print(f"{'':10s} chosen: {r['chosen']}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
