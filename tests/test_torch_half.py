"""xent.torch in bfloat16 and float16: every drop-in against float64 PyTorch, at least as close
to the float64 truth as PyTorch's own 16-bit result; loss and gradient dtypes as PyTorch gives
them; zero-copy views of 16-bit tensors; and torch.autocast("cpu"), where PyTorch computes its
losses in float32 and xent must give the same dtypes and values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent.torch as xt
from helpers import spy_core
from xent import _validation
from xent.torch import _bridge, _reference, _route

HALF = [torch.bfloat16, torch.float16]

needs_half = pytest.mark.skipif(
    not set(HALF) <= set(_route.fast_dtypes()),
    reason="the core does not compute 16-bit floats in their own storage here (no ml_dtypes?)")


@pytest.fixture(autouse=True)
def no_small_cutoff():
    old = xt.set_min_elements(0)
    yield
    xt.set_min_elements(old)


@pytest.fixture
def core_calls(monkeypatch):
    return spy_core(monkeypatch)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(fn, x, *args, grad_output=None):
    """``(loss, grad)`` of ``fn(x, *args)`` with ``loss.backward(grad_output or ones)``."""
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return loss.detach(), x.grad


def _err(a: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (a.double() - truth).abs().nan_to_num(nan=np.inf)


def _assert_as_close_as_torch(ours, torch16, truth, dtype, what, extra_ulps=0):
    """Elementwise: xent's error from the float64 truth is at most PyTorch's own 16-bit error,
    or at most half a unit in the last place of the 16-bit dtype (a correctly rounded value,
    which nothing can beat; the float32 arithmetic before the rounding adds a few float32 ulps),
    plus ``extra_ulps`` units in the last place where a second rounding is known to happen.
    """
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, PyTorch gives {torch16.dtype}"
    assert ours.shape == truth.shape
    eps = torch.finfo(dtype).eps
    rounding = 0.5 * eps * truth.abs() + 8 * torch.finfo(torch.float32).eps * truth.abs().max()
    bound = torch.maximum(_err(torch16, truth), rounding + torch.finfo(dtype).tiny)
    bound = bound + extra_ulps * eps * truth.abs()
    bad = _err(ours, truth) > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} values further from float64 than PyTorch's "
        f"{dtype}: xent {ours[bad][:4].tolist()}, PyTorch {torch16[bad][:4].tolist()}, "
        f"float64 {truth[bad][:4].tolist()}")


def _compare(ours_fn, torch_fn, x64, *args, dtype, what, ref64_fn=None):
    """xent's (loss, grad) in ``dtype`` against float64 PyTorch, no worse than PyTorch's."""
    x = x64.to(dtype)
    args16 = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    # the truth: PyTorch in float64 on the same 16-bit inputs (upcast exactly)
    args64 = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args16]
    truth = _run(ref64_fn or torch_fn, x.double(), *args64)
    ours = _run(ours_fn, x, *args16)
    theirs = _run(torch_fn, x, *args16)
    for o, p, t, name in zip(ours, theirs, truth, ("loss", "grad"), strict=True):
        _assert_as_close_as_torch(o, p, t, dtype, f"{what} {name}")


CE_CASES = {
    "plain": dict(),
    "weight-ignore-smoothing": dict(weight=True, ignore_index=3, label_smoothing=0.1),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none", weight=True),
    "probabilities": dict(prob=True),
    "kdim": dict(kdim=True, reduction="none"),
}


@needs_half
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name, size", [  # small: the NumPy path; large: the kernels
    (name, size) for name in CE_CASES for size in ((48, 257), (512, 2048))
    if not (name == "kdim" and size[0] > 64)])
def test_cross_entropy_16bit(name, size, dtype, core_calls):
    case = CE_CASES[name]
    g = _gen(0)
    N, C = size
    shape = (N // 4, C, 4) if case.get("kdim") else (N, C)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    if case.get("prob"):
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, C, (shape[0],) + shape[2:], generator=g)
        target.view(-1)[::7] = case.get("ignore_index", -100)
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if case.get("weight") else None
    kw = {k: case[k] for k in ("ignore_index", "label_smoothing", "reduction") if k in case}
    w16 = None if w is None else w.to(dtype)

    def ours(x, t):
        return xt.cross_entropy(x, t, w16, **kw)

    def theirs(x, t):
        return F.cross_entropy(x, t, None if w16 is None else w16.to(x.dtype), **kw)

    _compare(ours, theirs, x64, target, dtype=dtype, what=f"cross_entropy {name}")
    assert core_calls == ["cross_entropy"]  # xent's core ran: not a fallback to PyTorch


@needs_half
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("opts", [dict(lse_square_scale=1e-3), dict(softcap=5.0)])
def test_cross_entropy_options_16bit(opts, dtype, core_calls):
    """z-loss and soft-capping against the same loss composed from PyTorch ops, in float64 and
    in the 16-bit dtype."""
    g = _gen(1)
    x64 = torch.randn(256, 1000, generator=g, dtype=torch.float64) * 4
    t = torch.randint(0, 1000, (256,), generator=g)

    def composed(x, t):
        return _reference.cross_entropy(x, t, None, -100, "mean", 0.0,
                                        opts.get("lse_square_scale", 0.0), opts.get("softcap"),
                                        False)

    _compare(lambda x, t: xt.cross_entropy(x, t, **opts), composed, x64, t, dtype=dtype,
             what=f"cross_entropy {opts}")
    assert core_calls == ["cross_entropy"]


@needs_half
@pytest.mark.parametrize("dtype", HALF)
def test_nll_and_bce_16bit(dtype, core_calls):
    g = _gen(2)
    logp64 = torch.log_softmax(torch.randn(300, 50, generator=g, dtype=torch.float64) * 3, 1)
    t = torch.randint(0, 50, (300,), generator=g)
    t[::9] = -100
    z64 = torch.randn(300, 50, generator=g, dtype=torch.float64) * 4
    y64 = torch.rand(300, 50, generator=g, dtype=torch.float64)
    p64 = torch.sigmoid(torch.randn(300, 50, generator=g, dtype=torch.float64) * 3)
    pw = (torch.rand(50, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    _compare(xt.nll_loss, F.nll_loss, logp64, t, dtype=dtype, what="nll_loss")
    _compare(lambda x, y: xt.binary_cross_entropy(x, y, reduction="sum"),
             lambda x, y: F.binary_cross_entropy(x, y, reduction="sum"), p64, y64, dtype=dtype,
             what="binary_cross_entropy")
    _compare(lambda x, y: xt.binary_cross_entropy_with_logits(x, y, pos_weight=pw),
             lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw.to(x.dtype)),
             z64, y64, dtype=dtype, what="bce_with_logits")
    assert core_calls == ["nll_loss", "binary_cross_entropy", "bce_with_logits"]


@needs_half
@pytest.mark.parametrize("dtype", HALF)
def test_modules_16bit(dtype, core_calls):
    g = _gen(3)
    x64 = torch.randn(128, 300, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 300, (128,), generator=g)
    _compare(xt.CrossEntropyLoss(label_smoothing=0.05), torch.nn.CrossEntropyLoss(
        label_smoothing=0.05), x64, t, dtype=dtype, what="CrossEntropyLoss")
    y64 = torch.rand(128, 300, generator=g, dtype=torch.float64)
    _compare(xt.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(), x64, y64, dtype=dtype,
             what="BCEWithLogitsLoss")
    assert core_calls == ["cross_entropy", "bce_with_logits"]


@needs_half
def test_bfloat16_views_share_memory():
    """as_numpy / from_numpy view bfloat16 through its bits: no copy either way, any strides."""
    t = torch.randn(6, 4).to(torch.bfloat16)
    a = _bridge.as_numpy(t)
    assert a.dtype == _validation.bfloat16() and np.shares_memory(a, t.view(torch.int16).numpy())
    torch.testing.assert_close(torch.from_numpy(a.astype(np.float32)), t.float())
    tt = t.t()  # a non-contiguous view
    assert _bridge.as_numpy(tt).strides == (2, 8)
    back = _bridge.from_numpy(a)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == t.data_ptr()
    assert torch.equal(back, t)
    assert _bridge.as_numpy(torch.ones(3, dtype=torch.float16)).dtype == np.float16


@needs_half
@pytest.mark.parametrize("dtype", HALF)
def test_non_contiguous_16bit_input(dtype, core_calls):
    g = _gen(4)
    x64 = torch.randn(200, 64, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 200, (64,), generator=g)
    x = x64.to(dtype).t()  # (64, 200), strides (1, 64)
    ours = _run(xt.cross_entropy, x, t)
    truth = _run(F.cross_entropy, x.double(), t)
    theirs = _run(F.cross_entropy, x, t)
    for o, p, tr, name in zip(ours, theirs, truth, ("loss", "grad"), strict=True):
        _assert_as_close_as_torch(o, p, tr, dtype, f"transposed {name}")
    assert core_calls == ["cross_entropy"]


# --- torch.autocast("cpu") --------------------------------------------------------------------

AUTOCAST = [
    ("cross_entropy", xt.cross_entropy, F.cross_entropy, "index"),
    ("cross_entropy smoothing", lambda x, t: xt.cross_entropy(x, t, label_smoothing=0.1),
     lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), "index"),
    ("cross_entropy probabilities", xt.cross_entropy, F.cross_entropy, "prob"),
    ("nll_loss", xt.nll_loss, F.nll_loss, "index"),
    ("binary_cross_entropy", xt.binary_cross_entropy, F.binary_cross_entropy, "unit"),
    ("bce_with_logits", xt.binary_cross_entropy_with_logits,
     F.binary_cross_entropy_with_logits, "prob"),
    ("CrossEntropyLoss", xt.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), "index"),
]


@pytest.mark.parametrize("autocast_dtype", HALF)
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float16, torch.float32,
                                         torch.float64])
@pytest.mark.parametrize("name, ours_fn, torch_fn, kind", AUTOCAST, ids=[c[0] for c in AUTOCAST])
def test_autocast_matches_pytorch(name, ours_fn, torch_fn, kind, input_dtype, autocast_dtype):
    """Under torch.autocast("cpu"), PyTorch computes these losses in float32 (16-bit inputs are
    cast up; float64 stays): xent's loss and gradient have PyTorch's dtypes and values."""
    g = _gen(5)
    x = torch.randn(64, 40, generator=g) * 3
    if kind == "unit":
        x = torch.sigmoid(x)
    x = x.to(input_dtype)
    if kind == "index":
        target = torch.randint(0, 40, (64,), generator=g)
    else:
        target = torch.rand(64, 40, generator=g).to(input_dtype)
        if kind == "prob" and name.startswith("cross"):
            target = torch.softmax(target.float(), 1).to(input_dtype)

    def run(fn):
        with torch.autocast("cpu", dtype=autocast_dtype):
            return _run(fn, x, target)

    ours, theirs = run(ours_fn), run(torch_fn)
    for o, p, what in zip(ours, theirs, ("loss", "grad"), strict=True):
        assert o.dtype == p.dtype, f"{what}: xent {o.dtype}, PyTorch {p.dtype}"
        tol = {} if p.dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(o, p, **tol)
    assert ours[0].dtype == (torch.float64 if input_dtype == torch.float64 else torch.float32)
    assert ours[1].dtype == input_dtype


def test_autocast_runs_xent_after_a_bfloat16_linear(core_calls):
    """The usual autocast model: a bfloat16 linear layer, then the loss in float32 on xent."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 100)
    x, t = torch.randn(64, 32), torch.randint(0, 100, (64,), generator=_gen(6))

    def grads(loss_fn):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = lin(x)
            loss = loss_fn(logits, t)
        loss.backward()
        return logits.dtype, loss.detach(), lin.weight.grad.clone()

    ours, theirs = grads(xt.cross_entropy), grads(F.cross_entropy)
    assert core_calls == ["cross_entropy"]
    assert ours[0] == theirs[0] == torch.bfloat16 and ours[1].dtype == torch.float32
    torch.testing.assert_close(ours[1], theirs[1])
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_autocast_compiled(core_calls):
    torch._dynamo.reset()
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 50)
    x, t = torch.randn(32, 16), torch.randint(0, 50, (32,), generator=_gen(7))

    def step(loss_fn):
        def f(x, t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return loss_fn(lin(x), t)
        return f

    loss = torch.compile(step(xt.cross_entropy), fullgraph=True)(x, t)
    assert core_calls == ["cross_entropy"]
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, step(F.cross_entropy)(x, t))
    torch._dynamo.reset()


@needs_half
@pytest.mark.slow
@pytest.mark.parametrize("dtype", HALF)
def test_compiled_16bit(dtype, core_calls):
    """torch.compile(fullgraph=True) on 16-bit logits: xent's kernel in the graph, a 'none'
    loss's gradient scaled by a grad_output that is not 1. The loss is as close to float64
    PyTorch as PyTorch's 16-bit result; the gradient, rounded to 16 bits in the fused pass and
    again after the scale (the saved gradient's design, eager too), within one more unit in the
    last place (measured: 56 of 32000 elements beyond PyTorch's error in bfloat16)."""
    torch._dynamo.reset()
    g = _gen(8)
    x = (torch.randn(64, 500, generator=g) * 3).to(dtype)
    t = torch.randint(0, 500, (64,), generator=g)
    go = torch.rand(64, generator=g).to(dtype)
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t, reduction="none"),
                             fullgraph=True)
    ours = _run(compiled, x, t, grad_output=go)
    assert core_calls == ["cross_entropy"]
    truth = _run(lambda x, t: F.cross_entropy(x, t, reduction="none"), x.double(), t,
                 grad_output=go.double())
    theirs = _run(lambda x, t: F.cross_entropy(x, t, reduction="none"), x, t, grad_output=go)
    for o, p, tr, what in zip(ours, theirs, truth, ("loss", "grad"), strict=True):
        _assert_as_close_as_torch(o, p, tr, dtype, f"compiled {what}",
                                  extra_ulps=1 if what == "grad" else 0)
    torch._dynamo.reset()
