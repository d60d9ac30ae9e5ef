"""The reduction of the cross-entropy family: denominators, per-row gradient scales, reduce.

One definition, called by the NumPy core (``xent.cross_entropy``, ``xent.nll_loss``), the torch
bridge, chunked linear cross-entropy and vocabulary-parallel cross-entropy. The functions take
NumPy arrays or torch tensors alike (only ``sum``, ``*``, ``/`` and comparisons are used).

For a batch of positions ``n`` (rows, or the positions ``(N, d1, ..., dK)``) with unreduced
losses :math:`\\ell_n`::

    'none'  ->  ℓ_n
    'sum'   ->  Σ_n ℓ_n
    'mean'  ->  Σ_n ℓ_n / D

with the denominator ``D`` (PyTorch's):

- class-index targets: :math:`D = \\sum_{n \\text{ not ignored}} w_{t_n}` (the count of
  non-ignored positions when there are no class weights);
- class-probability targets: :math:`D = N d_1 \\cdots d_K` (0 when there are no classes, as
  PyTorch divides by ``numel / C``);
- the z-loss term ``s·lse²`` of the options: the count of non-ignored positions.

``D = 0`` (everything ignored, an empty batch, zero total weight) gives ``nan`` for ``'mean'``,
as PyTorch gives ``0/0``; the gradient is 0 at ignored positions and nan at counted positions
of zero weight, as PyTorch's.

Example:
    >>> import numpy as np
    >>> from xent import _reduction
    >>> rows = np.array([1.0, 2.0, 0.0])
    >>> float(_reduction.reduce(rows, "mean", 2.0)), float(_reduction.reduce(rows, "sum", 2.0))
    (1.5, 3.0)
    >>> float(_reduction.reduce(rows, "mean", 0.0))
    nan
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NAN = float("nan")


def index_denominators(
    target: np.ndarray, valid: np.ndarray, weight: np.ndarray | None, dtype: np.dtype,
    count: int | None = None,
) -> tuple[Any, Any]:
    """``(D_ce, D_z)`` for class-index targets ``target`` (M,) int64 with mask ``valid`` (M,).

    ``D_ce = Σ_{valid} w[t]`` (``D_z`` when ``weight`` is None), ``D_z`` = count of valid
    positions (``count`` when the caller knows it), both scalars of ``dtype``.
    """
    count = dtype.type(np.count_nonzero(valid) if count is None else count)
    if weight is None:
        return count, count
    return weight[target[valid]].sum(dtype=dtype), count


def prob_denominator(positions: int, num_classes: int, dtype: np.dtype) -> Any:
    """``D`` for class-probability targets: the number of positions (0 without classes)."""
    return dtype.type(positions if num_classes else 0)


def mean_scale(g: Any, denom: Any) -> Any:
    """``g / D``: with ``D = 0`` (nothing counted) inf, so that a counted position of zero
    weight gets 0·inf = nan as in PyTorch, while ignored positions get 0 from the kernels."""
    if denom != 0:
        return g / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        return g / denom


def row_scale(reduction: str, g: Any, denom: Any) -> Any:
    """d(reduced loss)/d(ℓ_n) times the upstream gradient ``g``: ``g`` itself for ``'none'``
    (one value per position) and ``'sum'``, ``g / D`` for ``'mean'`` (scalars)."""
    return mean_scale(g, denom) if reduction == "mean" else g


def row_scales(reduction: str, g: Any, denom: Any, denom_z: Any = None,
               positions: int | None = None) -> tuple[Any, Any]:
    """The gradient scales of a call's positions: ``(s, s_z)``, `row_scale` of the upstream
    gradient ``g`` (the loss's shape for ``'none'``, flattened here; a scalar otherwise) with
    the cross-entropy's denominator and with the z-loss's (``s_z`` None when ``denom_z`` is).
    ``positions``: both broadcast to ``(positions,)`` (read-only views), for callers that slice
    them by rows; otherwise a scalar for ``'mean'``/``'sum'``, as the kernels take it."""
    if reduction == "none":
        g = g.reshape(-1)
    s = row_scale(reduction, g, denom)
    s_z = None if denom_z is None else row_scale(reduction, g, denom_z)
    if positions is None:
        return s, s_z
    return _broadcast(s, positions), None if s_z is None else _broadcast(s_z, positions)


def _broadcast(a: Any, n: int) -> Any:
    """``a`` (a scalar or ``(n,)``) as an ``(n,)`` view: a tensor's ``expand``, NumPy's
    ``broadcast_to`` otherwise."""
    return a.expand(n) if hasattr(a, "expand") else np.broadcast_to(a, (n,))


def reduce(rows: Any, reduction: str, denom: Any) -> Any:
    """The reduced loss of the unreduced ``rows`` (see the module docstring)."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    # 0/0 is nan, as in torch, even where label smoothing left a positive sum (torch: nan).
    return total / denom if denom != 0 else total * _NAN


def z_loss_rows(lse: Any, scale: float, valid: Any = None) -> Any:
    """The z-loss ``scale·lse²`` of each position, exactly 0 where ``valid`` is False (an
    ignored position contributes nothing, even with a non-finite lse). A tensor's is a new
    tensor (``masked_fill``: differentiable, traceable); an array's is masked in place."""
    zl = scale * lse * lse
    if valid is None:
        return zl
    if hasattr(zl, "masked_fill"):
        return zl.masked_fill(~valid, 0)
    zl[~valid] = 0
    return zl


def total(reduction: str, ce: Any, denom: Any, zl: Any = None, denom_z: Any = None) -> Any:
    """The loss of a call: the reduced cross-entropy rows ``ce`` plus, with the z-loss, its rows
    ``zl`` reduced with their own denominator (``'none'``: the sum of the two per position)."""
    if zl is None:
        return reduce(ce, reduction, denom)
    if reduction == "none":
        return ce + zl
    return reduce(ce, reduction, denom) + reduce(zl, reduction, denom_z)
