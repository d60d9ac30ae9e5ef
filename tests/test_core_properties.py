"""Hypothesis properties that hold for every finite input, including large magnitudes: what the
mathematics guarantees, checked on every backend (profile "ci" in conftest.py keeps the example
count modest; HYPOTHESIS_PROFILE=thorough runs 1000 examples each)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xent
from helpers import assert_close, torch_loss_and_grad

EPS64 = np.finfo(np.float64).eps


def finite(max_abs=1e30, width=64):
    return st.floats(
        -max_abs, max_abs, allow_nan=False, allow_infinity=False, allow_subnormal=True,
        width=width,
    )


def logits(min_dims=1, max_dims=3, max_abs=1e30, dtype=np.float64):
    width = np.dtype(dtype).itemsize * 8
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=6),
        elements=finite(max_abs, width),
    )


def rows_and_targets(max_abs=1e30):
    """(N, C) logits with class-index targets."""
    return st.integers(1, 6).flatmap(
        lambda n: st.integers(1, 6).flatmap(
            lambda c: st.tuples(
                hnp.arrays(np.float64, (n, c), elements=finite(max_abs)),
                hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)),
            )
        )
    )


# ---------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp


@given(x=logits(), dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_softmax_is_a_probability_distribution(backend, x, dtype, data):
    x = x.astype(dtype) if dtype == np.float64 else np.clip(x, -1e30, 1e30).astype(dtype)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    p = xent.softmax(x, axis=axis)
    assert p.dtype == dtype and np.isfinite(p).all()
    assert ((p >= 0) & (p <= 1)).all()
    n = x.shape[axis]
    np.testing.assert_allclose(p.sum(axis=axis, dtype=np.float64), 1.0, rtol=0,
                               atol=4 * n * np.finfo(dtype).eps)


@given(x=logits(max_abs=1e6), c=finite(1e6))
def test_softmax_and_log_softmax_are_shift_invariant(backend, x, c):
    """softmax(x + c) = softmax(x); x + c rounds each entry by up to eps·|x + c|, which moves the
    result by about as much."""
    scale = (np.abs(x).max() + abs(c)) * EPS64
    np.testing.assert_allclose(xent.softmax(x + c), xent.softmax(x), rtol=0, atol=8 * scale + 1e-15)
    np.testing.assert_allclose(
        xent.log_softmax(x + c), xent.log_softmax(x), rtol=0, atol=16 * scale + 1e-13
    )


@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
                 elements=st.integers(-(2**40), 2**40).map(float)),
    c=st.integers(-(2**40), 2**40).map(float),
)
def test_softmax_exactly_shift_invariant_when_the_shift_is_exact(backend, x, c):
    """Integer-valued logits and shift: x + c and x - max are exact, so the results agree
    bitwise."""
    np.testing.assert_array_equal(xent.softmax(x + c), xent.softmax(x))
    np.testing.assert_array_equal(xent.log_softmax(x + c), xent.log_softmax(x))


@given(x=logits(max_abs=1e300), data=st.data())
def test_logsumexp_is_between_max_and_max_plus_log_n(backend, x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    lse = xent.logsumexp(x, axis=axis)
    m = x.max(axis=axis)
    n = x.shape[axis]
    assert np.isfinite(lse).all()
    assert (m <= lse).all()
    upper = m + np.log(n)
    assert (lse <= upper + 4 * np.spacing(np.abs(upper))).all()


@given(x=logits(max_abs=1e6))
def test_exp_log_softmax_is_softmax(backend, x):
    np.testing.assert_allclose(np.exp(xent.log_softmax(x)), xent.softmax(x), rtol=1e-12,
                               atol=1e-300)


# ---------------------------------------------------------------------------------------------
# sigmoid, log_sigmoid


@given(x=logits(max_abs=1e300))
def test_sigmoid_symmetry(backend, x):
    s, s_neg = xent.sigmoid(x), xent.sigmoid(-x)
    np.testing.assert_allclose(s + s_neg, 1.0, rtol=0, atol=2 * EPS64)
    ls, ls_neg = xent.log_sigmoid(x), xent.log_sigmoid(-x)
    assert np.isfinite(ls).all() and (ls <= 0).all()
    # log σ(x) - log σ(-x) = x
    np.testing.assert_allclose(ls - ls_neg, x, rtol=4 * EPS64, atol=4 * EPS64)


# ---------------------------------------------------------------------------------------------
# cross-entropy


@given(case=rows_and_targets(), ls=st.floats(0, 1), reduction=st.sampled_from(["none", "sum"]))
def test_cross_entropy_is_nonnegative(backend, case, ls, reduction):
    x, t = case
    loss, grad = xent.cross_entropy(x, t, label_smoothing=ls, reduction=reduction,
                                    return_grad=True)
    assert (loss >= 0).all()
    assert np.isfinite(grad).all()
    # Class-probability targets that sum to 1: also non-negative.
    y = xent.softmax(np.sin(x))
    assert (xent.cross_entropy(x, y, label_smoothing=ls, reduction="none") >= 0).all()


@given(
    case=rows_and_targets(max_abs=1e4),
    ls=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    weighted=st.booleans(),
)
def test_index_targets_equal_their_one_hot_targets(backend, case, ls, reduction, weighted):
    """CE(x, t) = CE(x, one_hot(t)), with or without label smoothing (both smooth towards
    uniform). With a weight the means differ by definition (sum of the targets' weights versus
    N), so the weighted case compares 'none' and 'sum' only."""
    x, t = case
    C = x.shape[1]
    if weighted and reduction == "mean":
        reduction = "sum"
    w = np.linspace(0.5, 2.0, C) if weighted else None
    one_hot = np.eye(C)[t]
    a, ga = xent.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls, return_grad=True)
    b, gb = xent.cross_entropy(x, one_hot, w, reduction=reduction, label_smoothing=ls,
                               return_grad=True)
    scale = 1 + np.abs(x).max()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=64 * EPS64 * scale * C)
    np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=64 * EPS64 * C)


@given(case=rows_and_targets(max_abs=1e4), ls=st.floats(0, 1), weighted=st.booleans())
def test_softmax_cross_entropy_gradient_rows_sum_to_zero(backend, case, ls, weighted):
    """Σ_c d loss/d x_c = 0 for every row: adding a constant to a row's logits changes nothing.
    Holds for any weight and label smoothing, and for probability targets of any total."""
    x, t = case
    C = x.shape[1]
    w = np.linspace(0.5, 2.0, C) if weighted else None
    _, g = xent.cross_entropy(x, t, w, label_smoothing=ls, reduction="sum", return_grad=True)
    tol = 8 * C * EPS64 * max(1.0, np.abs(g).max())
    np.testing.assert_allclose(g.sum(axis=1), 0.0, rtol=0, atol=tol)
    y = np.abs(np.cos(x))
    _, g = xent.cross_entropy(x, y, w, label_smoothing=ls, reduction="sum", return_grad=True)
    tol = 8 * C * EPS64 * max(1.0, np.abs(g).max())
    np.testing.assert_allclose(g.sum(axis=1), 0.0, rtol=0, atol=tol)


@given(case=rows_and_targets(max_abs=1e4))
def test_nll_of_log_softmax_is_cross_entropy(backend, case):
    x, t = case
    np.testing.assert_allclose(
        xent.nll_loss(xent.log_softmax(x, axis=1), t, reduction="none"),
        xent.cross_entropy(x, t, reduction="none"),
        rtol=1e-12, atol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# binary cross-entropy


@given(
    x=logits(max_abs=1e30),
    data=st.data(),
    reduction=st.sampled_from(["none", "mean", "sum"]),
)
def test_bce_with_logits_is_symmetric(backend, x, data, reduction):
    """bce_with_logits(x, y) = bce_with_logits(-x, 1 - y)."""
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    a = xent.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    b = xent.binary_cross_entropy_with_logits(-x, 1 - y, reduction=reduction)
    assert np.isfinite(a).all() and (a >= 0).all()
    # 1 - y rounds by eps/2, which moves the loss by up to eps·|x|.
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=4 * EPS64 * (1 + np.abs(x).sum()))


@given(x=logits(max_abs=8), data=st.data())
def test_bce_with_logits_equals_bce_of_sigmoid(backend, x, data):
    """For moderate logits the fused loss is BCE on the probabilities. (Beyond, 1 - σ(x) cancels:
    at x = 27 it is accurate only to 5e-5 relative, which is why the fused form exists.)"""
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    np.testing.assert_allclose(
        xent.binary_cross_entropy_with_logits(x, y, reduction="none"),
        xent.binary_cross_entropy(xent.sigmoid(x), y, reduction="none"),
        rtol=1e-10, atol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# Differential: random shapes and options against PyTorch


@st.composite
def ce_problems(draw):
    """A random cross-entropy call: shape (C,), (N, C) or (N, C, d1[, d2]); options drawn from
    every kind torch accepts."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    ca = 0 if ndim == 1 else 1
    C = shape[ca]
    x = draw(hnp.arrays(np.float64, shape, elements=finite(1e4)))
    kind = draw(st.sampled_from(["index", "prob"]))
    ignore_index = -100
    if kind == "index":
        ignore_index = draw(st.sampled_from([-100, -1, 0, 1, 7]))
        tshape = shape[:ca] + shape[ca + 1 :]
        target = draw(hnp.arrays(np.int64, tshape,
                                 elements=st.sampled_from([*range(C), ignore_index])))
    else:
        target = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    weight = draw(st.none() | hnp.arrays(np.float64, (C,), elements=st.floats(0.01, 10)))
    ls = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return x, target, weight, ignore_index, ls, reduction


@given(problem=ce_problems())
def test_cross_entropy_matches_torch_on_random_problems(backend, problem):
    x, target, weight, ignore_index, ls, reduction = problem
    opts = {"reduction": reduction, "label_smoothing": ls}
    if target.dtype.kind == "i":
        opts["ignore_index"] = ignore_index
    g = None
    if reduction == "none":
        lshape = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
        g = np.cos(np.arange(int(np.prod(lshape)))).reshape(lshape)  # a fixed, varied upstream
    ref_loss, ref_grad = torch_loss_and_grad(
        F.cross_entropy, x, target, weight=weight, grad_output=g, **opts
    )
    loss, grad = xent.cross_entropy(x, target, weight, return_grad=True, grad_output=g, **opts)
    assert_close(loss, ref_loss, context="loss")
    assert_close(grad, ref_grad, context="grad")


@st.composite
def bce_problems(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = draw(hnp.arrays(np.float64, shape, elements=finite(1e4)))
    y = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    # weight: any shape that broadcasts to the input's (a suffix, with ones anywhere).
    k = draw(st.integers(0, len(shape)))
    wshape = tuple(draw(st.sampled_from([1, n])) for n in shape[len(shape) - k :])
    weight = draw(st.none() | hnp.arrays(np.float64, wshape, elements=st.floats(0, 5)))
    pos_weight = draw(
        st.none() | hnp.arrays(np.float64, (draw(st.sampled_from([1, shape[-1]])),),
                               elements=st.floats(0, 5))
    )
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return x, y, weight, pos_weight, reduction


@given(problem=bce_problems())
def test_bce_with_logits_matches_torch_on_random_problems(backend, problem):
    x, y, weight, pos_weight, reduction = problem
    g = np.cos(np.arange(x.size)).reshape(x.shape) if reduction == "none" else None
    opts = {"weight": weight, "pos_weight": pos_weight, "reduction": reduction}
    ref_loss, ref_grad = torch_loss_and_grad(
        F.binary_cross_entropy_with_logits, x, y, grad_output=g, **opts
    )
    loss, grad = xent.binary_cross_entropy_with_logits(x, y, return_grad=True, grad_output=g,
                                                       **opts)
    assert_close(loss, ref_loss, context="loss")
    assert_close(grad, ref_grad, context="grad")
