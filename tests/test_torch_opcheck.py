"""`torch.library.opcheck` on every custom operator of xent.torch, with arguments for every
option: the schema (no undeclared mutation or aliasing), the fake implementation against the
real one, the registered autograd, and AOT dispatch with dynamic shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import xent.torch  # noqa: E402, F401  (registers torch.ops.xent.*)

pytestmark = pytest.mark.slow  # (each case compiles with AOT autograd: about a second)


def _x(*shape, dtype=torch.float64, grad=True):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


def _probs(*shape, dtype=torch.float64):
    return torch.softmax(_x(*shape, dtype=dtype, grad=False), 1)


_T = torch.tensor([0, 2, 1, 3, -100])
_W = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)

# (input, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale, softcap,
#  return_lse, need_grad)
CROSS_ENTROPY = {
    "index mean": (_x(5, 4), _T, None, -100, "mean", 0.0, 0.0, None, False, True),
    "index none weight": (_x(5, 4), _T, _W, -100, "none", 0.0, 0.0, None, False, True),
    "index sum smoothing": (_x(5, 4), _T, _W, -100, "sum", 0.1, 0.0, None, False, True),
    "z-loss softcap lse": (_x(5, 4), _T, None, -100, "mean", 0.0, 1e-2, 3.0, True, True),
    "ignore_index 2": (_x(5, 4), torch.tensor([0, 2, 1, 3, 2]), _W, 2, "mean", 0.0, 0.0, None,
                       False, True),
    "probabilities": (_x(5, 4), _probs(5, 4), _W, -100, "mean", 0.2, 0.0, None, False, True),
    "k-dim": (_x(3, 4, 2, 2), torch.tensor([[[0, 1], [2, 3]]] * 3), None, -100, "none", 0.0,
              0.0, None, False, True),
    "forward only": (_x(5, 4, grad=False), _T, None, -100, "mean", 0.0, 0.0, None, False,
                     False),
    "float32": (_x(5, 4, dtype=torch.float32), _T, _W.float(), -100, "mean", 0.0, 0.0, None,
                False, True),
}


@pytest.mark.parametrize("case", CROSS_ENTROPY)
def test_cross_entropy(case):
    torch.library.opcheck(torch.ops.xent.cross_entropy.default, CROSS_ENTROPY[case])


NLL = {
    "mean": (_x(5, 4), _T, None, -100, "mean", True),
    "none weight": (_x(5, 4), _T, _W, -100, "none", True),
    "sum k-dim": (_x(3, 4, 2), torch.tensor([[0, 1]] * 3), None, -100, "sum", True),
}


@pytest.mark.parametrize("case", NLL)
def test_nll_loss(case):
    torch.library.opcheck(torch.ops.xent.nll_loss.default, NLL[case])


def _p(*shape):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            * 0.8 + 0.1).requires_grad_(True)


_Y = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.25]], dtype=torch.float64)
BCE = {
    "mean": (_p(2, 3), _Y, None, "mean", True),
    "none weight": (_p(2, 3), _Y, torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), "none",
                    True),
    "sum": (_p(2, 3), _Y, None, "sum", True),
}


@pytest.mark.parametrize("case", BCE)
def test_binary_cross_entropy(case):
    torch.library.opcheck(torch.ops.xent.binary_cross_entropy.default, BCE[case])


BCE_LOGITS = {
    "mean": (_x(2, 3), _Y, None, None, "mean", True),
    "none weight pos_weight": (_x(2, 3), _Y, torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64),
                               torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64), "none", True),
    "sum": (_x(2, 3), _Y, None, torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64), "sum",
            True),
}


@pytest.mark.parametrize("case", BCE_LOGITS)
def test_binary_cross_entropy_with_logits(case):
    torch.library.opcheck(torch.ops.xent.binary_cross_entropy_with_logits.default,
                          BCE_LOGITS[case])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((4, 5), 1), ((4, 5), 0), ((2, 3, 4), 1), ((6,), 0)])
def test_activations_and_their_backward(name, shape, dim):
    x = _x(*shape)
    op = getattr(torch.ops.xent, name).default
    torch.library.opcheck(op, (x, dim))
    out = op(x.detach(), dim)
    grad_output = _x(*shape, grad=False)
    torch.library.opcheck(getattr(torch.ops.xent, name + "_backward").default,
                          (grad_output, out, dim))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_activation_vmap_rules_match_pytorch(name):
    """The registered vmap rules: vmap over the operator and over its backward give PyTorch's
    values."""
    x = _x(3, 4, 5, grad=False)
    op = getattr(torch.ops.xent, name)
    ref = getattr(torch, name)
    torch.testing.assert_close(torch.func.vmap(lambda t: op(t, 1))(x), ref(x, 2))
    y = ref(x, 2)
    g = _x(3, 4, 5, grad=False)
    aten = getattr(torch.ops.aten, f"_{name}_backward_data")
    torch.testing.assert_close(
        torch.func.vmap(lambda a, b: getattr(torch.ops.xent, name + "_backward")(a, b, 0),
                        in_dims=(2, 2))(g, y),
        aten(g, y, 0, torch.float64).movedim(2, 0))
    # a batched upstream gradient against an unbatched output
    torch.testing.assert_close(
        torch.func.vmap(lambda a: getattr(torch.ops.xent, name + "_backward")(a, y[0], 1))(g),
        aten(g, y[0].expand(3, 4, 5), 2, torch.float64))
