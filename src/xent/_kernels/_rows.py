"""Numba row kernels: cross-entropy (index and probability targets), log_softmax and softmax.

Every function works on rows of a C-contiguous ``(M, C)`` array, one row at a time, so each row
(128 KiB for C = 32768 in float32) is read from memory once and then re-read from the core's L2
cache. A row takes three simple loops, each vectorised by LLVM (AVX2/AVX-512):

1. ``m = max_c x_c``                     (an integer max on the floats' bits: exact, vectorised)
2. ``e_c = exp(x_c - m)``, ``s = Σ e_c``   (:func:`vexp`; ``e`` is stored in the gradient row)
3. ``g_c = e_c·(coef/s) - ...``           (the gradient, written once)

so loss plus gradient reads the logits from memory once and writes the gradient once.

Non-finite rows. The fast loops use the fast-math flags ``reassoc``/``contract``/``nsz`` only
(summation order and fused multiply-add), never ``nnan``/``ninf``, so a NaN or an infinity in a
row still reaches ``s``: a row containing NaN or +inf, or whose entries are all -inf, has a
non-finite ``m`` or ``s``. That check is made outside any fast-math code, and such a row gets the
result PyTorch (and ``xent._backend_numpy``) gives: NaN loss, NaN gradient, NaN log_softmax and
softmax. -inf entries in a row with a finite maximum are ordinary: exp(-inf) = 0, so their
log-probability is -inf and their probability 0.

Safety. A target outside ``[0, C)`` that is not ``ignore_index`` cannot happen after validation,
but the kernels check it anyway (one comparison per row) and give that row a NaN loss and a NaN
gradient instead of reading or writing out of bounds.

The ``mode`` argument: 0 forward only (``g`` is a dummy), 1 gradient into ``g``, 2 gradient
written over ``x`` itself (in place; ``g`` is ``x``). Mode 2 runs the in-place form of each
writing loop (``_to_and_inplace``): the same source compiled with its output being its input.

16-bit rows (``*_rows16``: bfloat16 or float16 as uint16 bits, see ``_half.py``): each row is
converted into a float32 scratch row (128 KiB for C = 32768, it stays in L2), the float32 row
function above runs on it in mode 2 (in place), and the scratch is rounded back into the 16-bit
gradient or output row. The math is the float32 kernel's, not a copy of it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ._exp import _i32_as_f32, _i64_as_f64, vexp, vtanh
from ._half import F32, from_f32, operand_to_f32, to_f32, zero16

# Reassociation (vectorised sums), FMA contraction, no signed zeros. Never nnan/ninf: the
# non-finite checks below rely on NaN and inf keeping their IEEE meaning.
_FAST = {"reassoc", "contract", "nsz"}
_jit = numba.njit(cache=True)
_jit_fast = numba.njit(fastmath=_FAST, cache=True)
# Loops that reduce nothing vectorise without reassociation; keeping it off keeps the order of
# operations written, e.g. (x - m) - log_s is not rewritten as x - (m + log_s).
_jit_vec = numba.njit(fastmath={"contract"}, cache=True)


# ---------------------------------------------------------------------------------------------
# Loops over one row (each vectorised).
# ---------------------------------------------------------------------------------------------
# Block length for the online max / sum-of-exp pass: 2048 float32 = 8 KiB stays in L1 between
# the block's max loop and its exp loop.
_BLOCK = 2048


# The loops below run over range(n) of a (sliced) array, never range(lo, hi): with a start of
# unknown sign Numba's negative-index wraparound stays in the loop and LLVM does not vectorise it.
# max over floats on integer keys. Reinterpreting a float's bits as a signed integer i,
#     key(i) = i ^ ((i >> (bits - 1)) & 0x7F..F)
# orders every non-NaN float as the floats are ordered (-inf < ... < -0 < +0 < ... < +inf; the
# sign bit is kept, a negative float's magnitude bits are flipped), and key is its own inverse.
# A signed integer max is one exact, associative instruction (vpmaxsd/q) that LLVM vectorises
# without any fast-math flag; ``llvm.maximum`` lowers to six dependent instructions on x86.
# (About a quarter of a cross-entropy row's arithmetic before; benchmarks/README.md.)
# NaN: a positive NaN has the largest key (the max is NaN); a negative NaN (x86 produces those,
# e.g. 0·inf) the smallest, so it is skipped here and caught by the sum of exponentials, which it
# makes NaN; a block whose max is -inf is not summed, so it is scanned for NaN instead
# (:func:`_has_nan`).
def _key_max(r):
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_key_max, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _key_max_overload(r):
    if r.dtype == types.float32:

        def impl32(r):
            ri = r.view(np.int32)
            mk = np.int32(-2147483648)
            for j in range(ri.shape[0]):
                i = ri[j]
                mk = max(mk, np.int32(i ^ ((i >> np.int32(31)) & np.int32(0x7FFFFFFF))))
            return _i32_as_f32(np.int32(mk ^ ((mk >> np.int32(31)) & np.int32(0x7FFFFFFF))))

        return impl32
    if r.dtype == types.float64:

        def impl64(r):
            ri = r.view(np.int64)
            mk = np.int64(-9223372036854775808)
            mask = np.int64(0x7FFFFFFFFFFFFFFF)
            for j in range(ri.shape[0]):
                i = ri[j]
                mk = max(mk, i ^ ((i >> np.int64(63)) & mask))
            return _i64_as_f64(mk ^ ((mk >> np.int64(63)) & mask))

        return impl64
    return None


@_jit
def _max(r):
    """max_c r_c (len >= 1) over the non-NaN entries, exactly; NaN if a positive NaN is present
    (a negative NaN is skipped: see the note above)."""
    return _key_max(r)


@_jit
def _has_nan(r):
    """Whether any r_c is NaN (run only on the rare blocks whose max is -inf)."""
    for j in range(r.shape[0]):
        if r[j] != r[j]:
            return True
    return False


@_jit_fast
def _sum_exp(r, m):
    """Σ_c exp(r_c - m)."""
    s = r.dtype.type(0)
    for j in range(r.shape[0]):
        s += vexp(r[j] - m)
    return s


@_jit
def _max_sum_exp(r):
    """One read of the row: (m, s) with m = max_c r_c and s = Σ_c exp(r_c - m).

    Online over blocks of ``_BLOCK`` (as in "online normaliser calculation for softmax",
    Milakov and Gimelshein 2018): each block's max, then its exps against the running max, the
    running sum rescaled by exp(m_old - m_new) when the max grows. The block is re-read from L1,
    so the row crosses memory once and its exps overlap the memory traffic.

    Non-finite rows: returns s = NaN when the row has a NaN or a +inf, or is all -inf (the rows
    for which PyTorch's log_softmax is NaN). A block that is all -inf adds exactly 0.
    (The one implementation is :func:`_max_sum_exp_copy`, here without the copy.)
    """
    return _max_sum_exp_copy(r, r, False)


# Loops that write a row come in two compiled forms from one source: into another array, and
# over their input (``inplace``, a constant of each form). A loop whose load and store go
# through one pointer vectorises, while two pointers that happen to be equal would fail LLVM's
# run-time overlap check and run the scalar fallback.
def _to_and_inplace(make):
    """(loop into ``out``, the same loop over ``r`` itself) from ``make(inplace)``."""
    return make(False), make(True)


def _make_exp(inplace):
    @_jit_fast
    def exp_store(r, out, m):
        """out_c = exp(r_c - m) (over r itself in place); returns Σ_c out_c."""
        dst = r if inplace else out
        s = r.dtype.type(0)
        for j in range(r.shape[0]):
            e = vexp(r[j] - m)
            dst[j] = e
            s += e
        return s

    return exp_store


_exp_store, _exp_inplace = _to_and_inplace(_make_exp)


@_jit_vec
def _scale(g, c):
    """g_c ← g_c·c."""
    for j in range(g.shape[0]):
        g[j] = g[j] * c


@_jit_vec
def _scale_sub(g, c, b, w):
    """g_c ← g_c·c - b·w_c."""
    for j in range(g.shape[0]):
        g[j] = g[j] * c - b * w[j]


@_jit
def _max_sum_exp_store(r, out, inplace, mblk):
    """:func:`_max_sum_exp` that also stores each block's exps: out[block] = exp(r - m_b).

    m_b, the running max when the block was exponentiated, is saved in ``mblk``; the final
    e_c = exp(r_c - m) is out_c·exp(m_b - m), which :func:`_finish_blocks` folds into its scale,
    so every exp is computed once. ``inplace``: out is r itself.
    """
    C = r.shape[0]
    dt = r.dtype.type
    m = dt(-np.inf)
    s = dt(0)
    for k in range(mblk.shape[0]):
        lo = k * _BLOCK
        blk = r[lo : min(lo + _BLOCK, C)]
        ob = blk if inplace else out[lo : min(lo + _BLOCK, C)]
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            return mb, dt(np.nan)
        if mb == -np.inf:  # exp(-inf) = 0 whatever the shift; a NaN hidden among them counts
            if _has_nan(blk):
                return mb, dt(np.nan)
            _fill(ob, dt(0))
            mblk[k] = -np.inf
            continue
        if mb > m:
            s = s * dt(math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        if inplace:
            s += _exp_inplace(blk, blk, m)
        else:
            s += _exp_store(blk, ob, m)
        mblk[k] = m
    if m == -np.inf:
        return m, dt(np.nan)
    return m, s


@_jit
def _finish_blocks(g, m, mblk, c, b, w, smooth):
    """g_c ← g_c·c·exp(m_b - m) (- b·w_c if smooth), block by block (see _max_sum_exp_store)."""
    C = g.shape[0]
    dt = g.dtype.type
    mf = np.float64(m)
    for k in range(mblk.shape[0]):
        lo = k * _BLOCK
        hi = min(lo + _BLOCK, C)
        f = dt(c * math.exp(mblk[k] - mf))
        if smooth:
            _scale_sub(g[lo:hi], f, dt(b), w[lo:hi])
        else:
            _scale(g[lo:hi], f)


@_jit_fast
def _dot(r, w):
    """Σ_c r_c·w_c."""
    s = r.dtype.type(0)
    for j in range(r.shape[0]):
        s += r[j] * w[j]
    return s


@_jit_fast
def _dot_shift(r, w, m):
    """Σ_c w_c·(r_c - m)."""
    s = r.dtype.type(0)
    for j in range(r.shape[0]):
        s += w[j] * (r[j] - m)
    return s


# (r - m) - log_s, not r - (m + log_s): the max is subtracted first, as torch does, so the
# log-sum is not rounded away when the logits are large (float32 [1e8, 1e8] gives -log 2).
@_jit_vec
def _shift_sub_to(r, out, m, log_s):
    """out_c = (r_c - m) - log_s."""
    for j in range(r.shape[0]):
        out[j] = (r[j] - m) - log_s


@_jit_vec
def _shift_sub_inplace(r, m, log_s):
    """r_c ← (r_c - m) - log_s."""
    for j in range(r.shape[0]):
        r[j] = (r[j] - m) - log_s


@_jit
def _fill(g, v):
    """g_c = v."""
    for j in range(g.shape[0]):
        g[j] = v


@_jit_fast
def _prob_loss(r, y, w, m, a1, a0):
    """Σ_c w_c·y'_c·(r_c - m), y' = a1·y + a0 (forward only)."""
    acc = r.dtype.type(0)
    for j in range(r.shape[0]):
        acc += w[j] * (a1 * y[j] + a0) * (r[j] - m)
    return acc


def _make_prob_grad(inplace):
    @_jit_fast
    def prob_grad(r, y, w, m, a1, a0, c, sc, out):
        """out_c = exp(r_c - m)·c - sc·w_c·y'_c (over r itself in place), y' = a1·y + a0;
        returns Σ_c w_c·y'_c·(r_c - m)."""
        dst = r if inplace else out
        acc = r.dtype.type(0)
        for j in range(r.shape[0]):
            d = r[j] - m
            wy = w[j] * (a1 * y[j] + a0)
            acc += wy * d
            dst[j] = vexp(d) * c - sc * wy
        return acc

    return prob_grad


_prob_grad_to, _prob_grad_inplace = _to_and_inplace(_make_prob_grad)


# Soft-capping z = cap·tanh(x/cap). The capped row is written where the gradient will be (or
# into a scratch row for the forward pass) and the gradient loops then work over it in place,
# multiplying by the cap's chain-rule factor 1 - tanh² = 1 - (z/cap)², recomputed from z.
def _make_cap(inplace):
    @_jit_vec
    def cap_to(r, out, cap):
        """out_c = cap·tanh(r_c/cap) (over r itself in place)."""
        dst = r if inplace else out
        for j in range(r.shape[0]):
            dst[j] = cap * vtanh(r[j] / cap)

    return cap_to


_cap_to, _cap_inplace = _to_and_inplace(_make_cap)


@_jit_fast
def _grad_index_cap(r, w, m, c, b, inv_cap):
    """r_c ← (exp(r_c - m)·c - b·w_c)·(1 - (r_c/cap)²); returns Σ_c w_c·(r_c - m) of the values
    read."""
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
def _grad_prob_cap(r, y, w, m, a1, a0, c, sc, inv_cap):
    """r_c ← (exp(r_c - m)·c - sc·w_c·y'_c)·(1 - (r_c/cap)²); returns Σ_c w_c·y'_c·(r_c - m)."""
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


@_jit
def _nonfinite_lse(r):
    """torch.logsumexp of a row known to be non-finite (a NaN or +inf, or all -inf): NaN if it
    holds a NaN, else +inf if it holds a +inf, else -inf. Blocks that an in-place pass already
    overwrote held finite values, so they change nothing here."""
    has_inf = False
    for j in range(r.shape[0]):
        v = r[j]
        if v != v:
            return np.nan
        if v == np.inf:
            has_inf = True
    return np.inf if has_inf else -np.inf


# ---------------------------------------------------------------------------------------------
# One row of each operation: pass 1 = _max_sum_exp (from memory), pass 2 = write (from L2).
# ---------------------------------------------------------------------------------------------
@_jit
def _nan_row(i, x, g, mode, loss):
    """A non-finite row (or an impossible target): NaN loss and NaN gradient."""
    loss[i] = np.nan
    if mode == 1:
        _fill(g[i], g.dtype.type(np.nan))
    elif mode == 2:
        _fill(x[i], x.dtype.type(np.nan))


@_jit
def _zero_row(i, x, g, mode, loss):
    """An ignored row: loss 0 and gradient 0."""
    loss[i] = 0
    if mode == 1:
        _fill(g[i], g.dtype.type(0))
    elif mode == 2:
        _fill(x[i], x.dtype.type(0))


@_jit
def _capped_row(i, x, cap, g, mode, work):
    """Soft-cap row i where its gradient goes (g[i] in mode 1, x[i] itself in mode 2) or, for
    the forward pass, into the scratch row ``work``; returns that row."""
    r = x[i]
    if mode == 2:
        _cap_inplace(r, r, r.dtype.type(cap))
        return r
    z = g[i] if mode == 1 else work
    _cap_to(r, z, r.dtype.type(cap))
    return z


@_jit
def _ce_index_row(i, x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                  sce, sz, g, mode, loss, lse_out, work):
    """Cross-entropy of row i with class index target[i] and the options; see ``ce_index``.

    Without a cap, pass 1 stores the exponentials where the gradient goes and pass 2 scales
    them (every exp computed once). With a cap, the capped row is formed first (in the gradient
    row), pass 1 reads it for (m, s) and pass 2 recomputes exp while writing the gradient, with
    the cap's factor, over it.
    """
    C = x.shape[1]
    dt = x.dtype.type
    t = target[i]
    valid = t != ignore_index
    if valid and (t < 0 or t >= C):  # impossible after validation; never index out of bounds
        _nan_row(i, x, g, mode, loss)
        lse_out[i] = np.nan
        return
    if not valid and not want_lse:
        _zero_row(i, x, g, mode, loss)
        return
    tt = t if valid else 0
    if has_cap:
        r = _capped_row(i, x, cap, g, mode, work)
        z_t = np.float64(r[tt])
        m, s = _max_sum_exp(r)
        mblk = np.empty(0)
    else:
        r = x[i]
        z_t = np.float64(r[tt])  # read before an in-place overwrite
        if valid and eps > 0:  # Σ_c w_c·(x_c - m), read before an in-place overwrite
            wd = np.float64(_dot_shift(r, w, _max(r)))  # the same max as the pass below
        if mode == 0 or not valid:
            m, s = _max_sum_exp(r)
            mblk = np.empty(0)
        else:
            mblk = np.empty((C + _BLOCK - 1) // _BLOCK)
            m, s = _max_sum_exp_store(r, g[i] if mode == 1 else r, mode == 2, mblk)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(r)
        if valid:
            _nan_row(i, x, g, mode, loss)
        else:
            _zero_row(i, x, g, mode, loss)
        return
    log_s = math.log(np.float64(s))  # lse - m
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    if not valid:
        _zero_row(i, x, g, mode, loss)
        return
    # Everything in coordinates shifted by the row max m (d = z - m, lse - m = log s), so
    # (lse - z_t) and Σ_c w_c (lse - z_c) lose nothing to cancellation at large logits.
    w_t = np.float64(w[t])
    if mode != 0:
        sc = np.float64(sce[i])
        a = (1.0 - eps) * w_t * sc  # coefficient of (p - onehot)
        b = (eps / C) * sc  # coefficient of (W·p - w)
        coef = a + b * wsum
        if zscale:
            coef += np.float64(sz[i]) * (2.0 * zscale) * lse
        if has_cap:
            wd = np.float64(_grad_index_cap(r, w, m, dt(coef / np.float64(s)), dt(b),
                                            dt(1.0 / cap)))
            q = z_t / cap
            r[t] -= dt(a * (1.0 - q * q))
        else:
            gr = g[i] if mode == 1 else r
            # gr holds exp(x - m_b) per block: scale to p·coef, subtract b·w, a at the target.
            _finish_blocks(gr, m, mblk, coef / np.float64(s), b, w, eps > 0)
            gr[t] -= dt(a)
    elif has_cap and eps > 0:
        wd = np.float64(_dot_shift(r, w, m))
    li = w_t * (log_s - (z_t - np.float64(m)))
    if eps > 0:
        li = (1.0 - eps) * li + (eps / C) * (wsum * log_s - wd)
    loss[i] = li


@_jit
def _ce_prob_row(i, x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss,
                 lse_out, work):
    """Cross-entropy of row i with probability targets y[i] and the options; see ``ce_prob``."""
    yr = y[i]
    dt = x.dtype.type
    r = _capped_row(i, x, cap, g, mode, work) if has_cap else x[i]
    m, s = _max_sum_exp(r)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(r)
        _nan_row(i, x, g, mode, loss)
        return
    log_s = math.log(np.float64(s))
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    # loss = -Σ w y' (z - m - log s) = T·log s - Σ w y' (z - m), T = Σ w y'. The large term
    # Σ w y' (z - m) is summed from exact per-element differences.
    tot = np.float64(a1) * np.float64(_dot(yr, w)) + np.float64(a0) * wsum
    if mode == 0:
        acc = _prob_loss(r, yr, w, m, a1, a0)
    else:
        sc = np.float64(sce[i])
        coef = sc * tot
        if zscale:
            coef += np.float64(sz[i]) * (2.0 * zscale) * lse
        c = dt(coef / np.float64(s))
        if has_cap:
            acc = _grad_prob_cap(r, yr, w, m, a1, a0, c, dt(sc), dt(1.0 / cap))
        elif mode == 1:
            acc = _prob_grad_to(r, yr, w, m, a1, a0, c, dt(sc), g[i])
        else:
            acc = _prob_grad_inplace(r, yr, w, m, a1, a0, c, dt(sc), r)
    loss[i] = tot * log_s - np.float64(acc)


@_jit_fast
def _sum_exp_rest(r, m):
    """(Σ_{c: r_c < m} exp(r_c - m), #{c: r_c = m}): the sum without the max's own terms, and
    how many entries equal the max (each of those would add exactly 1)."""
    dt = r.dtype.type
    s = dt(0)
    n = dt(0)
    for j in range(r.shape[0]):
        d = r[j] - m
        top = d == dt(0)
        s += dt(0) if top else vexp(d)
        n += dt(1) if top else dt(0)
    return s, n


@_jit_fast
def _copy_sum_exp(r, out, m):
    """Σ_c exp(r_c - m), copying r into out on the way (out_c = r_c)."""
    s = r.dtype.type(0)
    for j in range(r.shape[0]):
        v = r[j]
        out[j] = v
        s += vexp(v - m)
    return s


@_jit_vec
def _copy(r, out):
    """out_c = r_c."""
    for j in range(r.shape[0]):
        out[j] = r[j]


@_jit
def _max_sum_exp_copy(r, out, copy):
    """:func:`_max_sum_exp`'s online pass that, with ``copy``, also copies the row into out on
    the way: the row's output is then written while the row is read from memory, and the second
    pass runs in the cache."""
    C = r.shape[0]
    dt = r.dtype.type
    m = dt(-np.inf)
    s = dt(0)
    for lo in range(0, C, _BLOCK):
        hi = min(lo + _BLOCK, C)
        blk = r[lo:hi]
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            return mb, dt(np.nan)
        if mb == -np.inf:  # adds exactly 0, unless a (negative) NaN hides among the -inf
            if _has_nan(blk):
                return mb, dt(np.nan)
            if copy:
                _copy(blk, out[lo:hi])
            continue
        if mb > m:
            s = s * dt(math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        if copy:
            s += _copy_sum_exp(blk, out[lo:hi], m)
        else:
            s += _sum_exp(blk, m)
    if m == -np.inf:
        return m, dt(np.nan)
    return m, s


@_jit
def _log1p_rest(r, m, s):
    """lse - m = log1p(s') for a row with max m and s = Σ_c exp(r_c - m) (finite), s' the sum
    without the max's own 1, so terms below the float's resolution at 1 count: log1p(e^-40) =
    4.25e-18 for [0, -40], where log s is 0 (SciPy's logsumexp since gh-18295).

    Where s >= 2, log s is as exact as log1p(s') and is used; where s < 2 (one max, the rest
    below 1 together) the rest is summed again without the max's term (from the cache).
    """
    if s >= 2:
        return math.log(np.float64(s))
    rest, n = _sum_exp_rest(r, m)
    return math.log1p(np.float64(rest) + (np.float64(n) - 1.0))


@_jit
def _log_softmax_row(i, x, out, inplace):
    """out[i] = (x[i] - m) - log1p(s'), s' = Σ exp(x[i] - m) without the max's own 1.

    Pass 1 (:func:`_max_sum_exp_copy`) reads the row from memory and copies it into out; pass 2
    shifts out in place, in the cache: writing out only in pass 2 would make that pass wait on
    memory for every line of out it first touches (measured ~15% slower, single thread).
    """
    r = x[i]
    o = r if inplace else out[i]
    m, s = _max_sum_exp_copy(r, o, not inplace)
    if not math.isfinite(s):
        _fill(o, r.dtype.type(np.nan))
        return
    _shift_sub_inplace(o, m, r.dtype.type(_log1p_rest(r, m, s)))


@_jit
def _softmax_row(i, x, out, inplace):
    """out[i] = exp(x[i] - m) / Σ exp(x[i] - m)."""
    r = x[i]
    C = r.shape[0]
    o = r if inplace else out[i]
    mblk = np.empty((C + _BLOCK - 1) // _BLOCK)
    m, s = _max_sum_exp_store(r, o, inplace, mblk)
    if not math.isfinite(s):
        _fill(o, r.dtype.type(np.nan))
        return
    _finish_blocks(o, m, mblk, 1.0 / np.float64(s), 0.0, r, False)


# ---------------------------------------------------------------------------------------------
# Drivers: rows [lo, hi), with the GIL released, so that the host function can run blocks of
# rows on several threads at once (see xent._kernels._threads).
# ---------------------------------------------------------------------------------------------
_jit_rows = numba.njit(nogil=True, cache=True)


@_jit_rows
def ce_index_rows(x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse, sce, sz,
                  g, mode, loss, lse, lo, hi):
    work = np.empty(x.shape[1] if (has_cap and mode == 0) else 0, x.dtype)
    for i in range(lo, hi):
        _ce_index_row(i, x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                      sce, sz, g, mode, loss, lse, work)


@_jit_rows
def ce_prob_rows(x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse, lo,
                 hi):
    work = np.empty(x.shape[1] if (has_cap and mode == 0) else 0, x.dtype)
    for i in range(lo, hi):
        _ce_prob_row(i, x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse,
                     work)


@_jit_rows
def log_softmax_rows(x, out, inplace, lo, hi):
    for i in range(lo, hi):
        _log_softmax_row(i, x, out, inplace)


@_jit_rows
def softmax_rows(x, out, inplace, lo, hi):
    for i in range(lo, hi):
        _softmax_row(i, x, out, inplace)


# ---------------------------------------------------------------------------------------------
# 16-bit rows: ``x`` and ``g``/``out`` are uint16 bits of bfloat16 or float16 (``kind``, see
# _half.py); each row goes through a float32 scratch row ``buf`` (1, C) and the float32 row
# function, indexed 0 there with one-element views of the per-row arrays (the same compiled
# specialisation as the float32 drivers above). ``g`` may be ``x`` itself: a row is read into
# the scratch before its gradient is written.
# ---------------------------------------------------------------------------------------------
@_jit_rows
def ce_index_rows16(x, kind, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                    sce, sz, g, has_g, loss, lse, lo, hi):
    C = x.shape[1]
    buf = np.empty((1, C), np.float32)
    work = np.empty(C if (has_cap and not has_g) else 0, np.float32)
    mode = 2 if has_g else 0
    for i in range(lo, hi):
        if target[i] == ignore_index and not want_lse:  # not read, as _ce_index_row
            loss[i] = 0
            if has_g:
                zero16(g[i])
            continue
        to_f32(x[i], kind, buf[0])
        _ce_index_row(0, buf, target[i:i + 1], w, wsum, ignore_index, eps, zscale, cap,
                      has_cap, want_lse, sce[i:i + 1], sz[i:i + 1], buf, mode, loss[i:i + 1],
                      lse[i:i + 1], work)
        if has_g:
            from_f32(buf[0], kind, g[i])


@_jit_rows
def ce_prob_rows16(x, kind, y16, y32, ykind, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g,
                   has_g, loss, lse, lo, hi):
    """``y`` is 16-bit (``y16``, of ``ykind``) or float32 (``y32``, ykind F32); the other array
    is a dummy."""
    C = x.shape[1]
    buf = np.empty((1, C), np.float32)
    ybuf = np.empty((1, C), np.float32)
    work = np.empty(C if (has_cap and not has_g) else 0, np.float32)
    mode = 2 if has_g else 0
    f32 = ykind == F32
    for i in range(lo, hi):
        to_f32(x[i], kind, buf[0])
        operand_to_f32(y16[0 if f32 else i], y32[i if f32 else 0], ykind, ybuf[0])
        _ce_prob_row(0, buf, ybuf, w, wsum, a1, a0, zscale, cap, has_cap, sce[i:i + 1],
                     sz[i:i + 1], buf, mode, loss[i:i + 1], lse[i:i + 1], work)
        if has_g:
            from_f32(buf[0], kind, g[i])


@_jit_rows
def rowwise_rows16(x, kind, out, log, lo, hi):
    """log_softmax (``log``) or softmax of 16-bit rows into the 16-bit ``out`` (may be ``x``)."""
    buf = np.empty((1, x.shape[1]), np.float32)
    for i in range(lo, hi):
        to_f32(x[i], kind, buf[0])
        if log:
            _log_softmax_row(0, buf, buf, True)
        else:
            _softmax_row(0, buf, buf, True)
        from_f32(buf[0], kind, out[i])
