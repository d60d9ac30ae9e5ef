r"""sparsemax, 1.5-entmax and α-entmax (bisection), their VJPs and Fenchel-Young losses.

The sparse siblings of softmax (Martins & Astudillo 2016; Peters, Niculae & Martins 2019):
each maps logits to probabilities that sum to 1 with *exact zeros* below a threshold τ,

.. math:: \mathrm{sparsemax}(z)_i = [z_i - \tau]_+, \qquad
          \alpha\text{-entmax}(z)_i = [(\alpha - 1) z_i - \tau]_+^{1/(\alpha-1)},

τ the one value with :math:`\sum_i p_i = 1` (1.5-entmax: :math:`p_i = [z_i/2 - \tau]_+^2`;
sparsemax is α = 2). Their Jacobians are cheap from the output alone, so each VJP takes the
upstream gradient and the output, as `xent.softmax_backward` does. The Fenchel-Young loss of a map
is :math:`\ell(z, t) = \Omega(p) + \langle p, z\rangle - z_t` with the Tsallis regulariser
:math:`\Omega(p) = (1 - \sum_i p_i^\alpha)/(\alpha(\alpha-1))` and gradient :math:`p - e_t`
(the ``entmax`` package's ``sparsemax_loss``, ``entmax15_loss``, ``entmax_bisect_loss``).

Layering as the rest of the core: validate (``_validation``; the losses reuse the
cross-entropy's step, `_problem.cross_entropy_problem`, for targets, ``ignore_index`` and the
reduction's denominator) -> rows ``(M, C)`` with the class axis last -> one backend call
(`_dispatch.backend_for`: the sort-based NumPy reference in ``_backend_numpy``, or the kernels
of ``_kernels/_sparse.py``, which find τ without a sort) -> reduce (``_reduction``).
"""

from __future__ import annotations

import operator
from typing import Any, Literal, overload

import numpy as np

from . import _buffers, _dispatch, _reduction
from ._backend_numpy import _QUIET
from ._cross_entropy import _rows, _unrows
from ._problem import cross_entropy_problem
from ._validation import (
    as_float_like,
    as_result,
    as_storage,
    check_real,
    check_same_shape,
    grad_output_for,
    is_half,
    normalize_axis,
)

Array = np.ndarray

__all__ = [
    "entmax15", "entmax15_backward", "entmax15_loss", "entmax_bisect", "entmax_bisect_backward",
    "entmax_bisect_loss", "sparsemax", "sparsemax_backward", "sparsemax_loss",
]


def check_alpha(alpha: Any) -> float:
    """α as a float > 1, or the ValueError/TypeError naming it."""
    a = check_real(alpha, "alpha")
    if not a > 1:
        raise ValueError(f"alpha must be a finite number > 1 (alpha = 1 is softmax), got {alpha!r}")
    return a


def check_n_iter(n_iter: Any) -> int:
    """``n_iter`` as an int >= 1, or the error naming it."""
    try:
        n = operator.index(n_iter)
    except TypeError:
        raise TypeError(f"n_iter must be an int, got {type(n_iter).__name__}") from None
    if n < 1:
        raise ValueError(f"n_iter must be >= 1 (bisection steps), got {n}")
    return n


def _along(op: str, arrays: tuple[np.ndarray, ...], axis: Any, rdt: np.dtype,
           params: tuple[Any, ...] = ()) -> np.ndarray:
    """The backend's ``op(*rows, *params, out)`` along ``axis`` of ``arrays`` (one shape, one
    storage dtype), as rows ``(M, C)`` with the axis moved last; the result in ``rdt``. A 0-d
    array is one distribution of one value."""
    arr = arrays[0]
    if arr.ndim == 0:
        normalize_axis(axis, 1)
        return _along(op, tuple(a.reshape(1) for a in arrays), 0, rdt, params).reshape(())
    ax = normalize_axis(axis, arr.ndim)
    rows = [_rows(a, ax) for a in arrays]
    M, C = rows[0].shape
    out = _buffers.empty((M, C), arr.dtype)
    if out.size:
        getattr(_dispatch.backend_for(op, M, C, arr.dtype), op)(*rows, *params, out)
    return as_result(_unrows(out, arr.shape, ax) if ax != arr.ndim - 1
                     else out.reshape(arr.shape), rdt)


def _map(op: str, x: Any, axis: Any, params: tuple[Any, ...] = ()) -> np.ndarray:
    arr, rdt = as_storage(x, "x")
    return _along(op, (arr,), axis, rdt, params)


def _vjp(op: str, grad_output: Any, output: Any, axis: Any,
         params: tuple[Any, ...] = ()) -> np.ndarray:
    """``op`` of the upstream gradient and the map's output, both in one storage dtype (16-bit
    as they are where both have it, else the output's compute dtype)."""
    y, rdt = as_storage(output, "output")
    g = np.asarray(grad_output)
    if is_half(y.dtype) and g.dtype != y.dtype:
        y = y.astype(np.float32)
    if g.dtype != y.dtype:
        g = as_float_like(g, y.dtype, "grad_output")
    check_same_shape(y, g, "output", "grad_output")
    return _along(op, (g, y), axis, rdt, params)


def sparsemax(x: Any, axis: int = -1) -> np.ndarray:
    r"""Sparsemax along ``axis``: the Euclidean projection of ``x`` onto the simplex.

    .. math:: \mathrm{sparsemax}(x)_i = \max(x_i - \tau, 0),
              \quad \tau \text{ such that } \textstyle\sum_i \max(x_i - \tau, 0) = 1

    Entries at or below τ get exactly 0; the rest keep their differences (``x_i - x_j``).

    Args:
        x: array-like of any shape ``(..., C, ...)``; integers are promoted to float64.
        axis: the axis that is normalised (``dim`` in PyTorch).

    Returns:
        An array of ``x``'s shape and float dtype, summing to 1 along ``axis`` (float16 and
        ``ml_dtypes.bfloat16`` computed in float32, rounded once).

    Edge cases: ties are kept together (both in or both out of the support); ``-inf`` entries get
    0; a slice holding NaN or ``+inf``, or all ``-inf``, gives NaN (as the ``entmax`` package and
    softmax); an empty array gives an empty array.

    Example:
        >>> import xent
        >>> print(xent.sparsemax([2.0, 1.0, 0.1]))
        [1. 0. 0.]
        >>> print(xent.sparsemax([1.0, 0.8, 0.1]).round(4))  # τ = 0.4
        [0.6 0.4 0. ]

    Reference: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016;
    ``entmax.sparsemax``.
    """
    return _map("sparsemax", x, axis)


def sparsemax_backward(grad_output: Any, output: Any, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`sparsemax` from its output ``p``, on the support
    :math:`S = \{i : p_i > 0\}`.

    .. math:: \frac{\partial L}{\partial x_i} = [i \in S]\,\Bigl(g_i - \frac{1}{|S|}
              \sum_{j \in S} g_j\Bigr)

    Example:
        >>> import xent
        >>> p = xent.sparsemax([1.0, 0.8, 0.1])
        >>> print(xent.sparsemax_backward([1.0, 0.0, 0.0], p))
        [ 0.5 -0.5  0. ]
    """
    return _vjp("sparsemax_backward", grad_output, output, axis)


def entmax15(x: Any, axis: int = -1) -> np.ndarray:
    r"""1.5-entmax along ``axis``: between softmax and sparsemax, sparse and smooth.

    .. math:: \mathrm{entmax}_{1.5}(x)_i = \max(x_i/2 - \tau, 0)^2,
              \quad \tau \text{ such that } \textstyle\sum_i p_i = 1

    (α-entmax with α = 1.5, computed exactly rather than by bisection.) Arguments, result and
    edge cases as :func:`sparsemax`.

    Example:
        >>> import xent
        >>> print(xent.entmax15([2.0, 1.0, 0.1]).round(4))
        [0.8307 0.1693 0.    ]

    Reference: Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019;
    ``entmax.entmax15``.
    """
    return _map("entmax15", x, axis)


def entmax15_backward(grad_output: Any, output: Any, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`entmax15` from its output ``p``.

    .. math:: \frac{\partial L}{\partial x} = w \odot \Bigl(g - \frac{\langle w, g\rangle}
              {\textstyle\sum_j w_j}\Bigr), \quad w = \sqrt{p}

    Example:
        >>> import xent
        >>> p = xent.entmax15([2.0, 1.0, 0.1])
        >>> print(xent.entmax15_backward([1.0, 0.0, 0.0], p).round(4) + 0.0)
        [ 0.2835 -0.2835  0.    ]
    """
    return _vjp("entmax15_backward", grad_output, output, axis)


def entmax_bisect(x: Any, alpha: float = 1.5, axis: int = -1, n_iter: int = 50) -> np.ndarray:
    r"""α-entmax along ``axis`` by bisection on τ, as ``entmax.entmax_bisect``.

    .. math:: \alpha\text{-entmax}(x)_i = \max((\alpha - 1) x_i - \tau, 0)^{1/(\alpha - 1)},
              \quad \tau \text{ such that } \textstyle\sum_i p_i = 1

    ``n_iter`` halvings of the bracket :math:`[(\alpha-1)m - 1, (\alpha-1)m - C^{1-\alpha}]`
    (m = max x), keeping the lower end where the sum is >= 1; the result is then divided by
    its sum (the package's ``ensure_sum_one=True``), so it sums to 1 whatever ``n_iter``.

    Args:
        x: array-like of any shape; integers are promoted to float64.
        alpha: α > 1 (2 is sparsemax; α -> 1 tends to softmax).
        axis: the axis that is normalised.
        n_iter: bisection steps (>= 1); 50 reaches float64's resolution.

    Returns and edge cases: as :func:`sparsemax`.

    Example:
        >>> import xent
        >>> print(xent.entmax_bisect([2.0, 1.0, 0.1], alpha=1.5).round(4))
        [0.8307 0.1693 0.    ]
        >>> print(xent.entmax_bisect([2.0, 1.0, 0.1], alpha=1.2).round(4))
        [0.7267 0.2191 0.0542]

    Reference: Peters et al. 2019; Blondel, Martins & Niculae, "Learning with Fenchel-Young
    Losses", JMLR 2020; ``entmax.entmax_bisect``.
    """
    return _map("entmax_bisect", x, axis, (check_alpha(alpha), check_n_iter(n_iter)))


def entmax_bisect_backward(grad_output: Any, output: Any, alpha: float = 1.5,
                           axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`entmax_bisect` from its output ``p``.

    .. math:: \frac{\partial L}{\partial x} = w \odot \Bigl(g - \frac{\langle w, g\rangle}
              {\textstyle\sum_j w_j}\Bigr), \quad w_i = [p_i > 0]\, p_i^{2-\alpha}

    Example:
        >>> import xent
        >>> p = xent.entmax_bisect([2.0, 1.0, 0.1], alpha=1.5)
        >>> print(xent.entmax_bisect_backward([1.0, 0.0, 0.0], p, alpha=1.5).round(4) + 0.0)
        [ 0.2835 -0.2835  0.    ]
    """
    return _vjp("entmax_bisect_backward", grad_output, output, axis, (check_alpha(alpha),))


# -- the Fenchel-Young losses ---------------------------------------------------------------------

def _loss(op: str, fn: str, input: Any, target: Any, ignore_index: Any, reduction: Any,
          return_grad: bool, grad_output: Any, params: tuple[Any, ...] = ()) -> Any:
    """Validate (the cross-entropy's step, index targets only) -> rows -> one backend call ->
    reduce; the gradient ``row_scale·(p - e_t)`` in the same pass."""
    x, rdt = as_storage(input, "input")
    p = cross_entropy_problem(x.shape, x.dtype, target, None, ignore_index, reduction, fn=fn,
                              probabilities=False)
    C, M, dt = p.num_classes, p.positions, p.dtype
    rows = x.reshape(1, C) if x.ndim == 1 else _rows(x, p.class_axis)
    scale = grad = None
    if return_grad:
        g = grad_output_for(grad_output, p.loss_shape, p.reduction, dt)
        scale = _reduction.row_scales(p.reduction, g, p.denom)[0]
        grad = _buffers.empty(rows.shape, rows.dtype)
    ignore = None if p.all_valid else p.ignore_index
    with np.errstate(**_QUIET):
        if rows.size:
            backend = _dispatch.backend_for(op, M, C, rows.dtype)
            ell = getattr(backend, op)(rows, p.target, ignore, *params, scale, grad)
        else:  # no position, or no class (each loss 0, as the package's empty sum)
            ell = np.zeros(M, dt)
            if grad is not None:
                grad[...] = 0
        loss = _reduction.reduce(ell.reshape(M), p.reduction, p.denom)
        loss = as_result(np.asarray(loss).reshape(p.loss_shape) if p.reduction == "none"
                         else np.asarray(loss, dtype=dt), rdt)
    if not return_grad:
        return loss
    if x.ndim <= 2:
        return loss, as_result(grad.reshape(x.shape), rdt)
    return loss, as_result(_unrows(grad, x.shape, p.class_axis), rdt)


_LOSS_ARGS = """
    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` (class axis 1, as
            `xent.cross_entropy`).
        target: integer class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, each
            in ``[0, C)`` or equal to ``ignore_index``.
        ignore_index: a target value that contributes neither loss nor gradient.
        reduction: ``'none'`` (the target's shape), ``'mean'`` (over the positions not
            ignored: the ``entmax`` package's ``'elementwise_mean'``) or ``'sum'``.
        return_grad: also return dL/d input, ``s·(p - e_t)``, computed in the same pass.
        grad_output: the upstream gradient: a scalar for ``'mean'``/``'sum'``, the unreduced
            loss's shape for ``'none'`` (default ones).

    Returns:
        ``loss`` (and ``grad_input`` with ``return_grad``) in the input's float dtype.

    Edge cases: every target ignored (or no position): ``'mean'`` gives NaN (0/0, as
    ``cross_entropy``), ``'sum'`` 0, zero gradient. ``-inf`` logits outside the support add 0
    (the package's ``<p, x>`` gives NaN there); a ``-inf`` target logit gives ``+inf``; a row
    holding NaN or ``+inf``, or all ``-inf``, gives NaN.
"""


@overload
def sparsemax_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ..., *,
                   return_grad: Literal[False] = ..., grad_output: Any = ...) -> Array: ...
@overload
def sparsemax_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ..., *,
                   return_grad: Literal[True], grad_output: Any = ...) -> tuple[Array, Array]: ...
def sparsemax_loss(input: Any, target: Any, ignore_index: int = -100, reduction: str = "mean",
                   *, return_grad: bool = False, grad_output: Any = None) -> Any:
    r"""Sparsemax loss (the Fenchel-Young loss of sparsemax), with index targets.

    .. math:: \ell_n = \tfrac{1}{2}\bigl(1 - \lVert p_n\rVert^2\bigr)
              + \langle p_n, z_n\rangle - z_{n,t_n}, \quad p_n = \mathrm{sparsemax}(z_n),
              \qquad \frac{\partial \ell_n}{\partial z_n} = p_n - e_{t_n}

    ℓ >= 0, and 0 exactly when the target alone is in the support with probability 1 (a
    margin of 1 over every other logit).
    {args}
    Example:
        >>> import xent
        >>> x = [[2.0, 1.0, 0.1], [1.0, 0.8, 0.1]]
        >>> print(xent.sparsemax_loss(x, [0, 1], reduction="none").round(4))
        [0.   0.36]
        >>> loss, grad = xent.sparsemax_loss(x, [0, 1], return_grad=True)
        >>> print(grad.round(4))
        [[ 0.   0.   0. ]
         [ 0.3 -0.3  0. ]]

    Reference: Martins & Astudillo 2016; ``entmax.SparsemaxLoss``.
    """
    return _loss("sparsemax_loss", "sparsemax_loss", input, target, ignore_index, reduction,
                 return_grad, grad_output)


@overload
def entmax15_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ..., *,
                  return_grad: Literal[False] = ..., grad_output: Any = ...) -> Array: ...
@overload
def entmax15_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ..., *,
                  return_grad: Literal[True], grad_output: Any = ...) -> tuple[Array, Array]: ...
def entmax15_loss(input: Any, target: Any, ignore_index: int = -100, reduction: str = "mean",
                  *, return_grad: bool = False, grad_output: Any = None) -> Any:
    r"""1.5-entmax loss (the Fenchel-Young loss of 1.5-entmax), with index targets.

    .. math:: \ell_n = \frac{1 - \sum_c p_{n,c}^{3/2}}{0.75} + \langle p_n, z_n\rangle
              - z_{n,t_n}, \quad p_n = \mathrm{entmax}_{1.5}(z_n),
              \qquad \frac{\partial \ell_n}{\partial z_n} = p_n - e_{t_n}
    {args}
    Example:
        >>> import xent
        >>> print(xent.entmax15_loss([[2.0, 1.0, 0.1]], [1]).round(4))
        1.0617

    Reference: Peters et al. 2019; ``entmax.Entmax15Loss``.
    """
    return _loss("entmax15_loss", "entmax15_loss", input, target, ignore_index, reduction,
                 return_grad, grad_output)


@overload
def entmax_bisect_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ...,
                       *, alpha: float = ..., n_iter: int = ...,
                       return_grad: Literal[False] = ..., grad_output: Any = ...) -> Array: ...
@overload
def entmax_bisect_loss(input: Any, target: Any, ignore_index: int = ..., reduction: str = ...,
                       *, alpha: float = ..., n_iter: int = ..., return_grad: Literal[True],
                       grad_output: Any = ...) -> tuple[Array, Array]: ...
def entmax_bisect_loss(input: Any, target: Any, ignore_index: int = -100,
                       reduction: str = "mean", *, alpha: float = 1.5, n_iter: int = 50,
                       return_grad: bool = False, grad_output: Any = None) -> Any:
    r"""α-entmax loss (the Fenchel-Young loss of α-entmax by bisection), with index targets.

    .. math:: \ell_n = \frac{1 - \sum_c p_{n,c}^{\alpha}}{\alpha(\alpha - 1)}
              + \langle p_n, z_n\rangle - z_{n,t_n}, \quad p_n = \alpha\text{-entmax}(z_n),
              \qquad \frac{\partial \ell_n}{\partial z_n} = p_n - e_{t_n}

    ``alpha`` > 1 and ``n_iter`` >= 1 as in :func:`entmax_bisect`.
    {args}
    Example:
        >>> import xent
        >>> print(xent.entmax_bisect_loss([[2.0, 1.0, 0.1]], [1], alpha=1.5).round(4))
        1.0617

    Reference: Blondel, Martins & Niculae 2020; ``entmax.EntmaxBisectLoss``.
    """
    params = (check_alpha(alpha), check_n_iter(n_iter))
    return _loss("entmax_bisect_loss", "entmax_bisect_loss", input, target, ignore_index,
                 reduction, return_grad, grad_output, params)


for _f in (sparsemax_loss, entmax15_loss, entmax_bisect_loss):
    _f.__doc__ = (_f.__doc__ or "").replace("{args}", _LOSS_ARGS)
del _f
