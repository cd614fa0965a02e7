"""Deployable output: compressed-tensors pack-quantized folders checked against the real compressed-tensors package
(its decompression) and transformers (from_pretrained + logits), and qcore files into torch with apply_quantized.

One tiny randomly initialised Llama (hidden 64, 2 layers, vocab 128) is saved with save_pretrained into a temporary
folder for the whole module: nothing is downloaded, and transformers is imported once.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")

import qcore  # noqa: E402
from qcore.cli.main import main  # noqa: E402
from qcore.integrations import torch as qtorch  # noqa: E402

EXCLUDE = ["*embed_tokens*", "lm_head*"]


def _config():
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                                    tie_word_embeddings=False)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config()).eval()
    src = tmp_path_factory.mktemp("llama") / "tiny-llama"
    model.save_pretrained(src)
    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(src)
    return src


def _reference_logits(qm, ids):
    """The float model with qcore's dequantized weights: what any correct loader must reproduce."""
    ref = transformers.LlamaForCausalLM(_config()).eval()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in qm.dequantize().items()}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    with torch.no_grad():
        return ref(ids).logits


IDS = torch.tensor([[1, 5, 9, 33, 64, 100, 2, 7]])


def test_transformers_loads_the_compressed_tensors_folder(hf_folder, tmp_path):
    qm = qcore.quantize_model(hf_folder, "linear", bits=4, granularity="group", group_size=32, symmetric=True,
                              exclude=EXCLUDE, progress=False)
    out = tmp_path / "ct"
    qm.save(out, format="compressed-tensors", source=hf_folder)
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= files
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors" and qc["version"]
    assert set(qc["ignore"]) == {"lm_head", "model.embed_tokens"}
    ct.quantization.QuantizationConfig.model_validate(qc)  # the package's own schema accepts it
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = loaded(IDS).logits
    ref = _reference_logits(qm, IDS)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()
    assert transformers.AutoTokenizer.from_pretrained(out)("w1 w5")["input_ids"] == [1, 5]
    # qcore reads it back: the same codes and parameters, so the same values
    back = qcore.load_quantized(out)
    for n in qm.quantized:
        assert np.array_equal(back[n].codes, qm[n].codes) and np.array_equal(back[n].dequantize(), qm[n].dequantize())


@pytest.mark.xfail(strict=False, reason="transformers 5.24 + compressed-tensors 0.20.1 build the skeleton of an affine "
                   "pack-quantized module on the meta device without packing its zero point (rows x groups instead of "
                   "ceil(rows*bits/32) x groups), so loading reports a size mismatch for weight_zero_point - also for "
                   "checkpoints the package writes itself; its decompression (tested below) reads them correctly")
def test_transformers_loads_affine_folders(hf_folder, tmp_path):
    qm = qcore.quantize_model(hf_folder, "linear", bits=4, granularity="channel", exclude=EXCLUDE, progress=False)
    out = tmp_path / "ct-affine"
    qm.save(out, format="compressed-tensors", source=hf_folder)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, _reference_logits(qm, IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_layout_roundtrips_through_the_packages_decompression(tmp_path, bits, granularity, symmetric):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file

    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((40, 96)) * rng.uniform(0.1, 3, (40, 1))).astype(np.float32)  # 40 rows: zp words straddle
    opts = {"granularity": granularity, "symmetric": symmetric}
    if granularity == "group":
        opts["group_size"] = 32
    qm = qcore.QModel({"blk.proj.weight": qcore.quantize(w, "linear", bits=bits, **opts), "blk.norm": np.ones(3, np.float32)})
    qm.save(tmp_path / "ct", format="compressed-tensors")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    sd = load_file(str(tmp_path / "ct" / "model.safetensors"))
    assert sd["blk.proj.weight_packed"].dtype == torch.int32 and ("blk.proj.weight_zero_point" in sd) == (not symmetric)
    local = {k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith("blk.proj.")}
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**qc["config_groups"]["group_0"]["weights"]))
    weight = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    expect = qm["blk.proj.weight"].dequantize()
    assert np.allclose(weight.numpy(), expect, rtol=0, atol=1e-6 * np.abs(expect).max())
    back = qcore.load_quantized(tmp_path / "ct")
    assert np.array_equal(back["blk.proj.weight"].dequantize(), expect) and np.array_equal(back["blk.norm"], np.ones(3))


def test_schemes_the_format_cannot_hold_are_named(tmp_path):
    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    qm = qcore.QModel({"a.weight": qcore.quantize(w, "kmeans", bits=3), "b.weight": qcore.quantize(w, "log", bits=4),
                       "c.weight": qcore.quantize(w, "linear", bits=4, granularity="channel")})
    with pytest.raises(ValueError, match=r"a\.weight: scheme 'kmeans'.*b\.weight: scheme 'log'"):
        qm.save(tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct" / "model.safetensors").exists()


def test_cli_writes_reads_inspects_and_dequantizes_folders(hf_folder, tmp_path, capsys):
    out = tmp_path / "ct"
    code = main(["quantize", str(hf_folder), "-o", str(out), "--format", "compressed-tensors", "--bits", "8",
                 "--symmetric", "--exclude", "*embed_tokens*", "--exclude", "lm_head*", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compressed-tensors" in text and "model.layers.0.self_attn.q_proj.weight" in text
    plain = tmp_path / "plain.safetensors"
    assert main(["dequantize", str(out), "-o", str(plain)]) == 0
    qm = qcore.load_quantized(out)
    back = qcore.load_tensors(plain)
    name = "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(back[name], qm[name].dequantize())
    ref = qcore.load_tensors(hf_folder)
    assert qcore.model.sqnr_db(ref[name], back[name]) > 35  # int8 per channel
    assert np.array_equal(back["model.embed_tokens.weight"], ref["model.embed_tokens.weight"])
    # writing into the input folder is refused
    code = main(["quantize", str(hf_folder), "-o", str(hf_folder), "--format", "compressed-tensors", "--symmetric"])
    assert code == 2 and "input" in capsys.readouterr().err


def test_apply_quantized_puts_saved_weights_into_torch(hf_folder, tmp_path):
    qm = qcore.quantize_model(hf_folder, "linear", bits=4, granularity="channel", exclude=EXCLUDE, progress=False)
    path = tmp_path / "q.safetensors"
    qm.save(path)
    fresh = transformers.LlamaForCausalLM.from_pretrained(hf_folder).eval()
    for src in (path, qm):
        model = qtorch.apply_quantized(fresh, src)
        layer = model.model.layers[0].self_attn.q_proj
        assert isinstance(layer, qtorch.QLinear) and isinstance(fresh.model.layers[0].self_attn.q_proj, torch.nn.Linear)
        assert np.array_equal(layer.weight.codes,
                              qcore.load_quantized(path)["model.layers.0.self_attn.q_proj.weight"].codes)
        with torch.no_grad():
            got = model(IDS).logits
        # QLinear runs the fused low-bit qlinear (int8 activations per 32-block, docs/gemm.md), so the logits
        # follow the float reference within the activation rounding, not bit for bit
        ref = _reference_logits(qm, IDS)
        assert float((got - ref).abs().max()) <= 0.02 * float(ref.abs().max())
    # a model of another shape: every mismatch listed, the module untouched
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_config().to_dict(), "intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"6 saved tensor\(s\) do not fit.*mlp\.gate_proj\.weight: saved shape \(128, 64\)"):
        qtorch.apply_quantized(other, path)
    bad = qcore.QModel({"nope.weight": qm["model.layers.0.self_attn.q_proj.weight"]})
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        qtorch.apply_quantized(fresh, bad)


@pytest.mark.parametrize("symmetric", [True, False])
def test_reads_checkpoints_the_package_writes(tmp_path, symmetric):
    """A folder made with the package's own compressor (full signed code range, its packing) loads in qcore with
    the values the package's decompression gives."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import save_file

    torch.manual_seed(0)
    w = torch.randn(24, 64)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=16)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    g = w.reshape(24, 4, 16)
    if symmetric:
        scale = (g.abs().amax(-1) / 7.5).clamp(min=1e-6)
        zp = torch.zeros(24, 4, dtype=torch.int8)
    else:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale = (hi - lo) / 15
        zp = (-8 - torch.round(lo / scale)).clamp(-8, 7).to(torch.int8)
    sd = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    save_file({f"m.{k}": v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
          "config_groups": {"group_0": scheme.model_dump()}, "ignore": [], "version": ct.__version__}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    expect = PackedQuantizationCompressor.decompress(dict(sd), scheme)["weight"].numpy()
    qm = qcore.load_quantized(tmp_path)
    assert np.allclose(qm["m.weight"].dequantize(), expect, rtol=0, atol=1e-6)
    assert qm["m.weight"].bits == 4 and qm["m.weight"].options["group_size"] == 16


def test_mixed_precision_folders_load_in_transformers(hf_folder, tmp_path):
    """Several config groups, each targeting its modules by name: transformers builds each with its own bits."""
    cands = [{"scheme": "linear", "bits": 4, "granularity": "group", "group_size": 32, "symmetric": True},
             {"scheme": "linear", "bits": 8, "granularity": "channel", "symmetric": True}]
    qm = qcore.quantize_model(hf_folder, "mixed", budget_bits=7.5, candidates=cands, exclude=EXCLUDE, progress=False)
    assert {qm[n].bits for n in qm.quantized} == {4, 8}
    out = tmp_path / "ct-mixed"
    qm.save(out, format="compressed-tensors", source=hf_folder)
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, _reference_logits(qm, IDS), atol=1e-5, rtol=0)


def test_bfloat16_models_stay_bfloat16(hf_folder, tmp_path):
    from qcore.model.safetensors_io import read_header

    src = tmp_path / "bf16"
    transformers.LlamaForCausalLM.from_pretrained(hf_folder).to(torch.bfloat16).save_pretrained(src)
    qm = qcore.quantize_model(src, "linear", bits=4, granularity="group", group_size=32, symmetric=True,
                              exclude=EXCLUDE, progress=False)
    assert qm.dtype_of("model.norm.weight") == "bfloat16" and qm["model.layers.0.mlp.up_proj.weight"].dtype == "bfloat16"
    out = tmp_path / "ct-bf16"
    qm.save(out, format="compressed-tensors", source=src)
    h = read_header(out / "model.safetensors")
    assert h.tensors["model.norm.weight"].dtype == "BF16" and h.tensors["lm_head.weight"].dtype == "BF16"
    assert h.tensors["model.layers.0.mlp.up_proj.weight_scale"].dtype == "BF16"  # scales in the model's dtype
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref = transformers.LlamaForCausalLM.from_pretrained(src).eval()
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(qm.values(k))).to(torch.bfloat16) for k in qm},
                        strict=False)
    with torch.no_grad():
        got, want = loaded(IDS).logits.float(), ref(IDS).logits.float()
    assert loaded.model.norm.weight.dtype == torch.bfloat16
    assert (got - want).abs().max() < 0.02 * want.abs().max()  # bfloat16 arithmetic, scales rounded to bfloat16


def test_transformers_loads_a_sharded_compressed_tensors_folder(hf_folder, tmp_path):
    """max_shard_size: several model-0000i-of-0000n.safetensors and the index transformers follows; the same logits
    as the reference, and qcore reads the shards back."""
    qm = qcore.quantize_model(hf_folder, "linear", bits=4, granularity="group", group_size=32, symmetric=True,
                              exclude=EXCLUDE, progress=False)
    out = tmp_path / "ct-sharded"
    qm.save(out, format="compressed-tensors", source=hf_folder, max_shard_size="40kB")
    shards = sorted(f for f in os.listdir(out) if f.startswith("model-"))
    assert len(shards) > 3 and "model.safetensors" not in os.listdir(out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards) and index["metadata"]["total_size"] > 0
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = loaded(IDS).logits
    ref = _reference_logits(qm, IDS)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()
    back = qcore.load_quantized(out)
    for n in qm.quantized:
        assert np.array_equal(back[n].codes, qm[n].codes)


def test_cli_streams_shards_from_a_folder(hf_folder, tmp_path, capsys):
    out = tmp_path / "cli-sharded"
    assert main(["quantize", str(hf_folder), "-o", str(out), "--format", "compressed-tensors", "--scheme", "linear",
                 "--bits", "4", "--granularity", "group", "--group-size", "32", "--symmetric", "--exclude",
                 EXCLUDE[0], "--exclude", EXCLUDE[1], "--max-shard-size", "40kB", "--quiet"]) == 0
    assert "model.safetensors.index.json" in os.listdir(out) and "tokenizer.json" in os.listdir(out)
    transformers.AutoModelForCausalLM.from_pretrained(out)
    # an output folder holding a model: refused without --force, replaced with it
    assert main(["quantize", str(hf_folder), "-o", str(out), "--format", "compressed-tensors", "--scheme", "linear",
                 "--bits", "4", "--granularity", "channel", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["quantize", str(hf_folder), "-o", str(out), "--format", "compressed-tensors", "--scheme", "linear",
                 "--bits", "4", "--granularity", "channel", "--quiet", "--force"]) == 0
    assert "model.safetensors" in os.listdir(out) and "model.safetensors.index.json" not in os.listdir(out)
    assert not [f for f in os.listdir(out) if f.startswith("model-")]
