"""xent's fast paths as PyTorch custom operators, for ``torch.compile`` and ``torch.export``.

Under graph capture (``torch.compile``, ``torch.export``; `_bridge.graph_capture`) the
drop-ins call these operators instead of their eager path, so that a compiled graph runs xent's
kernels with no graph break (``fullgraph=True``) and an exported program holds them:

========================================  =====================================================
``xent::cross_entropy``                   ``(input, target, weight?, ignore_index, reduction,
                                          label_smoothing, lse_square_scale, softcap?,
                                          return_lse, need_grad) -> (loss, lse, token)``
``xent::nll_loss``                        ``(input, target, weight?, ignore_index, reduction,
                                          need_grad) -> (loss, token)``
``xent::binary_cross_entropy``            ``(input, target, weight?, reduction, need_grad)``
``xent::binary_cross_entropy_with_logits`` ``(input, target, weight?, pos_weight?, reduction,
                                          need_grad) -> (loss, token)``
``xent::saved_grad``                      ``(token, grad_output, shape, dtype, class_dim?)
                                          -> grad_input`` (the backward of the four above)
``xent::softmax``, ``xent::log_softmax``  ``(x, dim) -> out``, backward ``xent::softmax_backward``
                                          / ``log_softmax_backward`` ``(grad_output, out, dim)``
                                          on `_activations.KERNELS`
========================================  =====================================================

Each loss operator validates its call with the core's validation step on the real values
(``_functional.problem_for``: a bad class index raises the core's ``IndexError`` when compiled
too) and computes the loss and, with ``need_grad``, the gradient in the same fused pass through
the same function as the eager path (`ce_arrays`, `nll_arrays`, `bce_arrays`,
`bce_logits_arrays`). Its fake (meta) implementation runs the same validation on the shapes and
dtypes only (the targets' values are stand-ins) and gives the outputs' shapes.

The gradient does not travel through the graph as a tensor: it is held by the ``token``, a
one-element tensor saved for backward, and ``xent::saved_grad`` hands it over to autograd
without a copy (scaling it in place unless ``grad_output`` is the scalar 1), as
`_bridge.SavedGrad` does in eager mode. (Returned as a graph tensor, the backward's
``grad * grad_output`` would cost a pass over the N×C gradient, the loss's own time again.) So
a second backward through the same compiled graph (``retain_graph=True``) raises an error.

Eager calls keep `_bridge.SavedGrad` (and CPU autocast, below, is the one eager use of these
operators): the custom operator's Python dispatch (its autograd wrapper) cost 0.5 to 0.8 ms
more per forward+backward call than the drop-in's path at (32, 3) and (64, 1000) on the
(loaded, 2-core) development machine (``benchmarks/bench_compile.py``, small-call row). Inside
a compiled graph the operators are called directly, without that wrapper.

Under ``torch.autocast("cpu")`` the loss operators' registered autocast rule casts 16-bit
floats to float32 as PyTorch's autocast does for its own losses (float32 loss, gradient cast
back to the input's dtype), in eager mode and compiled.

PyTorch's compile caches key on the operators' names and schemas, not on their fake
implementations: change an operator's schema (or name) whenever its outputs change.

Example (an operator called directly; the drop-ins do this under graph capture):
    >>> import torch
    >>> import xent.torch  # registers torch.ops.xent.*
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> loss, lse, token = torch.ops.xent.cross_entropy(
    ...     x, torch.tensor([0, 2]), None, -100, "mean", 0.0, 0.0, None, False, False)
    >>> round(loss.item(), 4), tuple(lse.shape)
    (0.1755, (0,))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import xent
from xent import _cross_entropy
from xent._problem import Problem, check_options, cross_entropy_problem

from . import _bridge

__all__ = ["bce_arrays", "bce_logits_arrays", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "ce_arrays", "cross_entropy", "nll_arrays",
           "nll_loss"]


# -- the computations, shared with the eager path (`_functional`) ------------------------------

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


# -- the token that carries the gradient from the forward operator to xent::saved_grad ---------

def _token(grad: np.ndarray | None) -> Tensor:
    token = torch.zeros(1, dtype=torch.int64)
    if grad is not None:
        token._xent_grad = grad  # type: ignore[attr-defined]
    return token


def _fake_token(input: Tensor) -> Tensor:
    return input.new_empty(1, dtype=torch.int64)


@torch.library.custom_op("xent::saved_grad", mutates_args=())
def _saved_grad(token: Tensor, grad_output: Tensor, shape: list[int], dtype: torch.dtype,
                class_dim: int | None) -> Tensor:
    grad = token.__dict__.pop("_xent_grad", None)
    if grad is None:
        raise RuntimeError(
            "xent.torch: this compiled loss's gradient was already handed to a backward pass "
            "(or was not computed: the loss was traced without grad); a second backward through "
            "the same compiled graph (retain_graph=True) needs the loss computed again")
    if not (grad_output.dim() == 0 and bool(grad_output == 1)):
        go = _bridge.as_numpy(grad_output)
        if class_dim is not None and go.ndim > 0:
            go = np.expand_dims(go, class_dim)
        np.multiply(grad, go, out=grad, casting="unsafe")
    return _bridge.from_numpy(np.ascontiguousarray(grad))


@_saved_grad.register_fake
def _(token, grad_output, shape, dtype, class_dim):
    return grad_output.new_empty(tuple(shape), dtype=dtype)


def _register_autograd(op: Any, class_dim: Callable[[tuple[Any, ...]], int | None]) -> None:
    """Autograd for a loss operator whose last output is the token: backward is
    ``xent::saved_grad``; the other outputs but the loss are not differentiable."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[-1])
        ctx.mark_non_differentiable(*output[1:])
        x = inputs[0]
        ctx.shape, ctx.dtype, ctx.class_dim = tuple(x.shape), x.dtype, class_dim(inputs)
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_loss, *_):
        (token,) = ctx.saved_tensors
        grad = _saved_grad(token, grad_loss, ctx.shape, ctx.dtype, ctx.class_dim)
        return (grad,) + (None,) * (ctx.n_inputs - 1)

    op.register_autograd(backward, setup_context=setup_context)


def _class_dim_for_none(input: Tensor, reduction: str) -> int | None:
    return _bridge.class_dim_for_none(input, reduction)


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
    from . import _functional

    dt = _functional.compute_dtype(input)
    cross_entropy_problem(tuple(_hint(n) for n in input.shape), dt,
                          _stand_in(target, dt, ignore_index), _stand_in(weight, dt, 0),
                          ignore_index, reduction, options, fn=fn, probabilities=probabilities)


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
    from . import _functional

    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    problem = _functional.problem_for(input, target, weight, ignore_index, reduction, options)
    loss, lse, grad = ce_arrays(problem, _bridge.as_numpy(input), need_grad)
    lse_t = _bridge.from_numpy(lse) if lse is not None else input.new_empty(0)
    return _bridge.from_numpy(loss), lse_t, _token(grad)


@_cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, lse_square_scale,
      softcap, return_lse, need_grad):
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    _check_shapes(input, target, weight, ignore_index, reduction, options, "cross_entropy", True)
    loss = input.new_empty(_loss_shape(input, reduction))
    lse = input.new_empty(_loss_shape(input, "none") if return_lse else (0,))
    return loss, lse, _fake_token(input)


_cross_entropy_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_cross_entropy_op, lambda a: _class_dim_for_none(a[0], a[4]))


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                  reduction: str, options: Any, reference: Callable[[Tensor], Any]) -> Any:
    """`xent.torch.cross_entropy` under graph capture: ``xent::cross_entropy`` where the
    fast path applies (`_bridge.fast_path_ok`), ``reference(input)`` (PyTorch's ops)
    elsewhere."""
    if not _bridge.fast_path_ok(input, target, weight, small_ok=options.extended, captured=True):
        return reference(input)
    loss, lse, _ = torch.ops.xent.cross_entropy(
        input, target, weight, ignore_index, reduction, options.label_smoothing,
        options.lse_square_scale, options.softcap, options.return_lse, _bridge.wants_grad(input))
    return (loss, lse) if options.return_lse else loss


# -- xent::nll_loss ----------------------------------------------------------------------------

@torch.library.custom_op("xent::nll_loss", mutates_args=())
def _nll_loss_op(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                 reduction: str, need_grad: bool) -> tuple[Tensor, Tensor]:
    from . import _functional

    problem = _functional.problem_for(input, target, weight, ignore_index, reduction,
                                      fn="nll_loss", probabilities=False)
    loss, grad = nll_arrays(problem, _bridge.as_numpy(input), need_grad)
    return _bridge.from_numpy(loss), _token(grad)


@_nll_loss_op.register_fake
def _(input, target, weight, ignore_index, reduction, need_grad):
    _check_shapes(input, target, weight, ignore_index, reduction, None, "nll_loss", False)
    return input.new_empty(_loss_shape(input, reduction)), _fake_token(input)


_nll_loss_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_nll_loss_op, lambda a: _class_dim_for_none(a[0], a[4]))


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
             reduction: str, reference: Callable[[Tensor], Tensor]) -> Tensor:
    """`xent.torch.nll_loss` under graph capture (see `cross_entropy`)."""
    if not _bridge.fast_path_ok(input, target, weight, captured=True):
        return reference(input)
    loss, _ = torch.ops.xent.nll_loss(input, target, weight, ignore_index, reduction,
                                      _bridge.wants_grad(input))
    return loss


# -- xent::binary_cross_entropy(_with_logits) --------------------------------------------------

def _bce_fake_loss(input: Tensor, reduction: str) -> Tensor:
    return input.new_empty(tuple(input.shape) if reduction == "none" else ())


@torch.library.custom_op("xent::binary_cross_entropy", mutates_args=())
def _bce_op(input: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
            need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = bce_arrays(_bridge.as_numpy(input), _bridge.as_numpy(target),
                            _bridge.as_numpy(weight), reduction, need_grad)
    return _bridge.from_numpy(loss), _token(grad)


@_bce_op.register_fake
def _(input, target, weight, reduction, need_grad):
    return _bce_fake_loss(input, reduction), _fake_token(input)


_bce_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_bce_op, lambda a: None)


@torch.library.custom_op("xent::binary_cross_entropy_with_logits", mutates_args=())
def _bce_logits_op(input: Tensor, target: Tensor, weight: Tensor | None,
                   pos_weight: Tensor | None, reduction: str,
                   need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = bce_logits_arrays(
        _bridge.as_numpy(input), _bridge.as_numpy(target), _bridge.as_numpy(weight),
        _bridge.as_numpy(pos_weight), reduction, need_grad)
    return _bridge.from_numpy(loss), _token(grad)


@_bce_logits_op.register_fake
def _(input, target, weight, pos_weight, reduction, need_grad):
    return _bce_fake_loss(input, reduction), _fake_token(input)


_bce_logits_op.register_autocast("cpu", torch.float32)  # as PyTorch's autocast
_register_autograd(_bce_logits_op, lambda a: None)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
                         reference: Callable[[Tensor], Tensor], eligible: bool) -> Tensor:
    """`xent.torch.binary_cross_entropy` under graph capture; ``eligible``: the drop-in's shape
    test (target of the input's shape, weight not broadcasting the loss)."""
    if not (eligible and _bridge.fast_path_ok(input, target, weight, captured=True)):
        return reference(input)
    return torch.ops.xent.binary_cross_entropy(input, target, weight, reduction,
                                               _bridge.wants_grad(input))[0]


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None,
    reduction: str, reference: Callable[[Tensor], Tensor], eligible: bool,
) -> Tensor:
    """`xent.torch.binary_cross_entropy_with_logits` under graph capture (see
    `binary_cross_entropy`)."""
    if not (eligible and _bridge.fast_path_ok(input, target, weight, pos_weight, captured=True)):
        return reference(input)
    return torch.ops.xent.binary_cross_entropy_with_logits(
        input, target, weight, pos_weight, reduction, _bridge.wants_grad(input))[0]


# -- xent::softmax / xent::log_softmax (the drop-ins of _activations) ---------------------------

def _activation_op(name: str) -> Any:
    """``xent::<name>(x, dim)`` and ``xent::<name>_backward(grad_output, output, dim)`` on
    `_activations.KERNELS` (the eager drop-in's own functions), with the backward as its
    registered autograd."""

    @torch.library.custom_op(f"xent::{name}_backward", mutates_args=())
    def backward_op(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
        from . import _activations

        return _activations.KERNELS[name].backward(grad_output, output, dim).contiguous()

    @backward_op.register_fake
    def _(grad_output, output, dim):
        return output.new_empty(output.shape)

    @torch.library.custom_op(f"xent::{name}", mutates_args=())
    def forward_op(x: Tensor, dim: int) -> Tensor:
        from . import _activations

        return _activations.KERNELS[name].forward(x, dim).contiguous()

    @forward_op.register_fake
    def _(x, dim):
        return x.new_empty(x.shape)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return backward_op(grad_output, output, ctx.dim), None

    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op


_ACTIVATIONS = {name: _activation_op(name) for name in ("softmax", "log_softmax")}


def activation(name: str, x: Tensor, dim: int, reference: Callable[[], Tensor]) -> Tensor:
    """`xent.torch.softmax` / `log_softmax` under graph capture: ``xent::<name>`` where the fast
    path applies, ``reference()`` (PyTorch's op) elsewhere; ``dim`` normalised."""
    if not _bridge.fast_path_ok(x, captured=True):
        return reference()
    return _ACTIVATIONS[name](x, dim)
