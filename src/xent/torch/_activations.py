"""`torch.softmax` / `torch.log_softmax` drop-ins on xent's kernels.

The fast path (`_bridge.fast_path_ok`: a plain CPU tensor of a dtype the kernels take, at least
`MIN_ELEMENTS` elements, outside tracing) runs ``xent.softmax`` / ``xent.log_softmax`` on a
zero-copy NumPy view of the input (any ``dim``: an inner axis runs the core's K-dimensional
kernel on the ``(A, C, B)`` view, no ``moveaxis`` copy) and differentiates with the core's
vector-Jacobian products (``xent.softmax_backward`` / ``log_softmax_backward``) from the saved
output. Every other call runs PyTorch's own op, so results are the same everywhere and only
speed differs.

For ``torch.library`` registration (``_ops``) the kernels are plain functions of tensors:
``forward(x, dim) -> out`` and ``backward(grad_output, out, dim) -> grad_input`` in `KERNELS`
(``x`` on the fast path, ``dim`` already normalised to ``[0, x.dim())`` or 0 for a 0-d tensor).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

import xent

from . import _bridge, _ops

__all__ = ["log_softmax", "softmax"]


def softmax_forward(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``xent.softmax`` of ``x`` along ``dim`` on a NumPy view: a new tensor of ``x``'s
    shape and dtype (fast-path tensors only)."""
    return _bridge.from_numpy(xent.softmax(_bridge.as_numpy(x), axis=dim))


def softmax_backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int) -> torch.Tensor:
    r"""``dL/dx = y ⊙ (g - <g, y>_dim)`` by the core's ``xent.softmax_backward``."""
    return _bridge.from_numpy(xent.softmax_backward(
        _bridge.as_numpy(grad_output), _bridge.as_numpy(output), axis=dim))


def log_softmax_forward(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``xent.log_softmax`` of ``x`` along ``dim`` on a NumPy view (fast-path tensors only)."""
    return _bridge.from_numpy(xent.log_softmax(_bridge.as_numpy(x), axis=dim))


def log_softmax_backward(grad_output: torch.Tensor, output: torch.Tensor,
                         dim: int) -> torch.Tensor:
    r"""``dL/dx = g - exp(z) Σ_dim g`` by the core's ``xent.log_softmax_backward``."""
    return _bridge.from_numpy(xent.log_softmax_backward(
        _bridge.as_numpy(grad_output), _bridge.as_numpy(output), axis=dim))


class Kernels(NamedTuple):
    """One activation's plain tensor functions, and PyTorch's ops for what they cannot do."""

    forward: Callable[[torch.Tensor, int], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    torch_op: Callable[..., torch.Tensor]  # F.softmax / F.log_softmax
    torch_backward: Callable[..., torch.Tensor]  # differentiable: for a double backward


KERNELS: dict[str, Kernels] = {
    "softmax": Kernels(softmax_forward, softmax_backward, F.softmax,
                       torch.ops.aten._softmax_backward_data),
    "log_softmax": Kernels(log_softmax_forward, log_softmax_backward, F.log_softmax,
                           torch.ops.aten._log_softmax_backward_data),
}


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
        if torch.is_grad_enabled() or not _bridge.plain_cpu(grad_output):
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


def _run(name: str, input: Any, dim: Any, stacklevel: int, dtype: Any) -> torch.Tensor:
    k = KERNELS[name]
    if not isinstance(input, torch.Tensor):  # PyTorch's TypeError
        return k.torch_op(input, dim, stacklevel, dtype=dtype)
    if dim is None:  # PyTorch's legacy choice, with its deprecation warning
        dim = F._get_softmax_dim(  # type: ignore[attr-defined]
            name, input.dim(), stacklevel + 1)
    d = _dim_or_none(dim, input.dim())
    x = input
    if (d is not None and dtype is not None and isinstance(dtype, torch.dtype)
            and dtype.is_floating_point and not _bridge.tracing()):
        x = input.to(dtype)  # PyTorch's dtype=: cast before the operation (autograd casts back)
    elif dtype is not None:
        d = None
    if d is not None and _bridge.tracing():  # torch.compile / export: xent's custom operator
        return _ops.activation(name, x, d, lambda: k.torch_op(input, dim, dtype=dtype))
    if d is None or not _bridge.fast_path_ok(x):
        return k.torch_op(input, dim, dtype=dtype)
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

    Edge cases: a slice that is all ``-inf`` or holds ``+inf`` gives NaN, as PyTorch; CUDA,
    16-bit floats the kernels do not take, tracing and inputs below ``get_min_elements()``
    run PyTorch's op; an invalid ``dim`` or ``dtype`` raises PyTorch's error.

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
