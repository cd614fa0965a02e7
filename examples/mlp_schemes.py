"""Every installed qcore scheme on one MLP: scikit-learn's MLPClassifier on digits, quantized with
``qcore.integrations.sklearn.quantize_estimator`` (and, when PyTorch is installed, the same weights in a torch
``nn.Sequential`` quantized with ``qcore.integrations.torch.quantize_dynamic``).

For each scheme and bit width it prints the accuracy on held-out digits, the stored size of the weights
(``QTensor.nbytes``: packed codes plus parameters), the compression ratio and the mean SQNR of the weights.
Schemes come from ``qcore.list_schemes()``, so a third-party scheme plugin shows up here too (with its default
options).  Runs in well under a minute; no download.

    python examples/mlp_schemes.py [--hidden 128 64] [--seed 0]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

import qcore
from qcore.integrations import sklearn as qsk

try:
    import torch
    from torch import nn

    from qcore.integrations import torch as qtorch
except ImportError:  # the torch column is optional
    torch = None

#: (scheme, options) rows; schemes not listed here run with their defaults at 8 and 4 bits
CONFIGS = {
    "linear": [dict(bits=8), dict(bits=8, granularity="tensor", symmetric=False), dict(bits=4), dict(bits=3),
               dict(bits=2), dict(bits=4, granularity="tensor")],
    "log": [dict(bits=8), dict(bits=5), dict(bits=4), dict(bits=3)],
    "kmeans": [dict(bits=4), dict(bits=3), dict(bits=2), dict(bits=4, granularity="channel")],
    "mixed": [dict(budget_bits=4.5), dict(budget_bits=3.0)],
}


def torch_mlp(clf):
    """The fitted sklearn MLP as a torch nn.Sequential (Linear weights are the transposed ``coefs_``)."""
    layers = []
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        layers.append(lin)
        if i < len(clf.coefs_) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def torch_accuracy(model, X, y) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(X.astype(np.float32))).argmax(1).numpy() == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="every qcore scheme on a digits MLP")
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=args.seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=tuple(args.hidden), max_iter=200, random_state=args.seed)
    with warnings.catch_warnings(), threadpool_limits(1):  # one BLAS thread: fast and stable on a busy machine
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    base = clf.score(Xte, yte)
    fp32_bytes = sum(w.size * 4 for w in clf.coefs_)
    tmodel = torch_mlp(clf) if torch is not None else None
    print(f"MLPClassifier {'-'.join(map(str, [64, *args.hidden, 10]))} on digits "
          f"({sum(w.size for w in clf.coefs_)} weights), trained in {time.perf_counter() - t0:.1f} s")
    print(f"schemes installed: {', '.join(qcore.list_schemes())}")
    head = f"{'scheme':8s} {'options':42s} {'bytes':>7s} {'ratio':>6s} {'SQNR dB':>8s} {'accuracy':>8s} {'Δ pts':>6s}"
    if tmodel is not None:
        head += f" {'torch acc':>9s}"
    print(head)
    row = f"{'fp32':8s} {'':42s} {fp32_bytes:7d} {1.0:6.2f} {'inf':>8s} {base:8.4f} {0.0:6.2f}"
    if tmodel is not None:
        row += f" {torch_accuracy(tmodel, Xte, yte):9.4f}"
    print(row)
    for scheme in qcore.list_schemes():
        for opts in CONFIGS.get(scheme, [dict(bits=8), dict(bits=4)]):
            label = ", ".join(f"{k}={v}" for k, v in opts.items())
            try:
                q = qsk.quantize_estimator(clf, scheme, **opts)
            except (TypeError, ValueError) as exc:
                print(f"{scheme:8s} {label:42s} skipped: {exc}")
                continue
            rep = [r for r in q.qcore_report_ if r["scheme"] is not None]
            nbytes = sum(r["bytes_q"] for r in rep)
            sqnr = float(np.mean([r["sqnr_db"] for r in rep]))
            acc = q.score(Xte, yte)
            row = (f"{scheme:8s} {label:42s} {nbytes:7d} {fp32_bytes / nbytes:6.2f} {sqnr:8.2f} {acc:8.4f} "
                   f"{(acc - base) * 100:6.2f}")
            if tmodel is not None:
                topts = dict(opts)
                budget = topts.pop("budget_bits", None)
                if budget is not None:
                    topts["budget_bits"] = budget  # per tensor in torch (the mixed scheme's own option)
                tq = qtorch.quantize_dynamic(tmodel, scheme, **({"bits": 8} | topts))
                row += f" {torch_accuracy(tq, Xte, yte):9.4f}"
            print(row)
    print(f"done in {time.perf_counter() - t0:.1f} s.  Per-channel options use one scale per output unit "
          "(axis=1 for scikit-learn's (n_in, n_out) weights, axis=0 for torch's (out, in)).")
    if tmodel is not None:
        print("torch acc: the same weights in nn.Linear layers, quantize_dynamic with the same scheme and options "
              "(both adapters run every layer through qcore.ops.qlinear: mixed may plan other bits per tensor).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
