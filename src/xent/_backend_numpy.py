"""The NumPy implementation of the row kernels (always available).

Functions here never validate: the public functions in ``_cross_entropy.py``, ``_binary.py`` and
``_activations.py`` have already checked shapes, dtypes and target ranges. The contract (names,
shapes, meaning of ``row_scale`` and ``grad_out``) is in ``docs/ARCHITECTURE.md``; the Numba kernels
in ``xent._kernels`` implement the same signatures.

Every function here follows PyTorch's arithmetic on non-finite input: the row maximum is
subtracted as is, so a row whose maximum is +inf or whose entries are all -inf gives nan, as
``torch.log_softmax`` does. IEEE warnings for those inputs are silenced locally (``np.errstate``):
the nan/inf *values* are the documented result.

16-bit floats (float16, bfloat16): every function takes them (``x``, a probability or BCE
target) and computes as PyTorch's CPU kernels do, in float32, rounding its 16-bit output
(gradient, softmax) once to nearest even at the end (:func:`_in_float32`); the per-row loss and
lse are returned in float32, the compute dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ._validation import is_half

_QUIET: dict[str, Any] = {
    "over": "ignore", "invalid": "ignore", "divide": "ignore", "under": "ignore"}


def _in_float32(halves: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``fn(*inputs, out)`` on 16-bit arrays: the 16-bit inputs are read as float32 copies,
    ``fn`` computes in float32, and ``out`` (the last positional argument: a gradient or
    softmax buffer, or None; it may be ``x`` itself) gets the float32 result rounded to its
    dtype, once (``astype`` rounds to nearest even, as ml_dtypes and NumPy do). Only the first
    ``halves`` positional arguments can be 16-bit (``x``, and a probability or BCE target): the
    contract keeps the others in the compute dtype, and the test runs on every small call."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            for a in args[:halves]:
                if isinstance(a, np.ndarray) and a.dtype.itemsize == 2 and is_half(a.dtype):
                    break
            else:
                return fn(*args, **kwargs)
            *ins, out = args
            ins32 = [a.astype(np.float32) if isinstance(a, np.ndarray) and is_half(a.dtype)
                     else a for a in ins]
            if out is None or not is_half(out.dtype):
                out32 = out
            elif np.may_share_memory(out, ins[0]):  # in place: x is already read into its copy
                out32 = ins32[0]
            else:
                out32 = np.empty(out.shape, np.float32)
            result = fn(*ins32, out32, **kwargs)
            if out32 is not out:
                with np.errstate(over="ignore", invalid="ignore"):
                    out[...] = out32
            return out if result is out32 else result

        return run

    return wrap


def _log1p_rest(d: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``log1p(s')`` per row of ``d = x - m`` (M, K), K >= 1: the log-sum-exp above the max.

    ``s' = Σ_{c ≠ top} exp(d_c)`` is the sum without the max's own term (``top`` (M,) holds
    one index of each row's max; a tie's other maxima count 1 each), so
    ``lse - m = log(1 + s') = log1p(s')`` keeps terms below the float's resolution at 1:
    ``_log1p_rest`` of ``[0, -40]`` is ``log1p(e^-40)`` = 4.25e-18, where ``log(Σ exp(d))``
    rounds it to 0 (the method of SciPy's logsumexp since gh-18295). A row whose max is not
    finite (``d[top]`` is NaN: a NaN, a +inf, or all -inf) gives NaN.
    """
    rows = np.arange(d.shape[0])
    with np.errstate(**_QUIET):
        e = np.exp(d)
        at_top = e[rows, top]  # exactly 1 where the max is finite, NaN otherwise
        e[rows, top] = 0  # not 1 - 1 after the sum: the max's term is never added
        rest = np.log1p(e.sum(axis=1))
        rest[at_top != 1] = np.nan
    return rest


@_in_float32(1)
def log_softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (x - m) - log1p(s')`` row-wise, ``s'`` the sum of ``exp(x - m)`` without the
    max's own 1 (:func:`_log1p_rest`); ``out`` may be ``x``.

    The max is subtracted first, as torch does: forming ``m + log Σ`` first would round the
    log-sum away when the logits are large (float32 ``log_softmax([1e8, 1e8])`` would be 0, not
    -log 2). ``log1p(s')`` instead of ``log(1 + s')`` keeps the tiny terms:
    ``log_softmax([0, -40])[0]`` is ``-log1p(e^-40)`` = -4.25e-18, not 0.
    """
    with np.errstate(**_QUIET):
        if x.shape[1] == 0:
            return out
        top = x.argmax(axis=1)  # the first NaN where there is one, as np.max propagates it
        m = x[np.arange(x.shape[0]), top][:, None]
        d = np.subtract(x, m, out=out)
        d -= _log1p_rest(d, top)[:, None]
    return out


@_in_float32(1)
def softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = exp(x - max) / Σ exp(x - max)`` row-wise; ``out`` may be ``x``."""
    with np.errstate(**_QUIET):
        if x.shape[1] == 0:
            return out
        m = _row_max(x, np.arange(x.shape[0]))
        np.subtract(x, m, out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
    return out


@_in_float32(2)
def softmax_backward(grad_out: np.ndarray, out: np.ndarray, grad_in: np.ndarray) -> np.ndarray:
    """``grad_in = out·(grad_out - Σ_c grad_out·out)`` row-wise: the VJP of softmax from its
    output (``grad_in`` overlaps neither input)."""
    with np.errstate(**_QUIET):
        d = np.multiply(grad_out, out, out=grad_in).sum(axis=1, keepdims=True)
        np.subtract(grad_out, d, out=grad_in)
        grad_in *= out
    return grad_in


@_in_float32(2)
def log_softmax_backward(grad_out: np.ndarray, out: np.ndarray,
                         grad_in: np.ndarray) -> np.ndarray:
    """``grad_in = grad_out - exp(out)·Σ_c grad_out`` row-wise: the VJP of log_softmax from its
    output (``grad_in`` overlaps neither input)."""
    with np.errstate(**_QUIET):
        s = grad_out.sum(axis=1, keepdims=True)
        np.exp(out, out=grad_in)
        grad_in *= s
        np.subtract(grad_out, grad_in, out=grad_in)
    return grad_in


def _capped(x: np.ndarray, cap: float | None, buf: np.ndarray | None):
    """(z, chain): the soft-capped logits z = cap·tanh(x/cap) (into ``buf`` when given, which
    may be ``x``) and the cap's chain-rule factor 1 - (z/cap)² = d z / d x; (x, None) without a
    cap."""
    if cap is None:
        return x, None
    z = np.divide(x, cap, out=buf)
    np.tanh(z, out=z)
    chain = 1 - z * z
    z *= cap
    return z, chain


def _row_max(z: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's maximum ``(M, 1)`` (NaN where the row has one, as ``max`` propagates it), read
    at ``argmax``: NumPy's ``max(axis=1)`` runs a scalar loop per row, 5x the time of ``argmax``
    on (256, 64) float32 (62 against 13 µs); ``rows`` is ``np.arange(M)``."""
    return z[rows, z.argmax(axis=1)][:, None]


def _lse_rows(m: np.ndarray, lse_m: np.ndarray) -> np.ndarray:
    """log Σ exp per row from the row max m and log Σ exp(x - m): torch.logsumexp's value also
    for non-finite rows (nan with a NaN, +inf with a +inf, -inf when all are -inf)."""
    # Where m is finite, lse_m >= 0 (the max's own term is exp(0) = 1, so Σ >= 1) and
    # fmax(lse_m, 0) is lse_m; where it is not, lse_m is NaN (x - m is NaN at the max: inf - inf,
    # or a NaN) and fmax gives 0, so the lse is m itself. Two ufuncs, not isfinite/add/where.
    return m[:, 0] + np.fmax(lse_m, 0)


def _scales(scale: Any, dt: np.dtype) -> np.ndarray:
    """A row scale of the contract as an array of ``dt``: ``(M,)``, or ``(1,)`` for a scalar
    (one scale for every row). An array, not a 0-d one: NumPy 1.x promotes 0-d operands by
    value (``0.9 * s`` in float64), arrays by dtype, as for ``(M,)``: the same values."""
    return np.asarray(scale, dt).reshape(-1)


def _no_classes(M: int, dt: np.dtype, grad_out: np.ndarray | None):
    """Cross-entropy rows over no class: loss 0, lse -inf (an empty sum), zero gradient."""
    if grad_out is not None:
        grad_out[...] = 0
    return np.zeros(M, dt), np.full(M, -np.inf, dt)


@_in_float32(1)
def ce_index(x, target, weight, ignore_index, label_smoothing, lse_square_scale, softcap,
             row_scale, z_row_scale, grad_out, *, ignored_lse=True):
    """Cross-entropy with class-index targets per row, with the options; gradient into
    ``grad_out``. Returns (loss (M,), lse (M,)).

    z = cap·tanh(x/cap) (no cap: z = x), lse = log Σ_c exp(z_c),
    loss_i = (1-ε)·w[t_i]·(lse_i - z[i, t_i]) + (ε/C)·Σ_c w_c·(lse_i - z[i, c]); 0 if ignored
    (the z-loss ζ·lse_i² is added by the caller, which owns its reduction). The lse of every
    row is returned (``ignored_lse`` exists for the kernels, which skip ignored rows without it).
    grad_i = [s_i·((1-ε)·w[t_i]·(p_i - e_{t_i}) + (ε/C)·(W·p_i - w)) + 2ζ·s^z_i·lse_i·p_i]
             ·(1 - (z_i/cap)²),  W = Σ_c w_c.
    """
    M, C = x.shape
    dt = x.dtype
    # Every row counted (the usual batch): the masks below change nothing, so they are skipped
    # (a small call is a few dozen NumPy calls of a few µs each; the values are the same).
    # ignore_index None: the caller's validation found no target equal to it.
    keep = None if ignore_index is None else target != ignore_index
    all_kept = keep is None or np.count_nonzero(keep) == M  # (a third of keep.all()'s cost)
    t = target if all_kept else np.where(keep, target, 0)
    rows = np.arange(M)
    eps = label_smoothing
    with np.errstate(**_QUIET):
        if C == 0:
            return _no_classes(M, dt, grad_out)
        z, chain = (x, None) if softcap is None else _capped(x, softcap, grad_out)
        # Work in coordinates shifted by the row max m: d = z - m, lse - m = log Σ exp(d).
        # Every term then stays small, so (lse - z_t) and Σ_c w_c (lse - z_c) lose nothing to
        # cancellation even when all logits sit near 1e4. d goes into grad_out (in place).
        m = _row_max(z, rows)
        d = np.subtract(z, m, out=grad_out)
        d_t = d[rows, t]
        if eps > 0:
            wd = d.sum(axis=1) if weight is None else d @ weight  # Σ_c w_c·d_c
        np.exp(d, out=d)
        sum_e = np.add.reduce(d, axis=1)  # (d.sum(axis=1) without its Python wrapper)
        lse_d = np.log(sum_e)  # lse - m
        lse = _lse_rows(m, lse_d)
        w_t = None if weight is None else weight[t]  # None: every w_t is 1
        loss = lse_d - d_t if w_t is None else w_t * (lse_d - d_t)
        if eps > 0:
            W = dt.type(C) if weight is None else weight.sum(dtype=dt)
            smooth = W * lse_d - wd
            loss = (1 - eps) * loss + (eps / C) * smooth
        if not all_kept:
            loss = np.where(keep, loss, dt.type(0))
        if grad_out is None:
            return loss, lse
        # d now holds e = exp(z - m), p = e / Σe. Fold the normaliser and the row's scale
        # into one factor per row.
        s = _scales(row_scale if all_kept else np.where(keep, row_scale, dt.type(0)), dt)
        if w_t is None:  # (1-ε)·1·s, the same rounding as with w_t = 1
            a = s if eps == 0 else (1 - eps) * s
        else:
            a = (1 - eps) * w_t * s
        coef = a  # a: the coefficient of (p - onehot)
        if eps > 0:
            b = (eps / C) * s  # coefficient of (W·p - w)
            coef = a + b * W
        if lse_square_scale:
            zc = 2 * lse_square_scale * _scales(z_row_scale, dt) * lse
            coef = coef + (zc if all_kept else np.where(keep, zc, 0))
        d *= (coef / sum_e)[:, None]
        grad_out[rows, t] -= a
        if eps > 0:
            b = np.reshape(b, (-1, 1))  # (M, 1), or (1, 1) for one scale for every row
            grad_out -= b if weight is None else b * weight
        if chain is not None:
            grad_out *= chain
        # Ignored rows: coef is 0 so p·0 = 0, unless p is nan (non-finite row); force 0.
        if not all_kept:
            grad_out[~keep] = 0
    return loss, lse


@_in_float32(2)
def ce_prob(x, y, weight, label_smoothing, lse_square_scale, softcap, row_scale, z_row_scale,
            grad_out):
    """Cross-entropy with class-probability targets per row, with the options. Returns
    (loss (M,), lse (M,)).

    z as in :func:`ce_index`, y' = (1-ε)·y + ε/C;  loss_i = -Σ_c w_c·y'_ic·log softmax(z_i)_c;
    grad_i = [s_i·(p_i·Σ_c w_c y'_ic - w∘y'_i) + 2ζ·s^z_i·lse_i·p_i]·(1 - (z_i/cap)²).
    """
    M, C = x.shape
    dt = x.dtype
    eps = label_smoothing
    with np.errstate(**_QUIET):
        if C == 0:
            return _no_classes(M, dt, grad_out)
        z, chain = _capped(x, softcap, None)
        yy = y * dt.type(1 - eps) + dt.type(eps / C) if eps > 0 else y
        wy = yy if weight is None else yy * weight
        m = _row_max(z, np.arange(M))
        logp = np.subtract(z, m)
        lse_d = np.log(np.exp(logp).sum(axis=1))
        lse = _lse_rows(m, lse_d)
        logp -= lse_d[:, None]
        loss = -(wy * logp).sum(axis=1).astype(dt, copy=False)
        if grad_out is None:
            return loss, lse
        row_scale = _scales(row_scale, dt)
        coef = wy.sum(axis=1) * row_scale
        if lse_square_scale:
            coef = coef + 2 * lse_square_scale * _scales(z_row_scale, dt) * lse
        np.exp(logp, out=grad_out)
        grad_out *= coef[:, None]
        grad_out -= wy * np.reshape(row_scale, (-1, 1))
        if chain is not None:
            grad_out *= chain
    return loss, lse


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """torch.logsumexp of each row of ``x`` (M, K), K >= 1: m + log1p(s') (:func:`_log1p_rest`,
    the terms below the float's resolution at 1 kept), with torch's value for a row whose max is
    not finite (:func:`_lse_rows`)."""
    with np.errstate(**_QUIET):
        top = x.argmax(axis=1)  # the first NaN where there is one
        m = x[np.arange(x.shape[0]), top][:, None]
        return _lse_rows(m, _log1p_rest(x - m, top))


def _softplus_neg(x: np.ndarray, e: np.ndarray | None = None) -> np.ndarray:
    """softplus(-x) = log(1 + e^{-x}) = max(-x, 0) + log1p(exp(-|x|)), which never overflows;
    ``e``: ``exp(-|x|)`` when the caller has it. (log_sigmoid(x) is its negation.)"""
    if e is None:
        e = np.exp(-np.abs(x))
    return np.maximum(-x, 0) + np.log1p(e)


def _sigmoid_neg(x: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
    """sigmoid(-x) without overflow: e^{-x}/(1+e^{-x}) for x ≥ 0, 1/(1+e^{x}) for x < 0.
    ``z``: ``exp(-|x|)`` when the caller has it."""
    if z is None:
        z = np.exp(-np.abs(x))
    q = 1 + z
    return np.where(x >= 0, z / q, 1 / q)


@_in_float32(2)
def bce_logits(x, y, weight, pos_weight, scale, grad_out):
    """Binary cross-entropy on logits, elementwise.

    loss = w·[(1-y)·x + lw·softplus(-x)],  lw = 1 + (pos_weight-1)·y;
    grad = scale·w·[(1-y) - lw·sigmoid(-x)].
    softplus(-x) (:func:`_softplus_neg`) never overflows.
    """
    dt = x.dtype
    with np.errstate(**_QUIET):
        e = np.exp(-np.abs(x))  # (also sigmoid(-x)'s)
        softplus_neg = _softplus_neg(x, e)
        one_m_y = 1 - y
        if pos_weight is None:
            loss = one_m_y * x + softplus_neg
        else:
            lw = 1 + (pos_weight - 1) * y
            loss = one_m_y * x + lw * softplus_neg
        if weight is not None:
            loss *= weight
        if grad_out is not None:
            sn = _sigmoid_neg(x, e)
            g = one_m_y - (sn if pos_weight is None else lw * sn)
            if weight is not None:
                g *= weight
            np.multiply(g, scale, out=grad_out)
    return loss.astype(dt, copy=False)
