"""Static int8 CNN inference: qcore (qtorch.prepare -> calibrate -> convert) against torch.ao FX graph mode
(prepare_fx -> calibrate -> convert_fx, ``get_default_qconfig_mapping``) on torch's default quantized engine
(``x86``: oneDNN convolutions) and on fbgemm, and fp32 torch — side by side in one run (DESIGN §6, "static int8
CNN" and "static int8 ResNet-18 / MobileNetV2").

Models (``qcore.testing.models``, seeded weights, batch-norm statistics set from seeded images, nothing
downloaded): the CIFAR CNN (3x32x32, batch 64 by default), ResNet-18 and MobileNetV2 (1000 classes) at 112x112
and 224x224, batch 1 and 32.  Calibration and evaluation data are Gaussian images, the same for every quantized
model.  Reported per configuration: the median time of one batch (each contender timed in blocks of its own,
rounds alternating, so one runtime's spinning worker threads do not land in another's timings), qcore's speed-up
over each contender, the fastest single call of each (a hint of the quiet-machine figure when the machine is
loaded), and per model the relative output error of each int8 model against fp32 (||y - y_fp32|| / ||y_fp32||)
and, for ResNet-18, the top-1 agreement with fp32 on random images.

    OMP_NUM_THREADS=2 python benchmarks/bench_static.py                 # everything, then one summary table
    OMP_NUM_THREADS=2 python benchmarks/bench_static.py --models cifar   # the CIFAR CNN only (--batch 64)
    OMP_NUM_THREADS=2 python benchmarks/bench_static.py --models resnet18 --sizes 112 --batches 32
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

MODELS = ("cifar", "resnet18", "mobilenetv2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--sizes", default="112,224", help="image sizes of ResNet-18 and MobileNetV2")
    ap.add_argument("--batches", default="1,32", help="batch sizes of ResNet-18 and MobileNetV2")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the CIFAR CNN")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of timing blocks (the median is reported)")
    ap.add_argument("--block-seconds", type=float, default=0.25, help="about this long per timing block")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--eval-images", type=int, default=128, help="images for the accuracy figures")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.ao's deprecation warnings
    print(f"static int8 CNNs, {args.threads} threads (torch {torch.__version__}, {platform.machine()}, "
          f"load average at start {os.getloadavg()[0]:.2f})")
    speed, accuracy = [], []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: use {', '.join(MODELS)}")
        if name == "cifar":
            run_model(name, 32, [args.batch], args, speed, accuracy)
        else:
            for size in (int(s) for s in args.sizes.split(",")):
                run_model(name, size, [int(b) for b in args.batches.split(",")], args, speed, accuracy)
    print_summary(speed, accuracy, args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def print_summary(speed, accuracy, args):
    """One table of every configuration against issue 23's targets (speed-up = contender's time / qcore's;
    "median": of the rounds' block medians; "best": fastest single calls)."""
    print(f"\nsummary, {args.threads} threads: qcore's speed-up (median of rounds / fastest call) and the targets")
    print(f"  {'model':11s} {'size':>4s} {'batch':>5s} {'qcore ms':>9s} {'vs x86 engine':>13s} {'vs fbgemm':>13s} "
          f"{'vs fp32':>13s}  target (median)")
    for r in speed:
        met = r["x86"][0] >= 1.1 and (r["need_fp32"] is None or r["fp32"][0] >= r["need_fp32"])
        need = ">= 1.1x x86" + (f", >= {r['need_fp32']:g}x fp32" if r["need_fp32"] else "")
        print(f"  {r['model']:11s} {r['size']:4d} {r['batch']:5d} {r['ms']:9.3f} "
              + " ".join(f"{r[k][0]:6.2f}/{r[k][1]:5.2f}x" for k in ("x86", "fbgemm", "fp32"))
              + f"  {need}: {'met' if met else 'NOT met'}")
    print(f"  {'model':11s} {'size':>4s} {'rel. error qcore / torch.ao x86':>32s} {'top-1 qcore / torch.ao x86':>27s}  "
          f"float fallback")
    for a in accuracy:
        top1 = f"{a['top1'][0]:.3f} / {a['top1'][1]:.3f}" if a["top1"] else "-"
        ok = a["err"][0] <= 1.5 * a["err"][1] and (not a["top1"] or a["top1"][0] >= a["top1"][1])
        print(f"  {a['model']:11s} {a['size']:4d} {a['err'][0]:14.2e} / {a['err'][1]:.2e} = {a['err'][0] / a['err'][1]:4.2f} "
              f"{top1:>27s}  {a['fallback'] or 'none'}  (error <= 1.5x, top-1 >=: {'met' if ok else 'NOT met'})")


def build(name, size):
    import torch

    from qcore.testing.models import CifarCNN, mobilenet_v2, resnet18

    if name == "cifar":
        torch.manual_seed(0)
        return CifarCNN().eval()
    return (resnet18 if name == "resnet18" else mobilenet_v2)(seed=0, image_size=size)


def run_model(name, size, batches, args, speed, accuracy):
    import torch

    from qcore.integrations import torch as qtorch
    from qcore.testing.models import torch_ao_fx

    fp32 = build(name, size)
    g = torch.Generator().manual_seed(1)
    calib_batch = 16 if name != "cifar" else args.batch
    calib = [torch.randn(calib_batch, 3, size, size, generator=g) for _ in range(args.calib_batches)]
    t0 = time.perf_counter()
    prepared = qtorch.prepare(fp32)
    with torch.no_grad():
        for c in calib:
            prepared(c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qc = qtorch.convert(prepared)
    fallback = [str(w.message) for w in caught if "convert:" in str(w.message)]
    t_qc = time.perf_counter() - t0
    t0 = time.perf_counter()
    ao_x86 = torch_ao_fx(fp32, calib, "x86")
    t_ao = time.perf_counter() - t0
    ao_fbgemm = torch_ao_fx(fp32, calib, "fbgemm")
    contenders = {"qcore static int8": qc, "torch.ao FX (x86 engine)": ao_x86,
                  "torch.ao FX (fbgemm)": ao_fbgemm, "fp32 torch": fp32}
    # each torch.ao model runs with the engine it was converted for (set before its calls)
    engines = {"torch.ao FX (x86 engine)": "x86", "torch.ao FX (fbgemm)": "fbgemm"}

    # accuracy on evaluation images (batches of 32)
    ev = [torch.randn(min(32, args.eval_images), 3, size, size, generator=g)
          for _ in range(max(1, args.eval_images // 32))]
    outs = {}
    with torch.inference_mode():
        for k, m in contenders.items():
            torch.backends.quantized.engine = engines.get(k, "x86")
            outs[k] = torch.cat([m(e) for e in ev])
    ref = outs["fp32 torch"]
    err = {k: float((o - ref).norm() / ref.norm()) for k, o in outs.items() if k != "fp32 torch"}
    top1 = {k: float((o.argmax(1) == ref.argmax(1)).float().mean()) for k, o in outs.items() if k != "fp32 torch"}

    title = "CIFAR CNN" if name == "cifar" else {"resnet18": "ResNet-18", "mobilenetv2": "MobileNetV2"}[name]
    print(f"\n{title}, 3x{size}x{size}: prepare + {len(calib)} calibration batches + convert: qcore {t_qc:.2f} s, "
          f"torch.ao (x86) {t_ao:.2f} s; float fallback: {fallback or 'none'}")
    print(f"  relative error vs fp32: " + ", ".join(f"{k} {v:.2e}" for k, v in err.items())
          + f"; qcore / torch.ao x86 {err['qcore static int8'] / err['torch.ao FX (x86 engine)']:.2f} (target <= 1.5)")
    if name == "resnet18":
        print(f"  top-1 agreement with fp32 on {ref.shape[0]} random images: "
              + ", ".join(f"{k} {v:.3f}" for k, v in top1.items()) + " (target: qcore >= torch.ao x86)")
    accuracy.append({"model": title, "size": size, "fallback": fallback,
                     "err": (err["qcore static int8"], err["torch.ao FX (x86 engine)"]),
                     "top1": (top1["qcore static int8"], top1["torch.ao FX (x86 engine)"]) if name == "resnet18"
                     else None})
    for b in batches:
        x = torch.randn(b, 3, size, size, generator=g)
        med, best = time_contenders(contenders, engines, x, args)
        q = med["qcore static int8"]
        print(f"  batch {b}:")
        print(f"    {'model':28s} {'ms/batch':>9s} {'images/s':>9s} {'qcore speed-up':>15s} {'best ms':>8s} "
              f"{'best speed-up':>14s}")
        for k in contenders:
            print(f"    {k:28s} {med[k] * 1e3:9.3f} {b / med[k]:9.0f} {med[k] / q:14.2f}x {best[k] * 1e3:8.3f} "
                  f"{best[k] / best['qcore static int8']:13.2f}x")
        targets = f"target >= 1.1x torch.ao x86"
        if name == "resnet18" and b >= 32:
            targets += ", >= 2x fp32"
        if name == "cifar":
            targets += ", >= 1.5x fp32"
        ratios = {k: (med[c] / q, best[c] / best["qcore static int8"]) for k, c in
                  (("x86", "torch.ao FX (x86 engine)"), ("fbgemm", "torch.ao FX (fbgemm)"), ("fp32", "fp32 torch"))}
        speed.append({"model": title, "size": size, "batch": b, "ms": q * 1e3, **ratios,
                      "need_fp32": 2.0 if name == "resnet18" and b >= 32 else (1.5 if name == "cifar" else None)})
        print(f"    speed-up vs torch.ao x86 {med['torch.ao FX (x86 engine)'] / q:.2f}x, vs fbgemm "
              f"{med['torch.ao FX (fbgemm)'] / q:.2f}x, vs fp32 {med['fp32 torch'] / q:.2f}x ({targets})")


def time_contenders(contenders, engines, x, args):
    import torch

    best = {k: float("inf") for k in contenders}
    times = {k: [] for k in contenders}
    with torch.inference_mode():
        calls = {}
        for k, m in contenders.items():  # warm up, and size each block to about --block-seconds
            torch.backends.quantized.engine = engines.get(k, "x86")
            m(x)
            s = time.perf_counter()
            m(x)
            calls[k] = max(2, min(50, int(args.block_seconds / max(time.perf_counter() - s, 1e-6))))
        for _ in range(args.rounds):
            for k, m in contenders.items():
                torch.backends.quantized.engine = engines.get(k, "x86")
                ts = []
                for _ in range(calls[k]):
                    s = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - s)
                times[k].append(statistics.median(ts))
                best[k] = min(best[k], min(ts))
    return {k: statistics.median(v) for k, v in times.items()}, best


if __name__ == "__main__":
    main()
