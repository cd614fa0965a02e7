"""Static int8 ResNet-18 layer by layer: each convolution (and each operation between them) of qcore's converted
model against the same layer of torch.ao FX graph mode on torch's default ``x86`` engine (oneDNN convolutions),
side by side in one run (DESIGN §6), with the convolutions' GMAC/s and their share of this CPU's int8 peak.

Both models come from the same fp32 ResNet-18 (``qcore.testing.models``, seeded) and the same calibration
batches, as in ``bench_static.py``.  One forward pass records each layer's input (qcore: the modules' arguments;
torch.ao: the FX graph's node arguments); each layer is then called on its recorded input, in blocks of calls
alternating between the two libraries (rounds; the median of the block medians is reported, and the fastest
call).  qcore fuses the residual addition into each block's second convolution, so its ``conv2`` rows compare
with torch.ao's ``conv2`` plus its ``add_relu``; qcore's stem includes quantizing the float input (torch.ao's is
the ``quantize_per_tensor`` row).  ``peak``: the int8 multiply-accumulate peak of the threads used,
``--peak-gmacs`` per core (one ``vpdpbusd zmm`` per cycle = 64 MAC/cycle; measure it with ``--measure-peak``).

    OMP_NUM_THREADS=2 python benchmarks/bench_conv_layers.py                      # 112 and 224, batch 32
    OMP_NUM_THREADS=2 python benchmarks/bench_conv_layers.py --sizes 112 --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/bench_conv_layers.py --threads 1 --clock cpu      # on a loaded machine
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-seconds", type=float, default=0.05, help="about this long per timing block")
    ap.add_argument("--peak-gmacs", type=float, default=234.0,
                    help="int8 GMAC/s of one core (default: measured here, 3.66 G vpdpbusd zmm/s x 64)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (with --threads 1: robust on a loaded machine)")
    ap.add_argument("--measure-peak", action="store_true",
                    help="measure the peak with a C loop of independent vpdpbusd (needs gcc)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    peak = args.peak_gmacs
    if args.measure_peak:
        peak = measure_peak(args.threads) / args.threads
    print(f"static int8 ResNet-18 layer by layer, batch {args.batch}, {args.threads} threads, {args.clock} time, torch "
          f"{torch.__version__}; peak {peak:.0f} GMAC/s per core ({peak * args.threads:.0f} on {args.threads}); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, args, peak * args.threads)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def measure_peak(threads: int) -> float:
    """GMAC/s of ``threads`` threads each running independent ``vpdpbusd zmm`` (12 accumulators, inline asm)."""
    import subprocess
    import tempfile

    src = r"""
#include <stdio.h>
#include <omp.h>
static void run(long n) {
  __asm__ volatile("vpxord %%zmm0,%%zmm0,%%zmm0\n vpxord %%zmm1,%%zmm1,%%zmm1\n 1:\n"
#define D(r) "vpdpbusd %%zmm1,%%zmm0,%%zmm" #r "\n"
    D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11) D(12) D(13) "dec %0\n jnz 1b\n"
    : "+r"(n) :: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11",
    "xmm12","xmm13","cc");
}
int main(int argc, char **argv) {
  long n = 300000000 / 12; int nt = argc > 1 ? atoi(argv[1]) : 1; double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(nt)
    run(n);
    double g = nt * n * 12.0 * 64 / (omp_get_wtime() - t0) / 1e9; if (g > best) best = g;
  }
  printf("%f\n", best); return 0;
}
"""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "peak.c"), "w") as f:
            f.write("#include <stdlib.h>\n" + src)
        subprocess.run(["gcc", "-O2", "-fopenmp", "-o", os.path.join(d, "peak"), os.path.join(d, "peak.c")],
                       check=True)
        g = float(subprocess.run([os.path.join(d, "peak"), str(threads)], check=True, capture_output=True,
                                 text=True).stdout)
    print(f"measured: {threads} threads of independent vpdpbusd zmm: {g:.0f} GMAC/s")
    return g


def record_qcore(model, x):
    """[(name, module, args, kwargs)] of qcore's leaf modules in call order, from one forward pass."""
    import torch

    from qcore.integrations.torch._qops import QFlatten, _QOp
    from qcore.integrations.torch._static import _StaticBase

    calls, hooks = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (_StaticBase, _QOp, QFlatten)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, k, name=name: calls.append((name, m, a, dict(k))), with_kwargs=True))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return calls


def record_torch(gm, x):
    """[(name, callable, args, kwargs)] of the FX graph's call nodes in order, from one interpreted pass."""
    import torch
    import torch.fx

    calls = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if n.op in ("call_module", "call_function", "call_method"):
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                if n.op == "call_module":
                    fn = self.fetch_attr(n.target)
                elif n.op == "call_function":
                    fn = n.target
                else:
                    fn = (lambda t: lambda obj, *a, **k: getattr(obj, t)(*a, **k))(n.target)
                calls.append((n.target if n.op == "call_module" else n.name, fn, args, kwargs))
            return super().run_node(n)

    with torch.inference_mode():
        Recorder(gm).run(x)
    return calls


def conv_macs(mod, in_hw, batch):
    """(all, useful) multiply-accumulates of a convolution on ``in_hw`` images: every tap, and the taps that
    fall inside the image (those in the zero padding add nothing; both libraries skip most of them)."""
    cin = mod.in_channels // mod.groups
    total = useful = batch * mod.out_channels * cin
    for size, k, s, p, d in zip(in_hw, mod.kernel_size, mod.stride, mod.padding, mod.dilation):
        n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        total *= n_out * k
        useful *= sum(1 for o in range(n_out) for t in range(k) if 0 <= o * s + t * d - p < size)
    return total, useful


def run_size(size, args, peak):
    import torch

    from qcore.integrations import torch as qtorch
    from qcore.testing.models import resnet18, torch_ao_fx

    fp32 = resnet18(seed=0, image_size=size)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, size, size, generator=g) for _ in range(4)]
    prepared = qtorch.prepare(fp32)
    with torch.no_grad():
        for c in calib:
            prepared(c)
    qc = qtorch.convert(prepared)
    ao = torch_ao_fx(fp32, calib, "x86")
    x = torch.randn(args.batch, 3, size, size, generator=g)

    torch.backends.quantized.engine = "x86"
    qcalls = record_qcore(qc, x)
    tcalls = record_torch(ao, x)
    tmap = {name: (fn, a, k) for name, fn, a, k in tcalls}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timer(fn, a, k, engine=None):
        def block(n):
            if engine:
                torch.backends.quantized.engine = engine
            ts = []
            for _ in range(n):
                s = clock()
                fn(*a, **k)
                ts.append(clock() - s)
            return ts
        return block

    # pair each qcore layer with torch.ao's node(s) of the same layer
    rows = []
    used = set()
    for name, mod, a, k in qcalls:
        tnames = [name] if name in tmap else []
        if name == "conv1":
            tnames = ["quantize_per_tensor", "conv1"]
        has_res = k.get("residual") is not None or len(a) > 1
        if has_res:  # qcore's conv2 adds the block's residual
            follow = [n for n, *_ in tcalls if n.startswith("add_relu") and n not in used]
            if follow:
                tnames = tnames + [follow[0]]
        if name == "qcore_ops.flatten":
            tnames = ["flatten"]
        if name == "fc":
            tnames = ["fc", "dequantize_32"] if "dequantize_32" in tmap else ["fc"]
        used.update(tnames)
        with torch.inference_mode():
            out = mod(*a, **k)
        macs, useful = conv_macs(mod, tuple(a[0].shape[-2:]), args.batch) if hasattr(mod, "kernel_size") and \
            hasattr(mod, "in_channels") else (0, 0)
        kind = "residual add fused" if has_res else ""
        rows.append(dict(name=name, mod=mod, macs=macs, useful=useful, kind=kind, q=timer(mod, a, k),
                         t=[timer(*tmap[n], engine="x86") for n in tnames], tnames=tnames))
    # whole models
    whole = dict(name="whole model", macs=sum(r["macs"] for r in rows), useful=sum(r["useful"] for r in rows),
                 kind="",
                 q=timer(qc, (x,), {}), t=[timer(ao, (x,), {}, engine="x86")], tnames=["model"])

    with torch.inference_mode():
        for r in rows + [whole]:
            fns = [r["q"]] + r["t"]
            calls = []
            for fn in fns:  # warm up and size the blocks
                fn(1)
                s = time.perf_counter()
                fn(1)
                calls.append(max(2, min(40, int(args.block_seconds / max(time.perf_counter() - s, 1e-6)))))
            meds = [[] for _ in fns]
            best = [float("inf")] * len(fns)
            for _ in range(args.rounds):
                for i, fn in enumerate(fns):
                    ts = fn(calls[i])
                    meds[i].append(statistics.median(ts))
                    best[i] = min(best[i], min(ts))
            r["qm"], r["qb"] = statistics.median(meds[0]), best[0]
            r["tm"] = sum(statistics.median(m) for m in meds[1:])
            r["tb"] = sum(best[1:])
    print(f"\nResNet-18 {size}x{size}, batch {args.batch}: per layer, ms (median of {args.rounds} rounds / fastest "
          f"call); GMAC: all taps / taps inside the image; GMAC/s and % of the {peak:.0f} GMAC/s peak: the useful "
          f"MACs (taps inside the image) per median time; speed-up = torch.ao's time / qcore's")
    print(f"  {'layer':22s} {'Cin>Cout k s':15s} {'GMAC all/useful':>15s} {'qcore ms':>15s} {'torch.ao ms':>15s} "
          f"{'qc GMAC/s':>9s} {'%pk':>4s} {'ao GMAC/s':>9s} {'%pk':>4s} {'speed-up':>11s}  torch.ao nodes")
    tot = {"conv_q": 0.0, "conv_t": 0.0, "other_q": 0.0, "other_t": 0.0, "macs": 0, "useful": 0}
    for r in rows + [whole]:
        mod = r.get("mod")
        if mod is not None and hasattr(mod, "kernel_size") and hasattr(mod, "in_channels"):
            shape = f"{mod.in_channels}>{mod.out_channels} {mod.kernel_size[0]}x{mod.kernel_size[1]} s{mod.stride[0]}"
        else:
            shape = type(mod).__name__ if mod is not None else "-"
        if r is not whole:
            key = "conv" if r["macs"] and r["name"] != "fc" else "other"
            tot[key + "_q"] += r["qm"]
            tot[key + "_t"] += r["tm"]
            if key == "conv":
                tot["macs"] += r["macs"]
                tot["useful"] += r["useful"]
        gq, gt = r["useful"] / r["qm"] / 1e9, r["useful"] / r["tm"] / 1e9
        mac_s = f"{r['macs'] / 1e9:7.3f}/{r['useful'] / 1e9:7.3f}" if r["macs"] else f"{'':15s}"
        perf = (f"{gq:9.0f} {100 * gq / peak:4.0f} {gt:9.0f} {100 * gt / peak:4.0f}" if r["macs"]
                else f"{'':9s} {'':4s} {'':9s} {'':4s}")
        print(f"  {r['name'][:22]:22s} {shape[:15]:15s} {mac_s} {r['qm'] * 1e3:7.3f}/{r['qb'] * 1e3:7.3f} "
              f"{r['tm'] * 1e3:7.3f}/{r['tb'] * 1e3:7.3f} {perf} {r['tm'] / r['qm']:4.2f}/{r['tb'] / r['qb']:4.2f}x"
              f"  {'+'.join(r['tnames'])}")
    cq, ct, u = tot["conv_q"], tot["conv_t"], tot["useful"]
    print(f"  convolutions (qcore's with the fused residual additions, torch.ao's with add_relu): qcore {cq * 1e3:.2f} ms "
          f"({u / cq / 1e9:.0f} useful GMAC/s, {100 * u / cq / 1e9 / peak:.0f} % of the peak), torch.ao {ct * 1e3:.2f} ms "
          f"({u / ct / 1e9:.0f}, {100 * u / ct / 1e9 / peak:.0f} %), speed-up {ct / cq:.2f}x; the other layers: qcore "
          f"{tot['other_q'] * 1e3:.2f} ms, torch.ao {tot['other_t'] * 1e3:.2f} ms; whole model minus its layers "
          f"(calls between layers, cold caches): qcore {(whole['qm'] - cq - tot['other_q']) * 1e3:.2f} ms, torch.ao "
          f"{(whole['tm'] - ct - tot['other_t']) * 1e3:.2f} ms")
    need = whole["tm"] / 1.1
    print(f"  floor: {tot['macs'] / 1e9:.2f} GMAC of convolutions (all taps) at the {peak:.0f} GMAC/s peak = "
          f"{tot['macs'] / peak / 1e6:.2f} ms; the {u / 1e9:.2f} useful GMAC = {u / peak / 1e6:.2f} ms.  1.1x torch.ao "
          f"needs qcore <= {need * 1e3:.2f} ms (torch.ao {whole['tm'] * 1e3:.2f} / 1.1; fastest calls "
          f"{whole['tb'] / 1.1 * 1e3:.2f}): {100 * u / need / 1e9 / peak:.0f} % of the peak on the useful MACs for "
          f"the whole model; qcore now {whole['qm'] * 1e3:.2f} ms (fastest {whole['qb'] * 1e3:.2f}), "
          f"{100 * u / whole['qm'] / 1e9 / peak:.0f} %")

if __name__ == "__main__":
    main()
