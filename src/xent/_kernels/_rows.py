"""Numba row kernels: cross-entropy (index and probability targets), log_softmax and softmax.

Every function works on rows of a C-contiguous ``(M, C)`` array, one row at a time, so each row
(128 KiB for C = 32768 in float32) is read from memory once and then re-read from the core's L2
cache. A row takes three simple loops, each vectorised by LLVM (AVX2/AVX-512):

1. ``m = max_c x_c``                     (an integer max on the floats' bits: exact, vectorised)
2. ``e_c = exp(x_c - m)``, ``s = Σ e_c``   (:func:`exp_shifted`; stored in the gradient row)
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

16-bit rows (``*_rows16``: bfloat16 or float16 as their tag views, see ``_half.py``): every
loop reads its elements through ``_half.load`` and writes them through ``_half.put``, so the
same row functions compile for 16-bit storage too: pass 1 reads the 16-bit row from memory,
converting each element as it loads, and stores its exps in a per-thread float32 scratch row
(128 KiB for C = 32768, it stays in L2); the pass that writes the result rounds it to nearest
even straight into the 16-bit row. The math is the float32 kernel's, not a copy of it, and a
16-bit row takes no more passes than a float32 one.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .._thresholds import ROW_BLOCK, ROW_BLOCK16
from ._exp import _i32_as_f32, _i64_as_f64, exp_shifted, vtanh
from ._half import bits_to_f32, compute, key16, load, put, wide

# The loops that evaluate exp or tanh call ``_half.wide()``: 512-bit vectors for them only (LLVM
# prefers 256-bit vectors on AVX-512 hosts; these loops are compute-bound and run about 15-25%
# faster at 512 on one thread), leaving every other function's code as it was.
# Reassociation (vectorised sums), FMA contraction, no signed zeros. Never nnan/ninf: the
# non-finite checks below rely on NaN and inf keeping their IEEE meaning.
_FAST = {"reassoc", "contract", "nsz"}
_jit = numba.njit(cache=True)
_jit_fast = numba.njit(fastmath=_FAST, cache=True)
# Loops that reduce nothing vectorise without reassociation; keeping it off keeps the order of
# operations written, e.g. (x - m) - log_s is not rewritten as x - (m + log_s).
_jit_vec = numba.njit(fastmath={"contract"}, cache=True)
# The per-row functions that call the loops (one row's glue: checks, scalars, which loop runs)
# are inlined into the drivers' row loops at Numba's IR level. A call of a Numba function takes
# a reference to each array it is passed, and a reference is an atomic increment and decrement
# of the array's refcount: with a call per row and per pass, those atomics were 40% of a short
# row's time (perf; 224 ns per row of 3 to 16 classes, 115 ns inlined; 736 -> 560 ns at 1024
# classes). The loops themselves stay functions: their fast-math flags and vector width are
# their own (inlining would give them the caller's).
_jit_inline = numba.njit(cache=True, inline="always")


# ---------------------------------------------------------------------------------------------
# Loops over one row (each vectorised).
# ---------------------------------------------------------------------------------------------
# Block lengths of the online max / sum-of-exp pass: `xent._thresholds.ROW_BLOCK` (L1) and
# `ROW_BLOCK16` (the pass that stores a 16-bit row's exps, _store_block).
_BLOCK = ROW_BLOCK
_BLOCK16 = ROW_BLOCK16


def _store_block(r):
    """The block length of :func:`_max_sum_exp_store` (the pass that keeps its exps) on row
    ``r``: ``_BLOCK`` for float rows, ``_BLOCK16`` for 16-bit rows. Measured one thread, rows
    of 32768 from memory, CE forward+backward: bfloat16 0.561 ns/element at 2048, 0.516 at
    4096, 0.476 at 8192, 0.462 at 16384 (in L2: 0.365 to 0.350), where float32 is fastest at
    2048 (0.454; 0.502 to 0.524 above). (A 16-bit row's exps go to a float32 scratch row:
    longer stretches of each loop, the max's read from memory and the exps' stores, serve it
    better.)"""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_store_block, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _store_block_overload(r):
    n = _BLOCK16 if r.dtype in (types.uint16, types.int16) else _BLOCK
    return lambda r: n


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
    if r.dtype in (types.uint16, types.int16):  # 16-bit tag views: 16-bit keys, 32 lanes

        def impl16(r):
            mk = np.int16(-32768)
            for j in range(r.shape[0]):
                mk = max(mk, key16(r[j]))
            return bits_to_f32(r, key16(mk))

        return impl16
    return None


@_jit_inline
def _max(r):
    """max_c r_c (len >= 1) over the non-NaN entries, exactly; NaN if a positive NaN is present
    (a negative NaN is skipped: see the note above)."""
    return _key_max(r)


@_jit
def _has_nan(r):
    """Whether any r_c is NaN (run only on the rare blocks whose max is -inf)."""
    for j in range(r.shape[0]):
        v = load(r, j)
        if v != v:
            return True
    return False


@_jit_fast
def _sum_exp(r, m):
    """Σ_c exp(r_c - m)."""
    wide()
    s = compute(r, 0)
    for j in range(r.shape[0]):
        s += exp_shifted(r, load(r, j) - m)
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
        wide()
        dst = r if inplace else out
        s = compute(r, 0)
        for j in range(r.shape[0]):
            e = exp_shifted(r, load(r, j) - m)
            put(dst, j, e)
            s += e
        return s

    return exp_store


_exp_store, _exp_inplace = _to_and_inplace(_make_exp)


def _make_scale(inplace):
    @_jit_vec
    def scale_to(g, out, c):
        """out_c = g_c·c (over g itself in place)."""
        dst = g if inplace else out
        for j in range(g.shape[0]):
            put(dst, j, g[j] * c)

    return scale_to


_scale_to, _scale_inplace = _to_and_inplace(_make_scale)


def _make_scale_sub(inplace):
    @_jit_vec
    def scale_sub_to(g, out, c, b, w):
        """out_c = g_c·c - b·w_c (over g itself in place)."""
        dst = g if inplace else out
        for j in range(g.shape[0]):
            put(dst, j, g[j] * c - b * w[j])

    return scale_sub_to


_scale_sub_to, _scale_sub_inplace = _to_and_inplace(_make_scale_sub)


@_jit_inline
def _max_sum_exp_store(r, out, inplace, mblk, bl):
    """:func:`_max_sum_exp` that also stores each block's exps: out[block] = exp(r - m_b), over
    blocks of ``bl`` (``_store_block(r)``; ``mblk`` has one entry per block).

    m_b, the running max when the block was exponentiated, is saved in ``mblk``; the final
    e_c = exp(r_c - m) is out_c·exp(m_b - m), which :func:`_finish_blocks` folds into its scale,
    so every exp is computed once. ``inplace``: out is r itself. ``r`` may be a 16-bit tag
    view (read on the fly); ``out`` is in the compute dtype.
    """
    C = r.shape[0]
    m = compute(r, -np.inf)
    s = compute(r, 0)
    for k in range(mblk.shape[0]):
        lo = k * bl
        blk = r[lo : min(lo + bl, C)]
        ob = out[lo : min(lo + bl, C)]
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            return mb, compute(r, np.nan)
        if mb == -np.inf:  # exp(-inf) = 0 whatever the shift; a NaN hidden among them counts
            if _has_nan(blk):
                return mb, compute(r, np.nan)
            _fill(ob, 0.0)
            mblk[k] = -np.inf
            continue
        if mb > m:
            s = s * compute(r, math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        if inplace:
            s += _exp_inplace(ob, ob, m)
        else:
            s += _exp_store(blk, ob, m)
        mblk[k] = m
    if m == -np.inf:
        return m, compute(r, np.nan)
    return m, s


@_jit_inline
def _finish_range(g, out, inplace, m, mblk, bl, c, b, w, smooth, lo, hi):
    """out_c = g_c·c·exp(m_b - m) (- b·w_c if smooth) for c in [lo, hi) within one block b;
    ``inplace``: out is g itself (else out may be a 16-bit tag view, rounded on the store)."""
    f = compute(g, c * math.exp(mblk[lo // bl] - np.float64(m)))
    if smooth and inplace:
        _scale_sub_inplace(g[lo:hi], g[lo:hi], f, compute(g, b), w[lo:hi])
    elif smooth:
        _scale_sub_to(g[lo:hi], out[lo:hi], f, compute(g, b), w[lo:hi])
    elif inplace:
        _scale_inplace(g[lo:hi], g[lo:hi], f)
    else:
        _scale_to(g[lo:hi], out[lo:hi], f)


@_jit_inline
def _finish_blocks(g, out, inplace, m, mblk, bl, c, b, w, smooth):
    """out_c = g_c·c·exp(m_b - m) (- b·w_c if smooth), block by block (see
    _max_sum_exp_store): the pass that writes the row's result, rounded into ``out`` when it is
    a 16-bit tag view (``inplace``: out is g itself)."""
    C = g.shape[0]
    for k in range(mblk.shape[0]):
        lo = k * bl
        _finish_range(g, out, inplace, m, mblk, bl, c, b, w, smooth, lo, min(lo + bl, C))


@_jit_fast
def _dot(r, w):
    """Σ_c r_c·w_c."""
    s = compute(r, 0)
    for j in range(r.shape[0]):
        s += load(r, j) * w[j]
    return s


@_jit_fast
def _dot_shift(r, w, m):
    """Σ_c w_c·(r_c - m)."""
    s = compute(r, 0)
    for j in range(r.shape[0]):
        s += w[j] * (load(r, j) - m)
    return s


# (r - m) - log_s, not r - (m + log_s): the max is subtracted first, as torch does, so the
# log-sum is not rounded away when the logits are large (float32 [1e8, 1e8] gives -log 2).
@_jit_vec
def _shift_sub_to(r, out, m, log_s):
    """out_c = (r_c - m) - log_s."""
    for j in range(r.shape[0]):
        put(out, j, (load(r, j) - m) - log_s)


@_jit_vec
def _shift_sub_inplace(r, m, log_s):
    """r_c ← (r_c - m) - log_s."""
    for j in range(r.shape[0]):
        put(r, j, (load(r, j) - m) - log_s)


@_jit
def _fill(g, v):
    """g_c = v (rounded into a 16-bit tag view)."""
    for j in range(g.shape[0]):
        put(g, j, v)


@_jit_fast
def _prob_loss(r, y, w, m, a1, a0):
    """Σ_c w_c·y'_c·(r_c - m), y' = a1·y + a0 (forward only)."""
    acc = compute(r, 0)
    for j in range(r.shape[0]):
        acc += w[j] * (a1 * load(y, j) + a0) * (load(r, j) - m)
    return acc


def _make_prob_grad(inplace):
    @_jit_fast
    def prob_grad(r, y, w, m, a1, a0, c, sc, out):
        """out_c = exp(r_c - m)·c - sc·w_c·y'_c (over r itself in place), y' = a1·y + a0;
        returns Σ_c w_c·y'_c·(r_c - m)."""
        wide()
        dst = r if inplace else out
        acc = compute(r, 0)
        for j in range(r.shape[0]):
            d = load(r, j) - m
            wy = w[j] * (a1 * load(y, j) + a0)
            acc += wy * d
            put(dst, j, exp_shifted(r, d) * c - sc * wy)
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
        wide()
        dst = r if inplace else out
        for j in range(r.shape[0]):
            put(dst, j, cap * vtanh(load(r, j) / cap))

    return cap_to


_cap_to, _cap_inplace = _to_and_inplace(_make_cap)


@_jit_fast
def _grad_index_cap(r, w, m, c, b, inv_cap):
    """r_c ← (exp(r_c - m)·c - b·w_c)·(1 - (r_c/cap)²); returns Σ_c w_c·(r_c - m) of the values
    read."""
    wide()
    acc = r.dtype.type(0)
    one = r.dtype.type(1)
    for j in range(r.shape[0]):
        z = r[j]
        d = z - m
        acc += w[j] * d
        q = z * inv_cap
        r[j] = (exp_shifted(r, d) * c - b * w[j]) * (one - q * q)
    return acc


@_jit_fast
def _grad_prob_cap(r, y, w, m, a1, a0, c, sc, inv_cap):
    """r_c ← (exp(r_c - m)·c - sc·w_c·y'_c)·(1 - (r_c/cap)²); returns Σ_c w_c·y'_c·(r_c - m)."""
    wide()
    acc = r.dtype.type(0)
    one = r.dtype.type(1)
    for j in range(r.shape[0]):
        z = r[j]
        d = z - m
        wy = w[j] * (a1 * load(y, j) + a0)
        acc += wy * d
        q = z * inv_cap
        r[j] = (exp_shifted(r, d) * c - sc * wy) * (one - q * q)
    return acc


@_jit
def _nonfinite_lse(r):
    """torch.logsumexp of a row known to be non-finite (a NaN or +inf, or all -inf): NaN if it
    holds a NaN, else +inf if it holds a +inf, else -inf. Blocks that an in-place pass already
    overwrote held finite values, so they change nothing here."""
    has_inf = False
    for j in range(r.shape[0]):
        v = load(r, j)
        if v != v:
            return np.nan
        if v == np.inf:
            has_inf = True
    return np.inf if has_inf else -np.inf


# ---------------------------------------------------------------------------------------------
# One row of each operation: pass 1 = _max_sum_exp (from memory), pass 2 = write (from L2).
#
# ``mode``: 0 forward only (``g`` is a dummy); 1 gradient into ``g`` (float32/float64 rows);
# 2 gradient over ``x`` itself (``g`` is ``x``); 3 gradient into ``g`` of 16-bit storage (``x``
# and ``g`` are 16-bit tag views, see _half.py; ``g`` may be ``x``). Row ``ei`` of ``e`` holds
# what a row derives in the compute dtype (its exps, or its capped logits): ``g[i]`` in mode 1,
# ``x[i]`` in mode 2, else a per-thread scratch row. A 16-bit row is thus read once from memory
# by pass 1, converted element by element as it loads, and its result is rounded into ``g`` by
# the pass that writes it: no separate conversion pass.
# ---------------------------------------------------------------------------------------------
@_jit
def _nan_row(i, x, g, mode, loss):
    """A non-finite row (or an impossible target): NaN loss and NaN gradient."""
    loss[i] = np.nan
    if mode == 1 or mode == 3:
        _fill(g[i], np.nan)
    elif mode == 2:
        _fill(x[i], np.nan)


@_jit
def _zero_row(i, x, g, mode, loss):
    """An ignored row: loss 0 and gradient 0."""
    loss[i] = 0
    if mode == 1 or mode == 3:
        _fill(g[i], 0.0)
    elif mode == 2:
        _fill(x[i], 0.0)


@_jit
def _cap_row(r, z, inplace, cap):
    """z = cap·tanh(r/cap), the soft-capped row, in the compute-dtype row ``z`` (``inplace``: z
    is r itself)."""
    if inplace:
        _cap_inplace(z, z, compute(z, cap))
    else:
        _cap_to(r, z, compute(z, cap))


@_jit_inline
def _ce_index_row(i, x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                  sce, sz, g, mode, loss, lse_out, e, ei, mbuf):
    """Cross-entropy of row i with class index target[i] and the options; see ``ce_index``.

    Without a cap, pass 1 stores the exponentials in ``e[ei]`` (where the gradient goes, or the
    16-bit row's scratch) and pass 2 scales them into the gradient (every exp computed once).
    With a cap, the capped row is formed first in ``e[ei]``, pass 1 reads it for (m, s) and
    pass 2 recomputes exp while writing the gradient, with the cap's factor, over it (then
    rounded into a 16-bit ``g``).
    """
    C = x.shape[1]
    dt = w.dtype.type  # the compute dtype
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
    r = x[i]
    bl = _store_block(r)
    er = e[ei]
    if has_cap:
        _cap_row(r, er, mode == 2, cap)
        z_t = np.float64(er[tt])
        m, s = _max_sum_exp(er)
        mblk = mbuf[:0]
    else:
        z_t = np.float64(load(r, tt))  # read before an in-place overwrite
        if valid and eps > 0:  # Σ_c w_c·(x_c - m), read before an in-place overwrite
            wd = np.float64(_dot_shift(r, w, _max(r)))  # the same max as the pass below
        if mode == 0 or not valid:
            m, s = _max_sum_exp(r)
            mblk = mbuf[:0]
        else:
            mblk = mbuf[: (C + bl - 1) // bl]
            m, s = _max_sum_exp_store(r, er, mode == 2, mblk, bl)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(er) if has_cap else _nonfinite_lse(r)
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
        c = coef / np.float64(s)
        if has_cap:
            wd = np.float64(_grad_index_cap(er, w, m, dt(c), dt(b), dt(1.0 / cap)))
            q = z_t / cap
            er[t] -= dt(a * (1.0 - q * q))
            if mode == 3:
                _copy(er, g[i])  # rounded into the 16-bit gradient
        else:
            # er holds exp(x - m_b) per block: scale to p·coef, subtract b·w, a at the target.
            gr = g[i]
            _finish_blocks(er, gr, mode != 3, m, mblk, bl, c, b, w, eps > 0)
            if mode == 3:  # the target's entry finished in er too, then rounded once
                _finish_range(er, er, True, m, mblk, bl, c, b, w, eps > 0, t, t + 1)
                put(gr, t, er[t] - dt(a))
            else:
                er[t] -= dt(a)
    elif has_cap and eps > 0:
        wd = np.float64(_dot_shift(er, w, m))
    li = w_t * (log_s - (z_t - np.float64(m)))
    if eps > 0:
        li = (1.0 - eps) * li + (eps / C) * (wsum * log_s - wd)
    loss[i] = li


@_jit_inline
def _ce_prob_row(i, x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss,
                 lse_out, e, ei):
    """Cross-entropy of row i with probability targets y[i] and the options; see ``ce_prob``.

    One pass after (m, s): the gradient is written (rounded into a 16-bit ``g``) while the loss
    is summed; with a cap, over the capped row in ``e[ei]``.
    """
    yr = y[i]
    dt = w.dtype.type
    r = x[i]
    er = e[ei]
    if has_cap:
        _cap_row(r, er, mode == 2, cap)
        m, s = _max_sum_exp(er)
    else:
        m, s = _max_sum_exp(r)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(er) if has_cap else _nonfinite_lse(r)
        _nan_row(i, x, g, mode, loss)
        return
    log_s = math.log(np.float64(s))
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    # loss = -Σ w y' (z - m - log s) = T·log s - Σ w y' (z - m), T = Σ w y'. The large term
    # Σ w y' (z - m) is summed from exact per-element differences.
    tot = np.float64(a1) * np.float64(_dot(yr, w)) + np.float64(a0) * wsum
    if mode == 0:
        acc = _prob_loss(er, yr, w, m, a1, a0) if has_cap else _prob_loss(r, yr, w, m, a1, a0)
    else:
        sc = np.float64(sce[i])
        coef = sc * tot
        if zscale:
            coef += np.float64(sz[i]) * (2.0 * zscale) * lse
        c = dt(coef / np.float64(s))
        if has_cap:
            acc = _grad_prob_cap(er, yr, w, m, a1, a0, c, dt(sc), dt(1.0 / cap))
            if mode == 3:
                _copy(er, g[i])  # rounded into the 16-bit gradient
        elif mode == 2:
            acc = _prob_grad_inplace(r, yr, w, m, a1, a0, c, dt(sc), r)
        else:
            acc = _prob_grad_to(r, yr, w, m, a1, a0, c, dt(sc), g[i])
    loss[i] = tot * log_s - np.float64(acc)


@_jit_fast
def _sum_exp_rest(r, m):
    """(Σ_{c: r_c < m} exp(r_c - m), #{c: r_c = m}): the sum without the max's own terms, and
    how many entries equal the max (each of those would add exactly 1)."""
    wide()
    s = compute(r, 0)
    n = compute(r, 0)
    for j in range(r.shape[0]):
        d = load(r, j) - m
        top = d == 0
        s += compute(r, 0) if top else exp_shifted(r, d)
        n += compute(r, 1) if top else compute(r, 0)
    return s, n


@_jit_fast
def _copy_sum_exp(r, out, m):
    """Σ_c exp(r_c - m), copying r into out on the way (out_c = r_c)."""
    wide()
    s = compute(r, 0)
    for j in range(r.shape[0]):
        v = load(r, j)
        put(out, j, v)
        s += exp_shifted(r, v - m)
    return s


@_jit_vec
def _copy(r, out):
    """out_c = r_c (rounded into a 16-bit tag view)."""
    for j in range(r.shape[0]):
        put(out, j, load(r, j))


@_jit
def _max_sum_exp_copy(r, out, copy):
    """:func:`_max_sum_exp`'s online pass that, with ``copy``, also copies the row into out on
    the way: the row's output is then written while the row is read from memory, and the second
    pass runs in the cache."""
    C = r.shape[0]
    m = compute(r, -np.inf)
    s = compute(r, 0)
    for lo in range(0, C, _BLOCK):
        hi = min(lo + _BLOCK, C)
        blk = r[lo:hi]
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            return mb, compute(r, np.nan)
        if mb == -np.inf:  # adds exactly 0, unless a (negative) NaN hides among the -inf
            if _has_nan(blk):
                return mb, compute(r, np.nan)
            if copy:
                _copy(blk, out[lo:hi])
            continue
        if mb > m:
            s = s * compute(r, math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        if copy:
            s += _copy_sum_exp(blk, out[lo:hi], m)
        else:
            s += _sum_exp(blk, m)
    if m == -np.inf:
        return m, compute(r, np.nan)
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


@_jit_inline
def _log_softmax_row(i, x, out, inplace, copy):
    """out[i] = (x[i] - m) - log1p(s'), s' = Σ exp(x[i] - m) without the max's own 1.

    Pass 1 (:func:`_max_sum_exp_copy`) reads the row from memory and, with ``copy``, copies it
    into out; pass 2 shifts out in place, in the cache: writing out only in pass 2 would make
    that pass wait on memory for every line of out it first touches (measured ~15% slower,
    single thread). 16-bit rows (tag views) are not copied: pass 2 re-reads x[i] (from L2) and
    writes the rounded result.
    """
    r = x[i]
    o = r if inplace else out[i]
    m, s = _max_sum_exp_copy(r, o, copy)
    if not math.isfinite(s):
        _fill(o, np.nan)
        return
    log_s = compute(r, _log1p_rest(r, m, s))
    if copy or inplace:
        _shift_sub_inplace(o, m, log_s)
    else:
        _shift_sub_to(r, o, m, log_s)


@_jit_inline
def _softmax_row(i, x, out, inplace, e, ei, direct, mbuf):
    """out[i] = exp(x[i] - m) / Σ exp(x[i] - m): pass 1 stores the exps in e[ei] (``direct``:
    that is out[i] itself; else a compute-dtype scratch row for 16-bit storage), pass 2 scales
    them into out[i]."""
    r = x[i]
    C = r.shape[0]
    o = r if inplace else out[i]
    er = e[ei]
    bl = _store_block(r)
    mblk = mbuf[: (C + bl - 1) // bl]
    m, s = _max_sum_exp_store(r, er, inplace and direct, mblk, bl)
    if not math.isfinite(s):
        _fill(o, np.nan)
        return
    _finish_blocks(er, o, direct, m, mblk, bl, 1.0 / np.float64(s), 0.0, er, False)


# ---------------------------------------------------------------------------------------------
# Drivers: rows [lo, hi), with the GIL released, so that the host function can run blocks of
# rows on several threads at once (see xent._kernels._threads). The ``*16`` drivers take 16-bit
# tag views (``_half.tagged``) and give each thread its float32 scratch row.
# ---------------------------------------------------------------------------------------------
_jit_rows = numba.njit(nogil=True, cache=True)


@_jit
def _block_maxima(x):
    """Scratch for the block maxima of one row of ``x`` (:func:`_max_sum_exp_store`'s ``mblk``),
    allocated once per driver call rather than once per row."""
    bl = _store_block(x[0]) if x.shape[0] > 0 else 1
    return np.empty(max(1, (x.shape[1] + bl - 1) // bl))


@_jit_rows
def ce_index_rows(x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse, sce, sz,
                  g, mode, loss, lse, lo, hi):
    work = np.empty((1, x.shape[1] if (has_cap and mode == 0) else 0), x.dtype)
    e = g if mode == 1 else (x if mode == 2 else work)
    mbuf = _block_maxima(x)
    for i in range(lo, hi):
        _ce_index_row(i, x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                      sce, sz, g, mode, loss, lse, e, i if mode != 0 else 0, mbuf)


@_jit_rows
def ce_prob_rows(x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse, lo,
                 hi):
    work = np.empty((1, x.shape[1] if (has_cap and mode == 0) else 0), x.dtype)
    e = g if mode == 1 else (x if mode == 2 else work)
    for i in range(lo, hi):
        _ce_prob_row(i, x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse,
                     e, i if mode != 0 else 0)


@_jit_rows
def log_softmax_rows(x, out, inplace, lo, hi):
    for i in range(lo, hi):
        _log_softmax_row(i, x, out, inplace, not inplace)


@_jit_rows
def softmax_rows(x, out, inplace, lo, hi):
    e = x if inplace else out
    mbuf = _block_maxima(x)
    for i in range(lo, hi):
        _softmax_row(i, x, out, inplace, e, i, True, mbuf)


@_jit_rows
def ce_index_rows16(x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse, sce,
                    sz, g, mode, loss, lse, lo, hi):
    """``ce_index_rows`` on 16-bit tag views; ``mode`` 0 or 3."""
    work = np.empty((1, x.shape[1] if (has_cap or mode == 3) else 0), np.float32)
    mbuf = _block_maxima(x)
    for i in range(lo, hi):
        _ce_index_row(i, x, target, w, wsum, ignore_index, eps, zscale, cap, has_cap, want_lse,
                      sce, sz, g, mode, loss, lse, work, 0, mbuf)


@_jit_rows
def ce_prob_rows16(x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse, lo,
                   hi):
    """``ce_prob_rows`` on a 16-bit tag view ``x`` (``y``: a tag view or float32); ``mode`` 0
    or 3."""
    work = np.empty((1, x.shape[1] if has_cap else 0), np.float32)
    for i in range(lo, hi):
        _ce_prob_row(i, x, y, w, wsum, a1, a0, zscale, cap, has_cap, sce, sz, g, mode, loss, lse,
                     work, 0)


@_jit_rows
def rowwise_rows16(x, out, log, inplace, lo, hi):
    """log_softmax (``log``) or softmax of 16-bit tag-view rows into ``out`` (``inplace``: x)."""
    work = np.empty((1, 0 if log else x.shape[1]), np.float32)
    mbuf = _block_maxima(x)
    for i in range(lo, hi):
        if log:
            _log_softmax_row(i, x, out, inplace, False)
        else:
            _softmax_row(i, x, out, inplace, work, 0, False, mbuf)
