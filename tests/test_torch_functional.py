"""xent.torch's drop-ins against torch.nn.functional (the reference): values, gradients,
float64 gradcheck for every option, the fallbacks, and the modules' constructor semantics."""

from __future__ import annotations

import gc
import inspect
import itertools
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F

import xent.torch as xt
from helpers import spy_core
from xent.torch import _reference

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _loss_and_grad(fn, x, *args, grad_output=None, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    g = torch.ones_like(loss) if grad_output is None else grad_output
    loss.backward(g)
    return loss.detach(), x.grad


def _check_same(ours, ref, dtype, context="", **tol):
    for a, b, what in zip(ours, ref, ("loss", "grad"), strict=True):
        assert a.dtype == b.dtype, f"{context} {what}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{context} {what}: shape {a.shape} vs {b.shape}"
        torch.testing.assert_close(a, b, equal_nan=True, **(tol or TOL[dtype]),
                                   msg=lambda m, w=what: f"{context} {w}: {m}")


@pytest.fixture(autouse=True)
def no_small_cutoff(monkeypatch):
    """The tests' small inputs would go to PyTorch: send them to xent."""
    old = xt.set_min_elements(0)
    yield
    xt.set_min_elements(old)


@pytest.fixture
def count_core(monkeypatch):
    """Count the calls that reach xent's core (proves the fast path was taken)."""
    return spy_core(monkeypatch)


SHAPES = [(7, 5), (3, 4, 2, 3), (6,), (0, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_index_matches_torch(dtype, shape, reduction, weighted, eps, count_core):
    g = _gen(0)
    C = shape[1] if len(shape) >= 2 else shape[0]
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    tshape = shape[:1] + shape[2:] if len(shape) >= 2 else ()
    t = torch.randint(0, C, tshape, generator=g)
    if t.numel() > 1:
        t.view(-1)[1] = -100
    w = torch.rand(C, generator=g, dtype=dtype) + 0.5 if weighted else None
    go = torch.rand(tshape, generator=g, dtype=dtype) if reduction == "none" else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    ours = _loss_and_grad(xt.cross_entropy, x, t, grad_output=go, **kw)
    ref = _loss_and_grad(F.cross_entropy, x, t, grad_output=go, **kw)
    _check_same(ours, ref, dtype, f"{shape} {reduction} w={weighted} eps={eps}")
    assert "cross_entropy" in count_core


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_probabilities_match_torch(dtype, shape, reduction):
    g = _gen(1)
    x = torch.randn(shape, generator=g, dtype=dtype)
    y = torch.softmax(torch.randn(shape, generator=g, dtype=dtype), 1)
    w = torch.rand(shape[1], generator=g, dtype=dtype) + 0.5
    for kw in (dict(), dict(weight=w, label_smoothing=0.1)):
        ours = _loss_and_grad(xt.cross_entropy, x, y, reduction=reduction, **kw)
        ref = _loss_and_grad(F.cross_entropy, x, y, reduction=reduction, **kw)
        _check_same(ours, ref, dtype, f"{shape} {reduction} {kw.keys()}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_matches_torch(dtype, reduction, count_core):
    g = _gen(2)
    x = torch.log_softmax(torch.randn(6, 5, 3, generator=g, dtype=dtype), 1)
    t = torch.randint(0, 5, (6, 3), generator=g)
    t[0, 0] = 4
    w = torch.rand(5, generator=g, dtype=dtype)
    for ii, kw in ((-100, dict()), (-1, dict(weight=w, ignore_index=-1))):
        t[1, 1] = ii
        ours = _loss_and_grad(xt.nll_loss, x, t, reduction=reduction, **kw)
        ref = _loss_and_grad(F.nll_loss, x, t, reduction=reduction, **kw)
        _check_same(ours, ref, dtype, f"{reduction} {kw.keys()}")
    assert "nll_loss" in count_core


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_losses_match_torch(dtype, reduction, count_core):
    g = _gen(3)
    x = torch.randn(4, 3, 5, generator=g, dtype=dtype) * 4
    y = torch.rand(4, 3, 5, generator=g, dtype=dtype)
    w = torch.rand(3, 1, generator=g, dtype=dtype)
    pw = torch.rand(5, generator=g, dtype=dtype) * 3
    go = torch.rand(4, 3, 5, generator=g, dtype=dtype) if reduction == "none" else None
    for kw in (dict(), dict(weight=w), dict(weight=w, pos_weight=pw)):
        ours = _loss_and_grad(xt.binary_cross_entropy_with_logits, x, y, reduction=reduction,
                              grad_output=go, **kw)
        ref = _loss_and_grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction,
                             grad_output=go, **kw)
        _check_same(ours, ref, dtype, f"logits {reduction} {kw.keys()}")
    p = torch.sigmoid(x)
    p.view(-1)[:2] = torch.tensor([0.0, 1.0], dtype=dtype)  # PyTorch's log clamp at -100
    for kw in (dict(), dict(weight=w)):
        ours = _loss_and_grad(xt.binary_cross_entropy, p, y, reduction=reduction,
                              grad_output=go, **kw)
        ref = _loss_and_grad(F.binary_cross_entropy, p, y, reduction=reduction, grad_output=go,
                             **kw)
        # the clamped entries' gradients are ~1e10: rounding order shows at 1e-9 relative
        _check_same(ours, ref, dtype, f"probs {reduction} {kw.keys()}",
                    rtol=max(TOL[dtype]["rtol"], 1e-8), atol=TOL[dtype]["atol"])
    assert {"binary_cross_entropy", "bce_with_logits"} <= set(count_core)


def test_everything_ignored_is_nan_with_zero_grad():
    x = torch.randn(3, 4)
    t = torch.full((3,), -100)
    loss, grad = _loss_and_grad(xt.cross_entropy, x, t)
    assert torch.isnan(loss)
    assert torch.equal(grad, torch.zeros(3, 4))


# --- gradcheck in float64 for every option ------------------------------------------------------

def _gradcheck(fn, x, *args, **kwargs):
    """First and second derivatives (create_graph=True) of xent's fast path, in float64."""
    x = x.detach().clone().requires_grad_(True)
    assert type(fn(x, *args, **kwargs).grad_fn).__name__ == "SavedGradBackward"  # fast path

    def f(a):
        return fn(a, *args, **kwargs)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "reduction,weighted,eps,ignore",
    list(itertools.product(["mean", "sum", "none"], [False, True], [0.0, 0.3], [False, True])),
)
def test_gradcheck_cross_entropy(reduction, weighted, eps, ignore):
    g = _gen(4)
    x = torch.randn(4, 5, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (4, 2), generator=g)
    if ignore:
        t[0, 1] = -100
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    _gradcheck(xt.cross_entropy, x, t, weight=w, reduction=reduction, label_smoothing=eps)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_other_losses(reduction):
    g = _gen(5)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.rand(3, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, -100])
    _gradcheck(xt.cross_entropy, x, torch.softmax(y, 1), weight=w, reduction=reduction,
               label_smoothing=0.1)
    _gradcheck(xt.nll_loss, x, t, weight=w, reduction=reduction)
    _gradcheck(xt.binary_cross_entropy_with_logits, x, y, weight=w, pos_weight=w + 0.5,
               reduction=reduction)
    p = torch.sigmoid(x).detach()
    _gradcheck(xt.binary_cross_entropy, p, y, weight=w, reduction=reduction)


# --- z-loss, soft-capping, log-sum-exp ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_options_match_torch_composite(dtype, reduction, prob):
    g = _gen(6)
    x = torch.randn(6, 7, 2, generator=g, dtype=dtype) * 5
    if prob:
        t = torch.softmax(torch.randn(6, 7, 2, generator=g, dtype=dtype), 1)
    else:
        t = torch.randint(0, 7, (6, 2), generator=g)
        t[2, 1] = -100
    w = torch.rand(7, generator=g, dtype=dtype) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, lse_square_scale=1e-2,
              softcap=3.0, return_lse=True)
    ours = _loss_and_grad(xt.cross_entropy, x, t, **kw)
    ref = _loss_and_grad(
        lambda *a, **k: _reference.cross_entropy(
            a[0], a[1], k["weight"], -100, k["reduction"], k["label_smoothing"],
            k["lse_square_scale"], k["softcap"], True),
        x, t, **kw)
    _check_same(ours, ref, dtype, f"{reduction} prob={prob}")
    loss, lse = xt.cross_entropy(x, t, **kw)
    ref_lse = torch.logsumexp(3.0 * torch.tanh(x / 3.0), 1)
    torch.testing.assert_close(lse, ref_lse, **TOL[dtype])


def test_zloss_by_hand():
    """z-loss adds s·lse² per non-ignored row; the mean divides it by the non-ignored count."""
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [4.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([2, -100, 0])
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    lse = torch.logsumexp(x, 1)
    ce = F.cross_entropy(x, t, w)
    expect = ce + 0.1 * (lse[0] ** 2 + lse[2] ** 2) / 2
    got = xt.cross_entropy(x, t, w, lse_square_scale=0.1)
    torch.testing.assert_close(got, expect)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_gradcheck_options(reduction, prob):
    g = _gen(7)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    if prob:
        t = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), 1)
    else:
        t = torch.tensor([1, -100, 4, 0])
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    _gradcheck(xt.cross_entropy, x, t, weight=w, reduction=reduction, label_smoothing=0.2,
               lse_square_scale=0.05, softcap=2.0)


def test_options_validation():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="softcap"):
        xt.cross_entropy(x, torch.tensor([0, 1, 2]), softcap=0.0)
    with pytest.raises(IndexError, match="out of bounds for 4 classes"):
        xt.cross_entropy(x, torch.tensor([0, 1, 4]), lse_square_scale=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        xt.cross_entropy(x, torch.tensor([0, 1, 2]), reduction="avg")


# --- fallbacks ---------------------------------------------------------------------------------

@pytest.mark.skipif(
    {torch.bfloat16, torch.float16} <= set(xt._route.fast_dtypes()),
    reason="the core takes 16-bit floats: they run xent's kernels (tests/test_torch_half.py)")
def test_bfloat16_and_float16_fall_back_to_torch(count_core):
    g = _gen(8)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(5, 6, generator=g).to(dtype)
        t = torch.randint(0, 6, (5,), generator=g)
        ours = _loss_and_grad(xt.cross_entropy, x, t)
        ref = _loss_and_grad(F.cross_entropy, x, t)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
        loss, lse = xt.cross_entropy(x, t, lse_square_scale=1e-3, return_lse=True)
        assert loss.dtype == dtype and lse.dtype == dtype
    assert count_core == []


def test_target_and_weight_requiring_grad_fall_back(count_core):
    g = _gen(9)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    xt.binary_cross_entropy_with_logits(x, y).backward()
    gy = y.grad.clone()
    y.grad = None
    F.binary_cross_entropy_with_logits(x, y).backward()
    torch.testing.assert_close(gy, y.grad)
    p = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    xt.cross_entropy(x, p, label_smoothing=0.1).backward()
    gp = p.grad.clone()
    p.grad = None
    F.cross_entropy(x, p, label_smoothing=0.1).backward()
    torch.testing.assert_close(gp, p.grad)
    assert count_core == []


def test_no_grad_and_inference_take_the_fast_path(count_core):
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        a = xt.cross_entropy(x, t)
    with torch.inference_mode():
        b = xt.cross_entropy(x.detach(), t)
    assert a.grad_fn is None and torch.equal(a, b)
    torch.testing.assert_close(a, F.cross_entropy(x, t).detach())
    assert count_core == ["cross_entropy", "cross_entropy"]


def test_non_contiguous_and_parameter_inputs():
    g = _gen(10)
    base = torch.randn(5, 8, generator=g)
    x = torch.nn.Parameter(base[:, ::2].clone())
    xs = base[:, ::2]
    t = torch.randint(0, 4, (5,), generator=g)
    ours = _loss_and_grad(xt.cross_entropy, xs, t)
    ref = _loss_and_grad(F.cross_entropy, xs, t)
    _check_same(ours, ref, torch.float32)
    xt.cross_entropy(x, t).backward()
    torch.testing.assert_close(x.grad, ref[1])


def test_small_inputs_go_to_torch(count_core):
    xt.set_min_elements(2048)  # the autouse fixture restores the default
    xt.cross_entropy(torch.randn(1, 2047), torch.zeros(1, dtype=torch.int64))
    assert count_core == []
    xt.cross_entropy(torch.randn(1, 2048), torch.zeros(1, dtype=torch.int64))
    assert count_core == ["cross_entropy"]  # (rows shorter than MIN_CLASSES: test_torch_small)


def test_gradient_is_handed_over_without_a_copy():
    x = torch.randn(64, 100, requires_grad=True)
    loss = xt.cross_entropy(x, torch.randint(0, 100, (64,)))
    saved = loss.grad_fn.saved_tensors[0].data_ptr()
    loss.backward()
    assert x.grad.data_ptr() == saved


def test_retain_graph_and_double_backward_accumulate():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 2, 0])
    loss = xt.cross_entropy(x, t)
    loss.backward(retain_graph=True)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.cross_entropy(x2, t).backward()
    torch.testing.assert_close(x.grad, 2 * x2.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_penalty_matches_torch(reduction):
    """A double backward through the fast path: d/dx Σ (∂L/∂x)², float32, 64 x 1000."""
    g = _gen(11)
    x0 = torch.randn(64, 1000, generator=g) * 2
    t = torch.randint(0, 1000, (64,), generator=g)
    t[3] = -100
    w = torch.rand(1000, generator=g) + 0.5
    grads = []
    for fn in (xt.cross_entropy, F.cross_entropy):
        x = x0.clone().requires_grad_(True)
        loss = fn(x, t, w, reduction=reduction, label_smoothing=0.1)
        go = torch.ones_like(loss) if reduction == "none" else None
        (gx,) = torch.autograd.grad(loss, x, go, create_graph=True)
        assert gx.requires_grad
        (gx.square().sum() * 1e3).backward()
        grads.append((gx.detach(), x.grad))
    assert type(loss.grad_fn).__name__ != "SavedGradBackward"  # the second is torch's
    (ours_g, ours_h), (ref_g, ref_h) = grads
    torch.testing.assert_close(ours_g, ref_g)
    torch.testing.assert_close(ours_h, ref_h)
    # The first-order gradient without create_graph is the fused kernel's: the same values.
    x = x0.clone().requires_grad_(True)
    xt.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1).sum().backward()
    torch.testing.assert_close(x.grad, ref_g)


@pytest.mark.parametrize("case", ["nll", "bce_logits", "bce", "zloss_softcap", "prob"])
def test_gradient_penalty_other_losses_match_torch(case):
    g = _gen(12)
    x0 = torch.randn(32, 300, generator=g, dtype=torch.float64)
    t = torch.randint(0, 300, (32,), generator=g)
    y = torch.rand(32, 300, generator=g, dtype=torch.float64)
    w = torch.rand(300, generator=g, dtype=torch.float64) + 0.5
    held = []  # a double backward needs the loss's input kept alive by the caller

    def keep(v):
        held.append(v)
        return v

    cases = {
        "nll": (lambda a: xt.nll_loss(keep(torch.log_softmax(a, 1)), t, w),
                lambda a: F.nll_loss(torch.log_softmax(a, 1), t, w)),
        "bce_logits": (lambda a: xt.binary_cross_entropy_with_logits(a, y, w, pos_weight=w),
                       lambda a: F.binary_cross_entropy_with_logits(a, y, w, pos_weight=w)),
        "bce": (lambda a: xt.binary_cross_entropy(keep(torch.sigmoid(a)), y, w),
                lambda a: F.binary_cross_entropy(torch.sigmoid(a), y, w)),
        "zloss_softcap": (
            lambda a: xt.cross_entropy(a, t, w, lse_square_scale=0.01, softcap=3.0),
            lambda a: _reference.cross_entropy(a, t, w, -100, "mean", 0.0,
                                                               0.01, 3.0, False)),
        "prob": (lambda a: xt.cross_entropy(a, torch.softmax(y, 1), w, label_smoothing=0.1),
                 lambda a: F.cross_entropy(a, torch.softmax(y, 1), w, label_smoothing=0.1)),
    }
    out = []
    for fn in cases[case]:
        x = x0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(fn(x), x, create_graph=True)
        gx.square().sum().backward()
        out.append((gx.detach(), x.grad))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


def test_the_loss_does_not_keep_its_logits_alive():
    """Only the gradient is kept for backward: logits nobody holds are freed after the forward;
    a double backward then asks for them to be kept."""
    w = torch.randn(50, 600, requires_grad=True)
    h = torch.randn(16, 50)
    t = torch.randint(0, 600, (16,))
    logits = h @ w
    alive = weakref.ref(logits)
    loss = xt.cross_entropy(logits, t)
    del logits
    gc.collect()
    assert alive() is None
    with pytest.raises(RuntimeError, match="keep a reference to the logits"):
        torch.autograd.grad(loss, w, create_graph=True)
    logits = h @ w  # kept: the double backward reaches w through them
    loss = xt.cross_entropy(logits, t)
    (gw,) = torch.autograd.grad(loss, w, create_graph=True)
    gw.square().sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    (gw2,) = torch.autograd.grad(F.cross_entropy(h @ w2, t), w2, create_graph=True)
    gw2.square().sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_double_backward_after_an_in_place_change_raises():
    x = torch.randn(16, 600, requires_grad=True)
    t = torch.randint(0, 600, (16,))
    loss = xt.cross_entropy(x, t)
    with torch.no_grad():
        x.mul_(2)  # allowed for a first-order backward, as with F.cross_entropy
    with pytest.raises(RuntimeError, match="modified in place after the loss"):
        torch.autograd.grad(loss, x, create_graph=True)
    loss = xt.cross_entropy(x, t)
    with torch.no_grad():
        x.mul_(2)
    loss.backward()  # first order: the saved gradient, the input is not read
    assert torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_falls_back_to_torch():
    x = torch.randn(4, 3, device="cuda", requires_grad=True)
    t = torch.tensor([0, 1, 2, 0], device="cuda")
    loss = xt.cross_entropy(x, t, lse_square_scale=1e-4, softcap=5.0)
    loss.backward()
    assert loss.device.type == "cuda" and x.grad.device.type == "cuda"


# --- modules ----------------------------------------------------------------------------------

MODULES = [
    (xt.CrossEntropyLoss, torch.nn.CrossEntropyLoss),
    (xt.NLLLoss, torch.nn.NLLLoss),
    (xt.BCELoss, torch.nn.BCELoss),
    (xt.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss),
]


@pytest.mark.parametrize("ours,theirs", MODULES)
def test_module_signatures_are_torchs(ours, theirs):
    """PyTorch's parameters, in PyTorch's order and with its defaults; xent's own options
    (CrossEntropyLoss: temperature, return_entropy, return_argmax) only after them, keyword-only."""
    mine = list(inspect.signature(ours).parameters.values())
    torchs = list(inspect.signature(theirs).parameters.values())
    assert [(p.name, p.kind, p.default) for p in mine[:len(torchs)]] == [
        (p.name, p.kind, p.default) for p in torchs]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in mine[len(torchs):])
    assert [p.name for p in mine[len(torchs):]] == EXTRA_MODULE_ARGS.get(ours, [])
    assert isinstance(ours(), theirs)


EXTRA_MODULE_ARGS = {xt.CrossEntropyLoss: ["temperature", "return_entropy", "return_argmax"]}


@pytest.mark.parametrize("size_average,reduce", [(None, None), (False, None), (True, False),
                                                 (None, False), (False, True)])
def test_modules_honour_legacy_arguments(size_average, reduce):
    g = _gen(11)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (5,), generator=g)
    y = torch.rand(5, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pairs = [
            (xt.CrossEntropyLoss(w, size_average, reduce=reduce, label_smoothing=0.1),
             torch.nn.CrossEntropyLoss(w, size_average, reduce=reduce, label_smoothing=0.1),
             x, t),
            (xt.NLLLoss(w, size_average, ignore_index=1, reduce=reduce),
             torch.nn.NLLLoss(w, size_average, ignore_index=1, reduce=reduce),
             torch.log_softmax(x, 1), t),
            (xt.BCELoss(w, size_average, reduce), torch.nn.BCELoss(w, size_average, reduce),
             torch.sigmoid(x), y),
            (xt.BCEWithLogitsLoss(w, size_average, reduce, pos_weight=w + 1),
             torch.nn.BCEWithLogitsLoss(w, size_average, reduce, pos_weight=w + 1), x, y),
        ]
    for ours, theirs, a, b in pairs:
        assert ours.reduction == theirs.reduction
        _check_same(_loss_and_grad(ours, a, b), _loss_and_grad(theirs, a, b), torch.float64,
                    type(ours).__name__)
        assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_functional_legacy_arguments_warn_like_torch():
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    with pytest.warns(UserWarning, match="size_average and reduce"):
        ours = xt.cross_entropy(x, t, size_average=False)
    torch.testing.assert_close(ours, F.cross_entropy(x, t, reduction="sum"))


def test_module_in_a_training_step_matches_torch():
    torch.manual_seed(12)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    ref_model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 5))
    ref_model.load_state_dict(model.state_dict())
    x = torch.randn(32, 10)
    t = torch.randint(0, 5, (32,))
    for m, loss_fn in ((model, xt.CrossEntropyLoss(label_smoothing=0.05)),
                       (ref_model, torch.nn.CrossEntropyLoss(label_smoothing=0.05))):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            loss_fn(m(x), t).backward()
            opt.step()
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
