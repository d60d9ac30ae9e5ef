"""Distillation losses: ``kl_div`` (PyTorch's), ``generalized_jsd`` (TRL's), ``gather_log_probs``.

Each public function validates once, then computes; ``generalized_jsd`` runs its rows on the
backend `_dispatch.backend_for` picks (``jsd``: the NumPy reference in ``_backend_numpy`` or the
Numba row kernel in ``_kernels._jsd``), through :func:`jsd_rows`, which the fused linear and
vocabulary-parallel forms (``xent.torch._distill``) call on their chunks of logits.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, overload

import numpy as np

from . import _buffers, _dispatch
from ._backend_numpy import _capped, logsumexp_rows
from ._validation import (
    as_float_like,
    as_result,
    as_storage,
    check_bool,
    check_ignore_index,
    check_real,
    grad_output_for,
    is_half,
)

__all__ = ["JSD_REDUCTIONS", "KL_REDUCTIONS", "check_index", "check_jsd_options",
           "check_kl_reduction", "gather_log_probs", "generalized_jsd", "jsd_rows", "kl_div"]

Array = np.ndarray
JSD_REDUCTIONS = ("none", "batchmean", "sum", "mean")


# ---------------------------------------------------------------------------------------------
# generalized JSD
# ---------------------------------------------------------------------------------------------
def check_jsd_options(beta: Any, temperature: Any, reduction: Any) -> tuple[float, float, str]:
    """(beta, temperature, reduction) checked: beta in [0, 1], temperature positive and finite,
    reduction one of `JSD_REDUCTIONS`."""
    b = check_real(beta, "beta")
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    t = check_real(temperature, "temperature", positive=True)
    if not isinstance(reduction, str) or reduction not in JSD_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {JSD_REDUCTIONS}")
    return b, t, reduction


def _compute(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if is_half(dtype) else dtype


def jsd_rows(student: Array, teacher: Array, beta: float, temperature: float,
             need_student_grad: bool, need_teacher_grad: bool, *, row_scale: Any = 1.0,
             keep: Array | None = None) -> tuple[Array, Array | None, Array | None]:
    """The generalized JSD of each row, and its gradients w.r.t. the raw logits.

    ``student``, ``teacher``: ``(n, V)`` arrays of float32, float64, float16 or bfloat16 (each
    its own dtype). Returns ``(loss_rows, grad_student, grad_teacher)``: ``loss_rows`` ``(n,)``
    unreduced (float64 when either input is float64, else float32); the gradients
    ``row_scale · d loss_row / d z`` (temperature chained), ``(n, V)`` in each input's dtype,
    or None where not asked. ``row_scale``: a scalar or ``(n,)`` (the reduction's scale,
    fused into the gradient pass); ``keep``: ``(n,)`` bool or None, rows not kept get loss 0
    and zero gradients. No validation (beta in [0, 1], temperature > 0 are the caller's).
    Runs the backend `_dispatch.backend_for` picks for op ``"jsd"``.
    """
    n, V = student.shape
    both = np.dtype(np.float64) if np.float64 in (student.dtype, teacher.dtype) else None
    gs = _buffers.empty(student.shape, student.dtype) if need_student_grad else None
    gt = _buffers.empty(teacher.shape, teacher.dtype) if need_teacher_grad else None
    dt = student.dtype if both is None or student.dtype == both else teacher.dtype
    backend = _dispatch.backend_for("jsd", n, V, dt)
    loss = backend.jsd(student, teacher, float(beta), float(temperature), row_scale, keep, gs, gt)
    want = both if both is not None else np.dtype(np.float32)
    return loss.astype(want, copy=False), gs, gt


def _operands(student: Any, teacher: Any) -> tuple[Array, Array, np.dtype]:
    """The two logit arrays as the backends take them (16-bit kept), and the result dtype."""
    zs, rdt = as_storage(student, "student_logits")
    zt, _ = as_storage(teacher, "teacher_logits")
    if zs.ndim < 1:
        raise ValueError(f"student_logits must have a class axis (last), got shape {zs.shape}")
    if zt.shape != zs.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {zs.shape}, "
                         f"got {zt.shape}")
    if zt.dtype != zs.dtype and not (is_half(zt.dtype) and _compute(zs.dtype) == np.float32):
        zt = as_float_like(zt, _compute(zs.dtype), "teacher_logits")
    return zs, zt, rdt


def _jsd_keep(target: Any, shape: tuple[int, ...], ignore_index: int) -> Array | None:
    """The rows counted (``target != ignore_index``), flat (M,), or None for every row."""
    if target is None:
        return None
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class ids, got dtype {t.dtype}")
    if t.shape != shape:
        raise ValueError(f"target must have the shape of the logits without the class axis "
                         f"{shape}, got {t.shape}")
    return (t != ignore_index).reshape(-1)


@overload
def generalized_jsd(
    student_logits: Any, teacher_logits: Any, target: Any = ..., *, beta: float = ...,
    temperature: float = ..., ignore_index: int = ..., reduction: str = ...,
    return_grad: Literal[False] = ..., grad_output: Any = ..., teacher_grad: bool = ...,
) -> Array: ...
@overload
def generalized_jsd(
    student_logits: Any, teacher_logits: Any, target: Any = ..., *, beta: float = ...,
    temperature: float = ..., ignore_index: int = ..., reduction: str = ...,
    return_grad: Literal[True], grad_output: Any = ..., teacher_grad: bool = ...,
) -> tuple[Array, Array, Array | None]: ...
def generalized_jsd(
    student_logits: Any,
    teacher_logits: Any,
    target: Any = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    return_grad: bool = False,
    grad_output: Any = None,
    teacher_grad: bool = True,
) -> Array | tuple[Array, Array, Array | None]:
    r"""The generalized Jensen-Shannon divergence between student and teacher logits (GKD).

    With :math:`p_s = \mathrm{softmax}(z_s / T)`, :math:`p_t = \mathrm{softmax}(z_t / T)` over
    the last axis, per position :math:`n`:

    .. math::
        \ell_n = \begin{cases}
          \mathrm{KL}(p_t \,\|\, p_s) & \beta = 0 \text{ (forward KL)}\\
          \mathrm{KL}(p_s \,\|\, p_t) & \beta = 1 \text{ (reverse KL)}\\
          \beta\,\mathrm{KL}(p_t \,\|\, m) + (1-\beta)\,\mathrm{KL}(p_s \,\|\, m),\quad
          m = \beta p_t + (1-\beta) p_s & \text{otherwise}
        \end{cases}

    summed over the classes, :math:`0 \log 0 = 0`; :math:`\ell_n = 0` where ``target`` equals
    ``ignore_index``. This is TRL's ``GKDTrainer.generalized_jsd_loss`` (Agarwal et al., eq. 1).

    Args:
        student_logits: ``(..., V)`` logits (float32, float64, float16, bfloat16).
        teacher_logits: ``(..., V)`` logits of the same shape (any float dtype).
        target: ``(...)`` integer labels or None: positions equal to ``ignore_index`` are not
            counted (TRL's ``labels``).
        beta: :math:`\beta \in [0, 1]`.
        temperature: :math:`T > 0`, dividing both logits.
        ignore_index: the label of positions not counted.
        reduction: ``'batchmean'`` (the sum over positions divided by the number of positions
            counted, 1 when none is: 0 then, as TRL's ``clamp_min(1)``), ``'sum'``, ``'mean'``
            (TRL's: divided by positions counted times V), ``'none'`` (``(...)``, per position).
        return_grad: also return the gradients w.r.t. ``student_logits`` and ``teacher_logits``.
        grad_output: upstream gradient (a scalar, or the ``'none'`` loss's shape).
        teacher_grad: with ``return_grad``, compute the teacher's gradient (False: None in its
            place, and one gradient fewer to write: the usual distillation, a frozen teacher).

    Returns:
        The loss (0-d, or ``(...)`` for ``'none'``); with ``return_grad`` a tuple
        ``(loss, grad_student, grad_teacher)``, the gradients in the logits' dtypes.

    Edge cases: a position whose logits hold NaN or +inf, or are all -inf, gets NaN; -inf
    logits elsewhere are classes of zero probability (contributing 0, or +inf to a KL whose
    second distribution is 0 there). TRL's ``batchmean`` without labels divides by the
    tensor's first dimension (the batch, for ``(B, L, V)``); here it divides by the positions.

    Example:
        >>> import numpy as np, xent
        >>> zs = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> zt = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
        >>> print(np.round(xent.generalized_jsd(zs, zt, reduction="none"), 4))
        [0.2476 0.03  ]
        >>> print(np.round(xent.generalized_jsd(zs, zt, np.array([1, -100]), beta=0.0), 4))
        1.1504

    References: R. Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024; TRL ``GKDTrainer.generalized_jsd_loss``.
    """
    beta, temperature, reduction = check_jsd_options(beta, temperature, reduction)
    return_grad = check_bool(return_grad, "return_grad")
    teacher_grad = check_bool(teacher_grad, "teacher_grad")
    ignore_index = check_ignore_index(ignore_index)
    zs, zt, rdt = _operands(student_logits, teacher_logits)
    lead, V = zs.shape[:-1], zs.shape[-1]
    keep = _jsd_keep(target, lead, ignore_index)
    M = math.prod(lead)
    cdt = np.dtype(np.float64) if np.float64 in (zs.dtype, zt.dtype) else np.dtype(np.float32)
    counted = M if keep is None else int(np.count_nonzero(keep))
    denom = {"none": 1, "sum": 1, "batchmean": max(counted, 1),
             "mean": counted * V}[reduction]
    g = grad_output_for(grad_output, lead, reduction, cdt)
    scale = (g.reshape(-1) if reduction == "none" else g / cdt.type(denom)) if return_grad else 1
    loss_rows, gs, gt = jsd_rows(zs.reshape(M, V), zt.reshape(M, V), beta, temperature,
                                 return_grad, return_grad and teacher_grad, row_scale=scale,
                                 keep=keep)
    if reduction == "none":
        loss = loss_rows.reshape(lead).astype(cdt, copy=False)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.asarray(loss_rows.sum(dtype=cdt) / cdt.type(denom))
    loss = as_result(loss, rdt)
    if gs is None:
        return loss
    return loss, gs.reshape(zs.shape), None if gt is None else gt.reshape(zt.shape)


# ---------------------------------------------------------------------------------------------
# kl_div (PyTorch's F.kl_div)
# ---------------------------------------------------------------------------------------------
KL_REDUCTIONS = ("none", "batchmean", "sum", "mean")
MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release.")


def check_kl_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {KL_REDUCTIONS}")
    return reduction


@overload
def kl_div(
    input: Any, target: Any, reduction: str = ..., log_target: bool = ..., *,
    return_grad: Literal[False] = ..., grad_output: Any = ..., warn: bool = ...,
) -> Array: ...
@overload
def kl_div(
    input: Any, target: Any, reduction: str = ..., log_target: bool = ..., *,
    return_grad: Literal[True], grad_output: Any = ..., warn: bool = ...,
) -> tuple[Array, Array, Array]: ...
def kl_div(
    input: Any,
    target: Any,
    reduction: str = "mean",
    log_target: bool = False,
    *,
    return_grad: bool = False,
    grad_output: Any = None,
    warn: bool = True,
) -> Array | tuple[Array, Array, Array]:
    r"""PyTorch's ``F.kl_div``: the pointwise KL divergence with log-probabilities ``input``.

    .. math::
        \ell = \begin{cases} y\,(\log y - x) & \text{log\_target=False } (0 \log 0 = 0)\\
                             e^{y}\,(y - x) & \text{log\_target=True} \end{cases}

    elementwise, ``x`` = ``input`` (log-probabilities), ``y`` = ``target``: summed over classes
    this is ``KL(y ‖ exp(x))`` (the target is the first distribution: "forward" KL when the
    target is the teacher).

    Args:
        input: log-probabilities, any shape; ``target`` broadcast against it (PyTorch's rule).
        target: probabilities (or log-probabilities with ``log_target``).
        reduction: ``'mean'`` (the mean over *all elements*; PyTorch's warning is given),
            ``'batchmean'`` (the sum divided by ``input.shape[0]``, the sum for a 0-d input:
            the KL divergence per sample), ``'sum'``, ``'none'`` (the broadcast shape).
        log_target: ``target`` holds log-probabilities.
        return_grad: also return the gradients w.r.t. ``input`` and ``target`` (each of its
            own shape, broadcast dimensions summed): ``-y`` and ``log y + 1 - x`` (NaN where
            ``y = 0``, as PyTorch's), or ``-e^y`` and ``e^y (y - x + 1)``.
        grad_output: upstream gradient (a scalar, or the ``'none'`` loss's shape).
        warn: give PyTorch's warning for ``reduction='mean'`` (False: as PyTorch with the
            legacy ``size_average``/``reduce``).

    Returns:
        The loss; with ``return_grad``, ``(loss, grad_input, grad_target)``.

    Edge cases: a negative target gives NaN (``log``), ``target = 0`` gives 0 whatever the
    input (``xlogy``), ``log_target`` with ``target = -inf`` gives NaN (``0·inf``, as PyTorch);
    empty input: ``'mean'`` NaN, ``'batchmean'`` 0/0 = NaN for ``(0, C)``, ``'sum'`` 0.

    Example:
        >>> import numpy as np, xent
        >>> logq = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
        >>> p = np.array([[0.25, 0.75], [1.0, 0.0]])
        >>> print(np.round(xent.kl_div(logq, p, reduction="none"), 4))
        [[-0.1733  0.3041]
         [ 0.1054  0.    ]]
        >>> print(np.round(xent.kl_div(logq, p, reduction="batchmean"), 4))
        0.1181

    References: PyTorch ``torch.nn.functional.kl_div``; S. Kullback and R. Leibler, "On
    information and sufficiency", 1951.
    """
    reduction = check_kl_reduction(reduction)
    log_target = check_bool(log_target, "log_target")
    return_grad = check_bool(return_grad, "return_grad")
    x, rdt = as_storage(input, "input")
    cdt = _compute(x.dtype)
    y = as_float_like(target, cdt, "target")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise ValueError(f"target of shape {y.shape} cannot be broadcast with input of shape "
                         f"{x.shape}") from None
    if reduction == "mean" and warn:
        warnings.warn(MEAN_WARNING, UserWarning, stacklevel=2)
    xc = x.astype(cdt, copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            ey = np.exp(y)
            pointwise = ey * (y - xc)
        else:
            logy = np.log(np.where(y != 0, y, 1))  # xlogy(y, y): 0 at y = 0, NaN for y < 0
            logy = np.where(np.isnan(y), np.nan, logy)
            pointwise = y * logy - y * xc
            pointwise = np.where(y == 0, 0 - y * xc, pointwise)
        pointwise = np.broadcast_to(pointwise, shape).astype(cdt, copy=False)
        n = pointwise.size
        denom = {"none": 1, "sum": 1, "mean": n,  # (batchmean: input's first size, as torch)
                 "batchmean": x.shape[0] if x.ndim else 1}[reduction]
        if reduction == "none":
            loss = pointwise
        else:
            loss = np.asarray(pointwise.sum(dtype=cdt) / cdt.type(denom))
    loss = as_result(loss, rdt)
    if not return_grad:
        return loss
    g = grad_output_for(grad_output, shape, "none" if reduction == "none" else "sum", cdt)
    if reduction != "none":
        g = g / cdt.type(denom)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            gx = -ey * g
            gy = ey * (y - xc + 1) * g
        else:
            gx = -y * g
            gy = (np.where(y != 0, logy, 0) + y / y - xc) * g  # PyTorch's: NaN where y = 0
    return (loss, as_result(_sum_to(gx, x.shape), rdt),
            _sum_to(gy, y.shape).astype(cdt, copy=False))


def _sum_to(g: Array, shape: tuple[int, ...]) -> Array:
    """``g`` (the broadcast shape) summed over the dimensions broadcast to reach it from
    ``shape``."""
    g = np.broadcast_to(g, np.broadcast_shapes(g.shape, shape))
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    out = g.sum(axis=axes, keepdims=True) if axes else g
    return np.ascontiguousarray(out.reshape(shape))


# ---------------------------------------------------------------------------------------------
# gather_log_probs
# ---------------------------------------------------------------------------------------------
def check_index(index: Any, lead: tuple[int, ...], V: int) -> Array:
    """``index`` as int64 ``lead + (K,)`` with every value in ``[0, V)``, else the error."""
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"index must hold integer class ids, got dtype {idx.dtype}")
    if idx.ndim != len(lead) + 1 or idx.shape[:-1] != lead:
        raise ValueError(f"index must have shape {lead + ('K',)} for logits of shape "
                         f"{lead + (V,)}, got {idx.shape}")
    if idx.size:
        flat = idx.reshape(-1)
        if idx.dtype.kind == "u":
            outside = flat >= V
        else:
            outside = (flat < 0) | (flat >= V)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            pos = np.unravel_index(k, idx.shape)
            raise IndexError(f"index {int(flat[k])} at position {tuple(map(int, pos))} is out "
                             f"of bounds for {V} classes (valid: 0..{V - 1})")
    return idx.astype(np.int64, copy=False)


@overload
def gather_log_probs(
    logits: Any, index: Any, *, temperature: float = ..., softcap: float | None = ...,
    return_grad: Literal[False] = ..., grad_output: Any = ...,
) -> Array: ...
@overload
def gather_log_probs(
    logits: Any, index: Any, *, temperature: float = ..., softcap: float | None = ...,
    return_grad: Literal[True], grad_output: Any = ...,
) -> tuple[Array, Array]: ...
def gather_log_probs(
    logits: Any,
    index: Any,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    return_grad: bool = False,
    grad_output: Any = None,
) -> Array | tuple[Array, Array]:
    r"""Log-probabilities of given classes: ``log softmax(z)[..., index]`` without the softmax.

    .. math:: z = \frac{c \tanh(x / c)}{T}, \qquad
              \ell_{n,k} = z_{n, i_{n,k}} - \log \sum_v e^{z_{n,v}}

    (no cap: :math:`z = x / T`); the class axis is last. The target gather generalised from one
    index to K (verl's ``linear_topk_log_probs``, for a teacher's top-k in distillation).

    Args:
        logits: ``(..., V)``.
        index: ``(..., K)`` integer class ids in ``[0, V)`` (repeats allowed).
        temperature: :math:`T > 0`.
        softcap: :math:`c > 0` or None.
        return_grad: also return d(Σ grad_output ⊙ ℓ)/d logits:
            ``(scatter(g) - p·Σ_k g_k)/T·(1 - tanh²(x/c))``, ``p = softmax(z)``.
        grad_output: upstream gradient ``(..., K)`` (default ones).

    Returns:
        ``(..., K)`` log-probabilities in the logits' dtype (and the gradient, ``(..., V)``).

    Edge cases: a row with NaN or +inf, or all -inf, gives NaN; a class at -inf gives -inf;
    K = 0 gives an empty ``(..., 0)`` result.

    Example:
        >>> import numpy as np, xent
        >>> z = np.array([[1.0, 2.0, 3.0]])
        >>> print(np.round(xent.gather_log_probs(z, np.array([[2, 0]])), 4))
        [[-0.4076 -2.4076]]
        >>> print(np.round(xent.gather_log_probs(z, np.array([[2]]), temperature=2.0), 4))
        [[-0.6803]]
    """
    T = check_real(temperature, "temperature", positive=True)
    cap = None if softcap is None else check_real(softcap, "softcap", positive=True)
    return_grad = check_bool(return_grad, "return_grad")
    x, rdt = as_storage(logits, "logits")
    if x.ndim < 1:
        raise ValueError(f"logits must have a class axis (last), got shape {x.shape}")
    lead, V = x.shape[:-1], x.shape[-1]
    idx = check_index(index, lead, V)
    cdt = _compute(x.dtype)
    M, K = math.prod(lead), idx.shape[-1]
    xr = x.reshape(M, V).astype(cdt)
    ir_ = idx.reshape(M, K)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z, chain = _capped(xr, cap, None)
        if T != 1.0:
            z = z / cdt.type(T)
        lse = logsumexp_rows(z) if V else np.full(M, -np.inf, cdt)
        out = np.take_along_axis(z, ir_, axis=1) - lse[:, None]
        out = np.where(np.isnan(lse)[:, None], np.nan, out).astype(cdt, copy=False)
    result = as_result(out.reshape(idx.shape), rdt)
    if not return_grad:
        return result
    g = (np.ones((M, K), cdt) if grad_output is None
         else as_float_like(grad_output, cdt, "grad_output"))
    if grad_output is not None and g.shape != idx.shape:
        raise ValueError(f"grad_output must have the result's shape {idx.shape}, got {g.shape}")
    g = g.reshape(M, K)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(z - lse[:, None])
        grad = -p * g.sum(axis=1, keepdims=True)
        np.add.at(grad, (np.arange(M)[:, None], ir_), g)
        grad /= cdt.type(T)
        if chain is not None:
            grad *= chain
    return result, as_result(grad.reshape(x.shape), rdt)
