"""Running ``quantize_model``'s per-tensor work on any ``concurrent.futures.Executor`` (docs/contracts.md §5).

* :class:`QuantizeTask` — the work of one tensor, a small picklable object: the tensor's name, how to read it
  (``load()``: the input file by path, never the array), the quantizer (or planner and chosen candidate), the
  method.  :func:`run_task` runs it where it lands and returns a :class:`TensorResult` (the
  :class:`qcore.QTensor` — packed codes and parameters — its SQNR and its info record).
* :func:`ordered_map` — submits tasks to an executor a few at a time and yields their results in submission
  order, so the caller writes the model in order while workers run ahead (memory: about ``window`` results).
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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

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
    from ..metrics import sqnr_db
    from ..ptq import gptq
    from ..ptq.hessian import HessianFolds
    from ..quantization.driver import named_error, planner_kwargs

    x, h = task.load()
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
    return TensorResult(task.name, qt, sqnr_db(x, qt.dequantize()), info)


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
    """``fn(item)`` for every item, yielded in order.  With an executor at most ``window`` tasks are in flight
    (default: twice its workers, at least 4); a failed task raises :func:`task_error` (naming ``names[i]``) after
    the tasks not yet started are cancelled.  Without one (``None``) each runs here when its turn comes."""
    items = list(items)
    names = names or [getattr(it, "name", str(i)) for i, it in enumerate(items)]
    if executor is None:
        for name, item in zip(names, items):
            try:
                yield fn(item)
            except Exception as exc:
                raise task_error(exc, name) from exc
        return
    window = window or max(4, 2 * _workers(executor))
    pending: deque = deque()
    it = iter(zip(names, items))
    try:
        for name, item in it:
            pending.append((name, executor.submit(fn, item)))
            if len(pending) >= window:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
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
        kw = {"silence_logs": 40} if quiet else {}  # logging.ERROR
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", **kw)
        client = Client(cluster)
    try:
        yield client.get_executor()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["QuantizeTask", "TensorResult", "TaskFailed", "run_task", "ordered_map", "executor_map", "dask_executor",
           "task_error", "DASK_MISSING"]
