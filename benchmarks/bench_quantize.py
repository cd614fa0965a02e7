"""Quantize / dequantize throughput of qcore's ``cython`` kernel against what a user would pick instead.

    OMP_NUM_THREADS=2 python benchmarks/bench_quantize.py [--threads 2] [--repeats 15]

Cases (the targets of docs/benchmarks.md), all on the same data, measured alternately in one run (each repeat times every
contender once, in turn), medians reported:

* per-tensor int8 quantize of 16M floats: torch.quantize_per_tensor, numpy rint/clip/astype, np.copyto,
  and a pass that only reads the input (qcore's minmax): no quantize can be faster than that, so
  torch's time over it is the largest speed-up any implementation could show against torch;
* per-channel int8 quantize of a 4096x4096 matrix along axis 0: torch.quantize_per_channel;
* dequantize of 16M int8 codes: torch ``.dequantize()``.

qcore is called through the public, validated ``CythonKernel().quantize_affine`` / ``dequantize_affine``
(argument checks, output allocation and the NaN/Inf check included; the latter happens inside the kernel's
single pass).  "GB/s" counts the float32 data (input of quantize, output of dequantize); "moved" counts
bytes read + written, the fair measure against ``np.copyto``.  Ratios > 1 mean qcore is faster.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="OpenMP / torch threads (default 2)")
    p.add_argument("--repeats", type=int, default=15, help="alternating repeats per case (default 15)")
    p.add_argument("--isa", default=None, help="cap the level: baseline|avx2|avx512|avx512vnni (QCORE_ISA; default: best the CPU has)")
    return p.parse_args()


ARGS = _parse()
# must be set before the OpenMP runtimes start (numpy, torch and qcore's extension)
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
if ARGS.isa:
    os.environ["QCORE_ISA"] = ARGS.isa

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qcore_plugins import _quant  # noqa: E402
from qcore_plugins.kernels.cython_kernel import CythonKernel  # noqa: E402

torch.set_num_threads(ARGS.threads)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench(funcs: dict, repeats: int) -> dict:
    """Median seconds per function, timing them in turn within each repeat (after one warm-up each)."""
    for f in funcs.values():
        f()
    times = {k: [] for k in funcs}
    for _ in range(repeats):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table(title, rows):
    print(f"\n{title}")
    print(f"  {'method':34s} {'ms':>8s} {'GB/s':>7s} {'moved GB/s':>11s} {'qcore speed-up':>15s}")
    q = rows[0][1]
    for name, t, data_bytes, moved_bytes in rows:
        print(f"  {name:34s} {t * 1e3:8.2f} {data_bytes / t / 1e9:7.2f} {moved_bytes / t / 1e9:11.2f} {t / q:14.2f}x")


def main():
    ck = CythonKernel()
    rng = np.random.default_rng(0)
    n = 1 << 24
    print(f"qcore bench_quantize: {cpu_name()}, {os.cpu_count()} logical CPUs, {ARGS.threads} threads, "
          f"qcore ISA {ck.isa} (levels here: {', '.join(ck.isas())}), OpenMP {_quant.have_openmp()}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{ARGS.repeats} alternating repeats, medians")

    # -- per-tensor quantize, 16M floats -------------------------------------------------------------
    x = (rng.standard_normal(n) * 2).astype(np.float32)
    xt = torch.from_numpy(x)
    lo, hi = float(x.min()), float(x.max())
    scale = np.float32((hi - lo) / 255.0)
    zp = int(round(-128 - lo / float(scale)))
    inv = np.float32(1.0) / scale
    dst = np.empty_like(x)

    def numpy_chain():
        return np.clip(np.rint(x * inv) + np.float32(zp), -128, 127).astype(np.int8)

    assert np.array_equal(ck.quantize_affine(x, scale, zp, -128, 127), numpy_chain())
    t = bench({
        "qcore": lambda: ck.quantize_affine(x, scale, zp, -128, 127),
        "torch": lambda: torch.quantize_per_tensor(xt, float(scale), zp, torch.qint8),
        "numpy": numpy_chain,
        "copy": lambda: np.copyto(dst, x),
        "read": lambda: ck.minmax(x),
    }, ARGS.repeats)
    table("per-tensor int8 quantize, 16M float32 (64 MiB)", [
        ("qcore cython quantize_affine", t["qcore"], 4 * n, 5 * n),
        ("torch.quantize_per_tensor", t["torch"], 4 * n, 5 * n),
        ("numpy rint/clip/astype", t["numpy"], 4 * n, 5 * n),
        ("np.copyto float32 (bandwidth)", t["copy"], 4 * n, 8 * n),
        ("qcore minmax (reads x only)", t["read"], 4 * n, 4 * n),
    ])
    bw_ratio = (5 * n / t["qcore"]) / (8 * n / t["copy"])
    summary = [
        ("per-tensor vs torch.quantize_per_tensor", t["torch"] / t["qcore"], 1.5),
        ("per-tensor vs numpy rint/clip/astype", t["numpy"] / t["qcore"], None),
        ("per-tensor moved bytes vs np.copyto bandwidth", bw_ratio, 0.6),
        # no quantize can take less time than reading its input: this is the most any could reach
        ("per-tensor ceiling: torch vs reading x alone", t["torch"] / t["read"], None),
    ]

    # -- per-channel quantize, 4096 x 4096 along axis 0 ---------------------------------------------
    w = (rng.standard_normal((4096, 4096)) * rng.uniform(0.1, 3, (4096, 1))).astype(np.float32)
    wt = torch.from_numpy(w)
    amax = np.abs(w).max(axis=1)
    scales = (amax / 127).astype(np.float32)
    zps = np.zeros(4096, np.int32)
    scales_t = torch.from_numpy(scales.astype(np.float64))
    zps_t = torch.zeros(4096, dtype=torch.int64)
    t = bench({
        "qcore": lambda: ck.quantize_affine(w, scales, zps, -128, 127, axis=0),
        "torch": lambda: torch.quantize_per_channel(wt, scales_t, zps_t, 0, torch.qint8),
    }, ARGS.repeats)
    table("per-channel int8 quantize, 4096x4096 float32, axis 0", [
        ("qcore cython quantize_affine", t["qcore"], 4 * w.size, 5 * w.size),
        ("torch.quantize_per_channel", t["torch"], 4 * w.size, 5 * w.size),
    ])
    summary.append(("per-channel vs torch.quantize_per_channel", t["torch"] / t["qcore"], 10.0))

    # -- dequantize, 16M codes -----------------------------------------------------------------------
    q = ck.quantize_affine(x, scale, zp, -128, 127)
    qt = torch.quantize_per_tensor(xt, float(scale), zp, torch.qint8)
    assert np.array_equal(qt.int_repr().numpy(), q)
    reused = np.empty(n, np.float32)
    t = bench({
        "qcore": lambda: ck.dequantize_affine(q, scale, zp),
        "torch": lambda: qt.dequantize(),
        # not the same work as the others (no new array): shows what the OS's zeroing of fresh pages costs
        "qcore out=": lambda: ck.dequantize_affine(q, scale, zp, out=reused),
    }, ARGS.repeats)
    table("dequantize, 16M int8 codes -> float32", [
        ("qcore cython dequantize_affine", t["qcore"], 4 * n, 5 * n),
        ("torch .dequantize()", t["torch"], 4 * n, 5 * n),
        ("qcore, into a reused array (out=)", t["qcore out="], 4 * n, 5 * n),
    ])
    summary.append(("dequantize vs torch .dequantize()", t["torch"] / t["qcore"], 5.0))
    summary.append(("dequantize out= (reused array) vs torch", t["torch"] / t["qcore out="], None))

    print("\nsummary (ratio, target)")
    for name, r, target in summary:
        mark = "" if target is None else (f"  target >= {target}x  " + ("ok" if r >= target else "MISSED"))
        print(f"  {name:48s} {r:7.2f}x{mark}")


if __name__ == "__main__":
    main()
