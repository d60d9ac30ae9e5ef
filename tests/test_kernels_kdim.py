"""The kernels along a class axis that is not last (``xent._kernels._kdim``): cross_entropy on
``(N, C, d1, ..., dK)`` and softmax / log_softmax along an inner axis, against PyTorch (float64
autograd), on the layout itself with no transpose copy.

Every test runs under ``xent.use_backend("numba")`` and checks with a spy which kernel ran, so a
silent fall-back to the copy path (move the class axis last, row kernels, move it back) fails.
Shapes cover one class, one position (d1·...·dK == 1: the row path, which needs no copy), empty
batches, row groups with left-over rows (``_max_sum_exp``), tiles narrower than B with a ragged
last tile, and sizes above the parallel threshold. Skipped without Numba.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

import xent  # noqa: E402
from helpers import assert_close, spy  # noqa: E402
from xent import _activations, _cross_entropy  # noqa: E402
from xent import _kernels as K  # noqa: E402

KERNELS = (
    "ce_index_kdim",
    "ce_prob_kdim",
    "softmax_kdim",
    "log_softmax_kdim",
    "ce_index",
    "ce_prob",
    "softmax",
    "log_softmax",
)
SHAPES = [
    (2, 5, 3),
    (4, 7, 3, 5),
    (1, 3, 1),  # one position: rows are contiguous, the row kernels run
    (3, 1, 4),  # one class
    (0, 4, 3),  # empty batch
    (2, 4, 0),  # no positions
    (4, 37, 5),  # row groups of 25 classes, 12 left over
    (2, 3000, 70),  # tiles of 16 positions, the last one 6 wide
    (8, 1000, 160),  # above the parallel threshold
]
LARGE = {(2, 3000, 70), (8, 1000, 160)}


@pytest.fixture
def calls(monkeypatch):
    """Count the kernel calls the public functions make (they look kernels up on the module)."""
    counts: collections.Counter = collections.Counter()
    spy(monkeypatch, [(K, name, name) for name in KERNELS], lambda n: counts.update((n,)))
    with xent.use_backend("numba"):
        yield counts


def positions(shape) -> int:
    return math.prod(shape[2:])


def assert_path(counts, op: str, shape) -> None:
    """The kdim kernel ran (and no row kernel) wherever more than one position follows C."""
    if positions(shape) > 1:
        assert counts[op + "_kdim"] == 1 and counts[op] == 0, dict(counts)
    else:
        assert counts[op + "_kdim"] == 0, dict(counts)
    counts.clear()


def logits(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def torch_ce(x, target, grad_output=None, prob=False, **kw):
    """Loss and d(Σ grad_output·loss)/dx from torch autograd in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(target, dtype=torch.float64 if prob else torch.int64)
    if kw.get("weight") is not None:
        kw["weight"] = torch.tensor(kw["weight"], dtype=torch.float64)
    loss = F.cross_entropy(xt, tt, **kw)
    g = (
        torch.ones_like(loss)
        if grad_output is None
        else torch.tensor(grad_output, dtype=torch.float64)
    )
    loss.backward(g)
    return loss.detach().numpy(), xt.grad.numpy()


def tolerance(dtype, shape):
    """Default assert_close tolerances; float32 sums over 1000+ classes round a little more."""
    if dtype == np.float32 and shape in LARGE:
        return {"rtol": 1e-5, "atol": 2e-5}
    return {}


# ------------------------------------------------------------------------------------------------
# Cross-entropy, class-index targets
# ------------------------------------------------------------------------------------------------
INDEX_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True, "ignore_index": 1},
    {"label_smoothing": 0.2, "ignore_index": -100},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
    {"weight": True, "ignore_index": 2, "label_smoothing": 0.3, "reduction": "sum"},
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", INDEX_OPTIONS, ids=str)
def test_ce_index_matches_torch(calls, shape, dtype, options):
    rng = np.random.default_rng(1)
    C = shape[1]
    x = logits(shape, dtype)
    kw = dict(options)
    ignore = kw.get("ignore_index", -100)
    t = rng.integers(0, C, (shape[0], *shape[2:])) if C else np.zeros((shape[0], *shape[2:]), int)
    if t.size > 2:
        t.flat[::3] = ignore  # every third position is ignored (or its class is `ignore`)
    if kw.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, C).astype(dtype)
    red = kw.get("reduction", "mean")
    go = rng.uniform(0.5, 1.5, t.shape).astype(dtype) if red == "none" else dtype(0.7)
    want_loss, want_grad = torch_ce(x.astype(np.float64), t, grad_output=go, **kw)
    loss = xent.cross_entropy(x, t, **kw)
    assert_path(calls, "ce_index", shape)
    loss2, grad = xent.cross_entropy(x, t, **kw, return_grad=True, grad_output=go)
    assert_path(calls, "ce_index", shape)
    tol = tolerance(dtype, shape)
    assert_close(loss, want_loss.astype(dtype), **tol, context="loss")
    assert_close(loss2, want_loss.astype(dtype), **tol, context="loss with grad")
    assert_close(grad, want_grad.astype(dtype), **tol, context="grad")
    assert grad.flags.c_contiguous


# ------------------------------------------------------------------------------------------------
# Cross-entropy, class-probability targets
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [{}, {"reduction": "none"}, {"weight": True, "label_smoothing": 0.15, "reduction": "sum"}],
    ids=str,
)
def test_ce_prob_matches_torch(calls, shape, dtype, options):
    rng = np.random.default_rng(2)
    C = shape[1]
    x = logits(shape, dtype, seed=3)
    y = np.moveaxis(rng.dirichlet(np.ones(max(C, 1)), (shape[0], *shape[2:])), -1, 1)
    y = np.ascontiguousarray(y[:, :C]).astype(dtype)
    kw = dict(options)
    if kw.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, C).astype(dtype)
    red = kw.get("reduction", "mean")
    go = rng.uniform(0.5, 1.5, (shape[0], *shape[2:])).astype(dtype) if red == "none" else None
    want_loss, want_grad = torch_ce(x.astype(np.float64), y, grad_output=go, prob=True, **kw)
    loss, grad = xent.cross_entropy(x, y, **kw, return_grad=True, grad_output=go)
    assert_path(calls, "ce_prob", shape)
    tol = tolerance(dtype, shape)
    assert_close(loss, want_loss.astype(dtype), **tol, context="loss")
    assert_close(grad, want_grad.astype(dtype), **tol, context="grad")


# ------------------------------------------------------------------------------------------------
# softmax and log_softmax along an inner axis
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, axis",
    [(s, 1) for s in SHAPES] + [((3, 4), 0), ((4, 7, 3, 5), 2), ((2, 3, 4, 5), -3), ((6, 33), 0)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family_matches_torch(calls, shape, axis, dtype, op):
    x = logits(shape, dtype, seed=4) * 3
    want = getattr(torch, op)(torch.tensor(x, dtype=torch.float64), dim=axis).numpy()
    out = getattr(xent, op)(x, axis=axis)
    if x.size:
        ax = axis % x.ndim
        if math.prod(shape[ax + 1 :]) > 1:
            assert calls[op + "_kdim"] == 1 and calls[op] == 0, dict(calls)
        else:
            assert calls[op + "_kdim"] == 0, dict(calls)
    assert_close(out, want.astype(dtype), **tolerance(dtype, shape), context=op)
    assert out.flags.c_contiguous


# ------------------------------------------------------------------------------------------------
# Layouts, non-finite values, dispatch, validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["transposed", "strided", "fortran"])
def test_non_contiguous_inputs(calls, layout):
    rng = np.random.default_rng(5)
    if layout == "transposed":
        x = logits((3, 6, 40), np.float32).transpose(0, 2, 1)  # (3, 40, 6)
    elif layout == "strided":
        x = logits((4, 80, 12), np.float32)[::2, ::2, 1::2]  # (2, 40, 6)
    else:
        x = np.asfortranarray(logits((3, 40, 6), np.float32))
    assert not x.flags.c_contiguous
    t = rng.integers(0, x.shape[1], (x.shape[0], x.shape[2]))
    want_loss, want_grad = torch_ce(x.astype(np.float64), t, label_smoothing=0.1)
    loss, grad = xent.cross_entropy(x, t, label_smoothing=0.1, return_grad=True)
    assert_path(calls, "ce_index", x.shape)
    assert_close(loss, want_loss.astype(np.float32))
    assert_close(grad, want_grad.astype(np.float32))
    p = xent.softmax(x, axis=1)
    assert calls["softmax_kdim"] == 1
    assert_close(p, torch.softmax(torch.tensor(x, dtype=torch.float64), 1).numpy().astype("f4"))


def nonfinite_logits(dtype, C=6):
    """(2, C, 7): per position b of batch 0: NaN, +inf, all -inf, one -inf beside finite values,
    -inf at the max's neighbour, NaN beside -inf, finite; batch 1 finite but for two columns."""
    x = logits((2, C, 7), np.float64, seed=6)
    x[0, 2, 0] = np.nan
    x[0, 4, 1] = np.inf
    x[0, :, 2] = -np.inf
    x[0, 0, 3] = -np.inf
    x[0, 1:, 4] = -np.inf
    x[0, 3, 5] = np.nan
    x[0, 2, 5] = -np.inf
    x[1, 1, 0] = np.nan
    x[1, :, 6] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("C", [6, 200])  # 200: row groups of 18 classes plus one-row leftovers
def test_nonfinite_positions_follow_torch(calls, dtype, eps, C):
    x = nonfinite_logits(dtype, C)
    rng = np.random.default_rng(7)
    t = rng.integers(0, C, (2, 7))
    t[0, 3] = 0  # the target is the -inf logit: infinite loss, as in torch
    w = rng.uniform(0.5, 2.0, C).astype(dtype)
    go = rng.uniform(0.5, 1.5, (2, 7)).astype(dtype)
    kw = {"weight": w, "label_smoothing": eps, "reduction": "none"}
    want_loss, want_grad = torch_ce(x.astype(np.float64), t, grad_output=go, **kw)
    loss, grad = xent.cross_entropy(x, t, **kw, return_grad=True, grad_output=go)
    assert_path(calls, "ce_index", x.shape)
    assert_close(loss, want_loss.astype(dtype), context="loss")
    assert_close(grad, want_grad.astype(dtype), context="grad")
    y = np.moveaxis(rng.dirichlet(np.ones(C), (2, 7)), -1, 1).astype(dtype)
    want_loss, want_grad = torch_ce(x.astype(np.float64), y, grad_output=go, prob=True, **kw)
    loss, grad = xent.cross_entropy(x, y, **kw, return_grad=True, grad_output=go)
    assert_close(loss, want_loss.astype(dtype), context="prob loss")
    assert_close(grad, want_grad.astype(dtype), context="prob grad")
    for op in ("softmax", "log_softmax"):
        want = getattr(torch, op)(torch.tensor(x, dtype=torch.float64), 1).numpy()
        assert_close(getattr(xent, op)(x, axis=1), want.astype(dtype), context=op)
        assert calls[op + "_kdim"] == 1


def test_ignored_nonfinite_positions_give_zero_as_the_row_kernels_do(calls, monkeypatch):
    """An ignored position gets loss 0 and gradient 0 even when its logits are NaN or all -inf
    (the row kernels' contract), every other position what the row path gives."""
    x = nonfinite_logits(np.float32)
    t = np.array([[-100, 1, -100, 0, 2, -100, 3], [-100, 5, 4, 3, 2, 1, -100]])
    kw = {"label_smoothing": 0.1, "reduction": "sum", "return_grad": True}
    loss, grad = xent.cross_entropy(x, t, **kw)
    assert_path(calls, "ce_index", x.shape)
    assert (grad[0, :, [0, 2, 5]] == 0).all() and (grad[1, :, [0, 6]] == 0).all()
    monkeypatch.setattr(_cross_entropy, "_kdim_kernel", lambda *args: None)
    want_loss, want_grad = xent.cross_entropy(x, t, **kw)
    assert calls["ce_index"] == 1 and calls["ce_index_kdim"] == 0
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)


def test_large_logit_offsets_lose_nothing(calls):
    """(x - m) - log s, never x - (m + log s), on the strided layout too."""
    x = np.array([[[1e8, 1e4 + 1], [1e8, 1e4]]], dtype=np.float32)  # (1, C=2, B=2)
    want = torch.log_softmax(torch.tensor(x, dtype=torch.float64), 1).numpy()
    assert_close(xent.log_softmax(x, axis=1), want.astype(np.float32))
    want_loss, _ = torch_ce(x.astype(np.float64), np.array([[0, 1]]), label_smoothing=0.3)
    assert_close(
        xent.cross_entropy(x, np.array([[0, 1]]), label_smoothing=0.3), want_loss.astype(np.float32)
    )
    assert calls["log_softmax_kdim"] == 1 and calls["ce_index_kdim"] == 1


def test_auto_dispatch_uses_the_kernel_from_the_threshold_on(calls):
    x = logits((8, 1000, 160), np.float32)
    t = np.zeros((8, 160), np.int64)
    with xent.use_backend("auto"):
        xent.cross_entropy(x, t, return_grad=True)
        xent.cross_entropy(x[:1, :10, :4], t[:1, :4], return_grad=True)  # 40 elements: NumPy
        xent.softmax(x, axis=1)
    assert calls["ce_index_kdim"] == 1 and calls["softmax_kdim"] == 1, dict(calls)
    with xent.use_backend("numpy"):
        xent.cross_entropy(x, t, return_grad=True)
        xent.log_softmax(x, axis=1)
    assert sum(calls.values()) == 2, dict(calls)


@pytest.mark.parametrize("bad", [7, -1, 2**40])
def test_bad_targets_raise_before_any_kernel(calls, bad):
    x = logits((2, 7, 5), np.float32)
    t = np.zeros((2, 5), np.int64)
    t[1, 3] = bad
    with pytest.raises(IndexError, match="out of bounds"):
        xent.cross_entropy(x, t, return_grad=True)
    assert sum(calls.values()) == 0


def test_kernel_called_directly_with_bad_targets_stays_in_bounds():
    """Not reachable through the public API: NaN for those positions, nothing else touched."""
    C = 5
    gbuf = np.full((3, C, 4), 7.0, np.float32)
    x = logits((1, C, 4), np.float32)
    t = np.array([C, -1, 2**62, 2])
    loss = K.ce_index_kdim(x, t, None, -100, 0.1, np.ones(4, np.float32), gbuf[1:2])
    assert np.isnan(loss[0, :3]).all() and np.isfinite(loss[0, 3])
    assert np.isnan(gbuf[1, :, :3]).all() and np.isfinite(gbuf[1, :, 3]).all()
    assert (gbuf[0] == 7).all() and (gbuf[2] == 7).all()


def test_the_copy_path_is_not_taken(calls, monkeypatch):
    """No move of the class axis: _rows/_unrows and np.moveaxis are never called."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the copy path ran")

    monkeypatch.setattr(_cross_entropy, "_rows", forbidden)
    monkeypatch.setattr(_cross_entropy, "_unrows", forbidden)
    monkeypatch.setattr(_activations.np, "moveaxis", forbidden)
    x = logits((4, 9, 3, 2), np.float64)
    t = np.ones((4, 3, 2), np.int64)
    xent.cross_entropy(x, t, return_grad=True)
    xent.cross_entropy(x, xent.softmax(x, axis=1), return_grad=True)
    xent.log_softmax(x, axis=1)
    assert calls["ce_index_kdim"] == calls["ce_prob_kdim"] == calls["log_softmax_kdim"] == 1
