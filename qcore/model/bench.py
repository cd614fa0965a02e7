"""Whole-model benchmark: time and peak memory to quantize a synthetic safetensors model (``qcore bench``,
``benchmarks/bench_model.py``)."""
from __future__ import annotations

import math
import os
import tempfile
import time
import tracemalloc
from typing import Any

import numpy as np

CONFIGS = {
    "int8": {"scheme": "linear", "bits": 8, "granularity": "channel"},
    "mixed": {"scheme": "mixed"},
}


def synthetic_model(params: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A transformer-shaped float32 model of about ``params`` weights: per block q/k/v/o (d×d), up (4d×d),
    down (d×4d), two norms and biases; heavy-tailed values with per-channel scales (like trained weights);
    plus an int64 ``position_ids`` tensor that must pass through untouched."""
    per_block_at = lambda d: 12 * d * d  # noqa: E731
    d = 768
    if params < per_block_at(d):
        d = max(64, int(math.sqrt(params / 12)) // 64 * 64)
    blocks = max(1, round(params / per_block_at(d)))
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}

    def weight(rows, cols):
        w = rng.standard_t(5, size=(rows, cols)).astype(np.float32)
        w *= (0.02 * rng.lognormal(0.0, 0.5, size=(rows, 1))).astype(np.float32)
        return w

    for b in range(blocks):
        p = f"blocks.{b}."
        for n in ("q", "k", "v", "o"):
            out[p + f"attn.{n}.weight"] = weight(d, d)
            out[p + f"attn.{n}.bias"] = (0.01 * rng.standard_normal(d)).astype(np.float32)
        out[p + "mlp.up.weight"] = weight(4 * d, d)
        out[p + "mlp.down.weight"] = weight(d, 4 * d)
        out[p + "ln1.weight"] = np.ones(d, np.float32)
        out[p + "ln2.weight"] = np.ones(d, np.float32)
    out["position_ids"] = np.arange(512, dtype=np.int64)[None]
    return out


def write_synthetic(path: str, params: int, seed: int = 0) -> int:
    """Write :func:`synthetic_model` to ``path``; returns the number of float parameters in 2-d tensors."""
    from safetensors.numpy import save_file

    model = synthetic_model(params, seed)
    save_file(model, path)
    return sum(v.size for v in model.values() if v.ndim == 2 and v.dtype == np.float32)


def run_one(src: str, dst: str, config: str, budget_bits: float = 4.5, candidates=None, trace: bool = True) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` with one configuration; time and (with ``trace``) tracemalloc peak."""
    import qcore

    opts = dict(CONFIGS[config])
    scheme = opts.pop("scheme")
    planned = scheme in qcore.list_planners()  # a planner takes a budget, a scheme does not
    if planned:
        opts["budget_bits"] = budget_bits
        if candidates:
            opts["candidates"] = candidates
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    qm = qcore.quantize_model(src, scheme, progress=False, **opts)
    t1 = time.perf_counter()
    qm.save(dst)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    largest = max(qm[n].size for n in qm.quantized)
    chosen: dict[str, int] = {}
    for n in qm.quantized:
        key = f"{qm[n].scheme}:{qm[n].bits}:{qm[n].options.get('granularity', '-')}"
        chosen[key] = chosen.get(key, 0) + 1
    return {
        "config": f"{scheme}@{budget_bits}" if planned else config,
        "quantize_s": t1 - t0, "save_s": t2 - t1,
        "weights": sum(qm[n].size for n in qm.quantized),
        "bits_per_weight": qm.average_bits, "bytes_in": os.path.getsize(src), "bytes_out": os.path.getsize(dst),
        "peak_traced_bytes": peak, "largest_tensor_fp32_bytes": 4 * largest,
        "sqnr_db_min": min(qm.info[n]["sqnr_db"] for n in qm.quantized),
        "chosen": chosen,
    }


def run_bench(params: int = 4_000_000, budget_bits: float = 4.5, candidates=None, only=None, log=None) -> list[dict]:
    """Write a synthetic model of ``params`` weights to a temporary folder and quantize it (in this process)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "model.safetensors")
        n = write_synthetic(src, params)
        if log:
            print(f"synthetic model: {n / 1e6:.1f}M weights in 2-d tensors, {os.path.getsize(src) / 2**20:.1f} MiB", file=log)
        for config in CONFIGS:
            if only and config != only:
                continue
            r = run_one(src, os.path.join(tmp, f"{config}.safetensors"), config, budget_bits, candidates)
            results.append(r)
            if log:
                print(f"{r['config']:10s} quantize {r['quantize_s']:7.2f} s  save {r['save_s']:5.2f} s  "
                      f"{r['bits_per_weight']:.3f} bits/weight  {r['bytes_in'] / 2**20:7.1f} -> {r['bytes_out'] / 2**20:6.1f} MiB  "
                      f"peak traced {r['peak_traced_bytes'] / 2**20:7.1f} MiB (largest tensor {r['largest_tensor_fp32_bytes'] / 2**20:.1f} MiB)  "
                      f"min SQNR {r['sqnr_db_min']:.1f} dB  chosen {r['chosen']}", file=log)
    return results
