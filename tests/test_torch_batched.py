"""Batched gradients: vmap over the backward of every drop-in and module of xent.torch.

PyTorch's own test harness checks gradients with ``gradcheck(..., check_batched_grad=True)``
(``test_nn``, ``test_modules``), and users ask for per-sample or batched vector-Jacobian
products with ``autograd.grad(..., is_grads_batched=True)`` and ``jacobian(vectorize=True)``:
all run the backward under vmap, where a backward that reads a value (``.item()``) or converts
to NumPy fails. The cut-off is 0 here, so every call runs xent's core (`Route.CORE`).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import xent.torch as xt  # noqa: E402
from xent.torch import _route  # noqa: E402


@pytest.fixture(autouse=True)
def _everything_on_xent():
    with xt.min_elements(0):
        yield


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


_T = torch.tensor([0, 2, 1, -100])
_W = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
_Y = torch.rand(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
_PROBS = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(2),
                                   dtype=torch.float64), 1)

CASES = {
    "cross_entropy": lambda x: xt.cross_entropy(x, _T),
    "cross_entropy none weight smoothing": lambda x: xt.cross_entropy(
        x, _T, _W, reduction="none", label_smoothing=0.1),
    "cross_entropy z-loss softcap": lambda x: xt.cross_entropy(
        x, _T, lse_square_scale=0.01, softcap=2.0, reduction="sum"),
    "cross_entropy probabilities": lambda x: xt.cross_entropy(x, _PROBS),
    "cross_entropy k-dim none": lambda x: xt.cross_entropy(  # x (2, 3, 2): see _input
        x, torch.tensor([[0, 1], [2, 0]]), reduction="none"),
    "nll_loss": lambda x: xt.nll_loss(x, _T, _W),
    "nll_loss none": lambda x: xt.nll_loss(x, _T, reduction="none"),
    "binary_cross_entropy": lambda p: xt.binary_cross_entropy(p, _Y, _W),  # p in (0, 1)
    "binary_cross_entropy_with_logits none": lambda x: xt.binary_cross_entropy_with_logits(
        x, _Y, reduction="none", pos_weight=_W),
    "softmax": lambda x: xt.softmax(x, 1),
    "softmax dim 0": lambda x: xt.softmax(x, 0),
    "log_softmax": lambda x: xt.log_softmax(x, -1),
    "CrossEntropyLoss": lambda x: xt.CrossEntropyLoss(_W, label_smoothing=0.2)(x, _T),
    "NLLLoss": lambda x: xt.NLLLoss(reduction="sum")(x, _T),
    "BCELoss": lambda p: xt.BCELoss(reduction="none")(p, _Y),
    "BCEWithLogitsLoss": lambda x: xt.BCEWithLogitsLoss(pos_weight=_W)(x, _Y),
}


def _input(case: str) -> torch.Tensor:
    """The case's input, itself (a double backward needs the loss's input kept by the caller:
    docs/torch.md): logits (4, 3), (2, 3, 2) for the K-dimensional case, probabilities for
    BCE."""
    if "k-dim" in case:
        return _x(2, 3, 2)
    x = _x(4, 3)
    if case in ("binary_cross_entropy", "BCELoss"):
        return torch.sigmoid(x.detach()).requires_grad_(True)
    return x


def test_the_cases_run_on_xent(monkeypatch):
    """The premise: every case is computed by xent's core, not PyTorch's op."""
    routes = []
    real = _route.plan
    monkeypatch.setattr("xent.torch._functional.plan",
                        lambda *a, **k: routes.append(real(*a, **k)) or routes[-1])
    monkeypatch.setattr("xent.torch._activations.plan",
                        lambda *a, **k: routes.append(real(*a, **k)) or routes[-1])
    for case, fn in CASES.items():
        fn(_input(case))
    assert routes and set(routes) == {_route.Route.CORE}


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_with_batched_grad(case):
    fn = CASES[case]
    assert torch.autograd.gradcheck(fn, (_input(case),), check_batched_grad=True)


@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck_with_batched_grad(case):
    fn = CASES[case]
    assert torch.autograd.gradgradcheck(fn, (_input(case),), check_batched_grad=True)


@pytest.mark.parametrize("case", ["cross_entropy", "nll_loss", "softmax", "log_softmax",
                                  "binary_cross_entropy_with_logits none"])
def test_is_grads_batched_and_vectorized_jacobian_equal_pytorchs(case):
    """The issue's example: PyTorch returns a (2, 4, 3) gradient for two upstream gradients."""
    fn = CASES[case]
    ref_fn = {
        "cross_entropy": lambda x: F.cross_entropy(x, _T),
        "nll_loss": lambda x: F.nll_loss(x, _T, _W),
        "softmax": lambda x: torch.softmax(x, 1),
        "log_softmax": lambda x: torch.log_softmax(x, -1),
        "binary_cross_entropy_with_logits none": lambda x: F.binary_cross_entropy_with_logits(
            x, _Y, reduction="none", pos_weight=_W),
    }[case]
    x = _x(4, 3)
    out = fn(x)
    v = torch.randn(2, *out.shape, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    (ours,) = torch.autograd.grad(out, x, v, is_grads_batched=True)
    (ref,) = torch.autograd.grad(ref_fn(x), x, v, is_grads_batched=True)
    assert ours.shape == (2, 4, 3)
    torch.testing.assert_close(ours, ref)
    jac = torch.autograd.functional.jacobian(fn, x, vectorize=True)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(ref_fn, x))


def test_linear_cross_entropy_batched_gradients_equal_pytorchs():
    """The chunked linear form's backward under vmap (reduced losses): PyTorch's results."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, 3, -100, 2, 1])
    v = torch.tensor([1.0, -0.5], dtype=torch.float64)
    ours = torch.autograd.grad(xt.linear_cross_entropy(x, w, t, chunk_size=4), (x, w), v,
                               is_grads_batched=True, allow_unused=True)
    ref = torch.autograd.grad(F.linear_cross_entropy(x, w, t), (x, w), v,
                              is_grads_batched=True)
    torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradcheck(
        lambda x, w: xt.linear_cross_entropy(x, w, t, chunk_size=4, allow_retain_graph=True),
        (x, w), check_batched_grad=True)
