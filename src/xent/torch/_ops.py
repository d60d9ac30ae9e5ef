"""xent's kernels as PyTorch custom operators, for ``torch.compile``, ``torch.export`` and CPU
autocast (`_route.Route.CUSTOM_OP`).

Under graph capture the drop-ins call these operators instead of their eager path, so that a
compiled graph runs xent's kernels with no graph break (``fullgraph=True``) and an exported
program holds them:

========================================  =====================================================
``xent::cross_entropy``                   ``(input, target, weight?, ignore_index, reduction,
                                          label_smoothing, lse_square_scale, softcap?,
                                          return_lse, need_grad) -> (loss, lse, grad)``
``xent::cross_entropy_stats``             ``(input, target, weight?, ignore_index, reduction,
                                          label_smoothing, lse_square_scale, softcap?,
                                          temperature, return_lse, return_entropy,
                                          return_argmax) -> (loss, lse, entropy, argmax)``;
                                          backward ``xent::cross_entropy_stats_backward``
                                          ``(grad_loss, grad_entropy?, input, target, ...)``
``xent::nll_loss``                        ``(input, target, weight?, ignore_index, reduction,
                                          need_grad) -> (loss, grad)``
``xent::binary_cross_entropy``            ``(input, target, weight?, reduction, need_grad)
                                          -> (loss, grad)``
``xent::binary_cross_entropy_with_logits`` ``(input, target, weight?, pos_weight?, reduction,
                                          need_grad) -> (loss, grad)``
``xent::softmax``, ``xent::log_softmax``  ``(x, dim) -> out``, backward ``xent::softmax_backward``
                                          / ``log_softmax_backward`` ``(grad_output, out, dim)``
========================================  =====================================================

Each loss operator validates its call with the core's validation step on the real values
(`_bridge.problem_for`: a bad class index raises the core's ``IndexError`` when compiled too)
and computes the loss and, with ``need_grad``, its gradient in the same fused pass through the
same function as the eager path (`ce_arrays`, `nll_arrays`, `bce_arrays`, `bce_logits_arrays`).
Its fake (meta) implementation runs the same validation on the shapes and dtypes only (the
targets' values are stand-ins) and gives the outputs' shapes.

The gradient is an output of the forward operator (``grad``; empty without ``need_grad``),
saved for backward; the registered backward scales it by the upstream gradient in torch
operations (``grad * grad_output``, along the class dimension for ``reduction='none'``). No
state crosses calls outside the operators' declared inputs and outputs
(``torch.library.opcheck`` passes on every operator, ``tests/test_torch_opcheck.py``), and
batched gradients (vmap over the backward) work; the softmax operators have vmap rules. The
price: in a compiled graph the backward's scaling is a pass over the gradient (the eager path,
`_bridge.SavedGrad`, hands an unscaled gradient over without one).

Eager calls keep `_bridge.SavedGrad` (CPU autocast is the one eager use of these operators):
the custom operator's Python dispatch (its autograd wrapper) cost 0.5 to 0.8 ms more per
forward+backward call than the drop-in's path at (32, 3) and (64, 1000)
(``benchmarks/bench_compile.py``, small-call row). Inside a compiled graph the operators are
called directly, without that wrapper.

Under ``torch.autocast("cpu")`` the loss operators' registered autocast rule casts 16-bit
floats to float32 as PyTorch's autocast does for its own losses (float32 loss, gradient cast
back to the input's dtype), in eager mode and compiled.

PyTorch's compile caches key on the operators' names and schemas, not on their fake
implementations: change an operator's schema (or name) whenever its outputs change.

Example (an operator called directly; the drop-ins do this under graph capture):
    >>> import torch
    >>> import xent.torch  # registers torch.ops.xent.*
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> loss, lse, grad = torch.ops.xent.cross_entropy(
    ...     x, torch.tensor([0, 2]), None, -100, "mean", 0.0, 0.0, None, False, True)
    >>> round(loss.item(), 4), tuple(lse.shape), tuple(grad.shape)
    (0.1755, (0,), (2, 3))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import xent
from xent import _binary, _cross_entropy
from xent._problem import Problem, check_options, cross_entropy_problem

from . import _bridge
from ._reference import stats_outputs

__all__ = ["KERNELS", "bce_arrays", "bce_logits_arrays", "ce_arrays", "ce_stats_backward",
           "ce_stats_forward", "nll_arrays"]


# -- the computations, shared with the eager path (`_functional`, `_activations`) ---------------

def ce_arrays(problem: Problem, x: np.ndarray, grad: bool) -> tuple[Any, Any, Any]:
    """``(loss, lse or None, gradient or None)`` of a validated cross-entropy ``problem`` on
    the logits' NumPy view ``x``: one `_cross_entropy.solve` call."""
    out = _cross_entropy.solve(problem, x, x.dtype, return_grad=grad)
    out = out if isinstance(out, tuple) else (out,)
    return out[0], (out[1] if problem.options.return_lse else None), (out[-1] if grad else None)


def nll_arrays(problem: Problem, x: np.ndarray, grad: bool) -> tuple[Any, Any]:
    """``(loss, gradient or None)`` of a validated NLL ``problem``: `_cross_entropy.nll_solve`."""
    out: Any = _cross_entropy.nll_solve(problem, x, x.dtype, return_grad=grad)
    return out if grad else (out, None)


def bce_arrays(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, reduction: str,
               grad: bool) -> tuple[Any, Any]:
    """``(loss, gradient or None)``: `xent.binary_cross_entropy` on NumPy views."""
    out = xent.binary_cross_entropy(x, y, w, reduction, return_grad=grad)  # type: ignore[call-overload]
    return out if grad else (out, None)


def bce_logits_arrays(x: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                      pw: np.ndarray | None, reduction: str, grad: bool) -> tuple[Any, Any]:
    """``(loss, gradient or None)``: `xent.binary_cross_entropy_with_logits` on NumPy views."""
    out = xent.binary_cross_entropy_with_logits(  # type: ignore[call-overload]
        x, y, w, reduction, pw, return_grad=grad)
    return out if grad else (out, None)


def softmax_forward(x: Tensor, dim: int) -> Tensor:
    """``xent.softmax`` of ``x`` along ``dim`` on a NumPy view: a new tensor of ``x``'s shape
    and dtype (tensors the kernels take only)."""
    return _bridge.from_numpy(xent.softmax(_bridge.as_numpy(x), axis=dim))


def softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    r"""``dL/dx = y ⊙ (g - <g, y>_dim)`` by the core's ``xent.softmax_backward``."""
    return _bridge.from_numpy(xent.softmax_backward(
        _bridge.as_numpy(grad_output), _bridge.as_numpy(output), axis=dim))


def log_softmax_forward(x: Tensor, dim: int) -> Tensor:
    """``xent.log_softmax`` of ``x`` along ``dim`` on a NumPy view."""
    return _bridge.from_numpy(xent.log_softmax(_bridge.as_numpy(x), axis=dim))


def log_softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    r"""``dL/dx = g - exp(z) Σ_dim g`` by the core's ``xent.log_softmax_backward``."""
    return _bridge.from_numpy(xent.log_softmax_backward(
        _bridge.as_numpy(grad_output), _bridge.as_numpy(output), axis=dim))


class Kernels(NamedTuple):
    """One activation's plain tensor functions, and PyTorch's ops for what they cannot do."""

    forward: Callable[[Tensor, int], Tensor]
    backward: Callable[[Tensor, Tensor, int], Tensor]
    torch_op: Callable[..., Tensor]  # F.softmax / F.log_softmax
    torch_backward: Callable[..., Tensor]  # differentiable: double and batched backward


KERNELS: dict[str, Kernels] = {
    "softmax": Kernels(softmax_forward, softmax_backward, F.softmax,
                       torch.ops.aten._softmax_backward_data),
    "log_softmax": Kernels(log_softmax_forward, log_softmax_backward, F.log_softmax,
                           torch.ops.aten._log_softmax_backward_data),
}


# -- the gradient output and the backward -------------------------------------------------------

def _grad_tensor(grad: np.ndarray | None, input: Tensor) -> Tensor:
    return _bridge.from_numpy(grad) if grad is not None else input.new_empty(0)


def _fake_grad(input: Tensor, need_grad: bool) -> Tensor:
    return input.new_empty(tuple(input.shape) if need_grad else (0,))


def _register_autograd(op: Any, class_dim: Callable[[tuple[Any, ...]], int | None]) -> None:
    """Autograd for a loss operator whose last output is the gradient of the loss computed in
    the forward pass: backward scales it by the upstream gradient; the other outputs but the
    loss are not differentiable."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[-1])
        ctx.mark_non_differentiable(*output[1:])
        ctx.class_dim, ctx.n_inputs = class_dim(inputs), len(inputs)

    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        if ctx.class_dim is not None and grad_loss.dim() > 0:
            grad_loss = grad_loss.unsqueeze(ctx.class_dim)
        return ((grad * grad_loss).to(grad.dtype),) + (None,) * (ctx.n_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)


# -- shapes and stand-ins for the fake implementations -----------------------------------------

def _hint(n: Any) -> int:
    """A concrete size: the example value of a symbolic size (dynamic shapes)."""
    if isinstance(n, torch.SymInt):
        hint = n.node.hint
        return int(hint) if hint is not None else 1
    return int(n)


def _stand_in(t: Tensor | None, float_dtype: np.dtype, index: int) -> np.ndarray | None:
    """A zero-stride array of ``t``'s (hinted) shape and kind: what the core's validation reads
    of a tensor whose values are unknown (a fake tensor). Class indices stand in as
    ``index`` (``ignore_index``, always valid; 0 where the dtype cannot hold it), floats as
    zeros of ``float_dtype``."""
    if t is None:
        return None
    shape = tuple(_hint(n) for n in t.shape)
    if t.is_floating_point():
        return np.broadcast_to(np.zeros((), float_dtype), shape)
    dt = np.dtype(str(t.dtype).removeprefix("torch."))  # int64, uint8, bool, ...
    ok = dt.kind in "iu" and np.iinfo(dt).min <= index <= np.iinfo(dt).max
    value = index if ok else 0
    return np.broadcast_to(np.array(value, dt), shape)


def _check_shapes(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                  reduction: str, options: Any, fn: str, probabilities: bool) -> None:
    """The core's validation step (`cross_entropy_problem`) on shapes and dtypes only."""
    dt = _bridge.compute_dtype(input)
    cross_entropy_problem(tuple(_hint(n) for n in input.shape), dt,
                          _stand_in(target, dt, ignore_index), _stand_in(weight, dt, 0),
                          ignore_index, reduction, options, fn=fn, probabilities=probabilities)


def _check_bce_shapes(input: Tensor, target: Tensor, weight: Tensor | None,
                      pos_weight: Tensor | None, reduction: str) -> None:
    """The core's BCE validation (`_binary.bce_operands`) on shapes and dtypes only."""
    dt = _bridge.compute_dtype(input)
    x = np.broadcast_to(np.zeros((), dt), tuple(_hint(n) for n in input.shape))
    _binary.bce_operands(x, _stand_in(target, dt, 0), _stand_in(weight, dt, 0),
                         _stand_in(pos_weight, dt, 0), reduction, dt)


def _loss_shape(input: Tensor, reduction: str) -> tuple[Any, ...]:
    """The unreduced cross-entropy/NLL loss's shape: the input's without the class axis."""
    if reduction != "none":
        return ()
    axis = 0 if input.dim() == 1 else 1
    return tuple(input.shape[:axis]) + tuple(input.shape[axis + 1:])


# -- xent::cross_entropy -----------------------------------------------------------------------

@torch.library.custom_op("xent::cross_entropy", mutates_args=())
def _cross_entropy_op(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
    label_smoothing: float, lse_square_scale: float, softcap: float | None, return_lse: bool,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    problem = _bridge.problem_for(input, target, weight, ignore_index, reduction, options)
    loss, lse, grad = ce_arrays(problem, _bridge.as_numpy(input), need_grad)
    lse_t = _bridge.from_numpy(lse) if lse is not None else input.new_empty(0)
    return _bridge.from_numpy(loss), lse_t, _grad_tensor(grad, input)


@_cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale,
      softcap, return_lse, need_grad):
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    _check_shapes(input, target, weight, ignore_index, reduction, options, "cross_entropy", True)
    loss = input.new_empty(_loss_shape(input, reduction))
    lse = input.new_empty(_loss_shape(input, "none") if return_lse else (0,))
    return loss, lse, _fake_grad(input, need_grad)


_cross_entropy_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_cross_entropy_op, lambda a: _bridge.class_dim_for_none(a[0], a[4]))


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                  reduction: str, options: Any) -> Any:
    """`xent.torch.cross_entropy` on ``xent::cross_entropy``."""
    loss, lse, _ = torch.ops.xent.cross_entropy(
        input, target, weight, ignore_index, reduction, options.label_smoothing,
        options.lse_square_scale, options.softcap, options.return_lse, _bridge.wants_grad(input))
    return (loss, lse) if options.return_lse else loss


# -- xent::cross_entropy_stats (temperature, entropy, argmax) -----------------------------------
# The gradient of the entropy needs its upstream gradient, known only in backward: the forward
# operator computes the outputs, and the backward operator recomputes the row statistics with
# both upstream gradients in one pass (the logits read twice, the gradient written once).

def ce_stats_forward(problem: Problem, x: np.ndarray) -> tuple[Any, ...]:
    """``(loss, lse, entropy, argmax, saved)`` of a validated problem with the statistics
    options, on the logits' NumPy view ``x`` (None where not asked): one `_cross_entropy.solve`
    call; ``saved`` the positions' (lse, entropy), flat, for `ce_stats_backward`."""
    o = problem.options
    every = replace(problem, options=replace(o, return_lse=True, return_entropy=True))
    out: list[Any] = list(_cross_entropy.solve(every, x, x.dtype))
    loss, lse, ent = out[:3]
    top = out[3] if o.return_argmax else None
    saved = (np.asarray(lse, every.dtype).reshape(-1), np.asarray(ent, every.dtype).reshape(-1))
    return (loss, lse if o.return_lse else None, ent if o.return_entropy else None, top, saved)


def ce_stats_backward(problem: Problem, x: np.ndarray, grad_loss: np.ndarray,
                      grad_entropy: np.ndarray | None, saved: Any = None) -> np.ndarray:
    """d(Σ grad_loss·loss + Σ grad_entropy·entropy)/d x by one `_cross_entropy.solve` call
    (``saved``: `ce_stats_forward`'s, the kernels then skip each row's max and sum passes)."""
    out = _cross_entropy.solve(problem, x, x.dtype, return_grad=True, grad_output=grad_loss,
                               grad_entropy=grad_entropy, saved=saved)
    return out[-1]


_TORCH_DT = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _stats_options(label_smoothing, lse_square_scale, softcap, temperature, return_lse,
                   return_entropy, return_argmax):
    return check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                         return_entropy, return_argmax)


@torch.library.custom_op("xent::cross_entropy_stats", mutates_args=())
def _ce_stats_op(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
    label_smoothing: float, lse_square_scale: float, softcap: float | None, temperature: float,
    return_lse: bool, return_entropy: bool, return_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    options = _stats_options(label_smoothing, lse_square_scale, softcap, temperature,
                             return_lse, return_entropy, return_argmax)
    problem = _bridge.problem_for(input, target, weight, ignore_index, reduction, options)
    loss, lse, ent, top, _ = ce_stats_forward(problem, _bridge.as_numpy(input))

    def tensor(a: Any, dtype: torch.dtype) -> Tensor:
        return _bridge.from_numpy(a) if a is not None else torch.empty(0, dtype=dtype)

    return (_bridge.from_numpy(loss), tensor(lse, input.dtype), tensor(ent, input.dtype),
            tensor(top, torch.int64))


@_ce_stats_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale,
      softcap, temperature, return_lse, return_entropy, return_argmax):
    options = _stats_options(label_smoothing, lse_square_scale, softcap, temperature,
                             return_lse, return_entropy, return_argmax)
    _check_shapes(input, target, weight, ignore_index, reduction, options, "cross_entropy", True)
    rows = _loss_shape(input, "none")
    return (input.new_empty(_loss_shape(input, reduction)),
            input.new_empty(rows if return_lse else (0,)),
            input.new_empty(rows if return_entropy else (0,)),
            input.new_empty(rows if return_argmax else (0,), dtype=torch.int64))


@torch.library.custom_op("xent::cross_entropy_stats_backward", mutates_args=())
def _ce_stats_backward_op(
    grad_loss: Tensor, grad_entropy: Tensor | None, input: Tensor, target: Tensor,
    weight: Tensor | None, ignore_index: int, reduction: str, label_smoothing: float,
    lse_square_scale: float, softcap: float | None, temperature: float,
) -> Tensor:
    options = _stats_options(label_smoothing, lse_square_scale, softcap, temperature, False,
                             grad_entropy is not None, False)
    problem = _bridge.problem_for(input, target, weight, ignore_index, reduction, options)
    dt = problem.dtype
    g = _bridge.as_numpy(grad_loss.detach().to(_TORCH_DT[dt]).contiguous())
    ge = (None if grad_entropy is None else
          _bridge.as_numpy(grad_entropy.detach().to(_TORCH_DT[dt]).contiguous()))
    grad = ce_stats_backward(problem, _bridge.as_numpy(input), g, ge)
    return _bridge.from_numpy(grad).contiguous()


@_ce_stats_backward_op.register_fake
def _(grad_loss, grad_entropy, input, target, weight, ignore_index, reduction,
      label_smoothing, lse_square_scale, softcap, temperature):
    return input.new_empty(input.shape)


def _ce_stats_setup(ctx, inputs, output):
    input, target, weight = inputs[:3]
    ctx.save_for_backward(input, target, weight)
    ctx.args = inputs[3:9]  # ignore_index .. temperature
    ctx.entropy = inputs[10]
    ctx.mark_non_differentiable(output[1], output[3])


def _ce_stats_autograd(ctx, grad_loss, grad_lse, grad_entropy, grad_argmax):
    input, target, weight = ctx.saved_tensors
    ge = grad_entropy if ctx.entropy else None
    grad = torch.ops.xent.cross_entropy_stats_backward(grad_loss, ge, input, target, weight,
                                                       *ctx.args)
    return (grad.to(input.dtype),) + (None,) * 11


_ce_stats_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_ce_stats_op.register_autograd(_ce_stats_autograd, setup_context=_ce_stats_setup)


def cross_entropy_stats(input: Tensor, target: Tensor, weight: Tensor | None,
                        ignore_index: int, reduction: str, options: Any) -> Any:
    """`xent.torch.cross_entropy` with the statistics options on ``xent::cross_entropy_stats``:
    the loss, then the lse, entropy and argmax asked for (a tuple when more than the loss)."""
    o = options
    loss, lse, ent, top = torch.ops.xent.cross_entropy_stats(
        input, target, weight, ignore_index, reduction, o.label_smoothing, o.lse_square_scale,
        o.softcap, o.temperature, o.return_lse, o.return_entropy, o.return_argmax)
    return stats_outputs(o, loss, lse, ent, top)


# -- xent::nll_loss ----------------------------------------------------------------------------

@torch.library.custom_op("xent::nll_loss", mutates_args=())
def _nll_loss_op(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                 reduction: str, need_grad: bool) -> tuple[Tensor, Tensor]:
    problem = _bridge.problem_for(input, target, weight, ignore_index, reduction,
                                  fn="nll_loss", probabilities=False)
    loss, grad = nll_arrays(problem, _bridge.as_numpy(input), need_grad)
    return _bridge.from_numpy(loss), _grad_tensor(grad, input)


@_nll_loss_op.register_fake
def _(input, target, weight, ignore_index, reduction, need_grad):
    _check_shapes(input, target, weight, ignore_index, reduction, None, "nll_loss", False)
    return input.new_empty(_loss_shape(input, reduction)), _fake_grad(input, need_grad)


_nll_loss_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_nll_loss_op, lambda a: _bridge.class_dim_for_none(a[0], a[4]))


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
             reduction: str) -> Tensor:
    """`xent.torch.nll_loss` on ``xent::nll_loss``."""
    return torch.ops.xent.nll_loss(input, target, weight, ignore_index, reduction,
                                   _bridge.wants_grad(input))[0]


# -- xent::binary_cross_entropy(_with_logits) --------------------------------------------------

def _bce_fake_loss(input: Tensor, reduction: str) -> Tensor:
    return input.new_empty(tuple(input.shape) if reduction == "none" else ())


@torch.library.custom_op("xent::binary_cross_entropy", mutates_args=())
def _bce_op(input: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
            need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = bce_arrays(_bridge.as_numpy(input), _bridge.as_numpy(target),
                            _bridge.as_numpy(weight), reduction, need_grad)
    return _bridge.from_numpy(loss), _grad_tensor(grad, input)


@_bce_op.register_fake
def _(input, target, weight, reduction, need_grad):
    _check_bce_shapes(input, target, weight, None, reduction)
    return _bce_fake_loss(input, reduction), _fake_grad(input, need_grad)


_bce_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_bce_op, lambda a: None)


@torch.library.custom_op("xent::binary_cross_entropy_with_logits", mutates_args=())
def _bce_logits_op(input: Tensor, target: Tensor, weight: Tensor | None,
                   pos_weight: Tensor | None, reduction: str,
                   need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = bce_logits_arrays(
        _bridge.as_numpy(input), _bridge.as_numpy(target), _bridge.as_numpy(weight),
        _bridge.as_numpy(pos_weight), reduction, need_grad)
    return _bridge.from_numpy(loss), _grad_tensor(grad, input)


@_bce_logits_op.register_fake
def _(input, target, weight, pos_weight, reduction, need_grad):
    _check_bce_shapes(input, target, weight, pos_weight, reduction)
    return _bce_fake_loss(input, reduction), _fake_grad(input, need_grad)


_bce_logits_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_bce_logits_op, lambda a: None)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None,
                         reduction: str) -> Tensor:
    """`xent.torch.binary_cross_entropy` on ``xent::binary_cross_entropy``."""
    return torch.ops.xent.binary_cross_entropy(input, target, weight, reduction,
                                               _bridge.wants_grad(input))[0]


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None,
                                     pos_weight: Tensor | None, reduction: str) -> Tensor:
    """`xent.torch.binary_cross_entropy_with_logits` on its operator."""
    return torch.ops.xent.binary_cross_entropy_with_logits(
        input, target, weight, pos_weight, reduction, _bridge.wants_grad(input))[0]


# -- xent::softmax / xent::log_softmax ---------------------------------------------------------

def _batch_first(t: Tensor, bdim: int | None, size: int) -> Tensor:
    return t.movedim(bdim, 0) if bdim is not None else t.expand(size, *t.shape)


def _activation_op(name: str) -> Any:
    """``xent::<name>(x, dim)`` and ``xent::<name>_backward(grad_output, output, dim)`` on
    `KERNELS` (the eager drop-in's own functions), with the backward as the forward's
    registered autograd, and vmap rules for both (the batch dimension moved first, ``dim``
    shifted by one: the kernels take any strided view)."""
    k = KERNELS[name]

    @torch.library.custom_op(f"xent::{name}_backward", mutates_args=())
    def backward_op(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
        return k.backward(grad_output, output, dim).contiguous()

    @backward_op.register_fake
    def _(grad_output, output, dim):
        return output.new_empty(output.shape)

    @backward_op.register_vmap
    def _(info, in_dims, grad_output, output, dim):
        g = _batch_first(grad_output, in_dims[0], info.batch_size)
        o = _batch_first(output, in_dims[1], info.batch_size)
        return backward_op(g, o, dim + 1), 0

    @torch.library.custom_op(f"xent::{name}", mutates_args=())
    def forward_op(x: Tensor, dim: int) -> Tensor:
        return k.forward(x, dim).contiguous()

    @forward_op.register_fake
    def _(x, dim):
        return x.new_empty(x.shape)

    @forward_op.register_vmap
    def _(info, in_dims, x, dim):
        return forward_op(_batch_first(x, in_dims[0], info.batch_size), dim + 1), 0

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return backward_op(grad_output, output, ctx.dim), None

    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op


_ACTIVATIONS = {name: _activation_op(name) for name in KERNELS}


def activation(name: str, x: Tensor, dim: int) -> Tensor:
    """`xent.torch.softmax` / `log_softmax` on ``xent::<name>`` (``dim`` normalised)."""
    return _ACTIVATIONS[name](x, dim)
