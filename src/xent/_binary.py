"""binary_cross_entropy (on probabilities) and binary_cross_entropy_with_logits.

optax's rule, on the line that uses it: log(1 - sigmoid(x)) = log_sigmoid(-x), the latter stable.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np

from . import _buffers, _dispatch, _reduction
from ._backend_numpy import _QUIET
from ._validation import (
    as_float,
    as_float_like,
    as_operand,
    as_result,
    as_storage,
    broadcastable_to,
    check_reduction,
    compute_dtype,
    grad_output_for,
    is_float,
)

Array = np.ndarray
_EPSILON = 1e-12  # PyTorch's floor on x(1-x) in binary_cross_entropy's backward


def _target_like(x: np.ndarray, target: Any) -> np.ndarray:
    """``target`` as an array of ``x``'s shape holding real numbers (in its own dtype)."""
    y = np.asarray(target)
    if y.shape != x.shape:
        raise ValueError(
            f"Using a target size ({y.shape}) that is different to the input size ({x.shape}) "
            "is not supported: target must have the input's shape"
        )
    if y.dtype.kind not in "iub" and not is_float(y.dtype):
        raise TypeError(f"target must hold real numbers, got dtype {y.dtype}")
    return y


def _in_unit_interval(a: np.ndarray, name: str) -> None:
    # `~(a >= 0) | ~(a <= 1)` also catches nan, as PyTorch's check does.
    bad = ~((a >= 0) & (a <= 1))
    if bad.any():
        pos = int(np.flatnonzero(bad.reshape(-1))[0])
        where = tuple(int(i) for i in np.unravel_index(pos, a.shape)) if a.ndim else ()
        bad_value = float(a.reshape(-1)[pos])
        raise ValueError(f"{name} must hold probabilities in [0, 1], got {bad_value!r} at {where}")


def bce_operands(x: np.ndarray, target: Any, weight: Any, pos_weight: Any, reduction: Any,
                 dt: np.dtype) -> tuple[np.ndarray, Any, Any, str]:
    """The validation both binary losses share: ``(y, w, pw, reduction)``, ``y`` the target of
    ``x``'s shape holding real numbers (in its own dtype), ``w`` and ``pw`` the weights in the
    compute dtype ``dt``, broadcastable to ``x``'s shape (None where not given).

    >>> import numpy as np
    >>> bce_operands(np.zeros(3), [1, 0], None, None, "mean", np.dtype(np.float64))
    Traceback (most recent call last):
    ...
    ValueError: Using a target size ((2,)) that is different to the input size ((3,)) is not \
supported: target must have the input's shape
    """
    reduction = check_reduction(reduction)
    y = _target_like(x, target)
    w = pw = None
    if weight is not None:
        w = broadcastable_to(as_float_like(weight, dt, "weight"), x.shape, "weight", "input")
    if pos_weight is not None:
        pw = broadcastable_to(
            as_float_like(pos_weight, dt, "pos_weight"), x.shape, "pos_weight", "input"
        )
    return y, w, pw, reduction


def check_probabilities(x: np.ndarray, y: np.ndarray) -> None:
    """`binary_cross_entropy`'s check of its values: input and target in [0, 1]."""
    _in_unit_interval(x, "input")
    _in_unit_interval(y, "target")


@overload
def binary_cross_entropy(
    input: Any, target: Any, weight: Any = ..., reduction: str = ..., *,
    return_grad: Literal[False] = ..., grad_output: Any = ...,
) -> Array: ...
@overload
def binary_cross_entropy(
    input: Any, target: Any, weight: Any = ..., reduction: str = ..., *,
    return_grad: Literal[True], grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def binary_cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    reduction: str = "mean",
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Binary cross-entropy between probabilities and targets, elementwise.

    .. math:: \ell = -w \left[ y \max(\log x, -100) + (1 - y) \max(\log(1 - x), -100) \right]

    The logs are clamped at -100 as PyTorch does, so ``x = 0`` or ``x = 1`` give a finite loss.
    The gradient is PyTorch's: :math:`w (x - y) / \max(x (1 - x), 10^{-12})`.
    Prefer :func:`binary_cross_entropy_with_logits`, which never needs the clamp.

    Args:
        input: probabilities in [0, 1], any shape.
        target: values in [0, 1], the input's shape.
        weight: rescaling weight, broadcastable to the input's shape.
        reduction: ``'none'`` (input's shape), ``'mean'`` or ``'sum'`` (0-d arrays).
        return_grad: also return dL/d input.
        grad_output: upstream gradient (scalar, or the input's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)``, in the input's float dtype.

    Edge cases: an empty input gives nan for ``mean`` and 0 for ``sum``.

    Example:
        >>> import xent
        >>> p = xent.sigmoid([2.0, -1.0, 0.5])  # the tutorial's BCE example
        >>> print(xent.binary_cross_entropy(p, [1.0, 0.0, 1.0]).round(4))
        0.3048

    Reference: ``torch.nn.functional.binary_cross_entropy``.
    """
    x, rdt = as_float(input, "input")
    y, w, _, reduction = bce_operands(x, target, weight, None, reduction, x.dtype)
    y = y.astype(x.dtype, copy=False)
    check_probabilities(x, y)
    g = grad_output_for(grad_output, x.shape, reduction, x.dtype) if return_grad else None
    dt = x.dtype
    with np.errstate(**_QUIET):
        log_x = np.maximum(np.log(x), dt.type(-100))
        log_1mx = np.maximum(np.log1p(-x), dt.type(-100))
        loss = (y - 1) * log_1mx - y * log_x
        if w is not None:
            loss = loss * w
        loss = loss.astype(dt, copy=False)
        loss = np.asarray(_reduction.reduce(loss, reduction, dt.type(x.size)))
        loss = as_result(loss, rdt)
        if not return_grad:
            return loss
        s = _reduction.row_scale(reduction, g, dt.type(x.size))
        grad = (x - y) / np.maximum((1 - x) * x, dt.type(_EPSILON)) * s
        if w is not None:
            grad = grad * w
    return loss, as_result(np.asarray(grad), rdt)


@overload
def binary_cross_entropy_with_logits(
    input: Any, target: Any, weight: Any = ..., reduction: str = ..., pos_weight: Any = ..., *,
    return_grad: Literal[False] = ..., grad_output: Any = ...,
) -> Array: ...
@overload
def binary_cross_entropy_with_logits(
    input: Any, target: Any, weight: Any = ..., reduction: str = ..., pos_weight: Any = ..., *,
    return_grad: Literal[True], grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def binary_cross_entropy_with_logits(
    input: Any,
    target: Any,
    weight: Any = None,
    reduction: str = "mean",
    pos_weight: Any = None,
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Binary cross-entropy on logits: sigmoid and BCE fused, stable for every finite logit.

    .. math::
        \ell = w \left[ (1 - y)\, x + (1 + (p - 1) y)\, \mathrm{softplus}(-x) \right],
        \qquad \frac{\partial \ell}{\partial x}
            = w \left[ (1 - y) - (1 + (p - 1) y)\, \sigma(-x) \right]

    which is :math:`-w [p\, y \log\sigma(x) + (1 - y) \log(1 - \sigma(x))]` with
    :math:`\log(1-\sigma(x)) = \log\sigma(-x)`, the latter stable; :math:`p` = ``pos_weight``.

    Args:
        input: logits, any shape ``(..., K)``.
        target: targets in [0, 1] (not checked, as in PyTorch), the input's shape.
        weight: rescaling weight, broadcastable to the input's shape.
        reduction: ``'none'`` (input's shape), ``'mean'`` or ``'sum'`` (0-d arrays).
        pos_weight: weight of positive examples, broadcast along the last dimension: shape
            ``(K,)`` (or anything broadcastable to the input's shape).
        return_grad: also return dL/d input.
        grad_output: upstream gradient (scalar, or the input's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)``, in the input's float dtype (float16 and
        ``ml_dtypes.bfloat16`` are computed in float32 and rounded to nearest even once).

    Edge cases: logits of ±1e4 give exact finite losses (0 or 1e4); an empty input gives nan
    for ``mean`` and 0 for ``sum``.

    Example:
        >>> import xent
        >>> print(xent.binary_cross_entropy_with_logits([2.0, -1.0, 0.5], [1.0, 0.0, 1.0]).round(4))
        0.3048
        >>> print(xent.binary_cross_entropy_with_logits([1e4, -1e4], [0.0, 0.0], reduction="none"))
        [10000.     0.]

    Reference: ``torch.nn.functional.binary_cross_entropy_with_logits``.
    """
    x, rdt = as_storage(input, "input")  # a 16-bit input stays 16-bit: read by the backend
    dt = compute_dtype(x.dtype, "input")[0]
    y, w, pw, reduction = bce_operands(x, target, weight, pos_weight, reduction, dt)
    y = as_operand(y, dt, "target")
    g = grad_output_for(grad_output, x.shape, reduction, dt) if return_grad else None
    K = x.shape[-1] if x.ndim else 1
    M = x.size // K if K else 0
    shape2 = (M, K)

    def flat(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.reshape(shape2)

    with np.errstate(**_QUIET):
        if return_grad:
            if reduction == "none":
                scale = flat(g)
            else:  # one scale for every element: a scalar (the contract: broadcastable)
                scale = np.asarray(_reduction.row_scale(reduction, g, dt.type(x.size)), dt)
            grad = _buffers.empty(shape2, x.dtype)
        else:
            scale = grad = None
        backend = _dispatch.backend_for("bce_logits", M, K, x.dtype)
        loss = backend.bce_logits(
            np.ascontiguousarray(x).reshape(shape2), y.reshape(shape2), flat(w), flat(pw),
            scale, grad,
        )
        loss = np.asarray(_reduction.reduce(loss.reshape(x.shape), reduction, dt.type(x.size)))
    loss = as_result(loss, rdt)
    if not return_grad:
        return loss
    return loss, as_result(grad.reshape(x.shape), rdt)
