"""GGUF output for llama.cpp, checked with the ``gguf`` package (llama.cpp's own Python reader) as the reference.

A tiny randomly initialised Llama (hidden 64, 2 layers, 4 heads, 2 key/value heads) with a byte-level BPE tokenizer
is saved with save_pretrained into a temporary folder; its weights are quantized to every type qcore maps
(Q4_0, Q8_0, Q5_0, Q4_1), some with GPTQ.  ``GGUFReader`` + ``gguf.quants.dequantize`` must give qcore's dequantized
values bit for bit, rows in llama.cpp's order (its q/k permutation written out here from the converter's formula),
under llama.cpp's tensor names and metadata keys; qcore reads the file back to the same QModel.
"""
import json
import os
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import qcore  # noqa: E402
from qcore.cli.main import main  # noqa: E402
from qcore.model.gguf.format import GGUFWarning  # noqa: E402

Q4_0 = dict(bits=4, symmetric=True, granularity="group", group_size=32, scale_dtype="float16")
Q8_0 = dict(Q4_0, bits=8)
Q5_0 = dict(Q4_0, bits=5)
Q4_1 = dict(bits=4, zero="minimum", granularity="group", group_size=32, scale_dtype="float16")
GT = gguf.GGMLQuantizationType


def _llama_config(vocab=300):
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64,
                                    tie_word_embeddings=False, rms_norm_eps=1e-5)


def _bpe_tokenizer(folder, vocab=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "quantized weights run in llama.cpp"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab - 2, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(folder)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("gguf") / "tiny-llama"
    transformers.LlamaForCausalLM(_llama_config()).eval().save_pretrained(src)
    _bpe_tokenizer(src)
    return src


def _hessian(k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, k)).astype(np.float32) @ (rng.standard_normal((k, k)).astype(np.float32) * 0.3)
    return (x.T @ x / len(x)).astype(np.float32)


#: per weight: GGUF type, options, and whether GPTQ makes it
PLAN = {"self_attn.q_proj": (GT.Q4_0, Q4_0, True), "self_attn.k_proj": (GT.Q4_1, Q4_1, True),
        "self_attn.v_proj": (GT.Q8_0, Q8_0, False), "self_attn.o_proj": (GT.Q5_0, Q5_0, True),
        "mlp.gate_proj": (GT.Q4_1, Q4_1, False), "mlp.up_proj": (GT.Q4_0, Q4_0, False),
        "mlp.down_proj": (GT.Q8_0, Q8_0, True)}


def _quantized(folder):
    tensors = qcore.load_tensors(folder)
    qm = qcore.QModel()
    for name in tensors:
        w = np.asarray(tensors[name], np.float32)
        part = name.rsplit(".", 1)[0].split(".", 3)[-1] if name.startswith("model.layers.") else None
        if part in PLAN:
            _, opts, use_gptq = PLAN[part]
            qm[name] = (qcore.gptq(w, _hessian(w.shape[1], len(name)), "linear", **opts) if use_gptq
                        else qcore.quantize(w, "linear", **opts))
        elif name == "model.embed_tokens.weight":
            qm[name] = qcore.quantize(w, "linear", **Q8_0)
        else:
            qm[name] = w  # lm_head and norms stay float
    return qm


@pytest.fixture(scope="module")
def written(llama_folder, tmp_path_factory):
    qm = _quantized(llama_folder)
    out = tmp_path_factory.mktemp("gguf-out") / "tiny.gguf"
    size = qm.save(out, format="gguf", source=llama_folder)
    assert size == os.path.getsize(out)
    return qm, out


def _permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute, written out: each head's rows (2, hd/2) -> (hd/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _expected_names():
    names = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(2):
        names |= {f"blk.{i}.{p}.weight" for p in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                                                   "ffn_gate", "ffn_up", "ffn_down")}
    return names


def _hf(name):
    glob = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
    if name in glob:
        return glob[name]
    _, i, part, kind = name.split(".")
    hf = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}[part]
    return f"model.layers.{i}.{hf}.{kind}"


def test_the_gguf_package_dequantizes_to_qcores_values_bit_for_bit(written):
    qm, out = written
    reader = gguf.GGUFReader(str(out))
    assert {t.name for t in reader.tensors} == _expected_names()
    seen = set()
    for t in reader.tensors:
        hf = _hf(t.name)
        ref = qm.values(hf).astype(np.float32)
        if t.name.split(".")[2:3] == ["attn_q"]:
            ref = _permute(ref, 4)
        elif t.name.split(".")[2:3] == ["attn_k"]:
            ref = _permute(ref, 2)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape).astype(np.float32)
        assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(ref).view(np.uint32)), t.name  # 0 ulp
        if isinstance(qm[hf], qcore.QTensor):
            part = hf.rsplit(".", 1)[0].split(".", 3)[-1]
            want = PLAN[part][0] if part in PLAN else GT.Q8_0
            assert t.tensor_type == want, (t.name, t.tensor_type)
            # the file holds the packed size: 32 weights in 18/20/22/34 bytes
            assert t.n_bytes == qm[hf].size // 32 * {GT.Q4_0: 18, GT.Q4_1: 20, GT.Q5_0: 22, GT.Q8_0: 34}[want]
            seen.add(want)
        else:
            assert t.tensor_type == GT.F32
    assert seen == {GT.Q4_0, GT.Q4_1, GT.Q5_0, GT.Q8_0}


def _field(reader, key):
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


def test_metadata_keys_llama_cpp_requires(written, llama_folder):
    _, out = written
    r = gguf.GGUFReader(str(out))
    cfg = json.loads((llama_folder / "config.json").read_text())
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "general.quantization_version") == 2
    assert _field(r, "general.file_type") in (2, 3, 7, 8)
    assert _field(r, "llama.block_count") == 2 and _field(r, "llama.embedding_length") == 64
    assert _field(r, "llama.context_length") == cfg["max_position_embeddings"]
    assert _field(r, "llama.feed_forward_length") == 128
    assert _field(r, "llama.attention.head_count") == 4 and _field(r, "llama.attention.head_count_kv") == 2
    assert _field(r, "llama.rope.dimension_count") == 16
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(r, "llama.rope.freq_base") == pytest.approx(10000.0)
    # the vocabulary: byte-level BPE -> llama.cpp's "gpt2" model, tokens by id, merges, special ids
    tok = json.loads((llama_folder / "tokenizer.json").read_text())
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 300 and all(tokens[i] == t for t, i in tok["model"]["vocab"].items())
    assert len(_field(r, "tokenizer.ggml.merges")) == len(tok["model"]["merges"])
    types = _field(r, "tokenizer.ggml.token_type")
    assert types[tok["model"]["vocab"]["<s>"]] == 3  # CONTROL
    assert _field(r, "tokenizer.ggml.bos_token_id") == 1 and _field(r, "tokenizer.ggml.eos_token_id") == 2


def test_qcore_reads_its_gguf_back_to_the_same_model(written):
    qm, out = written
    assert qcore.model.format_of(out).name == "gguf"
    back = qcore.load_quantized(out)
    assert set(back.keys()) == set(qm.keys())
    for name, t in qm.items():
        b = back[name]
        if isinstance(t, qcore.QTensor):
            assert isinstance(b, qcore.QTensor) and b.bits == t.bits
            assert np.array_equal(b.codes, t.codes), name
            assert np.array_equal(b.dequantize().view(np.uint32), t.dequantize().view(np.uint32)), name
        else:
            assert np.array_equal(b, t), name


def test_cli_writes_inspects_and_dequantizes_gguf(llama_folder, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(llama_folder), "-o", str(out), "--format", "gguf", "--bits", "4", "--quiet"]) == 0
    r = gguf.GGUFReader(str(out))
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert all(kinds[n] == GT.Q4_0 for n in kinds if not n.endswith("norm.weight"))  # --bits 4: Q4_0 by default
    assert all(kinds[n] == GT.F32 for n in kinds if n.endswith("norm.weight"))
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GGUF v3" in text and "blk.0.attn_q.weight" in text and "Q4_0" in text
    assert main(["dequantize", str(out), "-o", str(tmp_path / "plain.safetensors")]) == 0
    plain = qcore.load_tensors(tmp_path / "plain.safetensors")
    q = qcore.load_quantized(out)
    assert np.array_equal(plain["model.layers.0.self_attn.q_proj.weight"], q["model.layers.0.self_attn.q_proj.weight"].dequantize())


def test_transformers_runs_the_weights_read_back(written, llama_folder):
    """The weights qcore reads back from the file (names and rows restored) drive the Hugging Face model to the
    same logits as qcore's own dequantized model: nothing was lost or misplaced on the way."""
    qm, out = written
    ids = torch.tensor([[1, 5, 9, 33, 64, 100, 2, 7]])

    def logits(model_values):
        m = transformers.LlamaForCausalLM(_llama_config()).eval()
        m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model_values.items()}, strict=False)
        with torch.no_grad():
            return m(ids).logits

    assert torch.equal(logits(qcore.load_quantized(out).dequantize()), logits(qm.dequantize()))


def test_apply_quantized_runs_the_gguf_in_torch(written):
    """The GGUF file into a transformers model with qtorch.apply_quantized: QLinear layers computing on the file's
    codes (Q4_1 weights through their minimum), close to the float computation with the same weights."""
    from qcore.integrations import torch as qtorch

    qm, out = written
    ids = torch.tensor([[1, 5, 9, 33, 64, 100, 2, 7]])
    back = qcore.load_quantized(out)
    back["model.embed_tokens.weight"] = back.values("model.embed_tokens.weight")  # torch's Embedding stays float
    model = transformers.LlamaForCausalLM(_llama_config()).eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(back.values(k))) for k in back.keys()}, strict=False)
    model = qtorch.apply_quantized(model, back)  # the Linear layers compute on the file's codes
    assert isinstance(model.model.layers[0].self_attn.k_proj, qtorch.QLinear)
    ref = transformers.LlamaForCausalLM(_llama_config()).eval()
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in qm.dequantize().items()}, strict=False)
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() > 0.999, cos  # qlinear's int8 activations are the only difference


def test_qwen2_has_no_permutation_and_keeps_its_biases(tmp_path):
    torch.manual_seed(1)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=96, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    src = tmp_path / "qwen2"
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(src)
    qm = qcore.quantize_model(src, "linear", exclude=["*embed*"], progress=False, **Q4_0)
    out = tmp_path / "q.gguf"
    with pytest.warns(GGUFWarning, match="no vocabulary"):
        qm.save(out, format="gguf", source=src)
    r = gguf.GGUFReader(str(out))
    assert _field(r, "general.architecture") == "qwen2" and _field(r, "qwen2.block_count") == 1
    assert _field(r, "tokenizer.ggml.model") == "no_vocab"
    names = {t.name for t in r.tensors}
    assert "blk.0.attn_q.bias" in names and "output.weight" not in names  # tied: llama.cpp reuses token_embd
    for t in r.tensors:
        ref = qm.values(_hf(t.name)).astype(np.float32)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), t.name  # rows as they were


# -- what does not map, and bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("opts, words", [
    (dict(bits=4, granularity="channel", symmetric=True, scale_dtype="float16"), "channel"),
    (dict(bits=4, granularity="group", group_size=64, symmetric=True, scale_dtype="float16"), "group size 64"),
    (dict(bits=4, granularity="group", group_size=32, symmetric=True), "float32 scales"),
    (dict(bits=4, granularity="group", group_size=32, scale_dtype="float16"), "zero point"),
])
def test_weights_that_do_not_map_are_refused_with_the_options_that_do(llama_folder, tmp_path, opts, words):
    qm = qcore.quantize_model(llama_folder, "linear", include=["*q_proj*"], progress=False, **opts)
    with pytest.raises(ValueError, match=words) as info:
        qm.save(tmp_path / "x.gguf", format="gguf", source=llama_folder)
    assert "zero='minimum'" in str(info.value) and "Q4_0" in str(info.value)
    assert not (tmp_path / "x.gguf").exists()
    km = qcore.quantize_model(llama_folder, "kmeans", bits=4, include=["*q_proj*"], progress=False)
    with pytest.raises(ValueError, match="lookup table"):
        km.save(tmp_path / "x.gguf", format="gguf", source=llama_folder)


def test_bad_input_is_one_line_before_any_work(llama_folder, tmp_path, capsys, monkeypatch):
    import qcore.model.quantize as mq

    calls = []
    real = mq.quantize_model
    monkeypatch.setattr(mq, "quantize_model", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(*argv):
        code = main(["quantize", str(llama_folder), "--format", "gguf", "--quiet", *map(str, argv)])
        err = capsys.readouterr().err
        return code, err

    # an architecture the writer does not know: named, with the supported ones
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64, vocab_size=50)).save_pretrained(bert)
    capsys.readouterr()
    code = main(["quantize", str(bert), "-o", str(tmp_path / "b.gguf"), "--format", "gguf"])
    err = capsys.readouterr().err
    assert code == 2 and "BertModel" in err and "LlamaForCausalLM" in err and len(err.strip().splitlines()) == 1
    # a scheme that does not map
    code, err = run("-o", tmp_path / "k.gguf", "--scheme", "kmeans", "--bits", "4")
    assert code == 2 and "lookup table" in err and "Q4_0" in err
    code, err = run("-o", tmp_path / "k.gguf", "--granularity", "channel")
    assert code == 2 and "channel" in err
    # the output is the input (through a link with the right suffix)
    link = tmp_path / "link.gguf"
    os.symlink(llama_folder / "model.safetensors", link)
    code, err = run("-o", link)
    assert code == 2 and "input" in err
    # an existing output: kept unless --force
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"old")
    code, err = run("-o", out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"old"
    assert not calls and not (tmp_path / "k.gguf").exists() and not (tmp_path / "b.gguf").exists()
    assert run("-o", out, "--force")[0] == 0 and out.read_bytes()[:4] == b"GGUF"
    # the API says the same without a source
    with pytest.raises(ValueError, match="needs source="):
        qcore.QModel({"w": np.ones((2, 32), np.float32)}).save(tmp_path / "n.gguf", format="gguf")


def test_files_qcore_cannot_read_are_refused_by_name(llama_folder, tmp_path, capsys):
    # a tensor of a type qcore does not read (Q4_K), written by the gguf package's own writer
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 144), np.uint8), raw_dtype=GT.Q4_K)  # 4 rows of 256
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(qcore.FormatError, match="Q4_K"):
        qcore.load_quantized(tmp_path / "k.gguf")
    assert main(["inspect", str(tmp_path / "k.gguf")]) == 2
    assert "Q4_K" in capsys.readouterr().err
    # truncated
    qm = _quantized(llama_folder)
    good = tmp_path / "g.gguf"
    qm.save(good, format="gguf", source=llama_folder)
    data = good.read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(qcore.FormatError, match="truncated|past the end"):
        qcore.load_quantized(tmp_path / "t.gguf")
    (tmp_path / "h.gguf").write_bytes(data[:40])
    with pytest.raises(qcore.FormatError):
        qcore.load_quantized(tmp_path / "h.gguf")
    # a llama.cpp Q5_0 tensor using code -16 (outside qcore's 5-bit range) is named, not misread
    from qcore.model.gguf import blocks

    raw = blocks.encode(blocks.Q5_0, np.full((2, 32), -16), np.ones((2, 1), np.float16))
    w = gguf.GGUFWriter(str(tmp_path / "q5.gguf"), "none")
    w.add_tensor("t", raw.reshape(2, 22), raw_dtype=GT.Q5_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(qcore.FormatError, match=r"outside \[-15, 15\]"):
        qcore.load_quantized(tmp_path / "q5.gguf")


def _proto_piece(text, score, kind):
    """One SentencePiece (protobuf: 1 string, 2 float, 3 enum), encoded by hand from the wire format."""
    t = text.encode()
    body = bytes([0x0A, len(t)]) + t + bytes([0x15]) + struct.pack("<f", score) + bytes([0x18, kind])
    return bytes([0x0A, len(body)]) + body


def test_sentencepiece_vocabularies_become_llama_tokenizers(tmp_path):
    from qcore.model.gguf.tokenizer import tokenizer_metadata

    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("\u2581the", -1.5, 1), ("<0x0A>", 0.0, 6)]
    (tmp_path / "tokenizer.model").write_bytes(b"".join(_proto_piece(*p) for p in pieces)
                                               + bytes([0x12, 0x02, 0x08, 0x01]))  # a trainer_spec field, skipped
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<s>"}))
    meta, warning = tokenizer_metadata(str(tmp_path), {"vocab_size": 6, "eos_token_id": 2})
    assert warning is None
    kv = {m[0]: m[2] for m in meta}
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == ["<unk>", "<s>", "</s>", "\u2581the", "<0x0A>", "[PAD5]"]
    assert kv["tokenizer.ggml.scores"][:4] == [0.0, 0.0, 0.0, -1.5]
    assert kv["tokenizer.ggml.token_type"] == [2, 3, 3, 1, 6, 5]
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2
    assert kv["tokenizer.ggml.add_bos_token"] is True
