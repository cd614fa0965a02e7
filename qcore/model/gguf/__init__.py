"""GGUF (llama.cpp) output and input: the container, ggml's blocks, llama-family names and vocabularies, and the
format registered as ``"gguf"`` (qcore/model/gguf/format.py)."""
