"""Finite-difference gradient checks, in float64, for every function and every option.

Each analytic gradient xent returns (a loss's `return_grad=True`, or a `*_backward` VJP) is
compared with central differences of the forward function on a small random input:
d/dx_i of f(x) ~ (f(x + h e_i) - f(x - h e_i)) / 2h, h = 1e-6, with error about h^2 f''' plus
round-off ~1e-16 |f| / h: well under the tolerance rtol=1e-5, atol=1e-7. For an unreduced loss
f is sum(grad_output * loss(x)) with a random grad_output, so the VJP itself is checked.
The reference is float64 math, independent of PyTorch. Runs on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

import xent
from helpers import assert_close

H = 1e-6
TOL = {"rtol": 1e-5, "atol": 1e-7}


def numerical_gradient(f, x):
    """Central differences of the scalar function f at x (float64)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + H
        up = float(f(x))
        flat[i] = orig - H
        down = float(f(x))
        flat[i] = orig
        gflat[i] = (up - down) / (2 * H)
    return grad


def check_loss_gradient(fn, x, *args, reduction, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    probe = xent_loss = fn(x, *args, reduction=reduction, **kwargs)
    if reduction == "none":
        g = rng.standard_normal(np.shape(probe))

        def f(z):
            return np.sum(g * fn(z, *args, reduction="none", **kwargs))

        loss, grad = fn(x, *args, reduction="none", return_grad=True, grad_output=g, **kwargs)
    else:

        def f(z):
            return fn(z, *args, reduction=reduction, **kwargs)

        loss, grad = fn(x, *args, reduction=reduction, return_grad=True, **kwargs)
    assert_close(loss, xent_loss)  # the loss does not depend on whether the gradient is wanted
    assert_close(grad, numerical_gradient(f, x), **TOL)


SHAPES = [(3, 4), (2, 3, 2)]
REDUCTIONS = ["none", "mean", "sum"]


def _case(shape, seed=0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    C = shape[1]
    tshape = shape[:1] + shape[2:]
    target = rng.integers(0, C, size=tshape)
    target.reshape(-1)[0] = ignore_index  # one ignored position, excluded from mean's denominator
    weight = rng.random(C) + 0.5
    probs = rng.random(shape)
    return x, target, weight, probs


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_index_gradient(
    backend, shape, weighted, ignore_index, label_smoothing, reduction
):
    x, target, weight, _ = _case(shape, ignore_index=ignore_index)
    check_loss_gradient(
        xent.cross_entropy, x, target, weight if weighted else None, reduction=reduction,
        ignore_index=ignore_index, label_smoothing=label_smoothing,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [*SHAPES, (4,)], ids=str)
def test_cross_entropy_probability_gradient(backend, shape, weighted, label_smoothing, reduction):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    probs = rng.random(shape)
    C = shape[0] if len(shape) == 1 else shape[1]
    weight = rng.random(C) + 0.5 if weighted else None
    check_loss_gradient(
        xent.cross_entropy, x, probs, weight, reduction=reduction, label_smoothing=label_smoothing
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nll_loss_gradient(backend, shape, weighted, ignore_index, reduction):
    x, target, weight, _ = _case(shape, seed=2, ignore_index=ignore_index)
    check_loss_gradient(
        xent.nll_loss, x, target, weight if weighted else None, reduction=reduction,
        ignore_index=ignore_index,
    )


def test_unbatched_cross_entropy_gradient(backend):
    x = np.array([0.3, -1.2, 2.0, 0.1])
    for reduction in REDUCTIONS:
        check_loss_gradient(xent.cross_entropy, x, 2, reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)], ids=str)
def test_binary_cross_entropy_gradient(backend, shape, weighted, reduction):
    """Away from 0 and 1, where the -100 clamp and the 1e-12 floor are inactive."""
    rng = np.random.default_rng(3)
    p = 0.1 + 0.8 * rng.random(shape)
    y = rng.random(shape)
    weight = rng.random(shape[-1:]) + 0.5 if weighted else None
    check_loss_gradient(xent.binary_cross_entropy, p, y, weight, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", [False, True], ids=["no-pos_weight", "pos_weight"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)], ids=str)
def test_binary_cross_entropy_with_logits_gradient(backend, shape, weighted, pos_weight, reduction):
    rng = np.random.default_rng(4)
    x = 3 * rng.standard_normal(shape)
    y = rng.random(shape)
    wshape = shape[-2:-1] + (1,) if len(shape) > 1 else shape  # broadcast over the last dim
    weight = rng.random(wshape) + 0.5 if weighted else None
    pw = rng.random(shape[-1:]) * 3 if pos_weight else None
    check_loss_gradient(
        xent.binary_cross_entropy_with_logits, x, y, weight, reduction=reduction, pos_weight=pw
    )


# ---------------------------------------------------------------------------------------------
# The activations' VJPs


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_vjp(backend, name, shape):
    rng = np.random.default_rng(5)
    x = 2 * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    fwd, bwd = getattr(xent, name), getattr(xent, name + "_backward")
    for axis in range(-len(shape), len(shape)):
        got = bwd(g, fwd(x, axis=axis), axis=axis)
        expect = numerical_gradient(lambda z, axis=axis: np.sum(g * fwd(z, axis=axis)), x)
        assert_close(got, expect, **TOL, context=f"{name} axis={axis}")


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)], ids=str)
def test_logsumexp_gradient_is_softmax(backend, shape):
    rng = np.random.default_rng(6)
    x = 2 * rng.standard_normal(shape)
    for axis in range(len(shape)):
        g = rng.standard_normal(np.delete(np.array(shape), axis))
        expect = numerical_gradient(lambda z, a=axis, g=g: np.sum(g * xent.logsumexp(z, axis=a)), x)
        got = np.expand_dims(g, axis) * xent.softmax(x, axis=axis)
        assert_close(got, expect, **TOL, context=f"axis={axis}")


@pytest.mark.parametrize("shape", [(5,), (3, 4)], ids=str)
def test_sigmoid_vjp(backend, shape):
    rng = np.random.default_rng(7)
    x = 4 * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    got = xent.sigmoid_backward(g, xent.sigmoid(x))
    assert_close(got, numerical_gradient(lambda z: np.sum(g * xent.sigmoid(z)), x), **TOL)


@pytest.mark.parametrize("shape", [(5,), (3, 4)], ids=str)
def test_log_sigmoid_vjp(backend, shape):
    rng = np.random.default_rng(8)
    x = 4 * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    got = xent.log_sigmoid_backward(g, x)
    assert_close(got, numerical_gradient(lambda z: np.sum(g * xent.log_sigmoid(z)), x), **TOL)
