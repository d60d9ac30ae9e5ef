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


def _rest_sum(d: np.ndarray, top: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``s' = Σ_{c ≠ top} b_c·exp(d_c)`` per row of ``d = x - m`` (M, K), K >= 1: the sum of
    exp without the max's own term (``top`` (M,) holds one index of each row's max; a tie's
    other maxima count 1 each); ``b`` (M, K): scale factors (None: all 1). A row whose max is
    not finite (``d[top]`` is NaN: a NaN, a +inf, or all -inf) gives NaN."""
    rows = np.arange(d.shape[0])
    with np.errstate(**_QUIET):
        e = np.exp(d)
        at_top = e[rows, top]  # exactly 1 where the max is finite, NaN otherwise
        e[rows, top] = 0  # not 1 - 1 after the sum: the max's term is never added
        if b is not None:
            e *= b
        rest = e.sum(axis=1)
        rest[at_top != 1] = np.nan
    return rest


def _log1p_rest(d: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``log1p(s')`` per row of ``d = x - m`` (M, K), K >= 1: the log-sum-exp above the max.

    ``s'`` is :func:`_rest_sum`, so ``lse - m = log(1 + s') = log1p(s')`` keeps terms below
    the float's resolution at 1: ``_log1p_rest`` of ``[0, -40]`` is ``log1p(e^-40)`` =
    4.25e-18, where ``log(Σ exp(d))`` rounds it to 0 (the method of SciPy's logsumexp since
    gh-18295). A row whose max is not finite gives NaN.
    """
    with np.errstate(**_QUIET):
        return np.log1p(_rest_sum(d, top))


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
             row_scale, z_row_scale, grad_out, *, ignored_lse=True, temperature=1.0,
             stats=False, entropy_scale=None, saved=None):
    """Cross-entropy with class-index targets per row, with the options; gradient into
    ``grad_out``. Returns (loss (M,), lse (M,)); with ``stats`` (loss, lse, entropy (M,),
    argmax (M,) int64) of the logits divided by ``temperature`` (:func:`ce_stats`; ``saved``,
    the rows' lse and entropy from an earlier pass, lets the kernels skip passes: unused here).

    z = cap·tanh(x/cap) (no cap: z = x), lse = log Σ_c exp(z_c),
    loss_i = (1-ε)·w[t_i]·(lse_i - z[i, t_i]) + (ε/C)·Σ_c w_c·(lse_i - z[i, c]); 0 if ignored
    (the z-loss ζ·lse_i² is added by the caller, which owns its reduction). The lse of every
    row is returned (``ignored_lse`` exists for the kernels, which skip ignored rows without it).
    grad_i = [s_i·((1-ε)·w[t_i]·(p_i - e_{t_i}) + (ε/C)·(W·p_i - w)) + 2ζ·s^z_i·lse_i·p_i]
             ·(1 - (z_i/cap)²),  W = Σ_c w_c.
    """
    if stats:
        return ce_stats(x, softcap, temperature, entropy_scale, grad_out, lambda z, g: ce_index(
            z, target, weight, ignore_index, label_smoothing, lse_square_scale, None,
            row_scale, z_row_scale, g))
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
            grad_out, *, temperature=1.0, stats=False, entropy_scale=None, saved=None):
    """Cross-entropy with class-probability targets per row, with the options. Returns
    (loss (M,), lse (M,)); with ``stats`` also the entropy and argmax (:func:`ce_stats`).

    z as in :func:`ce_index`, y' = (1-ε)·y + ε/C;  loss_i = -Σ_c w_c·y'_ic·log softmax(z_i)_c;
    grad_i = [s_i·(p_i·Σ_c w_c y'_ic - w∘y'_i) + 2ζ·s^z_i·lse_i·p_i]·(1 - (z_i/cap)²).
    """
    if stats:
        return ce_stats(x, softcap, temperature, entropy_scale, grad_out, lambda z, g: ce_prob(
            z, y, weight, label_smoothing, lse_square_scale, None, row_scale, z_row_scale, g))
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


def _tempered(x: np.ndarray, cap: float | None, temperature: float):
    """(z, chain): z = cap·tanh(x/cap)/T (x/T without a cap), a new array, and dz/dx:
    (1 - tanh²)/T, or the scalar 1/T without a cap."""
    z, chain = _capped(x, cap, None)
    if z is x:
        z = x.copy()
    if temperature != 1.0:
        z /= x.dtype.type(temperature)
    inv = x.dtype.type(1.0 / temperature)
    return z, (inv if chain is None else chain * inv)


def ce_stats(x, softcap, temperature, entropy_scale, grad_out, base):
    """The statistics path of :func:`ce_index` / :func:`ce_prob` (``stats=True``): the loss,
    lse and gradient of the logits ``z = softcap·tanh(x/softcap) / T`` by ``base(z, g)`` (the
    uncapped function on z, its gradient w.r.t. z into ``g``), and per row

        p = softmax(z),  entropy = lse(z) - Σ_c p_c z_c,  argmax = argmax_c z_c (first on ties,
        the first NaN where there is one, as torch.argmax);

    the entropy's gradient ``-u_i·p ⊙ (z - Σ_c p_c z_c)`` (``u`` = ``entropy_scale`` (M,) or a
    scalar: the entropy's upstream gradient; None: 0) is added to the loss's before the chain
    rule through the temperature and the cap. Every row gets its entropy and argmax, ignored or
    not. Returns (loss, lse, entropy, argmax)."""
    M, C = x.shape
    dt = x.dtype
    with np.errstate(**_QUIET):
        z, chain = _tempered(x, softcap, temperature)
        gz = None if grad_out is None else np.empty(z.shape, dt)
        loss, lse = base(z, gz)
        if C == 0:
            ent, top = np.full(M, np.nan, dt), np.zeros(M, np.int64)
        else:
            top = z.argmax(axis=1)
            d = z - z[np.arange(M), top][:, None]
            e = np.exp(d)
            se = e.sum(axis=1)
            p = e / se[:, None]
            pd = np.where(e == 0, dt.type(0), p * d)  # 0·(-inf) counts 0
            mu = pd.sum(axis=1)  # Σ p (z - m)
            ent = (np.log(se) - mu).astype(dt, copy=False)
            if gz is not None and entropy_scale is not None:
                u = _scales(entropy_scale, dt)[:, None]
                term = np.where(e == 0, dt.type(0), p * (d - mu[:, None]))
                gz -= np.where(u == 0, dt.type(0), u * term)
        if gz is not None:
            gz *= chain
            grad_out[...] = gz
    return loss, lse, ent, top.astype(np.int64, copy=False)


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """torch.logsumexp of each row of ``x`` (M, K), K >= 1: m + log1p(s') (:func:`_log1p_rest`,
    the terms below the float's resolution at 1 kept), with torch's value for a row whose max is
    not finite (:func:`_lse_rows`)."""
    with np.errstate(**_QUIET):
        top = x.argmax(axis=1)  # the first NaN where there is one
        m = x[np.arange(x.shape[0]), top][:, None]
        return _lse_rows(m, _log1p_rest(x - m, top))


def logsumexp_signed_rows(x: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log|Σ_c b_c·exp(x_c)|`` and the sum's sign (+1, 0, -1; NaN with a NaN) per row of
    ``x`` (M, K), K >= 1, with scale factors ``b`` of the same shape: SciPy's
    ``logsumexp(x, b=b, return_sign=True)``, computed as SciPy does.

    A zero factor drops its term whatever ``x`` holds there (even NaN or inf). With ``j`` one
    index of the row's max ``m`` (among the terms kept) and ``s = Σ_{c ≠ j} b_c e^{x_c - m} / b_j``
    (:func:`_rest_sum`): ``log|1 + s| + log|b_j| + m`` (``log1p(s)``, or ``log1p(-s - 2)``
    where ``s < -1``: tiny terms kept as in :func:`logsumexp_rows`), sign
    ``sign(1 + s)·sign(b_j)``. Where that is not finite (a max that is not finite, a sum that
    overflows or is 0) the direct ``log|Σ b·e^x|`` and its sign are the result, as SciPy's.
    """
    rows = np.arange(x.shape[0])
    with np.errstate(**_QUIET):
        x = np.where(b == 0, -np.inf, x)
        top = x.argmax(axis=1)  # the first NaN where there is one
        m = x[rows, top]
        b_top = b[rows, top]
        s = _rest_sum(x - m[:, None], top, b) / b_top
        sign = np.sign(s + 1) * np.sign(b_top)
        out = np.log1p(np.where(s < -1, -s - 2, s)) + np.log(np.abs(b_top)) + m
        bad = ~np.isfinite(out)
        if bad.any():
            direct = (b[bad] * np.exp(x[bad])).sum(axis=1)
            out[bad] = np.log(np.abs(direct))
            sign[bad] = np.sign(direct)
    return out, sign


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


def jsd(student, teacher, beta, temperature, row_scale, keep, grad_student, grad_teacher):
    """The generalized Jensen-Shannon divergence of TRL's ``generalized_jsd_loss`` per row.

    a = student/T, b = teacher/T, log p_s = log_softmax(a), log p_t = log_softmax(b);
    beta = 0: loss = KL(p_t ‖ p_s) = Σ_c p_t (log p_t - log p_s);
    beta = 1: loss = KL(p_s ‖ p_t);
    else, m = β·p_t + (1-β)·p_s, u = log p_s - log m, v = log p_t - log m:
    loss = β·Σ_c p_t·v + (1-β)·Σ_c p_s·u, 0·log 0 = 0 (a class of zero probability adds 0).
    Gradients (d loss / d student, d loss / d teacher, times ``row_scale`` s_i):
    beta = 0: s·(p_s - p_t)/T and s·p_t⊙(r - loss)/T, r = log p_t - log p_s (beta = 1: the
    same with the roles swapped); else s·(1-β)·p_s⊙(u - KL(p_s‖m))/T and
    s·β·p_t⊙(v - KL(p_t‖m))/T.

    ``student``, ``teacher`` (M, V), float32/float64 or 16-bit (computed in float32, each
    gradient rounded once into its buffer's dtype); ``row_scale`` a scalar or (M,); ``keep``
    (M,) bool or None (every row): rows not kept get loss 0 and zero gradients;
    ``grad_student``/``grad_teacher`` (M, V) buffers or None. Returns loss (M,) in the compute
    dtype. A row with a NaN or +inf logit, or all -inf, gets NaN loss and gradients.
    """
    halves = [a for a in (student, teacher) if is_half(a.dtype)]
    dt = np.dtype(np.float32) if halves else np.result_type(student.dtype, teacher.dtype)
    zs, zt = student.astype(dt, copy=False), teacher.astype(dt, copy=False)
    M, V = zs.shape
    loss = np.zeros(M, dt)
    if M == 0:
        return loss
    inv_t = dt.type(1.0 / temperature)
    with np.errstate(**_QUIET):
        lps = log_softmax(zs * inv_t, np.empty((M, V), dt))
        lpt = log_softmax(zt * inv_t, np.empty((M, V), dt))
        bad = np.isnan(lps).any(axis=1) | np.isnan(lpt).any(axis=1)
        ps, pt = np.exp(lps), np.exp(lpt)
        if beta == 0 or beta == 1:  # KL(p ‖ q), p the target side
            (lpq, pq), (lpp, pp) = ((lps, ps), (lpt, pt)) if beta == 0 else ((lpt, pt), (lps, ps))
            r = lpp - lpq
            loss = np.where(pp > 0, pp * r, 0).sum(axis=1)
            gq = pq - pp
            gp = np.where(pp > 0, pp * (r - loss[:, None]), 0)
            gs, gt = (gq, gp) if beta == 0 else (gp, gq)
        else:
            b = dt.type(beta)
            lm = np.logaddexp(lps + np.log1p(-b), lpt + np.log(b))
            u, v = lps - lm, lpt - lm
            kls = np.where(ps > 0, ps * u, 0).sum(axis=1)
            klt = np.where(pt > 0, pt * v, 0).sum(axis=1)
            loss = b * klt + (1 - b) * kls
            gs = (1 - b) * np.where(ps > 0, ps * (u - kls[:, None]), 0)
            gt = b * np.where(pt > 0, pt * (v - klt[:, None]), 0)
        loss = loss.astype(dt, copy=False)
        loss[bad] = np.nan
        if keep is not None:
            loss[~keep] = 0
        scale = np.reshape(np.asarray(row_scale, dt), (-1, 1)) * inv_t
        for g, out in ((gs, grad_student), (gt, grad_teacher)):
            if out is None:
                continue
            g = g * scale
            g[bad] = np.nan
            if keep is not None:
                g[~keep] = 0
            out[...] = g
    return loss


# -- focal loss and poly-1 (xent._focal) --------------------------------------------------------

def _focal_terms(logp: np.ndarray, gamma: float, epsilon: float):
    """(φ, ψ, p) of log-probabilities ``logp``: the per-class loss φ = -(1-p)^γ·log p + ε·(1-p)
    and ψ = p·dφ/dp = -(1-p)^γ·(1 - γ·p·log p/(1-p)) - ε·p, so that
    ∂/∂z_j Σ_c a_c·φ_c = a_j·ψ_j - p_j·Σ_c a_c·ψ_c. 1 - p = -expm1(log p) keeps its digits near
    p = 1; p·log p/(1-p) is taken at its limits, -1 at p = 1 and 0 at p = 0."""
    p = np.exp(logp)
    q = -np.expm1(logp)
    if gamma == 0:
        phi = -logp
        psi = np.full_like(logp, -1)
    else:
        qg = q ** logp.dtype.type(gamma)
        pl = np.where(p > 0, p * logp, 0)
        r = np.where(q > 0, pl / np.where(q > 0, q, 1), -1)
        phi = -qg * logp
        psi = -qg * (1 - logp.dtype.type(gamma) * r)
    if epsilon:
        phi = phi + logp.dtype.type(epsilon) * q
        psi = psi - logp.dtype.type(epsilon) * p
    return phi, psi, p


def _log_probs(x: np.ndarray) -> np.ndarray:
    """log softmax of each row, (x - m) - log Σ exp(x - m) (nan for a row with NaN or +inf, or
    all -inf, as PyTorch's)."""
    m = _row_max(x, np.arange(x.shape[0]))
    d = x - m
    return d - np.log(np.exp(d).sum(axis=1, keepdims=True))


def _focal_dense(logp, a, gamma, epsilon, row_scale, grad_out):
    """Σ_c a_c·φ_c per row, and into ``grad_out`` s·(a∘ψ - p·Σ_c a_c·ψ_c) (``a`` (M, C))."""
    phi, psi, p = _focal_terms(logp, gamma, epsilon)
    loss = (a * phi).sum(axis=1)
    if grad_out is not None:
        apsi = a * psi
        s = _scales(row_scale, logp.dtype)[:, None]
        np.multiply(s, apsi - p * apsi.sum(axis=1, keepdims=True), out=grad_out)
    return loss


@_in_float32(1)
def focal_index(x, target, weight, ignore_index, label_smoothing, gamma, epsilon, row_scale,
                grad_out):
    """Focal / poly-1 loss with class-index targets per row; gradient into ``grad_out``.
    Returns the loss (M,).

    With a_c = w_c·((1-ε)·[c = t] + ε/C) (ε = ``label_smoothing``, w ones when None) and
    φ(p) = -(1-p)^γ·log p + ε_poly·(1-p) (γ = ``gamma``, ε_poly = ``epsilon``):
    loss_i = Σ_c a_c·φ(p_ic), 0 if ignored; grad_i = s_i·(a∘ψ_i - p_i·Σ_c a_c·ψ_ic),
    ψ = p·φ'(p); without smoothing grad_i = -s_i·w_t·ψ(p_it)·(p_i - e_t).
    """
    M, C = x.shape
    dt = x.dtype
    keep = None if ignore_index is None else target != ignore_index
    t = target if keep is None else np.where(keep, target, 0)
    rows = np.arange(M)
    with np.errstate(**_QUIET):
        if C == 0:
            return _no_classes(M, dt, grad_out)[0]
        logp = _log_probs(x)
        w = np.ones(C, dt) if weight is None else weight
        if label_smoothing == 0:
            phi_t, psi_t, _ = _focal_terms(logp[rows, t], gamma, epsilon)
            w_t = w[t]
            loss = w_t * phi_t
            if grad_out is not None:
                coef = -w_t * psi_t * _scales(row_scale, dt)
                np.multiply(np.exp(logp), coef[:, None], out=grad_out)
                grad_out[rows, t] -= coef
        else:
            eps = label_smoothing
            a = np.broadcast_to(dt.type(eps / C) * w, (M, C)).copy()
            a[rows, t] += dt.type(1 - eps) * w[t]
            loss = _focal_dense(logp, a, gamma, epsilon, row_scale, grad_out)
        if keep is not None:
            loss = np.where(keep, loss, dt.type(0))
            if grad_out is not None:
                grad_out[~keep] = 0
    return loss.astype(dt, copy=False)


@_in_float32(2)
def focal_prob(x, y, weight, label_smoothing, gamma, epsilon, row_scale, grad_out):
    """:func:`focal_index` with class-probability targets ``y`` (M, C):
    a_c = w_c·((1-ε)·y_c + ε/C). Returns the loss (M,)."""
    M, C = x.shape
    dt = x.dtype
    with np.errstate(**_QUIET):
        if C == 0:
            return _no_classes(M, dt, grad_out)[0]
        eps = label_smoothing
        a = y * dt.type(1 - eps) + dt.type(eps / C) if eps > 0 else y
        if weight is not None:
            a = a * weight
        loss = _focal_dense(_log_probs(x), a, gamma, epsilon, row_scale, grad_out)
    return loss.astype(dt, copy=False)


def _sigmoid_pos(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """sigmoid(x) without overflow, ``e`` = exp(-|x|)."""
    q = 1 + e
    return np.where(x >= 0, 1 / q, e / q)


@_in_float32(2)
def sigmoid_focal(x, y, alpha, gamma, scale, grad_out):
    """torchvision's sigmoid focal loss, elementwise, from logits; gradient into ``grad_out``.

    ce = (1-y)·x + softplus(-x) (BCE with logits), m = 1 - p_t = y·σ(-x) + (1-y)·σ(x),
    α_t = α·y + (1-α)·(1-y) (1 when α < 0): loss = α_t·ce·m^γ;
    grad = scale·α_t·[(σ(x) - y)·m^γ + ce·γ·m^(γ-1)·(1-2y)·σ(x)·σ(-x)] (the second term 0
    where m = 0, its limit).
    """
    dt = x.dtype
    with np.errstate(**_QUIET):
        e = np.exp(-np.abs(x))
        ce = (1 - y) * x + _softplus_neg(x, e)
        sp, sn = _sigmoid_pos(x, e), _sigmoid_neg(x, e)
        mq = y * sn + (1 - y) * sp
        g = dt.type(gamma)
        mod = mq ** g if gamma else np.ones_like(mq)
        at = None if alpha < 0 else dt.type(alpha) * y + dt.type(1 - alpha) * (1 - y)
        loss = ce * mod if at is None else at * ce * mod
        if grad_out is not None:
            gr = (sp - y) * mod
            if gamma:
                dmod = np.where(mq > 0, g * mq ** (g - 1), 0) * ((1 - 2 * y) * sp * sn)
                gr = gr + ce * dmod
            if at is not None:
                gr = gr * at
            np.multiply(gr, scale, out=grad_out)
    return np.asarray(loss, dtype=dt)


# -- sparsemax, 1.5-entmax, alpha-entmax (bisection): maps, VJPs, Fenchel-Young losses ---------
# (public functions and their math: ``xent._sparse``). Sort-based, as the ``entmax`` package
# computes them; the kernels (``xent._kernels._sparse``) find the same thresholds without a sort.

def _shifted(x: np.ndarray) -> np.ndarray:
    """``x - max`` row-wise: the maps are shift-invariant; a row whose max is not finite (NaN,
    +inf, all -inf) becomes all NaN."""
    m = x.max(axis=1, keepdims=True)
    z = x - m
    z[~np.isfinite(m[:, 0])] = np.nan
    return z


def _sparsemax_tau(z: np.ndarray) -> np.ndarray:
    """τ (M, 1) with Σ_c max(z_c - τ, 0) = 1 (Martins & Astudillo 2016, Alg. 1: sort)."""
    s = -np.sort(-z, axis=1)
    k = np.arange(1, z.shape[1] + 1, dtype=z.dtype)
    cs = np.cumsum(s, axis=1) - 1
    support = (k * s > cs).sum(axis=1)  # >= 1 on a finite row; -inf entries never count
    return (cs[np.arange(z.shape[0]), support - 1] / support)[:, None]


def _entmax15_tau(a: np.ndarray) -> np.ndarray:
    """τ (M, 1) with Σ_c max(a_c - τ, 0)² = 1 (Peters et al. 2019, Alg. 2: sort, the support
    from the closed form of each prefix, as ``entmax._entmax_threshold_and_support``)."""
    s = -np.sort(-a, axis=1)
    rho = np.arange(1, a.shape[1] + 1, dtype=a.dtype)
    mean = np.cumsum(s, axis=1) / rho
    mean_sq = np.cumsum(s * s, axis=1) / rho
    delta = (1 - rho * (mean_sq - mean * mean)) / rho
    tau = mean - np.sqrt(np.maximum(delta, 0))
    support = (tau <= s).sum(axis=1)
    return tau[np.arange(a.shape[0]), support - 1][:, None]


def _bisect_p(z: np.ndarray, alpha: float, n_iter: int) -> np.ndarray:
    """α-entmax by ``n_iter`` bisection steps on τ of Σ_c max((α-1)z_c - τ, 0)^(1/(α-1)) = 1,
    then divided by its sum: the steps of ``entmax.entmax_bisect`` (ensure_sum_one=True), on
    z = x - max (τ in [-1, -(1/C)^(α-1)])."""
    am1, inv = alpha - 1.0, 1.0 / (alpha - 1.0)
    X = z * am1
    tau_lo = np.full((z.shape[0], 1), -1.0, z.dtype)
    dm = -((1.0 / z.shape[1]) ** am1) - tau_lo
    p = X
    for _ in range(n_iter):
        dm = dm / 2
        tau_m = tau_lo + dm
        p = np.maximum(X - tau_m, 0) ** inv
        tau_lo = np.where(p.sum(axis=1, keepdims=True) - 1 >= 0, tau_m, tau_lo)
    return p / p.sum(axis=1, keepdims=True)


def _entmax_p(x: np.ndarray, alpha: float, n_iter: int) -> np.ndarray:
    """The map of ``alpha`` (2: sparsemax, 1.5: 1.5-entmax, exact; ``n_iter`` > 0: bisection)
    row-wise over (M, C), C >= 1."""
    z = _shifted(x)
    if n_iter:
        return _bisect_p(z, alpha, n_iter)
    if alpha == 2.0:
        return np.maximum(z - _sparsemax_tau(z), 0)
    a = z / 2
    return np.maximum(a - _entmax15_tau(a), 0) ** 2


@_in_float32(1)
def sparsemax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = max(x - τ, 0)`` row-wise, Σ_c out_c = 1; ``out`` may be ``x``."""
    with np.errstate(**_QUIET):
        if x.shape[1]:
            out[...] = _entmax_p(x, 2.0, 0)
    return out


@_in_float32(1)
def entmax15(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = max(x/2 - τ, 0)²`` row-wise, Σ_c out_c = 1; ``out`` may be ``x``."""
    with np.errstate(**_QUIET):
        if x.shape[1]:
            out[...] = _entmax_p(x, 1.5, 0)
    return out


@_in_float32(1)
def entmax_bisect(x: np.ndarray, alpha: float, n_iter: int, out: np.ndarray) -> np.ndarray:
    """α-entmax row-wise by ``n_iter`` bisection steps (``entmax.entmax_bisect``)."""
    with np.errstate(**_QUIET):
        if x.shape[1]:
            out[...] = _entmax_p(x, alpha, n_iter)
    return out


def _entmax_vjp(g: np.ndarray, y: np.ndarray, alpha: float, grad_in: np.ndarray) -> np.ndarray:
    """``grad_in = w·(g - Σ w g / Σ w)``, w = y^(2-α) on the support (y > 0), 0 elsewhere."""
    with np.errstate(**_QUIET):
        pos = y > 0
        if alpha == 2.0:
            w = pos.astype(y.dtype)
        elif alpha == 1.5:
            w = np.sqrt(np.where(pos, y, 0))
        else:
            w = np.where(pos, np.where(pos, y, 1) ** (2 - alpha), 0)
        q = (w * g).sum(axis=1, keepdims=True) / w.sum(axis=1, keepdims=True)
        np.multiply(w, g - q, out=grad_in)
    return grad_in


@_in_float32(2)
def sparsemax_backward(grad_out: np.ndarray, out: np.ndarray, grad_in: np.ndarray) -> np.ndarray:
    """VJP of sparsemax from its output: ``g - mean_S(g)`` on the support S, 0 elsewhere."""
    return _entmax_vjp(grad_out, out, 2.0, grad_in)


@_in_float32(2)
def entmax15_backward(grad_out: np.ndarray, out: np.ndarray, grad_in: np.ndarray) -> np.ndarray:
    """VJP of 1.5-entmax from its output: w = sqrt(y)."""
    return _entmax_vjp(grad_out, out, 1.5, grad_in)


@_in_float32(2)
def entmax_bisect_backward(grad_out: np.ndarray, out: np.ndarray, alpha: float,
                           grad_in: np.ndarray) -> np.ndarray:
    """VJP of α-entmax from its output: w = y^(2-α) on the support."""
    return _entmax_vjp(grad_out, out, alpha, grad_in)


def _entmax_loss(x, target, ignore_index, alpha, n_iter, row_scale, grad_out):
    """Fenchel-Young loss of α-entmax per row: Ω(p) + Σ_c p_c (x_c - x_t), Ω(p) = (1 - Σ p^α)
    / (α(α-1)); gradient row_scale·(p - e_t); ignored rows 0 (the sum over the support only, so
    -inf logits outside it add 0)."""
    M, C = x.shape
    dt = x.dtype
    if M == 0 or C == 0:
        if grad_out is not None:
            grad_out[...] = 0
        return np.zeros(M, dt)
    with np.errstate(**_QUIET):
        p = _entmax_p(x, alpha, n_iter)
        valid = np.ones(M, bool) if ignore_index is None else target != ignore_index
        t = np.where(valid, target, 0)
        rows = np.arange(M)
        z = x - x[rows, t][:, None]
        pa = p * p if alpha == 2.0 else p * np.sqrt(p) if alpha == 1.5 else p ** alpha
        omega = (1 - pa.sum(axis=1)) / (alpha * (alpha - 1))
        loss = omega + np.where(p > 0, p * z, 0).sum(axis=1)
        loss = np.where(valid, loss, 0).astype(dt, copy=False)
        if grad_out is not None:
            p[rows, t] -= 1
            p *= np.where(valid, np.broadcast_to(row_scale, (M,)), 0)[:, None]
            grad_out[...] = p
    return loss


@_in_float32(1)
def sparsemax_loss(x, target, ignore_index, row_scale, grad_out):
    """Sparsemax loss per row (``_entmax_loss`` with α = 2, exact)."""
    return _entmax_loss(x, target, ignore_index, 2.0, 0, row_scale, grad_out)


@_in_float32(1)
def entmax15_loss(x, target, ignore_index, row_scale, grad_out):
    """1.5-entmax loss per row (``_entmax_loss`` with α = 1.5, exact)."""
    return _entmax_loss(x, target, ignore_index, 1.5, 0, row_scale, grad_out)


@_in_float32(1)
def entmax_bisect_loss(x, target, ignore_index, alpha, n_iter, row_scale, grad_out):
    """α-entmax loss per row, the map by ``n_iter`` bisection steps."""
    return _entmax_loss(x, target, ignore_index, alpha, n_iter, row_scale, grad_out)
