"""Focal loss, poly-1 cross-entropy and torchvision's sigmoid focal loss as PyTorch drop-ins.

PyTorch has none of them, so every call asks the plan with ``extended=True`` (never
`Route.TORCH`) and runs the route it names (`_route.plan`):

- `Route.CORE`: the core (`xent._focal`) on zero-copy NumPy views, loss and gradient in one
  pass, through `_bridge.SavedGrad`;
- `Route.CUSTOM_OP` (``torch.compile`` / ``torch.export``, CPU autocast): the operators
  ``xent::focal_loss`` ``(input, target, weight?, ignore_index, reduction, label_smoothing,
  gamma, epsilon, need_grad) -> (loss, grad)`` (focal and poly-1: one per-class loss, see
  `xent._focal`) and ``xent::sigmoid_focal_loss`` ``(input, target, alpha, gamma, reduction,
  need_grad) -> (loss, grad)``, registered here with fake implementations (the core's
  validation on shapes) and autograd (the gradient output scaled by the upstream gradient);
- `Route.COMPOSED`: the formulas written in PyTorch ops (`composed_class_loss`,
  `composed_sigmoid_focal`): tensors the kernels cannot read (CUDA, ...), TorchScript or
  forward-mode AD, and a double backward (``create_graph=True``).

``gamma = 0`` (focal) and ``epsilon = 0`` (poly-1) are `xent.torch.cross_entropy` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xent import _binary, _focal, _reduction
from xent._problem import Options, check_options
from xent._validation import check_real, check_reduction

from . import _bridge, _functional
from ._ops import _check_shapes, _fake_grad, _grad_tensor, _stand_in
from ._route import Route, plan

__all__ = ["composed_class_loss", "composed_sigmoid_focal", "focal_loss",
           "poly1_cross_entropy", "sigmoid_focal_loss"]


# -- the formulas in PyTorch ops (Route.COMPOSED, double backward) --------------------------------

def _phi(logp: Tensor, gamma: float, epsilon: float) -> Tensor:
    """-(1-p)^γ·log p + ε·(1-p), with 1 - p = -expm1(log p)."""
    q = -torch.expm1(logp)
    phi = -logp if gamma == 0 else -(q ** gamma) * logp
    return phi + epsilon * q if epsilon else phi


def composed_class_loss(input: Tensor, target: Tensor, weight: Tensor | None,
                        ignore_index: int, reduction: str, label_smoothing: float,
                        gamma: float, epsilon: float) -> Tensor:
    """The focal / poly-1 loss of validated arguments in PyTorch ops (16-bit input computed in
    float32, the result rounded once); see `xent._focal`."""
    dtype = input.dtype
    x = input.float() if dtype in (torch.float16, torch.bfloat16) else input
    axis = 1 if x.dim() >= 2 else 0
    C = x.shape[axis]
    logp = F.log_softmax(x, dim=axis)
    eps = label_smoothing
    shape = [1] * x.dim()
    shape[axis] = C
    w = None if weight is None else weight.to(x.dtype).reshape(shape)
    if target.shape == input.shape:  # class probabilities
        y = target.to(x.dtype)
        a = y * (1 - eps) + eps / C if eps else y
        a = a if w is None else a * w
        rows = (a * _phi(logp, gamma, epsilon)).sum(axis)
        denom: Any = rows.numel() if C else 0
    else:
        valid = target != ignore_index
        t = torch.where(valid, target, torch.zeros((), dtype=target.dtype))
        lp_t = logp.gather(axis, t.unsqueeze(axis)).squeeze(axis)
        w_t = valid.to(x.dtype) if weight is None else weight.to(x.dtype)[t] * valid
        rows = w_t * _phi(lp_t, gamma, epsilon)  # (the target's term alone: no 0·inf)
        if eps:
            ones = torch.ones(shape, dtype=x.dtype) if w is None else w
            smooth = (ones * _phi(logp, gamma, epsilon)).sum(axis)
            rows = (1 - eps) * rows + (eps / C) * smooth
        rows = torch.where(valid, rows, torch.zeros((), dtype=x.dtype))
        denom = w_t.sum()
    return _reduction.reduce(rows, reduction, denom).to(dtype)


def composed_sigmoid_focal(input: Tensor, target: Tensor, alpha: float, gamma: float,
                           reduction: str) -> Tensor:
    """torchvision's ``sigmoid_focal_loss`` formula in PyTorch ops (16-bit input in float32)."""
    dtype = input.dtype
    x = input.float() if dtype in (torch.float16, torch.bfloat16) else input
    y = target.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return _reduction.reduce(loss, reduction, loss.numel()).to(dtype)


# -- xent::focal_loss ---------------------------------------------------------------------------

def class_arrays(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                 reduction: str, options: Options, gamma: float, epsilon: float,
                 fn: str) -> Any:
    """``compute(grad) -> (loss, gradient or None)`` on NumPy views, after the core's
    validation (shared by the eager route and the operator)."""
    problem = _bridge.problem_for(input, target, weight, ignore_index, reduction, options, fn=fn)
    x = _bridge.as_numpy(input)

    def compute(grad: bool):
        out: Any = _focal.solve(problem, x, x.dtype, gamma, epsilon, return_grad=grad)
        return out if grad else (out, None)

    return compute


@torch.library.custom_op("xent::focal_loss", mutates_args=())
def _focal_op(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
              reduction: str, label_smoothing: float, gamma: float, epsilon: float,
              need_grad: bool) -> tuple[Tensor, Tensor]:
    options = check_options(label_smoothing)
    loss, grad = class_arrays(input, target, weight, ignore_index, reduction, options, gamma,
                              epsilon, "focal_loss")(need_grad)
    return _bridge.from_numpy(loss), _grad_tensor(grad, input)


@_focal_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, gamma, epsilon,
      need_grad):
    options = check_options(label_smoothing)
    _check_shapes(input, target, weight, ignore_index, reduction, options, "focal_loss", True)
    if reduction == "none":
        axis = 0 if input.dim() == 1 else 1
        shape = tuple(input.shape[:axis]) + tuple(input.shape[axis + 1:])
    else:
        shape = ()
    return input.new_empty(shape), _fake_grad(input, need_grad)


def _register_autograd(op: Any, class_dim: Any) -> None:
    """The last output is the gradient computed in the forward pass: backward scales it."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[-1])
        ctx.mark_non_differentiable(output[-1])
        ctx.class_dim, ctx.n_inputs = class_dim(inputs), len(inputs)

    def backward(ctx, grad_loss, _):
        (grad,) = ctx.saved_tensors
        if ctx.class_dim is not None and grad_loss.dim() > 0:
            grad_loss = grad_loss.unsqueeze(ctx.class_dim)
        return ((grad * grad_loss).to(grad.dtype),) + (None,) * (ctx.n_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)


_focal_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast for its losses
_register_autograd(_focal_op, lambda a: _bridge.class_dim_for_none(a[0], a[4]))


# -- xent::sigmoid_focal_loss -------------------------------------------------------------------

def sigmoid_arrays(input: Tensor, target: Tensor, alpha: float, gamma: float,
                   reduction: str) -> Any:
    """``compute(grad) -> (loss, gradient or None)`` of the core's sigmoid focal loss."""
    x, y = _bridge.as_numpy(input), _bridge.as_numpy(target)

    def compute(grad: bool):
        out: Any = _focal.sigmoid_focal_loss(  # type: ignore[call-overload]
            x, y, alpha, gamma, reduction, return_grad=grad)
        return out if grad else (out, None)

    return compute


@torch.library.custom_op("xent::sigmoid_focal_loss", mutates_args=())
def _sigmoid_focal_op(input: Tensor, target: Tensor, alpha: float, gamma: float,
                      reduction: str, need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = sigmoid_arrays(input, target, alpha, gamma, reduction)(need_grad)
    return _bridge.from_numpy(loss), _grad_tensor(grad, input)


@_sigmoid_focal_op.register_fake
def _(input, target, alpha, gamma, reduction, need_grad):
    _sigmoid_validate(input, target, alpha, gamma, reduction, fake=True)
    shape = tuple(input.shape) if reduction == "none" else ()
    return input.new_empty(shape), _fake_grad(input, need_grad)


_sigmoid_focal_op.register_autocast("cpu", torch.float32)
_register_autograd(_sigmoid_focal_op, lambda a: None)


def _sigmoid_validate(input: Tensor, target: Any, alpha: Any, gamma: Any, reduction: Any,
                      fake: bool = False) -> tuple[float, float, str]:
    """The core's checks of a sigmoid focal call on tensors: ``(alpha, gamma, reduction)``."""
    a, g = _focal.check_alpha(alpha), _focal.check_gamma(gamma)
    dt = _bridge.compute_dtype(input)
    if fake:
        x = _stand_in(input, dt, 0)
        y = _stand_in(target, dt, 0) if isinstance(target, torch.Tensor) else target
    else:
        x = _bridge.numpy_operand(input, dt)
        y = _bridge.numpy_operand(target, dt) if isinstance(target, torch.Tensor) else target
    *_, reduction = _binary.bce_operands(x, y, None, None, reduction, dt)
    return a, g, reduction


# -- the drop-ins ---------------------------------------------------------------------------------

def _tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _class_loss(fn: str, input: Tensor, target: Tensor, weight: Tensor | None,
                ignore_index: int, reduction: str, label_smoothing: float, gamma: float,
                epsilon: float) -> Tensor:
    _tensor(input, "input")
    options = check_options(label_smoothing)
    target, weight = _bridge.normalise_class_operands(input, target, weight)
    if gamma == 0 and epsilon == 0:
        return _functional.cross_entropy(  # type: ignore[return-value]
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=options.label_smoothing)
    eps = options.label_smoothing

    def reference(x: Tensor) -> Tensor:
        return composed_class_loss(x, target, weight, ignore_index, reduction, eps, gamma,
                                   epsilon)

    route = plan(input, target, weight, rows=True, extended=True)
    if route is Route.CUSTOM_OP:
        return torch.ops.xent.focal_loss(input, target, weight, ignore_index, reduction, eps,
                                         gamma, epsilon, _bridge.wants_grad(input))[0]
    if route is Route.COMPOSED:
        _bridge.problem_for(input, target, weight, ignore_index, reduction, options, fn=fn)
        return reference(input)
    compute = class_arrays(input, target, weight, ignore_index, reduction, options, gamma,
                           epsilon, fn)
    return _bridge.run_core(input, compute, _bridge.class_dim_for_none(input, reduction),
                            reference)


def focal_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Multi-class focal loss on logits (`xent.focal_loss`), with autograd, under
    ``torch.compile`` too.

    Unreduced, for an index target ``t`` with ``p = softmax(x)``:
    ``loss = -w_t·(1 - p_t)^gamma·log p_t`` (0 where ``t == ignore_index``); with label
    smoothing ``eps`` or probability targets ``y``, ``loss = -Σ_c w_c·y'_c·(1 - p_c)^gamma·log
    p_c`` with ``y' = (1-eps)·y + eps/C``. ``'mean'`` divides by ``Σ w_t`` over the positions
    not ignored (the number of positions for probability targets), as ``cross_entropy``;
    ``gamma = 0`` is `xent.torch.cross_entropy` itself.

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, or class
            probabilities of the input's shape.
        weight: class weights ``(C,)`` or None.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        gamma: focusing exponent ``>= 0``.
        label_smoothing: ``eps`` in ``[0, 1]``.

    Returns:
        The loss: 0-d for ``'mean'``/``'sum'``, the target's shape for ``'none'``.

    Example:
        >>> import torch
        >>> from xent.torch import focal_loss
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], requires_grad=True)
        >>> loss = focal_loss(x, torch.tensor([0, 1]))
        >>> round(loss.item(), 4)
        1.3061
        >>> loss.backward()
        >>> x.grad.numpy().round(4)
        array([[-0.0136,  0.0112,  0.0025],
               [ 0.0294, -0.5644,  0.5349]], dtype=float32)

    Reference: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017).
    """
    return _class_loss("focal_loss", input, target, weight, ignore_index, reduction,
                       label_smoothing, _focal.check_gamma(gamma), 0.0)


def poly1_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    epsilon: float = 1.0,
) -> Tensor:
    r"""Poly-1 cross-entropy (`xent.poly1_cross_entropy`): cross-entropy plus
    ``epsilon·(1 - p_t)`` per position, with autograd, under ``torch.compile`` too.

    Unreduced, for an index target: ``loss = w_t·(-log p_t + epsilon·(1 - p_t))``; with label
    smoothing or probability targets ``Σ_c w_c·y'_c·(-log p_c + epsilon·(1 - p_c))`` (optax's
    ``poly_loss_cross_entropy`` without weights). Weights, ``ignore_index`` and ``'mean'`` as
    ``cross_entropy``; ``epsilon = 0`` is `xent.torch.cross_entropy` itself.

    Args:
        input, target, weight, ignore_index, reduction, label_smoothing: as `focal_loss`.
        epsilon: the poly-1 coefficient (any finite number).

    Returns:
        The loss: 0-d for ``'mean'``/``'sum'``, the target's shape for ``'none'``.

    Example:
        >>> import torch
        >>> from xent.torch import poly1_cross_entropy
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> round(poly1_cross_entropy(x, torch.tensor([0, 2])).item(), 4)
        0.3346

    Reference: Leng et al., "PolyLoss" (ICLR 2022); optax ``poly_loss_cross_entropy``.
    """
    return _class_loss("poly1_cross_entropy", input, target, weight, ignore_index, reduction,
                       label_smoothing, 0.0, check_real(epsilon, "epsilon"))


def sigmoid_focal_loss(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    r"""torchvision's ``sigmoid_focal_loss`` (`xent.sigmoid_focal_loss`) on xent's core,
    with autograd, under ``torch.compile`` too.

    Elementwise, with ``p = sigmoid(x)``, ``p_t = p·y + (1-p)·(1-y)``:
    ``loss = alpha_t·BCE_with_logits(x, y)·(1 - p_t)^gamma``,
    ``alpha_t = alpha·y + (1-alpha)·(1-y)`` (1 when ``alpha < 0``), computed from the logits
    without ``log(sigmoid)``.

    Args:
        input: logits, any shape.
        target: the input's shape (1 positive, 0 negative).
        alpha: weight of the positives, or negative for none.
        gamma: focusing exponent ``>= 0``.
        reduction: ``'none'`` (default, as torchvision) | ``'mean'`` | ``'sum'``.

    Returns:
        The loss: the input's shape for ``'none'``, 0-d otherwise.

    Example:
        >>> import torch
        >>> from xent.torch import sigmoid_focal_loss
        >>> x, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
        >>> sigmoid_focal_loss(x, y).numpy().round(4)
        array([0.0005, 0.017 , 0.0169], dtype=float32)

    Reference: torchvision ``torchvision.ops.sigmoid_focal_loss``; Lin et al. 2017.
    """
    _tensor(input, "input")
    _tensor(target, "target")
    target = _bridge.normalise_float(input, target)
    a, g = _focal.check_alpha(alpha), _focal.check_gamma(gamma)
    reduction = check_reduction(reduction)

    def reference(x: Tensor) -> Tensor:
        return composed_sigmoid_focal(x, target, a, g, reduction)

    route = plan(input, target, extended=True)
    if route is Route.CUSTOM_OP:
        return torch.ops.xent.sigmoid_focal_loss(input, target, a, g, reduction,
                                                 _bridge.wants_grad(input))[0]
    if route is Route.COMPOSED:
        _sigmoid_validate(input, target, a, g, reduction)
        return reference(input)
    return _bridge.run_core(input, sigmoid_arrays(input, target, a, g, reduction), None,
                            reference)

