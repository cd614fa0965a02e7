"""quantize_model at scale: a synthetic 1.1B-parameter model in float16 shards, one process vs a Dask LocalCluster.

The model has TinyLlama-1.1B's shapes (22 layers, hidden 2048, intermediate 5632, 4 key/value heads of 64,
vocabulary 32000; 1.10B parameters, 2.2 GB of float16 in shards of about 500 MB), filled with Gaussian values of
a per-row scale, and is written to a temporary folder (deleted at the end; ``--dir`` to choose where, ``--keep``
to keep it).  For each scheme (``--schemes``: ``kmeans`` 4-bit group-128 and ``linear`` 4-bit symmetric
group-32 by default), every 2-d tensor is quantized straight from the shards into a sharded output
(``quantize_model(path, ..., output=..., max_shard_size=...)``) in these configurations, each in a fresh process:

* **one process** with ``--threads`` OpenMP threads (default 2): the kernels parallelise inside each tensor;
* **LocalCluster**: ``--workers`` Dask worker processes (default 2) of one thread each, tensors in parallel; the
  driver only plans and writes.  Cluster start-up is timed apart from the work;
* for reference, **one process with one thread** (``--no-one-thread`` skips it): what each worker is.

Printed per configuration: wall time, throughput (parameters per second), its ratio to the one process with
``--threads`` threads, the CPU time of every process of the run (driver and workers, all threads) and the cores
it kept busy on average (CPU time / wall time: what the run got from the machine), peak resident memory (``ru_maxrss``) of the driver and of each worker, the output size and
shard count, and whether both outputs are the same bytes.  After each scheme, a control: how much more work two
single-threaded processes do at once than one alone on this machine at that moment (a fixed k-means job; 2.00 on
two free cores) — on a shared machine it falls toward 1 and so does any cluster's gain.  Targets (issue 25): driver peak RSS <= 1.5 GB for the
k-means model; cluster throughput >= 1.6x one process; identical bytes.

    python benchmarks/bench_scale.py [--schemes kmeans,linear] [--workers 2] [--threads 2] [--max-shard-size 500MB]
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

LAYERS, HIDDEN, INTER, KV, VOCAB = 22, 2048, 5632, 256, 32000
SCHEMES = {"kmeans": ("kmeans", {"bits": 4, "granularity": "group", "group_size": 128}),
           "linear": ("linear", {"bits": 4, "symmetric": True, "granularity": "group", "group_size": 32})}


def shapes(layers=LAYERS):
    """Tensor names and shapes of the model, in checkpoint order."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,)),
                (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
                (p + "self_attn.v_proj.weight", (KV, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                (p + "post_attention_layernorm.weight", (HIDDEN,)),
                (p + "mlp.gate_proj.weight", (INTER, HIDDEN)), (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
                (p + "mlp.down_proj.weight", (HIDDEN, INTER))]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def make_model(folder, layers=LAYERS, shard_bytes=500 * 10**6):
    """The float16 model in Hugging Face shards (written with the safetensors package); returns its parameters."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    shards, current, size = [], {}, 0
    for name, shape in shapes(layers):
        if len(shape) == 1:
            arr = np.ones(shape, np.float16)
        else:
            scale = rng.uniform(0.01, 0.05, (shape[0], 1)).astype(np.float32)
            arr = np.empty(shape, np.float16)
            for r in range(0, shape[0], 1024):  # in blocks: the float64 draws stay small
                arr[r:r + 1024] = (rng.standard_normal((min(1024, shape[0] - r), shape[1]), np.float32)
                                   * scale[r:r + 1024]).astype(np.float16)
        if current and size + arr.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    weight_map, params = {}, 0
    for i, part in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, os.path.join(folder, fname), metadata={"format": "pt"})
        for name, arr in part.items():
            weight_map[name] = fname
            params += arr.size
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 2 * params}, "weight_map": weight_map}, f)
    return params


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def _cpu_seconds():
    """CPU time (user + system) of this process so far, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args):
    """One configuration, in its own process: prints a JSON line of timings and peak memory."""
    import qcore

    scheme, opts = SCHEMES[args.scheme]
    kw = dict(output=args.out, max_shard_size=args.max_shard_size, progress=False, **opts)
    result = {}
    if args.child == "single":
        t, c = time.perf_counter(), _cpu_seconds()
        qcore.quantize_model(args.model, scheme, **kw)
        result["seconds"] = time.perf_counter() - t
        result["cpu"] = _cpu_seconds() - c
    else:
        from qcore.model.execution import dask_executor

        t = time.perf_counter()
        with dask_executor(workers=args.workers) as ex:
            result["startup"] = time.perf_counter() - t
            client = ex._client
            result["worker_threads"] = sorted(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values())
            t, c, wc = time.perf_counter(), _cpu_seconds(), sum(client.run(_cpu_seconds).values())
            qcore.quantize_model(args.model, scheme, executor=ex, **kw)
            result["seconds"] = time.perf_counter() - t
            result["cpu"] = _cpu_seconds() - c + sum(client.run(_cpu_seconds).values()) - wc
            result["worker_rss"] = sorted(client.run(_peak_rss).values())
    result["driver_rss"] = _peak_rss()
    print(json.dumps(result))


def control_work(seconds=3.0):
    """A fixed CPU-bound job (k-means-4 group-128 of one 1024 x 2048 weight, one thread) repeated for ``seconds``;
    prints the jobs done per second."""
    import numpy as np

    import qcore

    w = np.random.default_rng(0).standard_normal((1024, 2048)).astype(np.float32)
    q = qcore.get_quantizer("kmeans", bits=4, granularity="group", group_size=128)
    q.quantize(w)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        q.quantize(w)
        n += 1
    print(n / (time.perf_counter() - t))


def machine_scaling(seconds=3.0):
    """How much more work two single-threaded processes do at once than one alone, here and now (ideal 2.0): the
    ceiling of the cluster's ratio on this machine at this load.  Each process runs :func:`control_work`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "control", "--seconds", str(seconds)]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def rates(k):
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    one = rates(1)[0]
    return sum(rates(2)) / one


def _run(args, mode, out, env):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", args.model, "--out", out,
           "--scheme", args.scheme, "--workers", str(args.workers), "--max-shard-size", args.max_shard_size]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _digest(folder):
    h = hashlib.sha256()
    files = sorted(os.listdir(folder))
    for f in files:
        h.update(f.encode())
        with open(os.path.join(folder, f), "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest(), sum(os.path.getsize(os.path.join(folder, f)) for f in files), \
        sum(f.startswith("model-") for f in files)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="kmeans,linear")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-shard-size", default="500MB")
    ap.add_argument("--dir", help="where to write the model and outputs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated model (and its folder)")
    ap.add_argument("--no-one-thread", action="store_true", help="skip the one-process one-thread reference run")
    ap.add_argument("--layers", type=int, default=LAYERS, help="decoder layers (default 22: 1.1B parameters; "
                                                                "fewer for a quick run)")
    ap.add_argument("--child", choices=("single", "dask", "make", "control"), help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--scheme", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "control":
        control_work(args.seconds)
        return 0
    if args.child == "make":
        print(make_model(args.model, args.layers))
        return 0
    if args.child:
        return child(args)
    root = tempfile.mkdtemp(prefix="qcore-scale-", dir=args.dir)
    try:
        args.model = os.path.join(root, "model")
        os.makedirs(args.model)
        t = time.perf_counter()
        # in a process of its own: a child's peak RSS (ru_maxrss) starts from its parent's, which must stay small
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "make", "--model", args.model,
                              "--layers", str(args.layers)], capture_output=True, text=True, check=True)
        params = int(res.stdout.strip().splitlines()[-1])
        made = time.perf_counter() - t
        print(f"model: {params / 1e9:.3f}B parameters, float16, "
              f"{sum(os.path.getsize(os.path.join(args.model, f)) for f in os.listdir(args.model)) / 1e9:.2f} GB in "
              f"{len(os.listdir(args.model)) - 1} shards (made in {made:.0f} s); output shards of at most "
              f"{args.max_shard_size}; load average {os.getloadavg()[0]:.1f}")
        print(f"{'scheme':<22} {'configuration':<34} {'s':>7} {'Mparam/s':>9} {'ratio':>6} {'CPU s':>7} {'cores':>5} "
              f"{'driver RSS':>11} {'worker RSS':>14} {'output':>9} {'shards':>6}")
        ok = True
        for name in args.schemes.split(","):
            args.scheme = name
            scheme, opts = SCHEMES[name]
            label = f"{scheme} {opts['bits']}-bit g{opts['group_size']}"
            outs, runs = {}, {}
            modes = [("single", "single", args.threads, f"1 process x {args.threads} threads"),
                     ("dask", "dask", 1, f"LocalCluster {args.workers} x 1 thread")]
            if not args.no_one_thread:
                modes.append(("one", "single", 1, "1 process x 1 thread (reference)"))
            for key, mode, threads, _ in modes:
                out = os.path.join(root, f"out-{name}-{key}")
                runs[key] = _run(args, mode, out, dict(os.environ, OMP_NUM_THREADS=str(threads)))
                outs[key] = _digest(out)
                shutil.rmtree(out)
            same = len({o[0] for o in outs.values()}) == 1
            ratio = runs["single"]["seconds"] / runs["dask"]["seconds"]
            for key, _, _, conf in modes:
                r = runs[key]
                wrss = ", ".join(f"{v / 1e9:.2f}" for v in r.get("worker_rss", [])) or "-"
                print(f"{label:<22} {conf:<34} {r['seconds']:>7.1f} {params / r['seconds'] / 1e6:>9.1f} "
                      f"{runs['single']['seconds'] / r['seconds']:>6.2f} {r['cpu']:>7.1f} {r['cpu'] / r['seconds']:>5.2f} "
                      f"{r['driver_rss'] / 1e9:>9.2f}GB {wrss:>12}GB "
                      f"{outs[key][1] / 1e9:>7.2f}GB {outs[key][2]:>6}")
            print(f"{'':<22} cluster start-up {runs['dask']['startup']:.1f} s (not counted); worker OMP_NUM_THREADS "
                  f"{runs['dask']['worker_threads']}; outputs of every configuration {'identical' if same else 'DIFFER'}")
            print(f"{'':<22} machine now: 2 single-threaded processes at once do {machine_scaling():.2f}x the work of "
                  f"one (ideal 2.00; the ceiling of the cluster's gain here); load average {os.getloadavg()[0]:.1f}")
            ok &= same and ratio >= 1.6
            if name == "kmeans":
                ok &= runs["single"]["driver_rss"] <= 1.5e9 and runs["dask"]["driver_rss"] <= 1.5e9
        print("targets: identical bytes; LocalCluster >= 1.6x one process; driver peak RSS <= 1.5 GB (kmeans):",
              "met" if ok else "NOT met")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
