"""PyTorch integration benchmark: a transformer-sized stack of Linear layers, three ways, side by side.

* fp32 torch (``nn.Linear``),
* ``torch.ao.quantization.quantize_dynamic`` (int8 weights, dynamic int8 activations, fbgemm/x86 backend),
* ``qcore.integrations.torch.quantize_dynamic`` (int8 per-channel weights, ``qcore.ops.qlinear``).

Each block has the shapes of a MiniLM/BERT-small layer: Q, K, V, O projections 384x384, FFN up 384x1536 and
down 1536x384 (hidden 384, intermediate 1536), applied to a batch of 128 tokens, with LayerNorm and GELU between
(those run in float in all three models).  Timings are medians over interleaved repeats (fp32, torch int8, qcore
int8, fp32, ...), so slow drifts of the machine hit all three alike.  Targets (issue 7): qcore >= 1.3x fp32 and
>= 0.9x torch int8.

    python benchmarks/bench_torch.py                  # 2 threads, 6 blocks, 128 tokens
    python benchmarks/bench_torch.py --threads 1 --blocks 12
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=6, help="transformer blocks (6 Linear layers each)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=30, help="interleaved rounds")
    ap.add_argument("--inner", type=int, default=5, help="forward passes per timing")
    ap.add_argument("--no-per-layer", dest="per_layer", action="store_false",
                    help="skip the per-layer table (one Linear of each shape, and qcore.ops.qlinear alone)")
    args = ap.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before the kernels' OpenMP runtime starts
    import numpy as np
    import torch
    from torch import nn

    import qcore
    from qcore.integrations import torch as qtorch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, I = args.hidden, args.intermediate

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
            self.up, self.down = nn.Linear(H, I), nn.Linear(I, H)

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.o(self.q(h) + self.k(h) + self.v(h))  # the projections' shapes; no softmax attention
            return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))

    fp32 = nn.Sequential(*(Block() for _ in range(args.blocks))).eval()
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        tq = torch.ao.quantization.quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8)
    t_torch_q = time.perf_counter() - t0
    t0 = time.perf_counter()
    qq = qtorch.quantize_dynamic(fp32)
    t_qcore_q = time.perf_counter() - t0

    load0 = os.getloadavg()[0]
    x = torch.randn(1, args.tokens, H)
    models = {"fp32 torch": fp32, "torch int8 (ao dynamic)": tq, "qcore int8": qq}
    with torch.inference_mode():
        ref = fp32(x)
        outs = {name: m(x) for name, m in models.items()}  # also warms up (packs weights, caches)
        for m in models.values():
            m(x)
    err = {name: float((o - ref).norm() / ref.norm()) for name, o in outs.items()}

    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, m in models.items():
                t = time.perf_counter()
                for _ in range(args.inner):
                    m(x)
                times[name].append((time.perf_counter() - t) / args.inner)
    med = {name: float(np.median(v)) for name, v in times.items()}
    best = {name: float(np.min(v)) for name, v in times.items()}
    n_linear = 6 * args.blocks
    flops = 2 * args.tokens * args.blocks * (4 * H * H + 2 * H * I)

    isa = ""
    try:
        isa = qcore.get_kernel().isa
    except Exception:  # noqa: BLE001 - informational only
        pass
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} now (above ~0.5 other work "
          f"shares the {os.cpu_count()} cores: compare the 'best' columns)")
    print(f"qcore {qcore.__version__}, torch {torch.__version__} (quantized engine {torch.backends.quantized.engine}), "
          f"qcore GEMM path {isa or '?'}, {args.threads} thread(s)")
    print(f"{args.blocks} blocks x 6 Linear = {n_linear} layers (hidden {H}, intermediate {I}), {args.tokens} tokens; "
          f"median of {args.repeats} interleaved rounds x {args.inner} forwards")
    print(f"quantize time: torch {t_torch_q * 1e3:.0f} ms, qcore {t_qcore_q * 1e3:.0f} ms")
    print(f"{'model':26s} {'median ms':>9s} {'best ms':>8s} {'GOP/s':>6s} {'rel. error':>10s} {'vs fp32':>8s}")
    for name in models:
        print(f"{name:26s} {med[name] * 1e3:9.2f} {best[name] * 1e3:8.2f} {flops / med[name] / 1e9:6.0f} "
              f"{err[name]:10.2e} {med['fp32 torch'] / med[name]:7.2f}x")
    r_fp32 = med["fp32 torch"] / med["qcore int8"]
    r_torch = med["torch int8 (ao dynamic)"] / med["qcore int8"]
    print(f"qcore int8 vs fp32 torch: {r_fp32:.2f}x (target >= 1.3x)   "
          f"vs torch int8: {r_torch:.2f}x (target >= 0.9x)   [medians; best-of ratios: "
          f"{best['fp32 torch'] / best['qcore int8']:.2f}x, {best['torch int8 (ao dynamic)'] / best['qcore int8']:.2f}x]")
    if args.per_layer:
        print()
        print("per layer (one Linear, same input), median / best µs per call, interleaved:")
        print(f"{'shape M x K x N':18s} {'fp32':>15s} {'torch int8':>15s} {'qcore int8':>15s} {'qcore/ops':>15s} "
              f"{'vs torch':>8s}")
        ops = qcore.ops
        for k, n in ((H, H), (H, I), (I, H)):
            lin = nn.Linear(k, n).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]
            ql = qtorch.QLinear.from_float(lin)
            xx = torch.randn(args.tokens, k)
            xn, bn = xx.numpy(), lin.bias.detach().numpy()
            fns = {"fp32": lambda: lin(xx), "torch": lambda: tl(xx), "qcore": lambda: ql(xx),
                   "ops": lambda: ops.qlinear(xn, ql.weight, bn)}
            ts = {name: [] for name in fns}
            with torch.inference_mode():
                for f in fns.values():
                    f()
                for _ in range(args.repeats * 4):
                    for name, f in fns.items():
                        t = time.perf_counter()
                        for _ in range(10):
                            f()
                        ts[name].append((time.perf_counter() - t) / 10 * 1e6)
            md = {name: float(np.median(v)) for name, v in ts.items()}
            bs = {name: float(np.min(v)) for name, v in ts.items()}
            cells = " ".join(f"{md[nm]:7.1f}/{bs[nm]:<7.1f}" for nm in ("fp32", "torch", "qcore", "ops"))
            print(f"{args.tokens:>4d} x {k:>4d} x {n:>4d}   {cells} {md['torch'] / md['qcore']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
