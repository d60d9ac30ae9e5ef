"""`torch.softmax` / `torch.log_softmax` drop-ins on xent's kernels.

As every drop-in: normalise the arguments (``dim``, PyTorch's ``dtype=`` cast), ask the plan
(`_route.plan`), run the route. On `Route.CORE` the call runs ``xent.softmax`` /
``xent.log_softmax`` on a zero-copy NumPy view of the input (any ``dim``: an inner axis runs the
core's K-dimensional kernel on the ``(A, C, B)`` view, no ``moveaxis`` copy) and differentiates
with the core's vector-Jacobian products (``xent.softmax_backward`` / ``log_softmax_backward``)
from the saved output; `Route.CUSTOM_OP` runs the same functions as ``xent::softmax`` /
``xent::log_softmax`` (`_ops`); `Route.TORCH` runs PyTorch's op (16-bit input computed in
float32 and rounded once, as the core does).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F

from . import _bridge, _ops
from ._ops import KERNELS
from ._route import Route, plain_cpu, plan

__all__ = ["log_softmax", "softmax"]


class _Activation(torch.autograd.Function):
    """softmax / log_softmax whose backward is the core's VJP from the saved output.

    A backward with ``create_graph=True`` runs PyTorch's differentiable backward op
    (``aten._softmax_backward_data``) on the same saved output instead, so second derivatives
    are PyTorch's.
    """

    @staticmethod
    def forward(ctx, x, name, dim):  # noqa: D102
        out = KERNELS[name].forward(x, dim)
        ctx.name, ctx.dim = name, dim
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (out,) = ctx.saved_tensors
        k = KERNELS[ctx.name]
        if torch.is_grad_enabled() or not plain_cpu(grad_output):  # (batched too: torch ops)
            return k.torch_backward(grad_output, out, ctx.dim, out.dtype), None, None
        return k.backward(grad_output, out, ctx.dim), None, None


def _dim_or_none(dim: Any, ndim: int) -> int | None:
    """``dim`` in ``[0, ndim)`` (a 0-d tensor takes 0 or -1), or None where PyTorch would raise
    (PyTorch's op then runs, raising its own error)."""
    try:
        d = operator.index(dim)
    except TypeError:
        return None
    n = max(ndim, 1)
    return d % n if -n <= d < n else None


def _no_check() -> None:
    """The core checks nothing PyTorch's softmax does not: its error stands."""


def _run(name: str, input: Any, dim: Any, stacklevel: int, dtype: Any) -> torch.Tensor:
    k = KERNELS[name]
    if not isinstance(input, torch.Tensor):  # PyTorch's TypeError
        return k.torch_op(input, dim, stacklevel, dtype=dtype)
    if dim is None:  # PyTorch's legacy choice, with its deprecation warning
        dim = F._get_softmax_dim(  # type: ignore[attr-defined]
            name, input.dim(), stacklevel + 1)
    d = _dim_or_none(dim, input.dim())
    if d is None or (dtype is not None and not (isinstance(dtype, torch.dtype)
                                                and dtype.is_floating_point)):
        return k.torch_op(input, dim, dtype=dtype)  # PyTorch's error
    # PyTorch's dtype=: cast before the operation (autograd casts the gradient back)
    x = input if dtype is None else input.to(dtype)
    route = plan(x)
    if route is Route.TORCH:
        return _bridge.torch_op(k.torch_op, _no_check, x, d)  # (PyTorch's errors stand)
    if route is Route.CUSTOM_OP:
        return _ops.activation(name, x, d)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Activation.apply(x, name, d)
    return k.forward(x.detach(), d)


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Softmax along ``dim``: `torch.nn.functional.softmax` on xent's kernels.

    .. math:: \mathrm{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},\quad m = \max_j x_j

    Args:
        input: a tensor of any shape.
        dim: the dimension normalised (any, negative counts from the end). None: PyTorch's
            deprecated implicit choice (0 for 0-, 1- and 3-d input, else 1) with its warning.
        _stacklevel: the warning's stack level, as in PyTorch.
        dtype: None, or a float dtype the input is cast to before the operation (the result
            has it; the gradient is cast back), as in PyTorch.

    Returns:
        A tensor of the input's shape (and dtype, or ``dtype``).

    Edge cases: a slice that is all ``-inf`` or holds ``+inf`` gives NaN, as PyTorch; CUDA
    tensors and inputs below ``get_min_elements()`` run PyTorch's op (16-bit input computed in
    float32, as the kernels do); an invalid ``dim`` or ``dtype`` raises PyTorch's error.

    Example:
        >>> import torch, xent.torch as xt
        >>> x = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]], requires_grad=True)
        >>> with xt.min_elements(0):
        ...     y = xt.softmax(x, dim=1)
        >>> y.detach().numpy().round(4)
        array([[0.659 , 0.2424, 0.0986],
               [0.3333, 0.3333, 0.3333]], dtype=float32)
        >>> y[:, 0].sum().backward()
        >>> x.grad[0].numpy().round(4)
        array([ 0.2247, -0.1598, -0.065 ], dtype=float32)
    """
    return _run("softmax", input, dim, _stacklevel, dtype)


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Log-softmax along ``dim``: `torch.nn.functional.log_softmax` on xent's kernels.

    .. math:: \mathrm{log\_softmax}(x)_i = x_i - m - \log \sum_j e^{x_j - m},
              \quad m = \max_j x_j

    Arguments, dtypes and fallbacks as `softmax`. The gradient is ``g - exp(z)·Σ_dim g``.

    Example:
        >>> import torch, xent.torch as xt
        >>> x = torch.tensor([1000.0, 1.0], requires_grad=True)
        >>> with xt.min_elements(0):
        ...     z = xt.log_softmax(x, dim=0)
        >>> z.detach().numpy()
        array([   0., -999.], dtype=float32)
    """
    return _run("log_softmax", input, dim, _stacklevel, dtype)
