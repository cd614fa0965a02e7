"""Finite input never dequantizes to inf: near the float32 maximum the linear grid is kept inside float32's range."""
import numpy as np
import pytest

import qcore

FMAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("kernel", ["cython", "numpy"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_values_near_float32_max_stay_finite(kernel, bits, symmetric, granularity):
    x = np.array([[3.4e38, -3.4e38, 1.0, 3.0e38, -1e38, 0.0],
                  [FMAX, -FMAX, FMAX, 2.5, -FMAX, 1e30],
                  [FMAX, 0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
    qt = qcore.quantize(x, "linear", bits=bits, symmetric=symmetric, granularity=granularity, kernel=kernel)
    with np.errstate(over="raise"):  # not even an intermediate overflow in the decode
        d = qt.dequantize()
    assert np.isfinite(d).all(), d
    step = np.broadcast_to(np.asarray(qt.params["scale"], np.float64).reshape(-1, 1) if granularity == "channel"
                           else np.asarray(qt.params["scale"], np.float64).reshape(1, 1), x.shape)
    # within one grid step of the input (two for the 2-bit ternary grid, whose alpha is a least-squares fit)
    tol = (2.0 if bits == 2 and symmetric else 1.0) * step
    if not (bits == 2 and symmetric):
        assert (np.abs(d.astype(np.float64) - x.astype(np.float64)) <= tol * (1 + 1e-6)).all()


def test_the_grid_ends_are_the_largest_finite_ones():
    x = np.array([3.4e38, -3.4e38], np.float32)
    qt = qcore.quantize(x, "linear", bits=8)
    s = np.float32(qt.params["scale"].reshape(-1)[0])
    zp = int(np.asarray(qt.params["zero_point"]).reshape(-1)[0])
    span = np.float32(max(255 - zp, zp))
    assert np.isfinite(span * s) and not np.isfinite(span * np.nextafter(s, np.float32(np.inf)))
    d = qt.dequantize()
    assert np.isfinite(d).all() and d[0] > 3.3e38 and d[1] < -3.3e38
