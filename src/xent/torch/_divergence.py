"""Distillation drop-ins: `kl_div` / `KLDivLoss` (PyTorch's), `generalized_jsd` (TRL's),
`gather_log_probs`; their custom operators ``xent::generalized_jsd`` and
``xent::gather_log_probs`` (+ ``_backward``).

Each drop-in asks `_route.plan` once and runs the route it names:

- `kl_div`: PyTorch has the op, so `Route.TORCH` for small calls, tensors the kernels cannot
  read and graph capture (``custom_op=False``: ``F.kl_div`` traces as it is) and CPU autocast;
  `Route.CORE` runs `xent.kl_div` on NumPy views (`_KLCore`: the gradients of input and target
  from the core in ``backward``, with the upstream gradient, so any broadcasting is summed).
- `generalized_jsd` and `gather_log_probs` (``extended=True``, PyTorch lacks them): `Route.CORE`
  (the core on NumPy views; the JSD's gradients computed in the forward pass and scaled in
  ``backward``, `_JSDCore`; the gathered log-probabilities' gradient in ``backward``,
  `_GatherCore`), `Route.CUSTOM_OP` under ``torch.compile`` / ``torch.export`` and autocast,
  `Route.COMPOSED` (the formulas in PyTorch ops, `jsd_composed`, `gather_composed`; also the
  double backward's differentiable form).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import xent
from xent import _divergence

from . import _bridge
from ._route import Route, plain_cpu, plan

__all__ = ["KLDivLoss", "gather_composed", "gather_log_probs", "generalized_jsd",
           "jsd_composed", "kl_div"]


def _tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


# -- the formulas in PyTorch ops (Route.COMPOSED, double backward) --------------------------------

def jsd_rows_composed(zs: Tensor, zt: Tensor, beta: float, temperature: float) -> Tensor:
    """The generalized JSD per position (``(...)``) in PyTorch ops, ``0·log 0 = 0``."""
    lps = torch.log_softmax(zs / temperature, -1)
    lpt = torch.log_softmax(zt / temperature, -1)

    def kl(lp: Tensor, lq: Tensor) -> Tensor:  # Σ p (log p - log q), 0 where p = 0
        p = lp.exp()
        return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)

    if beta == 0:
        return kl(lpt, lps)
    if beta == 1:
        return kl(lps, lpt)
    lm = torch.logaddexp(lps + float(np.log1p(-beta)), lpt + float(np.log(beta)))
    return beta * kl(lpt, lm) + (1 - beta) * kl(lps, lm)


def jsd_composed(zs: Tensor, zt: Tensor, target: Tensor | None, beta: float, temperature: float,
                 ignore_index: int, reduction: str) -> Tensor:
    """`generalized_jsd` in PyTorch ops (the arguments checked)."""
    rows = jsd_rows_composed(zs, zt.to(zs.dtype), beta, temperature)
    if target is not None:
        keep = target != ignore_index
        rows = torch.where(keep, rows, torch.zeros_like(rows))
        counted = keep.sum()
    else:
        counted = torch.tensor(rows.numel())
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / counted.clamp_min(1).to(total.dtype)
    return total / (counted * zs.shape[-1]).to(total.dtype)


def gather_composed(logits: Tensor, index: Tensor, temperature: float,
                    softcap: float | None) -> Tensor:
    """`gather_log_probs` in PyTorch ops."""
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(z / temperature, -1).gather(-1, index)


# -- generalized_jsd ------------------------------------------------------------------------------

def _jsd_arrays(zs: Tensor, zt: Tensor, target: Tensor | None, beta: float, temperature: float,
                ignore_index: int, reduction: str, need_s: bool, need_t: bool):
    """(loss, grad_s or None, grad_t or None) of the core on NumPy views (the gradients for an
    upstream gradient of 1, or ones for ``'none'``)."""
    xs, xt = _bridge.as_numpy(zs), _bridge.as_numpy(zt)
    tg = None if target is None else _bridge.numpy_operand(target, np.dtype(np.float64))
    if not (need_s or need_t):
        loss = xent.generalized_jsd(xs, xt, tg, beta=beta, temperature=temperature,
                                    ignore_index=ignore_index, reduction=reduction)
        return loss, None, None
    loss, gs, gt = xent.generalized_jsd(xs, xt, tg, beta=beta, temperature=temperature,
                                        ignore_index=ignore_index, reduction=reduction,
                                        return_grad=True, teacher_grad=need_t)
    return loss, gs if need_s else None, gt if need_t else None


def _scaled(grad: Tensor, grad_loss: Tensor) -> Tensor:
    if grad_loss.dim() > 0:
        grad_loss = grad_loss.unsqueeze(-1)
    return (grad * grad_loss).to(grad.dtype)


class _JSDCore(torch.autograd.Function):
    """`Route.CORE`: the loss with both gradients from the forward pass, scaled in backward
    (handed over as they are for the usual ``loss.backward()``). The logits are held by weak
    references only, as `_bridge.SavedGrad` does: a double backward differentiates
    `jsd_composed` on them and needs the caller to keep them."""

    @staticmethod
    def forward(ctx, zs, zt, compute, reference):  # noqa: D102
        loss, gs, gt = compute()
        ctx.reference, ctx.need = reference, (gs is not None, gt is not None)
        ctx.inputs = (weakref.ref(zs), weakref.ref(zt))
        ctx.save_for_backward(gs, gt)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: D102
        if torch.is_grad_enabled():  # create_graph=True
            zs, zt = (r() for r in ctx.inputs)
            if zs is None or zt is None:
                raise RuntimeError("xent.torch: a double backward (create_graph=True) of "
                                   "generalized_jsd needs its logits: keep references to them")
            with torch.enable_grad():
                ins = [t for t, need in zip((zs, zt), ctx.need, strict=True) if need]
                got = list(torch.autograd.grad(ctx.reference(zs, zt), ins, grad_loss,
                                               create_graph=True))
            return (got.pop(0) if ctx.need[0] else None,
                    got.pop(0) if ctx.need[1] else None, None, None)
        gs, gt = ctx.saved_tensors
        if grad_loss.dim() == 0 and plain_cpu(grad_loss) and grad_loss.item() == 1:
            return gs, gt, None, None  # the usual loss.backward(): no copy
        return (None if gs is None else _scaled(gs, grad_loss),
                None if gt is None else _scaled(gt, grad_loss), None, None)


@torch.library.custom_op("xent::generalized_jsd", mutates_args=())
def _jsd_op(student: Tensor, teacher: Tensor, target: Tensor | None, beta: float,
            temperature: float, ignore_index: int, reduction: str, need_student_grad: bool,
            need_teacher_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    loss, gs, gt = _jsd_arrays(student, teacher, target, beta, temperature, ignore_index,
                               reduction, need_student_grad, need_teacher_grad)
    return (_bridge.from_numpy(np.array(loss)),
            _bridge.from_numpy(gs) if gs is not None else student.new_empty(0),
            _bridge.from_numpy(gt) if gt is not None else teacher.new_empty(0))


@_jsd_op.register_fake
def _(student, teacher, target, beta, temperature, ignore_index, reduction, need_student_grad,
      need_teacher_grad):
    _check_jsd(student, teacher, target, beta, temperature, reduction)
    shape = tuple(student.shape[:-1]) if reduction == "none" else ()
    return (student.new_empty(shape),
            student.new_empty(tuple(student.shape) if need_student_grad else (0,)),
            teacher.new_empty(tuple(teacher.shape) if need_teacher_grad else (0,)))


def _jsd_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.need = (inputs[7], inputs[8])


def _jsd_backward(ctx, grad_loss, *_):
    gs, gt = ctx.saved_tensors
    return ((_scaled(gs, grad_loss) if ctx.need[0] else None),
            (_scaled(gt, grad_loss) if ctx.need[1] else None)) + (None,) * 7


_jsd_op.register_autograd(_jsd_backward, setup_context=_jsd_setup)
_jsd_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast for its losses


def _check_jsd(student: Tensor, teacher: Tensor, target: Tensor | None, beta: Any,
               temperature: Any, reduction: Any) -> tuple[float, float, str]:
    """The core's checks on shapes and dtypes (no values read)."""
    b, t, r = _divergence.check_jsd_options(beta, temperature, reduction)
    if student.dim() < 1:
        raise ValueError(f"student_logits must have a class axis (last), got shape "
                         f"{tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student.shape)}, got {tuple(teacher.shape)}")
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise TypeError(f"the logits must be floating point, got {student.dtype} and "
                        f"{teacher.dtype}")
    if target is not None:
        if target.is_floating_point() or target.is_complex() or target.dtype is torch.bool:
            raise TypeError(f"target must hold integer class ids, got dtype {target.dtype}")
        if target.shape != student.shape[:-1]:
            raise ValueError(f"target must have the shape of the logits without the class axis "
                             f"{tuple(student.shape[:-1])}, got {tuple(target.shape)}")
    return b, t, r


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
) -> Tensor:
    r"""The generalized Jensen-Shannon divergence of GKD (`xent.generalized_jsd`), with
    autograd for the student's logits and, when it requires grad, the teacher's.

    ``p_s = softmax(z_s / T)``, ``p_t = softmax(z_t / T)`` over the last axis; per position
    ``β·KL(p_t ‖ m) + (1-β)·KL(p_s ‖ m)``, ``m = β·p_t + (1-β)·p_s``, with ``β = 0`` the
    forward ``KL(p_t ‖ p_s)`` and ``β = 1`` the reverse ``KL(p_s ‖ p_t)``; positions whose
    ``target`` is ``ignore_index`` count 0; ``'batchmean'`` divides by the positions counted
    (TRL's ``generalized_jsd_loss``). Shapes ``(..., V)``, ``target`` ``(...)``.

    Example:
        >>> import torch, xent.torch
        >>> zs = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
        >>> zt = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
        >>> loss = xent.torch.generalized_jsd(zs, zt, torch.tensor([1, -100]), beta=0.5)
        >>> loss.backward()
        >>> round(loss.item(), 4), zs.grad[1].abs().max().item()
        (0.2476, 0.0)
    """
    zs = _tensor(student_logits, "student_logits")
    zt = _tensor(teacher_logits, "teacher_logits")
    if target is not None:
        target = _bridge.normalise_index(_tensor(target, "target"))
    b, t, r = _check_jsd(zs, zt, target, beta, temperature, reduction)
    ignore = _divergence.check_ignore_index(ignore_index)
    same = zt.dtype is zs.dtype
    route = plan(zs, target, *(() if same else (zt,)), extended=True,
                 params=(zt,) if same else ())
    need_s, need_t = _bridge.wants_grad(zs), _bridge.wants_grad(zt)
    if route is Route.CUSTOM_OP:
        return torch.ops.xent.generalized_jsd(zs, zt, target, b, t, ignore, r, need_s,
                                              need_t)[0]
    if route is Route.COMPOSED:
        return jsd_composed(zs, zt, target, b, t, ignore, r)

    def compute():
        loss, gs, gt = _jsd_arrays(zs, zt, target, b, t, ignore, r, need_s, need_t)
        loss_t = _bridge.from_numpy(np.array(loss))
        return (loss_t, None if gs is None else _bridge.from_numpy(gs),
                None if gt is None else _bridge.from_numpy(gt))

    if not (need_s or need_t):
        return compute()[0]

    def reference(xs: Tensor, xt: Tensor) -> Tensor:
        return jsd_composed(xs, xt, target, b, t, ignore, r)

    return _JSDCore.apply(zs, zt, compute, reference)


# -- gather_log_probs -----------------------------------------------------------------------------

def _gather_check(logits: Tensor, index: Tensor, temperature: Any, softcap: Any,
                  values: bool) -> tuple[float, float | None]:
    T = _divergence.check_real(temperature, "temperature", positive=True)
    cap = None if softcap is None else _divergence.check_real(softcap, "softcap",
                                                               positive=True)
    if logits.dim() < 1:
        raise ValueError(f"logits must have a class axis (last), got shape "
                         f"{tuple(logits.shape)}")
    if index.is_floating_point() or index.is_complex() or index.dtype is torch.bool:
        raise TypeError(f"index must hold integer class ids, got dtype {index.dtype}")
    lead = tuple(logits.shape[:-1])
    if index.dim() != len(lead) + 1 or tuple(index.shape[:-1]) != lead:
        raise ValueError(f"index must have shape {lead + ('K',)} for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(index.shape)}")
    if values:
        _divergence.check_index(_bridge.numpy_operand(index, np.dtype(np.float64)), lead,
                                logits.shape[-1])
    return T, cap


def _gather_arrays(logits: Tensor, index: Tensor, T: float, cap: float | None,
                   grad_output: Tensor | None = None):
    x = _bridge.as_numpy(logits)
    idx = _bridge.as_numpy(index)
    if grad_output is None:
        return xent.gather_log_probs(x, idx, temperature=T, softcap=cap)
    g = _bridge.as_numpy(grad_output.contiguous())
    return xent.gather_log_probs(x, idx, temperature=T, softcap=cap, return_grad=True,
                                 grad_output=g)[1]


@torch.library.custom_op("xent::gather_log_probs_backward", mutates_args=())
def _gather_backward_op(grad_output: Tensor, logits: Tensor, index: Tensor, temperature: float,
                        softcap: float | None) -> Tensor:
    return _bridge.from_numpy(_gather_arrays(logits, index, temperature, softcap,
                                             grad_output.to(logits.dtype)))


@_gather_backward_op.register_fake
def _(grad_output, logits, index, temperature, softcap):
    return torch.empty_like(logits)


@torch.library.custom_op("xent::gather_log_probs", mutates_args=())
def _gather_op(logits: Tensor, index: Tensor, temperature: float,
               softcap: float | None) -> Tensor:
    return _bridge.from_numpy(_gather_arrays(logits, index, temperature, softcap))


@_gather_op.register_fake
def _(logits, index, temperature, softcap):
    _gather_check(logits, index, temperature, softcap, values=False)
    return logits.new_empty(tuple(index.shape))


def _gather_setup(ctx, inputs, output):
    logits, index, temperature, softcap = inputs
    ctx.save_for_backward(logits, index)
    ctx.args = (temperature, softcap)


def _gather_backward(ctx, grad_output):
    logits, index = ctx.saved_tensors
    g = torch.ops.xent.gather_log_probs_backward(grad_output.contiguous(), logits, index,
                                                 *ctx.args)
    return g, None, None, None


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)


class _GatherCore(torch.autograd.Function):
    """`Route.CORE`: the log-probabilities, their gradient from the core in backward (it
    depends on the upstream gradient: ``scatter(g) - p·Σ g``); a double backward
    differentiates `gather_composed`."""

    @staticmethod
    def forward(ctx, logits, index, T, cap):  # noqa: D102
        ctx.save_for_backward(logits, index)
        ctx.args = (T, cap)
        return _bridge.from_numpy(_gather_arrays(logits, index, T, cap))

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        logits, index = ctx.saved_tensors
        T, cap = ctx.args
        if torch.is_grad_enabled() or not plain_cpu(grad_output):
            with torch.enable_grad():
                x = logits if logits.requires_grad else logits.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(gather_composed(x, index, T, cap), x, grad_output,
                                           create_graph=torch.is_grad_enabled())
            return g, None, None, None
        return _bridge.from_numpy(_gather_arrays(logits, index, T, cap,
                                                 grad_output.to(logits.dtype))), None, None, None


def gather_log_probs(logits: Tensor, index: Tensor, *, temperature: float = 1.0,
                     softcap: float | None = None) -> Tensor:
    r"""Log-probabilities of the given classes (`xent.gather_log_probs`), differentiable.

    ``log_softmax(z)[..., index]`` with ``z = softcap·tanh(logits/softcap) / temperature``;
    ``logits`` ``(..., V)``, ``index`` ``(..., K)`` integer, result ``(..., K)``.

    Example:
        >>> import torch, xent.torch
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> xent.torch.gather_log_probs(z, torch.tensor([[2, 0]])).round(decimals=4)
        tensor([[-0.4076, -2.4076]])
    """
    logits = _tensor(logits, "logits")
    index = _bridge.normalise_index(_tensor(index, "index"))
    T, cap = _gather_check(logits, index, temperature, softcap, values=False)
    route = plan(logits, index, extended=True)
    if route is Route.CUSTOM_OP:
        return torch.ops.xent.gather_log_probs(logits, index, T, cap)
    _gather_check(logits, index, T, cap, values=True)
    if route is Route.COMPOSED:
        return gather_composed(logits, index, T, cap)
    if not _bridge.wants_grad(logits):
        return _bridge.from_numpy(_gather_arrays(logits, index, T, cap))
    return _GatherCore.apply(logits, index, T, cap)


# -- kl_div ---------------------------------------------------------------------------------------

class _KLCore(torch.autograd.Function):
    """`Route.CORE`: `xent.kl_div` on NumPy views; both gradients from the core in backward
    (with the upstream gradient, broadcast dimensions summed); a double backward (or a batched
    one) differentiates ``F.kl_div``."""

    @staticmethod
    def forward(ctx, input, target, reduction, log_target):  # noqa: D102
        ctx.save_for_backward(input, target)
        ctx.args = (reduction, log_target)
        loss = xent.kl_div(_bridge.as_numpy(input), _bridge.as_numpy(target), reduction,
                           log_target, warn=False)
        return _bridge.from_numpy(np.array(loss))

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: D102
        x, y = ctx.saved_tensors
        reduction, log_target = ctx.args
        need_x, need_y = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled() or not plain_cpu(grad_loss):
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xs = x if x.requires_grad else x.detach().requires_grad_(need_x)
                ys = y if y.requires_grad else y.detach().requires_grad_(need_y)
                ins = [t for t, need in ((xs, need_x), (ys, need_y)) if need]
                got = list(torch.autograd.grad(
                    F.kl_div(xs, ys, reduction=reduction, log_target=log_target), ins,
                    grad_loss, create_graph=torch.is_grad_enabled()))
            return (got.pop(0) if need_x else None, got.pop(0) if need_y else None, None, None)
        _, gx, gy = xent.kl_div(_bridge.as_numpy(x), _bridge.as_numpy(y), reduction,
                                log_target, return_grad=True, warn=False,
                                grad_output=_bridge.as_numpy(grad_loss.contiguous()))
        return (_bridge.from_numpy(gx) if need_x else None,
                _bridge.from_numpy(np.ascontiguousarray(gy)).to(y.dtype) if need_y else None,
                None, None)


def _kl_validate(input: Tensor, target: Tensor, reduction: str) -> None:
    """The core's checks of a kl_div call (raised where PyTorch raised)."""
    _divergence.check_kl_reduction(reduction)
    try:
        torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise ValueError(f"target of shape {tuple(target.shape)} cannot be broadcast with "
                         f"input of shape {tuple(input.shape)}") from None


def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None,
           reduce: bool | None = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    r"""``torch.nn.functional.kl_div`` (`xent.kl_div`): the pointwise KL divergence
    ``target·(log target - input)`` (``0·log 0 = 0``; with ``log_target``:
    ``exp(target)·(target - input)``), ``input`` holding log-probabilities.

    Same signature, semantics and gradients (input and target) as PyTorch's, the deprecated
    ``size_average``/``reduce`` included; ``'batchmean'`` divides the sum by
    ``input.size(0)`` (the KL per sample), ``'mean'`` by the number of elements, with
    PyTorch's warning.

    Example:
        >>> import torch, xent.torch
        >>> logq = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
        >>> p = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
        >>> xent.torch.kl_div(logq, p, reduction="batchmean").round(decimals=4)
        tensor(0.1181)
    """
    input = _tensor(input, "input")
    target = _tensor(target, "target")
    legacy = size_average is not None or reduce is not None
    reduction = _bridge.legacy_reduction(size_average, reduce, reduction)
    target = _bridge.normalise_float(input, target)
    route = plan(input, params=(target,), custom_op=False)
    if route is not Route.CORE:
        def validate() -> None:
            _kl_validate(input, target, reduction)

        if legacy:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return _bridge.torch_op(F.kl_div, validate, input, target,
                                        reduction=reduction, log_target=log_target)
        return _bridge.torch_op(F.kl_div, validate, input, target, reduction=reduction,
                                log_target=log_target)
    _kl_validate(input, target, reduction)
    _divergence.check_bool(log_target, "log_target")
    if reduction == "mean" and not legacy:
        warnings.warn(_divergence.MEAN_WARNING, UserWarning, stacklevel=2)
    if not (_bridge.wants_grad(input) or _bridge.wants_grad(target)):
        loss = xent.kl_div(_bridge.as_numpy(input), _bridge.as_numpy(target), reduction,
                           log_target, warn=False)
        return _bridge.from_numpy(np.array(loss))
    return _KLCore.apply(input, target, reduction, log_target)


class KLDivLoss(torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` on `kl_div` (same constructor, same ``forward(input, target)``).

    Example:
        >>> import torch, xent.torch
        >>> loss = xent.torch.KLDivLoss(reduction="batchmean", log_target=True)
        >>> logq = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> loss(logq, torch.log(torch.tensor([[0.25, 0.75]]))).round(decimals=4)
        tensor(0.1308)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:  # noqa: D102
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
