"""cross_entropy and nll_loss with PyTorch's semantics, and their gradients in the same pass.

Layering: validate everything -> move the class axis last and flatten to rows (M, C) -> compute
the reduction's denominator and each row's gradient scale -> one backend call -> reduce.
Nothing here computes ``log(softmax(x))`` and no one-hot matrix is ever built.

K-dimensional input ``(N, C, d1, ..., dK)``: when the dispatcher picks the Numba kernels,
cross_entropy skips the move (a copy of the logits, and another of the gradient) and views the
input as ``(N, C, d1·...·dK)`` for the kernels that work on that layout (``*_kdim``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np

from . import _buffers, _dispatch
from ._backend_numpy import _QUIET
from ._validation import (
    as_float,
    as_float_like,
    as_result,
    check_ignore_index,
    check_label_smoothing,
    check_reduction,
    grad_output_for,
)

Array = np.ndarray


def _class_axis(x: np.ndarray, fn: str) -> int:
    if x.ndim == 0:
        raise ValueError(
            f"{fn}: input must have shape (C,), (N, C) or (N, C, d1, ..., dK), got a 0-d array"
        )
    return 0 if x.ndim == 1 else 1


def _weight(weight: Any, C: int, dtype: np.dtype) -> np.ndarray | None:
    if weight is None:
        return None
    w = as_float_like(weight, dtype, "weight")
    if w.shape != (C,):
        raise ValueError(f"weight must have shape ({C},), one value per class, got {w.shape}")
    return np.ascontiguousarray(w)


def _index_target(
    target: np.ndarray, x: np.ndarray, class_axis: int, C: int, ignore_index: int
) -> np.ndarray:
    """Validate class-index targets and return them as a flat int64 array."""
    if target.dtype.kind not in "iu":
        raise TypeError(
            "target must hold integer class indices of shape "
            f"{x.shape[:class_axis] + x.shape[class_axis + 1:]} or float class probabilities "
            f"of the input's shape {x.shape}; got dtype {target.dtype} and shape {target.shape}"
        )
    expected = x.shape[:class_axis] + x.shape[class_axis + 1 :]
    if target.shape != expected:
        if x.ndim >= 2 and target.ndim >= 1 and target.shape[0] != x.shape[0]:
            raise ValueError(
                f"Expected input batch_size ({x.shape[0]}) to match target batch_size "
                f"({target.shape[0]})"
            )
        raise ValueError(
            f"target of class indices must have shape {expected} for input of shape "
            f"{x.shape}, got {target.shape}"
        )
    t = target.reshape(-1)
    if t.size:
        if t.dtype.kind == "u" and t.max() > np.iinfo(np.int64).max:
            bad = int(t.max())
            raise IndexError(
                f"target {bad} is out of bounds for {C} classes "
                f"(valid: 0..{C - 1}, or ignore_index={ignore_index})"
            )
        t = t.astype(np.int64, copy=False)
        invalid = ((t < 0) | (t >= C)) & (t != ignore_index)
        if invalid.any():
            pos = int(np.flatnonzero(invalid)[0])
            where = np.unravel_index(pos, expected) if expected else ()
            raise IndexError(
                f"target {int(t[pos])} at position {tuple(int(i) for i in where)} is out of "
                f"bounds for {C} classes (valid: 0..{C - 1}, or ignore_index={ignore_index})"
            )
    return t.astype(np.int64, copy=False)


def _rows(x: np.ndarray, class_axis: int) -> np.ndarray:
    """(M, C) C-contiguous view (or copy) with the class axis last."""
    if class_axis == x.ndim - 1:  # (N, C): nothing to move (np.moveaxis costs ~5 µs)
        return np.ascontiguousarray(x).reshape(math.prod(x.shape[:-1]), x.shape[-1])
    moved = np.moveaxis(x, class_axis, -1)
    M = int(np.prod(moved.shape[:-1]))  # not reshape(-1, C): -1 is ambiguous when C == 0
    return np.ascontiguousarray(moved).reshape(M, moved.shape[-1])


def _unrows(g: np.ndarray, shape: tuple[int, ...], class_axis: int) -> np.ndarray:
    moved_shape = shape[:class_axis] + shape[class_axis + 1 :] + (shape[class_axis],)
    return np.ascontiguousarray(np.moveaxis(g.reshape(moved_shape), -1, class_axis))


@overload
def cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., label_smoothing: float = ..., *,
    return_grad: Literal[False] = ..., grad_output: Any = ..., inplace: bool = ...,
) -> Array: ...
@overload
def cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., label_smoothing: float = ..., *,
    return_grad: Literal[True], grad_output: Any = ..., inplace: bool = ...,
) -> tuple[Array, Array]: ...
def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    return_grad: bool = False,
    grad_output: Any = None,
    inplace: bool = False,
) -> Array | tuple[Array, Array]:
    r"""Cross-entropy between logits and class indices or class probabilities.

    For class-index targets :math:`t_n` (with :math:`\varepsilon` = ``label_smoothing``,
    :math:`w` = ``weight``, 1 when omitted):

    .. math::
        \ell_n = (1-\varepsilon)\, w_{t_n} \left(\mathrm{lse}(x_n) - x_{n,t_n}\right)
               + \frac{\varepsilon}{C} \sum_c w_c \left(\mathrm{lse}(x_n) - x_{n,c}\right)

    and :math:`\ell_n = 0` where :math:`t_n` = ``ignore_index``. For class-probability targets
    :math:`y_n`, with :math:`y'_n = (1-\varepsilon) y_n + \varepsilon / C`:

    .. math:: \ell_n = -\sum_c w_c\, y'_{n,c} \log \mathrm{softmax}(x_n)_c

    ``mean`` divides the sum by :math:`\sum_n w_{t_n}` over the positions not ignored (index
    targets) or by the number of positions :math:`N d_1 \cdots d_K` (probability targets).

    Args:
        input: logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; the class axis is
            1 (0 for ``(C,)``).
        target: integer class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)`` with
            values in ``[0, C)`` or ``ignore_index``; or float class probabilities of the
            input's shape (chosen, as PyTorch does, when the shapes are equal).
        weight: ``(C,)`` rescaling weight per class.
        ignore_index: a target value that contributes neither loss nor gradient (index targets
            only; any integer).
        reduction: ``'none'`` (shape of ``target`` for indices, input's shape without the class
            axis for probabilities), ``'mean'`` or ``'sum'`` (0-d arrays).
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        return_grad: also return dL/d input, computed analytically in the same pass.
        grad_output: upstream gradient: a scalar for ``mean``/``sum``, the unreduced loss's shape
            for ``none`` (default ones).
        inplace: write the gradient into ``input``'s buffer and return it (destroys the logits;
            needs ``return_grad=True`` and a writable float32/float64 C-contiguous ndarray with
            the class axis last, i.e. shape ``(C,)`` or ``(N, C)``).

    Returns:
        ``loss``, or ``(loss, grad_input)`` with ``return_grad=True``; the input's float dtype
        (float16 is computed in float32; integer logits are promoted to float64).

    Edge cases: every target ignored, or an empty batch: ``mean`` gives nan, ``sum`` gives 0, the
    gradient is zeros. Rows with ``+inf`` or all ``-inf`` logits give nan, as in PyTorch.

    Example:
        >>> import xent
        >>> logits = [[0.1, 1.0, 2.1], [2.0, 1.0, 0.1], [0.1, 3.0, 0.1]]  # the fruit example
        >>> loss, grad = xent.cross_entropy(logits, [2, 0, 1], return_grad=True)
        >>> print(loss.round(4))
        0.3018
        >>> print(grad.round(4))
        [[ 0.0307  0.0756 -0.1063]
         [-0.1137  0.0808  0.0329]
         [ 0.0165 -0.033   0.0165]]

    Reference: ``torch.nn.functional.cross_entropy``; Szegedy et al. 2016 (label smoothing).
    """
    x, rdt = as_float(input, "input")
    reduction = check_reduction(reduction)
    eps = check_label_smoothing(label_smoothing)
    ignore_index = check_ignore_index(ignore_index)
    class_axis = _class_axis(x, "cross_entropy")
    C = x.shape[class_axis]
    dt = x.dtype
    w = _weight(weight, C, dt)
    tgt = np.asarray(target)
    prob = tgt.shape == x.shape
    if prob:
        if tgt.dtype.kind != "f":
            raise TypeError(
                f"target has the input's shape {x.shape}, so it must hold float class "
                f"probabilities, got dtype {tgt.dtype} (class indices have shape "
                f"{x.shape[:class_axis] + x.shape[class_axis + 1:]})"
            )
        if ignore_index != -100:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability targets "
                "(leave it at the default -100)"
            )
        y = as_float_like(tgt, dt, "target")
        t = None
    else:
        t = _index_target(tgt, x, class_axis, C, ignore_index)
    loss_shape = x.shape[:class_axis] + x.shape[class_axis + 1 :]
    g = grad_output_for(grad_output, loss_shape, reduction, dt) if return_grad else None
    if inplace:
        if not return_grad:
            raise ValueError(
                "inplace=True writes the gradient into input: it needs return_grad=True"
            )
        if not (
            isinstance(input, np.ndarray) and input.dtype == dt and input.ndim <= 2
            and input.flags.c_contiguous and input.flags.writeable
        ):
            raise ValueError(
                "inplace=True needs input to be a writable C-contiguous float32 or float64 "
                f"ndarray of shape (C,) or (N, C); got {type(input).__name__} "
                f"{getattr(input, 'dtype', '')} {np.shape(input)}"
            )

    kdim = _kdim_kernel("ce_prob" if prob else "ce_index", x, dt)
    if kdim is not None:  # (A, C, B) view, no move of the class axis
        A, B = x.shape[0], math.prod(x.shape[2:])
        rows = np.ascontiguousarray(x).reshape(A, C, B)
        M = A * B
    else:
        rows = x.reshape(1, C) if x.ndim == 1 else _rows(x, class_axis)
        M = rows.shape[0]
        if prob:
            y = y.reshape(1, C) if x.ndim == 1 else _rows(y, class_axis)
    with np.errstate(**_QUIET):
        if prob:
            denom = dt.type(M if C else 0)  # torch divides by numel / C: 0/0 when C == 0
        elif w is None:
            denom = dt.type(np.count_nonzero(t != ignore_index))
        else:
            keep = t != ignore_index
            denom = w[t[keep]].sum(dtype=dt)
        if return_grad:
            if reduction == "none":
                row_scale = g.reshape(-1)
            else:
                scale = g / denom if reduction == "mean" else g
                row_scale = np.broadcast_to(np.asarray(scale, dt), (M,))
            grad = rows if inplace else _buffers.empty_like(rows)
        else:
            row_scale, grad = None, None
        if kdim is not None and prob:  # the kernel makes y contiguous only if it is not
            loss_rows = kdim(rows, y.reshape(rows.shape), w, eps, row_scale, grad).reshape(M)
        elif kdim is not None:
            loss_rows = kdim(rows, t, w, ignore_index, eps, row_scale, grad).reshape(M)
        else:
            backend = _dispatch.backend_for("ce_prob" if prob else "ce_index", M, C, dt)
            if prob:
                loss_rows = backend.ce_prob(rows, y, w, eps, row_scale, grad)
            else:
                loss_rows = backend.ce_index(rows, t, w, ignore_index, eps, row_scale, grad)
        loss = _reduce(loss_rows, reduction, denom, loss_shape)
    loss = as_result(loss, rdt)
    if not return_grad:
        return loss
    if inplace:
        return loss, input
    if x.ndim <= 2 or kdim is not None:
        grad = grad.reshape(x.shape)
    else:
        grad = _unrows(grad, x.shape, class_axis)
    return loss, as_result(grad, rdt)


def _kdim_kernel(op: str, x: np.ndarray, dt: np.dtype) -> Callable[..., np.ndarray] | None:
    """The kernel ``op + '_kdim'`` for ``x`` (N, C, d1, ..., dK) if the dispatcher picks one.

    Only for K >= 1 dimensions after the class axis holding more than one position (with
    d1·...·dK == 1 the rows are already contiguous), and only where ``backend_for`` chooses the
    kernels for ``op`` at this size (N·C·d1·...·dK elements, as for the row kernels).
    """
    if x.ndim <= 2:
        return None
    B = math.prod(x.shape[2:])
    if B <= 1:
        return None
    name = op + "_kdim"
    backend = _dispatch.backend_for(name, x.shape[0] * B, x.shape[1], dt)
    return getattr(backend, name, None)


def _reduce(loss_rows: np.ndarray, reduction: str, denom: Any, shape: tuple[int, ...]) -> Array:
    if reduction == "none":
        return np.asarray(loss_rows).reshape(shape)  # a 0-d input's loss is a scalar: wrap it
    total = loss_rows.sum(dtype=loss_rows.dtype)
    if reduction == "sum":
        return np.asarray(total)
    if denom == 0:
        # Nothing counted (all ignored, zero total weight, empty): 0/0 is nan, as in torch, even
        # where label smoothing left a positive sum (torch: nan + inf).
        return np.asarray(np.nan, dtype=loss_rows.dtype)
    return np.asarray(total / denom, dtype=loss_rows.dtype)


@overload
def nll_loss(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., *, return_grad: Literal[False] = ..., grad_output: Any = ...,
) -> Array: ...
@overload
def nll_loss(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., *, return_grad: Literal[True], grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def nll_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Negative log-likelihood of class indices under log-probabilities.

    .. math::
        \ell_n = -w_{t_n}\, x_{n, t_n}, \qquad \ell_n = 0 \text{ where } t_n = \text{ignore\_index}

    ``mean`` divides the sum by :math:`\sum_n w_{t_n}` over the positions not ignored.

    Args:
        input: log-probabilities (e.g. from :func:`log_softmax`), shape ``(C,)``, ``(N, C)`` or
            ``(N, C, d1, ..., dK)``; the class axis is 1 (0 for ``(C,)``).
        target: integer class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``.
        weight: ``(C,)`` rescaling weight per class.
        ignore_index: a target value that contributes neither loss nor gradient.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        return_grad: also return dL/d input.
        grad_output: upstream gradient (scalar, or the unreduced loss's shape for ``none``).

    Returns:
        ``loss`` or ``(loss, grad_input)``, in the input's float dtype.

    Edge cases: every target ignored, or an empty batch: ``mean`` gives nan, ``sum`` gives 0,
    the gradient is zeros.

    Example:
        >>> import numpy as np, xent
        >>> logp = np.log([[0.4, 0.1, 0.3, 0.2], [0.9, 0.05, 0.03, 0.02]])
        >>> print(xent.nll_loss(logp, [0, 0], reduction="none").round(3))  # -log 0.4, -log 0.9
        [0.916 0.105]

    Reference: ``torch.nn.functional.nll_loss``.
    """
    x, rdt = as_float(input, "input")
    reduction = check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    class_axis = _class_axis(x, "nll_loss")
    C = x.shape[class_axis]
    dt = x.dtype
    w = _weight(weight, C, dt)
    tgt = np.asarray(target)
    if tgt.shape == x.shape and tgt.dtype.kind == "f":
        raise TypeError(
            "nll_loss takes integer class indices of shape "
            f"{x.shape[:class_axis] + x.shape[class_axis + 1:]}, got float targets of the "
            "input's shape (for class probabilities use cross_entropy)"
        )
    t = _index_target(tgt, x, class_axis, C, ignore_index)
    loss_shape = x.shape[:class_axis] + x.shape[class_axis + 1 :]
    g = grad_output_for(grad_output, loss_shape, reduction, dt) if return_grad else None
    rows = x.reshape(1, C) if x.ndim == 1 else _rows(x, class_axis)
    M = rows.shape[0]
    keep = t != ignore_index
    ts = np.where(keep, t, 0)
    ar = np.arange(M)
    with np.errstate(**_QUIET):
        w_t = np.where(keep, 1 if w is None else (w[ts] if C else 0), 0).astype(dt)
        x_t = rows[ar, ts] if C else np.zeros(M, dt)
        loss_rows = np.where(keep, -w_t * x_t, dt.type(0)).astype(dt, copy=False)
        denom = w_t.sum(dtype=dt)
        loss = as_result(_reduce(loss_rows, reduction, denom, loss_shape), rdt)
        if not return_grad:
            return loss
        if reduction == "none":
            s = g.reshape(-1)
        else:
            s = g / denom if reduction == "mean" else g
        grad = _buffers.zeros(rows.shape, rows.dtype)
        if C:
            grad[ar, ts] = np.where(keep, -w_t * s, dt.type(0))
    grad = grad.reshape(x.shape) if x.ndim <= 2 else _unrows(grad, x.shape, class_axis)
    return loss, as_result(grad, rdt)
