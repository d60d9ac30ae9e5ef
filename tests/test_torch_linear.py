"""xent.torch.linear_cross_entropy against cross_entropy(input @ W.T + b) in PyTorch: values and
the gradients of input, linear_weight and linear_bias, for every option and chunking."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt
from helpers import spy
from xent import _cross_entropy
from xent.torch import _reference

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _problem(seed, n=23, h=8, v=37, dtype=torch.float64, prob=False, bias=True, weighted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=dtype)
    W = torch.randn(v, h, generator=g, dtype=dtype)
    b = torch.randn(v, generator=g, dtype=dtype) if bias else None
    if prob:
        t = torch.softmax(torch.randn(n, v, generator=g, dtype=dtype), 1)
    else:
        t = torch.randint(0, v, (n,), generator=g)
        t[::5] = -100
    w = torch.rand(v, generator=g, dtype=dtype) + 0.5 if weighted else None
    return x, W, b, t, w


def _grads(fn, x, W, b, grad_output=None):
    leaves = [p.detach().clone().requires_grad_(True) if p is not None else None
              for p in (x, W, b)]
    out = fn(*leaves)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return [loss.detach()] + [p.grad if p is not None else None for p in leaves]


def _ref_fn(t, w, reduction, eps, zscale=0.0, cap=None):
    def fn(x, W, b):
        logits = F.linear(x, W, b)
        if not zscale and cap is None:
            return F.cross_entropy(logits, t, w, reduction=reduction, label_smoothing=eps)
        return _reference.cross_entropy(logits, t, w, -100, reduction, eps,
                                                        zscale, cap, False)
    return fn


def _compare(ours, ref, dtype, context):
    for a, e, name in zip(ours, ref, ("loss", "grad_input", "grad_weight", "grad_bias"),
                          strict=True):
        if e is None:
            assert a is None, f"{context}: {name} should be None"
            continue
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m, n=name: f"{context} {n}: {m}")


@pytest.mark.parametrize(
    "reduction,eps,weighted,bias,chunk",
    list(itertools.product(["mean", "sum", "none"], [0.0, 0.1], [False, True], [False, True],
                           [1, 5, 23, 1000])),
)
def test_matches_torch_float64(reduction, eps, weighted, bias, chunk):
    x, W, b, t, w = _problem(0, bias=bias, weighted=weighted)
    go = torch.rand(x.shape[0], dtype=x.dtype) if reduction == "none" else None
    ours = _grads(lambda a, B, c: xt.linear_cross_entropy(
        a, B, t, linear_bias=c, weight=w, reduction=reduction, label_smoothing=eps,
        chunk_size=chunk), x, W, b, go)
    ref = _grads(_ref_fn(t, w, reduction, eps), x, W, b, go)
    _compare(ours, ref, torch.float64, f"{reduction} eps={eps} w={weighted} b={bias} c={chunk}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_options_match_torch(reduction, prob, dtype):
    x, W, b, t, w = _problem(1, dtype=dtype, prob=prob)
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    for zscale, cap in ((1e-2, None), (0.0, 4.0), (1e-2, 4.0), (0.0, None)):
        ours = _grads(lambda a, B, c, zs=zscale, cp=cap: xt.linear_cross_entropy(
            a, B, t, linear_bias=c, chunk_size=6, lse_square_scale=zs, softcap=cp, **kw),
            x, W, b)
        ref = _grads(_ref_fn(t, w, reduction, 0.1, zscale, cap), x, W, b)
        _compare(ours, ref, dtype, f"{reduction} prob={prob} z={zscale} cap={cap}")


def test_return_lse():
    x, W, b, t, w = _problem(2, dtype=torch.float32)
    loss, lse = xt.linear_cross_entropy(x, W, t, linear_bias=b, return_lse=True, chunk_size=7)
    torch.testing.assert_close(lse, torch.logsumexp(x @ W.T + b, 1))
    loss2, lse2 = xt.linear_cross_entropy(x, W, t, linear_bias=b, return_lse=True, softcap=2.0)
    torch.testing.assert_close(lse2, torch.logsumexp(2.0 * torch.tanh((x @ W.T + b) / 2.0), 1))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction):
    x, W, b, t, w = _problem(3, n=6, h=3, v=5)

    def fn(a, B, c):
        return xt.linear_cross_entropy(a, B, t, linear_bias=c, weight=w, reduction=reduction,
                                       label_smoothing=0.2, lse_square_scale=0.05, softcap=3.0,
                                       chunk_size=4, allow_retain_graph=True)

    for leaves in ((x, W, b),):
        args = tuple(p.detach().clone().requires_grad_(True) for p in leaves)
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)
    args = tuple(p.detach().clone().requires_grad_(True) for p in (x, W, b))
    assert torch.autograd.gradcheck(
        lambda a, B, c: xt.linear_cross_entropy(a, B, t, linear_bias=c, weight=w,
                                                reduction=reduction, chunk_size=4,
                                                allow_retain_graph=True),
        args, eps=1e-6, atol=1e-7)


def test_signature_extends_torchs():
    ours = inspect.signature(xt.linear_cross_entropy).parameters
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    for name, p in theirs.items():
        assert name in ours and ours[name].kind == p.kind and ours[name].default == p.default


def test_only_the_needed_gradients_and_single_row():
    x, W, b, t, w = _problem(4, dtype=torch.float32)
    Wl = W.clone().requires_grad_(True)
    xt.linear_cross_entropy(x, Wl, t).backward()
    ref = W.clone().requires_grad_(True)
    F.cross_entropy(x @ ref.T, t).backward()
    torch.testing.assert_close(Wl.grad, ref.grad, **TOL[torch.float32])
    x1 = x[0].clone().requires_grad_(True)
    loss = xt.linear_cross_entropy(x1, W, t[1], reduction="none")
    assert loss.shape == ()
    loss.backward()
    x1r = x[0].clone().requires_grad_(True)
    F.cross_entropy(x1r @ W.T, t[1], reduction="none").backward()
    torch.testing.assert_close(x1.grad, x1r.grad, **TOL[torch.float32])


def test_second_backward_raises_unless_allowed():
    x, W, b, t, w = _problem(5, dtype=torch.float32)
    xr = x.clone().requires_grad_(True)
    loss = xt.linear_cross_entropy(xr, W, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allow_retain_graph"):
        loss.backward()
    xr.grad = None
    loss = xt.linear_cross_entropy(xr, W, t, allow_retain_graph=True)
    (loss * 2).backward(retain_graph=True)
    loss.backward()
    ref = x.clone().requires_grad_(True)
    (3 * F.cross_entropy(ref @ W.T, t)).backward()
    torch.testing.assert_close(xr.grad, ref.grad, **TOL[torch.float32])


def test_no_grad_forward_only():
    x, W, b, t, w = _problem(6, dtype=torch.float32)
    with torch.no_grad():
        loss = xt.linear_cross_entropy(x.requires_grad_(True), W, t, linear_bias=b, chunk_size=3)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x @ W.T + b, t), **TOL[torch.float32])


def test_everything_ignored():
    x, W, b, t, w = _problem(7, dtype=torch.float32)
    t = torch.full_like(t, -100)
    out = _grads(lambda a, B, c: xt.linear_cross_entropy(a, B, t, linear_bias=c), x, W, b)
    assert torch.isnan(out[0])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in out[1:])


def test_float16_falls_back_to_torch(monkeypatch):
    calls: list[str] = []
    spy(monkeypatch, [(_cross_entropy, "backend_rows", "xent")], calls.append)
    x, W, b, t, w = _problem(8, dtype=torch.float16)
    ours = xt.linear_cross_entropy(x, W, t, linear_bias=b)
    ref = F.linear_cross_entropy(x, W, t, linear_bias=b)
    assert ours.dtype == torch.float16 and calls == []
    torch.testing.assert_close(ours, ref)


def _bf16_on_the_kernels() -> bool:
    from xent.torch import _route
    return torch.bfloat16 in _route.fast_dtypes()


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_bfloat16_is_as_close_to_float64_as_pytorchs_own(monkeypatch, chunks, seed):
    """bf16 products (oneDNN) and xent's kernels on the bf16 chunk: loss and every gradient at
    least as close to the float64 result (on the same bf16 inputs) as PyTorch's bf16 path."""
    if not _bf16_on_the_kernels():
        pytest.skip("the core does not take bfloat16 arrays yet")
    seen: list[object] = []
    spy(monkeypatch, [(_cross_entropy, "backend_rows", "rows")], seen.append)
    n, h, v = 384, 64, 2048
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g).bfloat16()
    W = (torch.randn(v, h, generator=g) * 0.25).bfloat16()
    b = torch.randn(v, generator=g).bfloat16()
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = -100

    def run(fn, dt):
        leaves = [p.to(dt).clone().requires_grad_(True) for p in (x, W, b)]
        loss = fn(*leaves)
        loss.backward()
        return [loss.detach(), *(p.grad for p in leaves)]

    truth = run(lambda a, B, c: F.linear_cross_entropy(a, B, t, linear_bias=c), torch.float64)
    theirs = run(lambda a, B, c: F.linear_cross_entropy(a, B, t, linear_bias=c), torch.bfloat16)
    ours = run(lambda a, B, c: xt.linear_cross_entropy(a, B, t, linear_bias=c,
                                                       chunk_size=-(-n // chunks)),
               torch.bfloat16)
    assert len(seen) == chunks, "xent's kernels should compute every chunk"
    for name, o, p, e in zip(("loss", "grad_input", "grad_weight", "grad_bias"), ours, theirs,
                             truth, strict=True):
        assert o.dtype == torch.bfloat16, name
        assert _rel(o, e) <= _rel(p, e) * 1.0001 + 1e-7, (name, _rel(o, e), _rel(p, e))
    # acc_policy="compact": grad_W accumulated in bfloat16 over the chunks (no float32 (V, H)
    # buffer, the fast path): the same loss and grad_input, grad_W rounded once per chunk.
    opt = torch.nn.LinearCrossEntropyOptions(acc_policy="compact", batch_chunk_size=-(-n // chunks))
    fast = run(lambda a, B, c: xt.linear_cross_entropy(a, B, t, linear_bias=c, options=opt),
               torch.bfloat16)
    for k in (0, 1, 3):
        assert torch.equal(fast[k], ours[k])
    assert _rel(fast[2], truth[2]) <= _rel(theirs[2], truth[2]) * (1.0001 if chunks == 1 else 1.5)


def test_errors_say_what_was_expected():
    x, W, b, t, w = _problem(9, dtype=torch.float32)
    with pytest.raises(ValueError, match="expected \\(V, 8\\)"):
        xt.linear_cross_entropy(x, W[:, :5], t)
    with pytest.raises(IndexError, match="out of bounds for 37 classes"):
        xt.linear_cross_entropy(x, W, torch.full_like(t, 40))
    with pytest.raises(ValueError, match="chunk_size"):
        xt.linear_cross_entropy(x, W, t, chunk_size=0)


def test_weight_gradient_is_handed_over_without_a_copy():
    x, W, b, t, w = _problem(10, n=64, h=16, v=128, dtype=torch.float32)
    Wl = W.clone().requires_grad_(True)
    loss = xt.linear_cross_entropy(x, Wl, t)
    precomputed = loss.grad_fn.grads[1].data_ptr()
    loss.backward()
    assert Wl.grad.data_ptr() == precomputed


# ---------------------------------------------------------------------------------------------
# PyTorch 2.13's K-dimensional weight: linear_weight (C, d1, ..., dK, H), logits (N, C, d1, ..)


def _kdim_problem(seed, n=9, h=5, c=6, out=(3, 2), dtype=torch.float64, prob=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=dtype)
    W = torch.randn(c, *out, h, generator=g, dtype=dtype)
    b = torch.randn(c, *out, generator=g, dtype=dtype)
    if prob:
        t = torch.softmax(torch.randn(n, c, *out, generator=g, dtype=dtype), 1)
    else:
        t = torch.randint(0, c, (n, *out), generator=g)
        t.view(-1)[::4] = -100
    w = torch.rand(c, generator=g, dtype=dtype) + 0.5
    return x, W, b, t, w


@pytest.fixture
def kdim_calls(monkeypatch):
    """Which cross-entropy kernels the chunks ran: the K-dimensional ones or the row ones."""
    from xent import _kernels  # (Numba: imported only here)

    seen: list[str] = []
    spy(monkeypatch, [(_kernels, "ce_index_kdim", "kdim"), (_kernels, "ce_prob_kdim", "kdim"),
                      (_cross_entropy, "backend_rows", "rows")], seen.append)
    return seen


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("out", [(3, 2), (4,)])
def test_kdim_weight_matches_torch(kdim_calls, backend, reduction, prob, out):
    x, W, b, t, w = _kdim_problem(11, out=out, prob=prob)
    go = torch.rand(t.shape if not prob else (t.shape[0], *t.shape[2:]), dtype=x.dtype) \
        if reduction == "none" else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    with xent.use_backend(backend):
        ours = _grads(lambda a, B, c: xt.linear_cross_entropy(a, B, t, linear_bias=c,
                                                              chunk_size=4, **kw), x, W, b, go)
    assert kdim_calls and set(kdim_calls) == {"kdim" if backend == "numba" else "rows"}
    ref = _grads(lambda a, B, c: F.linear_cross_entropy(a, B, t, linear_bias=c, **kw), x, W, b,
                 go)
    _compare(ours, ref, torch.float64, f"{backend} {reduction} prob={prob} out={out}")
    assert ours[0].shape == ref[0].shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kdim_weight_with_the_options(dtype):
    """z-loss, soft-capping and lse need the row kernel: the class axis is moved last per chunk."""
    x, W, b, t, w = _kdim_problem(12, dtype=dtype)
    logits = lambda a, B, c: (a @ B.reshape(-1, a.shape[1]).T + c.reshape(-1)).reshape(  # noqa: E731
        a.shape[0], *B.shape[:-1])
    for zs, cap in ((1e-2, None), (0.0, 3.0), (1e-2, 3.0)):
        ours = _grads(lambda a, B, c, zs=zs, cap=cap: xt.linear_cross_entropy(
            a, B, t, linear_bias=c, weight=w, chunk_size=2, lse_square_scale=zs, softcap=cap),
            x, W, b)
        ref = _grads(lambda a, B, c, zs=zs, cap=cap: _reference.cross_entropy(
            logits(a, B, c), t, w, -100, "mean", 0.0, zs, cap, False), x, W, b)
        _compare(ours, ref, dtype, f"z={zs} cap={cap}")
    _, lse = xt.linear_cross_entropy(x, W, t, linear_bias=b, return_lse=True, chunk_size=4)
    torch.testing.assert_close(lse, torch.logsumexp(logits(x, W, b), 1), **TOL[dtype])


def test_kdim_weight_errors_are_pytorchs_or_say_what_was_expected():
    x, W, b, t, w = _kdim_problem(13)
    with pytest.raises(RuntimeError, match="requires batched input"):  # PyTorch's own check
        xt.linear_cross_entropy(x[0], W, t[0])
    with pytest.raises(ValueError, match=r"linear_bias must have shape \(6, 3, 2\)"):
        xt.linear_cross_entropy(x, W, t, linear_bias=b.reshape(-1))
    with pytest.raises(ValueError, match=r"has 4 features .*: expected \(C, d1, ..., dK, 4\)"):
        xt.linear_cross_entropy(x[:, :4], W, t)
    with pytest.raises(ValueError, match=r"shape \(9, 3, 2\)"):
        xt.linear_cross_entropy(x, W, t[:, :, 0])


# ---------------------------------------------------------------------------------------------
# PyTorch's options and ignore_index=None


def test_options_chunking_is_honoured(monkeypatch):
    calls: list[str] = []
    spy(monkeypatch, [(_cross_entropy, "backend_rows", "chunk")], calls.append)
    x, W, b, t, w = _problem(14, n=40, h=8, v=64, dtype=torch.float32)
    Opt = torch.nn.LinearCrossEntropyOptions
    cases = [(Opt(batch_chunk_size=16), 3),  # ceil(40 / 16)
             (Opt(chunking_method="aspect_ratio"),  # PyTorch's pick: next_pow2(ceil(40/8)) = 8
              -(-40 // Opt()._compute_batch_chunk_size(40, 8, 64, "aspect_ratio"))),
             (Opt(), 1)]  # "auto": xent's default chunk (one chunk at this size)
    for opt, chunks in cases:
        calls.clear()
        loss = xt.linear_cross_entropy(x, W.requires_grad_(True), t, options=opt)
        assert len(calls) == chunks, opt
        torch.testing.assert_close(loss, F.cross_entropy(x @ W.T, t), **TOL[torch.float32])
    with pytest.raises(ValueError, match="give different chunk sizes"):  # PyTorch's check
        xt.linear_cross_entropy(x, W, t, options=Opt(batch_chunk_size=3,
                                                     chunking_method="aspect_ratio"))


def test_ignore_index_none_means_minus_100_and_is_refused_with_probabilities():
    x, W, b, t, w = _problem(15, dtype=torch.float32)
    torch.testing.assert_close(xt.linear_cross_entropy(x, W, t),
                               F.cross_entropy(x @ W.T, t, ignore_index=-100))
    y = torch.softmax(torch.randn(x.shape[0], W.shape[0]), 1)
    with pytest.raises(ValueError, match="cannot be given with class-probability"):
        xt.linear_cross_entropy(x, W, y, ignore_index=-100)
    torch.testing.assert_close(xt.linear_cross_entropy(x, W, y),
                               F.linear_cross_entropy(x, W, y), **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# The module


def _module_pair(seed, **kw):
    torch.manual_seed(seed)
    theirs = torch.nn.LinearCrossEntropyLoss(5, 6, **kw)
    torch.manual_seed(seed + 1)
    ours = xt.LinearCrossEntropyLoss(5, 6, **kw)
    return ours, theirs


@pytest.mark.parametrize("kw", [
    {}, {"bias": True}, {"out_features": (3, 2), "bias": True},
    {"out_features": (4,), "reduction": "none", "label_smoothing": 0.2},
    {"weight": torch.rand(6) + 0.5, "ignore_index": 2, "reduction": "sum"},
    {"dtype": torch.float64, "bias": True, "options": torch.nn.LinearCrossEntropyOptions()},
])
def test_module_matches_torchs_and_state_dicts_load_both_ways(kw):
    ours, theirs = _module_pair(16, **kw)
    assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
    assert repr(ours).replace("xent.torch.", "") == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert not torch.equal(ours.linear.weight, theirs.linear.weight)  # different seeds
    # PyTorch's state dict into ours, ours into PyTorch's: strict, every key and shape.
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    other = torch.nn.LinearCrossEntropyLoss(5, 6, **kw)
    other.load_state_dict(ours.state_dict(), strict=True)
    dt = kw.get("dtype", torch.float32)
    g = torch.Generator().manual_seed(17)
    x = torch.randn(7, 5, generator=g, dtype=dt, requires_grad=True)
    t = torch.randint(0, 6, (7, *kw.get("out_features", ())), generator=g)
    ys = []
    for m in (ours, theirs, other):
        m.zero_grad()
        x.grad = None
        out = m(x, t)
        out.backward(torch.ones_like(out))
        ys.append((out.detach(), x.grad.clone(),
                   *(p.grad.clone() for p in m.parameters())))
    for a, e in zip(ys[0], ys[1], strict=True):
        torch.testing.assert_close(a, e, **TOL[dt])
    for a, e in zip(ys[2], ys[1], strict=True):
        torch.testing.assert_close(a, e, **TOL[dt])


def test_module_forward_runs_xents_chunked_path(kdim_calls):
    m = xt.LinearCrossEntropyLoss(5, 6, out_features=(3,), bias=True)
    with xent.use_backend("numba"):
        m(torch.randn(4, 5), torch.randint(0, 6, (4, 3))).backward()
    assert kdim_calls == ["kdim"]
    assert m.linear.weight.grad.shape == (18, 5) and m.linear.bias.grad.shape == (18,)


def test_module_constructor_errors_are_pytorchs():
    for kw in ({"weight": torch.ones(5)}, {"label_smoothing": 1.5}):
        with pytest.raises(RuntimeError) as want:
            torch.nn.LinearCrossEntropyLoss(5, 6, **kw)
        with pytest.raises(RuntimeError) as got:
            xt.LinearCrossEntropyLoss(5, 6, **kw)
        assert str(got.value) == str(want.value)


def test_autocast_bfloat16_behaves_as_pytorchs(monkeypatch):
    """Under CPU autocast PyTorch runs the product in bfloat16 and the cross-entropy in float32
    (float32 loss, float32 gradients of float32 leaves); xent runs its bfloat16 path there."""
    if not _bf16_on_the_kernels():
        pytest.skip("the core does not take bfloat16 arrays yet")
    seen: list[object] = []
    real = _cross_entropy.backend_rows
    monkeypatch.setattr(_cross_entropy, "backend_rows",
                        lambda p, x, *a, **k: seen.append(x.dtype) or real(p, x, *a, **k))
    x, W, b, t, w = _problem(20, n=40, h=16, v=96, dtype=torch.float32)
    out = []
    for fn in (xt.linear_cross_entropy, F.linear_cross_entropy):
        leaves = [p.clone().requires_grad_(True) for p in (x, W, b)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], weight=w)
        loss.backward()
        out.append([loss.detach(), *(p.grad for p in leaves)])
    assert [str(d) for d in seen] == ["bfloat16"]
    for a, e in zip(*out, strict=True):
        assert a.dtype == e.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_kdim_weight_in_bfloat16_is_as_close_to_float64_as_pytorchs(kdim_calls, backend):
    if not _bf16_on_the_kernels():
        pytest.skip("the core does not take bfloat16 arrays yet")
    x, W, b, t, w = _kdim_problem(21, n=64, h=16, c=40, dtype=torch.float32)
    x, W, b = x.bfloat16(), (W * 0.3).bfloat16(), b.bfloat16()

    def run(fn, dt, **kw):
        leaves = [p.to(dt).clone().requires_grad_(True) for p in (x, W, b)]
        loss = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], weight=w.to(dt), **kw)
        loss.backward()
        return [loss.detach(), *(p.grad for p in leaves)]

    truth = run(F.linear_cross_entropy, torch.float64)
    theirs = run(F.linear_cross_entropy, torch.bfloat16)
    with xent.use_backend(backend):
        ours = run(xt.linear_cross_entropy, torch.bfloat16, chunk_size=20)
    assert kdim_calls == [("kdim" if backend == "numba" else "rows")] * 4  # 4 chunks of 20 rows
    for name, o, p, e in zip(("loss", "grad_input", "grad_weight", "grad_bias"), ours, theirs,
                             truth, strict=True):
        assert o.dtype == torch.bfloat16, name
        assert _rel(o, e) <= _rel(p, e), (name, _rel(o, e), _rel(p, e))


def test_soft_cap_new_in_place_and_its_derivative():
    """`_reference.soft_cap`, the one cap of the torch layer (the reference's differentiable
    form, the chunked forms' in-place one with 1 - tanh²), against float64 autograd."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64) * 10
    xr = x.clone().requires_grad_(True)
    want = 4.0 * torch.tanh(xr / 4.0)
    (want_deriv,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(_reference.soft_cap(x, 4.0), want.detach(), rtol=1e-15, atol=0)
    z, deriv = x.float().clone(), torch.empty(5, 7)
    out = _reference.soft_cap(z, 4.0, out=z, deriv=deriv)
    assert out.data_ptr() == z.data_ptr()
    torch.testing.assert_close(z, want.detach().float(), **TOL[torch.float32])
    torch.testing.assert_close(deriv, want_deriv.float(), **TOL[torch.float32])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["tensor", "ndarray"])
def test_row_scales_of_tensors_and_arrays(reduction, kind):
    """`xent._reduction.row_scales`, the row scales of the core, the linear and the
    vocabulary-parallel forms: g for 'none' and 'sum', g / D (and g / D_z) for 'mean'."""
    from xent import _reduction

    g64 = (torch.rand(2, 3, dtype=torch.float64) if reduction == "none"
           else torch.tensor(0.7, dtype=torch.float64))
    den, den_z = 2.5, 4.0
    want = g64.reshape(-1).expand(6) / (den if reduction == "mean" else 1.0)
    want_z = g64.reshape(-1).expand(6) / (den_z if reduction == "mean" else 1.0)
    g = g64.float() if kind == "tensor" else g64.float().numpy()
    s, s_z = _reduction.row_scales(reduction, g, g.dtype.type(den) if kind == "ndarray"
                                   else torch.tensor(den), den_z, 6)
    for got, exp in ((s, want), (s_z, want_z)):
        got = got.clone() if isinstance(got, torch.Tensor) else torch.from_numpy(got.copy())
        assert got.shape == (6,)
        torch.testing.assert_close(got.double(), exp, rtol=1e-6, atol=0)
    s, s_z = _reduction.row_scales(reduction, g, den)
    assert s_z is None
    assert np.shape(s) == ((6,) if reduction == "none" else ())


def test_autocast_loss_is_reduced_in_float32():
    """Under bf16 autocast the loss is float32 as PyTorch's (cross_entropy on its float32 list),
    computed from the bf16 logits without a bf16 rounding of the loss itself (one bf16 ulp
    near 20 is 0.125)."""
    if not _bf16_on_the_kernels():
        pytest.skip("bfloat16 needs ml_dtypes")
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 32, generator=g), torch.randn(1000, 32, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = xt.linear_cross_entropy(x, w, t)
    logits = (x.bfloat16().double() @ w.bfloat16().double().T)  # bf16 operands, exact products
    ref = F.cross_entropy(logits.bfloat16().double(), t)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 1e-5 * ref.item()
