"""Numba row kernels for the cross-entropy options: soft-capping, z-loss and the log-sum-exp.

The fused counterpart of ``xent.torch._rows.rows_index`` / ``rows_prob`` (the torch-op row math,
which stays the definition and the fallback). Each works in place on a C-contiguous block
``z`` ``(M, C)`` of logits, one row at a time, parallel over rows (``_threads.run_rows``)::

    z ← cap·tanh(z/cap)                                   (if a cap is given, in place)
    lse = log Σ_c exp(z_c)
    index target t:  ce = (1-ε)·w_t·(lse - z_t) + (ε/C)·Σ_c w_c·(lse - z_c)      (0 if ignored)
    prob. target y:  ce = -Σ_c w_c·y'_c·(z_c - lse),   y' = (1-ε)·y + ε/C

and, when the gradient is asked for, overwrites ``z`` with d/dz of
Σ_i s_ce,i·ce_i + s_z,i·ζ·lse_i² (ζ = ``zscale``; ignored rows contribute nothing)::

    g = [p·(a + b·W + 2·s_z·ζ·lse) - a·e_t - b·w]·(1 - (z/cap)²)   a = s_ce·(1-ε)·w_t, b = s_ce·ε/C
    g = [p·(s_ce·Σ_c w_c y'_c + 2·s_z·ζ·lse) - s_ce·w∘y']·(1 - (z/cap)²)        (probabilities)

with p = softmax(z) of the capped logits, W = Σ_c w_c; the cap's chain-rule factor
1 - tanh²(z/cap) is recomputed from the capped value instead of being kept in a second buffer.

A row is read from memory once: pass 1 caps it block by block (``_BLOCK`` values, in L1) and
runs the online max / sum-of-exp of ``_rows._max_sum_exp`` on each capped block; pass 2 (from
L2) writes the gradient and accumulates Σ_c w_c·(z_c - m) (or Σ_c w_c y'_c (z_c - m)) for the
loss in the same loop. Without the gradient, pass 2 runs only for smoothing or probabilities.

Non-finite rows: rows containing NaN or +inf, or entirely -inf (only NaN survives a cap), take
a scalar path that repeats the torch-op formulas element by element (``torch.logsumexp``: +inf
for a row with +inf, -inf for an all -inf row, NaN with a NaN), so the loss, lse and gradient have
NaN and inf exactly where ``rows_index``/``rows_prob`` have them. Ignored rows get the torch-op
loss 0·(lse - z_0) (+ (ε/C)·(W·lse - Σ w_c z_c)·0), i.e. 0 except NaN when that row has -inf
entries with smoothing or a non-finite value at class 0, as the torch-op path gives. Finite rows
with some -inf entries are ordinary (exp(-inf) = 0).

Fast-math: loops use ``reassoc``/``contract``/``nsz`` only (never ``nnan``/``ninf``); the
finiteness checks are made outside them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._exp import vexp, vtanh
from ._rows import _BLOCK, _FAST, _dot, _dot_shift, _fill, _has_nan, _max, _prob_loss, _sum_exp

_jit = numba.njit(cache=True)
_jit_fast = numba.njit(fastmath=_FAST, cache=True)
_jit_vec = numba.njit(fastmath={"contract"}, error_model="numpy", cache=True)


# ---------------------------------------------------------------------------------------------
# Loops over one row or block (each vectorised).
# ---------------------------------------------------------------------------------------------
@_jit_vec
def _cap(r, cap):
    """r_c ← cap·tanh(r_c/cap)."""
    for j in range(r.shape[0]):
        r[j] = cap * vtanh(r[j] / cap)


@_jit
def _cap_max_sum_exp(r, cap, has_cap):
    """Pass 1 over the row: cap it in place (all of it, always), then (m, s) with m = max_c r_c
    and s = Σ_c exp(r_c - m) online over blocks, as ``_rows._max_sum_exp``; s = NaN when the row
    has a NaN or +inf, or is all -inf."""
    C = r.shape[0]
    dt = r.dtype.type
    m = dt(-np.inf)
    s = dt(0)
    bad = False
    for lo in range(0, C, _BLOCK):
        blk = r[lo : min(lo + _BLOCK, C)]
        if has_cap:
            _cap(blk, cap)
        if bad:
            continue
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            bad = True
            continue
        if mb == -np.inf:  # adds exactly 0, unless a (negative) NaN hides among the -inf
            bad = _has_nan(blk)
            continue
        if mb > m:
            s = s * dt(math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        s += _sum_exp(blk, m)
    if bad or m == -np.inf:
        return m, dt(np.nan)
    return m, s


@_jit_fast
def _grad_index(r, w, m, c, b):
    """r_c ← exp(r_c - m)·c - b·w_c; returns Σ_c w_c·(r_c - m) of the values read."""
    acc = r.dtype.type(0)
    for j in range(r.shape[0]):
        d = r[j] - m
        acc += w[j] * d
        r[j] = vexp(d) * c - b * w[j]
    return acc


@_jit_fast
def _grad_index_cap(r, w, m, c, b, inv_cap):
    """As :func:`_grad_index`, times the cap's factor 1 - (r_c/cap)²."""
    acc = r.dtype.type(0)
    one = r.dtype.type(1)
    for j in range(r.shape[0]):
        z = r[j]
        d = z - m
        acc += w[j] * d
        q = z * inv_cap
        r[j] = (vexp(d) * c - b * w[j]) * (one - q * q)
    return acc


@_jit_fast
def _grad_prob(r, y, w, m, a1, a0, c, sc):
    """r_c ← exp(r_c - m)·c - sc·w_c·y'_c, y' = a1·y + a0; returns Σ_c w_c·y'_c·(r_c - m)."""
    acc = r.dtype.type(0)
    for j in range(r.shape[0]):
        d = r[j] - m
        wy = w[j] * (a1 * y[j] + a0)
        acc += wy * d
        r[j] = vexp(d) * c - sc * wy
    return acc


@_jit_fast
def _grad_prob_cap(r, y, w, m, a1, a0, c, sc, inv_cap):
    """As :func:`_grad_prob`, times the cap's factor 1 - (r_c/cap)²."""
    acc = r.dtype.type(0)
    one = r.dtype.type(1)
    for j in range(r.shape[0]):
        z = r[j]
        d = z - m
        wy = w[j] * (a1 * y[j] + a0)
        acc += wy * d
        q = z * inv_cap
        r[j] = (vexp(d) * c - sc * wy) * (one - q * q)
    return acc


# ---------------------------------------------------------------------------------------------
# Non-finite rows: the torch-op formulas, element by element (rare rows; scalar code).
# ---------------------------------------------------------------------------------------------
@_jit
def _torch_lse(r):
    """``torch.logsumexp`` of one row: NaN with a NaN; otherwise the max m, replaced by 0 when
    it is ±inf, and m + log Σ exp(r - m) (so +inf with a +inf, -inf when all are -inf)."""
    m = -np.inf
    for j in range(r.shape[0]):
        v = np.float64(r[j])
        if v != v:
            return np.nan
        m = max(m, v)
    if math.isinf(m):
        m = 0.0
    s = 0.0
    for j in range(r.shape[0]):
        s += math.exp(np.float64(r[j]) - m)
    return m + math.log(s)


@_jit
def _torch_grad(r, lse, coef, k, a, b, w, y, a1, a0, has_y, cap, has_cap):
    """r_c ← [exp(r_c - lse)·coef - b·w_c(·y'_c) - a·[c == k]]·(1 - (r_c/cap)²), torch's order."""
    for j in range(r.shape[0]):
        z = np.float64(r[j])
        g = math.exp(z - lse) * coef
        if j == k:
            g -= a
        wj = np.float64(w[j])
        if has_y:
            wj *= a1 * np.float64(y[j]) + a0
        g -= b * wj
        if has_cap:
            q = z / cap
            g *= 1.0 - q * q
        r[j] = g


@_jit
def _slow_index_row(r, t, valid, w, wsum, eps, zscale, cap, has_cap, sce, sz, grad):
    """(loss, lse) of a non-finite row, gradient into r: ``rows_index``'s formulas."""
    C = r.shape[0]
    lse = _torch_lse(r)
    vf = 1.0 if valid else 0.0
    zt = np.float64(r[t])
    wt = np.float64(w[t]) * vf
    loss = (1.0 - eps) * wt * (lse - zt)
    if eps > 0:
        wz = 0.0
        for j in range(C):
            wz += np.float64(w[j]) * np.float64(r[j])
        loss += (eps / C) * (wsum * lse - wz) * vf
    if grad:
        coef = sce * ((1.0 - eps) * wt + (eps / C) * wsum * vf)
        if zscale:
            coef += sz * (2.0 * zscale) * lse * vf
        a = sce * (1.0 - eps) * wt
        b = sce * vf * (eps / C)
        _torch_grad(r, lse, coef, t, a, b, w, w, 1.0, 0.0, False, cap, has_cap)
    return loss, lse


@_jit
def _slow_prob_row(r, yr, w, a1, a0, zscale, cap, has_cap, sce, sz, grad):
    """(loss, lse) of a non-finite row, gradient into r: ``rows_prob``'s formulas."""
    lse = _torch_lse(r)
    swy = 0.0
    wyz = 0.0
    for j in range(r.shape[0]):
        wy = np.float64(w[j]) * (a1 * np.float64(yr[j]) + a0)
        swy += wy
        wyz += wy * np.float64(r[j])
    loss = lse * swy - wyz
    if grad:
        coef = sce * swy
        if zscale:
            coef += sz * (2.0 * zscale) * lse
        _torch_grad(r, lse, coef, -1, 0.0, sce, w, yr, a1, a0, True, cap, has_cap)
    return loss, lse


# ---------------------------------------------------------------------------------------------
# One row.
# ---------------------------------------------------------------------------------------------
@_jit
def _index_row(i, z, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, sce, sz, grad,
               loss, lse_out):
    r = z[i]
    C = r.shape[0]
    dt = r.dtype.type
    t = target[i]
    valid = t != ignore_index
    if valid and (t < 0 or t >= C):  # impossible after validation; never index out of bounds
        loss[i] = np.nan
        lse_out[i] = np.nan
        if grad:
            _fill(r, dt(np.nan))
        return
    tt = t if valid else 0
    m, s = _cap_max_sum_exp(r, dt(cap), has_cap)
    if not math.isfinite(s):
        li, lse = _slow_index_row(r, tt, valid, w, wsum, eps, zscale, cap, has_cap,
                                  np.float64(sce[i]), np.float64(sz[i]), grad)
        loss[i] = li
        lse_out[i] = lse
        return
    log_s = math.log(np.float64(s))  # lse - m
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    zt = np.float64(r[tt])
    if not valid:  # torch-op path: 0·(lse - z_0) (+ (ε/C)·(W·lse - Σ w_c z_c)·0); gradient 0
        li = (1.0 - eps) * (np.float64(w[0]) * 0.0) * (lse - zt)
        if eps > 0:
            li += (eps / C) * (wsum * lse - np.float64(_dot(r, w))) * 0.0
        loss[i] = li
        if grad:
            _fill(r, dt(0))
        return
    wt = np.float64(w[tt])
    wd = 0.0  # Σ_c w_c·(z_c - m)
    if grad:
        sc = np.float64(sce[i])
        a = sc * (1.0 - eps) * wt  # coefficient of -e_t
        b = sc * (eps / C)  # coefficient of -w
        coef = a + b * wsum
        if zscale:
            coef += np.float64(sz[i]) * (2.0 * zscale) * lse
        c = dt(coef / np.float64(s))
        if has_cap:
            wd = np.float64(_grad_index_cap(r, w, m, c, dt(b), dt(1.0 / cap)))
            q = zt / cap
            r[tt] -= dt(a * (1.0 - q * q))
        else:
            wd = np.float64(_grad_index(r, w, m, c, dt(b)))
            r[tt] -= dt(a)
    elif eps > 0:
        wd = np.float64(_dot_shift(r, w, m))
    # In coordinates shifted by m: lse - z_t = log s - (z_t - m), no cancellation at large z.
    li = (1.0 - eps) * wt * (log_s - (zt - np.float64(m)))
    if eps > 0:
        li += (eps / C) * (wsum * log_s - wd)
    loss[i] = li


@_jit
def _prob_row(i, z, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, grad, loss, lse_out):
    r = z[i]
    yr = y[i]
    dt = r.dtype.type
    m, s = _cap_max_sum_exp(r, dt(cap), has_cap)
    if not math.isfinite(s):
        li, lse = _slow_prob_row(r, yr, w, np.float64(a1), np.float64(a0), zscale, cap, has_cap,
                                 np.float64(sce[i]), np.float64(sz[i]), grad)
        loss[i] = li
        lse_out[i] = lse
        return
    log_s = math.log(np.float64(s))
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    tot = np.float64(a1) * np.float64(_dot(yr, w)) + np.float64(a0) * wsum  # Σ_c w_c y'_c
    if grad:
        sc = np.float64(sce[i])
        coef = sc * tot
        if zscale:
            coef += np.float64(sz[i]) * (2.0 * zscale) * lse
        c = dt(coef / np.float64(s))
        if has_cap:
            acc = _grad_prob_cap(r, yr, w, m, a1, a0, c, dt(sc), dt(1.0 / cap))
        else:
            acc = _grad_prob(r, yr, w, m, a1, a0, c, dt(sc))
    else:
        acc = _prob_loss(r, yr, w, m, a1, a0)
    # -Σ w y' (z - lse) = T·log s - Σ w y' (z - m), T = Σ w y'.
    loss[i] = tot * log_s - np.float64(acc)


# ---------------------------------------------------------------------------------------------
# Drivers over rows [lo, hi), GIL released (see _threads.run_rows).
# ---------------------------------------------------------------------------------------------
_jit_rows = numba.njit(nogil=True, cache=True)


# With ``has_src``, row i of ``src`` is first copied into row i of ``z`` (the caller's logits into
# the block the kernel works in): the row then crosses memory once, instead of once for a separate
# copy of the whole block and once more here.
@_jit_vec
def _copy(src, dst):
    """dst_c = src_c."""
    for j in range(src.shape[0]):
        dst[j] = src[j]


@_jit_rows
def ce_index_options_rows(z, src, has_src, target, w, wsum, ignore_index, eps, zscale, cap,
                          has_cap, sce, sz, grad, loss, lse, lo, hi):
    for i in range(lo, hi):
        if has_src:
            _copy(src[i], z[i])
        _index_row(i, z, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, sce, sz, grad,
                   loss, lse)


@_jit_rows
def ce_prob_options_rows(z, src, has_src, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz,
                         grad, loss, lse, lo, hi):
    for i in range(lo, hi):
        if has_src:
            _copy(src[i], z[i])
        _prob_row(i, z, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, grad, loss, lse)
