"""Histogram calibration, 16M floats: qcore's histogram observers vs torch.ao HistogramObserver (and ONNX Runtime).

Work timed for every contender (fresh observer each repeat): observe two batches of 8M float32 activations
(Laplace with a few large outliers), then compute the quantization parameters.

* qcore: ``q = get_quantizer("linear", bits=8, observer=NAME)``, ``q.observe(b1)``, ``q.observe(b2)``, ``q.fit(b2)``
  (``fit`` only reads the observer: the range search plus scale/zero point);
* torch: ``HistogramObserver()`` forward on both batches, then ``calculate_qparams()``;
* onnxruntime (optional): ``HistogramCollector`` ``collect`` on both batches, ``compute_collection_result()``.

Repeats are interleaved (A B C A B C ...) and the median is reported; ratios are torch time / qcore time, for
wall-clock time and for CPU time (all threads; steadier when other processes share the machine).
The squared error of each range on the data is printed too.

    OMP_NUM_THREADS=2 python benchmarks/bench_calibration.py [--repeats 5] [--threads 2] [--no-ort]
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=16 * 1024 * 1024, help="floats in total (two batches)")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime (its entropy search is slow)")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before any OpenMP runtime starts

    import numpy as np

    import qcore

    rng = np.random.default_rng(0)
    half = args.size // 2
    batches = []
    for _ in range(2):
        x = rng.laplace(0.0, 1.0, half).astype(np.float32)
        k = 16
        x[rng.integers(0, half, k)] = rng.choice([-1.0, 1.0], k) * rng.uniform(40, 80, k)
        batches.append(x)
    data = np.concatenate(batches)

    def sq_err(scale, zp, qmin, qmax):
        q = np.clip(np.rint(data / np.float32(scale)) + zp, qmin, qmax)
        return float(np.mean(((q - zp) * np.float32(scale) - data) ** 2))

    contenders = {}
    results = {}

    def qcore_run(name, **opts):
        def run():
            q = qcore.get_quantizer("linear", bits=8, observer=name)
            if opts:
                q.observer = qcore.get_observer(name, **opts)
                for b in batches:
                    q.observer.update(b)
            else:
                for b in batches:
                    q.observe(b)
            p = q.fit(batches[1])
            return float(p["scale"].reshape(-1)[0]), int(p["zero_point"].reshape(-1)[0]), 0, 255
        return run

    contenders["qcore histogram (l2)"] = qcore_run("histogram")
    contenders["qcore histogram (entropy)"] = qcore_run("histogram", method="entropy")
    contenders["qcore mse"] = qcore_run("mse")
    contenders["qcore percentile 99.99"] = qcore_run("percentile")

    try:
        import torch

        torch.set_num_threads(args.threads)
        tb = [torch.from_numpy(b) for b in batches]

        def torch_run():
            obs = torch.ao.quantization.HistogramObserver()
            for b in tb:
                obs(b)
            s, z = obs.calculate_qparams()
            return float(s), int(z), 0, 255

        contenders["torch HistogramObserver"] = torch_run
    except ImportError:
        print("torch not installed: no torch comparison")

    if not args.no_ort:
        try:
            import contextlib
            import io

            from onnxruntime.quantization.calibrate import HistogramCollector

            def ort_run(method, **kw):
                def run():
                    col = HistogramCollector(method=method, symmetric=kw.get("symmetric", False), num_bins=2048,
                                             num_quantized_bins=128, percentile=99.99, scenario="same")
                    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
                        for b in batches:
                            col.collect({"x": b})
                        res = col.compute_collection_result()["x"]
                    lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in res[:2])
                    lo, hi = min(lo, 0.0), max(hi, 0.0)
                    scale = (hi - lo) / 255
                    return scale, int(np.clip(np.rint(-lo / scale), 0, 255)), 0, 255
                return run

            contenders["onnxruntime percentile 99.99"] = ort_run("percentile")
            contenders["onnxruntime entropy"] = ort_run("entropy", symmetric=True)
        except ImportError:
            print("onnxruntime not installed: no onnxruntime comparison")

    times = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    for r in range(args.repeats):
        for name, fn in contenders.items():
            if r > 0 and name.startswith("onnxruntime") and sum(times[name]) > 20:
                continue  # slow: a couple of runs are enough
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            results[name] = out

    import statistics

    import threadpoolctl

    omp = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "openmp"]
    print(f"histogram calibration: {args.size / 2**20:.0f}M float32 in two batches + parameters; "
          f"threads={args.threads} (OMP_NUM_THREADS, torch.set_num_threads); OpenMP runtimes: "
          f"{', '.join(i.get('internal_api', '?') for i in omp) or 'none'}; median of {args.repeats} interleaved repeats")
    base = statistics.median(times["torch HistogramObserver"]) if "torch HistogramObserver" in times else None
    cbase = statistics.median(cpu["torch HistogramObserver"]) if base else None
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (anything above ~0.3 means other processes shared the cores)")
    print(f"{'contender':32s} {'median ms':>10s} {'vs torch':>9s} {'CPU ms':>8s} {'vs torch':>9s} {'MSE on data':>12s}")
    for name in contenders:
        med, cmed = statistics.median(times[name]), statistics.median(cpu[name])
        ratio = f"{base / med:8.1f}x" if base else "       -"
        cratio = f"{cbase / cmed:8.1f}x" if base else "       -"
        print(f"{name:32s} {med * 1e3:10.1f} {ratio} {cmed * 1e3:8.1f} {cratio} {sq_err(*results[name]):12.5g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
