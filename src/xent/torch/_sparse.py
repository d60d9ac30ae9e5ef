r"""sparsemax, 1.5-entmax and α-entmax (bisection) and their Fenchel-Young losses for PyTorch:
drop-ins for the ``entmax`` package's ``sparsemax``, ``entmax15``, ``entmax_bisect``,
``sparsemax_loss``, ``entmax15_loss`` and ``entmax_bisect_loss``, on xent's kernels.

PyTorch has none of them, so every call asks `_route.plan` with ``extended=True`` (never
`Route.TORCH`) and runs the route it names:

- `Route.CORE`: the core (`xent.sparsemax`, ..., `xent.sparsemax_loss`) on zero-copy NumPy views;
  the maps differentiate by the core's VJPs from the saved output (`_Map`), the losses hand the
  gradient computed in the forward pass to `_bridge.SavedGrad` (`_bridge.run_core`);
- `Route.CUSTOM_OP` (``torch.compile`` / ``torch.export``, CPU autocast): the operators
  ``xent::entmax(x, dim, kind, alpha, n_iter)``, ``xent::entmax_backward(grad_output, output,
  dim, kind, alpha)`` and ``xent::entmax_loss(input, target, ignore_index, reduction, kind,
  alpha, n_iter, need_grad) -> (loss, grad)``, registered here (fake implementations, autograd;
  ``torch.library.opcheck`` passes on each), ``kind`` one of ``'sparsemax'``, ``'entmax15'``,
  ``'entmax_bisect'``;
- `Route.COMPOSED` (CUDA, tensors the kernels cannot read): the sort-based formulas in PyTorch
  ops (`composed_map`, `composed_vjp`, `composed_loss`), after the core's validation.

A double backward (``create_graph=True``) differentiates `composed_vjp` (maps) or
`composed_loss` (losses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import xent
from xent import _sparse

from . import _bridge, _ops
from ._route import Route, plain_cpu, plan

__all__ = ["entmax15", "entmax15_loss", "entmax_bisect", "entmax_bisect_loss", "sparsemax",
           "sparsemax_loss"]

_KINDS = ("sparsemax", "entmax15", "entmax_bisect")
_ALPHA = {"sparsemax": 2.0, "entmax15": 1.5}


# -- the PyTorch-ops forms (Route.COMPOSED, the double backward, the tests' second oracle) -----

def composed_map(x: Tensor, dim: int, kind: str, alpha: float, n_iter: int) -> Tensor:
    """The map of ``kind`` along ``dim`` in PyTorch ops (sort-based; bisection as the
    ``entmax`` package), 16-bit input computed in float32 and rounded once."""
    dt = x.dtype
    x = x.float() if dt in (torch.float16, torch.bfloat16) else x
    C = x.shape[dim]
    m = x.amax(dim, keepdim=True)
    z = torch.where(torch.isfinite(m), x - m, torch.full_like(x, float("nan")))
    shape = [1] * x.dim()
    shape[dim] = C
    if kind == "entmax_bisect":
        am1 = alpha - 1.0
        X = z * am1
        tau_lo = torch.full_like(m, -1.0)
        dm = -((1.0 / C) ** am1) - tau_lo
        p = X
        for _ in range(n_iter):
            dm = dm / 2
            tau_m = tau_lo + dm
            p = torch.clamp(X - tau_m, min=0) ** (1.0 / am1)
            tau_lo = torch.where(p.sum(dim, keepdim=True) - 1 >= 0, tau_m, tau_lo)
        return (p / p.sum(dim, keepdim=True)).to(dt)
    a = z if kind == "sparsemax" else z / 2
    s = a.sort(dim, descending=True).values
    rho = torch.arange(1, C + 1, dtype=x.dtype, device=x.device).view(shape)
    if kind == "sparsemax":
        cs = s.cumsum(dim) - 1
        k = (rho * s > cs).sum(dim, keepdim=True).clamp(min=1)
        tau = cs.gather(dim, k - 1) / k
        return torch.clamp(a - tau, min=0).to(dt)
    mean = s.cumsum(dim) / rho
    mean_sq = (s * s).cumsum(dim) / rho
    delta = (1 - rho * (mean_sq - mean * mean)) / rho
    taus = mean - torch.sqrt(torch.clamp(delta, min=0))
    k = (taus <= s).sum(dim, keepdim=True).clamp(min=1)
    return (torch.clamp(a - taus.gather(dim, k - 1), min=0) ** 2).to(dt)


def composed_vjp(grad_output: Tensor, output: Tensor, dim: int, alpha: float) -> Tensor:
    """``w·(g - <w, g>/Σw)``, w = [y > 0]·y^(2-α), in differentiable PyTorch ops."""
    y, g = output, grad_output
    pos = y > 0
    if alpha == 2.0:
        w = pos.to(y.dtype)
    else:
        w = torch.where(pos, torch.where(pos, y, torch.ones_like(y)) ** (2 - alpha),
                        torch.zeros_like(y))
    q = (w * g).sum(dim, keepdim=True) / w.sum(dim, keepdim=True)
    return w * (g - q)


def composed_loss(input: Tensor, target: Tensor, ignore_index: int, reduction: str, kind: str,
                  alpha: float, n_iter: int) -> Tensor:
    r"""The Fenchel-Young loss in PyTorch ops: Ω(p) + Σ_{p>0} p·(z - z_t), differentiable
    (first derivative p - e_t, second the map's Jacobian)."""
    x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
    if x.dim() == 1:
        x, tgt = x.unsqueeze(0), target.reshape(1)
    else:
        x, tgt = x.movedim(1, -1).reshape(-1, x.shape[1]), target.reshape(-1)
    valid = tgt != ignore_index
    t = torch.where(valid, tgt, torch.zeros_like(tgt)).unsqueeze(1)
    p = _Map.apply(x, -1, kind, alpha, n_iter, False)
    xt = x.gather(1, t)
    pz = torch.where(p > 0, p * (x - xt), torch.zeros_like(p)).sum(1)
    pos = p > 0  # (p^α through a mask: its second derivative is infinite at 0)
    pa = torch.where(pos, torch.where(pos, p, torch.ones_like(p)) ** alpha, torch.zeros_like(p))
    omega = (1 - pa.sum(1)) / (alpha * (alpha - 1))
    rows = torch.where(valid, omega + pz, torch.zeros_like(pz))
    if reduction == "none":
        shape = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
        out = rows.reshape(shape)
    elif reduction == "sum":
        out = rows.sum()
    else:
        out = rows.sum() / valid.sum()
    return out.to(input.dtype)


# -- the eager map (Route.CORE and Route.COMPOSED) ----------------------------------------------

def _core_map(x: Tensor, dim: int, kind: str, alpha: float, n_iter: int) -> Tensor:
    a = _bridge.as_numpy(x)
    if kind == "sparsemax":
        out = xent.sparsemax(a, axis=dim)
    elif kind == "entmax15":
        out = xent.entmax15(a, axis=dim)
    else:
        out = xent.entmax_bisect(a, alpha, axis=dim, n_iter=n_iter)
    return _bridge.from_numpy(out)


def _core_vjp(g: Tensor, y: Tensor, dim: int, kind: str, alpha: float) -> Tensor:
    ga, ya = _bridge.as_numpy(g), _bridge.as_numpy(y)
    if kind == "sparsemax":
        out = xent.sparsemax_backward(ga, ya, axis=dim)
    elif kind == "entmax15":
        out = xent.entmax15_backward(ga, ya, axis=dim)
    else:
        out = xent.entmax_bisect_backward(ga, ya, alpha, axis=dim)
    return _bridge.from_numpy(out)


class _Map(torch.autograd.Function):
    """A map whose backward is the VJP from the saved output: the core's (``core``), or
    `composed_vjp` (PyTorch ops: the composed route, a double backward, batched or non-CPU
    upstream gradients)."""

    @staticmethod
    def forward(ctx, x, dim, kind, alpha, n_iter, core):  # noqa: D102
        out = _core_map(x, dim, kind, alpha, n_iter) if core else composed_map(
            x, dim, kind, alpha, n_iter)
        ctx.dim, ctx.kind, ctx.alpha, ctx.core = dim, kind, alpha, core
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (out,) = ctx.saved_tensors
        if ctx.core and not torch.is_grad_enabled() and plain_cpu(grad_output):
            g = _core_vjp(grad_output.to(out.dtype), out, ctx.dim, ctx.kind, ctx.alpha)
        else:
            g = composed_vjp(grad_output, out, ctx.dim, ctx.alpha).to(out.dtype)
        return g, None, None, None, None, None


# -- Route.CUSTOM_OP ----------------------------------------------------------------------------

@torch.library.custom_op("xent::entmax_backward", mutates_args=())
def _backward_op(grad_output: Tensor, output: Tensor, dim: int, kind: str,
                 alpha: float) -> Tensor:
    return _core_vjp(grad_output, output, dim, kind, alpha).contiguous()


@_backward_op.register_fake
def _(grad_output, output, dim, kind, alpha):
    return output.new_empty(output.shape)


@torch.library.custom_op("xent::entmax", mutates_args=())
def _map_op(x: Tensor, dim: int, kind: str, alpha: float, n_iter: int) -> Tensor:
    return _core_map(x, dim, kind, alpha, n_iter).contiguous()


@_map_op.register_fake
def _(x, dim, kind, alpha, n_iter):
    return x.new_empty(x.shape)


def _map_setup(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim, ctx.kind, ctx.alpha = inputs[1], inputs[2], inputs[3]


def _map_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    return _backward_op(grad_output, output, ctx.dim, ctx.kind, ctx.alpha), None, None, None, None


_map_op.register_autograd(_map_backward, setup_context=_map_setup)


def _loss_arrays(input: Tensor, target: Tensor, ignore_index: int, reduction: str, kind: str,
                 alpha: float, n_iter: int, grad: bool) -> tuple[Any, Any]:
    """``(loss, gradient or None)`` of the core's loss on NumPy views."""
    x, t = _bridge.as_numpy(input), _bridge.numpy_operand(target, _bridge.compute_dtype(input))
    fn: Any = getattr(xent, f"{kind}_loss")  # (return_grad a bool: both overloads)
    extra = {"alpha": alpha, "n_iter": n_iter} if kind == "entmax_bisect" else {}
    out = fn(x, t, ignore_index, reduction, return_grad=grad, **extra)
    return out if grad else (out, None)


@torch.library.custom_op("xent::entmax_loss", mutates_args=())
def _loss_op(input: Tensor, target: Tensor, ignore_index: int, reduction: str, kind: str,
             alpha: float, n_iter: int, need_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = _loss_arrays(input, target, ignore_index, reduction, kind, alpha, n_iter,
                              need_grad)
    g = _bridge.from_numpy(grad) if grad is not None else input.new_empty(0)
    return _bridge.from_numpy(np.asarray(loss)).clone(), g


@_loss_op.register_fake
def _(input, target, ignore_index, reduction, kind, alpha, n_iter, need_grad):
    _ops._check_shapes(input, target, None, ignore_index, reduction, None, f"{kind}_loss", False)
    return (input.new_empty(_ops._loss_shape(input, reduction)),
            input.new_empty(tuple(input.shape) if need_grad else (0,)))


_loss_op.register_autocast("cpu", torch.float32)  # (as PyTorch's autocast for its losses)
_ops._register_autograd(_loss_op, lambda a: _bridge.class_dim_for_none(a[0], a[3]))


# -- the drop-ins -------------------------------------------------------------------------------

def _dim(input: Any, dim: Any) -> int:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    n = max(input.dim(), 1)
    if not isinstance(dim, int) or isinstance(dim, bool) or not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], "
                         f"but got {dim!r})")
    return dim % n


def _run_map(kind: str, input: Any, dim: Any, alpha: float = 2.0, n_iter: int = 0) -> Tensor:
    d = _dim(input, dim)
    if input.dim() == 0:
        return _run_map(kind, input.reshape(1), 0, alpha, n_iter).reshape(())
    route = plan(input, extended=True)
    if route is Route.CUSTOM_OP:
        return _map_op(input, d, kind, alpha, n_iter)
    core = route is Route.CORE
    if torch.is_grad_enabled() and input.requires_grad:
        return _Map.apply(input, d, kind, alpha, n_iter, core)
    x = input.detach()
    return _core_map(x, d, kind, alpha, n_iter) if core else composed_map(x, d, kind, alpha,
                                                                          n_iter)


def sparsemax(input: Tensor, dim: int = -1) -> Tensor:
    r"""Sparsemax along ``dim``: ``entmax.sparsemax`` on xent's kernels.

    .. math:: p_i = \max(x_i - \tau, 0), \quad \tau \text{ such that } \textstyle\sum_i p_i = 1

    Args:
        input: a tensor of any shape (float32, float64, float16, bfloat16; others in PyTorch
            ops).
        dim: the dimension normalised.

    Returns:
        A tensor of the input's shape and dtype with exact zeros, summing to 1 along ``dim``;
        differentiable (VJP: ``g - mean_S(g)`` on the support S, 0 elsewhere).

    Edge cases: as `xent.sparsemax` (``-inf`` entries 0; NaN, ``+inf`` or all ``-inf``: NaN).

    Example:
        >>> import torch, xent.torch as xt
        >>> x = torch.tensor([1.0, 0.8, 0.1], requires_grad=True)
        >>> p = xt.sparsemax(x)
        >>> p.detach().numpy().round(4)
        array([0.6, 0.4, 0. ], dtype=float32)
        >>> p[0].backward()
        >>> x.grad.numpy().round(4)
        array([ 0.5, -0.5,  0. ], dtype=float32)
    """
    return _run_map("sparsemax", input, dim)


def entmax15(input: Tensor, dim: int = -1) -> Tensor:
    r"""1.5-entmax along ``dim``: ``entmax.entmax15`` on xent's kernels.

    .. math:: p_i = \max(x_i/2 - \tau, 0)^2, \quad \tau \text{ such that }
              \textstyle\sum_i p_i = 1

    Arguments and result as `sparsemax` (VJP: ``w·(g - <w, g>/Σw)``, ``w = sqrt(p)``).

    Example:
        >>> import torch, xent.torch as xt
        >>> xt.entmax15(torch.tensor([2.0, 1.0, 0.1])).numpy().round(4)
        array([0.8307, 0.1693, 0.    ], dtype=float32)
    """
    return _run_map("entmax15", input, dim, 1.5)


def entmax_bisect(input: Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 50) -> Tensor:
    r"""α-entmax along ``dim`` by bisection: ``entmax.entmax_bisect`` (``ensure_sum_one=True``)
    on xent's kernels.

    .. math:: p_i = \max((\alpha - 1) x_i - \tau, 0)^{1/(\alpha - 1)}, \quad \tau \text{ such
              that } \textstyle\sum_i p_i = 1

    Args:
        input: a tensor of any shape.
        alpha: a number > 1 (the package also takes a tensor of per-row α; xent does not).
        dim: the dimension normalised.
        n_iter: bisection steps (>= 1), then the result is divided by its sum.

    Example:
        >>> import torch, xent.torch as xt
        >>> xt.entmax_bisect(torch.tensor([2.0, 1.0, 0.1]), alpha=1.2).numpy().round(4)
        array([0.7267, 0.2191, 0.0542], dtype=float32)
    """
    return _run_map("entmax_bisect", input, dim, _sparse.check_alpha(alpha),
                    _sparse.check_n_iter(n_iter))


def _reduction(reduction: Any) -> Any:
    """The package's ``'elementwise_mean'`` is ``'mean'``."""
    return "mean" if reduction == "elementwise_mean" else reduction


def _run_loss(kind: str, input: Any, target: Any, ignore_index: Any, reduction: Any,
              alpha: float = 2.0, n_iter: int = 0) -> Tensor:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    target = _bridge.normalise_index(target)
    reduction = _reduction(reduction)
    route = plan(input, target, extended=True)
    if route is Route.CUSTOM_OP:
        return _loss_op(input, target, ignore_index, reduction, kind, alpha, n_iter,
                        _bridge.wants_grad(input))[0]
    p = _bridge.problem_for(input, target, None, ignore_index, reduction, fn=f"{kind}_loss",
                            probabilities=False)
    if route is Route.COMPOSED:
        return composed_loss(input, target, p.ignore_index, p.reduction, kind, alpha, n_iter)

    def compute(grad: bool) -> tuple[Any, Any]:
        return _loss_arrays(input, target, p.ignore_index, p.reduction, kind, alpha, n_iter,
                            grad)

    def reference(x: Tensor) -> Tensor:
        return composed_loss(x, target, p.ignore_index, p.reduction, kind, alpha, n_iter)

    return _bridge.run_core(input, compute, _bridge.class_dim_for_none(input, p.reduction),
                            reference)


_LOSS_DOC = """
    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices (any integer dtype) of the input's shape without the class
            dimension, each in ``[0, C)`` or ``ignore_index``.
        ignore_index: a target value that contributes neither loss nor gradient (the package
            masks only ``ignore_index >= 0``; here any value, as ``cross_entropy``).
        reduction: ``'none'``, ``'mean'`` (over the positions not ignored; the package's
            ``'elementwise_mean'`` is accepted as its name) or ``'sum'``.

    Returns:
        The loss (``'none'``: the target's shape), differentiable: ``p - e_t`` per position
        times the upstream gradient, computed in the forward pass.
"""


def sparsemax_loss(input: Tensor, target: Tensor, ignore_index: int = -100,
                   reduction: str = "mean") -> Tensor:
    r"""The sparsemax loss (``entmax.SparsemaxLoss``) on xent's kernels.

    .. math:: \ell_n = \tfrac12 (1 - \lVert p_n\rVert^2) + \langle p_n, z_n\rangle - z_{n,t_n},
              \quad p_n = \mathrm{sparsemax}(z_n)
    {args}
    Example:
        >>> import torch, xent.torch as xt
        >>> x = torch.tensor([[2.0, 1.0, 0.1], [1.0, 0.8, 0.1]], requires_grad=True)
        >>> loss = xt.sparsemax_loss(x, torch.tensor([0, 1]))
        >>> round(loss.item(), 4)
        0.18
        >>> loss.backward()
        >>> x.grad.numpy().round(4)
        array([[ 0. ,  0. ,  0. ],
               [ 0.3, -0.3,  0. ]], dtype=float32)
    """
    return _run_loss("sparsemax", input, target, ignore_index, reduction)


def entmax15_loss(input: Tensor, target: Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> Tensor:
    r"""The 1.5-entmax loss (``entmax.Entmax15Loss``) on xent's kernels.

    .. math:: \ell_n = \frac{1 - \sum_c p_{n,c}^{3/2}}{0.75} + \langle p_n, z_n\rangle
              - z_{n,t_n}, \quad p_n = \mathrm{entmax}_{1.5}(z_n)
    {args}
    Example:
        >>> import torch, xent.torch as xt
        >>> round(xt.entmax15_loss(torch.tensor([[2.0, 1.0, 0.1]]), torch.tensor([1])).item(), 4)
        1.0617
    """
    return _run_loss("entmax15", input, target, ignore_index, reduction, 1.5)


def entmax_bisect_loss(input: Tensor, target: Tensor, alpha: float = 1.5, n_iter: int = 50,
                       ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    r"""The α-entmax loss (``entmax.EntmaxBisectLoss``; the package's positional order
    ``(X, target, alpha, n_iter)``) on xent's kernels.

    .. math:: \ell_n = \frac{1 - \sum_c p_{n,c}^{\alpha}}{\alpha(\alpha-1)}
              + \langle p_n, z_n\rangle - z_{n,t_n}, \quad p_n = \alpha\text{-entmax}(z_n)
    {args}
    Example:
        >>> import torch, xent.torch as xt
        >>> x, t = torch.tensor([[2.0, 1.0, 0.1]]), torch.tensor([1])
        >>> round(xt.entmax_bisect_loss(x, t, alpha=1.5).item(), 4)
        1.0617
    """
    return _run_loss("entmax_bisect", input, target, ignore_index, reduction,
                     _sparse.check_alpha(alpha), _sparse.check_n_iter(n_iter))


for _f in (sparsemax_loss, entmax15_loss, entmax_bisect_loss):
    _f.__doc__ = (_f.__doc__ or "").replace("{args}", _LOSS_DOC)
del _f
