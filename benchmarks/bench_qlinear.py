"""Int8 GEMM benchmark: qcore.ops.qlinear / qgemm against torch fbgemm, onnxruntime and numpy float32.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 python benchmarks/bench_qlinear.py

Every implementation runs on 2 threads (override with --threads) on the same data; repeats are interleaved
(one timing sample of each implementation in turn, the order rotating from round to round) and the median of
the samples is reported.
GOP/s counts 2*M*N*K operations.

* qcore qlinear: float32 in, float32 out (dynamic per-row uint8 activations, int8 per-channel weights
  packed once and cached).
* qcore qgemm: uint8 x int8 -> int32 with weights pre-packed (``qcore.ops.pack_weights``), activation zero point.
* torch: ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` (fbgemm engine): float in, float out.
* onnxruntime: a one-node ``MatMulInteger`` model (uint8 A with zero point, int8 B as initializer) -> int32.
* numpy: float32 ``x @ W.T`` (OpenBLAS; run with OPENBLAS_CORETYPE unset, see the command above).

The machine this was written on is shared: other jobs come and go. A sample during which other processes used
more than ~0.1-0.2 CPU (from /proc/stat minus this process's own CPU time; 10 ms clock ticks, hence
100 ms samples) is marked noisy, and the medians are taken
over the quiet samples when every contender has at least 3 (otherwise over all samples, and the header says so).

Before each sample the script pauses ``--gap-ms``: OpenBLAS and onnxruntime worker threads keep spinning for
up to ~0.1 s after a call, and on 2 cores they would slow whichever contender runs next.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = [(128, 384, 1536), (128, 1536, 384), (512, 1024, 1024), (1, 4096, 4096)]


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_jiffies():
    """CPU time (jiffies) all processes used, from /proc/stat (0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait
    except OSError:
        return 0


def _own_jiffies():
    t = os.times()
    return int(round((t.user + t.system) * _HZ)) if _busy_jiffies() else 0


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="interleaved timing samples per implementation")
    p.add_argument("--sample-ms", type=float, default=100.0, help="approximate length of one timing sample")
    p.add_argument("--gap-ms", type=float, default=200.0,
                   help="idle pause before each sample, so the previous contender's spinning worker threads "
                        "(OpenBLAS, onnxruntime, OpenMP) have gone to sleep")
    p.add_argument("--shapes", default=None, help="e.g. 128x384x1536,1x4096x4096 (MxKxN)")
    p.add_argument("--isa", default=None, help="qcore ISA level (avx512vnni, avx512, avx2, baseline)")
    return p.parse_args()


def main():
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if os.environ["OMP_NUM_THREADS"] != str(args.threads):
        print(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} overrides --threads for qcore", file=sys.stderr)

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import qcore
    import qcore.ops as ops

    if args.isa:
        qcore.get_kernel().set_isa(args.isa)

    try:
        import torch

        torch.set_num_threads(args.threads)
        torch.backends.quantized.engine = "fbgemm"
    except ImportError:
        torch = None
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        ort = None

    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} threads={i.get('num_threads')}"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"qcore ISA level: {qcore.get_kernel().isa} (levels here: {', '.join(qcore.get_kernel().isas())}); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; threads={args.threads}")
    print(f"numpy {np.__version__}, BLAS: {'; '.join(blas) or '?'}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    if torch is not None:
        print(f"torch {torch.__version__} quantized engine {torch.backends.quantized.engine}")
    if ort is not None:
        print(f"onnxruntime {ort.__version__}")
    print()

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for (m, k, n) in shapes:
            x = rng.standard_normal((m, k)).astype(np.float32)
            wf = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            qt = qcore.quantize(wf, "linear", bits=8, symmetric=True, granularity="channel", axis=0)
            a_u8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
            packed = ops.pack_weights(qt.codes)
            impls = {}
            impls["qcore qlinear"] = lambda: ops.qlinear(x, qt, bias)
            impls["qcore qgemm"] = lambda: ops.qgemm(a_u8, packed, 128)
            if torch is not None:
                lin = torch.nn.Linear(k, n)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(wf))
                    lin.bias.copy_(torch.from_numpy(bias))
                tq = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
                tx = torch.from_numpy(x)

                def run_torch(tq=tq, tx=tx):
                    with torch.no_grad():
                        return tq(tx)

                impls["torch fbgemm"] = run_torch
            if ort is not None:
                b_kn = np.ascontiguousarray(qt.codes.T)  # MatMulInteger multiplies A (M,K) by B (K,N)
                graph = helper.make_graph(
                    [helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])],
                    "mmi",
                    [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
                    [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
                    initializer=[numpy_helper.from_array(b_kn, "B"),
                                 numpy_helper.from_array(np.array(128, np.uint8), "a_zp")],
                )
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                model.ir_version = 8
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
                feed = {"A": a_u8}
                ref = sess.run(None, feed)[0]
                assert np.array_equal(ref, ops.qgemm(a_u8, qt.codes, 128)), "onnxruntime and qgemm disagree"
                impls["onnxruntime MatMulInteger"] = lambda sess=sess, feed=feed: sess.run(None, feed)
            impls["numpy float32"] = lambda: x @ wf.T + bias

            # calibrate the number of calls per sample
            counts = {}
            for name, f in impls.items():
                f()
                t0 = time.perf_counter()
                c = 0
                while time.perf_counter() - t0 < 0.01:
                    f()
                    c += 1
                per = (time.perf_counter() - t0) / c
                counts[name] = max(1, int(args.sample_ms / 1000 / per))
            samples = {name: [] for name in impls}
            quiet = {name: [] for name in impls}
            names = list(impls)
            for rep in range(args.repeats):
                # rotate the order, so no contender always runs right after the same other one
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    f = impls[name]
                    c = counts[name]
                    time.sleep(args.gap_ms / 1000)
                    b0, u0 = _busy_jiffies(), _own_jiffies()
                    t0 = time.perf_counter()
                    for _ in range(c):
                        f()
                    dt = time.perf_counter() - t0
                    other = (_busy_jiffies() - b0) - (_own_jiffies() - u0)  # CPU used by other processes
                    samples[name].append(dt / c)
                    if other <= max(2, 0.1 * dt * _HZ):
                        quiet[name].append(dt / c)
            ops_count = 2.0 * m * n * k
            nq = min(len(v) for v in quiet.values())
            use = quiet if nq >= 3 else samples
            med = {name: statistics.median(s) for name, s in use.items()}
            print(f"M x K x N = {m} x {k} x {n}   (medians of {'the quiet' if use is quiet else 'all'} samples; "
                  f"quiet samples per contender: {', '.join(str(len(v)) for v in quiet.values())} of {args.repeats})")
            for name, t in med.items():
                best = min(samples[name])
                print(f"  {name:28s} {t * 1e6:10.1f} us  {ops_count / t / 1e9:8.1f} GOP/s   "
                      f"(best sample {ops_count / best / 1e9:7.1f} GOP/s)")
            ql = med["qcore qlinear"]
            ratios = []
            for other in ("torch fbgemm", "onnxruntime MatMulInteger", "numpy float32"):
                if other in med:
                    ratios.append(f"qlinear vs {other}: {med[other] / ql:.2f}x")
            if "onnxruntime MatMulInteger" in med:
                ratios.append(f"qgemm vs onnxruntime: {med['onnxruntime MatMulInteger'] / med['qcore qgemm']:.2f}x")
            print("  " + "; ".join(ratios))
            print()
            rows.append(((m, k, n), med))

    print(f"load average at end: {os.getloadavg()[0]:.2f} (a busy machine makes every 2-thread figure unreliable)")
    print("summary (GOP/s; ratio = other's time / qcore qlinear's time):")
    names = list(rows[0][1])
    print("| M x K x N | " + " | ".join(names) + " | vs fbgemm | vs numpy |")
    print("|---" * (len(names) + 3) + "|")
    for (m, k, n), med in rows:
        o = 2.0 * m * n * k
        cells = [f"{o / med[nm] / 1e9:.0f}" for nm in names]
        fb = f"{med['torch fbgemm'] / med['qcore qlinear']:.2f}x" if "torch fbgemm" in med else "-"
        npx = f"{med['numpy float32'] / med['qcore qlinear']:.2f}x"
        print(f"| {m}x{k}x{n} | " + " | ".join(cells) + f" | {fb} | {npx} |")


if __name__ == "__main__":
    main()
