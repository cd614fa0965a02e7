"""Static int8 CNN inference: qcore (qtorch.prepare -> calibrate -> convert) against torch.ao's eager static
quantization (fbgemm, conv+ReLU fused) and fp32 torch, side by side in one run (DESIGN §6, "static int8 CNN"),
and torch.ao on torch's default x86 engine too (it picks oneDNN, which uses AMX-INT8 where the CPU has it).

The network is CIFAR-size: a 3x32x32 input, three 3x3 convolutions with 32/64/64 channels, each followed by a
ReLU (the second and third with stride 2), and one Linear (64*8*8 -> 10).  Weights are torch's default
initialisation (seeded); calibration and evaluation data are Gaussian images, the same for both quantized
models.  Reported: the median time of one batch (each contender timed in blocks of its own, rounds alternating,
so one runtime's spinning worker threads do not land in another's timings), the speed-ups, the fastest single
call of each (a hint of the quiet-machine figure when the machine is loaded), and the relative
output error of each int8 model against fp32 (||y - y_fp32|| / ||y_fp32|| over an evaluation set).

    OMP_NUM_THREADS=2 python benchmarks/bench_static.py            # --threads 2 --batch 64 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7, help="rounds of timing blocks (the median is reported)")
    ap.add_argument("--block", type=int, default=20, help="calls per timing block")
    ap.add_argument("--calib-batches", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    from qcore.integrations import torch as qtorch
    from qcore.testing.models import CifarCNN, torch_ao_static
    import qcore.ops

    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "fbgemm"
    warnings.filterwarnings("ignore")  # torch.ao's deprecation warnings

    torch.manual_seed(0)
    fp32 = CifarCNN().eval()
    calib = [torch.randn(args.batch, 3, 32, 32) for _ in range(args.calib_batches)]
    evals = [torch.randn(args.batch, 3, 32, 32) for _ in range(4)]
    x = evals[0]

    def build_ao(engine):
        return torch_ao_static(fp32, calib, engine)

    t0 = time.perf_counter()
    ao = build_ao("fbgemm")
    t_ao_build = time.perf_counter() - t0
    # torch's default engine on x86 ("x86") picks fbgemm or oneDNN per layer; on CPUs with AMX-INT8 oneDNN is
    # far faster than fbgemm for these convolutions, so it is reported too
    default_engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    ao_default = build_ao(default_engine)
    torch.backends.quantized.engine = "fbgemm"

    t0 = time.perf_counter()
    prepared = qtorch.prepare(fp32)
    with torch.no_grad():
        for c in calib:
            prepared(c)
    qc = qtorch.convert(prepared)
    t_qc_build = time.perf_counter() - t0

    contenders = {"qcore static int8": qc, "torch.ao static int8 (fbgemm)": ao,
                  f"torch.ao static int8 ({default_engine} engine)": ao_default, "fp32 torch": fp32}

    best = {k: float("inf") for k in contenders}

    def block(name, model):
        with torch.inference_mode():
            ts = []
            for _ in range(args.block):
                s = time.perf_counter()
                model(x)
                ts.append(time.perf_counter() - s)
        best[name] = min(best[name], min(ts))
        return statistics.median(ts)

    with torch.inference_mode():
        for m in contenders.values():
            for _ in range(5):
                m(x)
    times = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, m in contenders.items():
            times[name].append(block(name, m))
    med = {k: statistics.median(v) for k, v in times.items()}

    with torch.inference_mode():
        ref = torch.cat([fp32(e) for e in evals])
        err = {k: float((torch.cat([m(e) for e in evals]) - ref).norm() / ref.norm())
               for k, m in contenders.items() if k != "fp32 torch"}

    print(f"static int8 CNN, batch {args.batch} x 3x32x32, {args.threads} threads "
          f"(torch {torch.__version__}, {platform.machine()}, qcore ISA level {qcore.get_kernel().isa}, "
          f"load average {os.getloadavg()[0]:.2f})")
    print(f"  {'model':34s} {'ms/batch':>9s} {'images/s':>9s} {'qcore speed-up':>15s} {'rel. error':>11s} "
          f"{'best ms':>8s} {'best speed-up':>14s}")
    q, qb = med["qcore static int8"], best["qcore static int8"]
    for name in contenders:
        e = f"{err[name]:.2e}" if name in err else "-"
        print(f"  {name:34s} {med[name] * 1e3:9.3f} {args.batch / med[name]:9.0f} {med[name] / q:14.2f}x {e:>11s} "
              f"{best[name] * 1e3:8.3f} {best[name] / qb:13.2f}x")
    print(f"  error ratio qcore / torch.ao: {err['qcore static int8'] / err['torch.ao static int8 (fbgemm)']:.2f} "
          f"(target <= 1.5); speed-up vs torch.ao {med['torch.ao static int8 (fbgemm)'] / q:.2f}x (target >= 1.0), "
          f"vs fp32 {med['fp32 torch'] / q:.2f}x (target >= 1.5); vs torch.ao on the {default_engine} engine "
          f"{med[f'torch.ao static int8 ({default_engine} engine)'] / q:.2f}x")
    print(f"  prepare + {args.calib_batches} calibration batches + convert: qcore {t_qc_build:.2f} s, "
          f"torch.ao {t_ao_build:.2f} s")
    print("  per-round medians (ms): " + "; ".join(
        f"{k} " + " ".join(f"{t * 1e3:.2f}" for t in v) for k, v in times.items()))


if __name__ == "__main__":
    main()
