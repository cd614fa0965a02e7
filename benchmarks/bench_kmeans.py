"""k-means quantization of 1M Gaussian weights: qcore's ``kmeans`` scheme vs scikit-learn ``KMeans`` on all points.

Both sides run in the same process on the same data with the same thread count (default 2, ``--threads``).
qcore: histogram (Cython) -> sklearn ``KMeans`` on the weighted bin means -> Cython midpoint/binary-search
assignment, i.e. the whole ``qcore.quantize(w, "kmeans", bits=b)``.  Reference: ``KMeans(n_clusters=k,
n_init=1, random_state=0).fit(w)`` then its labels (``inertia_`` is its squared error).  Printed: times,
speed-up, and the MSE ratio (qcore / sklearn).  qcore is timed as the median of ``--repeat`` runs; sklearn
once per k (it takes seconds).

    python benchmarks/bench_kmeans.py [--n 1000000] [--threads 2]
"""
import argparse
import os
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ks", default="256,16")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before numpy / sklearn / qcore load OpenMP

    import numpy as np
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    import qcore

    w = np.random.default_rng(0).standard_normal(args.n).astype(np.float32)
    print(f"k-means on {args.n:,} Gaussian float32 weights, {args.threads} threads, "
          f"qcore {qcore.__version__}, scikit-learn {__import__('sklearn').__version__}")
    print(f"{'k':>4} {'qcore s':>9} {'sklearn s':>10} {'speed-up':>9} {'qcore MSE':>11} {'sklearn MSE':>12} {'MSE ratio':>10}")
    ok = True
    with threadpool_limits(limits=args.threads):
        for k in (int(s) for s in args.ks.split(",")):
            bits = int(np.log2(k))
            assert 1 << bits == k, "k must be a power of two"
            qcore.quantize(w[:10000], "kmeans", bits=bits)  # warm-up (imports)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                qt = qcore.quantize(w, "kmeans", bits=bits)
                times.append(time.perf_counter() - t)
            tq = float(np.median(times))
            mse_q = float(np.mean((qt.dequantize().astype(np.float64) - w) ** 2))
            t = time.perf_counter()
            km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(w.reshape(-1, 1))
            labels = km.labels_
            ts = time.perf_counter() - t
            centers = km.cluster_centers_.ravel()
            mse_s = float(np.mean((centers[labels] - w.astype(np.float64)) ** 2))
            speed, ratio = ts / tq, mse_q / mse_s
            print(f"{k:>4} {tq:>9.4f} {ts:>10.3f} {speed:>8.1f}x {mse_q:>11.4e} {mse_s:>12.4e} {ratio:>10.4f}")
            if k == 256:
                ok &= speed >= 20 and ratio <= 1.02
    print("target (k=256): >= 20x faster, MSE ratio <= 1.02:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
