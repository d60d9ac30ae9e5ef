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

from . import _buffers, _dispatch, _reduction
from ._backend_numpy import _QUIET
from ._problem import Problem, check_options, cross_entropy_problem
from ._validation import as_result, as_storage, grad_output_for

Array = np.ndarray


def _rows(x: np.ndarray, class_axis: int) -> np.ndarray:
    """(M, C) C-contiguous view (or copy) with the class axis last."""
    if class_axis == x.ndim - 1:  # (N, C): nothing to move (np.moveaxis costs ~5 µs)
        if x.ndim == 2 and x.flags.c_contiguous:  # (the usual call: x itself, no NumPy call)
            return x
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
    lse_square_scale: float = ..., softcap: float | None = ..., return_lse: Literal[False] = ...,
    return_grad: Literal[False] = ..., grad_output: Any = ..., inplace: bool = ...,
    temperature: float = ..., return_entropy: Literal[False] = ...,
    return_argmax: Literal[False] = ..., grad_entropy: Any = ...,
) -> Array: ...
@overload
def cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., label_smoothing: float = ..., *,
    lse_square_scale: float = ..., softcap: float | None = ..., return_lse: Literal[False] = ...,
    return_grad: Literal[True], grad_output: Any = ..., inplace: bool = ...,
    temperature: float = ..., return_entropy: Literal[False] = ...,
    return_argmax: Literal[False] = ..., grad_entropy: Any = ...,
) -> tuple[Array, Array]: ...
@overload
def cross_entropy(
    input: Any, target: Any, weight: Any = ..., ignore_index: int = ...,
    reduction: str = ..., label_smoothing: float = ..., *,
    lse_square_scale: float = ..., softcap: float | None = ..., return_lse: bool = ...,
    return_grad: bool = ..., grad_output: Any = ..., inplace: bool = ...,
    temperature: float = ..., return_entropy: bool = ..., return_argmax: bool = ...,
    grad_entropy: Any = ...,
) -> Array | tuple[Array, ...]: ...
def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    return_grad: bool = False,
    grad_output: Any = None,
    inplace: bool = False,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_argmax: bool = False,
    grad_entropy: Any = None,
) -> Array | tuple[Array, ...]:
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

    Here :math:`x` stands for the logits after soft-capping and the temperature
    :math:`T`: :math:`z = c \tanh(x / c) / T`. With ``return_entropy`` each position's
    entropy

    .. math::
        H_n = \mathrm{lse}(z_n) - \sum_c p_{n,c} z_{n,c}, \qquad p_n = \mathrm{softmax}(z_n),
        \qquad \frac{\partial H_n}{\partial z_n} = -p_n \odot (z_n - \textstyle\sum_c p_{n,c}
        z_{n,c})

    is returned too, at every position (``ignore_index`` masks the loss, not the distribution),
    and its gradient, scaled by ``grad_entropy``, is added to the loss's.

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
        lse_square_scale: :math:`\zeta`, the z-loss coefficient (PaLM): adds
            :math:`\zeta\,\mathrm{lse}(z_n)^2` per position not ignored; ``mean`` divides its
            sum by the number of positions not ignored (as Liger-Kernel does).
        softcap: logit soft-capping :math:`z = c \tanh(x / c)` before everything else (Gemma
            2 uses 30); a positive finite number, or None.
        return_lse: also return :math:`\mathrm{lse}(z_n)` of every position (after capping),
            the shape of the unreduced loss.
        return_grad: also return dL/d input, computed analytically in the same pass.
        grad_output: upstream gradient: a scalar for ``mean``/``sum``, the unreduced loss's shape
            for ``none`` (default ones).
        inplace: write the gradient into ``input``'s buffer and return it (destroys the logits;
            needs ``return_grad=True`` and a writable float (float16, bfloat16, float32 or
            float64) C-contiguous ndarray with the class axis last, i.e. shape ``(C,)`` or
            ``(N, C)``).
        temperature: :math:`T`, positive and finite: the logits are divided by it after the
            cap, before everything else (lse, loss, z-loss, entropy, argmax).
        return_entropy: also return :math:`H_n` of every position (the unreduced loss's shape).
        return_argmax: also return each position's argmax class (int64, the first on ties as
            ``torch.argmax``; not differentiable).
        grad_entropy: the entropy's upstream gradient (the unreduced loss's shape; default 0),
            with ``return_entropy`` and ``return_grad``.

    Returns:
        ``loss``, then ``lse`` if ``return_lse``, ``entropy`` if ``return_entropy``, ``argmax``
        if ``return_argmax``, then ``grad_input`` if ``return_grad``, as a tuple when there is
        more than the loss; in the input's float dtype (float16 and
        ``ml_dtypes.bfloat16`` are read in 16 bits, computed in float32 and rounded to nearest
        even once; integer logits are promoted to float64).

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
        >>> nll, ent, top = xent.cross_entropy(logits, [2, 0, 1], reduction="none",
        ...                                    temperature=2.0, return_entropy=True,
        ...                                    return_argmax=True)
        >>> print(nll.round(4), ent.round(4), top)
        [0.6652 0.6898 0.3847] [1.0175 1.0262 0.8477] [2 0 1]

    Reference: ``torch.nn.functional.cross_entropy``; Szegedy et al. 2016 (label smoothing).
    """
    x, rdt = as_storage(input, "input")
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                            return_entropy, return_argmax)
    problem = cross_entropy_problem(x.shape, x.dtype, target, weight, ignore_index, reduction,
                                    options)
    if grad_entropy is not None and not return_entropy:
        raise ValueError("grad_entropy is the entropy's upstream gradient: it needs "
                         "return_entropy=True")
    if inplace:
        _check_inplace(input, x, return_grad)
    out = solve(problem, x, rdt, return_grad=return_grad, grad_output=grad_output,
                inplace=inplace, grad_entropy=grad_entropy)
    return (*out[:-1], input) if inplace else out


def _check_inplace(input: Any, x: np.ndarray, return_grad: bool) -> None:
    if not return_grad:
        raise ValueError("inplace=True writes the gradient into input: it needs return_grad=True")
    if not (
        isinstance(input, np.ndarray) and input.dtype == x.dtype and input.ndim <= 2
        and input.flags.c_contiguous and input.flags.writeable
    ):
        raise ValueError(
            "inplace=True needs input to be a writable C-contiguous float ndarray "
            f"ndarray of shape (C,) or (N, C); got {type(input).__name__} "
            f"{getattr(input, 'dtype', '')} {np.shape(input)}"
        )


def backend_rows(
    problem: Problem, x: np.ndarray, target: np.ndarray, row_scale: Any = None,
    z_row_scale: Any = None, grad_out: np.ndarray | None = None, entropy_scale: Any = None,
    saved: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """One backend call on rows ``x`` (m, C) of a validated problem, classes last: the
    cross-entropy of each row and its log-sum-exp (after soft-capping), the gradient into
    ``grad_out`` (which may be ``x``) with the rows' scales (see ``docs/ARCHITECTURE.md``).

    ``target``: the rows' int64 class indices (m,), or their probabilities (m, C). ``x`` may
    be a 16-bit float (float16, bfloat16) array; ``grad_out`` then has its dtype and gets the
    gradient rounded to it, and the returned rows are float32.

    With the statistics options (``problem.options.stats``: a temperature, entropy or argmax)
    it returns ``(ce, lse, entropy, argmax)`` of every row, ignored or not, and
    ``entropy_scale`` (None, a scalar or (m,)) is the entropy's upstream gradient; ``saved``
    the rows' (lse, entropy) from an earlier pass over the same logits (a backward pass: the
    kernels then skip each row's max and sum passes), or None.
    """
    o = problem.options
    m, C = x.shape
    op = "ce_prob" if problem.prob else "ce_index"
    backend = _dispatch.backend_for(op, m, C, x.dtype)
    kw = (dict(temperature=o.temperature, stats=True, entropy_scale=entropy_scale, saved=saved)
          if o.stats else {})
    if problem.prob:
        return backend.ce_prob(x, target, problem.weight, o.label_smoothing, o.lse_square_scale,
                               o.softcap, row_scale, z_row_scale, grad_out, **kw)
    # ignore_index None: no target equals it (validated), so the backend need not look.
    ignore = None if problem.all_valid else problem.ignore_index
    return backend.ce_index(x, target, problem.weight, ignore, o.label_smoothing,
                            o.lse_square_scale, o.softcap, row_scale, z_row_scale, grad_out,
                            ignored_lse=o.return_lse or o.stats, **kw)


def rows_loss(problem: Problem, ce: Any, lse: Any, valid: Any = None) -> Any:
    """The loss from the cross-entropy and lse of every position (``_reduction.total``, the
    z-loss included)."""
    zscale = problem.options.lse_square_scale
    zl = _reduction.z_loss_rows(lse, zscale, valid) if zscale else None
    return _reduction.total(problem.reduction, ce, problem.denom, zl, problem.denom_z)


def solve(
    problem: Problem, x: np.ndarray, rdt: np.dtype, *, return_grad: bool = False,
    grad_output: Any = None, inplace: bool = False, grad_entropy: Any = None,
    saved: tuple[np.ndarray, np.ndarray] | None = None,
) -> Array | tuple[Array, ...]:
    """Compute a validated cross-entropy ``problem`` on the logits ``x`` (its shape, in the
    compute dtype or a 16-bit float, read as it is): the loss, then the lse, entropy, argmax
    and the gradient as asked, in ``rdt`` (``grad_entropy``: the entropy's upstream gradient,
    the unreduced loss's shape, or None for 0; ``saved``: the positions' (lse, entropy), flat
    (M,), from the forward pass, with the statistics options: see `backend_rows`)."""
    p, o = problem, problem.options
    C, M, dt = p.num_classes, p.positions, p.dtype
    g = grad_output_for(grad_output, p.loss_shape, p.reduction, dt) if return_grad else None
    ge = None
    if return_grad and grad_entropy is not None:
        ge = grad_output_for(grad_entropy, p.loss_shape, "none", dt).reshape(M)
    kdim = (None if x.ndim <= 2 or o.extended
            else _kdim_kernel("ce_prob" if p.prob else "ce_index", x))
    if kdim is not None:  # (A, C, B) view, no move of the class axis
        rows = np.ascontiguousarray(x).reshape(x.shape[0], C, math.prod(x.shape[2:]))
    else:
        rows = x.reshape(1, C) if x.ndim == 1 else _rows(x, p.class_axis)
    with np.errstate(**_QUIET):
        scale = scale_z = grad = ent = top = None
        if return_grad:
            # One scale per row for 'none', one for every row (a scalar) otherwise.
            scale, scale_z = _reduction.row_scales(
                p.reduction, g, p.denom, p.denom_z if o.lse_square_scale else None)
            grad = rows if inplace else _buffers.empty(rows.shape, rows.dtype)
        if kdim is not None and p.prob:
            ce = kdim(rows, p.y.reshape(rows.shape), p.weight, o.label_smoothing, scale, grad)
            lse = None
        elif kdim is not None:
            ce = kdim(rows, p.target, p.weight, p.ignore_index, o.label_smoothing, scale, grad)
            lse = None
        else:
            if p.prob:
                tgt = p.y.reshape(1, C) if x.ndim == 1 else _rows(p.y, p.class_axis)
            else:
                tgt = p.target
            if o.stats:
                ce, lse, ent, top = backend_rows(p, rows, tgt, scale, scale_z, grad, ge, saved)
            else:
                ce, lse = backend_rows(p, rows, tgt, scale, scale_z, grad)
        ce = ce.reshape(M)
        loss = rows_loss(p, ce, lse, None if p.all_valid else p.valid)
        loss = as_result(np.asarray(loss).reshape(p.loss_shape) if p.reduction == "none"
                         else np.asarray(loss, dtype=dt), rdt)
    out: list[Array] = [loss]
    if o.return_lse:
        out.append(as_result(lse.reshape(p.loss_shape), rdt))
    if o.return_entropy:
        out.append(as_result(ent.reshape(p.loss_shape), rdt))
    if o.return_argmax:
        out.append(top.reshape(p.loss_shape))
    if return_grad:
        if inplace:
            grad = grad.reshape(x.shape)
        elif x.ndim <= 2 or kdim is not None:
            grad = as_result(grad.reshape(x.shape), rdt)
        else:
            grad = as_result(_unrows(grad, x.shape, p.class_axis), rdt)
        out.append(grad)
    return out[0] if len(out) == 1 else tuple(out)


def _kdim_kernel(op: str, x: np.ndarray) -> Callable[..., np.ndarray] | None:
    """The kernel ``op + '_kdim'`` for ``x`` (N, C, d1, ..., dK) where `_dispatch.kdim_kernel`
    picks one."""
    if x.ndim <= 2:
        return None
    return _dispatch.kdim_kernel(op, x.shape[0], x.shape[1], math.prod(x.shape[2:]), x.dtype)


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
    x, rdt = as_storage(input, "input")
    p = cross_entropy_problem(x.shape, x.dtype, target, weight, ignore_index, reduction,
                              fn="nll_loss", probabilities=False)
    return nll_solve(p, x, rdt, return_grad=return_grad, grad_output=grad_output)


def nll_solve(
    p: Problem, x: np.ndarray, rdt: np.dtype, *, return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    """Compute a validated NLL problem ``p`` on the log-probabilities ``x`` (its shape, in the
    compute dtype or a 16-bit float: the gathered values are computed in float32):
    loss_n = -w[t_n]·x[n, t_n], 0 where ignored; the gradient is -w[t_n]·s_n at the target and
    0 elsewhere."""
    C, M, dt = p.num_classes, p.positions, p.dtype
    g = grad_output_for(grad_output, p.loss_shape, p.reduction, dt) if return_grad else None
    rows = x.reshape(1, C) if x.ndim == 1 else _rows(x, p.class_axis)
    keep = p.valid
    ts = np.where(keep, p.target, 0)
    ar = np.arange(M)
    with np.errstate(**_QUIET):
        w_t = np.where(keep, 1 if p.weight is None else (p.weight[ts] if C else 0), 0).astype(dt)
        x_t = rows[ar, ts].astype(dt, copy=False) if C else np.zeros(M, dt)
        loss_rows = np.where(keep, -w_t * x_t, dt.type(0)).astype(dt, copy=False)
        loss = _reduction.reduce(loss_rows, p.reduction, p.denom)
        loss = as_result(np.asarray(loss, dtype=dt).reshape(p.loss_shape)
                         if p.reduction == "none" else np.asarray(loss, dtype=dt), rdt)
        if not return_grad:
            return loss
        s, _ = _reduction.row_scales(p.reduction, g, p.denom)
        grad = _buffers.zeros(rows.shape, rows.dtype)
        if C:
            grad[ar, ts] = np.where(keep, -w_t * s, dt.type(0))
    grad = grad.reshape(x.shape) if x.ndim <= 2 else _unrows(grad, x.shape, p.class_axis)
    return loss, as_result(grad, rdt)
