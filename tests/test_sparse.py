"""sparsemax, 1.5-entmax, α-entmax (bisection), their VJPs and Fenchel-Young losses (issue 19,
item 4), against the ``entmax`` package in float64: values, VJPs (torch.autograd on the
package's functions), loss gradients; both backends; every dtype; the torch drop-ins on every
route, compiled and opchecked."""

from __future__ import annotations

import entmax
import ml_dtypes
import numpy as np
import pytest
import torch

import xent
import xent.torch as xt
from xent.torch import _sparse as tsparse

BF16 = np.dtype(ml_dtypes.bfloat16)
KINDS = ("sparsemax", "entmax15", "entmax_bisect")
ALPHA = {"sparsemax": 2.0, "entmax15": 1.5, "entmax_bisect": 1.3}
# Tolerances of the other dtypes against float64 truth (probabilities in [0, 1]).
TOL = {np.dtype(np.float32): 2e-5, BF16: 2e-2, np.dtype(np.float16): 3e-3}
# (300, 257): 77100 elements, above AUTO_MIN_ELEMENTS: the kernels on backend "numba" and "auto".
SHAPES = [((5, 7), -1), ((3, 6, 4), 1), ((300, 257), -1)]


def _logits(shape, seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def ref_map(kind, x, dim=-1, n_iter=50):
    """The entmax package's map on a float64 tensor."""
    if kind == "sparsemax":
        return entmax.sparsemax(x, dim=dim)
    if kind == "entmax15":
        return entmax.entmax15(x, dim=dim)
    return entmax.entmax_bisect(x, alpha=ALPHA[kind], dim=dim, n_iter=n_iter)


def xent_map(kind, x, axis=-1, n_iter=50):
    if kind == "entmax_bisect":
        return xent.entmax_bisect(x, ALPHA[kind], axis=axis, n_iter=n_iter)
    return getattr(xent, kind)(x, axis=axis)


def xent_vjp(kind, g, y, axis=-1):
    if kind == "entmax_bisect":
        return xent.entmax_bisect_backward(g, y, ALPHA[kind], axis=axis)
    return getattr(xent, kind + "_backward")(g, y, axis=axis)


def ref_loss_module(kind, ignore_index, reduction):
    red = "elementwise_mean" if reduction == "mean" else reduction
    if kind == "sparsemax":
        return entmax.SparsemaxLoss(ignore_index=ignore_index, reduction=red)
    if kind == "entmax15":
        return entmax.Entmax15Loss(k=None, ignore_index=ignore_index, reduction=red)
    return entmax.EntmaxBisectLoss(alpha=ALPHA[kind], ignore_index=ignore_index, reduction=red)


def xent_loss(kind, x, t, **kw):
    if kind == "entmax_bisect":
        return xent.entmax_bisect_loss(x, t, alpha=ALPHA[kind], **kw)
    return getattr(xent, kind + "_loss")(x, t, **kw)


# -- the maps and their VJPs --------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_map_and_vjp_match_entmax(backend, kind, shape, axis):
    x = _logits(shape)
    g = _logits(shape, seed=1)
    xt64 = torch.tensor(x, requires_grad=True)
    p_ref = ref_map(kind, xt64, dim=axis)
    (gx_ref,) = torch.autograd.grad(p_ref, xt64, torch.tensor(g))
    p = xent_map(kind, x, axis)
    np.testing.assert_allclose(p, p_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    assert (p == 0).any(), "a sparse map gives exact zeros"
    np.testing.assert_allclose(xent_vjp(kind, g, p, axis), gx_ref.numpy(), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_many_candidates(backend, kind):
    """Logits crowded near the max: thousands of candidates per row, so the kernels raise
    their bound and compact the list several times on the way (and ties at the max)."""
    x = _logits((16, 5000), scale=0.1)
    x[:, 7] = x[:, 9] = x.max()
    p = xent_map(kind, x)
    np.testing.assert_allclose(p, ref_map(kind, torch.tensor(x)).numpy(), rtol=1e-9,
                               atol=1e-12)
    t = np.arange(16)
    ref = ref_loss_module(kind, -100, "sum")(torch.tensor(x), torch.tensor(t))
    np.testing.assert_allclose(xent_loss(kind, x, t, reduction="sum"), ref.numpy(), rtol=1e-9)


@pytest.mark.parametrize("n_iter", [1, 3, 12])
def test_entmax_bisect_follows_the_package_steps(backend, n_iter):
    """Few bisection steps: the package's τ of the last step, divided by the sum."""
    x = _logits((300, 257))
    ref = entmax.entmax_bisect(torch.tensor(x), alpha=1.7, n_iter=n_iter)
    np.testing.assert_allclose(xent.entmax_bisect(x, 1.7, n_iter=n_iter), ref.numpy(),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16])
def test_map_dtypes(backend, kind, dtype):
    x = _logits((300, 257)).astype(dtype)
    truth = ref_map(kind, torch.tensor(x.astype(np.float64))).numpy()
    p = xent_map(kind, x)
    assert p.dtype == np.dtype(dtype)
    np.testing.assert_allclose(p.astype(np.float64), truth, atol=TOL[np.dtype(dtype)], rtol=0)
    g = _logits(x.shape, seed=2).astype(dtype)
    xt64 = torch.tensor(x.astype(np.float64), requires_grad=True)
    (gx,) = torch.autograd.grad(ref_map(kind, xt64), xt64, torch.tensor(g.astype(np.float64)))
    vjp = xent_vjp(kind, g, p)
    assert vjp.dtype == np.dtype(dtype)
    np.testing.assert_allclose(vjp.astype(np.float64), gx.numpy(),
                               atol=4 * TOL[np.dtype(dtype)], rtol=0)


def test_ties_and_exact_values(backend):
    assert xent.sparsemax([1.0, 1.0, 0.0]).tolist() == [0.5, 0.5, 0.0]
    assert xent.sparsemax([3.0, 3.0, 3.0, 3.0]).tolist() == [0.25] * 4
    # τ = 0.4 exactly at the third logit: it stays out (p = 0), as in the package
    np.testing.assert_allclose(xent.sparsemax([1.4, 1.0, 0.4]), [0.7, 0.3, 0.0], atol=1e-15)
    np.testing.assert_allclose(xent.entmax15([0.0, 0.0]), [0.5, 0.5], rtol=1e-15)
    wide = np.tile([1.0, 1.0, -5.0], (30000, 1))  # ties, above the kernels' threshold
    np.testing.assert_array_equal(xent.sparsemax(wide), np.tile([0.5, 0.5, 0.0], (30000, 1)))


@pytest.mark.parametrize("kind", KINDS)
def test_infinite_and_large_logits(backend, kind):
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [np.inf, 0.0, 1.0, 2.0],
                  [np.nan, 0.0, 1.0, 2.0], [-np.inf] * 4, [1e8, 1e8 - 0.5, -1e8, 0.0]])
    x = np.concatenate([x, np.zeros((20000, 4))])  # above the kernels' threshold
    p = xent_map(kind, x)
    finite = ref_map(kind, torch.tensor(np.array([[0.0, 1.0], [0.0, -0.5]]))).numpy()
    np.testing.assert_allclose(p[0, [0, 2]], finite[0], rtol=1e-12)
    assert p[0, 1] == p[0, 3] == 0.0
    assert np.isnan(p[1:4]).all()
    np.testing.assert_allclose(p[4, :2], finite[1], rtol=1e-9)
    assert p[4, 2] == p[4, 3] == 0.0
    x32 = np.array([[1e8, 1e8, -1e8]], np.float32)
    np.testing.assert_allclose(xent_map(kind, x32), np.array([[0.5, 0.5, 0.0]], np.float32),
                               rtol=1e-6, atol=0)


def test_empty_and_scalar(backend):
    for kind in KINDS:
        assert xent_map(kind, np.zeros((0, 5))).shape == (0, 5)
        assert xent_map(kind, np.zeros((4, 0))).shape == (4, 0)
        assert xent_map(kind, 3.0) == 1.0


def test_map_errors():
    with pytest.raises(ValueError, match="alpha must be a finite number > 1"):
        xent.entmax_bisect([1.0, 2.0], alpha=1.0)
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        xent.entmax_bisect([1.0, 2.0], n_iter=0)
    with pytest.raises(TypeError, match="n_iter must be an int"):
        xent.entmax_bisect([1.0, 2.0], n_iter=2.5)
    with pytest.raises(ValueError, match="axis"):
        xent.sparsemax([[1.0, 2.0]], axis=2)
    with pytest.raises(ValueError, match="shape"):
        xent.sparsemax_backward([1.0, 0.0], [0.5, 0.5, 0.0])


# -- the losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("reduction", "shape"), [("none", (6, 9)), ("sum", (6, 9)),
                                                  ("mean", (6, 9)), ("mean", (300, 257))])
def test_loss_matches_entmax(backend, kind, reduction, shape):
    x = _logits(shape)
    t = np.random.default_rng(3).integers(0, shape[1], shape[0])
    t[::4] = 3  # ignored (the package masks a non-negative ignore_index)
    xt64 = torch.tensor(x, requires_grad=True)
    ref = ref_loss_module(kind, 3, reduction)(xt64, torch.tensor(t))
    (g_ref,) = torch.autograd.grad(ref.sum(), xt64)
    loss, grad = xent_loss(kind, x, t, ignore_index=3, reduction=reduction, return_grad=True)
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, g_ref.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_kdim_and_grad_output(backend, kind):
    """(N, C, d): the class axis 1, as cross_entropy; 'none' with an upstream gradient."""
    x = _logits((4, 5, 3))
    t = np.random.default_rng(4).integers(0, 5, (4, 3))
    go = _logits((4, 3), seed=5)
    xt64 = torch.tensor(x, requires_grad=True)
    rows = xt64.movedim(1, -1).reshape(-1, 5)
    ref = ref_loss_module(kind, -100, "none")(rows, torch.tensor(t.reshape(-1))).reshape(4, 3)
    (g_ref,) = torch.autograd.grad(ref, xt64, torch.tensor(go))
    loss, grad = xent_loss(kind, x, t, reduction="none", return_grad=True, grad_output=go)
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(grad, g_ref.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16])
def test_loss_dtypes(backend, kind, dtype):
    x = _logits((300, 257)).astype(dtype)
    t = np.random.default_rng(6).integers(0, 257, 300)
    x64 = x.astype(np.float64)
    truth, gtruth = xent_loss(kind, x64, t, reduction="sum", return_grad=True)
    loss, grad = xent_loss(kind, x, t, reduction="sum", return_grad=True)
    assert loss.dtype == grad.dtype == np.dtype(dtype)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(float(loss), truth, rtol=10 * tol)
    np.testing.assert_allclose(grad.astype(np.float64), gtruth, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_edges(backend, kind):
    x = _logits((5, 4))
    t = np.full(5, -100)
    assert np.isnan(xent_loss(kind, x, t))  # all ignored: 0/0 as cross_entropy
    loss, grad = xent_loss(kind, x, t, reduction="sum", return_grad=True)
    assert loss == 0 and not grad.any()
    assert xent_loss(kind, np.zeros((0, 4)), np.zeros(0, int), reduction="sum") == 0
    # -inf logits outside the support add 0 (the package's <p, x> gives nan); a -inf target: inf
    xi = np.array([[2.0, -np.inf, 0.0, 1.0]])
    xf = np.array([[2.0, -1e300, 0.0, 1.0]])
    np.testing.assert_allclose(xent_loss(kind, xi, [0]), xent_loss(kind, xf, [0]), rtol=1e-12)
    assert xent_loss(kind, xi, [1]) == np.inf
    assert np.isnan(xent_loss(kind, np.array([[np.nan, 0.0]]), [0]))
    # the target alone in the support: loss 0 (margin above 1 / 2)
    assert xent_loss(kind, np.array([[10.0, 0.0, 0.0]]), [0]) == pytest.approx(0, abs=1e-12)


def test_loss_errors():
    with pytest.raises(IndexError, match="out of bounds for 3 classes"):
        xent.sparsemax_loss([[1.0, 2.0, 3.0]], [3])
    with pytest.raises(ValueError, match="reduction"):
        xent.entmax15_loss([[1.0, 2.0, 3.0]], [0], reduction="batchmean")
    with pytest.raises(TypeError, match="integer class indices"):
        xent.sparsemax_loss([[1.0, 2.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="alpha"):
        xent.entmax_bisect_loss([[1.0, 2.0]], [0], alpha=0.5)


# -- xent.torch --------------------------------------------------------------------------------

def _torch_map(kind, x, dim=-1):
    if kind == "entmax_bisect":
        return xt.entmax_bisect(x, ALPHA[kind], dim=dim)
    return getattr(xt, kind)(x, dim=dim)


def _torch_loss(kind, x, t, **kw):
    if kind == "entmax_bisect":
        return xt.entmax_bisect_loss(x, t, ALPHA[kind], **kw)
    return getattr(xt, kind + "_loss")(x, t, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ["core", "composed"])
def test_torch_map_routes(kind, route):
    x = torch.tensor(_logits((6, 5, 7)), requires_grad=True)
    g = torch.tensor(_logits((6, 5, 7), seed=1))
    ref = ref_map(kind, x, dim=1)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    if route == "core":
        p = _torch_map(kind, x, dim=1)
    else:
        p = tsparse._Map.apply(x, 1, kind, ALPHA[kind], 50, False)
    (gx,) = torch.autograd.grad(p, x, g)
    torch.testing.assert_close(p, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ["core", "composed"])
def test_torch_loss_routes(kind, route):
    x = torch.tensor(_logits((8, 9)), requires_grad=True)
    t = torch.tensor([0, 3, 3, 1, 8, 2, 3, 5], dtype=torch.int32)  # any integer dtype
    ref = ref_loss_module(kind, 3, "mean")(x, t.long())
    (g_ref,) = torch.autograd.grad(ref, x)
    if route == "core":
        loss = _torch_loss(kind, x, t, ignore_index=3)
    else:
        loss = tsparse.composed_loss(x, t.long(), 3, "mean", kind, ALPHA[kind], 50)
    (gx,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, g_ref, rtol=1e-9, atol=1e-12)


def test_torch_compile_fullgraph():
    """One compiled graph holding every map and loss (xent::entmax, xent::entmax_loss): no
    graph break, the package's values and gradients."""
    x = torch.tensor(_logits((6, 5, 7)), requires_grad=True)
    t = torch.tensor([[0, 3, 3, 1, 4, 2, 3]] * 6)

    def every(a, b):
        maps = [_torch_map(kind, a, dim=1) for kind in KINDS]
        losses = [_torch_loss(kind, a, b, ignore_index=3) for kind in KINDS]
        return maps, losses

    torch._dynamo.reset()
    maps, losses = torch.compile(every, fullgraph=True)(x, t)
    rows, tt = x.movedim(1, -1).reshape(-1, 5), t.reshape(-1)
    for kind, p, loss in zip(KINDS, maps, losses, strict=True):
        ref = ref_map(kind, x, dim=1)
        torch.testing.assert_close(p, ref, rtol=1e-10, atol=1e-12)
        g = torch.ones_like(p)
        torch.testing.assert_close(torch.autograd.grad(p, x, g, retain_graph=True)[0],
                                   torch.autograd.grad(ref, x, g)[0], rtol=1e-9, atol=1e-12)
        ref_l = ref_loss_module(kind, 3, "mean")(rows, tt)
        torch.testing.assert_close(loss, ref_l, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(loss, x, retain_graph=True)[0],
                                   torch.autograd.grad(ref_l, x, retain_graph=True)[0],
                                   rtol=1e-9, atol=1e-12)


def test_torch_half_double_backward_and_modules():
    x = torch.tensor(_logits((4, 6)), dtype=torch.bfloat16)
    p = xt.sparsemax(x)
    assert p.dtype == torch.bfloat16
    torch.testing.assert_close(p.double(), entmax.sparsemax(x.double()), atol=2e-2, rtol=0)
    # double backward through the composed loss: d/dx of ||grad||² (gradient penalty)
    x64 = torch.tensor(_logits((3, 5)), requires_grad=True)
    t = torch.tensor([0, 1, 2])
    (g,) = torch.autograd.grad(xt.entmax15_loss(x64, t), x64, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x64)
    xr = x64.detach().requires_grad_()
    (gr,) = torch.autograd.grad(tsparse.composed_loss(xr, t, -100, "mean", "entmax15", 1.5, 0),
                                xr, create_graph=True)
    (ggr,) = torch.autograd.grad((gr * gr).sum(), xr)
    torch.testing.assert_close(gg, ggr)
    mods = [xt.Sparsemax(), xt.Entmax15(), xt.EntmaxBisect(alpha=1.3)]
    for kind, m in zip(KINDS, mods, strict=True):
        torch.testing.assert_close(m(x64), ref_map(kind, x64))
    losses = [xt.SparsemaxLoss(reduction="sum"), xt.Entmax15Loss(reduction="sum"),
              xt.EntmaxBisectLoss(alpha=1.3, reduction="sum")]
    for kind, m in zip(KINDS, losses, strict=True):
        torch.testing.assert_close(m(x64, t), ref_loss_module(kind, -100, "sum")(x64, t))
    with pytest.raises(IndexError, match="out of bounds"):
        xt.sparsemax_loss(x64, torch.tensor([0, 1, 5]))
    with pytest.raises(IndexError, match="Dimension out of range"):
        xt.sparsemax(x64, dim=2)


def test_opcheck():
    x = torch.tensor(_logits((4, 6)), requires_grad=True)
    t = torch.tensor([0, 1, -100, 5])
    for kind in KINDS:
        torch.library.opcheck(torch.ops.xent.entmax.default, (x, 1, kind, ALPHA[kind], 50))
        y = xt.sparsemax(x.detach()) if kind == "sparsemax" else xt.entmax15(x.detach())
        torch.library.opcheck(torch.ops.xent.entmax_backward.default,
                              (torch.ones(4, 6, dtype=torch.float64), y, 1, kind, ALPHA[kind]))
        for reduction in ("none", "mean"):
            torch.library.opcheck(torch.ops.xent.entmax_loss.default,
                                  (x, t, -100, reduction, kind, ALPHA[kind], 50, True))


# -- xent explain --sparsemax ---------------------------------------------------------------------

def test_explain_sparsemax(capsys):
    """The sorted logits, τ, the support and the probabilities beside softmax's, as computed
    by hand (τ = (1 + 0.8 - 1)/2 = 0.4) and by PyTorch's softmax."""
    from xent.cli import main

    assert main(["explain", "1.0", "0.8", "0.1", "-2", "--sparsemax"]) == 0
    out = capsys.readouterr().out
    assert "τ = (1.000000 + 0.800000 - 1) / 2 = 0.400000" in out
    assert "support size K = 2" in out
    soft = torch.softmax(torch.tensor([1.0, 0.8, 0.1, -2.0], dtype=torch.float64), 0)
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()][-4:]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    np.testing.assert_allclose([float(r[2]) for r in rows], soft.numpy(), atol=1e-6)
    assert [r[3] for r in rows] == ["0.600000", "0.400000", "0", "0"]
    assert "exact zeros for 2 of 4 classes [2, 3]" in out
    assert main(["explain", "2.0", "1.0", "0.1", "--target", "1", "--sparsemax"]) == 0
    out = capsys.readouterr().out
    assert "sparsemax loss for target 1" in out and "= 1.000000" in out
    assert "gradient p - one_hot = [1.000000 -1.000000 0]" in out
