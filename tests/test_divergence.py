"""kl_div, generalized_jsd and gather_log_probs: the NumPy core (both backends), the row
function `jsd_rows`, the torch drop-ins on each route, the custom operators under
torch.compile(fullgraph=True) / torch.export / opcheck, and PyTorch's OpInfo / ModuleInfo
inputs for kl_div / KLDivLoss.

Expected values: TRL's own ``GKDTrainer.generalized_jsd_loss`` in float64, the JSD written
here again in float64 PyTorch ops (`_jsd_ref`: through ``F.kl_div``, as the paper writes it),
``F.kl_div`` and ``log_softmax(...).gather`` in float64; gradients by torch.autograd on them.
"""

from __future__ import annotations

import functools
import os
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt
from xent import _divergence
from xent.torch._route import Route, plan

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float64), np.dtype(np.float32), BF16, np.dtype(np.float16)]
# (rtol, atol) of a value computed in the dtype's compute precision against float64 truth on
# the same (rounded) inputs: float32 summing a few hundred terms, 16-bit outputs rounded once.
TOL = {np.dtype(np.float64): (1e-9, 1e-12), np.dtype(np.float32): (2e-5, 2e-7),
       BF16: (1.6e-2, 1e-5), np.dtype(np.float16): (2e-3, 1e-6)}
BETAS = [0.0, 0.3, 0.5, 1.0]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach()
        if a.dtype == torch.bfloat16:
            return a.float().numpy()
        return a.numpy()
    return np.asarray(a)


def _f64(a) -> np.ndarray:
    return _np(a).astype(np.float64)


def _close(actual, expected, dt, what: str, scale: float = 1.0) -> None:
    rtol, atol = TOL[np.dtype(dt)]
    a, e = _f64(actual), _f64(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} vs {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale, equal_nan=True,
                               err_msg=what)


# -- references ---------------------------------------------------------------------------------

@functools.cache
def _trl():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    return gkd.GKDTrainer.generalized_jsd_loss


def _jsd_ref(zs, zt, labels, beta, T, reduction, ignore_index=-100):
    """The generalized JSD in float64 torch ops, per position through F.kl_div (log_target),
    0·log 0 = 0 by masking the p = 0 classes."""
    lps = torch.log_softmax(zs / T, -1)
    lpt = torch.log_softmax(zt / T, -1)

    def kl(lp, lq):  # KL(p || q) per position
        # p = 0: exp(-1e4)·(finite) = 0 exactly in float64, value and gradient (torch.where
        # over the -inf entries themselves would pass 0·inf = NaN to the gradient)
        zero = lp == -torch.inf
        lp = torch.where(zero, -1e4, lp)
        lq = torch.where(zero & (lq == -torch.inf), -1e4, lq)
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)

    if beta == 0:
        rows = kl(lpt, lps)
    elif beta == 1:
        rows = kl(lps, lpt)
    else:
        # (clamped: the logsumexp of two -inf has a NaN gradient; exp(-1e4) is 0 in float64)
        lm = torch.logsumexp(torch.stack([lps.clamp_min(-1e4) + np.log1p(-beta),
                                          lpt.clamp_min(-1e4) + np.log(beta)]), 0)
        rows = beta * kl(lpt, lm) + (1 - beta) * kl(lps, lm)
    keep = torch.ones(rows.shape, dtype=torch.bool) if labels is None else labels != ignore_index
    rows = torch.where(keep, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if reduction == "batchmean":
        return rows.sum() / keep.sum().clamp_min(1)
    return rows.sum() / (keep.sum() * zs.shape[-1])


def _logits(shape, dt, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dt)


def _ref_grads(fn, zs, zt, g=None):
    """fn's value and gradients for float64 copies of the (rounded) inputs."""
    s = torch.tensor(_f64(zs), requires_grad=True)
    t = torch.tensor(_f64(zt), requires_grad=True)
    out = fn(s, t)
    gs, gt = torch.autograd.grad(out, (s, t), torch.ones_like(out) if g is None else g)
    return out.detach(), gs, gt


# -- generalized_jsd: the core ------------------------------------------------------------------

@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_jsd_matches_trl(backend, beta, T, reduction):
    """Value and both gradients against TRL's generalized_jsd_loss itself, float64, with
    labels (ignore_index -100); TRL's 'none' is elementwise, summed over classes here."""
    trl = _trl()
    zs, zt = _logits((6, 37), np.float64, 1), _logits((6, 37), np.float64, 2)
    labels = np.array([3, -100, 0, 5, -100, 1])
    s = torch.tensor(zs, requires_grad=True)
    t = torch.tensor(zt, requires_grad=True)
    ref = trl(s, t, torch.tensor(labels), beta=beta, temperature=T,
              reduction="sum" if reduction == "none" else reduction)
    gs_ref, gt_ref = torch.autograd.grad(ref, (s, t))
    loss, gs, gt = xent.generalized_jsd(zs, zt, labels, beta=beta, temperature=T,
                                        reduction=reduction, return_grad=True)
    if reduction == "none":
        loss = loss.sum()
        gs, gt = gs, gt  # grad_output of ones: the gradient of the sum
    _close(loss, ref, np.float64, "loss")
    _close(gs, gs_ref, np.float64, "grad student")
    _close(gt, gt_ref, np.float64, "grad teacher")


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", [(5, 300), (2, 3, 40), (40, 2048)], ids=str)
def test_jsd_dtypes(backend, dt, beta, shape):
    """Every dtype (16-bit computed in float32), both backends (the (40, 2048) shape runs the
    kernel under 'auto' too): against the float64 composition on the rounded inputs, with
    reduction='none' and a non-trivial grad_output."""
    zs, zt = _logits(shape, dt, 3), _logits(shape, dt, 4)
    g = np.linspace(-1.0, 2.0, int(np.prod(shape[:-1]))).reshape(shape[:-1])
    ref, gs_ref, gt_ref = _ref_grads(
        lambda s, t: _jsd_ref(s, t, None, beta, 1.5, "none"), zs, zt, torch.tensor(g))
    loss, gs, gt = xent.generalized_jsd(zs, zt, beta=beta, temperature=1.5, reduction="none",
                                        return_grad=True, grad_output=g)
    assert loss.dtype == dt and gs.dtype == dt and gt.dtype == dt
    _close(loss, ref, dt, "loss")
    _close(gs, gs_ref, dt, "grad student", scale=10)
    _close(gt, gt_ref, dt, "grad teacher", scale=10)
    total = xent.generalized_jsd(zs, zt, beta=beta, temperature=1.5)
    _close(total, ref.sum() / ref.numel(), dt, "batchmean")


def test_jsd_rows_interface(backend):
    """jsd_rows(student, teacher, beta, temperature, need_s, need_t) -> (rows, gs, gt):
    unreduced rows and d row / d z, in each input's dtype; mixed input dtypes."""
    zs = _logits((4, 50), np.float32, 5)
    zt = _logits((4, 50), np.float64, 6)
    rows, gs, gt = _divergence.jsd_rows(zs, zt, 0.4, 2.0, True, False)
    assert gt is None and gs.dtype == np.float32 and rows.dtype == np.float64
    ref, gs_ref, _ = _ref_grads(lambda s, t: _jsd_ref(s, t, None, 0.4, 2.0, "none"), zs, zt)
    _close(rows, ref, np.float32, "rows")
    _close(gs, gs_ref, np.float32, "grad")
    rows16, gs16, gt16 = _divergence.jsd_rows(zs.astype(BF16), zt.astype(BF16), 1.0, 1.0,
                                              False, True)
    assert rows16.dtype == np.float32 and gs16 is None and gt16.dtype == BF16


def test_jsd_edge_rows(backend):
    """-inf logits (classes of zero probability: 0·log 0 = 0), rows with NaN / +inf / all -inf
    (NaN), all rows ignored (0 and zero gradients), empty input: the same on both backends
    and the same as the float64 composition where it is defined."""
    zs = _logits((6, 9), np.float64, 7)
    zt = _logits((6, 9), np.float64, 8)
    zs[0, 2] = zt[0, 2] = -np.inf  # both 0 there
    zt[1, :4] = -np.inf  # teacher 0 on some classes
    zs[2, 5] = np.nan
    zt[3, 1] = np.inf
    zs[4, :] = -np.inf
    for beta in BETAS:
        rows, gs, gt = xent.generalized_jsd(zs, zt, beta=beta, reduction="none",
                                            return_grad=True)
        assert np.isnan(rows[2:5]).all() and np.isnan(gs[2:5]).all() and np.isnan(gt[2:5]).all()
        ref, gs_ref, gt_ref = _ref_grads(
            lambda s, t, b=beta: _jsd_ref(s, t, None, b, 1.0, "none"), zs[[0, 1, 5]],
            zt[[0, 1, 5]])
        _close(rows[[0, 1, 5]], ref, np.float64, f"beta={beta}")
        _close(gs[[0, 1, 5]], gs_ref, np.float64, f"beta={beta} grad student")
        if beta != 1.0:  # (KL(p_s||p_t) with p_t = 0 where p_s > 0 is +inf: its grad is NaN)
            _close(gt[[0, 1, 5]], gt_ref, np.float64, f"beta={beta} grad teacher")
    rows = xent.generalized_jsd(zs[1:2], zt[1:2], beta=1.0, reduction="none")
    assert rows[0] == np.inf  # KL(p_s || p_t), p_t = 0 where p_s > 0
    labels = np.full(6, -100)
    loss, gs, gt = xent.generalized_jsd(zs, zt, labels, return_grad=True)
    assert loss == 0 and not gs.any() and not gt.any()  # TRL's clamp_min(1): 0, not 0/0
    empty = np.zeros((0, 5), np.float32)
    loss, gs, gt = xent.generalized_jsd(empty, empty, return_grad=True)
    assert loss == 0 and gs.shape == (0, 5)
    assert np.isnan(xent.generalized_jsd(empty, empty, reduction="mean"))
    assert xent.generalized_jsd(np.zeros((3, 0)), np.zeros((3, 0)), reduction="sum") == 0


def test_jsd_same_at_every_size(backend):
    """A row's divergence does not depend on the batch around it (NumPy below the kernels'
    threshold, kernels above)."""
    zs, zt = _logits((64, 2048), np.float32, 9), _logits((64, 2048), np.float32, 10)
    big = xent.generalized_jsd(zs, zt, reduction="none")
    small = xent.generalized_jsd(zs[:2], zt[:2], reduction="none")
    np.testing.assert_allclose(big[:2], small, rtol=2e-6)


def test_jsd_errors():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="beta must be in"):
        xent.generalized_jsd(z, z, beta=1.5)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        xent.generalized_jsd(z, z, temperature=0)
    with pytest.raises(ValueError, match="reduction="):
        xent.generalized_jsd(z, z, reduction="avg")
    with pytest.raises(ValueError, match="teacher_logits must have the shape"):
        xent.generalized_jsd(z, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="target must have the shape"):
        xent.generalized_jsd(z, z, np.zeros(3, int))
    with pytest.raises(TypeError, match="integer class ids"):
        xent.generalized_jsd(z, z, np.zeros(2))
    with pytest.raises(TypeError, match="return_grad"):
        xent.generalized_jsd(z, z, return_grad=1)


def test_vlog_accuracy():
    """The kernel's vectorised log against float64 NumPy: <= 2 ulp (float32), ~1 ulp
    (float64), subnormals included; log 0 = -inf, log NaN = NaN."""
    _jsd = pytest.importorskip("xent._kernels._jsd")
    x = np.concatenate([np.logspace(-44, 0, 20001), [0.0, np.nan, 1e-45, 0.7071, 1.4142]])
    for dt, ulps in ((np.float32, 2.0), (np.float64, 2.0)):
        xx = x.astype(dt)
        out = _jsd.vlog_array(xx, np.empty_like(xx))
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = np.log(xx.astype(np.longdouble))
        finite = np.isfinite(ref)
        err = np.abs(out[finite] - ref[finite]) / np.spacing(np.abs(ref[finite]).astype(dt))
        assert err.max() <= ulps, (dt, err.max())
        assert out[-5] == -np.inf and np.isnan(out[-4])


# -- generalized_jsd: xent.torch ----------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_torch_jsd_matches_trl(beta, teacher_grad):
    """The drop-in (Route.CORE) against TRL's function on the same float64 tensors, (B, L, V)
    with labels, both gradients."""
    trl = _trl()
    zs = torch.tensor(_logits((2, 5, 40), np.float64, 11), requires_grad=True)
    zt = torch.tensor(_logits((2, 5, 40), np.float64, 12), requires_grad=teacher_grad)
    labels = torch.tensor([[1, 2, -100, 3, 4], [-100, -100, 5, 6, 7]])
    ref = trl(zs, zt, labels, beta=beta, temperature=2.0)
    ins = (zs, zt) if teacher_grad else (zs,)
    want = torch.autograd.grad(ref * 1.7, ins)
    ours = xt.generalized_jsd(zs, zt, labels, beta=beta, temperature=2.0)
    got = torch.autograd.grad(ours * 1.7, ins)
    _close(ours, ref, np.float64, "loss")
    for a, b in zip(got, want, strict=True):
        _close(a, b, np.float64, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_torch_jsd_dtypes_and_none(dtype):
    zs = torch.tensor(_logits((6, 50), np.float32, 13)).to(dtype).requires_grad_()
    zt = torch.tensor(_logits((6, 50), np.float32, 14)).to(dtype)
    g = torch.linspace(-1, 1, 6)
    out = xt.generalized_jsd(zs, zt, reduction="none", beta=0.3)
    (gs,) = torch.autograd.grad(out, zs, g.to(dtype))
    ref, gs_ref, _ = _ref_grads(lambda s, t: _jsd_ref(s, t, None, 0.3, 1.0, "none"), zs, zt,
                                g.double())
    dt = {torch.float32: np.dtype(np.float32), torch.bfloat16: BF16,
          torch.float16: np.dtype(np.float16)}[dtype]
    assert out.dtype == dtype and gs.dtype == dtype
    _close(out, ref, dt, "loss")
    _close(gs, gs_ref, dt, "grad", scale=10)


def test_torch_jsd_composed_route():
    """A teacher of another dtype that requires grad: Route.COMPOSED, the same values."""
    zs = torch.tensor(_logits((4, 30), np.float32, 15), requires_grad=True)
    zt = torch.tensor(_logits((4, 30), np.float64, 16), requires_grad=True)
    out = xt.generalized_jsd(zs, zt, torch.tensor([1, -100, 2, 3]))
    gs, gt = torch.autograd.grad(out, (zs, zt))
    ref, gs_ref, gt_ref = _ref_grads(
        lambda s, t: _jsd_ref(s, t, torch.tensor([1, -100, 2, 3]), 0.5, 1.0, "batchmean"),
        zs, zt)
    _close(out, ref, np.float32, "loss")
    _close(gs, gs_ref, np.float32, "grad s")
    _close(gt, gt_ref, np.float32, "grad t")


def test_torch_jsd_double_backward():
    zs = torch.tensor(_logits((3, 8), np.float64, 17), requires_grad=True)
    zt = torch.tensor(_logits((3, 8), np.float64, 18))
    torch.autograd.gradgradcheck(lambda s: xt.generalized_jsd(s, zt, beta=0.2), (zs,))
    torch.autograd.gradcheck(lambda s, t: xt.generalized_jsd(s, t, beta=0.7),
                             (zs, zt.clone().requires_grad_()))


def test_torch_jsd_compile_and_export():
    zs = torch.tensor(_logits((8, 64), np.float32, 19), requires_grad=True)
    zt = torch.tensor(_logits((8, 64), np.float32, 20))
    labels = torch.tensor([1, 2, -100, 3, 4, 5, -100, 6])

    def f(s, t, y):
        return xt.generalized_jsd(s, t, y, beta=0.4, temperature=1.3)

    eager = f(zs, zt, labels)
    (ge,) = torch.autograd.grad(eager, zs)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(zs, zt, labels)
    (gc,) = torch.autograd.grad(out, zs)
    _close(out, eager, np.float32, "compiled")
    _close(gc, ge, np.float32, "compiled grad")

    class M(torch.nn.Module):
        def forward(self, s, t, y):
            return f(s, t, y)

    ep = torch.export.export(M(), (zs.detach(), zt, labels))
    assert "xent.generalized_jsd" in str(ep.graph)
    _close(ep.module()(zs.detach(), zt, labels), eager, np.float32, "exported")


def test_opcheck_jsd():
    zs = torch.tensor(_logits((4, 16), np.float32, 21), requires_grad=True)
    zt = torch.tensor(_logits((4, 16), np.float32, 22), requires_grad=True)
    for args in [(zs, zt, torch.tensor([1, -100, 2, 3]), 0.5, 1.0, -100, "batchmean", True,
                  True),
                 (zs, zt, None, 0.0, 2.0, -100, "none", True, False),
                 (zs, zt, None, 1.0, 1.0, -100, "sum", False, True)]:
        torch.library.opcheck(torch.ops.xent.generalized_jsd.default, args)


# -- gather_log_probs ---------------------------------------------------------------------------

def _gather_ref(x, idx, T, cap):
    z = x if cap is None else cap * torch.tanh(x / cap)
    return torch.log_softmax(z / T, -1).gather(-1, idx)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("T,cap", [(1.0, None), (0.7, None), (1.5, 4.0)])
def test_gather_log_probs(dt, T, cap):
    x = _logits((3, 4, 30), dt, 23)
    idx = np.random.default_rng(0).integers(0, 30, (3, 4, 5))
    g = np.linspace(-1, 1, idx.size).reshape(idx.shape)
    out, grad = xent.gather_log_probs(x, idx, temperature=T, softcap=cap, return_grad=True,
                                      grad_output=g)
    xr = torch.tensor(_f64(x), requires_grad=True)
    ref = _gather_ref(xr, torch.tensor(idx), T, cap)
    (gref,) = torch.autograd.grad(ref, xr, torch.tensor(g))
    assert out.dtype == dt and grad.dtype == dt
    _close(out, ref, dt, "values", scale=10)
    _close(grad, gref, dt, "grad", scale=10)


def test_gather_log_probs_edges():
    x = np.array([[0.0, -np.inf, 1.0], [np.nan, 0.0, 0.0], [-np.inf] * 3])
    out = xent.gather_log_probs(x, np.array([[1, 2], [0, 1], [0, 2]]))
    assert out[0, 0] == -np.inf and np.isnan(out[1:]).all()
    assert xent.gather_log_probs(np.zeros((2, 3)), np.zeros((2, 0), int)).shape == (2, 0)
    with pytest.raises(IndexError, match=r"index 3 at position \(1, 0\) is out of bounds for 3"):
        xent.gather_log_probs(np.zeros((2, 3)), np.array([[0], [3]]))
    with pytest.raises(IndexError, match="index -1"):
        xent.gather_log_probs(np.zeros((2, 3)), np.array([[0], [-1]]))
    with pytest.raises(ValueError, match="index must have shape"):
        xent.gather_log_probs(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(TypeError, match="integer class ids"):
        xent.gather_log_probs(np.zeros((2, 3)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="temperature"):
        xent.gather_log_probs(np.zeros((2, 3)), np.zeros((2, 1), int), temperature=-1)


def test_torch_gather_log_probs_routes():
    x = torch.tensor(_logits((5, 40), np.float32, 24), requires_grad=True)
    idx = torch.tensor(np.random.default_rng(1).integers(0, 40, (5, 3)))
    g = torch.linspace(-1, 2, 15).reshape(5, 3)
    ref = _gather_ref(x.double(), idx, 1.3, 5.0)
    (gref,) = torch.autograd.grad(ref, x, g.double())
    out = xt.gather_log_probs(x, idx, temperature=1.3, softcap=5.0)
    (gx,) = torch.autograd.grad(out, x, g)
    _close(out, ref, np.float32, "core")
    _close(gx, gref, np.float32, "core grad")
    compiled = torch.compile(lambda a, b: xt.gather_log_probs(a, b, temperature=1.3,
                                                              softcap=5.0), fullgraph=True)
    out = compiled(x, idx)
    (gx,) = torch.autograd.grad(out, x, g)
    _close(out, ref, np.float32, "compiled")
    _close(gx, gref, np.float32, "compiled grad")
    torch.library.opcheck(torch.ops.xent.gather_log_probs.default, (x, idx, 1.3, 5.0))
    torch.library.opcheck(torch.ops.xent.gather_log_probs_backward.default,
                          (g, x.detach(), idx, 1.3, None))
    torch.autograd.gradgradcheck(lambda a: xt.gather_log_probs(a, idx[:2, :2]),
                                 (x.detach().double()[:2].requires_grad_(),))
    with pytest.raises(IndexError, match="out of bounds"):
        xt.gather_log_probs(x, idx + 40)


# -- kl_div ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_kl_div_core(log_target, reduction):
    """Values and both gradients against F.kl_div, with broadcasting, zero targets and a
    non-trivial grad_output."""
    rng = np.random.default_rng(2)
    x = np.log(rng.dirichlet(np.ones(6), size=(4,)))
    y = rng.dirichlet(np.ones(6), size=(1,))
    y[0, 2] = 0.0
    if log_target:
        y = np.log(y + 0.1)
    xr = torch.tensor(x, requires_grad=True)
    yr = torch.tensor(y, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = F.kl_div(xr, yr, reduction=reduction, log_target=log_target)
    g = torch.linspace(-1, 2, ref.numel()).reshape(ref.shape).double()
    gx_ref, gy_ref = torch.autograd.grad(ref, (xr, yr), g)
    ctx = pytest.warns(UserWarning, match="batchmean") if reduction == "mean" else (
        warnings.catch_warnings())
    with ctx:
        loss, gx, gy = xent.kl_div(x, y, reduction, log_target, return_grad=True,
                                   grad_output=g.numpy())
    _close(loss, ref, np.float64, "loss")
    _close(gx, gx_ref, np.float64, "grad input")
    _close(gy, gy_ref, np.float64, "grad target")


def test_kl_div_edges():
    x = np.array([0.5, -1.0, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = xent.kl_div(x, np.array([0.0, 0.5, -0.1]), "none")
    assert out[0] == 0 and np.isnan(out[2])  # 0·log 0 = 0; log of a negative target
    assert np.isnan(xent.kl_div(x, np.array([-np.inf, 0, 0]), "none", True)[0])  # as torch
    with pytest.raises(ValueError, match="cannot be broadcast"):
        xent.kl_div(np.zeros((2, 3)), np.zeros((2, 4)), "sum")
    with pytest.raises(ValueError, match="reduction="):
        xent.kl_div(x, x, "avg")
    assert xent.kl_div(np.zeros((0, 3)), np.zeros((0, 3)), "sum") == 0


@pytest.mark.parametrize("route_size", [0, 1 << 30], ids=["core", "torch"])
def test_torch_kl_div_routes(route_size):
    rng = np.random.default_rng(3)
    x = torch.tensor(np.log(rng.dirichlet(np.ones(5), size=3)), requires_grad=True)
    y = torch.tensor(rng.dirichlet(np.ones(5), size=3), requires_grad=True)
    with xt.min_elements(route_size):
        for kw in ({"reduction": "batchmean"}, {"reduction": "none", "log_target": True},
                   {"size_average": False}, {"reduce": False}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = F.kl_div(x, y, **kw)
                out = xt.kl_div(x, y, **kw)
            g = torch.linspace(-1, 2, ref.numel()).reshape(ref.shape).double()
            _close(out, ref, np.float64, str(kw))
            for a, b in zip(torch.autograd.grad(out, (x, y), g),
                            torch.autograd.grad(ref, (x, y), g), strict=True):
                _close(a, b, np.float64, f"{kw} grad")
        with pytest.warns(UserWarning, match="batchmean"):
            xt.kl_div(x, y)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            xt.kl_div(x, y, size_average=True)  # legacy: PyTorch's deprecation, not 'mean''s
        assert seen and not any("batchmean" in str(w.message) for w in seen)
        torch.autograd.gradgradcheck(lambda a, b: xt.kl_div(a, b, reduction="sum"), (x, y))


def test_torch_kl_div_compile():
    x = torch.randn(4, 5, dtype=torch.float64).log_softmax(-1).requires_grad_()
    y = torch.randn(4, 5, dtype=torch.float64).softmax(-1)
    with xt.min_elements(0):
        out = torch.compile(lambda a, b: xt.kl_div(a, b, reduction="batchmean"),
                            fullgraph=True)(x, y)
    _close(out, F.kl_div(x, y, reduction="batchmean"), np.float64, "compiled")


# PyTorch's OpInfo and ModuleInfo inputs, through xent's path (min_elements(0)).
def _opinfo_samples(dtype):
    pytest.importorskip("expecttest")
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(o for o in op_db if o.name == "nn.functional.kl_div")
    torch.manual_seed(0)
    return list(op.sample_inputs("cpu", dtype, requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_kl_div_opinfo(dtype, layout):
    samples = _opinfo_samples(dtype)
    assert samples
    for s in samples:
        s = s.noncontiguous() if layout == "noncontiguous" else s
        ins = [t for t in (s.input, *s.args) if t.requires_grad]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = F.kl_div(s.input, *s.args, **s.kwargs)
            with xt.min_elements(0):
                out = xt.kl_div(s.input, *s.args, **s.kwargs)
                # (xent's own path: the core, both gradients from it)
                assert plan(s.input, params=(s.args[0],), custom_op=False) is Route.CORE
        torch.testing.assert_close(out, ref, equal_nan=True)
        g = torch.linspace(-1.5, 2.0, max(ref.numel(), 1), dtype=dtype)[:ref.numel()]
        g = g.reshape(ref.shape)
        for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g),
                        strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)
        # the NumPy function on the same values
        x, y = s.input.detach().numpy(), s.args[0].detach().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            npout = xent.kl_div(x, y, **s.kwargs)
        torch.testing.assert_close(torch.tensor(np.asarray(npout)), ref.detach(),
                                   equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kldivloss_moduleinfo(dtype):
    pytest.importorskip("expecttest")
    from torch.testing._internal.common_modules import module_db

    info = next(m for m in module_db if m.module_cls is torch.nn.KLDivLoss)
    torch.manual_seed(0)
    inputs = list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                          training=True))
    assert inputs
    for mi in inputs:
        args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        theirs, ours = torch.nn.KLDivLoss(*args, **kwargs), xt.KLDivLoss(*args, **kwargs)
        fa = mi.forward_input.args
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = theirs(*fa)
            with xt.min_elements(0):
                out = ours(*fa)
        torch.testing.assert_close(out, ref, equal_nan=True)
        g = torch.ones_like(ref)
        for a, b in zip(torch.autograd.grad(out, fa, g), torch.autograd.grad(ref, fa, g),
                        strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)
