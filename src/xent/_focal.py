"""Focal loss (multi-class and torchvision's sigmoid form) and poly-1 cross-entropy.

The multi-class losses share cross_entropy's validation step (`_problem.cross_entropy_problem`:
index or probability targets, K-dimensional input, weights, ``ignore_index``) and reduction
(`_reduction`), and one backend function per target kind (``focal_index``, ``focal_prob``) for
the one per-class loss both are made of,

    φ(p) = -(1 - p)^γ·log p + ε·(1 - p),      ψ(p) = p·φ'(p),

weighted per class by a_c = w_c·y'_c (y' the smoothed one-hot or probability target): focal is
γ > 0, ε = 0; poly-1 is γ = 0, ε > 0; with γ = ε = 0 both are cross-entropy, and run
`_cross_entropy.solve` itself, so the two agree exactly. The gradient is analytic,
∂ℓ/∂z_j = a_j·ψ_j - p_j·Σ_c a_c·ψ_c, which for an index target without smoothing is
-w_t·ψ(p_t)·(p - e_t): cross-entropy's gradient times one number per row.

Nothing forms ``log(softmax(x))`` or ``log(sigmoid(x))``: log p is ``(x - m) - log Σ exp(x -
m)``, 1 - p is ``-expm1(log p)``, and the sigmoid form takes BCE-with-logits' softplus.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np

from . import _buffers, _cross_entropy, _dispatch, _reduction
from ._backend_numpy import _QUIET
from ._binary import bce_operands
from ._problem import Problem, check_options, cross_entropy_problem
from ._validation import (
    as_operand,
    as_result,
    as_storage,
    check_real,
    compute_dtype,
    grad_output_for,
)

Array = np.ndarray

__all__ = ["check_gamma", "focal_loss", "poly1_cross_entropy", "sigmoid_focal_loss", "solve"]


def check_gamma(gamma: Any) -> float:
    """``gamma`` as a finite float >= 0, or the error naming it.

    >>> check_gamma(-1)
    Traceback (most recent call last):
    ...
    ValueError: gamma must be a finite number >= 0, got -1
    """
    g = check_real(gamma, "gamma")
    if g < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return g


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a finite float (negative: no weighting, as torchvision)."""
    return check_real(alpha, "alpha")


# -- the multi-class losses ---------------------------------------------------------------------

def solve(problem: Problem, x: np.ndarray, rdt: np.dtype, gamma: float, epsilon: float, *,
          return_grad: bool = False, grad_output: Any = None) -> Array | tuple[Array, Array]:
    """Compute a validated class problem (``_problem.cross_entropy_problem``) with the focal
    exponent ``gamma`` and the poly-1 coefficient ``epsilon`` on the logits ``x`` (its shape,
    the compute dtype or a 16-bit float): the loss, and the gradient if asked, in ``rdt``.
    ``gamma == epsilon == 0`` is cross-entropy (`_cross_entropy.solve`)."""
    if gamma == 0 and epsilon == 0:
        # (no lse asked: the loss, or the loss and the gradient)
        return _cross_entropy.solve(  # type: ignore[return-value]
            problem, x, rdt, return_grad=return_grad, grad_output=grad_output)
    p = problem
    C, M, dt = p.num_classes, p.positions, p.dtype
    eps = p.options.label_smoothing
    g = grad_output_for(grad_output, p.loss_shape, p.reduction, dt) if return_grad else None
    # No (A, C, B) kernel exists for these ops (`_dispatch.kdim_kernel` would answer None):
    # a class axis that is not last moves last, a copy of the logits and of the gradient.
    rows = x.reshape(1, C) if x.ndim == 1 else _cross_entropy._rows(x, p.class_axis)
    with np.errstate(**_QUIET):
        scale = grad = None
        if return_grad:
            scale, _ = _reduction.row_scales(p.reduction, g, p.denom)
            grad = _buffers.empty(rows.shape, rows.dtype)
        if p.prob:
            y = p.y.reshape(1, C) if x.ndim == 1 else _cross_entropy._rows(p.y, p.class_axis)
            backend = _dispatch.backend_for("focal_prob", M, C, x.dtype)
            loss = backend.focal_prob(rows, y, p.weight, eps, gamma, epsilon, scale, grad)
        else:
            ignore = None if p.all_valid else p.ignore_index
            backend = _dispatch.backend_for("focal_index", M, C, x.dtype)
            loss = backend.focal_index(rows, p.target, p.weight, ignore, eps, gamma, epsilon,
                                       scale, grad)
        loss = _reduction.reduce(np.asarray(loss).reshape(M), p.reduction, p.denom)
        loss = as_result(np.asarray(loss).reshape(p.loss_shape) if p.reduction == "none"
                         else np.asarray(loss, dtype=dt), rdt)
    if not return_grad:
        return loss
    if x.ndim <= 2:
        grad = grad.reshape(x.shape)
    else:
        grad = _cross_entropy._unrows(grad, x.shape, p.class_axis)
    return loss, as_result(grad, rdt)


def _class_loss(fn: str, input: Any, target: Any, weight: Any, ignore_index: Any,
                reduction: Any, label_smoothing: Any, gamma: float, epsilon: float,
                return_grad: bool, grad_output: Any) -> Array | tuple[Array, Array]:
    x, rdt = as_storage(input, "input")
    options = check_options(label_smoothing)
    problem = cross_entropy_problem(x.shape, x.dtype, target, weight, ignore_index, reduction,
                                    options, fn=fn)
    return solve(problem, x, rdt, gamma, epsilon, return_grad=return_grad,
                 grad_output=grad_output)


@overload
def focal_loss(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ..., reduction: str = ...,
    gamma: float = ..., label_smoothing: float = ..., *, return_grad: Literal[False] = ...,
    grad_output: Any = ...,
) -> Array: ...
@overload
def focal_loss(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ..., reduction: str = ...,
    gamma: float = ..., label_smoothing: float = ..., *, return_grad: Literal[True],
    grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def focal_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Multi-class focal loss on logits, with cross_entropy's conventions.

    For a class-index target :math:`t_n`, with :math:`p_n = \mathrm{softmax}(x_n)` and
    :math:`w` = ``weight`` (1 when omitted):

    .. math:: \ell_n = -w_{t_n} (1 - p_{n,t_n})^\gamma \log p_{n,t_n}

    and :math:`\ell_n = 0` where :math:`t_n` = ``ignore_index``. With label smoothing
    :math:`\varepsilon` or class-probability targets :math:`y_n`, the smoothed target
    :math:`y'_n = (1-\varepsilon) y_n + \varepsilon / C` (:math:`y_n` the one-hot of
    :math:`t_n` for index targets) weighs every class:

    .. math:: \ell_n = -\sum_c w_c\, y'_{n,c} (1 - p_{n,c})^\gamma \log p_{n,c}

    which is the index form for one-hot :math:`y` and cross-entropy at :math:`\gamma = 0`
    (then computed by :func:`cross_entropy` itself: the same values, bit for bit).
    ``mean`` divides by :math:`\sum_n w_{t_n}` over the positions not ignored (index targets)
    or by the number of positions (probability targets), as cross_entropy does.

    Args:
        input: logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, or class probabilities
            of the input's shape (as :func:`cross_entropy`).
        weight: ``(C,)`` rescaling weight per class.
        ignore_index: a target value that contributes neither loss nor gradient.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        gamma: the focusing parameter :math:`\gamma \ge 0` (Lin et al. use 2).
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        return_grad: also return dL/d input (analytic, same pass).
        grad_output: upstream gradient (scalar, or the unreduced loss's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)`` in the input's float dtype (16-bit floats computed
        in float32 and rounded once).

    Edge cases: everything ignored, or an empty batch: ``mean`` gives nan, ``sum`` 0, a zero
    gradient. Rows with NaN or ``+inf``, or all ``-inf``, give nan; a ``-inf`` logit on a
    class other than the target is ordinary (its probability is 0).

    Example:
        >>> import xent
        >>> logits = [[0.1, 1.0, 2.1], [2.0, 1.0, 0.1], [0.1, 3.0, 0.1]]
        >>> print(xent.focal_loss(logits, [2, 0, 1]).round(4))  # well-classified: small
        0.0295
        >>> print(xent.focal_loss(logits, [2, 0, 1], gamma=0.0).round(4))  # cross-entropy
        0.3018
        >>> loss, grad = xent.focal_loss(logits, [2, 0, 1], return_grad=True)
        >>> print(grad.round(4))
        [[ 0.0083  0.0203 -0.0285]
         [-0.0345  0.0245  0.01  ]
         [ 0.0005 -0.0009  0.0005]]

    Reference: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), eq. 5, on the
    softmax probabilities.
    """
    g = check_gamma(gamma)
    return _class_loss("focal_loss", input, target, weight, ignore_index, reduction,
                       label_smoothing, g, 0.0, return_grad, grad_output)


@overload
def poly1_cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ..., reduction: str = ...,
    label_smoothing: float = ..., epsilon: float = ..., *, return_grad: Literal[False] = ...,
    grad_output: Any = ...,
) -> Array: ...
@overload
def poly1_cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ..., reduction: str = ...,
    label_smoothing: float = ..., epsilon: float = ..., *, return_grad: Literal[True],
    grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def poly1_cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    epsilon: float = 1.0,
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Poly-1 cross-entropy: cross-entropy plus :math:`\epsilon (1 - p_t)` per position.

    For a class-index target :math:`t_n`, with :math:`p_n = \mathrm{softmax}(x_n)`:

    .. math:: \ell_n = w_{t_n} \left[ -\log p_{n,t_n} + \epsilon (1 - p_{n,t_n}) \right]

    (0 where ignored). With label smoothing or class-probability targets, with the smoothed
    target :math:`y'_n = (1-\varepsilon_s) y_n + \varepsilon_s / C`:

    .. math::
        \ell_n = \sum_c w_c\, y'_{n,c} \left[ -\log p_{n,c} + \epsilon (1 - p_{n,c}) \right]

    the cross-entropy of :func:`cross_entropy` plus :math:`\epsilon \sum_c w_c y'_c (1 - p_c)`,
    which without weights is optax's ``poly_loss_cross_entropy`` (its ``one_minus_pt`` is
    :math:`\sum_c y_c (1 - p_c)`, i.e. :math:`1 - \sum_c y_c p_c` for normalised targets).
    Class weights multiply each class's whole term, as they multiply its cross-entropy, and
    ``mean`` divides by :math:`\sum_n w_{t_n}` (index targets) or the number of positions, as
    cross_entropy does; so a uniform weight changes nothing. :math:`\epsilon = 0` is
    :func:`cross_entropy` itself.

    Args:
        input: logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices or class probabilities (as :func:`cross_entropy`).
        weight: ``(C,)`` rescaling weight per class.
        ignore_index: a target value that contributes neither loss nor gradient.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        label_smoothing: :math:`\varepsilon_s \in [0, 1]`.
        epsilon: the poly-1 coefficient :math:`\epsilon`, any finite number (Leng et al. find
            values in [-1, 10] useful; optax's default is 2, this one's 1).
        return_grad: also return dL/d input (analytic, same pass).
        grad_output: upstream gradient (scalar, or the unreduced loss's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)`` in the input's float dtype.

    Edge cases: as :func:`focal_loss`.

    Example:
        >>> import xent
        >>> logits = [[0.1, 1.0, 2.1], [2.0, 1.0, 0.1], [0.1, 3.0, 0.1]]
        >>> print(xent.poly1_cross_entropy(logits, [2, 0, 1]).round(4))
        0.5548
        >>> print(xent.poly1_cross_entropy(logits, [2, 0, 1], epsilon=0.0).round(4))
        0.3018

    Reference: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification
    Loss Functions" (ICLR 2022), eq. 3; optax ``poly_loss_cross_entropy``.
    """
    e = check_real(epsilon, "epsilon")
    return _class_loss("poly1_cross_entropy", input, target, weight, ignore_index, reduction,
                       label_smoothing, 0.0, e, return_grad, grad_output)


# -- torchvision's sigmoid focal loss -----------------------------------------------------------

@overload
def sigmoid_focal_loss(
    input: Any, target: Any, alpha: float = ..., gamma: float = ..., reduction: str = ..., *,
    return_grad: Literal[False] = ..., grad_output: Any = ...,
) -> Array: ...
@overload
def sigmoid_focal_loss(
    input: Any, target: Any, alpha: float = ..., gamma: float = ..., reduction: str = ..., *,
    return_grad: Literal[True], grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def sigmoid_focal_loss(
    input: Any,
    target: Any,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Sigmoid focal loss on logits, elementwise: torchvision's ``sigmoid_focal_loss``.

    With :math:`p = \sigma(x)`, :math:`p_t = p y + (1 - p)(1 - y)` and
    :math:`\alpha_t = \alpha y + (1 - \alpha)(1 - y)`:

    .. math::
        \ell = \alpha_t\, \mathrm{BCE}(x, y)\, (1 - p_t)^\gamma, \qquad
        \mathrm{BCE}(x, y) = (1 - y)\, x + \mathrm{softplus}(-x)

    with :math:`\alpha_t = 1` when :math:`\alpha < 0` (no weighting); :math:`\gamma = 0` is
    BCE-with-logits times :math:`\alpha_t`. Computed from the logits:
    :math:`1 - p_t = y\,\sigma(-x) + (1 - y)\,\sigma(x)`, both sigmoids without overflow, and
    no :math:`\log \sigma`.

    Args:
        input: logits, any shape.
        target: the input's shape, 1 for the positive class and 0 for the negative (any real
            values are taken, as torchvision takes them).
        alpha: weight of the positives in [0, 1], or negative for none.
        gamma: the focusing exponent :math:`\gamma \ge 0`.
        reduction: ``'none'`` (the default, as torchvision's), ``'mean'`` or ``'sum'``.
        return_grad: also return dL/d input (analytic).
        grad_output: upstream gradient (scalar, or the input's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)`` in the input's float dtype.

    Edge cases: an empty input gives nan for ``mean`` and 0 for ``sum``; logits of ±1e4 give
    exact results; ``±inf`` logits give what torchvision's formula gives on PyTorch's
    BCE-with-logits (``inf`` where wrong, ``x = +inf, y = 0``; nan at ``(+inf, 1)`` and
    ``(-inf, 0)``, whose ``(1 - y)·x + softplus(-x)`` is ``0·inf`` or ``-inf + inf``).

    Example:
        >>> import xent
        >>> print(xent.sigmoid_focal_loss([2.0, -1.0, 0.5], [1.0, 0.0, 1.0]).round(4))
        [0.0005 0.017  0.0169]
        >>> print(xent.sigmoid_focal_loss([2.0, -1.0], [1.0, 0.0], alpha=-1, gamma=0).round(4))
        [0.1269 0.3133]

    Reference: torchvision ``torchvision.ops.sigmoid_focal_loss``
    (torchvision/ops/focal_loss.py); Lin et al. 2017, eq. 5.
    """
    x, rdt = as_storage(input, "input")
    dt = compute_dtype(x.dtype, "input")[0]
    a, g_ = check_alpha(alpha), check_gamma(gamma)
    y, _, _, reduction = bce_operands(x, target, None, None, reduction, dt)
    y = as_operand(y, dt, "target")
    g = grad_output_for(grad_output, x.shape, reduction, dt) if return_grad else None
    K = x.shape[-1] if x.ndim else 1
    M = x.size // K if K else 0
    shape2 = (M, K)
    with np.errstate(**_QUIET):
        scale = grad = None
        if return_grad:
            if reduction == "none":
                scale = g.reshape(shape2)
            else:
                scale = np.asarray(_reduction.row_scale(reduction, g, dt.type(x.size)), dt)
            grad = _buffers.empty(shape2, x.dtype)
        backend = _dispatch.backend_for("sigmoid_focal", M, K, x.dtype)
        loss = backend.sigmoid_focal(np.ascontiguousarray(x).reshape(shape2),
                                     y.reshape(shape2), a, g_, scale, grad)
        loss = np.asarray(_reduction.reduce(loss.reshape(x.shape), reduction, dt.type(x.size)))
    loss = as_result(loss, rdt)
    if not return_grad:
        return loss
    return loss, as_result(grad.reshape(x.shape), rdt)

