"""Numba kernels for focal loss and poly-1 cross-entropy (row-wise) and torchvision's sigmoid
focal loss (elementwise), with their host functions (the signatures of
``xent._backend_numpy.focal_index``, ``focal_prob`` and ``sigmoid_focal``).

The per-class loss is φ(p) = -(1-p)^γ·log p + ε·(1-p), weighted by a_c = w_c·y'_c; its
gradient is a_j·ψ_j - p_j·Σ_c a_c·ψ_c with ψ = p·φ'(p) (`_terms`, the scalar form of
``_backend_numpy._focal_terms``).

Index targets without label smoothing (the usual call, :func:`_index_row`) cost what a
cross-entropy row costs: only the target's term is non-zero, so the gradient is
-s·w_t·ψ(p_t)·(p - e_t), cross-entropy's with another coefficient. Pass 1 is `_rows`' online
max / sum-of-exp that stores the row's exps in the gradient row (a float32 scratch row for
16-bit storage); then log p_t = (x_t - m) - log s gives the coefficient, and pass 2 is `_rows`'
`_finish_blocks`, which scales the stored exps into the gradient (from L2). One read of the
logits, one write of the gradient.

Label smoothing or probability targets (:func:`_dense_row`) weigh every class, so φ and ψ are
needed for every class: pass 1 the online max and sum of exps, pass 2 the loss and
B = Σ_c a_c·ψ_c, pass 3 the gradient s·(a_j·ψ_j - p_j·B) (passes 2 and 3 from L2; scalar
exp/expm1/pow per element).

The sigmoid focal loop reuses BCE-with-logits' vectorisable pieces (`_exp.vexp` for exp(-|x|),
`_bce._log1p_01` for softplus): ce = (1-y)·x + softplus(-x), m = y·σ(-x) + (1-y)·σ(x),
loss = α_t·ce·m^γ, grad = s·α_t·[(σ(x) - y)·m^γ + ce·γ·m^(γ-1)·(1-2y)·σ(x)·σ(-x)].

Non-finite rows (a NaN or +inf, or all -inf) give NaN loss and gradient, as cross-entropy's;
ignored rows give 0.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .. import _buffers
from . import _half
from ._bce import _log1p_01
from ._exp import vexp
from ._half import F32, from_f32, is_tagged, load, operand_to_f32, put, to_f32
from ._rows import (
    _block_maxima,
    _fill_row,
    _finish_blocks,
    _finish_range,
    _max_sum_exp,
    _max_sum_exp_store,
    _scratch,
    _store_block,
    _work_row,
)
from ._threads import run_rows

__all__ = ["focal_index", "focal_prob", "sigmoid_focal"]

_jit = numba.njit(cache=True)
_jit_inline = numba.njit(cache=True, inline="always")
_jit_rows = numba.njit(nogil=True, cache=True)


@_jit
def _terms(logp, gamma, epsilon):
    """(φ, ψ, p) at one log-probability (float64): φ = -(1-p)^γ·log p + ε·(1-p),
    ψ = -(1-p)^γ·(1 - γ·p·log p/(1-p)) - ε·p; 1-p = -expm1(log p) above p = 1/2; p·log p/(1-p)
    at its limits -1 (p = 1) and 0 (p = 0)."""
    p = vexp(logp)
    q = 1.0 - p if p <= 0.5 else -math.expm1(logp)  # (1 - p exact enough below 1/2)
    if gamma == 0.0:
        phi = -logp
        psi = -1.0
    else:
        qg = q * q if gamma == 2.0 else q**gamma
        pl = p * logp if p > 0.0 else 0.0
        r = pl / q if q > 0.0 else -1.0
        phi = -qg * logp
        psi = -qg * (1.0 - gamma * r)
    if epsilon != 0.0:
        phi += epsilon * q
        psi -= epsilon * p
    return phi, psi, p


@_jit_inline
def _index_row(i, x, target, ign, w, gamma, epsilon, sc, g, loss, work, mbuf, grad):
    """Row i, index target, no smoothing: loss = w_t·φ(p_t), grad = -s·w_t·ψ(p_t)·(p - e_t)."""
    C = x.shape[1]
    dt = w.dtype.type
    t = target[i]
    if t == ign:
        _fill_row(i, g, grad, loss, 0.0)
        return
    if t < 0 or t >= C:  # impossible after validation; never index out of bounds
        _fill_row(i, g, grad, loss, np.nan)
        return
    r = x[i]
    z_t = np.float64(load(r, t))
    bl = _store_block(r)
    mblk = mbuf[: (C + bl - 1) // bl]
    if grad:
        m, s = _max_sum_exp_store(r, work, False, mblk, bl)
    else:
        m, s = _max_sum_exp(r, mbuf)
    if not math.isfinite(s):
        _fill_row(i, g, grad, loss, np.nan)
        return
    logp = (z_t - np.float64(m)) - math.log(np.float64(s))
    phi, psi, _ = _terms(logp, gamma, epsilon)
    w_t = np.float64(w[t])
    loss[i] = w_t * phi
    if grad:
        a = -w_t * psi * np.float64(sc[i])  # coefficient of (p - e_t)
        c = a / np.float64(s)
        gr = g[i]
        half = is_tagged(x)
        _finish_blocks(work, gr, not half, m, mblk, bl, c, 0.0, w, False)
        if half:  # the target's entry finished in work too, then rounded once
            _finish_range(work, work, True, m, mblk, bl, c, 0.0, w, False, t, t + 1)
            put(gr, t, work[t] - dt(a))
        else:
            work[t] -= dt(a)


@_jit
def _dense_pass(r, yr, prob, t, w, a1, a0, m, log_s, gamma, epsilon, write, out, sc, b):
    """Over one row: (Σ_c a_c·φ_c, Σ_c a_c·ψ_c), or with ``write`` out_c = sc·(a_c·ψ_c - p_c·b);
    a_c = w_c·(a1·y_c + a0), y the probability row or the one-hot of ``t``."""
    loss = 0.0
    acc = 0.0
    for j in range(r.shape[0]):
        logp = (np.float64(load(r, j)) - m) - log_s
        if prob:
            yj = np.float64(load(yr, j))
        else:
            yj = 1.0 if j == t else 0.0
        a = np.float64(w[j]) * (a1 * yj + a0)
        phi, psi, p = _terms(logp, gamma, epsilon)
        if write:
            put(out, j, sc * (a * psi - p * b))
        else:
            loss += a * phi
            acc += a * psi
    return loss, acc


@_jit_inline
def _dense_row(i, x, prob, target, ign, y, w, a1, a0, gamma, epsilon, sc, g, loss, mbuf, grad):
    """Row i with label smoothing or probability targets (three passes, see the module)."""
    C = x.shape[1]
    t = -1
    if not prob:
        t = target[i]
        if t == ign:
            _fill_row(i, g, grad, loss, 0.0)
            return
        if t < 0 or t >= C:
            _fill_row(i, g, grad, loss, np.nan)
            return
    r = x[i]
    m, s = _max_sum_exp(r, mbuf)
    if not math.isfinite(s):
        _fill_row(i, g, grad, loss, np.nan)
        return
    log_s = math.log(np.float64(s))
    mf = np.float64(m)
    yr = y[i] if prob else y[0]
    li, b = _dense_pass(r, yr, prob, t, w, a1, a0, mf, log_s, gamma, epsilon, False, r, 0.0, 0.0)
    loss[i] = li
    if grad:
        _dense_pass(r, yr, prob, t, w, a1, a0, mf, log_s, gamma, epsilon, True, g[i],
                    np.float64(sc[i]), b)


def _make_index_rows(grad):
    @_jit_rows
    def index_rows(x, target, ign, w, gamma, epsilon, sc, g, loss, lo, hi):
        """:func:`_index_row` over rows [lo, hi) (float rows or 16-bit tag views)."""
        work = _scratch(x, x.shape[1] if grad and is_tagged(x) else 0)
        mbuf = _block_maxima(x)
        for i in range(lo, hi):
            er = _work_row(g, i, work) if grad else work[0]
            _index_row(i, x, target, ign, w, gamma, epsilon, sc, g, loss, er, mbuf, grad)

    return index_rows


#: The index-target drivers, by ``grad``.
INDEX_ROWS = {grad: _make_index_rows(grad) for grad in (False, True)}


@_jit_rows
def dense_rows(x, prob, target, ign, y, w, a1, a0, gamma, epsilon, sc, g, grad, loss, lo, hi):
    """:func:`_dense_row` over rows [lo, hi)."""
    mbuf = _block_maxima(x)
    for i in range(lo, hi):
        _dense_row(i, x, prob, target, ign, y, w, a1, a0, gamma, epsilon, sc, g, loss, mbuf,
                   grad)


# -- sigmoid focal loss ---------------------------------------------------------------------------

def _make_sigmoid(mode, has_alpha):
    """(rows, rows16) drivers of the sigmoid focal loop for the exponent ``mode`` (0: γ = 0,
    2: γ = 2, 1: any other γ, through pow) and ``has_alpha`` (α >= 0), both constants of the
    compiled code, so the loops for γ = 0 and γ = 2 have no call and no branch (SIMD)."""

    @numba.njit(fastmath={"contract"}, error_model="numpy", cache=True)
    def loop(x, y, alpha, gamma, scale, g, has_g, loss):
        """One row: every operand a contiguous (K,) array; see the module."""
        dt = loss.dtype.type
        for j in range(x.shape[0]):
            xv = np.float64(x[j])
            yv = np.float64(y[j])
            z = vexp(-abs(xv))
            neg = -xv
            ce = (1.0 - yv) * xv + ((neg if neg > 0.0 else 0.0) + _log1p_01(z))
            inv = 1.0 / (1.0 + z)
            sig = inv if xv >= 0 else z * inv  # σ(x)
            sgn = z * inv if xv >= 0 else inv  # σ(-x)
            mq = yv * sgn + (1.0 - yv) * sig  # 1 - p_t
            if mode == 2:
                mod = mq * mq
            elif mode == 0:
                mod = 1.0
            else:
                mod = mq**gamma
            at = alpha * yv + (1.0 - alpha) * (1.0 - yv) if has_alpha else 1.0
            loss[j] = dt(at * ce * mod)
            if has_g:
                gv = (sig - yv) * mod
                if mode == 2:
                    gv += ce * (2.0 * mq) * ((1.0 - 2.0 * yv) * sig * sgn)
                elif mode == 1 and mq > 0.0:  # (0 at m = 0: the limit)
                    gv += ce * (gamma * mq ** (gamma - 1.0)) * ((1.0 - 2.0 * yv) * sig * sgn)
                g[j] = at * gv * np.float64(scale[j])

    @_jit_rows
    def rows(x, y, alpha, gamma, scale, g, has_g, loss, lo, hi):
        for i in range(lo, hi):
            loop(x[i], y[i], alpha, gamma, scale[i if scale.shape[0] > 1 else 0],
                 g[i] if has_g else g[0], has_g, loss[i])

    @_jit_rows
    def rows16(x, kind, y16, y32, ykind, alpha, gamma, scale, g, has_g, loss, lo, hi):
        """``rows`` on 16-bit ``x`` and ``g`` (uint16 bits of ``kind``); ``y`` 16-bit
        (``y16``) or float32 (``y32``, ykind F32)."""
        K = x.shape[1]
        xb = np.empty(K, np.float32)
        yb = np.empty(K, np.float32)
        gb = np.empty(K if has_g else 1, np.float32)
        f32 = ykind == F32
        for i in range(lo, hi):
            to_f32(x[i], kind, xb)
            operand_to_f32(y16[0 if f32 else i], y32[i if f32 else 0], ykind, yb)
            loop(xb, yb, alpha, gamma, scale[i if scale.shape[0] > 1 else 0], gb, has_g,
                 loss[i])
            if has_g:
                from_f32(gb, kind, g[i])

    return rows, rows16


#: The sigmoid focal drivers (rows, rows16), by (γ mode, α >= 0).
SIGMOID_ROWS = {(mode, a): _make_sigmoid(mode, a) for mode in (0, 1, 2) for a in (False, True)}


# -- host functions (the backend contract; never validate) ---------------------------------------

def _compute_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if _half.kind_of(dt) is not None else dt


def _scale_rows(scale, M: int, dt: np.dtype) -> np.ndarray:
    """A row scale (None, a scalar or (M,)) as a contiguous (M,) array."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(0 if scale is None else scale, dt),
                                                (M,)))


def _ignore(ignore_index) -> np.int64:
    """``ignore_index`` as an int64 no valid target equals (int64's minimum for None)."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    v = lo if ignore_index is None else int(ignore_index)
    return np.int64(v if lo <= v <= hi else lo)


def _kernel_operands(x, grad_out):
    """(xk, gk, g, copy_back): the logits as the kernels read them (tag view for 16-bit), the
    gradient buffer's view and the buffer itself (a dummy without), and the caller's buffer
    when the gradient could not be written into it directly."""
    xc = np.ascontiguousarray(x)
    xk = _half.tagged(xc)
    if grad_out is None:
        return xk, np.empty((1, 1), xk.dtype), None, None
    if (grad_out.flags.c_contiguous and grad_out.dtype == x.dtype
            and not np.may_share_memory(grad_out, xc)):
        return xk, _half.tagged(grad_out), grad_out, None
    g = np.empty(xc.shape, x.dtype)
    return xk, _half.tagged(g), g, grad_out


def _rows_call(x, target, y, weight, ignore_index, label_smoothing, gamma, epsilon, row_scale,
               grad_out):
    M, C = x.shape
    dt = _compute_dtype(x.dtype)
    loss = np.empty(M, dt)
    if M == 0 or C == 0:
        if grad_out is not None:
            grad_out[...] = 0
        return np.zeros(M, dt)
    w = np.ones(C, dt) if weight is None else np.ascontiguousarray(weight, dt)
    sc = _scale_rows(row_scale, M, dt)
    xk, gk, g, copy_back = _kernel_operands(x, grad_out)
    grad = grad_out is not None
    prob = y is not None
    tgt = np.zeros(1, np.int64) if prob else np.ascontiguousarray(target, np.int64)
    ign = _ignore(ignore_index)
    eps = float(label_smoothing)
    if not prob and eps == 0:
        run_rows(INDEX_ROWS[grad], M, C, (xk, tgt, ign, w, float(gamma), float(epsilon), sc, gk,
                                          loss))
    else:
        yk = (np.ascontiguousarray(np.broadcast_to(y, (M, C)), dt) if prob
              else np.zeros((1, 1), dt))
        run_rows(dense_rows, M, C, (xk, prob, tgt, ign, yk, w, 1.0 - eps, eps / C, float(gamma),
                                    float(epsilon), sc, gk, grad, loss))
    if copy_back is not None:
        copy_back[...] = g
    return loss


def focal_index(x, target, weight, ignore_index, label_smoothing, gamma, epsilon, row_scale,
                grad_out):
    """Focal / poly-1 loss per row with class-index targets (``_backend_numpy.focal_index``):
    loss (M,) in the compute dtype; the gradient into ``grad_out`` (x's dtype)."""
    return _rows_call(x, target, None, weight, ignore_index, label_smoothing, gamma, epsilon,
                      row_scale, grad_out)


def focal_prob(x, y, weight, label_smoothing, gamma, epsilon, row_scale, grad_out):
    """Focal / poly-1 loss per row with class-probability targets ``y`` (M, C)
    (``_backend_numpy.focal_prob``)."""
    return _rows_call(x, None, y, weight, None, label_smoothing, gamma, epsilon, row_scale,
                      grad_out)


def sigmoid_focal(x, y, alpha, gamma, scale, grad_out):
    """torchvision's sigmoid focal loss elementwise on (M, K) (``_backend_numpy.sigmoid_focal``):
    ``scale`` None, a scalar or (M, K). Returns the loss (M, K) in the compute dtype."""
    M, K = x.shape
    kind = _half.kind_of(x.dtype)
    cdt = _compute_dtype(x.dtype)
    if M == 0 or K == 0:
        return np.zeros((M, K), cdt)
    has_g = grad_out is not None
    if scale is None or np.ndim(scale) == 0:
        sc = np.full((1, K), 0 if scale is None else scale, cdt)
    else:
        sc = np.ascontiguousarray(np.broadcast_to(np.asarray(scale, cdt), (M, K)))
    if has_g and grad_out.flags.c_contiguous and grad_out.dtype == x.dtype:
        g, copy_back = grad_out, None  # elementwise: writing over x is safe
    elif has_g:
        g, copy_back = np.empty((M, K), x.dtype), grad_out
    else:
        g, copy_back = np.empty((1, K), x.dtype), None
    loss = _buffers.empty((M, K), cdt)
    mode = 0 if gamma == 0 else 2 if gamma == 2 else 1
    rows, rows16 = SIGMOID_ROWS[mode, alpha >= 0]
    a, gm = float(alpha), float(gamma)
    if kind is None:
        xc = np.ascontiguousarray(x)
        yc = np.ascontiguousarray(np.broadcast_to(np.asarray(y, cdt), (M, K)))
        run_rows(rows, M, K, (xc, yc, a, gm, sc, g, has_g, loss))
    else:
        y16, y32, ykind = _half.operand(y, (M, K))
        run_rows(rows16, M, K, (_half.bits(np.ascontiguousarray(x)), kind, y16, y32, ykind, a,
                                gm, sc, _half.bits(g), has_g, loss))
    if copy_back is not None:
        copy_back[...] = g
    return loss
