"""Input statistics of linear layers, in folds: the one Hessian accumulator and its file.

For a layer ``y = x @ W.T`` (``W`` of shape ``(N, K)``) the data-aware methods (GPTQ, AWQ, the ``mixed``
planner's output error) need ``H = mean(x x^T)`` (``K x K``) over calibration inputs.  To tell a choice that
*generalizes* from one that only fits its calibration data, the inputs are split into ``k`` **folds** while they
are accumulated (in the same forward passes): a method is fitted on some folds and scored on another.

* :class:`HessianAccumulator` — streaming ``update(batch)`` (numpy arrays or torch tensors), ``value()`` (the
  mean over everything), ``folds()`` (a :class:`HessianFolds`).  Rows are grouped into *samples* along the
  leading axis: an input of shape ``(B, ..., K)`` holds ``B`` samples (a sentence's tokens stay together); a
  2-d ``(M, K)`` input holds ``M`` samples of one row.  The ``s``-th sample seen goes to fold ``s mod k``
  (interleaved, so data given in order — one source after another — lands in every fold).  Sums are
  accumulated in float32 by BLAS ``ssyrk`` (the upper triangle only); the float64 mean is formed on demand.
* :class:`HessianFolds` — ``k >= 1`` folds, each ``H_i = mean(x x^T)`` over its own rows with its row count
  ``n_i``, and optionally each fold's mean ``|x|`` per input channel (AWQ's activation scale).  ``full()`` is
  the count-weighted mean, ``rest(i)`` the mean of every fold but ``i`` (what a held-out score fits on),
  ``fold(i)`` one fold.  ``HessianFolds.of(h)`` wraps one array as one fold.
* :func:`save_hessians` / :func:`load_hessians` — the Hessian file (safetensors).  Version 2 (this one):
  tensors ``"<name>@fold<i>"`` (float32 ``K x K``) and optionally ``"<name>@abs<i>"`` (float32 ``K``), header
  metadata ``{"format": "qcore-hessians", "version": "2", "folds": JSON {name: [n_0, ..., n_k-1]}}``.
  **Older files** (version 1, written by stage-2 ``collect_hessians``, or any safetensors file of plain
  ``{name: H}`` arrays) load as **one fold** each, with the row count of their ``"samples"`` metadata when
  present: everything still works, but a planner can then only score in-sample (it warns once).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from ..errors import InputError

#: folds collected by default (``collect_hessians``, the torch adapter, ``quantize_model(calibrate=arrays)``)
DEFAULT_FOLDS = 2
#: the ``format`` metadata value of a Hessian file
FILE_FORMAT = "qcore-hessians"
FILE_VERSION = "2"


def _as_float_matrix(h, what: str) -> np.ndarray:
    if hasattr(h, "detach") and hasattr(h, "cpu"):  # a torch tensor
        h = h.detach().cpu().numpy()
    a = np.asarray(h)
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must be a float array, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a square 2-d array (K, K), got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or Inf values")
    return a


class HessianFolds:
    """The input statistics of one layer as ``k >= 1`` folds (see the module docstring).

    :param folds: ``k`` arrays ``(K, K)``, each the mean of ``x x^T`` over the fold's rows
    :param counts: the rows of each fold (``None``: unknown — the folds weigh the same)
    :param abs_means: ``k`` arrays ``(K,)``, each fold's mean ``|x|`` per input channel, or ``None``
    """

    __slots__ = ("folds", "counts", "abs_means", "_full")

    def __init__(self, folds, counts=None, abs_means=None):
        folds = [_as_float_matrix(f, f"fold {i} of the Hessian") for i, f in enumerate(folds)]
        if not folds:
            raise ValueError("HessianFolds needs at least one fold")
        k = folds[0].shape[0]
        for i, f in enumerate(folds):
            if f.shape != (k, k):
                raise ValueError(f"fold {i} of the Hessian has shape {f.shape}, fold 0 has ({k}, {k})")
        if counts is not None:
            counts = [int(c) for c in counts]
            if len(counts) != len(folds) or any(c < 0 for c in counts):
                raise ValueError(f"counts must be {len(folds)} row counts >= 0, got {counts}")
        if abs_means is not None:
            abs_means = [np.asarray(a, np.float64).reshape(-1) for a in abs_means]
            if len(abs_means) != len(folds) or any(a.shape != (k,) for a in abs_means):
                raise ValueError(f"abs_means must be {len(folds)} arrays of shape ({k},)")
        self.folds = tuple(folds)
        self.counts = None if counts is None else tuple(counts)
        self.abs_means = None if abs_means is None else tuple(abs_means)
        self._full = None

    @classmethod
    def of(cls, h, count: int | None = None) -> "HessianFolds":
        """``h`` as folds: a :class:`HessianFolds` as it is, an array ``(K, K)`` as one fold."""
        if isinstance(h, HessianFolds):
            return h
        return cls([h], None if count is None else [count])

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """The number of folds."""
        return len(self.folds)

    @property
    def width(self) -> int:
        """``K``, the layer's input width."""
        return self.folds[0].shape[0]

    @property
    def count(self) -> int | None:
        """Rows over all folds (None if unknown)."""
        return None if self.counts is None else sum(self.counts)

    def _weights(self, idx) -> np.ndarray:
        if self.counts is None:
            w = np.ones(len(idx))
        else:
            w = np.array([self.counts[i] for i in idx], np.float64)
            if w.sum() <= 0:
                w = np.ones(len(idx))
        return w / w.sum()

    def _mean(self, idx) -> np.ndarray:
        w = self._weights(idx)
        out = np.zeros((self.width, self.width), np.float64)
        for wi, i in zip(w, idx):
            out += wi * self.folds[i]
        return out

    # -- the statistics --------------------------------------------------------------------------------------
    def full(self) -> np.ndarray:
        """float64 ``(K, K)``: the count-weighted mean over every fold (what a final fit uses)."""
        if self._full is None:
            self._full = self.folds[0].astype(np.float64) if self.k == 1 else self._mean(range(self.k))
        return self._full

    def fold(self, i: int) -> np.ndarray:
        """float64 ``(K, K)``: fold ``i`` alone (a held-out part)."""
        return np.asarray(self.folds[i], np.float64)

    def rest(self, i: int) -> np.ndarray:
        """float64 ``(K, K)``: the count-weighted mean of every fold but ``i`` (what is fitted when ``i`` is
        held out).  Needs ``k >= 2``."""
        if self.k < 2:
            raise ValueError("rest() needs two or more folds")
        return self._mean([j for j in range(self.k) if j != i])

    def abs_mean(self) -> np.ndarray | None:
        """float64 ``(K,)``: mean ``|x|`` per input channel over every fold (``None`` if not collected)."""
        if self.abs_means is None:
            return None
        w = self._weights(range(self.k))
        return sum(wi * a for wi, a in zip(w, self.abs_means))

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(folds)`` is :meth:`full` (so code written for one ``(K, K)`` array keeps working)."""
        h = self.full()
        return h if dtype is None else h.astype(dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.width, self.width)

    @classmethod
    def mix(cls, parts) -> "HessianFolds":
        """Several sources' statistics of one layer, each weighing the same: fold ``i`` is the mean of the
        sources' folds ``i`` (their counts add up).  Sources with different numbers of folds are merged to one
        fold each first (the result then has one fold)."""
        parts = [cls.of(p) for p in parts]
        if not parts:
            raise ValueError("HessianFolds.mix needs at least one source")
        if len(parts) == 1:
            return parts[0]
        width = parts[0].width
        if any(p.width != width for p in parts):
            raise ValueError(f"the sources' Hessians have different widths: {sorted({p.width for p in parts})}")
        if len({p.k for p in parts}) > 1:
            parts = [p.merged() for p in parts]
        k = parts[0].k
        folds = [sum(np.asarray(p.folds[i], np.float64) for p in parts) / len(parts) for i in range(k)]
        counts = None if any(p.counts is None for p in parts) else [sum(p.counts[i] for p in parts) for i in range(k)]
        abs_means = None
        if all(p.abs_means is not None for p in parts):
            abs_means = [sum(p.abs_means[i] for p in parts) / len(parts) for i in range(k)]
        return cls([f.astype(np.float32) for f in folds], counts, abs_means)

    def merged(self) -> "HessianFolds":
        """One fold holding everything."""
        if self.k == 1:
            return self
        am = self.abs_mean()
        return HessianFolds([self.full()], None if self.counts is None else [sum(self.counts)],
                            None if am is None else [am])

    def __repr__(self) -> str:
        return f"HessianFolds(k={self.k}, K={self.width}, counts={list(self.counts) if self.counts else None})"


class HessianAccumulator:
    """Streaming ``mean(x x^T)`` in ``folds`` folds (see the module docstring): ``update(batch)`` any number of
    times (``folds x K x K`` float32 memory per source), then ``value()`` or ``folds()``.

    :param folds: ``k >= 1``; sample ``s`` of a source (along the leading axis of each batch, in arrival order)
        goes to fold ``s mod k``

    **Sources.**  ``update(batch, source=i)`` keeps each calibration source's sums apart, and every source weighs
    the same in the result whatever its size: each fold is the mean over sources of that source's mean in the
    fold (and its count the rows of all sources).  With one source this is the plain mean.
    """

    def __init__(self, folds: int = 1):
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 1 <= int(folds) <= 64:
            raise ValueError(f"folds must be an integer in [1, 64], got {folds!r}")
        self.k = int(folds)
        self.width: int | None = None
        self._sums: dict[int, list[np.ndarray]] = {}   # source -> per-fold float32 sums (upper triangle)
        self._abs: dict[int, list[np.ndarray]] = {}    # source -> per-fold sums of |x|
        self._counts: dict[int, list[int]] = {}        # source -> per-fold rows
        self._samples: dict[int, int] = {}             # source -> samples dealt so far
        self._syrk = None

    @property
    def counts(self) -> list[int]:
        """Rows per fold, over every source."""
        return [sum(c[f] for c in self._counts.values()) for f in range(self.k)]

    @property
    def count(self) -> int:
        """Rows accumulated so far."""
        return sum(self.counts)

    @property
    def sources(self) -> list[int]:
        """The sources that sent rows."""
        return sorted(s for s, c in self._counts.items() if sum(c))

    def _start(self, k_in: int) -> None:
        from scipy.linalg import blas

        self._syrk = blas.ssyrk
        self.width = k_in

    def _source(self, source: int):
        if source not in self._sums:
            k_in = self.width
            self._sums[source] = [np.zeros((k_in, k_in), np.float32, order="F") for _ in range(self.k)]
            self._abs[source] = [np.zeros(k_in, np.float64) for _ in range(self.k)]
            self._counts[source] = [0] * self.k
            self._samples[source] = 0
        return self._sums[source], self._abs[source], self._counts[source]

    def update(self, x, source: int = 0) -> "HessianAccumulator":
        """Add a batch of inputs (numpy array or torch tensor; last axis = the layer's input features) from
        calibration source ``source`` (an integer >= 0; sources weigh the same)."""
        if isinstance(source, bool) or not isinstance(source, (int, np.integer)) or source < 0:
            raise ValueError(f"source must be an integer >= 0, got {source!r}")
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor: float32 on the CPU, no copy if already
            x = x.detach()
            if x.device.type != "cpu" or not x.dtype.is_floating_point or x.dtype != _torch_float32():
                x = x.to(device="cpu", dtype=_torch_float32())
            x = x.numpy()
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("activations must have at least one dimension (the input features)")
        if x.dtype.kind not in "fiu":
            raise TypeError(f"activations must be numbers, got dtype {x.dtype}")
        if x.ndim == 1:
            x = x[None, :]
        k_in = x.shape[-1]
        if self.width is not None and k_in != self.width:
            raise ValueError(f"activations of width {k_in} after width {self.width}")
        if x.size == 0:  # nothing to add (an empty batch)
            if self.width is None:
                self._start(k_in)
            return self
        samples = x.shape[0]
        rows = np.asarray(x.reshape(samples, -1, k_in), np.float32)  # (samples, rows per sample, K)
        if not np.isfinite(rows).all():  # refused before any state changes
            raise InputError("activations contain NaN or Inf values")
        if self.width is None:
            self._start(k_in)
        sums, abss, counts = self._source(int(source))
        fold_of = (self._samples[int(source)] + np.arange(samples)) % self.k
        for f in range(self.k):
            if self.k == 1:
                part = rows.reshape(-1, k_in)
            else:
                sel = np.flatnonzero(fold_of == f)
                if sel.size == 0:
                    continue
                part = rows[sel].reshape(-1, k_in)
            a = np.ascontiguousarray(part)  # (M, K) C order == (K, M) Fortran order: a.T is x^T
            sums[f] = self._syrk(1.0, a.T, beta=1.0, c=sums[f], trans=0, lower=0, overwrite_c=1)
            abss[f] += np.abs(a).sum(axis=0, dtype=np.float64)
            counts[f] += a.shape[0]
        self._samples[int(source)] += samples
        return self

    @staticmethod
    def _sym(upper32: np.ndarray, count: int) -> np.ndarray:
        u = np.triu(upper32.astype(np.float64))
        return (u + np.triu(u, 1).T) / max(count, 1)

    def _mean(self, folds) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean x x^T, mean |x|, rows) over ``folds``, every source with rows there weighing the same."""
        hs, ab, n = [], [], 0
        for src in sorted(self._sums):
            c = sum(self._counts[src][f] for f in folds)
            if not c:
                continue
            total = self._sums[src][folds[0]].copy(order="F")
            for f in folds[1:]:
                total += self._sums[src][f]
            hs.append(self._sym(total, c))
            ab.append(sum(self._abs[src][f] for f in folds) / c)
            n += c
        if not hs:
            raise ValueError("no activations were added")
        return sum(hs) / len(hs), sum(ab) / len(ab), n

    def value(self) -> np.ndarray:
        """float64 ``(K, K)``: the mean of ``x x^T`` over every row added (sources weighing the same)."""
        if self.width is None:
            raise ValueError("no activations were added")
        return self._mean(list(range(self.k)))[0]

    def abs_mean(self) -> np.ndarray:
        """float64 ``(K,)``: mean ``|x|`` per input channel over every row added (sources weighing the same)."""
        if self.width is None:
            raise ValueError("no activations were added")
        return self._mean(list(range(self.k)))[1]

    def folds(self) -> HessianFolds:
        """The folds that received rows (a fold that got none is left out), as :class:`HessianFolds`."""
        if self.width is None:
            raise ValueError("no activations were added")
        idx = [f for f, c in enumerate(self.counts) if c > 0]
        if not idx:
            raise ValueError("no activations were added")
        parts = [self._mean([f]) for f in idx]
        return HessianFolds([h.astype(np.float32) for h, _, _ in parts], [n for _, _, n in parts],
                            [a for _, a, _ in parts])


def _torch_float32():
    import torch

    return torch.float32


def hessian(x) -> np.ndarray:
    """``mean(x x^T)`` over the rows of ``x`` (any leading shape, last axis = input features), float64.

    For many batches use :class:`HessianAccumulator`."""
    return HessianAccumulator().update(x).value()


# -- files ---------------------------------------------------------------------------------------------------
def save_hessians(path: str | os.PathLike, hessians: Mapping) -> int:
    """Write ``{name: HessianFolds or (K, K) array}`` to a Hessian file (version 2, see the module docstring),
    atomically; returns the bytes written."""
    from ..model import safetensors_io

    entries, folds_meta = [], {}
    for name, h in hessians.items():
        if not isinstance(name, str) or "@" in name:
            raise ValueError(f"Hessian names must be strings without '@', got {name!r}")
        hf = HessianFolds.of(h)
        counts = list(hf.counts) if hf.counts is not None else [0] * hf.k
        folds_meta[name] = counts
        for i, f in enumerate(hf.folds):
            entries.append(safetensors_io.Entry.of(f"{name}@fold{i}", np.ascontiguousarray(f, np.float32)))
        if hf.abs_means is not None:
            for i, a in enumerate(hf.abs_means):
                entries.append(safetensors_io.Entry.of(f"{name}@abs{i}", np.ascontiguousarray(a, np.float32)))
    meta = {"format": FILE_FORMAT, "version": FILE_VERSION, "folds": json.dumps(folds_meta)}
    return safetensors_io.write_safetensors(path, entries, meta)


class HessianFile(Mapping):
    """A Hessian file as a read-only mapping ``name -> HessianFolds``, reading each layer only when asked.

    Version-2 files give their folds; older files and plain safetensors files of ``{name: H}`` give one fold
    per tensor (see the module docstring).  Picklable: it holds the path, so an executor's task can open it.
    """

    def __init__(self, path: str | os.PathLike):
        from ..errors import FormatError
        from ..model.tensors import load_tensors

        self.path = os.fspath(path)
        self._file = load_tensors(self.path)
        meta = dict(getattr(self._file, "metadata", {}) or {})
        self.version = meta.get("version", "1") if meta.get("format") == FILE_FORMAT else "1"
        self._layout: dict[str, tuple[list[int] | None, list[str], list[str]]] = {}
        if meta.get("format") == FILE_FORMAT and self.version == FILE_VERSION:
            try:
                folds = json.loads(meta.get("folds", "{}"))
                if not isinstance(folds, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                raise FormatError(f"{self.path!r}: the 'folds' metadata of a Hessian file is not valid: {exc}") from None
            for name, counts in folds.items():
                if not (isinstance(counts, list) and counts and all(isinstance(c, int) and c >= 0 for c in counts)):
                    raise FormatError(f"{self.path!r}: Hessian {name!r}: fold counts must be a list of integers, got {counts!r}")
                keys = [f"{name}@fold{i}" for i in range(len(counts))]
                missing = [k for k in keys if k not in self._file]
                if missing:
                    raise FormatError(f"{self.path!r}: Hessian {name!r} lacks tensor(s) {', '.join(missing)}")
                abs_keys = [f"{name}@abs{i}" for i in range(len(counts))]
                abs_keys = abs_keys if all(k in self._file for k in abs_keys) else []
                self._layout[name] = (None if not any(counts) else counts, keys, abs_keys)
        elif meta.get("format") == FILE_FORMAT and self.version not in ("1", FILE_VERSION):
            raise FormatError(f"{self.path!r}: Hessian file version {self.version!r} is newer than this qcore reads "
                              f"(1 and {FILE_VERSION}); upgrade qcore")
        else:  # version 1 or plain arrays: one fold each
            samples = {}
            if meta.get("samples"):
                try:
                    samples = json.loads(meta["samples"])
                except ValueError:
                    samples = {}
            for name in self._file:
                c = samples.get(name) if isinstance(samples, dict) else None
                self._layout[name] = ([c] if isinstance(c, int) and c > 0 else None, [name], [])

    def __getitem__(self, name: str) -> HessianFolds:
        if name not in self._layout:
            raise KeyError(name)
        counts, keys, abs_keys = self._layout[name]
        from ..errors import FormatError

        try:
            return HessianFolds([self._file[k] for k in keys], counts,
                                [self._file[k] for k in abs_keys] if abs_keys else None)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{self.path!r}: Hessian {name!r}: {exc}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    def __contains__(self, name) -> bool:
        return name in self._layout

    def close(self) -> None:
        close = getattr(self._file, "close", None)
        if close is not None:
            close()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"<HessianFile {self.path!r}: {len(self)} layers, version {self.version}>"


class MixedHessians(Mapping):
    """Several Hessian sources (files or mappings) as one mapping ``name -> HessianFolds``, each source weighing
    the same (:meth:`HessianFolds.mix`); a layer some sources lack is mixed from those that have it."""

    def __init__(self, sources):
        self.sources = list(sources)

    def __getitem__(self, name: str) -> HessianFolds:
        parts = [src[name] for src in self.sources if name in src]
        if not parts:
            raise KeyError(name)
        return HessianFolds.mix(parts)

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for src in self.sources:
            for name in src:
                if name not in seen:
                    seen.add(name)
                    yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name) -> bool:
        return any(name in src for src in self.sources)

    def close(self) -> None:
        for src in self.sources:
            close = getattr(src, "close", None)
            if close is not None:
                close()


def load_hessians(path: str | os.PathLike) -> HessianFile:
    """The Hessian file at ``path`` as a lazy mapping ``name -> HessianFolds`` (:class:`HessianFile`)."""
    return HessianFile(path)


def hessian_for(hessians, name: str):
    """The Hessian of tensor ``name`` in a mapping: the exact key, else the one key that ends the name (or that
    the name ends) at a dot boundary — e.g. ``"0.model.encoder.layer.0.attention.self.query.weight"`` collected
    from a sentence-transformers wrapper matches the checkpoint's ``"encoder.layer.0.attention.self.query.weight"``.
    ``None`` if there is none (an ambiguous match is a ``ValueError``).  The value is returned as stored."""
    if hessians is None:
        return None
    if name in hessians:
        return hessians[name]
    key = hessian_key(hessians, name)
    return None if key is None else hessians[key]


def hessian_key(hessians, name: str) -> str | None:
    """The key of :func:`hessian_for`'s match (None if none)."""
    if name in hessians:
        return name
    hits = [k for k in hessians if isinstance(k, str) and (k.endswith("." + name) or name.endswith("." + k))]
    if len(hits) > 1:
        raise ValueError(f"tensor {name!r}: several Hessians match ({', '.join(sorted(hits)[:4])}); "
                         "name them exactly")
    return hits[0] if hits else None


__all__ = ["DEFAULT_FOLDS", "HessianFolds", "HessianAccumulator", "HessianFile", "MixedHessians", "hessian", "save_hessians", "load_hessians",
           "hessian_for", "hessian_key"]
