"""SQNR against bits for the linear, log and kmeans schemes on Gaussian, Laplace and trained MLP weights.

Writes ``docs/img/sqnr_vs_bits.png`` (and prints the table behind it).  Real weights: a scikit-learn
``MLPClassifier(hidden_layer_sizes=(128, 64))`` trained on ``load_digits``; each weight matrix is quantized
on its own and the SQNR is over all of them (total signal power / total error power).  Per-tensor
granularity throughout, default options of each scheme (linear: affine; log: ``method="mse"``).

    python benchmarks/plot_sqnr.py [-o docs/img/sqnr_vs_bits.png]
"""
import argparse
import os
import warnings

import numpy as np

import qcore

SCHEMES = {"linear": range(1, 9), "log": range(2, 9), "kmeans": range(1, 9)}


def mlp_weights():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=0).fit(X / 16.0, y)
    return [w.astype(np.float32) for w in clf.coefs_], clf.score(X / 16.0, y)


def sqnr_db(tensors, scheme, bits):
    sig = err = 0.0
    for w in tensors:
        d = qcore.quantize(w, scheme, bits=bits).dequantize().astype(np.float64)
        sig += float(np.sum(w.astype(np.float64) ** 2))
        err += float(np.sum((d - w) ** 2))
    return 10 * np.log10(sig / err) if err > 0 else np.inf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("-o", "--output", default=os.path.join(here, "..", "docs", "img", "sqnr_vs_bits.png"))
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    mlp, acc = mlp_weights()
    datasets = {
        "Gaussian (100k)": [rng.standard_normal(100_000).astype(np.float32)],
        "Laplace (100k)": [rng.laplace(size=100_000).astype(np.float32)],
        f"MLP on digits ({sum(w.size for w in mlp):,} weights)": mlp,
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, (title, tensors) in zip(axes, datasets.items()):
        print(title)
        for scheme, bits in SCHEMES.items():
            vals = [sqnr_db(tensors, scheme, b) for b in bits]
            print(f"  {scheme:>7}: " + "  ".join(f"{b}b {v:5.1f}" for b, v in zip(bits, vals)))
            ax.plot(list(bits), vals, marker="o", label=scheme)
        ax.set_title(title)
        ax.set_xlabel("bits per weight")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQNR (dB)")
    axes[0].legend()
    fig.suptitle(f"qcore schemes, per-tensor (MLP train accuracy {acc:.3f})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print("wrote", os.path.normpath(args.output))


if __name__ == "__main__":
    main()
