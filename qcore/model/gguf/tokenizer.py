"""The vocabulary of a Hugging Face folder as GGUF ``tokenizer.ggml.*`` metadata.

Read from the folder's own files, no tokenizer library needed:

* ``tokenizer.model`` (SentencePiece, Llama 1/2, Mistral) -> ``tokenizer.ggml.model = "llama"``: pieces, scores
  and piece types from the protobuf (read here by hand: field 1 of ``ModelProto`` is each piece's
  ``{1: text, 2: score, 3: type}``), plus the added tokens of ``tokenizer.json``;
* ``tokenizer.json`` with a byte-level BPE model (Llama 3, Qwen2) -> ``"gpt2"``: tokens by id, types (added
  special tokens are ``CONTROL``), merges, and the pre-tokenizer name llama.cpp knows for the split it is given
  (GPT-2's byte-level regex ``gpt-2``, Llama 3's ``llama-bpe``, Qwen2's ``qwen2``; otherwise ``default``, with a
  warning);
* special token ids from config.json / tokenizer_config.json, ``add_bos_token``/``add_eos_token`` and the chat
  template.

Anything else (WordPiece, Unigram, WordLevel, no tokenizer file) gives ``tokenizer.ggml.model = "no_vocab"`` and
a warning: llama.cpp loads the weights but cannot tokenize text.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

from .container import ARRAY, BOOL, FLOAT32, INT32, STRING, UINT32

# token types (llama.cpp's llama_token_type, SentencePiece's numbering)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def _json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- SentencePiece model protobuf ------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of a protobuf message (value: int, or bytes for wire type 2)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield num, wire, val


def sentencepiece_pieces(path: str) -> list[tuple[str, float, int]]:
    """``(text, score, type)`` of every piece of a SentencePiece ``.model`` file, in id order."""
    with open(path, "rb") as f:
        buf = f.read()
    pieces = []
    for num, wire, val in _fields(buf):
        if num != 1 or wire != 2:
            continue
        text, score, kind = "", 0.0, NORMAL
        for n2, w2, v2 in _fields(val):
            if n2 == 1 and w2 == 2:
                text = v2.decode("utf-8")
            elif n2 == 2 and w2 == 5:
                score = struct.unpack("<f", v2)[0]
            elif n2 == 3 and w2 == 0:
                kind = int(v2)
        pieces.append((text, score, kind))
    if not pieces:
        raise ValueError("no pieces")
    return pieces


# -- the metadata ----------------------------------------------------------------------------------------------
def _special_ids(folder: str, config: dict, vocab: dict[str, int]) -> list[tuple]:
    tcfg = _json(os.path.join(folder, "tokenizer_config.json")) or {}
    out = []
    for key, gkey in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        tid = config.get(f"{key}_token_id")
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if not isinstance(tid, int):
            tok = tcfg.get(f"{key}_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            tid = vocab.get(tok) if isinstance(tok, str) else None
        if isinstance(tid, int) and tid >= 0:
            out.append((f"tokenizer.ggml.{gkey}", UINT32, tid))
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tcfg.get(key), bool):
            out.append((f"tokenizer.ggml.{key}", BOOL, tcfg[key]))
    template = tcfg.get("chat_template")
    jinja = os.path.join(folder, "chat_template.jinja")
    if not isinstance(template, str) and os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    if isinstance(template, str):
        out.append(("tokenizer.chat_template", STRING, template))
    return out


def _pad(tokens: list, scores: list | None, types: list, size: int) -> None:
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores is not None:
            scores.append(-1000.0)


def _added(tj: dict | None) -> list[dict]:
    return [a for a in (tj or {}).get("added_tokens", []) if isinstance(a, dict) and isinstance(a.get("id"), int)]


def _sentencepiece(folder: str, config: dict, vocab_size: int | None) -> list[tuple]:
    pieces = sentencepiece_pieces(os.path.join(folder, "tokenizer.model"))
    tokens = [p[0] for p in pieces]
    scores = [float(p[1]) for p in pieces]
    types = [p[2] for p in pieces]
    for a in sorted(_added(_json(os.path.join(folder, "tokenizer.json"))), key=lambda a: a["id"]):
        if a["id"] < len(tokens):
            continue
        _pad(tokens, scores, types, a["id"])
        tokens.append(a["content"])
        scores.append(-1000.0)
        types.append(CONTROL if a.get("special") else USER_DEFINED)
    _pad(tokens, scores, types, vocab_size or len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    return [("tokenizer.ggml.model", STRING, "llama"),
            ("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
            ("tokenizer.ggml.scores", ARRAY, scores, FLOAT32),
            ("tokenizer.ggml.token_type", ARRAY, types, INT32)] + _special_ids(folder, config, vocab)


def _byte_level_bpe(folder: str, tj: dict, config: dict, vocab_size: int | None) -> tuple[list[tuple], str | None]:
    model = tj["model"]
    ids = {int(i): t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in _added(tj)}
    ids.update({i: a["content"] for i, a in added.items()})
    size = max(vocab_size or 0, max(ids) + 1 if ids else 0)
    tokens, types = [], []
    for i in range(size):
        if i not in ids:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(ids[i])
            a = added.get(i)
            types.append(NORMAL if a is None else (CONTROL if a.get("special") else USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre, warning = "default", None
    splits = _split_patterns(tj.get("pre_tokenizer"))
    for pattern in splits:
        if pattern in PRE_TOKENIZERS:
            pre = PRE_TOKENIZERS[pattern]
            break
    else:
        if not splits and _gpt2_byte_level(tj.get("pre_tokenizer")):
            pre = "gpt-2"  # ByteLevel with its built-in regex: GPT-2's own split
        else:
            warning = ("its pre-tokenizer is not one llama.cpp is known to name (gpt-2, llama-bpe, qwen2): written "
                       "as 'default', so llama.cpp may split text differently from transformers")
    vocab = {t: i for i, t in enumerate(tokens)}
    return ([("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, pre),
             ("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
             ("tokenizer.ggml.token_type", ARRAY, types, INT32),
             ("tokenizer.ggml.merges", ARRAY, merges, STRING)] + _special_ids(folder, config, vocab), warning)


def _gpt2_byte_level(pre) -> bool:
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "Sequence":
        subs = pre.get("pretokenizers", [])
        return len(subs) == 1 and _gpt2_byte_level(subs[0])
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) is not False


def _split_patterns(pre) -> list[str]:
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [p for sub in pre.get("pretokenizers", []) for p in _split_patterns(sub)]
    if pre.get("type") == "Split" and isinstance(pre.get("pattern"), dict):
        regex = pre["pattern"].get("Regex")
        return [regex] if isinstance(regex, str) else []
    return []


def tokenizer_metadata(folder: str | None, config: dict) -> tuple[list[tuple], str | None]:
    """``(metadata entries, warning or None)`` for the vocabulary of the Hugging Face ``folder``."""
    vocab_size = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    none = [("tokenizer.ggml.model", STRING, "no_vocab")]
    if folder is None:
        return none, "no source folder: the GGUF file has no vocabulary (llama.cpp cannot tokenize text with it)"
    if os.path.isfile(os.path.join(folder, "tokenizer.model")):
        try:
            return _sentencepiece(folder, config, vocab_size), None
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
            return none, f"tokenizer.model could not be read ({exc}): the GGUF file has no vocabulary"
    tj = _json(os.path.join(folder, "tokenizer.json"))
    model = tj.get("model") if isinstance(tj, dict) else None
    if isinstance(model, dict) and model.get("type") == "BPE" and isinstance(model.get("vocab"), dict):
        if model.get("byte_fallback"):
            return none, ("tokenizer.json is a SentencePiece-style BPE (byte_fallback) without tokenizer.model: the "
                          "GGUF file has no vocabulary; add the model's tokenizer.model to the folder")
        return _byte_level_bpe(folder, tj, config, vocab_size)
    kind = model.get("type") if isinstance(model, dict) else None
    why = (f"a {kind} tokenizer, which the GGUF writer does not convert (it converts SentencePiece tokenizer.model "
           f"and byte-level BPE tokenizer.json)" if kind else "no tokenizer.model or tokenizer.json")
    return none, (f"the source folder has {why}: the GGUF file has no vocabulary, so llama.cpp loads the weights "
                  f"but cannot tokenize text")
