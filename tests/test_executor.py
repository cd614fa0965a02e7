"""``quantize_model(path, ..., executor=...)`` (issue 25): the per-tensor work on a ``concurrent.futures``
executor — threads, and a real ``dask.distributed.LocalCluster`` of two worker processes — gives the same
bytes as one process; failures (a worker that dies, a tensor that cannot be quantized) name the tensor and
leave no output that looks complete; the command line's ``--workers``; the error when Dask is missing."""
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from safetensors.numpy import save_file

import qcore
from qcore.cli.main import main
from qcore.model.execution import TaskFailed, dask_executor, ordered_map

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

from executor_schemes import FragileLinear  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(0)
WEIGHTS = {f"model.layers.{i}.mlp.weight": (RNG.standard_normal((192, 256)) * RNG.uniform(0.5, 2)).astype(np.float16)
           for i in range(6)}


def _write_model(folder, tensors):
    """A Hugging Face style float16 model in two shards (written with the safetensors package) and a config."""
    folder.mkdir()
    names = list(tensors)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for f, ns in parts.items():
        save_file({n: tensors[n] for n in ns}, folder / f)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {n: f for f, ns in parts.items() for n in ns}}))
    (folder / "config.json").write_text(json.dumps({"model_type": "test"}))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tensors = dict(WEIGHTS, **{"model.norm.weight": np.ones(256, np.float16), "model.ids": np.arange(5)})
    return _write_model(tmp_path_factory.mktemp("exec") / "model", tensors)


@pytest.fixture(scope="module")
def dask_ex():
    """Two single-threaded worker processes; this folder on their import path (for executor_schemes)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = TESTS + (os.pathsep + old if old else "")
    try:
        # a task whose worker died is not retried: the failure tests stay quick
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), dask_executor(workers=2) as ex:
            yield ex
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def _files(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in sorted(os.listdir(folder))}


CASES = [("kmeans", dict(bits=4, granularity="group", group_size=128), "qcore"),
         ("linear", dict(bits=4, granularity="group", group_size=32, symmetric=True), "compressed-tensors"),
         ("log", dict(bits=4, granularity="channel"), "qcore"),
         ("mixed", dict(budget_bits=4.5), "qcore")]


@pytest.mark.parametrize("scheme,opts,fmt", CASES, ids=[c[0] for c in CASES])
def test_local_cluster_writes_the_same_bytes_as_one_process(model, tmp_path, dask_ex, scheme, opts, fmt):
    kw = dict(progress=False, format=fmt, max_shard_size="100kB", **opts)
    one = qcore.quantize_model(str(model), scheme, output=str(tmp_path / "one"), **kw)
    two = qcore.quantize_model(str(model), scheme, output=str(tmp_path / "two"), executor=dask_ex, **kw)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert len([f for f in os.listdir(tmp_path / "two") if f.startswith("model-")]) >= 2
    if fmt == "compressed-tensors":
        assert "config.json" in os.listdir(tmp_path / "two")  # the source's config went along
    assert one.report() == two.report()
    # and the same model as quantize_model in memory
    qm = qcore.quantize_model(str(model), scheme, progress=False, **opts)
    back = two.load()
    assert list(back) == list(qm)
    for n in qm.quantized:
        np.testing.assert_array_equal(back[n].codes, qm[n].codes)


def test_threads_and_in_memory_results(model):
    with ThreadPoolExecutor(2) as ex:
        qm = qcore.quantize_model(str(model), "kmeans", bits=3, progress=False, executor=ex)
    ref = qcore.quantize_model(str(model), "kmeans", bits=3, progress=False)
    assert list(qm) == list(ref) and qm.info == ref.info
    for n in ref.quantized:
        np.testing.assert_array_equal(qm[n].packed, ref[n].packed)
        np.testing.assert_array_equal(qm[n].params["codebook"], ref[n].params["codebook"])


def _assert_nothing_complete(out):
    left = os.listdir(out) if os.path.isdir(out) else []
    assert not [f for f in left if f.endswith((".safetensors", ".index.json"))], left
    assert not [f for f in left if f.startswith(".")], left  # temporary files removed too


def test_a_worker_that_dies_is_replaced_and_the_output_is_the_same(model, tmp_path, dask_ex, register_qcore_plugin):
    register_qcore_plugin(FragileLinear)
    marker = tmp_path / "died"
    rules = {"*.layers.2.*": {"scheme": "test_fragile_linear", "die": "once", "marker": str(marker)}}
    client = dask_ex._client
    client.run_on_scheduler(_allow_failures, 3)  # this test's task may be retried where it died
    try:
        out = qcore.quantize_model(str(model), "linear", bits=4, granularity="channel", rules=rules, progress=False,
                                   executor=dask_ex, output=str(tmp_path / "dask"), max_shard_size="100kB")
    finally:
        client.run_on_scheduler(_allow_failures, 0)
    assert marker.exists()  # a worker did die
    one = qcore.quantize_model(str(model), "linear", bits=4, granularity="channel", rules=rules, progress=False,
                               output=str(tmp_path / "one"), max_shard_size="100kB")
    assert _files(tmp_path / "one") == _files(tmp_path / "dask")
    assert [r["scheme"] for r in out.report()][2] == "test_fragile_linear"
    client.wait_for_workers(2)


def _allow_failures(n, dask_scheduler=None):
    dask_scheduler.allowed_failures = n


def test_a_worker_that_keeps_dying_fails_the_run_naming_the_tensor(model, tmp_path, dask_ex, register_qcore_plugin):
    register_qcore_plugin(FragileLinear)
    rules = {"*.layers.4.*": {"scheme": "test_fragile_linear", "die": "always"}}
    out = tmp_path / "out"
    with pytest.raises(TaskFailed, match=r"tensor 'model.layers.4.mlp.weight'.*KilledWorker"):
        qcore.quantize_model(str(model), "linear", bits=4, granularity="channel", rules=rules, progress=False,
                             executor=dask_ex, output=str(out), max_shard_size="100kB")
    _assert_nothing_complete(out)
    dask_ex._client.wait_for_workers(2)


def test_a_tensor_that_cannot_be_quantized_fails_the_run_naming_it(tmp_path, dask_ex):
    bad = dict(WEIGHTS)
    bad["model.layers.3.mlp.weight"] = bad["model.layers.3.mlp.weight"].copy()
    bad["model.layers.3.mlp.weight"][7, 9] = np.inf
    src = _write_model(tmp_path / "bad", bad)
    out = tmp_path / "out"
    with pytest.raises(qcore.InputError, match=r"tensor 'model.layers.3.mlp.weight'.*(NaN|Inf)"):
        qcore.quantize_model(str(src), "kmeans", bits=4, progress=False, executor=dask_ex, output=str(out),
                             max_shard_size="100kB", format="qcore")
    _assert_nothing_complete(out)


class _NoWork:
    """An executor that fails the test if anything is submitted."""

    def submit(self, *a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("work was submitted")


def test_too_small_a_shard_is_refused_before_any_work(model, tmp_path):
    with pytest.raises(ValueError, match=r"max_shard_size=20.00 kB is too small.*model.layers.0.mlp.weight"):
        qcore.quantize_model(str(model), "linear", bits=4, granularity="channel", progress=False, executor=_NoWork(),
                             output=str(tmp_path / "o"), max_shard_size="20kB")
    assert not (tmp_path / "o").exists()


def test_executor_needs_the_model_as_a_path():
    with pytest.raises(TypeError, match="as a path"):
        qcore.quantize_model(dict(WEIGHTS), "linear", progress=False, executor=ThreadPoolExecutor(1))
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        qcore.quantize_model(dict(WEIGHTS), "linear", progress=False, executor=object())


def test_one_progress_bar_over_every_tensor(model, dask_ex):
    seen = []
    qcore.quantize_model(str(model), "mixed", budget_bits=4.5, executor=dask_ex,
                         progress=lambda phase, done, total: seen.append((phase, done, total)))
    total = sum(w.size for w in WEIGHTS.values())
    assert [p for p, _, _ in seen if p == "measuring"] and seen[-1] == ("quantizing", total, total)
    assert all(0 < d <= t for _, d, t in seen)


def test_ordered_map_keeps_order_names_failures_and_cancels_the_rest():
    import threading
    import time

    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * (5 - i % 5))
        if i == 7:
            raise ValueError("bad value")
        return i * i

    with ThreadPoolExecutor(2) as ex:
        assert list(ordered_map(ex, work, range(7), names=[f"t{i}" for i in range(7)])) == [i * i for i in range(7)]
        started.clear()
        gen = ordered_map(ex, work, range(40), names=[f"t{i}" for i in range(40)], window=4)
        with pytest.raises(ValueError, match="tensor 't7': bad value"):
            list(gen)
    assert max(started) < 20  # at most a window ahead: the rest never started
    with pytest.raises(ValueError, match="tensor 'x': bad value"):
        list(ordered_map(None, work, [7], names=["x"]))


def test_cli_workers_stream_shards_with_the_force_policy(model, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["quantize", str(model), "-o", str(out), "--scheme", "linear", "--bits", "4", "--max-shard-size", "100kB",
            "--quiet"]
    assert main(args + ["--workers", "2"]) == 0
    first = _files(out)
    assert "model.safetensors.index.json" in first
    assert main(args) == 2 and "--force" in capsys.readouterr().err  # a model is there already
    assert main(args + ["--force"]) == 0  # one process this time: the same bytes
    assert _files(out) == first
    assert main(args + ["--force", "--workers", "0"]) == 2
    assert main(args + ["--force", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2


def test_missing_dask_says_how_to_install(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "qcore\[dask\]"'):
        with dask_executor(workers=2):
            pass  # pragma: no cover
    args = ["quantize", str(model), "-o", str(tmp_path / "o.safetensors"), "--scheme", "linear", "--quiet", "--workers", "2"]
    assert main(args) == 2
    assert 'pip install "qcore[dask]"' in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        with dask_executor(workers=2, scheduler="tcp://x:1"):
            pass  # pragma: no cover


def test_gptq_and_mixed_with_a_hessian_file_on_the_cluster(model, tmp_path, dask_ex):
    """Hessians from a file travel as its path too; the same bytes as one process for GPTQ and for mixed judged
    by output error on held-out folds."""
    from qcore.ptq.hessian import HessianAccumulator, save_hessians

    rng = np.random.default_rng(5)
    hs = {}
    for i in range(0, 6, 2):  # some tensors have calibration data, the others are rounded to nearest
        acc = HessianAccumulator(folds=2)
        acc.update(rng.standard_normal((64, 256)).astype(np.float32))
        hs[f"model.layers.{i}.mlp.weight"] = acc.folds()
    save_hessians(tmp_path / "h.safetensors", hs)
    for scheme, opts in (("linear", dict(method="gptq", bits=4, granularity="group", group_size=64)),
                         ("mixed", dict(budget_bits=4.5))):
        kw = dict(hessians=str(tmp_path / "h.safetensors"), progress=False, max_shard_size="100kB", **opts)
        one = qcore.quantize_model(str(model), scheme, output=str(tmp_path / f"{scheme}-one"), **kw)
        two = qcore.quantize_model(str(model), scheme, output=str(tmp_path / f"{scheme}-two"), executor=dask_ex, **kw)
        assert _files(tmp_path / f"{scheme}-one") == _files(tmp_path / f"{scheme}-two")
        assert one.report() == two.report()
