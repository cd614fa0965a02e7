"""Make docs/img/observer_ranges.png: an activation histogram and the clipping range each observer picks.

    python docs/plot_observers.py [output.png]

Data: 4 calibration batches of 1M Laplace(0, 1) activations with one or two outliers of magnitude 40..80 per
batch (the case where min/max calibration wastes most of the 8-bit grid on values that almost never occur).
Each observer calibrates the same ``linear`` 8-bit affine quantizer; the legend gives the squared error of
quantizing all the batches with the range it picked.
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import qcore  # noqa: E402

OBSERVERS = [
    ("minmax", {}),
    ("moving_average", {}),
    ("percentile", {}),
    ("histogram", {"method": "entropy"}),
    ("histogram", {"method": "l2"}),
    ("mse", {}),
]


def main(out=None):
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "img", "observer_ranges.png")
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(4):
        x = rng.laplace(0.0, 1.0, 1_000_000).astype(np.float32)
        k = int(rng.integers(1, 3))
        x[rng.integers(0, x.size, k)] = rng.choice([-1.0, 1.0], k) * rng.uniform(40, 80, k)
        batches.append(x)
    data = np.concatenate(batches)

    fig, (ax, zoom) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [1, 1.2]})
    for a, rng_ in ((ax, None), (zoom, (-25, 25))):
        a.hist(data, bins=800, range=rng_, color="0.75", log=True)
        a.set_ylabel("count (log)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, opts) in enumerate(OBSERVERS):
        q = qcore.get_quantizer("linear", bits=8)
        q.observer_name = name
        obs = qcore.get_observer(name, **opts)
        for b in batches:
            obs.update(b)
        q.observer = obs
        lo, hi = obs.range(8, False)
        err = float(np.mean((q.quantize(data).dequantize() - data) ** 2))
        label = name + (f" ({opts['method']})" if opts else "") + f": [{lo[0]:.1f}, {hi[0]:.1f}]  MSE {err:.2e}"
        for a in (ax, zoom):
            style = dict(color=colors[i % len(colors)], lw=1.6, ls=("-", "--", ":", "-.")[i % 4])
            a.axvline(lo[0], **style, label=label if a is ax else None)
            a.axvline(hi[0], **style)
    ax.set_title("8-bit affine ranges picked by each qcore observer: Laplace activations with rare outliers (4M values)")
    ax.legend(fontsize=8, loc="upper right")
    zoom.set_title("zoom on [-25, 25]")
    zoom.set_xlim(-25, 25)
    zoom.set_xlabel("activation value")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
