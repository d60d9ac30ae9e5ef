"""binary_cross_entropy and binary_cross_entropy_with_logits against torch.nn.functional (the
reference): values and gradients over shapes, weight broadcasting, pos_weight broadcast along the
last dimension, reductions and dtypes; the -100 clamp at inputs exactly 0 and 1; logits of ±1e4.
Runs on every backend."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch.nn.functional as F

import xent
from helpers import assert_close, result_dtype, torch_loss_and_grad

SHAPES = [(), (6,), (4, 3), (2, 3, 4), (0, 3)]
REDUCTIONS = ["none", "mean", "sum"]
WEIGHTS = ["none", "full", "last-dim", "middle-dim"]


def make_weight(kind, shape, dtype, rng):
    if kind == "none":
        return None
    if kind == "full":
        wshape = shape
    elif kind == "last-dim":
        wshape = shape[-1:]
    else:  # broadcast over the last dimension: (d, 1)
        wshape = shape[-2:-1] + (1,) if len(shape) >= 2 else shape[-1:]
    return (rng.random(wshape) + 0.25).astype(dtype)


def check_against_torch(fn_name, x, target, reduction, seed=1, **options):
    fn = getattr(xent, fn_name)
    tfn = {
        "binary_cross_entropy": F.binary_cross_entropy,
        "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
    }[fn_name]
    out = result_dtype(x.dtype)
    grad_output = None
    if reduction == "none":
        grad_output = np.random.default_rng(seed).standard_normal(x.shape).astype(out)
    x_before = x.copy()
    ref_loss, ref_grad = torch_loss_and_grad(
        tfn, x, target, reduction=reduction, grad_output=grad_output, **options
    )
    shown = {k: (v.shape if isinstance(v, np.ndarray) else v) for k, v in options.items()}
    ctx = f"{fn_name} {x.dtype}{x.shape} {reduction=} {shown}"
    loss = fn(x, target, reduction=reduction, **options)
    assert_close(loss, ref_loss, dtype=out, context=ctx + " [forward only]")
    loss, grad = fn(
        x, target, reduction=reduction, return_grad=True, grad_output=grad_output, **options
    )
    assert_close(loss, ref_loss, dtype=out, context=ctx + " [loss]")
    assert_close(grad, ref_grad, dtype=out, context=ctx + " [grad]")
    np.testing.assert_array_equal(x, x_before)


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy (probabilities)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_binary_cross_entropy_matches_torch(backend, shape, weight, reduction, dtype):
    rng = np.random.default_rng(0)
    p = (0.02 + 0.96 * rng.random(shape)).astype(dtype)
    y = rng.random(shape).astype(dtype)  # soft targets are allowed
    w = make_weight(weight, shape, dtype, rng) if shape else None
    check_against_torch("binary_cross_entropy", p, y, reduction, weight=w)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_clamps_logs_at_minus_100(backend, reduction, dtype):
    """Inputs exactly 0 and 1: each log is clamped at -100 (loss 100, not inf), and the gradient
    is PyTorch's, whose denominator x(1-x) is floored at 1e-12."""
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 1e-50], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 1.0, 1.0], dtype=dtype)
    loss = xent.binary_cross_entropy(p, y, reduction="none")
    assert np.isfinite(loss).all()
    assert loss[0] == 100 and loss[1] == 100 and loss[2] == 0 and loss[3] == 0
    assert_close(loss[4:6], np.array([30.0, 30.0], dtype=dtype))  # 0.3·100, 0.3·100
    check_against_torch("binary_cross_entropy", p, y, reduction)


@pytest.mark.parametrize("dtype", [np.float16, np.int64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_float16_and_integer_input(backend, reduction, dtype):
    """float16 is computed in float32 and returned as float16; 0/1 integer probabilities are
    promoted to float64."""
    rng = np.random.default_rng(2)
    if dtype == np.int64:
        p = rng.integers(0, 2, size=(4, 3))
        y = rng.integers(0, 2, size=(4, 3)).astype(np.float64)
    else:
        p = (0.05 + 0.9 * rng.random((4, 3))).astype(dtype)
        y = rng.random((4, 3)).astype(dtype)
    check_against_torch("binary_cross_entropy", p, y, reduction, weight=rng.random(3) + 0.5)


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits


POS_WEIGHTS = ["none", "last-dim", "one"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", POS_WEIGHTS)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_binary_cross_entropy_with_logits_matches_torch(
    backend, shape, weight, pos_weight, reduction, dtype
):
    rng = np.random.default_rng(3)
    x = (4.0 * rng.standard_normal(shape)).astype(dtype)
    y = rng.random(shape).astype(dtype)
    w = make_weight(weight, shape, dtype, rng)
    pw = None
    if pos_weight == "last-dim":
        pw = (3.0 * rng.random(shape[-1:])).astype(dtype)
    elif pos_weight == "one":
        pw = np.array([2.5], dtype=dtype)
    check_against_torch(
        "binary_cross_entropy_with_logits", x, y, reduction, weight=w, pos_weight=pw
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_with_logits_scalar_input(backend, dtype):
    x = np.array(1.5, dtype=dtype)
    y = np.array(0.25, dtype=dtype)
    for reduction in REDUCTIONS:
        check_against_torch("binary_cross_entropy_with_logits", x, y, reduction)


def test_pos_weight_is_broadcast_along_the_last_dimension(backend):
    """pos_weight[k] multiplies the positive term of every element in column k."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 4))
    y = (rng.random((3, 2, 4)) < 0.5).astype(np.float64)
    pw = np.array([1.0, 2.0, 3.0, 4.0])
    got = xent.binary_cross_entropy_with_logits(x, y, reduction="none", pos_weight=pw)
    # float64 math: -[pw·y·log σ(x) + (1-y)·log σ(-x)]
    log_sig = -np.logaddexp(0.0, -x)
    log_sig_neg = -np.logaddexp(0.0, x)
    expect = -(pw * y * log_sig + (1 - y) * log_sig_neg)
    assert_close(got, expect)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_with_logits_at_plus_minus_1e4_is_finite_and_exact(backend, reduction, dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4, 1e4, -1e4], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5], dtype=dtype)
    loss, grad = xent.binary_cross_entropy_with_logits(x, y, reduction="none", return_grad=True)
    np.testing.assert_array_equal(loss, np.array([0, 0, 1e4, 1e4, 5e3, 5e3], dtype=dtype))
    np.testing.assert_array_equal(grad, np.array([0, 0, 1, -1, 0.5, -0.5], dtype=dtype))
    pw = np.array([2.0], dtype=dtype)
    check_against_torch("binary_cross_entropy_with_logits", x, y, reduction)
    check_against_torch("binary_cross_entropy_with_logits", x, y, reduction, pos_weight=pw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_with_logits_at_the_largest_finite_logits(backend, dtype):
    big = np.finfo(dtype).max
    x = np.array([big, -big, big, -big], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    loss, grad = xent.binary_cross_entropy_with_logits(x, y, reduction="none", return_grad=True)
    np.testing.assert_array_equal(loss, np.array([0, 0, big, big], dtype=dtype))
    np.testing.assert_array_equal(grad, np.array([0, 0, 1, -1], dtype=dtype))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_with_logits_nonfinite_logits_follow_torch(backend, dtype, reduction):
    x = np.array([np.inf, -np.inf, np.nan, np.inf, -np.inf, np.nan, 0.0], dtype=dtype)
    y = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=dtype)
    with np.errstate(all="ignore"):
        check_against_torch("binary_cross_entropy_with_logits", x, y, reduction)
        check_against_torch(
            "binary_cross_entropy_with_logits", x, y, reduction,
            pos_weight=np.array([3.0], dtype=dtype),
        )


@pytest.mark.parametrize("dtype", [np.float16, np.int64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_with_logits_float16_and_integer_logits(backend, reduction, dtype):
    rng = np.random.default_rng(5)
    if dtype == np.int64:
        x = rng.integers(-5, 6, size=(4, 3))
    else:
        x = (3 * rng.standard_normal((4, 3))).astype(dtype)
    y = rng.random((4, 3)).astype(result_dtype(x.dtype))
    check_against_torch(
        "binary_cross_entropy_with_logits", x, y, reduction,
        weight=(rng.random(3) + 0.5).astype(result_dtype(x.dtype)),
        pos_weight=(rng.random(3) + 0.5).astype(result_dtype(x.dtype)),
    )


@pytest.mark.parametrize("fn_name", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
def test_empty_input_mean_is_nan_sum_is_zero(backend, fn_name):
    fn = getattr(xent, fn_name)
    x = np.zeros((0, 3))
    mean, g = fn(x, x, return_grad=True)
    assert mean.shape == () and np.isnan(mean) and g.shape == (0, 3)
    total = fn(x, x, reduction="sum")
    assert total.shape == () and total == 0.0
    for reduction in REDUCTIONS:
        check_against_torch(fn_name, x, x.copy(), reduction)


def test_lists_in_arrays_out(backend):
    loss = xent.binary_cross_entropy([0.9, 0.2], [1.0, 0.0])
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float64
    loss, grad = xent.binary_cross_entropy_with_logits([2.0, -1.0], [1, 0], return_grad=True)
    assert isinstance(grad, np.ndarray) and grad.shape == (2,) and grad.dtype == np.float64
    check_against_torch(
        "binary_cross_entropy_with_logits", np.array([2.0, -1.0]), np.array([1.0, 0.0]), "mean"
    )


def test_grad_output_scales_the_gradient_of_a_reduced_loss(backend):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4))
    y = rng.random((3, 4))
    for reduction in ("mean", "sum"):
        _, g1 = xent.binary_cross_entropy_with_logits(x, y, reduction=reduction, return_grad=True)
        _, g2 = xent.binary_cross_entropy_with_logits(
            x, y, reduction=reduction, return_grad=True, grad_output=-3.0
        )
        assert_close(g2, -3.0 * g1)


def test_signatures_follow_torch_functional():
    expected = {
        "binary_cross_entropy": [("weight", None), ("reduction", "mean")],
        "binary_cross_entropy_with_logits": [
            ("weight", None), ("reduction", "mean"), ("pos_weight", None),
        ],
    }
    for name, params in expected.items():
        sig = inspect.signature(getattr(xent, name))
        positional = [
            (p.name, p.default) for p in sig.parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        assert positional == [("input", inspect.Parameter.empty),
                              ("target", inspect.Parameter.empty), *params], name
        for kw, default in (("return_grad", False), ("grad_output", None)):
            p = sig.parameters[kw]
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == default
        torch_sig = inspect.signature(getattr(F, name))
        for pname, default in params:
            assert torch_sig.parameters[pname].default == default, (name, pname)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: d.__name__)
def test_with_logits_wide_odd_rows(backend, dtype, reduction):
    """(33, 1027): odd sizes beyond any kernel's vector width, every option at once."""
    rng = np.random.default_rng(9)
    x = (5 * rng.standard_normal((33, 1027))).astype(dtype)
    y = rng.random((33, 1027)).astype(dtype)
    check_against_torch(
        "binary_cross_entropy_with_logits", x, y, reduction,
        weight=(rng.random((33, 1)) + 0.5).astype(dtype),
        pos_weight=(3 * rng.random(1027)).astype(dtype),
    )


def test_operands_of_another_float_dtype_are_cast_to_the_input_dtype(backend):
    """Difference: torch raises for float64 targets of float32 probabilities; xent casts the
    target, weight and pos_weight to the input's dtype and returns the input's dtype."""
    rng = np.random.default_rng(10)
    p = (0.05 + 0.9 * rng.random((4, 3))).astype(np.float32)
    y = rng.random((4, 3))
    got = xent.binary_cross_entropy(p, y, weight=np.ones(3))
    assert got.dtype == np.float32
    check_against_torch("binary_cross_entropy", p, y.astype(np.float32), "mean")
    assert_close(got, xent.binary_cross_entropy(p, y.astype(np.float32)))
    got = xent.binary_cross_entropy_with_logits(p, y, pos_weight=np.full(3, 2.0))
    assert got.dtype == np.float32
    assert_close(
        got,
        xent.binary_cross_entropy_with_logits(
            p, y.astype(np.float32), pos_weight=np.full(3, 2.0, dtype=np.float32)
        ),
    )
