"""llama.cpp runs a GGUF file qcore wrote: its logits against transformers on the same dequantized weights.

    pip install llama-cpp-python          # not a test dependency (a C++ build of a few minutes)
    OMP_NUM_THREADS=2 python benchmarks/bench_gguf_llamacpp.py

A small random Llama (hidden 256, 4 layers, 8 heads, 4 key/value heads, vocabulary 512 from a byte-level BPE
tokenizer trained here) is quantized by qcore — every Linear, per type: Q4_0 (4-bit symmetric, GPTQ on random
Hessians for half the layers), Q4_1 (``zero="minimum"``), Q5_0, Q8_0 — and saved with ``format="gguf"``.
llama.cpp (through llama-cpp-python) evaluates a token sequence; transformers evaluates the same sequence with
``qcore.load_quantized(gguf).dequantize()`` as weights (what the file holds).  The difference is llama.cpp's own
arithmetic: activations quantized to Q8_0/Q8_K blocks for its integer dot products, fp16 intermediate buffers.
Printed: max |logit difference|, relative to the logits' spread, cosine per position, argmax agreement.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def build(folder: str, hidden: int, layers: int, vocab: int = 512):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden + hidden // 2,
                                   num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                                   vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=False,
                                   rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger than the default init, so the logits spread and argmax means something
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "quantized weights run in llama.cpp and onnxruntime",
            "a tiny model with a tiny vocabulary"] * 30
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return cfg


def quantize(folder: str):
    import qcore

    base = dict(granularity="group", group_size=32, scale_dtype="float16")
    types = {"q_proj": dict(base, bits=4, symmetric=True), "k_proj": dict(base, bits=4, zero="minimum"),
             "v_proj": dict(base, bits=8, symmetric=True), "o_proj": dict(base, bits=5, symmetric=True),
             "gate_proj": dict(base, bits=4, symmetric=True), "up_proj": dict(base, bits=4, zero="minimum"),
             "down_proj": dict(base, bits=4, symmetric=True)}
    tensors = qcore.load_tensors(folder)
    qm = qcore.QModel()
    rng = np.random.default_rng(0)
    for name in tensors:
        w = np.asarray(tensors[name], np.float32)
        part = name.split(".")[-2] if name.startswith("model.layers.") else None
        if part in types:
            if int(name.split(".")[2]) % 2 == 0:  # GPTQ on a random input covariance for half the layers
                x = rng.standard_normal((512, w.shape[1])).astype(np.float32)
                qm[name] = qcore.gptq(w, x.T @ x / len(x), "linear", **types[part])
            else:
                qm[name] = qcore.quantize(w, "linear", **types[part])
        else:
            qm[name] = w
    return qm


def main() -> None:
    args = parse()
    import torch
    import transformers
    from llama_cpp import Llama

    import qcore

    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench-gguf-")
    folder = os.path.join(tmp, "tiny-llama")
    cfg = build(folder, args.hidden, args.layers)
    qm = quantize(folder)
    path = os.path.join(tmp, "tiny.gguf")
    qm.save(path, format="gguf", source=folder)
    back = qcore.load_quantized(path)
    types = sorted({back.info[n].get("gguf_type") for n in back.quantized})
    rng = np.random.default_rng(1)
    ids = [0] + rng.integers(2, cfg.vocab_size, args.tokens - 1).tolist()

    ref_model = transformers.LlamaForCausalLM(cfg).eval()
    ref_model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in back.dequantize().items()},
                              strict=False)
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()

    def llama_cpp_logits(gguf_path):
        llm = Llama(model_path=gguf_path, n_ctx=256, n_threads=args.threads, logits_all=True, verbose=False)
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)], np.float32)

    def compare(label, got, ref):
        diff = np.abs(got - ref)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{label}: max |diff| {diff.max():.4f} ({diff.max() / float(ref.std()):.4f} of the logits' std), "
              f"mean |diff| {diff.mean():.5f}; cosine per position min {cos.min():.6f}, mean {cos.mean():.6f}; "
              f"argmax agreement {np.mean(got.argmax(1) == ref.argmax(1)):.3f}")

    print(f"tiny llama: hidden {args.hidden}, {args.layers} layers, vocabulary {cfg.vocab_size}; GGUF types {types}; "
          f"file {os.path.getsize(path) / 1024:.0f} KiB; {len(ids)} tokens; llama-cpp-python "
          f"{__import__('llama_cpp').__version__}")
    compare("llama.cpp vs transformers, qcore's quantized GGUF", llama_cpp_logits(path), ref)
    # control: the float model as an all-F32 GGUF (same names, permutation, metadata): llama.cpp's float arithmetic
    f32 = os.path.join(tmp, "tiny-f32.gguf")
    qcore.QModel({k: np.asarray(v, np.float32) for k, v in qcore.load_tensors(folder).items()}).save(
        f32, format="gguf", source=folder)
    float_model = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        ref32 = float_model(torch.tensor([ids])).logits[0].numpy()
    compare("control, all-F32 GGUF vs transformers fp32      ", llama_cpp_logits(f32), ref32)


if __name__ == "__main__":
    main()
