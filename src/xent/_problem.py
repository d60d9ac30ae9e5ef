"""The one validation and normalisation step of the cross-entropy family.

:func:`cross_entropy_problem` checks every argument of a cross-entropy or NLL call once, before
any computation, and returns the normalised :class:`Problem`: flat int64 targets and their
validity mask, or probability targets; contiguous class weights; the checked options; and the
reduction's denominators (``xent._reduction``). Every entry point calls it:
``xent.cross_entropy`` and ``xent.nll_loss`` on arrays, and ``xent.torch``'s cross-entropy,
linear cross-entropy and both vocabulary-parallel functions on NumPy views of their tensors
(the logits are described by their shape only, so the linear forms never build them). Nothing
downstream validates again or re-derives these values.

Errors name the argument, what was expected and what arrived: ``TypeError`` for a wrong kind,
``ValueError`` for a wrong shape or value, ``IndexError`` for a target out of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _reduction
from ._validation import (
    as_float_like,
    as_operand,
    check_bool,
    check_ignore_index,
    check_label_smoothing,
    check_real,
    check_reduction,
    compute_dtype,
    is_float,
)


@dataclass(frozen=True, slots=True)
class Options:
    """The checked scalar options: ``label_smoothing`` in [0, 1], ``lse_square_scale`` finite,
    ``softcap`` positive and finite or None, ``return_lse`` a bool; ``temperature`` positive
    and finite (the logits are ``z / temperature`` after the cap), ``return_entropy`` and
    ``return_argmax`` bools (issue 18)."""

    label_smoothing: float = 0.0
    lse_square_scale: float = 0.0
    softcap: float | None = None
    return_lse: bool = False
    temperature: float = 1.0
    return_entropy: bool = False
    return_argmax: bool = False

    @property
    def stats(self) -> bool:
        """Whether the call needs the statistics path of the backends: a temperature, or the
        entropy or argmax of each position's distribution."""
        return self.temperature != 1.0 or self.return_entropy or self.return_argmax

    @property
    def extended(self) -> bool:
        """Whether any option beyond PyTorch's own (z-loss, soft-capping, lse, temperature,
        entropy, argmax) is on."""
        return (bool(self.lse_square_scale) or self.softcap is not None or self.return_lse
                or self.stats)


def check_options(
    label_smoothing: Any = 0.0,
    lse_square_scale: Any = 0.0,
    softcap: Any = None,
    return_lse: Any = False,
    temperature: Any = 1.0,
    return_entropy: Any = False,
    return_argmax: Any = False,
) -> Options:
    """:class:`Options` from the user's values, or the error naming the bad one.

    >>> check_options(softcap=30)
    Options(label_smoothing=0.0, lse_square_scale=0.0, softcap=30.0, return_lse=False, \
temperature=1.0, return_entropy=False, return_argmax=False)
    >>> check_options(softcap=float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: softcap must be a positive finite number or None, got inf
    >>> check_options(temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a positive finite number, got 0
    """
    if (softcap is None and return_lse is False and type(label_smoothing) is float
            and type(lse_square_scale) is float and label_smoothing == lse_square_scale == 0.0
            and return_entropy is False and return_argmax is False
            and type(temperature) is float and temperature == 1.0):
        return _DEFAULT_OPTIONS  # the common call, without the checks' cost (µs per call)
    eps = check_label_smoothing(label_smoothing)
    zscale = check_real(lse_square_scale, "lse_square_scale")
    cap = None
    if softcap is not None:
        try:
            cap = check_real(softcap, "softcap", positive=True)
        except ValueError:
            raise ValueError(
                f"softcap must be a positive finite number or None, got {softcap!r}"
            ) from None
    return Options(eps, zscale, cap, check_bool(return_lse, "return_lse"),
                   check_real(temperature, "temperature", positive=True),
                   check_bool(return_entropy, "return_entropy"),
                   check_bool(return_argmax, "return_argmax"))


_DEFAULT_OPTIONS = Options()


@dataclass(slots=True)
class Problem:
    """A validated cross-entropy call (``M`` positions, ``C`` classes).

    ``target`` int64 ``(M,)`` with ignored positions kept as ``ignore_index`` and ``valid``
    ``(M,)`` their mask (index targets), or ``y`` probabilities of the logits' shape in the
    compute dtype or a 16-bit float (``prob``); ``weight`` contiguous ``(C,)`` or None;
    ``denom`` and ``denom_z`` the mean's denominators of the cross-entropy and of the z-loss
    (``xent._reduction``).
    """

    shape: tuple[int, ...]
    class_axis: int
    num_classes: int
    positions: int
    loss_shape: tuple[int, ...]
    dtype: np.dtype
    prob: bool
    target: np.ndarray | None
    valid: np.ndarray | None
    y: np.ndarray | None
    weight: np.ndarray | None
    ignore_index: int
    reduction: str
    options: Options
    denom: Any
    denom_z: Any
    all_valid: bool = True  # no position ignored


def class_axis(shape: tuple[int, ...], fn: str) -> int:
    """The class axis of logits of ``shape``: 0 for ``(C,)``, else 1."""
    if len(shape) == 0:
        raise ValueError(
            f"{fn}: input must have shape (C,), (N, C) or (N, C, d1, ..., dK), got a 0-d array"
        )
    return 0 if len(shape) == 1 else 1


def class_weight(weight: Any, C: int, dtype: np.dtype) -> np.ndarray | None:
    """``weight`` as a contiguous ``(C,)`` array of ``dtype``, or None."""
    if weight is None:
        return None
    w = as_float_like(weight, dtype, "weight")
    if w.shape != (C,):
        raise ValueError(f"weight must have shape ({C},), one value per class, got {w.shape}")
    return np.ascontiguousarray(w)


_INT64 = np.dtype(np.int64)


def index_target(
    target: np.ndarray, shape: tuple[int, ...], axis: int, C: int, ignore_index: int
) -> tuple[np.ndarray, bool]:
    """Validate class-index targets for logits of ``shape``; return them flat as int64, and
    whether every one is in ``[0, C)`` (none equal to an ``ignore_index`` outside it)."""
    expected = shape[:axis] + shape[axis + 1 :]
    if (target.dtype.kind not in "iu" and len(shape) >= 2 and target.ndim == len(shape)
            and target.shape[0] != shape[0]):  # (probabilities of another batch size)
        raise ValueError(f"Expected input batch_size ({shape[0]}) to match target batch_size "
                         f"({target.shape[0]})")
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"target must hold integer class indices of shape {expected} or float class "
            f"probabilities of the input's shape {shape}; got dtype {target.dtype} and shape "
            f"{target.shape}"
        )
    if target.shape != expected:
        if len(shape) >= 2 and target.ndim >= 1 and target.shape[0] != shape[0]:
            raise ValueError(
                f"Expected input batch_size ({shape[0]}) to match target batch_size "
                f"({target.shape[0]})"
            )
        raise ValueError(
            f"target of class indices must have shape {expected} for input of shape "
            f"{shape}, got {target.shape}"
        )
    t = target if target.ndim == 1 else target.reshape(-1)
    if t.size == 0:
        return t.astype(np.int64), True
    if t.dtype.kind == "u" and t.max() > np.iinfo(np.int64).max:
        raise IndexError(
            f"target {int(t.max())} is out of bounds for {C} classes "
            f"(valid: 0..{C - 1}, or ignore_index={ignore_index})"
        )
    if t.dtype is not _INT64:  # (astype costs a call even when it copies nothing)
        t = t.astype(np.int64)
    # (t < 0) | (t >= C) in one comparison: a negative int64 read as uint64 is >= 2^63 > C.
    outside = t.view(np.uint64) >= C
    if not np.count_nonzero(outside):  # the usual batch: all in range, ignore_index not read
        return t, True
    invalid = outside & (t != ignore_index)
    if invalid.any():
        pos = int(np.flatnonzero(invalid)[0])
        where = np.unravel_index(pos, expected) if expected else ()
        raise IndexError(
            f"target {int(t[pos])} at position {tuple(int(i) for i in where)} is out of "
            f"bounds for {C} classes (valid: 0..{C - 1}, or ignore_index={ignore_index})"
        )
    return t, False


def cross_entropy_problem(
    shape: tuple[int, ...],
    dtype: np.dtype,
    target: Any,
    weight: Any = None,
    ignore_index: Any = -100,
    reduction: Any = "mean",
    options: Options | None = None,
    *,
    fn: str = "cross_entropy",
    probabilities: bool = True,
) -> Problem:
    """Validate a cross-entropy (or, with ``probabilities=False``, NLL) call on logits of
    ``shape`` in the compute dtype ``dtype``; return the normalised :class:`Problem`.

    A 16-bit ``dtype`` (float16, bfloat16: the logits' storage) stands for its compute dtype,
    float32. Probability targets in a 16-bit float are kept in it for float32 logits (the
    backends read them in 16 bits); weights are always in the compute dtype.

    ``target`` is chosen as PyTorch chooses: class probabilities when it has the logits' shape,
    class indices otherwise. ``ignore_index`` other than -100 with probabilities is an error.

    Example:
        >>> import numpy as np
        >>> p = cross_entropy_problem((3, 4), np.dtype(np.float32), [0, -100, 3])
        >>> p.target, p.valid, float(p.denom)
        (array([   0, -100,    3]), array([ True, False,  True]), 2.0)
        >>> cross_entropy_problem((3, 4), np.dtype(np.float32), [0, 4, 3])
        Traceback (most recent call last):
        ...
        IndexError: target 4 at position (1,) is out of bounds for 4 classes (valid: 0..3, \
or ignore_index=-100)
    """
    reduction = check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    options = Options() if options is None else options
    dtype = compute_dtype(np.dtype(dtype), "input")[0]
    axis = class_axis(shape, fn)
    C = shape[axis]
    loss_shape = shape[:axis] + shape[axis + 1 :]
    M = math.prod(loss_shape)
    w = class_weight(weight, C, dtype)
    tgt = np.asarray(target)
    prob = tgt.shape == tuple(shape)
    if prob and not probabilities:
        raise TypeError(
            f"{fn} takes integer class indices of shape {loss_shape}, got {tgt.dtype} targets "
            f"of the input's shape {tuple(shape)} (for class probabilities, as float, use "
            "cross_entropy)"
        )
    if prob:
        if not is_float(tgt.dtype):
            raise TypeError(
                f"target has the input's shape {tuple(shape)}, so it must hold float class "
                f"probabilities, got dtype {tgt.dtype} (class indices have shape {loss_shape})"
            )
        if ignore_index != -100:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability targets "
                "(leave it at the default -100)"
            )
        y = as_operand(tgt, dtype, "target")
        denom = _reduction.prob_denominator(M, C, dtype)
        return Problem(tuple(shape), axis, C, M, loss_shape, dtype, True, None, None, y, w,
                       ignore_index, reduction, options, denom, denom)
    t, in_range = index_target(tgt, tuple(shape), axis, C, ignore_index)
    valid = t != ignore_index
    # Every target in [0, C) and ignore_index outside it: every position counts (no count).
    count = M if in_range and not 0 <= ignore_index < C else None
    denom, denom_z = _reduction.index_denominators(t, valid, w, dtype, count)
    return Problem(tuple(shape), axis, C, M, loss_shape, dtype, False, t, valid, None, w,
                   ignore_index, reduction, options, denom, denom_z, bool(denom_z == M))
