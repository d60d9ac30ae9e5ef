"""Numba row kernel of the generalized Jensen-Shannon divergence (TRL's ``generalized_jsd_loss``).

One student row ``zs`` and one teacher row ``zt`` of V logits at a time, ``a = zs/T``,
``b = zt/T``, the math of ``xent._backend_numpy.jsd``. Per row pair, four vectorised loops:

1. ``m = max_c z_c`` of each row (``_rows._max``: the integer max on the floats' bits); the
   rows cross memory here.
2. ``A_c = (zs_c - m_s)/T``, ``E_c = exp(A_c)``, ``S_s = Σ_c E_c`` (and B, F, S_t for the
   teacher) into per-thread scratch rows in the compute dtype (128 KiB each at V = 32768 in
   float32; they stay in the caches); ``log p_s = A - log S_s``, ``p_s = E/S_s``: the only
   exps of the row.
3. The row's sums: for ``beta`` in (0, 1), ``log m_c = log(β p_t,c + (1-β) p_s,c)`` (the one
   log per element: :func:`vlog`, vectorised), stored in a third scratch row, and
   ``KL(p_s‖m) = Σ p_s (log p_s - log m)``, ``KL(p_t‖m)`` likewise; for ``beta`` 0 (and 1, the
   host swapping the rows), ``KL(p‖q) = Σ p (log p - log q)``.
4. The gradients, written once: ``(1-β)/T·p_s⊙(log p_s - log m - KL(p_s‖m))`` (and the
   teacher's), or ``(q - p)/T`` and ``p⊙(log p - log q - KL)/T``, times the row's scale.

So each logit row is read from memory once (then from L2) and each gradient row written once;
nothing of size ``(N, V)`` is allocated beyond the gradients. A class of zero probability adds
0 to a sum and gets gradient 0 (``0·log 0 = 0``: a select, not a product with -inf). A row with
a NaN or +inf logit, or all -inf, gets NaN loss and gradients (the checks on ``m`` and ``S`` are
outside the fast-math loops, which use ``reassoc``/``contract``/``nsz`` only, as ``_rows``).
16-bit rows (tag views, ``_half.py``) are read through ``load`` and the gradients rounded once
through ``put``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._exp import _i32_as_f32, _i64_as_f64, exp_shifted
from ._half import compute, load, put, tagged, wide
from ._rows import _max
from ._threads import run_rows

__all__ = ["jsd", "vlog_array"]

_FAST = {"reassoc", "contract", "nsz"}
_jit = numba.njit(cache=True)
# error_model="numpy": a float division is IEEE (no ZeroDivisionError branch, which keeps a
# loop scalar), as in _bce.py.
_jit_fast = numba.njit(fastmath=_FAST, error_model="numpy", cache=True)
_CONTRACT = {"contract"}


# ---------------------------------------------------------------------------------------------
# A vectorisable log for x in [0, 1] (and any positive normal or subnormal float)
# ---------------------------------------------------------------------------------------------
@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as an int32 (no conversion)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def _f64_bits(typingctx, x):
    """The bits of a float64 as an int64 (no conversion)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


# x = 2^e·f, f in [sqrt(1/2), sqrt(2)); log f = 2·atanh(s), s = (f-1)/(f+1), |s| <= 0.1716,
# atanh(s) = s·Σ_k s^(2k)/(2k+1): to k = 5 the remainder is below 2^-28 relative (float32),
# to k = 11 below 2^-56 (float64). e·ln 2 in two parts (ln2_hi exact in e·ln2_hi).
@numba.njit(fastmath=_CONTRACT, error_model="numpy", cache=True)
def log32(x):
    """log of a float32 x >= 0, vectorisable: -inf at 0, NaN for NaN (x <= 1 in the kernel)."""
    x = np.float32(x)
    sub = x < np.float32(1.1754944e-38)
    y = x * np.float32(8388608.0) if sub else x  # subnormal: scale by 2^23 first
    i = _f32_bits(y)
    e = np.float32(np.int32((i >> np.int32(23)) & np.int32(0xFF)) - np.int32(127))
    f = _i32_as_f32((i & np.int32(0x7FFFFF)) | np.int32(0x3F800000))
    big = f > np.float32(1.4142135)
    f = f * np.float32(0.5) if big else f
    e = e + np.float32(1.0) if big else e
    e = e - np.float32(23.0) if sub else e
    s = (f - np.float32(1.0)) / (f + np.float32(1.0))
    s2 = s * s
    p = np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    lf = np.float32(2.0) * s + np.float32(2.0) * s * s2 * p
    r = e * np.float32(0.693359375) + (e * np.float32(-2.12194440e-4) + lf)
    r = np.float32(-np.inf) if x == np.float32(0.0) else r
    return x if x != x else r


@numba.njit(fastmath=_CONTRACT, error_model="numpy", cache=True)
def log64(x):
    """log of a float64 x >= 0, vectorisable: -inf at 0, NaN for NaN."""
    x = np.float64(x)
    sub = x < 2.2250738585072014e-308
    y = x * 4503599627370496.0 if sub else x  # subnormal: scale by 2^52 first
    i = _f64_bits(y)
    e = np.float64(((i >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1023))
    f = _i64_as_f64((i & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000))
    big = f > 1.4142135623730951
    f = f * 0.5 if big else f
    e = e + 1.0 if big else e
    e = e - 52.0 if sub else e
    s = (f - 1.0) / (f + 1.0)
    s2 = s * s
    p = 1.0 / 23.0
    p = p * s2 + 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    lf = 2.0 * s + 2.0 * s * s2 * p
    r = e * 0.6931471803691238 + (e * 1.9082149292705877e-10 + lf)
    r = -np.inf if x == 0.0 else r
    return x if x != x else r


def vlog(x):
    """log(x) of a float32 or float64 scalar inside Numba code (vectorisable)."""
    raise NotImplementedError("vlog is only callable from Numba-compiled code")


@overload(vlog, jit_options={"fastmath": _CONTRACT})
def _vlog_overload(x):
    if x == types.float32:
        return lambda x: log32(x)
    if x == types.float64:
        return lambda x: log64(x)
    return None


@numba.njit(fastmath=_CONTRACT, error_model="numpy", cache=True)
def vlog_array(x, out):
    """Elementwise ``out[i] = vlog(x[i])`` over 1-D arrays (for the accuracy tests)."""
    for i in range(x.shape[0]):
        out[i] = vlog(x[i])
    return out


# ---------------------------------------------------------------------------------------------
# The loops over one row pair
# ---------------------------------------------------------------------------------------------
@_jit_fast
def _shift_exp(z, m, inv_t, a, e):
    """a_c = (z_c - m)·inv_t (<= 0), e_c = exp(a_c) (both stored); returns Σ_c e_c."""
    wide()
    s = compute(a, 0.0)
    for j in range(z.shape[0]):
        d = (compute(a, load(z, j)) - m) * inv_t
        x = exp_shifted(a, d)
        a[j] = d
        e[j] = x
        s += x
    return s


# In the loops below, for each row: log q_c = a_c - lq, q_c = ea_c·rq (rq = 1/Σ ea = e^-lq),
# and the same for p; the exps were computed once, in _shift_exp.
@_jit_fast
def _kl_sum(a, b, eb, lq, lp, rp):
    """KL(p ‖ q) = Σ_c p_c (log p_c - log q_c); 0·log 0 = 0."""
    wide()
    zero = compute(a, 0.0)
    s = zero
    for j in range(a.shape[0]):
        pp = eb[j] * rp
        t = pp * ((b[j] - lp) - (a[j] - lq))
        t = t if pp > 0 else zero
        s += t
    return s


@_jit_fast
def _kl_grad_q(ea, eb, rq, rp, c, g):
    """g_c = c·(q_c - p_c)."""
    wide()
    for j in range(ea.shape[0]):
        v = c * (ea[j] * rq - eb[j] * rp)
        put(g, j, v)


@_jit_fast
def _kl_grad_p(a, b, eb, lq, lp, rp, kl, c, g):
    """g_c = c·p_c·(log p_c - log q_c - KL), 0 where p_c = 0."""
    wide()
    zero = compute(a, 0.0)
    for j in range(a.shape[0]):
        pp = eb[j] * rp
        v = c * pp * ((b[j] - lp) - (a[j] - lq) - kl)
        v = v if pp > 0 else zero  # (selected before the call: inside it, the loop stays scalar)
        put(g, j, v)


@_jit_fast
def _mix_sums(a, ea, b, eb, lq, rq, lp, rp, beta, lm):
    """lm_c = log(β p_c + (1-β) q_c) (stored); returns (KL(q ‖ m), KL(p ‖ m))."""
    wide()
    zero = compute(a, 0.0)
    w1 = compute(a, 1.0 - beta)
    w2 = compute(a, beta)
    kq = zero
    kp = zero
    for j in range(a.shape[0]):
        q = ea[j] * rq
        p = eb[j] * rp
        lmix = vlog(w2 * p + w1 * q)
        lm[j] = lmix
        tq = q * ((a[j] - lq) - lmix)
        tp = p * ((b[j] - lp) - lmix)
        tq = tq if q > 0 else zero
        tp = tp if p > 0 else zero
        kq += tq
        kp += tp
    return kq, kp


@_jit_fast
def _mix_grad(a, ea, la, ra, lm, kl, c, g):
    """g_c = c·q_c·(log q_c - log m_c - KL(q ‖ m)); 0 where q_c = 0."""
    wide()
    zero = compute(a, 0.0)
    for j in range(a.shape[0]):
        q = ea[j] * ra
        v = c * q * ((a[j] - la) - lm[j] - kl)
        v = v if q > 0 else zero  # (selected before the call: inside it, the loop stays scalar)
        put(g, j, v)


@_jit
def _fill(g, v):
    for j in range(g.shape[0]):
        put(g, j, v)


@numba.njit(nogil=True, cache=True)
def _jsd_rows(zq, zp, mode, beta, inv_t, scale, keep, has_keep, gq, gp, need_q, need_p, loss,
              lo, hi):
    """Rows [lo, hi): ``mode`` 0: loss = KL(p ‖ q) (q the first row, p the second); 1: loss =
    β·KL(p ‖ m) + (1-β)·KL(q ‖ m). ``scale`` (M,): the rows' gradient scales (1/T included)."""
    V = zq.shape[1]
    a = np.empty(V, loss.dtype)
    b = np.empty(V, loss.dtype)
    ea = np.empty(V, loss.dtype)
    eb = np.empty(V, loss.dtype)
    lm = np.empty(V if mode == 1 else 1, loss.dtype)
    for i in range(lo, hi):
        if has_keep and not keep[i]:
            loss[i] = 0.0
            if need_q:
                _fill(gq[i], 0.0)
            if need_p:
                _fill(gp[i], 0.0)
            continue
        mq = compute(loss, _max(zq[i]))
        mp = compute(loss, _max(zp[i]))
        ok = -np.inf < mq < np.inf and -np.inf < mp < np.inf
        if ok:
            sq = _shift_exp(zq[i], mq, compute(loss, inv_t), a, ea)
            sp = _shift_exp(zp[i], mp, compute(loss, inv_t), b, eb)
            ok = sq == sq and sp == sp
        if not ok:  # a NaN or +inf, or all -inf: NaN as the log_softmax of such a row
            loss[i] = np.nan
            if need_q:
                _fill(gq[i], np.nan)
            if need_p:
                _fill(gp[i], np.nan)
            continue
        lq = compute(loss, math.log(sq))
        lp = compute(loss, math.log(sp))
        rq = compute(loss, 1.0 / sq)
        rp = compute(loss, 1.0 / sp)
        c = compute(loss, scale[i])
        if mode == 0:
            kl = _kl_sum(a, b, eb, lq, lp, rp)
            loss[i] = kl
            if need_q:
                _kl_grad_q(ea, eb, rq, rp, c, gq[i])
            if need_p:
                _kl_grad_p(a, b, eb, lq, lp, rp, kl, c, gp[i])
        else:
            kq, kp = _mix_sums(a, ea, b, eb, lq, rq, lp, rp, beta, lm)
            loss[i] = compute(loss, beta) * kp + compute(loss, 1.0 - beta) * kq
            if need_q:
                _mix_grad(a, ea, lq, rq, lm, kq, c * compute(loss, 1.0 - beta), gq[i])
            if need_p:
                _mix_grad(b, eb, lp, rp, lm, kp, c * compute(loss, beta), gp[i])


def _out(grad, z, dummy):
    """(buffer, its tag view, copy-back target) for a gradient ``grad`` of ``z``'s shape: the
    buffer is ``grad`` itself where the kernel can write it, else a temporary of ``z``'s dtype
    copied into ``grad`` afterwards; ``dummy`` without a gradient."""
    if grad is None:
        return dummy, dummy, None
    if (grad.flags.c_contiguous and grad.dtype == z.dtype
            and not np.may_share_memory(grad, z)):
        return grad, tagged(grad), None
    buf = np.empty(z.shape, z.dtype)
    return buf, tagged(buf), grad


def jsd(student, teacher, beta, temperature, row_scale, keep, grad_student, grad_teacher):
    """The kernel form of ``xent._backend_numpy.jsd`` (same arguments, same results)."""
    M, V = student.shape
    f64 = np.float64 in (student.dtype, teacher.dtype)
    cdt = np.dtype(np.float64 if f64 else np.float32)
    loss = np.zeros(M, cdt)
    if M == 0:
        return loss
    if V == 0:
        for g in (grad_student, grad_teacher):
            if g is not None:
                g[...] = 0
        return loss
    zs = tagged(np.ascontiguousarray(student))
    zt = tagged(np.ascontiguousarray(teacher))
    bs, gs, back_s = _out(grad_student, student, np.empty((1, 1), zs.dtype))
    bt, gt, back_t = _out(grad_teacher, teacher, np.empty((1, 1), zt.dtype))
    inv_t = 1.0 / float(temperature)
    scale = np.ascontiguousarray(
        np.broadcast_to(np.asarray(row_scale, cdt), (M,)) * cdt.type(inv_t))
    has_keep = keep is not None
    kp = np.ascontiguousarray(keep, np.bool_) if has_keep else np.ones(1, np.bool_)
    need_s, need_t = grad_student is not None, grad_teacher is not None
    if beta == 1.0:  # KL(p_s ‖ p_t): the beta = 0 form with the rows' roles swapped
        args = (zt, zs, 0, 0.0, inv_t, scale, kp, has_keep, gt, gs, need_t, need_s, loss)
    else:
        args = (zs, zt, 0 if beta == 0.0 else 1, float(beta), inv_t, scale, kp, has_keep, gs,
                gt, need_s, need_t, loss)
    run_rows(_jsd_rows, M, V, args)
    for buf, back in ((bs, back_s), (bt, back_t)):
        if back is not None:
            back[...] = buf
    return loss
