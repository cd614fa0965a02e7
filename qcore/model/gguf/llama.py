"""Llama-family Hugging Face checkpoints as llama.cpp expects them: tensor names, row order, hyperparameters.

Supported ``architectures`` (config.json): ``LlamaForCausalLM`` and ``MistralForCausalLM`` (GGUF architecture
``llama``), ``Qwen2ForCausalLM`` (``qwen2``).  What changes on the way (as llama.cpp's own converter does):

* names: ``model.embed_tokens`` → ``token_embd``, ``model.layers.N.self_attn.q_proj`` → ``blk.N.attn_q`` (``k``,
  ``v``, ``o`` → ``attn_k``, ``attn_v``, ``attn_output``), ``mlp.gate/up/down_proj`` → ``blk.N.ffn_gate/up/down``,
  ``input_layernorm`` → ``blk.N.attn_norm``, ``post_attention_layernorm`` → ``blk.N.ffn_norm``, ``model.norm`` →
  ``output_norm``, ``lm_head`` → ``output``;
* ``llama``: the rows of ``attn_q`` and ``attn_k`` (weights and biases) are permuted within each head from
  Hugging Face's rotary layout (first half, second half) to the interleaved pairs llama.cpp's rope expects.
  Whole rows move, so quantized codes and their per-row/per-group parameters move with them, unchanged;
* metadata: ``general.architecture`` and the ``<arch>.*`` hyperparameters from config.json.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .container import FLOAT32, STRING, UINT32

#: Hugging Face ``architectures`` entry -> GGUF architecture
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
#: GGUF architectures whose q/k rows llama.cpp wants interleaved (rope type "norm"; qwen2 uses neox rope)
PERMUTES_QK = {"llama": True, "qwen2": False}

_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_BLK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
#: buffers transformers may save that llama.cpp recomputes
SKIPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def supported() -> str:
    return ", ".join(f"{hf} ({arch})" for hf, arch in ARCHITECTURES.items())


def architecture_of(config: dict) -> tuple[str, str]:
    """``(hf architecture, gguf architecture)`` of a config.json, or ``ValueError`` naming the supported ones."""
    archs = config.get("architectures") or []
    for a in archs:
        if a in ARCHITECTURES:
            return a, ARCHITECTURES[a]
    got = ", ".join(map(str, archs)) or f"none (model_type {config.get('model_type')!r})"
    raise ValueError(f"the GGUF writer does not know the architecture {got}; it writes {supported()}")


def gguf_name(name: str) -> str | None:
    """The GGUF name of a Hugging Face tensor name; None for tensors llama.cpp does not take (``inv_freq``);
    ``KeyError`` for names of no llama-family tensor."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    if SKIPPED.search(name):
        return None
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    raise KeyError(name)


def hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor name (unknown names come back unchanged)."""
    inverse = {v: k for k, v in _GLOBAL.items()}
    if name in inverse:
        return inverse[name]
    m = _BLK_RE.match(name)
    if m:
        for hf, gg in _LAYER.items():
            if gg == m.group(2):
                return f"model.layers.{m.group(1)}.{hf}.{m.group(3)}"
    return name


def heads(config: dict) -> tuple[int, int, int]:
    """``(attention heads, key/value heads, head dim)`` from config.json."""
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // n_head)
    return n_head, n_kv, head_dim


def row_permutation(gname: str, arch: str, n_head: int, n_kv: int, rows: int) -> np.ndarray | None:
    """The new row order of a tensor (``new = old[perm]``), or None if its rows stay as they are.

    llama.cpp's converter reshapes each head's rows ``(2, head_dim / 2)`` -> ``(head_dim / 2, 2)``: row
    ``h*hd + 2*i + j`` of the GGUF tensor is row ``h*hd + j*hd/2 + i`` of the Hugging Face one."""
    if not PERMUTES_QK.get(arch):
        return None
    part = gname.split(".")[2] if gname.startswith("blk.") else ""
    if part not in ("attn_q", "attn_k"):
        return None
    nh = n_head if part == "attn_q" else n_kv
    if rows % (2 * nh):
        raise ValueError(f"{gname}: {rows} rows do not split into {nh} heads of an even size")
    return np.arange(rows).reshape(nh, 2, rows // nh // 2).swapaxes(1, 2).reshape(-1)


def _rope(config: dict) -> tuple[float, dict | None]:
    """``(rope theta, rope scaling)`` from transformers 4.x (``rope_theta``, ``rope_scaling``) or 5.x
    (``rope_parameters``) configs."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
        kind = params.get("rope_type", "default")
        scaling = None if kind in (None, "default") else dict(params, type=kind)
        return float(theta), scaling
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type"))
        scaling = None if kind in (None, "default") else dict(scaling, type=kind)
    return float(config.get("rope_theta", 10000.0)), scaling


def check_config(config: dict) -> None:
    """Refuse (``ValueError``) configs whose model llama.cpp would run differently from what is written."""
    _, arch = architecture_of(config)
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"):
        if not isinstance(config.get(key), int):
            raise ValueError(f"config.json has no integer {key!r}, which the GGUF metadata needs")
    _, scaling = _rope(config)
    if scaling is not None and scaling["type"] != "linear":
        raise ValueError(f"rope scaling {scaling['type']!r} is not written by the GGUF writer (it writes none or "
                         f"'linear')")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config.get('hidden_act')!r}: llama.cpp's {arch} graph uses silu")


def metadata(config: dict, name: str) -> list[tuple]:
    """``(key, value type, value)`` entries: ``general.architecture``, ``general.name`` and the hyperparameters."""
    check_config(config)
    _, arch = architecture_of(config)
    n_head, n_kv, head_dim = heads(config)
    theta, scaling = _rope(config)
    hidden = int(config["hidden_size"])
    out: list[tuple[str, int, Any]] = [
        ("general.architecture", STRING, arch),
        ("general.name", STRING, name),
        (f"{arch}.context_length", UINT32, int(config.get("max_position_embeddings") or 2048)),
        (f"{arch}.embedding_length", UINT32, hidden),
        (f"{arch}.block_count", UINT32, int(config["num_hidden_layers"])),
        (f"{arch}.feed_forward_length", UINT32, int(config["intermediate_size"])),
        (f"{arch}.rope.dimension_count", UINT32, head_dim),
        (f"{arch}.attention.head_count", UINT32, n_head),
        (f"{arch}.attention.head_count_kv", UINT32, n_kv),
        (f"{arch}.attention.layer_norm_rms_epsilon", FLOAT32, float(config.get("rms_norm_eps", 1e-6))),
        (f"{arch}.rope.freq_base", FLOAT32, theta),
    ]
    if head_dim * n_head != hidden:
        out += [(f"{arch}.attention.key_length", UINT32, head_dim), (f"{arch}.attention.value_length", UINT32, head_dim)]
    if isinstance(config.get("vocab_size"), int):
        out.append((f"{arch}.vocab_size", UINT32, int(config["vocab_size"])))
    if scaling is not None:
        out += [(f"{arch}.rope.scaling.type", STRING, "linear"),
                (f"{arch}.rope.scaling.factor", FLOAT32, float(scaling.get("factor", 1.0)))]
    return out
