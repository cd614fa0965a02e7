"""Every scheme gives the same bytes whatever the thread count and call order (issue 25: ``quantize_model`` on
several workers must write the same file as one process).  Each case runs twice in a fresh process with
``OMP_NUM_THREADS=1`` and twice with ``OMP_NUM_THREADS=2``: the first call of a process (imports, lazily loaded
libraries, thread pools starting) and a later one, on tensors large enough for the kernels to use threads.
GPTQ (a method of every scheme) is in too: its linear algebra runs on BLAS threads."""
import json
import os
import subprocess
import sys



SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import qcore

def digest(qt):
    h = hashlib.sha256(np.ascontiguousarray(qt.codes).tobytes())
    for k in sorted(qt.params):
        h.update(k.encode()); h.update(np.ascontiguousarray(qt.params[k]).tobytes())
    return h.hexdigest()

rng = np.random.default_rng(0)
w = (rng.standard_normal((1024, 2048)) * rng.uniform(0.2, 3, (1024, 1))).astype(np.float32)
spike = np.concatenate([np.ones(1_000_000, np.float32), rng.uniform(-1, 0.99, 200).astype(np.float32)])
cases = {}
for scheme, opts in [("linear", {}), ("linear", {"symmetric": True}), ("linear", {"bits": 4, "symmetric": True}),
                     ("log", {"bits": 4}), ("kmeans", {"bits": 4}), ("kmeans", {"bits": 2}),
                     ("kmeans", {"bits": 4, "codebook_dtype": "float16"})]:
    for gran in ("tensor", "channel", "group"):
        cases[f"{scheme} {opts} {gran}"] = (w, scheme, dict(opts, granularity=gran))
cases["kmeans k-means++ fallback"] = (spike, "kmeans", {"bits": 4})
out = {}
for name, (x, scheme, opts) in cases.items():
    out[name] = [digest(qcore.quantize(x, scheme, **opts)) for _ in range(2)]
from qcore.ptq import gptq
X = rng.standard_normal((2048, 2048)).astype(np.float32)
H = (X.T.astype(np.float64) @ X) / 2048  # GPTQ's Cholesky and products go through BLAS, threaded at this size
for scheme, opts in [("linear", {"bits": 4, "granularity": "group", "group_size": 128}),
                     ("kmeans", {"bits": 4, "granularity": "channel"})]:
    q = qcore.get_quantizer(scheme, **opts)
    out[f"gptq {scheme} {opts['granularity']}"] = [digest(gptq(w[:512], H, q)) for _ in range(2)]
tensors = {"a": w[:256], "b": w[256:512] * 3, "c": rng.laplace(size=(128, 512)).astype(np.float32)}
out["mixed model"] = [hashlib.sha256(b"".join(digest(qt).encode() for _, qt in sorted(
    qcore.quantize_model(tensors, "mixed", budget_bits=4.5, progress=False).items()))).hexdigest() for _ in range(2)]
json.dump(out, sys.stdout)
"""


def _run(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_every_scheme_and_granularity_is_deterministic_across_threads_and_calls():
    one, two = _run(1), _run(2)
    assert one.keys() == two.keys() and len(one) == 25
    for name in one:
        assert one[name][0] == one[name][1], f"{name}: first and second call differ (1 thread)"
        assert two[name][0] == two[name][1], f"{name}: first and second call differ (2 threads)"
        assert one[name][0] == two[name][0], f"{name}: 1 thread and 2 threads differ"
