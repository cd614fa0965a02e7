"""``qcore demo``: the main job on an embedded default, no download.

Trains a small MLP on scikit-learn's bundled digits, treats its weights as a model (named tensors, biases
kept float), quantizes it with every installed scheme and with mixed precision at several budgets, saves and
reloads one plan through the file format, and prints size, bits per weight, error and accuracy of each.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np


from ..metrics import sqnr_db


@functools.lru_cache(maxsize=4)
def _train(seed: int, hidden: tuple, max_iter: int):
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed)
    # small matrices: BLAS threads only fight each other (and anything else running) here
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    return clf, Xte, yte, Xtr


def train_digits_mlp(seed: int = 0, hidden: tuple = (128, 64), max_iter: int = 300):
    """A fitted ``MLPClassifier`` on digits and its held-out split ``(clf, X_test, y_test)`` (cached per arguments;
    do not modify the returned estimator — copy it)."""
    clf, Xte, yte, _ = _train(seed, tuple(hidden), max_iter)
    return clf, Xte, yte


def mlp_tensors(clf) -> dict[str, np.ndarray]:
    """The MLP's weights as named float32 tensors: ``layer{i}.weight`` (in, out) and ``layer{i}.bias``."""
    out = {}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        out[f"layer{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        out[f"layer{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def accuracy_with(clf, tensors: dict[str, np.ndarray], X, y) -> float:
    import copy

    model = copy.deepcopy(clf)
    model.coefs_ = [np.asarray(tensors[f"layer{i}.weight"], dtype=np.float64) for i in range(len(clf.coefs_))]
    model.intercepts_ = [np.asarray(tensors[f"layer{i}.bias"], dtype=np.float64) for i in range(len(clf.intercepts_))]
    return float(model.score(X, y))


#: the demo's own showcase of named schemes (its content, not a capability test): several layouts and widths
SHOWCASE = {
    "linear": [
        ("linear 8b channel", "linear", {"bits": 8, "granularity": "channel", "axis": 1}),
        ("linear 4b channel", "linear", {"bits": 4, "granularity": "channel", "axis": 1}),
        # the 10-wide output layer cannot hold groups of 32: a rule gives it per-channel scales instead
        ("linear 4b group32", "linear", {"bits": 4, "granularity": "group", "group_size": 32,
                                         "rules": {"layer2.weight": {"granularity": "channel", "axis": 1}}}),
        ("linear 3b channel", "linear", {"bits": 3, "granularity": "channel", "axis": 1}),
        ("linear 2b channel", "linear", {"bits": 2, "granularity": "channel", "axis": 1}),
    ],
    "mixed": [(f"mixed @{b:g} bits", "mixed", {"budget_bits": b, "axis": 1}) for b in (3.0, 4.0, 5.0)]
    + [("mixed SQNR>=25dB", "mixed", {"target_sqnr": 25.0, "axis": 1})],
}


def demo_configs(schemes: list[str], planners: list[str] = ()) -> list[tuple[str, str, dict]]:
    """``(label, scheme, options)`` of each run: the showcase of the schemes it names, every other installed scheme
    at 4 and 3 bits, then the showcase planners (other planners are not run: they need their own options)."""
    runs = list(SHOWCASE["linear"]) if "linear" in schemes else []
    for s in schemes:
        if s not in SHOWCASE and s not in planners:
            runs += [(f"{s} 4b", s, {"bits": 4}), (f"{s} 3b", s, {"bits": 3})]
    for s in planners:
        runs += SHOWCASE.get(s, [])
    return runs


def run_demo(quiet: bool = False) -> int:
    import qcore

    t0 = time.perf_counter()
    clf, Xte, yte = train_digits_mlp()
    tensors = mlp_tensors(clf)
    base_acc = accuracy_with(clf, tensors, Xte, yte)
    weights = [n for n in tensors if n.endswith(".weight")]
    n_weights = sum(tensors[n].size for n in weights)
    fp32 = sum(t.nbytes for t in tensors.values())
    shapes = "-".join([str(tensors[weights[0]].shape[0])] + [str(tensors[n].shape[1]) for n in weights])
    print(f"qcore {qcore.__version__} demo: MLP {shapes} trained on scikit-learn digits in {time.perf_counter() - t0:.1f} s "
          f"({n_weights} weights in {len(weights)} matrices; biases stay float32)")
    print(f"schemes: {', '.join(qcore.list_schemes())}; kernel: {qcore.get_kernel().name}")
    head = f"{'configuration':20s} {'bytes':>7s} {'ratio':>6s} {'bits/w':>6s} {'SQNR dB':>8s} {'accuracy':>8s}  chosen per layer"
    print(head)
    print("-" * len(head))
    print(f"{'float32':20s} {fp32:7d} {1.0:6.2f} {32.0:6.2f} {'inf':>8s} {base_acc:8.4f}")
    ref = np.concatenate([tensors[n].ravel() for n in weights])
    kept = None
    for label, scheme, opts in demo_configs(qcore.list_schemes(), qcore.list_planners()):
        try:
            qm = qcore.quantize_model(tensors, scheme, progress=not quiet, **opts)
        except (TypeError, ValueError) as exc:
            print(f"{label:20s} skipped: {exc}")
            continue
        deq = qm.dequantize()
        acc = accuracy_with(clf, deq, Xte, yte)
        snr = sqnr_db(ref, np.concatenate([deq[n].ravel() for n in weights]))
        chosen = ""
        if scheme in qcore.list_planners():
            chosen = ", ".join(f"{qm[n].scheme}{qm[n].bits}" + ("g" if qm[n].options.get("granularity") == "group" else "")
                               for n in weights)
            if kept is None:
                kept = (label, qm, acc)
        print(f"{label:20s} {qm.nbytes:7d} {fp32 / qm.nbytes:6.2f} {qm.average_bits:6.2f} {snr:8.2f} {acc:8.4f}  {chosen}")
    if kept is not None:
        label, qm, acc = kept
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "digits.q.safetensors")
            size = qm.save(path)
            back = qcore.load_quantized(path)
            same = all(np.array_equal(back[n].codes, qm[n].codes) for n in qm.quantized)
            acc2 = accuracy_with(clf, back.dequantize(), Xte, yte)
        print(f"file round trip of '{label}': {size} bytes on disk, codes identical: {same}, "
              f"accuracy after reload {acc2:.4f} (before {acc:.4f})")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
