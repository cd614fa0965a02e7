"""Hugging Face model folders as outputs: everything that is not the model's weights goes along.

A folder written with ``source=HF_FOLDER`` (compressed-tensors, qcore's folder form) keeps the source's tokenizer,
generation config, README and *subfolders* — e.g. ``1_Pooling/`` and ``modules.json`` of a sentence-transformers
model, without which ``SentenceTransformer(out)`` cannot rebuild its pipeline.  What is left out:

* the weight files at the top of the folder (``*.safetensors``, ``*.bin``, ... and their ``*.index.json``): the
  output holds its own, quantized;
* ``config.json``: the format writes its own copy (compressed-tensors adds ``quantization_config``);
* exports of the same float model in other formats (``*.onnx``, ``*.gguf``, ``*.tflite``, the ``onnx/`` and
  ``openvino/`` folders): they would contradict the quantized weights;
* hidden files and folders (``.git``, ``.cache``, ...).

Weights inside other subfolders (``2_Dense/model.safetensors`` of a sentence-transformers pipeline) are copied:
they belong to modules the quantized model does not hold.
"""
from __future__ import annotations

import os
import shutil

#: weight files at the top of a model folder (the output replaces them)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".index.json", ".npz")
#: the same float model in another runtime's format, anywhere in the folder
EXPORT_SUFFIXES = (".onnx", ".onnx_data", ".gguf", ".tflite", ".mlmodel")
EXPORT_FOLDERS = ("onnx", "openvino", "coreml", "tflite")


def source_folder(source: str | os.PathLike | None) -> str | None:
    """The model folder named by ``source`` (a folder, or a file in one such as an index or a weight file)."""
    if source is None:
        return None
    s = os.fspath(source)
    if not os.path.exists(s):
        raise FileNotFoundError(f"source {s!r} does not exist")
    return s if os.path.isdir(s) else os.path.dirname(os.path.abspath(s))


def side_files(folder: str) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated) of the files a quantized copy of the model keeps."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        top = rel_root == "."
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d.lower() in EXPORT_FOLDERS))
        for f in sorted(files):
            low = f.lower()
            if f.startswith(".") or low.endswith(EXPORT_SUFFIXES):
                continue
            if top and (f == "config.json" or low.endswith(WEIGHT_SUFFIXES)):
                continue
            out.append(f if top else os.path.join(rel_root, f).replace(os.sep, "/"))
    return out


def copy_side_files(source: str, out: str) -> list[str]:
    """Copy :func:`side_files` of the folder ``source`` into ``out`` (subfolders created); returns them.

    Each file is copied to a temporary name and renamed into place, so an interrupted copy leaves no partial
    file under a real name."""
    copied = []
    for rel in side_files(source):
        copy_file(os.path.join(source, *rel.split("/")), os.path.join(out, *rel.split("/")))
        copied.append(rel)
    return copied


def copy_file(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file renamed into place (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), "." + os.path.basename(dst) + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def same_folder(a: str, b: str) -> bool:
    """True when the folders ``a`` and ``b`` are one (links resolved)."""
    try:
        return os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
