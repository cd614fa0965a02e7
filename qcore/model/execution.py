"""Running ``quantize_model``'s per-tensor work on any ``concurrent.futures.Executor`` (docs/contracts.md §5).

* :class:`QuantizeTask` — the work of one tensor, a small picklable object: the tensor's name, how to read it
  (``load()``: the input file by path, never the array), the quantizer (or planner and chosen candidate), the
  method.  :func:`run_task` runs it where it lands and returns a :class:`TensorResult` (the
  :class:`qcore.QTensor` — packed codes and parameters — its SQNR and its info record).
* :func:`ordered_map` — submits tasks to an executor as its workers free up and yields their results in
  submission order, so the caller writes the model in order while workers run ahead (memory: at most ``window``
  results waiting for their turn).
  Without an executor the tasks run here, one at a time.
* :func:`dask_executor` — a ``dask.distributed`` executor for the command line (``--workers N``: a local
  cluster of N single-threaded worker processes; ``--scheduler ADDRESS``: an existing cluster).

Output does not depend on where a task ran: every kernel gives the same bits whatever its thread count (see
tests/test_determinism.py), and the driver writes results in model order.
"""
from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import QcoreError


@dataclass
class TensorResult:
    """What a task returns: the quantized tensor, its SQNR against the input, and its ``QModel.info`` record."""

    name: str
    qtensor: Any
    sqnr_db: float
    info: dict = field(default_factory=dict)


@dataclass
class QuantizeTask:
    """Quantize one tensor where the task runs.

    ``load()`` returns ``(x, hessians or None)`` (``quantize_model``'s ``_Load``: it pickles as the input path);
    ``quantizer`` a :class:`qcore.Quantizer`, or a planner with ``spec`` its chosen candidate; ``method``
    ``"rtn"`` or ``"gptq"``; ``dtype`` the tensor's dtype at the source (recorded in the QTensor); ``info`` the
    start of its info record; ``plan`` the chosen candidate's errors, recorded when the tensor has data."""

    name: str
    load: Callable[[], tuple[Any, Any]]
    quantizer: Any
    spec: Any = None
    method: str = "rtn"
    dtype: str | None = None
    info: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)


def run_task(task: QuantizeTask) -> TensorResult:
    """Run one :class:`QuantizeTask` (a top-level function, so any executor can)."""
    from ..ptq import gptq
    from ..ptq.hessian import HessianFolds
    from ..quantization.driver import named_error, planner_kwargs

    x, h = task.load()
    if getattr(x, "dtype", None) == np.float16:  # the float32 copy every scheme makes, made once: no half copy kept
        x = x.astype(np.float32)
    info = dict(task.info)
    try:
        if task.spec is not None:  # a planner's chosen candidate, fitted on all the data
            kw = planner_kwargs(h, task.method if h is not None else "rtn")
            qt = task.quantizer.quantize_candidate(x, task.spec, **kw)
        elif task.method == "gptq" and h is not None and getattr(x, "ndim", 0) == 2:
            qt = gptq(x, HessianFolds.of(h).full(), task.quantizer)
        else:
            qt = task.quantizer.quantize(x)
    except (ValueError, TypeError) as exc:
        raise named_error(exc, task.name) from exc
    if task.spec is not None and h is not None:  # the plan's errors mean something only with data
        info.update({k: float(task.plan[k]) for k in ("error", "error_in_sample") if k in task.plan})
        info["held_out"] = bool(task.plan.get("held_out", False))
    if task.method == "gptq":
        info["method"] = "gptq" if h is not None and (task.spec is not None or getattr(x, "ndim", 0) == 2) else "rtn"
    if task.dtype in ("float16", "bfloat16", "float32", "float64"):
        qt.dtype = task.dtype
    return TensorResult(task.name, qt, tensor_sqnr(x, qt), info)


def tensor_sqnr(x, qt, block_bytes: int = 16 << 20) -> float:
    """``sqnr_db(x, qt.dequantize())`` of a 2-D tensor decoded a block of rows at a time (``qt.decode_rows``), so no
    float copy of the whole tensor is made; the same float64 sums, chunk by chunk."""
    from ..metrics import signal_noise, sqnr_db, sqnr_from_sums

    x = np.asarray(x)
    # blocks of rows only for the standard layout (granularity, axis, group_size), which slices by rows exactly
    standard = "granularity" in getattr(qt.quantizer, "config", {})
    if not standard or x.ndim != 2 or tuple(qt.shape) != x.shape or x.shape[0] < 16:
        return sqnr_db(x, qt.dequantize())
    n, k = x.shape
    rows = max(8, block_bytes // (4 * k) // 8 * 8)  # a multiple of 8 rows starts on a byte of the packed codes
    signal = noise = 0.0
    for r in range(0, n, rows):
        s, e = signal_noise(x[r:r + rows], qt.decode_rows(r, min(n, r + rows)))
        signal += s
        noise += e
    return sqnr_from_sums(signal, noise)


class TaskFailed(QcoreError, RuntimeError):
    """A task failed where it ran for a reason other than bad input (a worker died, the cluster went away)."""


def task_error(exc: BaseException, name: str) -> BaseException:
    """The error to raise for tensor ``name``'s failed task: its ``ValueError``/``TypeError`` with the name in
    front; anything else (a worker that died, ...) as :class:`TaskFailed` naming the tensor."""
    from ..quantization.driver import named_error

    if isinstance(exc, (ValueError, TypeError)):
        return named_error(exc, name)
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return exc
    err = TaskFailed(f"tensor {name!r}: its task failed ({type(exc).__name__}: {exc})")
    err.__cause__ = exc
    return err


def ordered_map(executor, fn: Callable, items: Iterable, *, names: list[str] | None = None,
                window: int | None = None) -> Iterator:
    """``fn(item)`` for every item, yielded in order.

    With an executor, tasks are submitted as workers free up (about two per worker running or queued), whether or
    not the task at the head of the order is done — a large tensor does not idle the other workers — and at most
    ``window`` results (default: eight per worker, at least 8) are held waiting for their turn, which bounds the
    memory.  A failed task raises :func:`task_error` (naming ``names[i]``) after the tasks not yet started are
    cancelled.  Without an executor (``None``) each item runs here when its turn comes."""
    items = list(items)
    names = names or [getattr(it, "name", str(i)) for i, it in enumerate(items)]
    if executor is None:
        for name, item in zip(names, items):
            try:
                yield fn(item)
            except Exception as exc:
                raise task_error(exc, name) from exc
        return
    workers = _workers(executor)
    busy_max = 2 * workers
    window = window or max(8, 8 * workers)
    pending: deque = deque()
    todo = iter(zip(names, items))
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window and sum(not f.done() for _, f in pending) < busy_max:
                nxt = next(todo, None)
                if nxt is None:
                    exhausted = True
                    break
                pending.append((nxt[0], executor.submit(fn, nxt[1])))
            if not pending:
                return
            name, fut = pending[0]
            if fut.done():
                pending.popleft()
                yield _result(name, fut)
                continue
            running = [f for _, f in pending if not f.done()]
            futures_wait(running, return_when=FIRST_COMPLETED)
    finally:
        for _, fut in pending:
            fut.cancel()


def _result(name, fut):
    try:
        return fut.result()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported with the tensor's name
        raise task_error(exc, name) from exc


def executor_map(executor, names: list[str] | None = None):
    """A ``map(fn, *iterables)`` for the driver's ``measure_map`` that runs on ``executor`` in order."""
    def run(fn, *iterables):
        args = list(zip(*iterables))
        return list(ordered_map(executor, _Star(fn), args, names=names))

    return run


class _Star:
    """``fn(*args)`` as a one-argument picklable callable."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, args):
        return self.fn(*args)


def _workers(executor) -> int:
    n = getattr(executor, "_max_workers", None)  # ThreadPoolExecutor / ProcessPoolExecutor
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(executor, "_client", None)  # dask's ClientExecutor
    if client is not None:
        try:
            return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        except Exception:  # noqa: BLE001 - only a hint for the window size
            return 2
    return os.cpu_count() or 2


def _warm_up() -> None:
    import qcore

    qcore.list_schemes()
    qcore.get_kernel()


DASK_MISSING = ("dask.distributed is not installed: `pip install \"qcore[dask]\"` (or `pip install \"dask[distributed]\"`) "
                "to run quantize_model on a Dask cluster (--workers / --scheduler)")


@contextlib.contextmanager
def dask_executor(workers: int | None = None, scheduler: str | None = None, *, quiet: bool = True):
    """A ``concurrent.futures.Executor`` on a Dask cluster, closed on exit: an existing one at ``scheduler``
    (``tcp://host:8786``), or a ``LocalCluster`` of ``workers`` single-threaded worker processes.

    ``ImportError`` with the install command when dask.distributed is missing."""
    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers (a local cluster) or scheduler (an address), not both or neither")
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(DASK_MISSING) from exc
    if scheduler is not None:
        client = Client(scheduler)
        cluster = None
    else:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        import dask

        kw = {"silence_logs": 40} if quiet else {}  # logging.ERROR
        # Dask sets MALLOC_TRIM_THRESHOLD_ in its workers, which also turns off glibc's adaptive mmap threshold: every
        # large temporary array then is a fresh mapping, page-faulted again (about 1.5x the CPU time of a 4-bit
        # quantize of a large tensor, measured here); one thread per worker is kept
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   **kw)
        client = Client(cluster)
    client.run(_warm_up)  # imports and plugin loading now, not inside the first tasks
    try:
        yield client.get_executor()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["QuantizeTask", "TensorResult", "TaskFailed", "run_task", "ordered_map", "executor_map", "dask_executor",
           "task_error", "DASK_MISSING"]
