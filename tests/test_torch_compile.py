"""xent.torch under torch.compile(fullgraph=True) and torch.export: the drop-ins run xent's
custom operators (xent.torch._ops) inside the graph, with values and gradients equal to eager
PyTorch's, and xent's core really runs (spied), not a silent fallback to PyTorch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt
from helpers import spy, spy_core
from xent.torch import _reference

pytestmark = pytest.mark.slow  # every test compiles (the first compile takes seconds)

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles afresh (no recompile limit reached across tests); small inputs go to
    xent, as with ``xent.torch.min_elements(0)``."""
    torch._dynamo.reset()
    old = xt.set_min_elements(0)
    yield
    xt.set_min_elements(old)
    torch._dynamo.reset()


@pytest.fixture
def core_calls(monkeypatch):
    """The calls that reach xent's core, by loss."""
    return spy_core(monkeypatch)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _value_and_grad(fn, x, *args, grad_output=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return out, x.grad


def _assert_same(ours, ref, dtype):
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype])


CE_CASES = {
    "plain": dict(),
    "weight-ignore": dict(weight=True, ignore_index=2),
    "smoothing-sum": dict(label_smoothing=0.2, reduction="sum"),
    "none": dict(reduction="none", weight=True),
    "probabilities": dict(prob=True, label_smoothing=0.1),
    "kdim": dict(kdim=True, ignore_index=1, reduction="none"),
}


def _ce_inputs(case, dtype, N=12, C=7):
    g = _gen(0)
    shape = (N, C, 3, 2) if case.get("kdim") else (N, C)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    if case.get("prob"):
        target = torch.softmax(torch.randn(shape, generator=g, dtype=dtype), 1)
    else:
        tshape = (shape[0],) + shape[2:]
        target = torch.randint(0, C, tshape, generator=g)
        target.view(-1)[::5] = case.get("ignore_index", -100)
    w = torch.rand(C, generator=g, dtype=dtype) + 0.5 if case.get("weight") else None
    kwargs = {k: v for k, v in case.items() if k in ("ignore_index", "label_smoothing",
                                                     "reduction")}
    return x, target, w, kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CE_CASES))
def test_compiled_cross_entropy_matches_pytorch(name, dtype, core_calls):
    x, target, w, kwargs = _ce_inputs(CE_CASES[name], dtype)

    def step(x, target):
        return xt.cross_entropy(x, target, w, **kwargs)

    compiled = torch.compile(step, fullgraph=True)
    loss_shape = F.cross_entropy(x, target, w, **kwargs).shape
    go = torch.rand(loss_shape, generator=_gen(1), dtype=dtype) + 0.5  # not all ones
    ours = _value_and_grad(compiled, x, target, grad_output=go)
    assert core_calls == ["cross_entropy"]  # xent's kernel ran inside the compiled graph
    ref = _value_and_grad(lambda x, t: F.cross_entropy(x, t, w, **kwargs), x, target,
                          grad_output=go)
    _assert_same(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opts", [dict(lse_square_scale=1e-2), dict(softcap=3.0),
                                  dict(softcap=4.0, lse_square_scale=1e-3, return_lse=True,
                                       reduction="none")])
def test_compiled_options_match_pytorch_ops(opts, dtype, core_calls):
    """z-loss, soft-capping and the lse, against the same loss composed from PyTorch ops."""
    x, target, w, _ = _ce_inputs(dict(weight=True), dtype)
    target[3] = -100
    reduction = opts.get("reduction", "mean")
    xopts = {k: v for k, v in opts.items() if k != "reduction"}
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t, w, reduction=reduction,
                                                           **xopts), fullgraph=True)
    ours = _value_and_grad(compiled, x, target)
    assert core_calls == ["cross_entropy"]
    ref = _value_and_grad(
        lambda x, t: _reference.cross_entropy(x, t, w, -100, reduction, 0.0,
                                              opts.get("lse_square_scale", 0.0),
                                              opts.get("softcap"), opts.get("return_lse", False)),
        x, target)
    if opts.get("return_lse"):
        (loss, lse), grad = ours
        (rloss, rlse), rgrad = ref
        _assert_same((loss, lse, grad), (rloss, rlse, rgrad), dtype)
        assert not lse.requires_grad
    else:
        _assert_same(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_nll_and_bce_match_pytorch(dtype, core_calls):
    g = _gen(2)
    logp = torch.log_softmax(torch.randn(10, 6, generator=g, dtype=dtype), 1)
    t = torch.randint(0, 6, (10,), generator=g)
    t[4] = -100
    w6 = torch.rand(6, generator=g, dtype=dtype)
    z = torch.randn(10, 6, generator=g, dtype=dtype)
    y = torch.rand(10, 6, generator=g, dtype=dtype)
    p = torch.sigmoid(torch.randn(10, 6, generator=g, dtype=dtype))
    pw = torch.rand(6, generator=g, dtype=dtype) + 0.5
    cases = [
        ("nll_loss", logp, (t,), lambda x, t: xt.nll_loss(x, t, w6, reduction="sum"),
         lambda x, t: F.nll_loss(x, t, w6, reduction="sum")),
        ("binary_cross_entropy", p, (y,), lambda x, y: xt.binary_cross_entropy(x, y),
         lambda x, y: F.binary_cross_entropy(x, y)),
        ("bce_with_logits", z, (y,),
         lambda x, y: xt.binary_cross_entropy_with_logits(x, y, pos_weight=pw,
                                                          reduction="none"),
         lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw,
                                                         reduction="none")),
    ]
    for label, x, args, ours_fn, ref_fn in cases:
        core_calls.clear()
        ours = _value_and_grad(torch.compile(ours_fn, fullgraph=True), x, *args)
        assert core_calls == [label]
        _assert_same(ours, _value_and_grad(ref_fn, x, *args), dtype)


@pytest.mark.parametrize("module, make_target", [
    (xt.CrossEntropyLoss(label_smoothing=0.1), lambda g: torch.randint(0, 5, (16,), generator=g)),
    (xt.NLLLoss(reduction="sum"), lambda g: torch.randint(0, 5, (16,), generator=g)),
    (xt.BCEWithLogitsLoss(), lambda g: torch.rand(16, 5, generator=g)),
])
def test_compiled_model_with_loss_module(module, make_target, core_calls):
    """A model and an xent loss module compiled together: one graph, parameters' gradients
    equal to the same model with PyTorch's module."""
    g = _gen(3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Tanh())
    if isinstance(module, xt.NLLLoss):
        model.append(torch.nn.LogSoftmax(1))
    x, target = torch.randn(16, 8, generator=g), make_target(g)
    torch_module = type(module).__mro__[1](reduction=module.reduction)  # PyTorch's own class
    if isinstance(module, xt.CrossEntropyLoss):
        torch_module.label_smoothing = module.label_smoothing

    def grads(loss_fn, compile_it):
        model.zero_grad()
        step = lambda x, t: loss_fn(model(x), t)  # noqa: E731
        step = torch.compile(step, fullgraph=True) if compile_it else step
        loss = step(x, target)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    ours = grads(module, True)
    assert len(core_calls) == 1
    _assert_same(ours, grads(torch_module, False), torch.float32)


def test_compiled_dynamic_batch_sizes(core_calls):
    """Other batch sizes still run xent's kernel, and cost one recompile (with a symbolic
    size, which the later sizes reuse)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    w = torch.rand(9, generator=_gen(4)) + 0.5
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t, w, label_smoothing=0.1),
                             fullgraph=True, backend=counter)
    for n in (6, 11, 17):
        g = _gen(n)
        x, t = torch.randn(n, 9, generator=g), torch.randint(0, 9, (n,), generator=g)
        core_calls.clear()
        ours = _value_and_grad(compiled, x, t)
        assert core_calls == ["cross_entropy"], n
        ref = _value_and_grad(lambda x, t: F.cross_entropy(x, t, w, label_smoothing=0.1), x, t)
        _assert_same(ours, ref, torch.float32)
    assert counter.frame_count == 2


def test_compiled_dynamic_true(core_calls):
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t, reduction="none"),
                             fullgraph=True, dynamic=True)
    for n in (5, 13):
        x, t = torch.randn(n, 4, generator=_gen(n)), torch.randint(0, 4, (n,), generator=_gen(n))
        ours = _value_and_grad(compiled, x, t)
        _assert_same(ours, _value_and_grad(lambda x, t: F.cross_entropy(x, t, reduction="none"),
                                           x, t), torch.float32)
    assert core_calls == ["cross_entropy"] * 2


def test_compiled_bad_target_raises_the_cores_index_error():
    """The values are validated at run time by the core: the same IndexError as eager."""
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t), fullgraph=True)
    x = torch.randn(4, 3, requires_grad=True)
    compiled(x, torch.tensor([0, 1, 2, 0]))  # compiles with valid targets
    with pytest.raises(IndexError, match=r"target 3 at position \(2,\) is out of bounds for 3"):
        compiled(x, torch.tensor([0, 1, 3, 0]))


def test_compiled_shape_error_names_the_argument():
    """Shapes are checked while tracing, by the core's validation step on the shapes."""
    w = torch.ones(4)
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t, w), fullgraph=True)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(3,\)"):
        compiled(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    compiled = torch.compile(lambda x, t: xt.nll_loss(x, t), fullgraph=True)
    with pytest.raises(RuntimeError, match=r"Expected input batch_size \(4\) to match target"):
        compiled(torch.randn(4, 3), torch.tensor([0, 1, 2]))


def test_compiled_no_grad_and_retain_graph(core_calls):
    compiled = torch.compile(lambda x, t: xt.cross_entropy(x, t), fullgraph=True)
    x, t = torch.randn(6, 5, requires_grad=True), torch.randint(0, 5, (6,), generator=_gen(5))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), F.cross_entropy(x, t))
    loss = compiled(x, t)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # the saved gradient is an output of the operator: a second pass works
    torch.testing.assert_close(x.grad, 2 * first)
    x.grad = None
    F.cross_entropy(x, t).backward()
    torch.testing.assert_close(first, x.grad)
    assert core_calls == ["cross_entropy"] * 2


def test_compiled_off_the_fast_path_runs_pytorch(core_calls):
    """A probability target that requires grad: PyTorch's ops in the graph, gradients for both."""
    compiled = torch.compile(lambda x, y: xt.cross_entropy(x, y), fullgraph=True)
    x = torch.randn(5, 4, requires_grad=True)
    y = torch.softmax(torch.randn(5, 4), 1).requires_grad_(True)
    compiled(x, y).backward()
    assert core_calls == []
    gx, gy = x.grad, y.grad
    x.grad = y.grad = None
    F.cross_entropy(x, y).backward()
    torch.testing.assert_close((gx, gy), (x.grad, y.grad))


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.loss = xt.CrossEntropyLoss(weight=torch.rand(5) + 0.5)

    def forward(self, x, t):
        return self.loss(self.linear(x), t) + xt.cross_entropy(self.linear(x), t, softcap=2.0)


def test_compiled_two_losses_share_the_logits(core_calls):
    """Two xent losses in one compiled graph (two saved gradients) on the outputs
    of one linear layer: the parameters' gradients equal PyTorch's."""
    torch.manual_seed(0)
    model = _Head()
    x, t = torch.randn(7, 6), torch.randint(0, 5, (7,), generator=_gen(6))
    loss = torch.compile(model, fullgraph=True)(x, t)
    loss.backward()
    assert core_calls == ["cross_entropy"] * 2
    ours = [loss.detach()] + [p.grad.clone() for p in model.linear.parameters()]
    model.zero_grad()
    z = model.linear(x)
    ref = F.cross_entropy(z, t, model.loss.weight) + _reference.cross_entropy(
        z, t, None, -100, "mean", 0.0, 0.0, 2.0, False)
    ref.backward()
    _assert_same(ours, [ref.detach()] + [p.grad for p in model.linear.parameters()],
                 torch.float32)


def test_export_runs_xent_kernels(core_calls):
    torch.manual_seed(0)
    model = _Head()
    x, t = torch.randn(7, 6), torch.randint(0, 5, (7,), generator=_gen(6))
    ep = torch.export.export(model, (x, t))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.xent.cross_entropy.default) == 2
    core_calls.clear()
    exported = ep.module()
    got = exported(x, t)
    assert core_calls == ["cross_entropy"] * 2
    with xt.min_elements(1 << 30):  # the eager reference: PyTorch's ops
        expected = model(x, t)
    torch.testing.assert_close(got, expected)
    got.backward()  # the exported program trains too (its parameters required grad)
    expected.backward()
    torch.testing.assert_close([p.grad for p in exported.parameters()],
                               [p.grad for p in model.parameters()])


class _Traced(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, x, t):
        return xt.cross_entropy(self.linear(x), t, label_smoothing=0.1)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_torchscript_trace_keeps_pytorch_ops(core_calls):
    """TorchScript cannot hold the custom operators' Python: it traces PyTorch's ops."""
    model = _Traced()
    x, t = torch.randn(5, 3), torch.randint(0, 4, (5,), generator=_gen(7))
    traced = torch.jit.trace(model, (x, t), check_trace=False)
    assert core_calls == []
    torch.testing.assert_close(traced(x, t), F.cross_entropy(model.linear(x), t,
                                                             label_smoothing=0.1))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [1, -1])
def test_compiled_softmax_and_log_softmax(name, dim, monkeypatch):
    calls: list[str] = []
    spy(monkeypatch, [(xent, "softmax", "softmax"), (xent, "log_softmax", "log_softmax")],
        calls.append)
    ours_fn, ref_fn = getattr(xt, name), getattr(F, name)
    w = torch.rand(6, 5, 4, generator=_gen(8))

    def loss(fn):
        return lambda x: (fn(x, dim) * w).sum()

    x = torch.randn(6, 5, 4, generator=_gen(9), dtype=torch.float64)
    ours = _value_and_grad(torch.compile(loss(ours_fn), fullgraph=True), x)
    assert calls == [name]
    _assert_same(ours, _value_and_grad(loss(ref_fn), x), torch.float64)
    ep = torch.export.export(_Activation(ours_fn, dim), (x,))
    assert getattr(torch.ops.xent, name).default in [n.target for n in ep.graph.nodes]
    torch.testing.assert_close(ep.module()(x), ref_fn(x, dim))


class _Activation(torch.nn.Module):
    def __init__(self, fn, dim) -> None:
        super().__init__()
        self.fn, self.dim = fn, dim

    def forward(self, x):
        return self.fn(x, self.dim)
