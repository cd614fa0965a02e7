"""The input policy (docs/usage.md): every bad input gets a clear exception at the Python boundary, never a crash or garbage."""
import numpy as np
import pytest

import qcore
from qcore.plugin.manager import get_manager


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("opts", [
    {}, {"symmetric": True}, {"granularity": "channel"}, {"granularity": "group", "group_size": 2},
    {"bits": 1, "symmetric": True}, {"bits": 2, "symmetric": True},
])
def test_non_finite_values_are_refused(kernel, bad, opts):
    x = np.ones((4, 6), np.float32)
    x[2, 3] = bad
    with pytest.raises(qcore.InputError, match="NaN or Inf"):
        qcore.quantize(x, "linear", kernel=kernel, **opts)
    assert isinstance(qcore.InputError("x"), ValueError)


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
def test_kernel_quantize_with_given_params_refuses_nan(kernel):
    k = qcore.get_kernel(kernel)
    x = np.ones(10000, np.float32)
    x[9999] = np.nan
    with pytest.raises(qcore.InputError):
        k.quantize_affine(x, 0.1, 0, 0, 255)
    with pytest.raises(qcore.InputError):
        k.minmax(x)


def test_float64_beyond_float32_range_is_refused():
    with pytest.raises(qcore.InputError, match="float32"):
        qcore.quantize(np.array([1e300, 1.0]), "linear")


@pytest.mark.parametrize("x", [np.array(["a", "b"]), np.array([1 + 2j]), np.array([object()], dtype=object), "text", {"a": 1}, None])
def test_non_numeric_input_is_a_type_error(x):
    with pytest.raises(TypeError):
        qcore.quantize(x, "linear")


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, "8", True])
def test_bits_out_of_range(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        qcore.get_quantizer("linear", bits=bits)


def test_axis_out_of_range_and_bad_type():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="axis"):
        qcore.quantize(x, "linear", granularity="channel", axis=2)
    with pytest.raises(ValueError, match="axis"):
        qcore.quantize(np.float32(1), "linear", granularity="channel")
    with pytest.raises(TypeError, match="axis"):
        qcore.get_quantizer("linear", granularity="channel", axis=1.5)


def test_granularity_and_group_size():
    with pytest.raises(ValueError, match="granularity"):
        qcore.get_quantizer("linear", granularity="row")
    with pytest.raises(ValueError, match="group_size"):
        qcore.quantize(np.ones((4, 10), np.float32), "linear", granularity="group", group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        qcore.get_quantizer("linear", granularity="group", group_size=0)


def test_unknown_option_is_an_error_not_ignored():
    with pytest.raises(TypeError, match="unknown option.*symetric"):
        qcore.get_quantizer("linear", symetric=True)
    with pytest.raises(TypeError, match="symmetric"):
        qcore.get_quantizer("linear", symmetric="yes")


def test_unknown_scheme_lists_installed():
    with pytest.raises(qcore.SchemeNotFound) as info:
        qcore.quantize([1.0], "nosuchscheme")
    assert isinstance(info.value, KeyError)
    assert "linear" in str(info.value) and "nosuchscheme" in str(info.value)
    # observers too: ObserverNotFound, still a SchemeNotFound (what unknown observers raised before) and a KeyError
    with pytest.raises(qcore.ObserverNotFound) as info:
        qcore.get_quantizer("linear", observer="nosuchobserver")
    assert isinstance(info.value, qcore.SchemeNotFound) and isinstance(info.value, KeyError)
    assert "nosuchobserver" in str(info.value) and "histogram" in str(info.value)
    with pytest.raises(qcore.ObserverNotFound):
        qcore.get_observer("nosuchobserver")
    with pytest.raises(qcore.PlannerNotFound):
        get_manager().get("planner", "nosuchplanner")
    # a scheme name is not an observer name: the scheme error stays the plain SchemeNotFound
    with pytest.raises(qcore.SchemeNotFound) as info:
        qcore.get_quantizer("nosuchscheme")
    assert not isinstance(info.value, (qcore.ObserverNotFound, qcore.PlannerNotFound))
    # kernels have their own not-found error, a KeyError and (docs/contracts.md §1) a SchemeNotFound
    with pytest.raises(qcore.KernelNotFound) as info:
        qcore.get_kernel("nosuchkernel")
    assert isinstance(info.value, KeyError) and isinstance(info.value, qcore.SchemeNotFound)
    assert "nosuchkernel" in str(info.value) and "numpy" in str(info.value)
    with pytest.raises(qcore.KernelNotFound):
        qcore.get_quantizer("linear", kernel="nosuchkernel")


@pytest.mark.parametrize("kernel", ["numpy", "cython"])
def test_kernel_argument_checks(kernel):
    k = qcore.get_kernel(kernel)
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="one value per channel"):
        k.quantize_affine(x, np.ones(2), np.zeros(2, np.int32), 0, 255, axis=0)
    with pytest.raises(ValueError, match="scale"):
        k.quantize_affine(x, 0.0, 0, 0, 255)
    with pytest.raises(ValueError, match="scale"):
        k.quantize_affine(x, 1e-45, 0, 0, 255)
    with pytest.raises(ValueError):
        k.quantize_affine(x, 1.0, 0, -128, 255)
    with pytest.raises(TypeError):
        k.dequantize_affine(x, 1.0, 0)
    with pytest.raises(ValueError, match="out of range"):
        k.pack(np.array([16], np.uint8), 4)
    with pytest.raises(ValueError, match="out of range"):
        k.pack(np.array([-9], np.int8), 4)
    with pytest.raises(ValueError, match="bytes"):
        k.unpack(np.zeros(3, np.uint8), 4, 7, False)
    with pytest.raises(ValueError):
        k.minmax(np.zeros((0, 3), np.float32), axis=0)


def test_observe_bad_batches():
    q = qcore.get_quantizer("linear", granularity="channel", axis=1)
    q.observe(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="channels"):
        q.observe(np.ones((2, 4), np.float32))
    with pytest.raises(qcore.InputError):
        q.observe(np.full((2, 3), np.nan, np.float32))
    with pytest.raises(qcore.InputError, match="empty"):
        q.observe(np.ones((0, 3), np.float32))
