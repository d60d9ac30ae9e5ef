"""Focal loss, poly-1 cross-entropy and sigmoid focal loss (xent._focal, xent.torch._focal).

References, all in torch float64 with autograd for the gradients, written here from their
published definitions (not from the code under test):

- torchvision's ``sigmoid_focal_loss`` (torchvision/ops/focal_loss.py; torchvision is not
  installable here, so its formula is copied line by line into `torchvision_sigmoid_focal`);
- optax's ``poly_loss_cross_entropy`` (optax/losses/_classification.py: ``one_minus_pt =
  sum(labels * (1 - softmax(logits)))``, ``cross_entropy + epsilon * one_minus_pt``; optax is
  not installed, `optax_poly1` rewrites it);
- the multi-class focal loss, ``-Σ_c w_c y'_c (1 - p_c)^γ log p_c`` (`focal_reference`), and
  PyTorch's ``F.cross_entropy`` for γ = 0 / ε = 0.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float64), np.dtype(np.float32), BF16, np.dtype(np.float16)]
DT_IDS = ["f64", "f32", "bf16", "f16"]
# Relative tolerance of each dtype's result against float64 truth on its own (rounded) input.
RTOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 1.6e-2, "float16": 2e-3}


# -- references ------------------------------------------------------------------------------------

def torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, as published (torchvision/ops/focal_loss.py)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def optax_poly1(logits, labels, epsilon):
    """optax.poly_loss_cross_entropy (class axis last), per example."""
    p = torch.softmax(logits, dim=-1)
    one_minus_pt = torch.sum(labels * (1 - p), dim=-1)
    cross_entropy = -torch.sum(labels * torch.log_softmax(logits, dim=-1), dim=-1)
    return cross_entropy + epsilon * one_minus_pt


def _smoothed_targets(x, target, ignore_index, ls):
    """(y', denominator weights) for index or probability targets, class axis 1 (0 for (C,))."""
    axis = 1 if x.dim() >= 2 else 0
    C = x.shape[axis]
    if target.shape == x.shape:
        y = target.to(torch.float64)
        valid = None
    else:
        valid = target != ignore_index
        t = torch.where(valid, target, 0)
        y = F.one_hot(t, C).to(torch.float64).movedim(-1, axis)
        y = y * valid.unsqueeze(axis)
    y = (1 - ls) * y + ls / C
    if valid is not None:
        y = y * valid.unsqueeze(axis)
    return y, valid, axis, C


def focal_reference(x, target, weight=None, ignore_index=-100, reduction="mean", gamma=2.0,
                    ls=0.0, epsilon=0.0):
    """Σ_c w_c y'_c [-(1 - p_c)^γ log p_c + ε (1 - p_c)] with cross_entropy's mean."""
    y, valid, axis, C = _smoothed_targets(x, target, ignore_index, ls)
    shape = [1] * x.dim()
    shape[axis] = C
    w = torch.ones(shape, dtype=x.dtype) if weight is None else weight.reshape(shape)
    logp = torch.log_softmax(x, axis)
    p = logp.exp()
    rows = (w * y * (-((1 - p) ** gamma) * logp + epsilon * (1 - p))).sum(axis)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if valid is None:
        return rows.sum() / rows.numel()
    t = torch.where(valid, target, 0)
    return rows.sum() / (w.reshape(-1)[t] * valid).sum()


def _ref(fn, x64: np.ndarray, *args, grad_output=None, **kwargs):
    """(loss, grad) of a torch float64 reference ``fn`` by autograd."""
    xt_ = torch.tensor(x64, dtype=torch.float64, requires_grad=True)
    targs = [torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    loss = fn(xt_, *targs, **kwargs)
    go = torch.ones_like(loss) if grad_output is None else torch.from_numpy(grad_output)
    loss.backward(go)
    return loss.detach().numpy(), xt_.grad.numpy()


def _close(got, ref, dtype, what=""):
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == np.shape(ref), f"{what}: shape {got.shape} vs {np.shape(ref)}"
    rtol = RTOL[dtype.name]
    ref = np.asarray(ref, np.float64)
    scale = float(np.nanmax(np.abs(ref))) if ref.size and np.isfinite(ref).any() else 1.0
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol * scale,
                               err_msg=what)


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    return x, x.astype(np.float64)


def _index_target(x, ignore=True, seed=1):
    rng = np.random.default_rng(seed)
    shape = x.shape[:1] + x.shape[2:]
    t = rng.integers(0, x.shape[1], shape)
    if ignore:
        t.reshape(-1)[::4] = -100
    return t


# -- multi-class focal and poly-1 in the core ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 2, 3)], ids=["rows", "kdim"])
def test_focal_index_against_reference(backend, dtype, reduction, shape):
    x, x64 = _data(shape, dtype)
    t = _index_target(x)
    w = np.linspace(0.5, 2.0, shape[1])
    for gamma in (2.0, 0.5):
        loss, grad = xent.focal_loss(x, t, w, reduction=reduction, gamma=gamma,
                                     return_grad=True)
        rl, rg = _ref(focal_reference, x64, t, torch.from_numpy(w), -100, reduction, gamma)
        _close(loss, rl, dtype, f"loss gamma={gamma}")
        _close(grad, rg, dtype, f"grad gamma={gamma}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("fn", ["focal", "poly1"])
def test_smoothing_and_probabilities_against_reference(backend, dtype, fn):
    x, x64 = _data((6, 5, 3), dtype, seed=3)
    t = _index_target(x)
    y = np.random.default_rng(4).dirichlet(np.ones(5), (6, 3)).transpose(0, 2, 1).copy()
    w = np.linspace(2.0, 0.5, 5)
    gamma, eps = (1.5, 0.0) if fn == "focal" else (0.0, 2.0)
    call = xent.focal_loss if fn == "focal" else xent.poly1_cross_entropy
    for target, ls, weight in ((t, 0.1, w), (y.astype(x.dtype), 0.0, None), (y, 0.2, w)):
        kw = {"gamma": gamma} if fn == "focal" else {"epsilon": eps}
        loss, grad = call(x, target, weight, reduction="mean", label_smoothing=ls,
                          return_grad=True, **kw)
        tgt = target.astype(np.float64) if target.dtype.kind != "i" else target
        rl, rg = _ref(focal_reference, x64, tgt,
                      None if weight is None else torch.from_numpy(weight), -100, "mean",
                      gamma, ls, eps)
        _close(loss, rl, dtype, f"loss ls={ls}")
        _close(grad, rg, dtype, f"grad ls={ls}")


def test_grad_output_for_none(backend):
    x, x64 = _data((5, 4), np.float64)
    t = _index_target(x)
    go = np.random.default_rng(2).standard_normal(5)
    _, grad = xent.focal_loss(x, t, reduction="none", grad_output=go, return_grad=True)
    _, rg = _ref(focal_reference, x64, t, None, -100, "none", 2.0, grad_output=go)
    _close(grad, rg, np.dtype(np.float64))


@pytest.mark.parametrize("labels", ["one_hot", "soft", "smoothed"])
def test_poly1_matches_optax_formula(backend, labels):
    x, x64 = _data((8, 6), np.float64, seed=5)
    t = _index_target(x, ignore=False)
    onehot = np.eye(6)[t]
    if labels == "one_hot":
        target, y, ls = t, onehot, 0.0
    elif labels == "soft":
        y = np.random.default_rng(6).dirichlet(np.ones(6), 8)
        target, ls = y, 0.0
    else:  # optax.smooth_labels(one_hot, 0.1) = (1 - 0.1)·one_hot + 0.1/C
        target, ls, y = t, 0.1, 0.9 * onehot + 0.1 / 6
    loss, grad = xent.poly1_cross_entropy(x, target, label_smoothing=ls, epsilon=2.0,
                                          return_grad=True)
    rl, rg = _ref(lambda z, yy: optax_poly1(z, yy, 2.0).mean(), x64, y)
    _close(loss, rl, np.dtype(np.float64))
    _close(grad, rg, np.dtype(np.float64))


def test_poly1_weight_multiplies_each_term(backend):
    """The weighted form: w_t·(CE + ε(1 - p_t)), mean over Σ w_t; uniform weights change
    nothing."""
    x, x64 = _data((9, 4), np.float64, seed=7)
    t = _index_target(x)
    w = np.array([0.2, 1.0, 3.0, 0.7])

    def weighted(z, tt, ww):
        valid = tt != -100
        ts = torch.where(valid, tt, 0)
        lp = torch.log_softmax(z, 1).gather(1, ts[:, None])[:, 0]
        wt = ww[ts] * valid
        return (wt * (-lp + 2.0 * (1 - lp.exp()))).sum() / wt.sum()

    loss, grad = xent.poly1_cross_entropy(x, t, w, epsilon=2.0, return_grad=True)
    rl, rg = _ref(weighted, x64, t, torch.from_numpy(w))
    _close(loss, rl, np.dtype(np.float64))
    _close(grad, rg, np.dtype(np.float64))
    uniform = xent.poly1_cross_entropy(x, t, np.full(4, 3.0), epsilon=2.0)
    np.testing.assert_allclose(uniform, xent.poly1_cross_entropy(x, t, epsilon=2.0), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gamma_zero_and_epsilon_zero_are_cross_entropy_exactly(backend, dtype):
    x, _ = _data((6, 5, 2), dtype)
    t = _index_target(x)
    w = np.linspace(0.5, 2.0, 5)
    for reduction in ("none", "mean"):
        ce = xent.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1,
                                return_grad=True)
        fl = xent.focal_loss(x, t, w, reduction=reduction, gamma=0.0, label_smoothing=0.1,
                             return_grad=True)
        pl = xent.poly1_cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1,
                                      epsilon=0.0, return_grad=True)
        for a, b in zip(ce, fl, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(ce, pl, strict=True):
            np.testing.assert_array_equal(a, b)
    xs = torch.from_numpy(_data((6, 5), np.float32)[0])
    ts = torch.from_numpy(_index_target(xs.numpy()))
    assert torch.equal(xt.focal_loss(xs, ts, gamma=0.0), xt.cross_entropy(xs, ts))
    assert torch.equal(xt.poly1_cross_entropy(xs, ts, epsilon=0.0), xt.cross_entropy(xs, ts))


def test_gamma_zero_close_to_cross_entropy_by_continuity(backend):
    x, _ = _data((6, 5), np.float64)
    t = _index_target(x)
    np.testing.assert_allclose(xent.focal_loss(x, t, gamma=1e-12),
                               xent.cross_entropy(x, t), rtol=1e-9)


def test_edges(backend):
    x = np.array([[0.0, -np.inf, 1.0], [np.inf, 0.0, 0.0], [1.0, 2.0, np.nan], [1.0, 2.0, 3.0]])
    t = np.array([0, 1, 2, -100])
    loss, grad = xent.focal_loss(x, t, reduction="none", return_grad=True)
    rl, rg = _ref(focal_reference, np.where(np.isinf(x[:1]), -1e300, x[:1]), t[:1], None, -100,
                  "none", 2.0)
    np.testing.assert_allclose(loss[0], rl[0], rtol=1e-12)  # a -inf class: probability 0
    np.testing.assert_allclose(grad[0], rg[0], rtol=1e-12, atol=1e-300)
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isnan(grad[1:3]).all()
    assert loss[3] == 0 and (grad[3] == 0).all()
    # target at a -inf logit: infinite loss, as cross_entropy
    assert xent.focal_loss([[0.0, -np.inf]], [1], reduction="sum") == np.inf
    # everything ignored: nan mean, 0 sum, zero gradient; empty batch likewise
    for reduction, want in (("mean", np.nan), ("sum", 0.0)):
        for xs, ts in ((x[:2], np.array([-100, -100])), (np.zeros((0, 3)), np.zeros(0, int))):
            for fn in (xent.focal_loss, xent.poly1_cross_entropy):
                loss, grad = fn(xs, ts, reduction=reduction, return_grad=True)
                np.testing.assert_equal(loss, want)
                assert (grad == 0).all()
    assert xent.focal_loss(np.zeros((0, 3)), np.zeros(0, int), reduction="none").shape == (0,)


def test_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got -1"):
        xent.focal_loss(x, [0, 1], gamma=-1)
    with pytest.raises(ValueError, match="epsilon must be a finite number"):
        xent.poly1_cross_entropy(x, [0, 1], epsilon=float("nan"))
    with pytest.raises(TypeError, match="gamma must be a real number"):
        xent.focal_loss(x, [0, 1], gamma="2")
    with pytest.raises(IndexError, match="target 3 at position"):
        xent.focal_loss(x, [0, 3])
    with pytest.raises(ValueError, match="reduction="):
        xent.poly1_cross_entropy(x, [0, 1], reduction="avg")
    with pytest.raises(ValueError, match="target size"):
        xent.sigmoid_focal_loss(x, np.zeros(3))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        xent.sigmoid_focal_loss(x, x, alpha=None)
    with pytest.raises(ValueError, match="gamma must be"):
        xt.focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), gamma=-0.5)
    with pytest.raises(IndexError, match="out of bounds"):
        xt.poly1_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 5]))


# -- sigmoid focal ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_against_torchvision(backend, dtype, reduction):
    x, x64 = _data((6, 7), dtype, seed=9)
    y = (np.random.default_rng(10).random((6, 7)) > 0.6).astype(np.float64)
    for alpha, gamma in ((0.25, 2.0), (-1.0, 2.0), (0.6, 0.5), (0.25, 0.0), (-1, 0.0)):
        loss, grad = xent.sigmoid_focal_loss(x, y, alpha, gamma, reduction, return_grad=True)
        rl, rg = _ref(torchvision_sigmoid_focal, x64, y, alpha, gamma, reduction)
        _close(loss, rl, dtype, f"loss alpha={alpha} gamma={gamma}")
        _close(grad, rg, dtype, f"grad alpha={alpha} gamma={gamma}")


def test_sigmoid_focal_gamma_zero_is_weighted_bce(backend):
    x, _ = _data((4, 5), np.float64)
    y = (x > 0.3).astype(np.float64)
    at = 0.3 * y + 0.7 * (1 - y)
    np.testing.assert_allclose(
        xent.sigmoid_focal_loss(x, y, 0.3, 0.0),
        at * xent.binary_cross_entropy_with_logits(x, y, reduction="none"), rtol=1e-14)


def test_sigmoid_focal_large_and_infinite_logits(backend):
    """Large logits are exact; infinite ones give what torchvision's formula gives (PyTorch's
    BCE-with-logits arithmetic: inf where wrong at +inf, nan at (+inf, 1) and (-inf, 0))."""
    x = np.array([[1e4, -1e4, 50.0, -50.0, np.inf, -np.inf, np.inf, -np.inf]])
    y = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]])
    loss, grad = xent.sigmoid_focal_loss(x, y, return_grad=True)
    rl, rg = _ref(torchvision_sigmoid_focal, x, y)
    np.testing.assert_allclose(loss, rl, rtol=1e-12)
    np.testing.assert_allclose(grad[:, :4], rg[:, :4], rtol=1e-12, atol=1e-300)
    assert xent.sigmoid_focal_loss(np.zeros(0), np.zeros(0), reduction="sum") == 0
    assert np.isnan(xent.sigmoid_focal_loss(np.zeros(0), np.zeros(0), reduction="mean"))


# -- xent.torch ------------------------------------------------------------------------------------

TORCH_DT = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("route", ["core", "composed"])
def test_torch_drop_ins(dtype, route):
    x, x64 = _data((5, 4, 3), dtype, seed=11)
    t = _index_target(x)
    w = np.linspace(0.5, 2.0, 4)
    td = TORCH_DT[dtype.name]
    cases = [
        (xt.focal_loss, {"gamma": 2.0}, {"gamma": 2.0}),
        (xt.poly1_cross_entropy, {"epsilon": 1.5, "label_smoothing": 0.1},
         {"gamma": 0.0, "epsilon": 1.5, "ls": 0.1}),
    ]
    for fn, kw, rkw in cases:
        xin = torch.tensor(x64, dtype=td, requires_grad=True)
        wt = torch.tensor(w, dtype=td)
        if route == "composed":  # a weight requiring grad: the kernels cannot take the call
            wt.requires_grad_(True)
        loss = fn(xin, torch.from_numpy(t), wt, reduction="mean", **kw)
        loss.backward()
        rl, rg = _ref(focal_reference, x64, t, torch.from_numpy(w), -100, "mean",
                      rkw["gamma"], rkw.get("ls", 0.0), rkw.get("epsilon", 0.0))
        assert loss.dtype == td and xin.grad.dtype == td
        _close(loss.detach().double().numpy().astype(dtype), rl, dtype, f"{fn.__name__} loss")
        _close(xin.grad.double().numpy().astype(dtype), rg, dtype, f"{fn.__name__} grad")
    y = (np.random.default_rng(3).random(x.shape) > 0.5).astype(np.float64)
    xin = torch.tensor(x64, dtype=td, requires_grad=True)
    yt = torch.tensor(y, dtype=td)
    if route == "composed":
        with torch.autograd.forward_ad.dual_level():  # tracing: the composed route
            loss = xt.sigmoid_focal_loss(xin, yt, 0.25, 2.0, "sum")
    else:
        loss = xt.sigmoid_focal_loss(xin, yt, 0.25, 2.0, "sum")
    loss.backward()
    rl, rg = _ref(torchvision_sigmoid_focal, x64, y, 0.25, 2.0, "sum")
    _close(loss.detach().double().numpy().astype(dtype), rl, dtype, "sigmoid loss")
    _close(xin.grad.double().numpy().astype(dtype), rg, dtype, "sigmoid grad")


def test_torch_probability_targets_none_reduction_and_modules():
    x, x64 = _data((4, 5, 2), np.float32, seed=12)
    y = np.random.default_rng(5).dirichlet(np.ones(5), (4, 2)).transpose(0, 2, 1).copy()
    xin = torch.from_numpy(x.copy()).requires_grad_(True)
    go = torch.linspace(0.5, 1.5, 8, dtype=torch.float32).reshape(4, 2)
    loss = xt.FocalLoss(gamma=1.0, reduction="none")(xin, torch.from_numpy(y.astype(np.float32)))
    loss.backward(go)
    rl, rg = _ref(focal_reference, x64, y, None, -100, "none", 1.0,
                  grad_output=go.double().numpy())
    _close(loss.detach().numpy(), rl, np.dtype(np.float32))
    _close(xin.grad.numpy(), rg, np.dtype(np.float32))
    t = torch.from_numpy(_index_target(x))
    m = xt.Poly1CrossEntropyLoss(epsilon=3.0, ignore_index=-100)
    assert torch.allclose(m(xin, t), xt.poly1_cross_entropy(xin, t, epsilon=3.0))
    s = xt.SigmoidFocalLoss(alpha=0.5, gamma=1.0, reduction="mean")
    yy = (xin > 0).float().detach()
    assert torch.allclose(s(xin, yy), xt.sigmoid_focal_loss(xin, yy, 0.5, 1.0, "mean"))
    assert "gamma=1.0" in repr(s)


def test_torch_compile_fullgraph():
    x = torch.randn(6, 5, 3, requires_grad=True)
    t = torch.randint(0, 5, (6, 3))
    y = (torch.rand(6, 5, 3) > 0.5).float()

    def f(x):
        return (xt.focal_loss(x, t, gamma=2.0) + xt.poly1_cross_entropy(x, t, epsilon=2.0)
                + xt.sigmoid_focal_loss(x, y, reduction="mean"))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (g,) = torch.autograd.grad(loss, x)
    loss_e = f(x)
    (ge,) = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g, ge)


def test_opcheck():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 4, -100, 2])
    w = torch.rand(5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.xent.focal_loss.default,
                          (x, t, w, -100, "mean", 0.1, 2.0, 0.0, True))
    torch.library.opcheck(torch.ops.xent.focal_loss.default,
                          (x, t, None, -100, "none", 0.0, 0.0, 1.0, True))
    y = torch.rand(4, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.xent.sigmoid_focal_loss.default,
                          (x, y, 0.25, 2.0, "none", True))
    torch.library.opcheck(torch.ops.xent.sigmoid_focal_loss.default,
                          (x.detach(), y, -1.0, 0.5, "sum", False))


def test_double_backward_through_composed_form():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 4, 1, 2])
    (g,) = torch.autograd.grad(xt.focal_loss(x, t), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    xr = x.detach().requires_grad_(True)
    (gr,) = torch.autograd.grad(focal_reference(xr, t), xr, create_graph=True)
    (ggr,) = torch.autograd.grad(gr.sum(), xr)
    torch.testing.assert_close(gg, ggr)
