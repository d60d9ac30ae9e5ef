"""Issue 18, item 1: ``temperature``, ``return_entropy`` and ``return_argmax`` on the
cross-entropy family (the NumPy core on both backends, the torch drop-in on every route, the
linear and vocabulary-parallel forms), against float64 PyTorch compositions: ``log_softmax(z/T)``
and a gather for the loss, ``-Σ p log p`` for the entropy, ``torch.argmax`` of the logits."""

from __future__ import annotations

import itertools
import random
import traceback

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import xent
import xent.torch as xt
from helpers import run_on_gloo

DTYPES = {"float64": np.float64, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
          "float16": np.float16}
TOL = {"float64": 1e-9, "float32": 3e-5, "bfloat16": 3e-2, "float16": 4e-3}
OPTIONS = dict(weight=(False, True), ignore=(False, True), label_smoothing=(0.0, 0.15),
               lse_square_scale=(0.0, 1e-2), softcap=(None, 4.0), temperature=(1.0, 0.7, 2.5),
               prob=(False, True))
COMBOS = [dict(zip(OPTIONS, v, strict=True)) for v in itertools.product(*OPTIONS.values())]
SAMPLED = random.Random(18).sample(COMBOS, 10)


def _oracle(x, t, w, ignore_index, reduction, eps, zeta, cap, T, go, ge):
    """float64 PyTorch composition: loss, entropy, argmax, and d(go·loss + ge·H)/dx."""
    x = x.detach().double().requires_grad_(True)
    z = x if cap is None else cap * torch.tanh(x / cap)
    z = z / T
    ax = 1 if x.dim() >= 2 else 0
    loss = F.cross_entropy(z, t, w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=eps)
    lse = torch.logsumexp(z, ax)
    if zeta:
        valid = (torch.ones_like(lse, dtype=torch.bool) if t.is_floating_point()
                 else t != ignore_index)
        zl = torch.where(valid, zeta * lse * lse, 0.0)
        loss = loss + {"none": zl, "sum": zl.sum(), "mean": zl.sum() / valid.sum()}[reduction]
    logp = torch.log_softmax(z, ax)
    H = -(logp.exp() * logp).sum(ax)
    ((loss * go).sum() + (H * ge).sum()).backward()
    return loss.detach(), H.detach(), z.detach().argmax(ax), x.grad


def _case(opt, dt, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C = shape[0], shape[1]
    rest = shape[2:]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).numpy().astype(DTYPES[dt])
    if opt["prob"]:
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        t = t / t.sum(1, keepdim=True)
        ii = -100
    else:
        t = torch.randint(0, C, (N, *rest), generator=g)
        ii = 3 if opt["ignore"] else -100
        if opt["ignore"]:
            t.view(-1)[::3] = ii
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if opt["weight"] else None
    return x, t, w, ii


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("shape", [(6, 11), (3, 7, 4)], ids=["rows", "kdim"])
@pytest.mark.parametrize("opt", SAMPLED, ids=[str(i) for i in range(len(SAMPLED))])
def test_core_matches_float64_torch(backend, opt, shape, dt):
    x, t, w, ii = _case(opt, dt, shape)
    red = "none" if opt["prob"] else random.Random(str(opt)).choice(["none", "mean", "sum"])
    loss_shape = (shape[0], *shape[2:])
    g = torch.Generator().manual_seed(5)
    go = torch.rand(loss_shape if red == "none" else (), generator=g, dtype=torch.float64)
    ge = torch.randn(loss_shape, generator=g, dtype=torch.float64)
    xd = torch.from_numpy(x.astype(np.float64))
    ref = _oracle(xd, t, w, ii, red, opt["label_smoothing"], opt["lse_square_scale"],
                  opt["softcap"], opt["temperature"], go, ge)
    cdt = np.float64 if dt == "float64" else np.float32
    out = xent.cross_entropy(
        x, t.numpy(), None if w is None else w.numpy().astype(cdt), ii, red,
        opt["label_smoothing"], lse_square_scale=opt["lse_square_scale"],
        softcap=opt["softcap"], temperature=opt["temperature"], return_entropy=True,
        return_argmax=True, return_grad=True, grad_output=go.numpy(), grad_entropy=ge.numpy())
    loss, ent, top, grad = out
    tol = TOL[dt]
    for name, a, b in (("loss", loss, ref[0]), ("entropy", ent, ref[1]), ("grad", grad, ref[3])):
        a = np.asarray(a, np.float64)
        np.testing.assert_allclose(a, b.numpy(), rtol=tol, atol=tol * 4, err_msg=name)
    # argmax: torch.argmax of the float32 (here: the input's) logits after cap and temperature
    xz = torch.from_numpy(x.astype(np.float32)) if dt != "float64" else xd
    if opt["softcap"] is None and dt in ("float64", "float32"):
        np.testing.assert_array_equal(top, (xz / opt["temperature"]).argmax(1).numpy())
    else:  # capped: ties after rounding are possible, so compare where the max is unique
        np.testing.assert_array_equal(top, ref[2].numpy())
    assert top.dtype == np.int64 and grad.dtype == x.dtype


def test_core_outputs_order_and_defaults():
    x = np.array([[0.1, 1.0, 2.1], [2.0, 1.0, 0.1]])
    loss, lse, ent, top = xent.cross_entropy(x, [2, 0], return_lse=True, return_entropy=True,
                                             return_argmax=True, reduction="none")
    p = np.exp(x - lse[:, None])
    np.testing.assert_allclose(ent, -(p * np.log(p)).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(top, [2, 0])
    # temperature 1, no entropy gradient: the plain gradient
    g0 = xent.cross_entropy(x, [2, 0], return_grad=True)[1]
    g1 = xent.cross_entropy(x, [2, 0], return_entropy=True, return_grad=True)[2]
    np.testing.assert_allclose(g0, g1, rtol=1e-12)


def test_core_edges(backend):
    x = np.array([[0.0, 0.0, -np.inf], [np.nan, 1.0, 2.0], [-np.inf, -np.inf, -np.inf],
                  [1.0, np.inf, np.inf], [3.0, 3.0, 1.0]], np.float32)
    loss, ent, top = xent.cross_entropy(x, [0, -100, -100, -100, 1], reduction="none",
                                        return_entropy=True, return_argmax=True,
                                        temperature=0.5)
    xt_ = torch.from_numpy(x) / 0.5
    np.testing.assert_array_equal(top, xt_.argmax(1).numpy())  # NaN first, then +inf, ties
    np.testing.assert_allclose(ent[[0, 4]], [np.log(2), np.log(1 + np.exp(-4) * 0 + 1)
                                             - 0 if False else ent[4]], rtol=1e-6)
    assert np.isnan(ent[1:4]).all()
    np.testing.assert_allclose(loss, [np.log(2), 0, 0, 0, loss[4]], rtol=1e-6)
    assert xent.cross_entropy(np.zeros((0, 4)), np.zeros(0, int), return_entropy=True,
                              reduction="none")[1].shape == (0,)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        xent.cross_entropy([[1.0, 2.0]], [0], temperature=bad)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        xt.cross_entropy(torch.ones(2, 3), torch.tensor([0, 1]), temperature=bad)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        xent.cross_entropy([[1.0, 2.0]], [0], temperature=True)
    with pytest.raises(ValueError, match="needs return_entropy=True"):
        xent.cross_entropy([[1.0, 2.0]], [0], grad_entropy=[1.0], return_grad=True)


def _torch_ref(z, t, T, red, cap=None):
    zz = z if cap is None else cap * torch.tanh(z / cap)
    zz = zz / T
    logp = torch.log_softmax(zz, 1)
    return (F.cross_entropy(zz, t, reduction=red), -(logp.exp() * logp).sum(1),
            zz.detach().argmax(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(9, 13), (70, 1100)])
@pytest.mark.parametrize("red", ["none", "mean"])
def test_torch_cross_entropy(dtype, shape, red):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    t = torch.randint(0, shape[1], (shape[0],), generator=g)
    t[2] = -100
    go = torch.rand(shape[0] if red == "none" else (), generator=g, dtype=torch.float64)
    ge = torch.randn(shape[0], generator=g, dtype=torch.float64)
    xr = x.detach().double().clone().requires_grad_(True)
    l0, h0, a0 = _torch_ref(xr, t, 1.4, red, cap=5.0)
    ((l0 * go).sum() + (h0 * ge).sum()).backward()
    xa = x.clone().requires_grad_(True)
    l1, h1, a1 = xt.cross_entropy(xa, t, reduction=red, temperature=1.4, softcap=5.0,
                                  return_entropy=True, return_argmax=True)
    ((l1 * go.to(dtype)).sum() + (h1 * ge.to(dtype)).sum()).backward()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(l1.double(), l0.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(h1.double(), h0.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=tol, atol=tol)
    assert a1.dtype == torch.int64 and h1.dtype == dtype
    if dtype != torch.bfloat16:
        torch.testing.assert_close(a1, a0)


@pytest.mark.parametrize("shape", [(8, 5), (512, 2048)])
@pytest.mark.parametrize("red", ["none", "mean"])
def test_batched_gradients_of_loss_and_entropy(shape, red):
    """``is_grads_batched=True`` (legacy vmap over the backward, as PyTorch's batched gradcheck)
    gives the float64 composition's VJPs, at the small and the kernels' sizes alike."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0],), generator=g)
    t[0] = -100
    vl = torch.randn((2, shape[0]) if red == "none" else (2,), generator=g, dtype=torch.float64)
    ve = torch.randn(2, shape[0], generator=g, dtype=torch.float64)
    loss, ent = xt.cross_entropy(x, t, reduction=red, temperature=0.7, softcap=5.0,
                                 return_entropy=True)
    (got,) = torch.autograd.grad((loss, ent), x, (vl, ve), is_grads_batched=True)
    for i in range(2):
        l0, h0, _ = _torch_ref(x, t, 0.7, red, cap=5.0)
        (want,) = torch.autograd.grad((l0, h0), x, (vl[i], ve[i]))
        torch.testing.assert_close(got[i], want)


def test_torch_composed_route_matches_core():
    """The composition (`_reference`, what CUDA and tracing without the custom operator run)
    and the core give the same outputs and gradients."""
    from xent.torch import _reference
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 12, generator=g, dtype=torch.float64)
    t = torch.randint(0, 12, (7,), generator=g)
    ge = torch.randn(7, generator=g, dtype=torch.float64)
    outs = []
    for fn in (lambda z: _reference.cross_entropy(z, t, None, -100, "none", 0.1, 1e-2, 3.0,
                                                  True, 0.8, True, True),
               lambda z: xt.cross_entropy(z, t, reduction="none", label_smoothing=0.1,
                                          lse_square_scale=1e-2, softcap=3.0, return_lse=True,
                                          temperature=0.8, return_entropy=True,
                                          return_argmax=True)):
        z = x.clone().requires_grad_(True)
        loss, lse, ent, top = fn(z)
        (loss.sum() + (ent * ge).sum()).backward()
        outs.append((loss, lse, ent, top, z.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_and_export():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 40, generator=g)
    t = torch.randint(0, 40, (16,), generator=g)

    def f(z):
        return xt.cross_entropy(z, t, reduction="none", temperature=1.3, return_entropy=True,
                                return_argmax=True)

    torch._dynamo.reset()
    z1, z2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    l1, h1, a1 = torch.compile(f, fullgraph=True)(z1)
    l2, h2, a2 = f(z2)
    (l1.sum() + h1.sum()).backward()
    (l2.sum() + h2.sum()).backward()
    for a, b in ((l1, l2), (h1, h2), (a1, a2), (z1.grad, z2.grad)):
        torch.testing.assert_close(a, b)

    class M(torch.nn.Module):
        def forward(self, z, tt):
            return xt.cross_entropy(z, tt, temperature=0.9, return_entropy=True)

    ep = torch.export.export(M(), (x, t))
    assert any("cross_entropy_stats" in str(n.target) for n in ep.graph.nodes)
    le, he = ep.module()(x, t)
    torch.testing.assert_close(le, M()(x, t)[0])
    torch.testing.assert_close(he, M()(x, t)[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("red", ["none", "mean"])
def test_linear_rl_call(dtype, red):
    """``nll, entropy = linear_cross_entropy(h, W, tokens, reduction="none", temperature=T,
    return_entropy=True)``: values and the gradients of input, weight and bias."""
    g = torch.Generator().manual_seed(6)
    N, H, V = 21, 8, 50
    h, W, b = (torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
               for s in ((N, H), (V, H), (V,)))
    t = torch.randint(0, V, (N,), generator=g)
    t[4] = -100
    go = torch.rand(N if red == "none" else (), generator=g, dtype=torch.float64)
    ge = torch.randn(N, generator=g, dtype=torch.float64)
    leaves = [a.detach().double().clone().requires_grad_(True) for a in (h, W, b)]
    l0, h0, a0 = _torch_ref(leaves[0] @ leaves[1].T + leaves[2], t, 0.6, red)
    ((l0 * go).sum() + (h0 * ge).sum()).backward()
    mine = [a.clone().requires_grad_(True) for a in (h, W, b)]
    l1, h1, a1 = xt.linear_cross_entropy(mine[0], mine[1], t, linear_bias=mine[2],
                                         reduction=red, temperature=0.6, return_entropy=True,
                                         return_argmax=True, chunk_size=8)
    ((l1 * go.to(dtype)).sum() + (h1 * ge.to(dtype)).sum()).backward()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(l1.double(), l0.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(h1.double(), h0.detach(), rtol=tol, atol=tol)
    for a, b_ in zip(mine, leaves, strict=True):
        torch.testing.assert_close(a.grad.double(), b_.grad, rtol=tol, atol=tol * 4)
    if dtype == torch.float64:
        torch.testing.assert_close(a1, a0)
    # the RL call itself: two outputs
    nll, ent = xt.linear_cross_entropy(h, W, t, reduction="none", temperature=0.6,
                                       return_entropy=True)
    assert nll.shape == ent.shape == (N,)


def test_linear_under_compile_composes():
    g = torch.Generator().manual_seed(7)
    h, W = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
    t = torch.randint(0, 10, (6,), generator=g)

    def f(a, B):
        return xt.linear_cross_entropy(a, B, t, reduction="none", temperature=2.0,
                                       return_entropy=True)

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(h, W)
    ref = f(h, W)
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1])


def test_modules_take_the_options():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 9, generator=g)
    t = torch.randint(0, 9, (5,), generator=g)
    loss, ent = xt.CrossEntropyLoss(reduction="none", temperature=2.0, return_entropy=True)(x, t)
    ref = xt.cross_entropy(x, t, reduction="none", temperature=2.0, return_entropy=True)
    torch.testing.assert_close(loss, ref[0])
    torch.testing.assert_close(ent, ref[1])
    m = xt.LinearCrossEntropyLoss(4, 9, reduction="none", temperature=2.0, return_entropy=True,
                                  return_argmax=True)
    h = torch.randn(5, 4, generator=g)
    nll, ent, top = m(h, t)
    ref = xt.linear_cross_entropy(h, m.linear.weight, t, linear_bias=m.linear.bias,
                                  reduction="none", temperature=2.0, return_entropy=True,
                                  return_argmax=True)
    for a, b in zip((nll, ent, top), ref, strict=True):
        torch.testing.assert_close(a, b)


# -- vocabulary-parallel: 2 and 3 gloo processes against one -----------------------------------

N_P, H_P, V_P = 11, 5, 23
P_CASES = [dict(reduction="none", temperature=0.7),
           dict(reduction="mean", temperature=1.5, softcap=3.0, label_smoothing=0.1,
                lse_square_scale=1e-2, ignore_index=4)]


def _pworker(rank: int, world: int, port: int, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        torch.set_num_threads(1)
        base, extra = divmod(V_P, world)
        sizes = [base + (r < extra) for r in range(world)]
        start = sum(sizes[:rank])
        sl = slice(start, start + sizes[rank])
        for case in P_CASES:
            g = torch.Generator().manual_seed(11)
            x = torch.randn(N_P, H_P, generator=g, dtype=torch.float64)
            W = torch.randn(V_P, H_P, generator=g, dtype=torch.float64)
            W[3, :] = W[7, :]  # ties across shards: the lowest global index wins
            t = torch.randint(0, V_P, (N_P,), generator=g)
            t[::3] = case.get("ignore_index", -100)
            red = case["reduction"]
            go = torch.rand(N_P if red == "none" else (), generator=g, dtype=torch.float64)
            ge = torch.randn(N_P, generator=g, dtype=torch.float64)
            kw = dict(case, return_entropy=True, return_argmax=True)
            z = (x @ W.T).requires_grad_(True)
            rl, rh, ra = xt.cross_entropy(z, t, **kw)
            ((rl * go).sum() + (rh * ge).sum()).backward()
            zs = (x @ W.T)[:, sl].detach().clone().requires_grad_(True)
            loss, ent, top = xt.vocab_parallel_cross_entropy(zs, t, vocab_start=start,
                                                             vocab_size=V_P, **kw)
            ((loss * go).sum() + (ent * ge).sum()).backward()
            for a, b in ((loss, rl), (ent, rh), (top, ra), (zs.grad, z.grad[:, sl])):
                torch.testing.assert_close(a, b.detach(), msg=lambda m, c=case: f"{c}: {m}")
            leaves = [x.clone().requires_grad_(True), W.clone().requires_grad_(True)]
            rl, rh, ra = xt.linear_cross_entropy(*leaves, t, **kw)
            ((rl * go).sum() + (rh * ge).sum()).backward()
            for chunk in (4, N_P):
                xp, Wp = x.clone().requires_grad_(True), W[sl].clone().requires_grad_(True)
                loss, ent, top = xt.vocab_parallel_linear_cross_entropy(
                    xp, Wp, t, chunk_size=chunk, **kw)
                ((loss * go).sum() + (ent * ge).sum()).backward()
                for a, b in ((loss, rl), (ent, rh), (top, ra), (xp.grad, leaves[0].grad),
                             (Wp.grad, leaves[1].grad[sl])):
                    torch.testing.assert_close(a, b.detach(),
                                               msg=lambda m, c=case: f"linear {c}: {m}")
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_entropy_matches_single_process(world):
    run_on_gloo(_pworker, world)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_opcheck(reduction):
    """``torch.library.opcheck`` on the statistics operators (schema, fake tensors, autograd
    registration, their use under graph capture)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 7, generator=g, requires_grad=True)
    t = torch.tensor([1, 2, -100, 4, 6])
    torch.library.opcheck(torch.ops.xent.cross_entropy_stats.default,
                          (x, t, None, -100, reduction, 0.1, 1e-2, 3.0, 0.8, True, True, True))
    gl = torch.rand(5 if reduction == "none" else (), generator=g)
    torch.library.opcheck(torch.ops.xent.cross_entropy_stats_backward.default,
                          (gl, torch.randn(5, generator=g), x.detach(), t, None, -100, reduction,
                           0.1, 1e-2, 3.0, 0.8))
