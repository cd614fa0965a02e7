"""Low-bit GEMM benchmark: qcore.ops.qlinear on packed 4-bit weights against onnxruntime MatMulNBits, numpy, int8.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 python benchmarks/bench_lowbit.py

(OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset: the same environment as bench_qlinear.py, so numpy's OpenBLAS picks
its own kernels.)  Every implementation runs on 2 threads (``--threads``) on the same weights:

* qcore 4-bit: ``qcore.quantize(w, "linear", bits=4, symmetric=True, granularity="group", group_size=32)``,
  ``qcore.ops.qlinear(x, qt)`` (int8 activations per block of 32, VNNI dot products on the packed nibbles);
* onnxruntime: one ``com.microsoft.MatMulNBits`` node (bits 4, block_size 32, accuracy_level 4 = int8
  activations) holding the *same* codes and scales (qcore's signed nibbles + 8, ORT's default zero point 8);
  the script checks that both give the same product within the activation rounding;
* numpy float32: ``x @ w.T`` (OpenBLAS);
* qcore int8: ``qcore.quantize(w, "linear", bits=8, symmetric=True, granularity="channel")`` + ``qlinear``;
* qcore k-means-4 and log-4 (per-tensor tables: one ``vpshufb`` per decoded vector), and k-means-4 with one
  codebook per (row, group of 128 input columns) (``kmeans-4 g128``: a table per column and group, four masked
  ``vpshufb``; its batched fit takes seconds per 4096^2 weight, ``--skip kmeans-group`` leaves it out).

Each contender is timed in a block of its own (a pause, warm-up calls, then ``--samples`` samples of about
``--sample-ms`` each; the median per call is reported): onnxruntime's and OpenBLAS's worker threads spin after
each call, and interleaving them call by call with an OpenMP kernel on 2 cores measures the spinning
(docs/benchmarks.md).  Ratios are other's time / qcore 4-bit's time.

Sections: ``gemm_section`` (this file's part) and ``memory_and_encoder_section`` (resident memory of a
6 x 4096^2 torch Linear stack and a real transformer encoder at 4-bit, see that function).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 4096, 4096), (1, 8192, 8192), (8, 8192, 8192), (128, 8192, 8192)]


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=7, help="timing samples per contender and shape")
    p.add_argument("--sample-ms", type=float, default=150.0)
    p.add_argument("--gap-ms", type=float, default=300.0, help="pause before each contender's block")
    p.add_argument("--shapes", default=None, help="MxKxN list, e.g. 1x4096x4096,128x4096x4096")
    p.add_argument("--skip", default="", help="comma list of contenders to skip (ort, numpy, int8, kmeans, kmeans-group, log)")
    p.add_argument("--sections", default="gemm", help="comma list: gemm, memory (the resident-memory/encoder part)")
    return p.parse_args()


def _time(f, samples, sample_ms, gap_ms):
    """Median seconds per call of ``f`` over ``samples`` samples, after a pause and warm-up."""
    time.sleep(gap_ms / 1000)
    for _ in range(3):
        f()
    t0 = time.perf_counter()
    c = 0
    while time.perf_counter() - t0 < 0.05 or c < 2:
        f()
        c += 1
    per = (time.perf_counter() - t0) / c
    n = max(1, int(sample_ms / 1000 / per))
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def ort_matmulnbits(qt, m, threads):
    """An onnxruntime session computing x @ W.T with W = qt (4-bit symmetric group-32) as MatMulNBits."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = qt.shape
    nblk = k // 32
    # qcore's packed 4-bit stream: element 2j in the low nibble of byte j (docs/format.md), signed two's complement;
    # MatMulNBits wants unsigned nibbles in the same order with zero point 8: flip each nibble's sign bit
    b = (np.asarray(qt.packed).reshape(n, nblk, 16) ^ np.uint8(0x88)).astype(np.uint8)
    scales = np.ascontiguousarray(np.asarray(qt.params["scale"], np.float32).reshape(n * nblk))
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=32, accuracy_level=4)
    graph = helper.make_graph([node], "mnb", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
                              initializer=[numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def gemm_section(args):
    import numpy as np
    from threadpoolctl import threadpool_limits

    import qcore
    import qcore.ops as ops

    skip = set(filter(None, args.skip.split(",")))
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        skip.add("ort")
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    kernel = qcore.get_kernel()
    print(f"qcore ISA level: {kernel.isa} (levels here: {', '.join(kernel.isas())}); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; threads={args.threads}")
    print(f"numpy {np.__version__}; onnxruntime {ort.__version__ if ort else '(not installed)'}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    rng = np.random.default_rng(0)
    weights = {}
    rows = []
    for (m, k, n) in shapes:
        if (n, k) not in weights:
            wf = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
            t0 = time.perf_counter()
            qts = {"4-bit": qcore.quantize(wf, "linear", bits=4, symmetric=True, granularity="group", group_size=32)}
            if "int8" not in skip:
                qts["int8"] = qcore.quantize(wf, "linear", bits=8, symmetric=True, granularity="channel")
            if "kmeans" not in skip:
                qts["kmeans-4"] = qcore.quantize(wf, "kmeans", bits=4)
            if "kmeans-group" not in skip:  # one codebook per (row, 128 input columns): per-column-group tables
                qts["kmeans-4 g128"] = qcore.quantize(wf, "kmeans", bits=4, granularity="group", group_size=128)
            if "log" not in skip:
                qts["log-4"] = qcore.quantize(wf, "log", bits=4)
            print(f"quantized {n}x{k} weights in {time.perf_counter() - t0:.1f} s")
            weights.clear()  # keep one weight size in memory at a time
            weights[(n, k)] = (wf, qts)
        wf, qts = weights[(n, k)]
        x = rng.standard_normal((m, k)).astype(np.float32)
        med = {}
        for name, qt in qts.items():
            ops.qlinear(x, qt)  # pack once (cached)
            med[f"qcore {name}"] = _time(lambda qt=qt: ops.qlinear(x, qt), args.samples, args.sample_ms, args.gap_ms)
        if "ort" not in skip:
            sess = ort_matmulnbits(qts["4-bit"], m, args.threads)
            feed = {"A": x}
            y_ort = sess.run(None, feed)[0]
            y_q = ops.qlinear(x, qts["4-bit"])
            rel = float(np.abs(y_ort - y_q).max() / np.abs(y_q).max())
            assert rel < 0.05, f"onnxruntime MatMulNBits and qcore disagree (max rel {rel:.3g}): different weights?"
            med["onnxruntime MatMulNBits"] = _time(lambda: sess.run(None, feed), args.samples, args.sample_ms, args.gap_ms)
            del sess
        if "numpy" not in skip:
            with threadpool_limits(limits=args.threads, user_api="blas"):
                med["numpy float32"] = _time(lambda: x @ wf.T, args.samples, args.sample_ms, args.gap_ms)
        base = med["qcore 4-bit"]
        print(f"M x K x N = {m} x {k} x {n}")
        for name, t in med.items():
            print(f"  {name:26s} {t * 1e3:9.3f} ms   ratio {t / base:6.2f}x of qcore 4-bit's time")
        print()
        rows.append(((m, k, n), med))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (a busy machine makes every 2-thread figure unreliable)")
    names = list(rows[0][1])
    print("summary (ms per call; ratio = other's time / qcore 4-bit's time; targets: >= 1.0x ORT, "
          "k-means/log at M=1 >= 3x numpy and >= 0.8x 4-bit (ratio <= 1.25), 8192^2 M=1: >= 1.5x int8):")
    print("| M x K x N | " + " | ".join(names) + " | vs ORT | vs numpy | vs int8 |")
    print("|---" * (len(names) + 4) + "|")
    for (m, k, n), med in rows:
        b = med["qcore 4-bit"]
        cells = [f"{med[nm] * 1e3:.3f}" for nm in names]
        r = [f"{med[o] / b:.2f}x" if o in med else "-" for o in ("onnxruntime MatMulNBits", "numpy float32", "qcore int8")]
        print(f"| {m}x{k}x{n} | " + " | ".join(cells) + " | " + " | ".join(r) + " |")


def memory_and_encoder_section(args):
    """Resident memory of a 6 x 4096^2 torch Linear stack (fp32 / int8 / 4-bit) and a pretrained transformer
    encoder at 4-bit group-32 vs fp32 torch: the two parts of ``benchmarks/bench_lowbit_memory.py`` (its
    docstring says how they measure; each memory configuration runs in a fresh subprocess), on ``--threads``."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import bench_lowbit_memory

    margs = bench_lowbit_memory.parse(["--threads", str(args.threads)])
    bench_lowbit_memory.memory_part(margs)
    bench_lowbit_memory.encoder_part(margs)


def main():
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if os.environ["OMP_NUM_THREADS"] != str(args.threads):
        print(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} overrides --threads for qcore", file=sys.stderr)
    sections = set(args.sections.split(","))
    if "gemm" in sections:
        gemm_section(args)
    if "memory" in sections:
        memory_and_encoder_section(args)


if __name__ == "__main__":
    main()
