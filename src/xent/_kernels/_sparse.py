"""Numba kernels of sparsemax, 1.5-entmax and α-entmax (bisection): maps, VJPs, losses.

The threshold τ without a sort. Every map is shift-invariant and its largest probability is at
most 1, so with m = max_c x_c the support lies among the *candidates* z_c = x_c - m above a
fixed bound (sparsemax: z > -1; 1.5-entmax: z > -2; α-entmax: (α-1) z > -1). A row takes

1. ``m``: the exact vectorised max of ``_rows._max`` (the row read from memory);
2. the candidates' z copied into a float64 scratch row: blocks of 64 whose max is at or
   below the bound are skipped after a vectorised max (from L2), the few others compacted;
3. τ from the candidates alone (usually tens of values for rows of thousands of logits):
   sparsemax: Michelot's iteration τ <- (Σ_S z - 1)/|S|, S = {z > τ}, from τ = -1 (each step
   only shrinks S, exact once S stops changing); 1.5-entmax: Newton's method on the convex,
   decreasing f(τ) = Σ_S (z/2 - τ)² - 1 from τ = -1 (never past the root), finished exactly by
   the closed form of the quadratic on S once every member of S is above its root; α-entmax:
   the ``entmax`` package's ``n_iter`` bisection steps (entries that are no candidates add 0 at
   every step, so the steps are the package's exactly);
4. the output written (sparsemax: max(z - τ, 0); 1.5-entmax: max(z/2 - τ, 0)²; α-entmax the
   package's power, divided by its sum), from L2.

So a row is read from memory once and written once. τ is solved in float64 for every storage
dtype; the output is computed in the compute dtype (float32 for 16-bit storage, rounded once
as it is stored through ``_half.put``). A row whose max is NaN or +inf, or all -inf, or that
holds a NaN (counted by the writing pass), gets NaN everywhere (as the NumPy reference, the
``entmax`` package and softmax).

The VJPs are two passes over (g, y): Σ w·g and Σ w, then w·(g - q) with w = [y > 0]·y^(2-α)
(sparsemax 1, 1.5-entmax sqrt(y)). The losses run 1-3, then one pass that writes the gradient
s·(p - e_t) (forward only: a pass that counts NaN), and sum Σ p^α and Σ p·z over the
candidates in float64, so the probabilities are never stored.

Threads: the drivers take a row range and release the GIL (``_threads.run_rows``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _half
from ._half import compute, load, put
from ._rows import _max
from ._threads import run_rows

_jit = numba.njit(cache=True)
_jit_fast = numba.njit(fastmath={"reassoc", "contract", "nsz"}, cache=True)
# The writing loops: FMA contraction only. Reassociation would turn (x - m) - τ into
# x - (m + τ), which rounds τ away next to a large max (float32 [1e8, 1e8]: 0 instead of 0.5).
_jit_vec = numba.njit(fastmath={"contract"}, cache=True)
_jit_inline = numba.njit(cache=True, inline="always")
_jit_rows = numba.njit(nogil=True, cache=True)

SPARSEMAX, ENTMAX15, BISECT = 0, 1, 2


# Blocks of the candidate pass: a block whose (vectorised, exact) max is not above the bound
# holds no candidate and is skipped; only the few blocks near the max are compacted.
_CBLOCK = 64


@_jit
def _candidates(r, m, bound, cand, kind):
    """cand[:n] = the z = r_c - m above ``bound`` (float64), a superset of the support;
    returns n. Blocks of `_CBLOCK` whose max is at or below the bound are skipped; within a
    block the compaction is branch-free (every z is stored, the count advances only for a
    candidate). Sparsemax and 1.5-entmax raise the bound on the way: τ solved on the
    candidates found so far is a lower bound of the row's τ (more entries only raise it), so
    whenever their count doubles the bound becomes that τ (in z's units) and the list is
    compacted: later blocks are then skipped against a bound next to the row's τ (1.5-entmax
    on N(0, 1) logits at C = 32768: ~600 entries above -2, a support of tens)."""
    n = 0
    limit = 64
    C = r.shape[0]
    for lo in range(0, C, _CBLOCK):
        hi = min(lo + _CBLOCK, C)
        if np.float64(_max(r[lo:hi])) - m > bound:
            for j in range(lo, hi):
                z = np.float64(load(r, j)) - m
                cand[n] = z
                n += z > bound
            if kind != BISECT and n >= limit:
                if kind == SPARSEMAX:
                    b = _sparsemax_tau(cand, n)
                else:
                    b = 2.0 * _entmax15_tau(cand, n)
                if b > bound:
                    bound = b
                    k = 0
                    for j in range(n):
                        z = cand[j]
                        cand[k] = z
                        k += z > bound
                    n = k
                limit = max(limit, 2 * n)
    return n


@_jit
def _sparsemax_tau(cand, n):
    """τ of Σ max(z - τ, 0) = 1 over cand[:n] (Michelot 1986): exact."""
    tau = -1.0
    k_prev = -1
    for _ in range(n + 1):
        s = 0.0
        k = 0
        for j in range(n):
            z = cand[j]
            if z > tau:
                s += z
                k += 1
        if k == k_prev:
            break
        k_prev = k
        tau = (s - 1.0) / k
    return tau


@_jit
def _entmax15_tau(cand, n):
    """τ of Σ max(z/2 - τ, 0)² = 1 over cand[:n]: Newton from below, finished exactly."""
    tau = -1.0
    for _ in range(200):
        k = 0
        sd = 0.0
        sd2 = 0.0
        amin = np.inf
        for j in range(n):
            a = 0.5 * cand[j]
            if a > tau:
                d = a - tau
                k += 1
                sd += d
                sd2 += d * d
                amin = min(amin, a)
        mean = sd / k
        delta = (1.0 - (sd2 - sd * mean)) / k
        if delta >= 0:
            tc = tau + mean - math.sqrt(delta)  # the smaller root of Σ_S (a - τ)² = 1
            if amin >= tc:
                return tc
        step = (sd2 - 1.0) / (2.0 * sd)
        if not step > 0:
            return tau
        tau += step
    return tau


@_jit
def _bisect_tau(cand, n, am1, inv, n_iter, C):
    """The package's bisection: (τ_m of the last step, Σ p at it); X = (α-1)·z."""
    tau_lo = -1.0
    dm = -((1.0 / C) ** am1) - tau_lo
    tau_m = tau_lo
    s = 0.0
    for _ in range(n_iter):
        dm /= 2
        tau_m = tau_lo + dm
        s = 0.0
        for j in range(n):
            v = am1 * cand[j] - tau_m
            if v > 0:
                s += v ** inv
        if s - 1.0 >= 0:
            tau_lo = tau_m
    return tau_m, s


@_jit_inline
def _bound(kind, am1):
    if kind == SPARSEMAX:
        return -1.0
    if kind == ENTMAX15:
        return -2.0
    return -1.0 / am1


@_jit_inline
def _threshold(r, cand, kind, am1, inv, n_iter):
    """(m, τ, Σ p before normalising (α-entmax; 1 otherwise), the candidates' count n (in
    cand[:n]), ok) of row ``r``."""
    m = np.float64(_max(r))
    if m != m or m == np.inf or m == -np.inf:
        return m, 0.0, 1.0, 0, False
    n = _candidates(r, m, _bound(kind, am1), cand, kind)
    if kind == SPARSEMAX:
        return m, _sparsemax_tau(cand, n), 1.0, n, True
    if kind == ENTMAX15:
        return m, _entmax15_tau(cand, n), 1.0, n, True
    tau, s = _bisect_tau(cand, n, am1, inv, n_iter, r.shape[0])
    return m, tau, s, n, True


# The writing passes return the number of NaN entries they met (a NaN the max skipped: see
# `_rows._key_max`); the row is then filled with NaN.
@_jit_vec
def _write_sparsemax(r, out, m, tau):
    nan = 0
    for j in range(r.shape[0]):
        v = load(r, j)
        nan += v != v
        put(out, j, max((v - m) - tau, compute(r, 0.0)))
    return nan


@_jit_vec
def _write_entmax15(r, out, m, tau):
    nan = 0
    for j in range(r.shape[0]):
        v = load(r, j)
        nan += v != v
        t = max(compute(r, 0.5) * (v - m) - tau, compute(r, 0.0))
        put(out, j, t * t)
    return nan


@_jit
def _write_bisect(r, out, m, tau, am1, inv, s):
    nan = 0
    for j in range(r.shape[0]):
        x = np.float64(load(r, j))
        nan += x != x
        v = am1 * (x - m) - tau
        put(out, j, v ** inv / s if v > 0 else 0.0)
    return nan


@_jit
def _fill(out, v):
    for j in range(out.shape[0]):
        put(out, j, v)


def _make_map(kind):
    @_jit_rows
    def map_rows(x, out, am1, inv, n_iter, lo, hi):
        """The map of ``kind`` over rows [lo, hi) of ``x`` into ``out`` (may be ``x``)."""
        cand = np.empty(x.shape[1])
        for i in range(lo, hi):
            r = x[i]
            m, tau, s, _, ok = _threshold(r, cand, kind, am1, inv, n_iter)
            nan = 1
            if not ok:
                pass
            elif kind == SPARSEMAX:
                nan = _write_sparsemax(r, out[i], compute(r, m), compute(r, tau))
            elif kind == ENTMAX15:
                nan = _write_entmax15(r, out[i], compute(r, m), compute(r, tau))
            else:
                nan = _write_bisect(r, out[i], m, tau, am1, inv, s)
            if nan:
                _fill(out[i], np.nan)

    return map_rows


@_jit_inline
def _w_sparsemax(a, y, two_m_a):
    return compute(a, 1.0) if y > 0 else compute(a, 0.0)


@_jit_inline
def _w_entmax15(a, y, two_m_a):
    return compute(a, math.sqrt(max(y, compute(a, 0.0))))


@_jit_inline
def _w_bisect(a, y, two_m_a):
    return compute(a, y ** two_m_a) if y > 0 else compute(a, 0.0)


_WEIGHT = {SPARSEMAX: _w_sparsemax, ENTMAX15: _w_entmax15, BISECT: _w_bisect}


def _make_backward(kind):
    _weight = _WEIGHT[kind]

    @_jit_fast
    def sums(g, y, two_m_a):
        sw = compute(y, 0.0)
        swg = compute(y, 0.0)
        for j in range(y.shape[0]):
            w = _weight(y, load(y, j), two_m_a)
            sw += w
            swg += w * load(g, j)
        return sw, swg

    @_jit_fast
    def write(g, y, out, q, two_m_a):
        for j in range(y.shape[0]):
            put(out, j, _weight(y, load(y, j), two_m_a) * (load(g, j) - q))

    @_jit_rows
    def backward_rows(g, y, out, two_m_a, lo, hi):
        """w·(g - Σ w g / Σ w) over rows [lo, hi), w the weight of ``kind``."""
        for i in range(lo, hi):
            sw, swg = sums(g[i], y[i], two_m_a)
            write(g[i], y[i], out[i], swg / sw, two_m_a)

    return backward_rows


@_jit
def _fy_sums(cand, n, kind, tau, am1, inv, s):
    """(Σ p^α, Σ p·z) over the candidates (every member of the support is one), in float64."""
    spa = 0.0
    spz = 0.0
    for j in range(n):
        z = cand[j]
        if kind == SPARSEMAX:
            p = max(z - tau, 0.0)
            pa = p * p
        elif kind == ENTMAX15:
            h = max(0.5 * z - tau, 0.0)
            p = h * h
            pa = p * h
        else:
            v = am1 * z - tau
            p = v ** inv / s if v > 0 else 0.0
            pa = p ** (am1 + 1.0) if p > 0 else 0.0
        spa += pa
        spz += p * z
    return spa, spz


def _make_grad_pass(kind):
    """The gradient row scale·(p - e_t) of one row (p recomputed from τ, in the compute
    dtype; α-entmax in float64); returns the number of NaN entries met."""
    if kind == SPARSEMAX:

        @_jit_vec
        def grad_pass(r, grow, t, m64, tau64, am1, inv, s, scale64):
            m, tau, sc = compute(r, m64), compute(r, tau64), compute(r, scale64)
            zero = compute(r, 0.0)
            nan = 0
            for j in range(r.shape[0]):
                v = load(r, j)
                nan += v != v
                p = max((v - m) - tau, zero)
                put(grow, j, sc * p - (sc if j == t else zero))
            return nan

    elif kind == ENTMAX15:

        @_jit_vec
        def grad_pass(r, grow, t, m64, tau64, am1, inv, s, scale64):
            m, tau, sc = compute(r, m64), compute(r, tau64), compute(r, scale64)
            zero = compute(r, 0.0)
            half = compute(r, 0.5)
            nan = 0
            for j in range(r.shape[0]):
                v = load(r, j)
                nan += v != v
                h = max(half * (v - m) - tau, zero)
                put(grow, j, sc * (h * h) - (sc if j == t else zero))
            return nan

    else:

        @_jit
        def grad_pass(r, grow, t, m, tau, am1, inv, s, scale):
            nan = 0
            for j in range(r.shape[0]):
                x = np.float64(load(r, j))
                nan += x != x
                v = am1 * (x - m) - tau
                p = v ** inv / s if v > 0 else 0.0
                put(grow, j, scale * p - (scale if j == t else 0.0))
            return nan

    return grad_pass


@_jit
def _count_nan(r):
    nan = 0
    for j in range(r.shape[0]):
        v = load(r, j)
        nan += v != v
    return nan


def _make_loss(kind, grad):
    grad_pass = _make_grad_pass(kind)

    @_jit_rows
    def loss_rows(x, target, ignore, am1, inv, n_iter, scale, g, loss, lo, hi):
        """The Fenchel-Young loss of ``kind`` per row over [lo, hi); with ``grad``
        g[i] = scale[i]·(p - e_t); ignored rows (target == ignore) 0."""
        cand = np.empty(x.shape[1])
        alpha = am1 + 1.0
        for i in range(lo, hi):
            t = target[i]
            if t == ignore:
                loss[i] = 0.0
                if grad:
                    _fill(g[i], 0.0)
                continue
            r = x[i]
            m, tau, s, n, ok = _threshold(r, cand, kind, am1, inv, n_iter)
            if ok and 0 <= t < r.shape[0]:
                if grad:
                    nan = grad_pass(r, g[i], t, m, tau, am1, inv, s, scale[i])
                else:
                    nan = _count_nan(r)
                ok = nan == 0
            if not ok or not 0 <= t < r.shape[0]:
                loss[i] = np.nan
                if grad:
                    _fill(g[i], np.nan)
                continue
            spa, spz = _fy_sums(cand, n, kind, tau, am1, inv, s)
            zt = np.float64(load(r, t)) - m
            loss[i] = (1.0 - spa) / (alpha * am1) + spz - zt

    return loss_rows


MAP_ROWS = {kind: _make_map(kind) for kind in (SPARSEMAX, ENTMAX15, BISECT)}
BACKWARD_ROWS = {kind: _make_backward(kind) for kind in (SPARSEMAX, ENTMAX15, BISECT)}
LOSS_ROWS = {(kind, grad): _make_loss(kind, grad)
             for kind in (SPARSEMAX, ENTMAX15, BISECT) for grad in (False, True)}


# -- host wrappers (the backend contract of ``_backend_numpy``) ----------------------------------

def _writable(out, *ins):
    """``out`` if the kernels can write it directly (C-contiguous, ``ins[0]`` itself or
    overlapping no input), else a scratch array of its shape and dtype."""
    same = (out.shape == ins[0].shape and out.dtype == ins[0].dtype
            and out.__array_interface__["data"][0] == ins[0].__array_interface__["data"][0]
            and ins[0].flags.c_contiguous)
    if out.flags.c_contiguous and (same or not any(np.may_share_memory(out, a) for a in ins)):
        return out
    return np.empty(out.shape, out.dtype)


def _params(alpha, n_iter):
    am1 = float(alpha) - 1.0
    return am1, 1.0 / am1, int(n_iter)


def _map(kind, x, out, alpha=2.0, n_iter=0):
    M, C = x.shape
    if M == 0 or C == 0:
        return out
    xc = np.ascontiguousarray(x)
    o = _writable(out, xc)
    run_rows(MAP_ROWS[kind], M, C, (_half.tagged(xc), _half.tagged(o), *_params(alpha, n_iter)))
    if o is not out:
        out[...] = o
    return out


def sparsemax(x, out):
    """``out = max(x - τ, 0)`` row-wise over (M, C); ``out`` may be ``x``."""
    return _map(SPARSEMAX, x, out, 2.0)


def entmax15(x, out):
    """``out = max(x/2 - τ, 0)²`` row-wise over (M, C); ``out`` may be ``x``."""
    return _map(ENTMAX15, x, out, 1.5)


def entmax_bisect(x, alpha, n_iter, out):
    """α-entmax row-wise by ``n_iter`` bisection steps, normalised (``entmax_bisect``)."""
    return _map(BISECT, x, out, alpha, n_iter)


def _backward(kind, g, y, out, alpha):
    M, C = y.shape
    if M == 0 or C == 0:
        return out
    gc, yc = np.ascontiguousarray(g), np.ascontiguousarray(y)
    o = out if out.flags.c_contiguous and not (
        np.may_share_memory(out, gc) or np.may_share_memory(out, yc)) else np.empty_like(yc)
    run_rows(BACKWARD_ROWS[kind], M, C,
             (_half.tagged(gc), _half.tagged(yc), _half.tagged(o), 2.0 - float(alpha)))
    if o is not out:
        out[...] = o
    return out


def sparsemax_backward(grad_out, out, grad_in):
    """VJP of sparsemax from its output, row-wise over (M, C)."""
    return _backward(SPARSEMAX, grad_out, out, grad_in, 2.0)


def entmax15_backward(grad_out, out, grad_in):
    """VJP of 1.5-entmax from its output, row-wise over (M, C)."""
    return _backward(ENTMAX15, grad_out, out, grad_in, 1.5)


def entmax_bisect_backward(grad_out, out, alpha, grad_in):
    """VJP of α-entmax from its output, row-wise over (M, C)."""
    return _backward(BISECT, grad_out, out, grad_in, alpha)


def _loss(kind, x, target, ignore_index, alpha, n_iter, row_scale, grad_out):
    M, C = x.shape
    dt = np.dtype(np.float32) if _half.kind_of(x.dtype) is not None else x.dtype
    loss = np.zeros(M, dt)
    if M == 0 or C == 0:
        if grad_out is not None:
            grad_out[...] = 0
        return loss
    info = np.iinfo(np.int64)
    ign = info.min if ignore_index is None or not (
        info.min <= int(ignore_index) <= info.max) else int(ignore_index)
    xc = np.ascontiguousarray(x)
    grad = grad_out is not None
    g = _writable(grad_out, xc) if grad else np.empty((1, 1), x.dtype)
    scale = np.ascontiguousarray(np.broadcast_to(
        np.asarray(0.0 if row_scale is None else row_scale, dtype=np.float64), (M,)))
    run_rows(LOSS_ROWS[kind, grad], M, C,
             (_half.tagged(xc), np.ascontiguousarray(target, dtype=np.int64), np.int64(ign),
              *_params(alpha, n_iter), scale, _half.tagged(g), loss))
    if grad and g is not grad_out:
        grad_out[...] = g
    return loss


def sparsemax_loss(x, target, ignore_index, row_scale, grad_out):
    """Sparsemax loss per row; gradient row_scale·(p - e_t) into ``grad_out`` (or None)."""
    return _loss(SPARSEMAX, x, target, ignore_index, 2.0, 0, row_scale, grad_out)


def entmax15_loss(x, target, ignore_index, row_scale, grad_out):
    """1.5-entmax loss per row; gradient row_scale·(p - e_t)."""
    return _loss(ENTMAX15, x, target, ignore_index, 1.5, 0, row_scale, grad_out)


def entmax_bisect_loss(x, target, ignore_index, alpha, n_iter, row_scale, grad_out):
    """α-entmax loss per row (``n_iter`` bisection steps); gradient row_scale·(p - e_t)."""
    return _loss(BISECT, x, target, ignore_index, alpha, n_iter, row_scale, grad_out)
