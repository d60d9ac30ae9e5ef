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

Arguments and switches: the cross-entropy row functions take their options by name
(``IndexTargets``, ``ProbTargets``, ``Options``: named tuples typed field by field) and three
switches, ``grad`` (a gradient is written), ``inplace`` (over ``x`` itself) and ``capped``
(soft-capping), that are constants of each compiled driver (``CE_ROWS``, ``ROWWISE_ROWS``:
one definition, one compiled variant per combination, on first use). In place, each writing
loop runs its in-place form (``_to_and_inplace``): the same source compiled with its output
being its input.

16-bit rows (bfloat16 or float16 as their tag views, see ``_half.py``): every loop reads
its elements through ``_half.load`` and writes them through ``_half.put``, so the same drivers
and row functions compile for 16-bit storage too (``_half.is_tagged`` is a constant of the
types): pass 1 reads the 16-bit row from memory, converting each element as it loads, and
stores its exps in a per-thread float32 scratch row (128 KiB for C = 32768, it stays in L2);
the pass that writes the result rounds it to nearest even straight into the 16-bit row. The
math is the float32 kernel's, not a copy of it, and a 16-bit row takes no more passes than a
float32 one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .._thresholds import ROW_BLOCK, ROW_BLOCK16
from ._exp import _i32_as_f32, _i64_as_f64, exp_shifted, vexp, vtanh
from ._half import bits_to_f32, compute, is_tagged, key16, load, put, wide

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


@_jit_inline
def _online_max_sum_exp(r, out, store, copy, inplace, mblk, bl):
    """One read of the row: (m, s) with m = max_c r_c and s = Σ_c exp(r_c - m).

    Online over blocks of ``bl`` (as in "online normaliser calculation for softmax", Milakov
    and Gimelshein 2018): each block's max, then its exps against the running max, the running
    sum rescaled by exp(m_old - m_new) when the max grows. The block is re-read from L1, so the
    row crosses memory once and its exps overlap the memory traffic. On the way, with
    ``store``: out[block] = exp(r - m_b), m_b (the running max when the block was
    exponentiated) saved in mblk[k] (``inplace``: out is r itself); the final
    e_c = exp(r_c - m) is out_c·exp(m_b - m), which :func:`_finish_blocks` folds into its
    scale, so every exp is computed once. With ``copy``: out = r (the row's output is then
    written while the row is read from memory, and the second pass runs in the cache). ``r``
    may be a 16-bit tag view (read on the fly); a stored ``out`` is in the compute dtype.
    The switches are constants at every call site (this function is inlined).

    Non-finite rows: returns s = NaN when the row has a NaN or a +inf, or is all -inf (the rows
    for which PyTorch's log_softmax is NaN). A block that is all -inf adds exactly 0.
    """
    C = r.shape[0]
    m = compute(r, -np.inf)
    s = compute(r, 0)
    for k in range((C + bl - 1) // bl):
        lo = k * bl
        hi = min(lo + bl, C)
        blk = r[lo:hi]
        mb = _max(blk)
        if mb != mb or mb == np.inf:
            return mb, compute(r, np.nan)
        if mb == -np.inf:  # exp(-inf) = 0 whatever the shift; a NaN hidden among them counts
            if _has_nan(blk):
                return mb, compute(r, np.nan)
            if store:
                _fill(out[lo:hi], 0.0)
                mblk[k] = -np.inf
            elif copy:
                _copy(blk, out[lo:hi])
            continue
        if mb > m:
            s = s * compute(r, math.exp(np.float64(m) - np.float64(mb)))  # s = 0 while m = -inf
            m = mb
        if store and inplace:
            s += _exp_inplace(out[lo:hi], out[lo:hi], m)
        elif store:
            s += _exp_store(blk, out[lo:hi], m)
        elif copy:
            s += _copy_sum_exp(blk, out[lo:hi], m)
        else:
            s += _sum_exp(blk, m)
        if store:
            mblk[k] = m
    if m == -np.inf:
        return m, compute(r, np.nan)
    return m, s


@_jit_inline
def _max_sum_exp(r, mbuf):
    """:func:`_online_max_sum_exp` alone (``mbuf`` is not written)."""
    return _online_max_sum_exp(r, r, False, False, False, mbuf, _BLOCK)


@_jit_inline
def _max_sum_exp_copy(r, out, copy, mbuf):
    """:func:`_online_max_sum_exp` copying the row into ``out`` with ``copy``."""
    return _online_max_sum_exp(r, out, False, copy, False, mbuf, _BLOCK)


@_jit_inline
def _max_sum_exp_store(r, out, inplace, mblk, bl):
    """:func:`_online_max_sum_exp` storing the blocks' exps in ``out`` (blocks of ``bl``,
    ``_store_block(r)``; ``mblk`` has one entry per block)."""
    return _online_max_sum_exp(r, out, True, False, inplace, mblk, bl)


@_jit
def _log_sum(s, rest, n):
    """lse - m = log s for s = Σ_c exp(x_c - m) of a row (or position) with maximum m: log s
    where s >= 2 (as exact as log1p(s - 1) there), else log1p(rest + (n - 1)), ``rest`` the sum
    without the n terms equal to the max (each exactly 1), so terms below the float's resolution
    at 1 count: log1p(e^-40) = 4.25e-18 for [0, -40], where log s is 0 (SciPy's logsumexp since
    gh-18295). The row and K-dimensional kernels both take their log-sum from here."""
    if s >= 2:
        return math.log(np.float64(s))
    return math.log1p(np.float64(rest) + (np.float64(n) - 1.0))


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
    """Σ_c r_c·w_c (``w`` may be a 16-bit tag view too)."""
    s = compute(r, 0)
    for j in range(r.shape[0]):
        s += load(r, j) * load(w, j)
    return s


@_jit_fast
def _sum(r):
    """Σ_c r_c."""
    s = compute(r, 0)
    for j in range(r.shape[0]):
        s += load(r, j)
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
# One row of each operation: pass 1 = the online max and sum of exps (from memory), pass 2 =
# write (from L2).
#
# Arguments by name: the cross-entropy options arrive as the named tuples ``IndexTargets``,
# ``ProbTargets`` and ``Options`` (typed field by field), the outputs as ``g`` (the gradient
# rows: a dummy without ``grad``, ``x`` itself in place) and ``loss``/``lse``. The switches
# ``grad`` (a gradient is written), ``inplace`` (``g`` is ``x``, float rows) and ``capped``
# (soft-capping) are constants of each compiled driver (``_variants``), so every branch on them
# is decided at compile time. 16-bit storage is a property of the types (tag views,
# ``is_tagged``): ``work`` is then a per-thread float32 scratch row that holds what the row
# derives in the compute dtype (its exps or its capped logits), rounded into ``g`` by the pass
# that writes it; for float rows ``work`` is ``g[i]`` itself (the scratch with no gradient).
# ---------------------------------------------------------------------------------------------
class IndexTargets(NamedTuple):
    """Class-index targets: ``target`` int64 (M,), each in [0, C) or ``ignore_index``;
    ``ignored_lse``: an ignored row is still read for its lse."""

    target: np.ndarray
    ignore_index: np.int64
    ignored_lse: bool


class ProbTargets(NamedTuple):
    """Probability targets ``y`` (M, C) (compute dtype or a 16-bit tag view) and label
    smoothing as y' = a1·y + a0 (a1 = 1-ε, a0 = ε/C, compute dtype)."""

    y: np.ndarray
    a1: np.floating
    a0: np.floating


class Options(NamedTuple):
    """The cross-entropy options: class weights (C,) (ones without) and their sum, label
    smoothing ε, the z-loss scale ζ, the soft-cap (used only by the capped drivers), and the
    rows' gradient scales s (M,) and z-loss scales s^z (M,) (zeros without a z-loss)."""

    weight: np.ndarray
    weight_sum: float
    label_smoothing: float
    lse_square_scale: float
    softcap: float
    row_scale: np.ndarray
    z_row_scale: np.ndarray


@_jit
def _fill_row(i, g, grad, loss, v):
    """loss[i] = v and, with ``grad``, the gradient row g[i] = v: a non-finite row or an
    impossible target (NaN), or an ignored row (0)."""
    loss[i] = v
    if grad:
        _fill(g[i], v)


@_jit
def _cap_row(r, z, inplace, cap):
    """z = cap·tanh(r/cap), the soft-capped row, in the compute-dtype row ``z`` (``inplace``: z
    is r itself)."""
    if inplace:
        _cap_inplace(z, z, compute(z, cap))
    else:
        _cap_to(r, z, compute(z, cap))


@_jit_inline
def _ce_index_row(i, x, targets, options, g, loss, lse_out, work, mbuf, grad, inplace, capped):
    """Cross-entropy of row i with class index targets.target[i] and the options; see
    ``ce_index``.

    Without a cap, pass 1 stores the exponentials in ``work`` (the gradient row, or the 16-bit
    row's scratch) and pass 2 scales them into the gradient (every exp computed once). With a
    cap, the capped row is formed first in ``work``, pass 1 reads it for (m, s) and pass 2
    recomputes exp while writing the gradient, with the cap's factor, over it (then rounded
    into a 16-bit ``g``).
    """
    C = x.shape[1]
    tg = targets
    o = options
    w = o.weight
    wsum = o.weight_sum
    eps = o.label_smoothing
    dt = w.dtype.type  # the compute dtype
    half = is_tagged(x)
    t = tg.target[i]
    valid = t != tg.ignore_index
    if valid and (t < 0 or t >= C):  # impossible after validation; never index out of bounds
        _fill_row(i, g, grad, loss, np.nan)
        lse_out[i] = np.nan
        return
    if not valid and not tg.ignored_lse:
        _fill_row(i, g, grad, loss, 0.0)
        return
    tt = t if valid else 0
    r = x[i]
    bl = _store_block(r)
    er = work
    mblk = mbuf[: (C + bl - 1) // bl]
    if capped:
        _cap_row(r, er, inplace, o.softcap)
        z_t = np.float64(er[tt])
        m, s = _max_sum_exp(er, mbuf)
    else:
        z_t = np.float64(load(r, tt))  # read before an in-place overwrite
        if valid and eps > 0:  # Σ_c w_c·(x_c - m), read before an in-place overwrite
            wd = np.float64(_dot_shift(r, w, _max(r)))  # the same max as the pass below
        if not grad or not valid:
            m, s = _max_sum_exp(r, mbuf)
        else:
            m, s = _max_sum_exp_store(r, er, inplace, mblk, bl)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(er) if capped else _nonfinite_lse(r)
        _fill_row(i, g, grad, loss, np.nan if valid else 0.0)
        return
    log_s = math.log(np.float64(s))  # lse - m
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    if not valid:
        _fill_row(i, g, grad, loss, 0.0)
        return
    # Everything in coordinates shifted by the row max m (d = z - m, lse - m = log s), so
    # (lse - z_t) and Σ_c w_c (lse - z_c) lose nothing to cancellation at large logits.
    w_t = np.float64(w[t])
    if grad:
        sc = np.float64(o.row_scale[i])
        a = (1.0 - eps) * w_t * sc  # coefficient of (p - onehot)
        b = (eps / C) * sc  # coefficient of (W·p - w)
        coef = a + b * wsum
        if o.lse_square_scale:
            coef += np.float64(o.z_row_scale[i]) * (2.0 * o.lse_square_scale) * lse
        c = coef / np.float64(s)
        if capped:
            cap = o.softcap
            wd = np.float64(_grad_index_cap(er, w, m, dt(c), dt(b), dt(1.0 / cap)))
            q = z_t / cap
            er[t] -= dt(a * (1.0 - q * q))
            if half:
                _copy(er, g[i])  # rounded into the 16-bit gradient
        else:
            # er holds exp(x - m_b) per block: scale to p·coef, subtract b·w, a at the target.
            gr = g[i]
            _finish_blocks(er, gr, not half, m, mblk, bl, c, b, w, eps > 0)
            if half:  # the target's entry finished in er too, then rounded once
                _finish_range(er, er, True, m, mblk, bl, c, b, w, eps > 0, t, t + 1)
                put(gr, t, er[t] - dt(a))
            else:
                er[t] -= dt(a)
    elif capped and eps > 0:
        wd = np.float64(_dot_shift(er, w, m))
    li = w_t * (log_s - (z_t - np.float64(m)))
    if eps > 0:
        li = (1.0 - eps) * li + (eps / C) * (wsum * log_s - wd)
    loss[i] = li


@_jit_inline
def _ce_prob_row(i, x, targets, options, g, loss, lse_out, work, mbuf, grad, inplace, capped):
    """Cross-entropy of row i with probability targets targets.y[i] and the options; see
    ``ce_prob``.

    One pass after (m, s): the gradient is written (rounded into a 16-bit ``g``) while the loss
    is summed; with a cap, over the capped row in ``work``.
    """
    pt = targets
    o = options
    w = o.weight
    a1 = pt.a1
    a0 = pt.a0
    yr = pt.y[i]
    dt = w.dtype.type
    half = is_tagged(x)
    r = x[i]
    er = work
    if capped:
        _cap_row(r, er, inplace, o.softcap)
        m, s = _max_sum_exp(er, mbuf)
    else:
        m, s = _max_sum_exp(r, mbuf)
    if not math.isfinite(s):
        lse_out[i] = _nonfinite_lse(er) if capped else _nonfinite_lse(r)
        _fill_row(i, g, grad, loss, np.nan)
        return
    log_s = math.log(np.float64(s))
    lse = np.float64(m) + log_s
    lse_out[i] = lse
    # loss = -Σ w y' (z - m - log s) = T·log s - Σ w y' (z - m), T = Σ w y'. The large term
    # Σ w y' (z - m) is summed from exact per-element differences.
    tot = np.float64(a1) * np.float64(_dot(yr, w)) + np.float64(a0) * o.weight_sum
    if not grad:
        acc = _prob_loss(er, yr, w, m, a1, a0) if capped else _prob_loss(r, yr, w, m, a1, a0)
    else:
        sc = np.float64(o.row_scale[i])
        coef = sc * tot
        if o.lse_square_scale:
            coef += np.float64(o.z_row_scale[i]) * (2.0 * o.lse_square_scale) * lse
        c = dt(coef / np.float64(s))
        if capped:
            acc = _grad_prob_cap(er, yr, w, m, a1, a0, c, dt(sc), dt(1.0 / o.softcap))
            if half:
                _copy(er, g[i])  # rounded into the 16-bit gradient
        elif inplace:
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
def _log1p_rest(r, m, s):
    """lse - m = log1p(s') for a row with max m and s = Σ_c exp(r_c - m) (finite), s' the sum
    without the max's own 1 (:func:`_log_sum`); where s < 2 the rest is summed again without
    the max's terms (from the cache)."""
    if s >= 2:
        return _log_sum(s, 0.0, 0.0)
    rest, n = _sum_exp_rest(r, m)
    return _log_sum(s, rest, n)


@_jit_inline
def _log_softmax_row(i, x, out, mbuf, inplace):
    """out[i] = (x[i] - m) - log1p(s'), s' = Σ exp(x[i] - m) without the max's own 1.

    Pass 1 reads the row from memory and (float rows, not in place) copies it into out; pass 2
    shifts out in place, in the cache: writing out only in pass 2 would make that pass wait on
    memory for every line of out it first touches (measured ~15% slower, single thread). 16-bit
    rows (tag views) are not copied: pass 2 re-reads x[i] (from L2) and writes the rounded
    result.
    """
    r = x[i]
    o = out[i]  # x[i] itself in place
    copy = not inplace and not is_tagged(x)
    m, s = _max_sum_exp_copy(r, o, copy, mbuf)
    if not math.isfinite(s):
        _fill(o, np.nan)
        return
    log_s = compute(r, _log1p_rest(r, m, s))
    if copy or inplace:
        _shift_sub_inplace(o, m, log_s)
    else:
        _shift_sub_to(r, o, m, log_s)


@_jit_inline
def _softmax_row(i, x, out, work, mbuf, inplace):
    """out[i] = exp(x[i] - m) / Σ exp(x[i] - m): pass 1 stores the exps in ``work`` (out[i]
    itself for float rows; a float32 scratch row for 16-bit storage), pass 2 scales them into
    out[i]."""
    r = x[i]
    C = r.shape[0]
    o = out[i]  # x[i] itself in place
    direct = not is_tagged(x)
    bl = _store_block(r)
    mblk = mbuf[: (C + bl - 1) // bl]
    m, s = _max_sum_exp_store(r, work, inplace and direct, mblk, bl)
    if not math.isfinite(s):
        _fill(o, np.nan)
        return
    _finish_blocks(work, o, direct, m, mblk, bl, 1.0 / np.float64(s), 0.0, work, False)


# ---------------------------------------------------------------------------------------------
# The vector-Jacobian products of softmax and log_softmax from the forward's output: one
# reduction pass (g and y from memory), one writing pass (from L2), one gradient written.
# ---------------------------------------------------------------------------------------------
@_jit_vec
def _softmax_grad_to(g, y, out, d):
    """out_c = y_c·(g_c - d)."""
    for j in range(g.shape[0]):
        put(out, j, load(y, j) * (load(g, j) - d))


@_jit_vec
def _log_softmax_grad_to(g, z, out, s):
    """out_c = g_c - exp(z_c)·s (``z`` any value: the full-range :func:`vexp`)."""
    wide()
    for j in range(g.shape[0]):
        put(out, j, load(g, j) - vexp(load(z, j)) * s)


@_jit_inline
def _softmax_backward_row(i, g, y, out):
    """out[i] = y[i]·(g[i] - <g[i], y[i]>)."""
    gr = g[i]
    yr = y[i]
    _softmax_grad_to(gr, yr, out[i], _dot(gr, yr))


@_jit_inline
def _log_softmax_backward_row(i, g, z, out):
    """out[i] = g[i] - exp(z[i])·Σ_c g[i, c]."""
    gr = g[i]
    _log_softmax_grad_to(gr, z[i], out[i], _sum(gr))


# ---------------------------------------------------------------------------------------------
# Drivers: rows [lo, hi), with the GIL released, so that the host function can run blocks of
# rows on several threads at once (see xent._kernels._threads). Each gives its thread the
# compute-dtype scratch row its rows need (16-bit tag views, or a capped forward pass).
# ---------------------------------------------------------------------------------------------
_jit_rows = numba.njit(nogil=True, cache=True)


@_jit
def _block_maxima(x):
    """Scratch for the block maxima of one row of ``x`` (:func:`_max_sum_exp_store`'s ``mblk``),
    allocated once per driver call rather than once per row."""
    bl = _store_block(x[0]) if x.shape[0] > 0 else 1
    return np.empty(max(1, (x.shape[1] + bl - 1) // bl))


def _scratch(x, n):
    """``np.empty((1, n))`` in the compute dtype of rows ``x`` (float32 for 16-bit tag views)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_scratch, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _scratch_overload(x, n):
    if x.dtype in (types.uint16, types.int16):
        return lambda x, n: np.empty((1, n), np.float32)
    return lambda x, n: np.empty((1, n), x.dtype)


def _work_row(g, i, scratch):
    """The compute-dtype row where row i derives its exps or capped logits: the gradient row
    g[i] itself for float rows, the scratch row for 16-bit tag views."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_work_row, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _work_row_overload(g, i, scratch):
    if g.dtype in (types.uint16, types.int16):
        return lambda g, i, scratch: scratch[0]
    return lambda g, i, scratch: g[i]


def _variants(make):
    """{(index, grad, inplace, capped): driver} from one definition ``make(index, grad, inplace,
    capped)``: each combination of the switches is its own compiled driver (compiled on first
    use), its switches constants. ``inplace`` only with ``grad``."""
    return {(index, grad, inplace, capped): make(index, grad, inplace, capped)
            for index in (True, False) for grad in (False, True)
            for inplace in ((False, True) if grad else (False,)) for capped in (False, True)}


def _make_ce_rows(index, grad, inplace, capped):
    @_jit_rows
    def ce_rows(x, targets, options, g, loss, lse, lo, hi):
        """Cross-entropy of rows [lo, hi) (float rows or 16-bit tag views): ``targets`` an
        IndexTargets (``index``) or a ProbTargets. ``index`` is a constant, so the other row
        function's call is pruned before typing."""
        half = is_tagged(x)
        work = _scratch(x, x.shape[1] if (capped or grad) and (half or not grad) else 0)
        mbuf = _block_maxima(x)
        for i in range(lo, hi):
            er = _work_row(g, i, work) if grad else work[0]
            if index:
                _ce_index_row(i, x, targets, options, g, loss, lse, er, mbuf, grad, inplace,
                              capped)
            else:
                _ce_prob_row(i, x, targets, options, g, loss, lse, er, mbuf, grad, inplace,
                             capped)

    return ce_rows


def _make_rowwise_rows(log, inplace):
    @_jit_rows
    def rowwise_rows(x, out, lo, hi):
        """softmax (log_softmax with ``log``) of rows [lo, hi) into ``out`` (x in place)."""
        work = _scratch(x, 0 if log or not is_tagged(x) else x.shape[1])
        mbuf = _block_maxima(x)
        for i in range(lo, hi):
            if log:
                _log_softmax_row(i, x, out, mbuf, inplace)
            else:
                _softmax_row(i, x, out, _work_row(out, i, work), mbuf, inplace)

    return rowwise_rows


#: The cross-entropy drivers, by (index targets, grad, inplace, capped).
CE_ROWS = _variants(_make_ce_rows)
#: softmax and log_softmax, by (log, inplace).
ROWWISE_ROWS = {(log, inplace): _make_rowwise_rows(log, inplace)
                for log in (False, True) for inplace in (False, True)}


@_jit_rows
def softmax_backward_rows(g, y, out, lo, hi):
    """:func:`_softmax_backward_row` over rows [lo, hi) (float rows or 16-bit tag views)."""
    for i in range(lo, hi):
        _softmax_backward_row(i, g, y, out)


@_jit_rows
def log_softmax_backward_rows(g, z, out, lo, hi):
    """:func:`_log_softmax_backward_row` over rows [lo, hi) (float rows or 16-bit tag views)."""
    for i in range(lo, hi):
        _log_softmax_backward_row(i, g, z, out)


# ---------------------------------------------------------------------------------------------
# The statistics path (issue 18): a temperature T, each row's entropy and argmax. Its own
# drivers (``CE_STATS_ROWS``), so the drivers above keep their code. One row:
#   1. er = cap·tanh(x/cap)/T (x/T without a cap): the row read from memory once, written into
#      the compute-dtype work row (the gradient row itself for float rows, x's own in place);
#   2. m = max_c er_c (the integer-key max), then in one vectorised pass over er (from L2):
#      s = Σ e_c, Σ e_c·(er_c - m) and the first c with er_c = m (the argmax), e_c = exp(er_c - m);
#   3. with a gradient, one pass writing d loss/dz - u·p ⊙ (z - Σ p z) times dz/dx (the
#      temperature's 1/T and the cap's 1 - tanh²), the exps recomputed.
# lse = m + log s, entropy = log s - Σ e·(z - m)/s. Every row, ignored or not, gets its lse,
# entropy and argmax; an ignored row's gradient is the entropy's alone.
# ---------------------------------------------------------------------------------------------
class Stats(NamedTuple):
    """The statistics path's arguments: ``temperature`` T, ``entropy_scale`` u (M,) (the
    entropy's upstream gradient; zeros without), and the outputs ``entropy`` (M,) and
    ``argmax`` (M,) int64. With ``given``, ``lse_in`` and ``entropy_in`` (M,) are each row's
    lse and entropy from an earlier pass over the same logits (a backward pass after the
    forward): a row with both finite then skips its max and sum passes (m = lse, s = 1,
    Σ e·(z - m) = -H), and its argmax output is not computed."""

    temperature: float
    entropy_scale: np.ndarray
    entropy: np.ndarray
    argmax: np.ndarray
    given: bool
    lse_in: np.ndarray
    entropy_in: np.ndarray


def _make_temper(inplace, capped):
    @_jit_vec
    def temper(r, out, cap, temp):
        """out_c = cap·tanh(r_c/cap)/T (r_c/T without ``capped``; over r itself in place)."""
        wide()
        dst = r if inplace else out
        c = compute(r, cap)
        t = compute(r, temp)
        for j in range(r.shape[0]):
            if capped:
                put(dst, j, (c * vtanh(load(r, j) / c)) / t)
            else:
                put(dst, j, load(r, j) / t)

    return temper


_TEMPER = {(inplace, capped): _make_temper(inplace, capped)
           for inplace in (False, True) for capped in (False, True)}
_temper_to, _temper_inplace = _TEMPER[False, False], _TEMPER[True, False]
_temper_cap_to, _temper_cap_inplace = _TEMPER[False, True], _TEMPER[True, True]


@_jit_fast
def _stats_sum(r, m):
    """(Σ_c e_c, Σ_c e_c·(r_c - m)) for e_c = exp(r_c - m) of a row with a finite maximum m (an
    entry of -inf adds 0 to both: its shift is clamped at -1e30, not selected, which keeps the
    loop vectorised: a select there made it 5x slower)."""
    wide()
    s = compute(r, 0)
    sd = compute(r, 0)
    low = compute(r, -1e30)
    for j in range(r.shape[0]):
        d = r[j] - m
        e = exp_shifted(r, d)
        s += e
        sd += e * max(d, low)
    return s, sd


@_jit
def _first_equal(r, m):
    """The first c with r_c = m (the argmax, first on ties, of a row whose maximum is m): blocks
    of 256 counted with a vectorised comparison, the block holding it scanned."""
    n = r.shape[0]
    for k in range(0, n, 256):
        blk = r[k:min(k + 256, n)]
        c = 0
        for j in range(blk.shape[0]):
            c += blk[j] == m
        if c:
            for j in range(blk.shape[0]):
                if blk[j] == m:
                    return k + j
    return 0


@_jit
def _nonfinite_argmax(r):
    """torch.argmax of a row without a finite maximum: the first NaN, else the first +inf,
    else 0 (every entry -inf)."""
    inf_at = -1
    for j in range(r.shape[0]):
        v = r[j]
        if v != v:
            return j
        if v == np.inf and inf_at < 0:
            inf_at = j
    return max(inf_at, 0)


def _make_grad_stats(prob, capped):
    @_jit_fast
    def grad_stats(r, w, y, m, a1, a0, c0, k, b, q_scale, inv_t):
        """r_c ← (e_c·(c0 + k·d_c) - b·w_c·y'_c)·chain_c over the tempered row r (d = r - m,
        e = exp(d); y' = a1·y + a0 with ``prob``, else 1; chain = (1 - (r_c·q_scale)²)/T with
        ``capped``, else 1/T). Returns Σ_c w_c·y'_c·d_c of the values read."""
        wide()
        acc = r.dtype.type(0)
        one = r.dtype.type(1)
        low = r.dtype.type(-1e30)  # (a clamp, not a select: see _stats_sum)
        for j in range(r.shape[0]):
            z = r[j]
            d = z - m
            if prob:
                wy = w[j] * (a1 * load(y, j) + a0)
            else:
                wy = w[j]
            acc += wy * d
            g = exp_shifted(r, d) * (c0 + k * max(d, low))
            if capped:
                q = z * q_scale
                r[j] = (g - b * wy) * ((one - q * q) * inv_t)
            else:
                r[j] = (g - b * wy) * inv_t
        return acc

    return grad_stats


#: The statistics path's gradient loop, by (probability targets, capped): constants of each.
_GRAD_STATS = {(prob, capped): _make_grad_stats(prob, capped)
               for prob in (False, True) for capped in (False, True)}
_grad_stats_index, _grad_stats_index_cap = _GRAD_STATS[False, False], _GRAD_STATS[False, True]
_grad_stats_prob, _grad_stats_prob_cap = _GRAD_STATS[True, False], _GRAD_STATS[True, True]


def _make_ce_stats_row(index):
    """The statistics path's row function for class-index targets (``index``, a constant of
    the compiled code: the other kind's branches are pruned before typing) or probabilities."""

    @_jit_inline
    def ce_stats_row(i, x, targets, options, st, g, loss, lse_out, work, grad, inplace, capped):
        """Cross-entropy of row i (class index ``targets.target[i]`` with ``index``, else the
        probabilities ``targets.y[i]``) at the temperature, with its entropy and argmax; see the
        section's comment."""
        o = options
        w = o.weight
        eps = o.label_smoothing
        C = x.shape[1]
        dt = w.dtype.type
        half = is_tagged(x)
        temp = st.temperature
        r = x[i]
        er = work
        if capped and inplace:
            _temper_cap_inplace(er, er, o.softcap, temp)
        elif capped:
            _temper_cap_to(r, er, o.softcap, temp)
        elif inplace:
            _temper_inplace(er, er, 1.0, temp)
        else:
            _temper_to(r, er, 1.0, temp)
        valid = True
        t = 0
        if index:
            t = targets.target[i]
            valid = t != targets.ignore_index
            if valid and (t < 0 or t >= C):  # impossible after validation
                _fill_row(i, g, grad, loss, np.nan)
                lse_out[i] = np.nan
                st.entropy[i] = np.nan
                st.argmax[i] = 0
                return
        tt = t if valid else 0
        u = np.float64(st.entropy_scale[i])
        s = compute(er, 1)
        sd = compute(er, 0)
        first = 0
        if st.given and math.isfinite(st.lse_in[i]) and math.isfinite(st.entropy_in[i]):
            m = compute(er, st.lse_in[i])  # p = exp(z - lse): s = 1, Σ p·(z - lse) = -H
            sd = compute(er, -st.entropy_in[i])
            finite = True
        else:
            m = _max(er)
            finite = m == m and math.isfinite(m)
            if finite:
                s, sd = _stats_sum(er, m)
                finite = math.isfinite(s)
                first = _first_equal(er, m)
        if not finite:
            lse_out[i] = _nonfinite_lse(er)
            st.entropy[i] = np.nan
            st.argmax[i] = _nonfinite_argmax(er)
            _fill_row(i, g, grad, loss, np.nan if valid or (grad and u != 0) else 0.0)
            if not valid:
                loss[i] = 0.0
            return
        log_s = math.log(np.float64(s))
        mu = np.float64(sd) / np.float64(s)  # Σ p (z - m)
        lse = np.float64(m) + log_s
        lse_out[i] = lse
        st.entropy[i] = log_s - mu
        st.argmax[i] = first
        z_t = np.float64(er[tt])
        if index:
            w_t = np.float64(w[tt]) if valid else 0.0
            tot = 1.0
        else:
            yr = targets.y[i]
            tot = (np.float64(targets.a1) * np.float64(_dot(yr, w))
                   + np.float64(targets.a0) * o.weight_sum)
        acc = 0.0
        if grad:
            sc = np.float64(o.row_scale[i]) if valid else 0.0
            if index:
                a = (1.0 - eps) * w_t * sc  # coefficient of (p - onehot)
                b = (eps / C) * sc  # coefficient of (W·p - w)
                coef = a + b * o.weight_sum
            else:
                a = 0.0
                b = sc
                coef = sc * tot
            if o.lse_square_scale and valid:
                coef += np.float64(o.z_row_scale[i]) * (2.0 * o.lse_square_scale) * lse
            c0 = (coef + u * mu) / np.float64(s)
            k = -u / np.float64(s)
            q_scale = temp / o.softcap if capped else 1.0
            if index and capped:
                acc = np.float64(_grad_stats_index_cap(er, w, w, m, dt(0.0), dt(1.0), dt(c0),
                                                       dt(k), dt(b), dt(q_scale), dt(1.0 / temp)))
            elif index:
                acc = np.float64(_grad_stats_index(er, w, w, m, dt(0.0), dt(1.0), dt(c0), dt(k),
                                                   dt(b), dt(q_scale), dt(1.0 / temp)))
            elif capped:
                acc = np.float64(_grad_stats_prob_cap(er, w, targets.y[i], m, targets.a1,
                                                      targets.a0, dt(c0), dt(k), dt(b),
                                                      dt(q_scale), dt(1.0 / temp)))
            else:
                acc = np.float64(_grad_stats_prob(er, w, targets.y[i], m, targets.a1, targets.a0,
                                                  dt(c0), dt(k), dt(b), dt(q_scale),
                                                  dt(1.0 / temp)))
            if index and valid:  # the one-hot term, through the chain rule at the target
                q = z_t * q_scale
                ch = (1.0 - q * q) / temp if capped else 1.0 / temp
                er[t] -= dt(a * ch)
            if half:
                _copy(er, g[i])  # rounded into the 16-bit gradient
        elif index and eps > 0 and valid:
            acc = np.float64(_dot_shift(er, w, m))
        elif not index:
            acc = np.float64(_prob_loss(er, targets.y[i], w, m, targets.a1, targets.a0))
        if not index:
            loss[i] = tot * log_s - acc
        elif not valid:
            loss[i] = 0.0
        else:
            li = w_t * (log_s - (z_t - np.float64(m)))
            if eps > 0:
                li = (1.0 - eps) * li + (eps / C) * (o.weight_sum * log_s - acc)
            loss[i] = li

    return ce_stats_row


_CE_STATS_ROW = {index: _make_ce_stats_row(index) for index in (True, False)}


def _make_ce_stats_rows(index, grad, inplace, capped):
    row = _CE_STATS_ROW[index]

    @_jit_rows
    def ce_stats_rows(x, targets, options, st, g, loss, lse, lo, hi):
        """The statistics path over rows [lo, hi) (float rows or 16-bit tag views)."""
        half = is_tagged(x)
        work = _scratch(x, x.shape[1] if half or not grad else 0)
        for i in range(lo, hi):
            er = _work_row(g, i, work) if grad else work[0]
            row(i, x, targets, options, st, g, loss, lse, er, grad, inplace, capped)

    return ce_stats_rows


#: The statistics drivers, by (index targets, grad, inplace, capped).
CE_STATS_ROWS = _variants(_make_ce_stats_rows)
