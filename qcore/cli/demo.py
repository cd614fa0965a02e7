"""``qcore demo``: train a small MLP on scikit-learn's bundled digits (no download), quantize its weights with
every installed scheme at 8 and 4 bits, and print size, error and accuracy per scheme."""
from __future__ import annotations

import time

import numpy as np


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")


def train_digits_mlp(seed: int = 0):
    """A fitted ``MLPClassifier`` on digits and its held-out split."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    return clf, Xte, yte


def run_demo(quiet: bool = False) -> int:
    import copy

    import qcore

    t0 = time.perf_counter()
    clf, Xte, yte = train_digits_mlp()
    base_acc = clf.score(Xte, yte)
    weights = [w.astype(np.float32) for w in clf.coefs_]
    fp32_bytes = sum(w.nbytes for w in weights)
    print(f"qcore {qcore.__version__} demo: MLP 64-128-64-10 on scikit-learn digits "
          f"({sum(w.size for w in weights)} weights, trained in {time.perf_counter() - t0:.1f} s)")
    print(f"kernels: {', '.join(qcore.list_kernels())}; default: {qcore.get_kernel().name}")
    print(f"{'scheme':10s} {'bits':>4s} {'granularity':>11s} {'bytes':>8s} {'ratio':>6s} {'SQNR dB':>8s} {'accuracy':>8s}")
    print(f"{'fp32':10s} {32:4d} {'-':>11s} {fp32_bytes:8d} {1.0:6.2f} {'inf':>8s} {base_acc:8.4f}")
    for scheme in qcore.list_schemes():
        for bits in (8, 4):
            for gran in ("tensor", "channel"):
                opts = {"bits": bits}
                q = None
                try:
                    q = qcore.get_quantizer(scheme, **opts, granularity=gran, axis=1)
                except (TypeError, ValueError):
                    if gran != "tensor":
                        continue
                    try:
                        q = qcore.get_quantizer(scheme, **opts)
                    except (TypeError, ValueError) as exc:
                        print(f"{scheme:10s} {bits:4d} skipped: {exc}")
                        continue
                qts = [q.quantize(w) for w in weights]
                deq = [qt.dequantize() for qt in qts]
                model = copy.deepcopy(clf)
                model.coefs_ = [d.astype(np.float64) for d in deq]
                acc = model.score(Xte, yte)
                nbytes = sum(qt.nbytes for qt in qts)
                snr = sqnr_db(np.concatenate([w.ravel() for w in weights]), np.concatenate([d.ravel() for d in deq]))
                print(f"{scheme:10s} {bits:4d} {gran:>11s} {nbytes:8d} {fp32_bytes / nbytes:6.2f} {snr:8.2f} {acc:8.4f}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
