"""Independent references for calibration quality: the brute-force best clipping range of the ``linear`` grid,
the data sets the observer-quality tests and ``benchmarks/bench_observer_quality.py`` use, and torch's
``HistogramObserver`` error on the same data.

The error of a candidate range is computed on the raw data (not on a histogram), exactly: the data is sorted
once, and for each grid point the values that round to it form a contiguous run of the sorted data, whose
squared error to the grid point follows from prefix sums of ``x`` and ``x**2``.  The brute-force search scores
every ``(lo, hi)`` pair of a fine 2-D grid (affine; ``amax`` on a fine 1-D grid when symmetric), then zooms
into the cell around the best pair a few times.
"""
from __future__ import annotations

import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data", "minilm_linear_inputs.npz")


class SortedData:
    """``x`` sorted with float64 prefix sums: exact squared error of any linear grid in O(levels log n)."""

    def __init__(self, x):
        x = np.sort(np.asarray(x, np.float64).ravel())
        self.x = x
        self.n = x.size
        self.p1 = np.concatenate([[0.0], np.cumsum(x)])
        self.p2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def grid_mse(self, g0, step, levels):
        """Mean squared error of rounding to grid ``g0 + j * step`` (``j = 0..levels``), for arrays of candidates."""
        g0 = np.asarray(g0, np.float64).reshape(-1)
        step = np.asarray(step, np.float64).reshape(-1)
        levels = int(levels)
        j = np.arange(levels + 1, dtype=np.float64)
        centres = g0[:, None] + j[None, :] * step[:, None]  # (K, L+1)
        bounds = g0[:, None] + (j[None, :-1] + 0.5) * step[:, None]  # (K, L)
        idx = np.searchsorted(self.x, bounds.ravel(), side="left").reshape(bounds.shape)
        lo_i = np.concatenate([np.zeros((len(g0), 1), np.int64), idx], axis=1)
        hi_i = np.concatenate([idx, np.full((len(g0), 1), self.n, np.int64)], axis=1)
        cnt = hi_i - lo_i
        s1 = self.p1[hi_i] - self.p1[lo_i]
        s2 = self.p2[hi_i] - self.p2[lo_i]
        err = s2 - 2.0 * centres * s1 + centres * centres * cnt
        return np.maximum(err.sum(axis=1), 0.0) / self.n


def linear_grid(lo, hi, bits, symmetric):
    """The ``linear`` scheme's grid for clipping range ``(lo, hi)`` (written from the scheme's formulas in
    ``plugins/schemes/linear.py``: float32 scale, zero point rounded half to even and clamped)."""
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = (np.maximum(-lo, hi) / qmax).astype(np.float32).astype(np.float64)
        return -qmax * scale, scale, 2 * qmax
    qmax = (1 << bits) - 1
    lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = ((hi0 - lo0) / qmax).astype(np.float32).astype(np.float64)
    zp = np.clip(np.rint(-lo0 / np.where(scale > 0, scale, 1.0)), 0, qmax)
    return -zp * scale, scale, qmax


def range_mse(data: SortedData, lo, hi, bits, symmetric):
    g0, step, levels = linear_grid(lo, hi, bits, symmetric)
    return data.grid_mse(g0, step, levels)


def _zoom_scales(data, zp, scales, bits, symmetric, zooms, points):
    """Per zero point (``(Z,)``), the best scale of ``scales`` (``(Z, K)``, increasing), zooming ``zooms`` times
    into the interval around the best; ``(mse, scale)`` arrays of shape ``(Z,)``."""
    qmax = (1 << bits) - 1 if not symmetric else 2 * ((1 << (bits - 1)) - 1)
    rows = np.arange(len(zp))
    best_e = np.full(len(zp), np.inf)
    best_s = np.zeros(len(zp))
    for _ in range(zooms + 1):
        s32 = scales.astype(np.float32).astype(np.float64)  # the scheme's scales are float32
        err = data.grid_mse((-zp[:, None] * s32).ravel(), s32.ravel(), qmax).reshape(scales.shape)
        b = np.argmin(err, axis=1)
        e = err[rows, b]
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_s = np.where(better, s32[rows, b], best_s)
        left = scales[rows, np.maximum(b - 1, 0)]
        right = scales[rows, np.minimum(b + 1, scales.shape[1] - 1)]
        scales = np.linspace(left, right, points, axis=1)
    return best_e, best_s


def brute_force(data: SortedData, bits=8, symmetric=False, coarse=64, points=240, zooms=4, zoom_points=33, keep=8):
    """``(mse, lo, hi)``: the best grid of the ``linear`` scheme for the data.

    Every grid the scheme can build is ``-zp * s + j * s`` (``j = 0..levels``) for an integer zero point ``zp``
    (0 when symmetric) and a float32 scale ``s``.  The search scores every zero point with ``coarse`` scales
    (geometric, from 1/4096 of the scale that covers all the data up to that scale), then takes the ``keep`` best
    zero points and two neighbours on each side through ``points`` scales and ``zooms`` zooms of
    ``zoom_points``.  ``(lo, hi) = (-zp * s, (levels - zp) * s)``.
    """
    xmin, xmax = min(float(data.x[0]), 0.0), max(float(data.x[-1]), 0.0)
    if symmetric:
        half = (1 << (bits - 1)) - 1
        zp = np.array([half], np.float64)  # grid -half*s .. half*s, written as codes 0..2*half with zp = half
        levels = 2 * half
    else:
        levels = (1 << bits) - 1
        zp = np.arange(levels + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cover = np.maximum(np.where(zp > 0, -xmin / zp, 0.0), np.where(zp < levels, xmax / (levels - zp), 0.0))
    cover = np.where(cover > 0, cover, 1.0)
    e0, _ = _zoom_scales(data, zp, cover[:, None] * np.geomspace(2.0**-12, 1.0, coarse)[None, :], bits, False, 0, 2)
    order = np.argsort(e0)[:keep]
    pick = np.unique(np.clip((order[:, None] + np.arange(-2, 3)[None, :]).ravel(), 0, len(zp) - 1))
    ladder = np.geomspace(2.0**-12, 1.0, points)
    e, s = _zoom_scales(data, zp[pick], cover[pick, None] * ladder[None, :], bits, False, zooms, zoom_points)
    b = int(np.argmin(e))
    z, sc = float(zp[pick][b]), float(s[b])
    return float(e[b]), -z * sc, (levels - z) * sc


def observer_mse(batches, observer, bits=8, symmetric=False, **options):
    """Squared error of the qcore ``linear`` quantizer calibrated by ``observer`` on ``batches``, measured on the
    concatenated data by the quantizer itself."""
    import qcore

    q = qcore.get_quantizer("linear", bits=bits, symmetric=symmetric, observer=observer)
    if options:
        q.observer = qcore.get_observer(observer, **options)
    for b in batches:
        q.observe(b)
    x = np.concatenate([np.ravel(b) for b in batches])
    return float(np.mean((q.quantize(x).dequantize().astype(np.float64) - x) ** 2))


def torch_histogram_mse(batches, bits=8, symmetric=False):
    """Squared error of torch's ``HistogramObserver`` range on the same data, on the qcore grid of that range.

    Affine: torch's own (scale, zero point), 0..2^bits-1.  Symmetric: torch's int8 grid is [-128, 127] and qcore's
    the narrow [-127, 127]; the comparison gives torch's clipping range (amax = (qmax + 0.5) * scale) to qcore's
    grid so both are judged on the same levels.
    """
    import torch

    qmax_u = (1 << bits) - 1
    if symmetric:
        obs = torch.ao.quantization.HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                                      quant_min=-(1 << (bits - 1)), quant_max=(1 << (bits - 1)) - 1)
    else:
        obs = torch.ao.quantization.HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                                      quant_min=0, quant_max=qmax_u)
    for b in batches:
        obs(torch.from_numpy(np.ascontiguousarray(b, np.float32).ravel()))
    scale, zp = obs.calculate_qparams()
    scale, zp = float(scale), int(zp)
    data = SortedData(np.concatenate([np.ravel(b) for b in batches]))
    if symmetric:
        amax = scale * ((1 << (bits - 1)) - 0.5)
        return float(range_mse(data, -amax, amax, bits, True)[0])
    return float(data.grid_mse(-zp * scale, scale, qmax_u)[0])


# -- data sets ------------------------------------------------------------------------------------------------
def _batches(x, k=4):
    return [np.ascontiguousarray(b, np.float32) for b in np.array_split(x.astype(np.float32), k)]


def synthetic(name, n=400_000, seed=0):
    """Four calibration batches of one of the synthetic distributions."""
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        x = rng.standard_normal(n)
    elif name == "laplace_outliers":  # Laplace(0, 1), rare outliers at ~40-80x the scale (a few per million)
        x = rng.laplace(0.0, 1.0, n)
        k = max(2, n // 400_000)
        x[rng.integers(0, n, k)] = rng.choice([-1.0, 1.0], k) * rng.uniform(40, 80, k)
    elif name == "relu":  # ReLU of a skewed pre-activation
        x = np.maximum(rng.gamma(2.0, 1.0, n) - 1.5, 0.0)
    elif name == "bimodal":
        x = np.where(rng.random(n) < 0.7, rng.normal(-2.0, 0.5, n), rng.normal(3.0, 1.0, n))
    elif name == "student_t3":
        x = rng.standard_t(3, n)
    elif name == "gelu":
        z = rng.normal(0.0, 1.5, n)
        x = 0.5 * z * (1.0 + np.tanh(0.7978845608 * (z + 0.044715 * z**3)))
    else:
        raise ValueError(name)
    return _batches(x)


SYNTHETIC = ["gaussian", "laplace_outliers", "relu", "bimodal", "student_t3", "gelu"]


def minilm(path=DATA):
    """``{layer name: four batches}``: inputs of Linear layers of the real all-MiniLM-L6-v2 encoder (the fixture
    written by ``benchmarks/bench_observer_quality.py --capture``)."""
    with np.load(path) as f:
        return {k: _batches(f[k].astype(np.float32)) for k in sorted(f.files)}
