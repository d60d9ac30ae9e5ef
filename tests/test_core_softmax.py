"""softmax, log_softmax, logsumexp, sigmoid, log_sigmoid and their vector-Jacobian products,
against PyTorch (the reference): every axis, every dtype, extreme and non-finite values, empty
arrays. Runs on every backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
from helpers import assert_close, compute_dtype, result_dtype, to_numpy

SHAPES = [(5,), (3, 4), (2, 3, 4), (2, 1, 3, 2, 2)]
DTYPES = [np.float64, np.float32, np.float16, np.int64]
AXIS_FUNCS = ["softmax", "log_softmax", "logsumexp"]


def _random(shape, dtype, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-5, 6, size=shape).astype(dtype)
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _torch_in(x):
    return torch.from_numpy(np.array(x, dtype=compute_dtype(np.asarray(x).dtype), copy=True))


def torch_activation(name, x, axis=-1, keepdims=False):
    """The reference value, computed by torch in xent's compute dtype, cast to xent's dtype."""
    t = _torch_in(x)
    if name == "softmax":
        r = torch.softmax(t, dim=axis)
    elif name == "log_softmax":
        r = torch.log_softmax(t, dim=axis)
    elif name == "logsumexp":
        r = torch.logsumexp(t, dim=axis, keepdim=keepdims)
    elif name == "sigmoid":
        r = torch.sigmoid(t)
    elif name == "log_sigmoid":
        r = F.logsigmoid(t)
    else:
        raise ValueError(name)
    return to_numpy(r).astype(result_dtype(np.asarray(x).dtype))


# ---------------------------------------------------------------------------------------------
# Forward values


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", AXIS_FUNCS)
def test_axis_functions_match_torch_on_every_axis(backend, name, shape, dtype):
    x = _random(shape, dtype)
    for axis in range(-len(shape), len(shape)):
        got = getattr(xent, name)(x, axis=axis)
        assert_close(got, torch_activation(name, x, axis), context=f"{name} axis={axis}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", AXIS_FUNCS)
def test_default_axis_is_last(backend, name, dtype):
    x = _random((3, 4, 5), dtype, seed=1)
    assert_close(getattr(xent, name)(x), torch_activation(name, x, -1))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsumexp_keepdims_matches_torch(backend, axis, keepdims):
    x = _random((3, 4, 5), np.float64, seed=2)
    got = xent.logsumexp(x, axis=axis, keepdims=keepdims)
    assert_close(got, torch_activation("logsumexp", x, axis, keepdims=keepdims))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid"])
def test_elementwise_functions_match_torch(backend, name, shape, dtype):
    x = _random(shape, dtype, seed=3, scale=10.0)
    got = np.asarray(getattr(xent, name)(x))
    assert_close(got, torch_activation(name, x), context=name)


def test_lists_in_arrays_out(backend):
    for name in AXIS_FUNCS + ["sigmoid", "log_sigmoid"]:
        got = getattr(xent, name)([[2.0, 1.0, 0.1], [0.0, -1.0, 3.0]])
        assert isinstance(got, np.ndarray), name
        assert got.dtype == np.float64, name
        x = np.array([[2.0, 1.0, 0.1], [0.0, -1.0, 3.0]])
        assert_close(got, torch_activation(name, x), context=name)


# ---------------------------------------------------------------------------------------------
# Stability: finite wherever the mathematical result is finite, exact at the extremes


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_softmax_of_1000_and_1_is_one_hot_not_nan(backend, dtype):
    x = np.array([1000.0, 1.0], dtype=dtype)
    np.testing.assert_array_equal(xent.softmax(x), np.array([1.0, 0.0], dtype=dtype))
    np.testing.assert_array_equal(xent.log_softmax(x), np.array([0.0, -999.0], dtype=dtype))
    assert xent.logsumexp(x) == dtype(1000.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_sigmoid_and_log_sigmoid_exact_at_plus_minus_1000(backend, dtype):
    x = np.array([1000.0, -1000.0], dtype=dtype)
    np.testing.assert_array_equal(xent.sigmoid(x), np.array([1.0, 0.0], dtype=dtype))
    np.testing.assert_array_equal(xent.log_sigmoid(x), np.array([0.0, -1000.0], dtype=dtype))
    # Far enough out to need care, not so far that the answer underflows:
    # log_sigmoid(-x) = -x - log1p(e^-x).
    y = np.array([-30.0, 30.0, -80.0], dtype=np.float64)
    expect = np.array([-30.0 - np.log1p(np.exp(-30.0)), -np.log1p(np.exp(-30.0)), -80.0])
    assert_close(xent.log_sigmoid(y), expect)
    assert_close(xent.sigmoid(y), 1.0 / (1.0 + np.exp(-y)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_extreme_finite_inputs_give_finite_results_without_warnings(backend, dtype):
    big = np.finfo(dtype).max
    x = np.array([[big, -big, 0.0], [-big, -big, -big], [big, big, big]], dtype=dtype)
    with np.errstate(all="raise"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p = xent.softmax(x)
            lse = xent.logsumexp(x)
            logp = xent.log_softmax(x)
            s = xent.sigmoid(x)
            ls = xent.log_sigmoid(x)
    np.testing.assert_array_equal(p[0], np.array([1.0, 0.0, 0.0], dtype=dtype))
    assert_close(p[1:], np.full((2, 3), 1 / 3, dtype=dtype))
    assert np.isfinite(lse).all()
    assert lse[0] == big and lse[1] == -big + np.log(dtype(3)) and lse[2] == big
    # log_softmax: 0 for the maximum; -big - big is -2*big, not representable: -inf is right.
    assert logp[0, 0] == 0 and logp[0, 2] == -big
    assert_close(logp[1:], np.full((2, 3), -np.log(3), dtype=dtype))
    nonzero = x != 0
    np.testing.assert_array_equal(s[nonzero], (x[nonzero] > 0).astype(dtype))
    assert np.isfinite(ls).all()
    np.testing.assert_array_equal(ls[nonzero], np.minimum(x, 0)[nonzero])
    for name, got in [("softmax", p), ("log_softmax", logp), ("logsumexp", lse)]:
        assert_close(got, torch_activation(name, x), context=name)


def test_naive_tutorial_formula_fails_where_xent_does_not():
    x = np.array([1000.0, 1.0])
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.sum(np.exp(x), axis=0)
    assert np.isnan(naive[0])  # the tutorials' formula: inf / inf
    np.testing.assert_array_equal(xent.softmax(x), [1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Non-finite inputs: the same nan/inf as PyTorch


NONFINITE_ROWS = [
    [np.inf, 1.0, 2.0],
    [-np.inf, 1.0, 2.0],
    [-np.inf, -np.inf, -np.inf],
    [np.inf, np.inf, 0.0],
    [np.nan, 1.0, 2.0],
    [np.inf, -np.inf, 0.0],
    [0.0, 1.0, 2.0],
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", AXIS_FUNCS + ["sigmoid", "log_sigmoid"])
def test_nonfinite_inputs_follow_torch(backend, name, dtype):
    x = np.array(NONFINITE_ROWS, dtype=dtype)
    with np.errstate(all="ignore"):
        got = getattr(xent, name)(x)
    assert_close(got, torch_activation(name, x), equal_nan=True, context=name)


# ---------------------------------------------------------------------------------------------
# Empty arrays


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("name", AXIS_FUNCS + ["sigmoid", "log_sigmoid"])
def test_empty_arrays_match_torch(backend, name, shape):
    x = np.zeros(shape)
    got = getattr(xent, name)(x)
    assert_close(got, torch_activation(name, x), context=f"{name}{shape}")


# ---------------------------------------------------------------------------------------------
# Vector-Jacobian products


def torch_vjp(name, grad_output, arg, axis=-1):
    """The reference VJP, from the ATen backward functions themselves (which take the forward's
    output, or for log_sigmoid its input, as xent's do)."""
    g, a = _torch_in(grad_output), _torch_in(arg)
    if name == "softmax_backward":
        r = torch._softmax_backward_data(g, a, axis, a.dtype)
    elif name == "log_softmax_backward":
        r = torch._log_softmax_backward_data(g, a, axis, a.dtype)
    elif name == "sigmoid_backward":
        r = torch.ops.aten.sigmoid_backward(g, a)
    elif name == "log_sigmoid_backward":
        _, buffer = torch.ops.aten.log_sigmoid_forward(a)
        r = torch.ops.aten.log_sigmoid_backward(g, a, buffer)
    else:
        raise ValueError(name)
    return to_numpy(r).astype(result_dtype(np.asarray(arg).dtype))


def torch_autograd(name, x, grad_output, axis=-1):
    """d/dx of the forward function, contracted with grad_output, by torch autograd."""
    t = _torch_in(x).requires_grad_(True)
    fwd = {
        "softmax_backward": lambda t: torch.softmax(t, axis),
        "log_softmax_backward": lambda t: torch.log_softmax(t, axis),
        "sigmoid_backward": torch.sigmoid,
        "log_sigmoid_backward": F.logsigmoid,
    }[name]
    fwd(t).backward(_torch_in(grad_output))
    return to_numpy(t.grad).astype(result_dtype(np.asarray(x).dtype))


_FORWARD = {
    "softmax_backward": "softmax",
    "log_softmax_backward": "log_softmax",
    "sigmoid_backward": "sigmoid",
    "log_sigmoid_backward": None,  # takes x itself
}
VJPS = list(_FORWARD)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", VJPS)
def test_backward_functions_match_torch_autograd(backend, name, shape, dtype):
    x = _random(shape, dtype, seed=4)
    g = _random(shape, dtype, seed=5, scale=1.0)
    axes = range(-len(shape), len(shape)) if "softmax" in name else [None]
    for axis in axes:
        kw = {} if axis is None else {"axis": axis}
        fwd = _FORWARD[name]
        arg = x if fwd is None else getattr(xent, fwd)(x, **kw)
        got = getattr(xent, name)(g, arg, **kw)
        ax = -1 if axis is None else axis
        # The backward from the forward's (xent) output against autograd through torch's forward.
        if dtype == np.float16:
            # Torch's fp32 forward output and xent's fp16 output differ by a rounding: compare the
            # VJP of xent's own output instead, which is what the function is given.
            assert_close(got, torch_vjp(name, g, arg, ax), context=f"{name} axis={axis}")
        else:
            assert_close(got, torch_autograd(name, x, g, ax), context=f"{name} axis={axis}")


@pytest.mark.parametrize("name", VJPS)
def test_backward_functions_match_aten_on_arbitrary_arguments(backend, name):
    """The VJPs are the formulas PyTorch's backward kernels apply, for any `output` given."""
    rng = np.random.default_rng(6)
    g = rng.standard_normal((4, 5))
    arg = rng.random((4, 5)) if name != "log_sigmoid_backward" else 5 * rng.standard_normal((4, 5))
    if name == "log_softmax_backward":
        arg = np.log(arg)
    axes = [0, 1, -1] if "softmax" in name else [None]
    for axis in axes:
        kw = {} if axis is None else {"axis": axis}
        got = getattr(xent, name)(g, arg, **kw)
        assert_close(got, torch_vjp(name, g, arg, -1 if axis is None else axis), context=str(axis))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_log_sigmoid_backward_at_extremes(backend, dtype):
    x = np.array([-1e4, -1000.0, -30.0, 0.0, 30.0, 1000.0, 1e4], dtype=dtype)
    g = np.ones_like(x)
    got = xent.log_sigmoid_backward(g, x)
    assert np.isfinite(got).all()
    assert_close(got, torch_autograd("log_sigmoid_backward", x, g))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)], ids=str)
@pytest.mark.parametrize("name", VJPS)
def test_backward_functions_on_empty_arrays(backend, name, shape):
    g = np.zeros(shape)
    got = getattr(xent, name)(g, np.zeros(shape))
    assert isinstance(got, np.ndarray) and got.shape == shape and got.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Axis errors


@pytest.mark.parametrize("axis", [2, -3, 5])
@pytest.mark.parametrize("name", AXIS_FUNCS)
def test_axis_out_of_range_raises_axis_error(name, axis):
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        getattr(xent, name)(np.zeros((3, 4)), axis=axis)


@pytest.mark.parametrize("name", ["softmax_backward", "log_softmax_backward"])
def test_backward_axis_out_of_range_raises_axis_error(name):
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        getattr(xent, name)(np.zeros((3, 4)), np.zeros((3, 4)), axis=2)


# ---------------------------------------------------------------------------------------------
# Deliberate differences from PyTorch (each listed in the README)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_sigmoid_of_very_negative_input_is_exact_not_flushed_to_zero(backend, dtype):
    """Difference: torch computes 1/(1+exp(-x)), which is 0 once exp(-x) overflows (x < -88.7 in
    float32, x < -709.8 in float64); xent computes exp(x)/(1+exp(x)) there, exact down to the
    smallest subnormal. The reference is float64 (or exact) math."""
    if dtype == np.float32:
        x = np.array([-80.0, -89.0, -95.0, -100.0, -103.0, -104.0], dtype=dtype)
        expect = np.exp(x.astype(np.float64)).astype(dtype)  # 1 + e^x = 1 in float64 here
    else:
        x = np.array([-700.0, -710.0, -720.0, -745.0, -746.0])
        expect = np.array([np.exp(-700.0), np.exp(-710.0), np.exp(-720.0), 5e-324, 0.0])
    got = xent.sigmoid(x)
    assert_close(got, expect, rtol=np.finfo(dtype).eps * 4, atol=0.0)
    # log_sigmoid agrees with PyTorch there (both are -x - log1p(e^x) ~ x).
    assert_close(xent.log_sigmoid(x), torch_activation("log_sigmoid", x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_wide_odd_rows_match_torch(backend, name, dtype):
    """4099 entries per row (beyond any kernel's block or vector width), along either axis."""
    x = _random((3, 4099), dtype, seed=9, scale=5.0)
    for axis in (1, 0):
        xx = x if axis == 1 else np.ascontiguousarray(x.T)
        got = getattr(xent, name)(xx, axis=axis)
        assert_close(got, torch_activation(name, xx, axis), context=f"{name} axis={axis}")


# ---------------------------------------------------------------------------------------------
# Tiny terms: log1p of the terms other than the max (SciPy gh-18295), closed forms in float64

# A gap g with e^-g below the dtype's resolution at 1 (so log(1 + e^-g) rounds to 0) and
# e^-g still a normal number: float64 eps = 2.2e-16 vs e^-40 = 4.2e-18, float32 1.2e-7 vs
# e^-20 = 2.1e-9.
_GAP = {np.float64: 40.0, np.float32: 20.0}


def _tiny_cases(g):
    """(row, m, s') with the exact lse = m + log1p(s'): s' from float64 closed forms."""
    e = np.exp
    return [
        ("one tiny term", [0.0, -g], 0.0, e(-g)),
        ("several tiny terms", [0.0, -g, -g - 1.0, -g - 5.0], 0.0, e(-g) + e(-g - 1) + e(-g - 5)),
        ("tie of the max", [5.0, -g, 5.0], 5.0, 1.0 + e(-g - 5.0)),
        ("negative max", [-3.0, -3.0 - g, -3.0 - g - 7.0], -3.0, e(-g) + e(-g - 7.0)),
        ("mixed signs, max last", [-g / 2, -g, g / 2 - g, 0.0], 0.0,
         e(-g / 2) + e(-g) + e(-g / 2)),
        ("-inf beside the max", [-np.inf, 0.0, -g], 0.0, e(-g)),
    ]


def _tiny_params():
    for dtype in (np.float64, np.float32):
        for name, row, m, rest in _tiny_cases(_GAP[dtype]):
            yield pytest.param(dtype, row, m, rest, id=f"{np.dtype(dtype).name}-{name}")


def _rtol(dtype):
    return 8 * np.finfo(dtype).eps


@pytest.mark.parametrize(("dtype", "row", "m", "rest"), list(_tiny_params()))
def test_logsumexp_keeps_tiny_terms_scipy_gh18295(backend, dtype, row, m, rest):
    """logsumexp(x) = m + log1p(s'): at [0, -40] that is log1p(e^-40) = 4.25e-18, not 0."""
    x = np.array(row, dtype=dtype)
    assert x.astype(np.float64).tolist() == row  # every value is exact in dtype
    expect = m + np.log1p(rest)
    got = xent.logsumexp(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expect, rtol=_rtol(dtype), atol=0)
    if m == 0:
        assert got > 0  # not rounded to 0
    # The same along any axis and over a tuple of axes: a (3, C) stack, reduced over axis 1.
    stack = np.stack([x, x, x])
    np.testing.assert_allclose(xent.logsumexp(stack, axis=1), [expect] * 3, rtol=_rtol(dtype))
    np.testing.assert_allclose(xent.logsumexp(stack.T, axis=0), [expect] * 3, rtol=_rtol(dtype))
    np.testing.assert_allclose(xent.logsumexp(stack[:1], axis=(0, 1)), expect, rtol=_rtol(dtype))


@pytest.mark.parametrize(("dtype", "row", "m", "rest"), list(_tiny_params()))
def test_log_softmax_keeps_tiny_terms(backend, dtype, row, m, rest):
    """log_softmax(x)_c = (x_c - m) - log1p(s'): at the max of [0, -40], -4.25e-18, not 0.

    Along the last axis (row kernels) and along axis 0 of a (C, B) array (the K-dim kernels),
    B = 3 and B = 40 (rows grouped into lanes), several positions in one tile.
    """
    x = np.array(row, dtype=dtype)
    lse_m = np.log1p(rest)
    expect = (np.array(row) - m) - lse_m  # float64
    np.testing.assert_allclose(xent.log_softmax(x), expect, rtol=_rtol(dtype), atol=0)
    top = int(np.argmax(x))
    assert xent.log_softmax(x)[top] < 0  # not rounded to 0
    for B in (3, 40):
        cols = np.repeat(x[:, None], B, axis=1)
        got = xent.log_softmax(cols, axis=0)
        np.testing.assert_allclose(got, np.repeat(expect[:, None], B, axis=1),
                                   rtol=_rtol(dtype), atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
def test_log_softmax_tiny_terms_in_a_wide_row(backend, dtype):
    """A 5000-wide row (several kernel blocks, the max in a later block than the first) and the
    same along axis 0 with many class rows per lane group: every entry but one sits 2g below."""
    g = _GAP[dtype]
    C = 5000
    row = np.full(C, -2 * g)
    row[3] = -g  # a tiny term in the first block
    row[4321] = 0.0  # the max, in a later block
    x = row.astype(dtype)
    rest = np.exp(-g) + (C - 2) * np.exp(-2 * g)
    expect = row - np.log1p(rest)
    # (the sum of 5000 terms rounds differently with the SIMD width the kernel's loop gets:
    # 11 ulp of float64 on a host with AVX2 only, within 8 with AVX-512; a sum of n terms may
    # err by log2(n) ~ 12 ulp in pairwise order)
    np.testing.assert_allclose(xent.log_softmax(x), expect, rtol=2 * _rtol(dtype), atol=0)
    np.testing.assert_allclose(xent.logsumexp(x), np.log1p(rest), rtol=_rtol(dtype), atol=0)
    cols = np.repeat(x[:, None], 16, axis=1)
    np.testing.assert_allclose(xent.log_softmax(cols, axis=0),
                               np.repeat(expect[:, None], 16, axis=1), rtol=_rtol(dtype), atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["log_softmax", "logsumexp"])
def test_nonfinite_rows_follow_torch_along_axis_0(backend, name, dtype):
    """The non-finite rows of NONFINITE_ROWS along axis 0 (K-dim kernels for log_softmax):
    the same nan/inf as torch."""
    x = np.ascontiguousarray(np.array(NONFINITE_ROWS, dtype=dtype).T)
    with np.errstate(all="ignore"):
        got = getattr(xent, name)(x, axis=0)
    assert_close(got, torch_activation(name, x, 0), equal_nan=True, context=name)


# ---------------------------------------------------------------------------------------------
# logsumexp over several axes; softmax / log_softmax dtype=


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [(0, 1), (0, 2), (2, 0), (-1, 1), (0, 1, 2), [1, 2]], ids=str)
def test_logsumexp_over_a_tuple_of_axes_matches_torch(backend, axis, keepdims):
    x = _random((3, 4, 5), np.float64, seed=11)
    got = xent.logsumexp(x, axis=axis, keepdims=keepdims)
    expect = torch.logsumexp(torch.from_numpy(x), dim=tuple(axis), keepdim=keepdims)
    assert_close(got, to_numpy(expect))


def test_logsumexp_axis_none_reduces_everything_as_scipy():
    import scipy.special

    x = _random((3, 4, 5), np.float64, seed=12)
    assert_close(xent.logsumexp(x, axis=None), scipy.special.logsumexp(x, axis=None))
    got = xent.logsumexp(x, axis=None, keepdims=True)
    assert got.shape == (1, 1, 1)
    assert_close(got, scipy.special.logsumexp(x, axis=None, keepdims=True))


@pytest.mark.parametrize("axis", [(0, 0), (1, -1)], ids=str)
def test_logsumexp_repeated_axis_raises(axis):
    with pytest.raises(ValueError, match="repeats an axis"):
        xent.logsumexp(np.zeros((3, 4)), axis=axis)


@pytest.mark.parametrize("axis", [(0, 2), (5,)], ids=str)
def test_logsumexp_tuple_axis_out_of_range_raises_axis_error(axis):
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        xent.logsumexp(np.zeros((3, 4)), axis=axis)


@pytest.mark.parametrize("out_dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("in_dtype", [np.float32, np.float64, np.int64],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_dtype_casts_the_input_first_as_torch(backend, name, in_dtype, out_dtype):
    """torch.softmax(x, dim, dtype=d): x is cast to d, the result has dtype d."""
    x = _random((3, 7), in_dtype, seed=13)
    got = getattr(xent, name)(x, axis=1, dtype=out_dtype)
    assert got.dtype == out_dtype
    t = torch.from_numpy(x.astype(np.float64) if in_dtype == np.int64 else x)
    tdt = torch.float64 if out_dtype == np.float64 else torch.float32
    expect = getattr(torch, name)(t, 1, dtype=tdt)
    assert_close(got, to_numpy(expect))


@pytest.mark.parametrize("dtype", [np.int64, "complex128", bool, "not a dtype"], ids=str)
def test_dtype_must_be_a_float_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        xent.softmax([1.0, 2.0], dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Floats wider than float64


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
                    reason="np.longdouble is float64 on this platform")
@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid", "softmax", "log_softmax", "logsumexp"])
def test_longdouble_is_computed_in_longdouble(name):
    """The result keeps the input's float dtype (README): a long double array is computed in
    long double, not rounded to float64. At -800, sigmoid is 3.7e-348, below float64's range;
    SciPy's functions, which have long double loops, are the reference."""
    import scipy.special as sp

    x = np.array([[-800.0, 0.5, 3.0], [1.0, -2.0, 1e-3]], np.longdouble)
    want = {
        "sigmoid": sp.expit(x),
        "log_sigmoid": sp.log_expit(x),
        "softmax": sp.softmax(x, axis=-1),
        "log_softmax": sp.log_softmax(x, axis=-1),
        "logsumexp": sp.logsumexp(x, axis=-1),
    }[name]
    got = getattr(xent, name)(x)
    assert got.dtype == np.longdouble
    assert want.dtype == np.longdouble
    eps = np.finfo(np.longdouble).eps
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=0)
    if name == "sigmoid":
        assert got[0, 0] > 0  # float64 would flush it to 0


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant,
                    reason="np.longdouble is float64 on this platform")
@pytest.mark.parametrize("name", VJPS)
def test_longdouble_vjps_keep_longdouble(name):
    x = np.array([[-3.0, 0.5, 3.0], [1.0, -2.0, 1e-3]], np.longdouble)
    g = np.array([[1.0, -1.0, 0.25], [0.5, 2.0, -3.0]], np.longdouble)
    fwd = _FORWARD[name]
    arg = x if fwd is None else getattr(xent, fwd)(x)
    got = getattr(xent, name)(g, arg)
    assert got.dtype == np.longdouble
    want = torch_vjp(name, g.astype(np.float64), arg.astype(np.float64))
    assert_close(got.astype(np.float64), want)
