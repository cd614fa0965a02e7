"""scikit-learn MLP prediction on quantized weights (``qcore.integrations.sklearn``) against the float estimator,
side by side in one run (DESIGN §6, "scikit-learn MLP predict").

The model is an ``MLPClassifier`` 64-512-512-10 trained (seeded, 30 epochs of Adam) on scikit-learn's digits;
prediction runs on the digits images repeated 8 times (14376 rows).  Contenders: the float estimator
(float64, numpy/BLAS) and the adapter's copies at 8 bits (per output unit, int8 GEMM) and 4 bits group 32 (groups
along the inputs; the low-bit kernel), each computing every layer with ``qcore.ops.qlinear``.  Reported: the median
time of ``predict_proba`` (each contender timed in blocks of its own, rounds alternating), the speed-up over the
float estimator, the agreement of ``predict`` with the float estimator's, and the accuracy on the held-out
digits.

    OMP_NUM_THREADS=2 python benchmarks/bench_sklearn.py            # --threads 2 --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="rounds of timing blocks (the median is reported)")
    ap.add_argument("--block", type=int, default=5, help="calls per timing block")
    ap.add_argument("--repeat", type=int, default=8, help="the digits images repeated this many times")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from qcore.integrations import sklearn as qsk

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(512, 512), max_iter=30, random_state=0).fit(Xtr, ytr)
    Xbig = np.tile(X, (args.repeat, 1))

    contenders = {
        "float estimator (float64)": clf,
        "qcore 8-bit per channel": qsk.quantize_estimator(clf, "linear", bits=8),
        "qcore 4-bit group 32": qsk.quantize_estimator(clf, "linear", bits=4, granularity="group", group_size=32),
    }
    with threadpool_limits(args.threads):
        for m in contenders.values():
            m.predict_proba(Xbig)
        times = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, m in contenders.items():
                ts = []
                for _ in range(args.block):
                    s = time.perf_counter()
                    m.predict_proba(Xbig)
                    ts.append(time.perf_counter() - s)
                times[name].append(statistics.median(ts))
        ref = clf.predict(Xbig)
        agree = {k: float((m.predict(Xbig) == ref).mean()) for k, m in contenders.items()}
        acc = {k: m.score(Xte, yte) for k, m in contenders.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["float estimator (float64)"]
    print(f"scikit-learn MLPClassifier 64-512-512-10, predict_proba on {Xbig.shape[0]} rows, {args.threads} threads "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"  {'model':28s} {'ms':>8s} {'speed-up':>9s} {'agreement':>10s} {'accuracy':>9s}")
    for name in contenders:
        print(f"  {name:28s} {med[name] * 1e3:8.2f} {f / med[name]:8.2f}x {agree[name]:10.4f} {acc[name]:9.4f}")
    print("  targets: speed-up >= 1.3x and agreement >= 0.98 at 8 and 4 bits")
    print("  per-round medians (ms): " + "; ".join(
        f"{k} " + " ".join(f"{t * 1e3:.1f}" for t in v) for k, v in times.items()))


if __name__ == "__main__":
    main()
