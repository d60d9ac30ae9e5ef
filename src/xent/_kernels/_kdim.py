"""Numba kernels along a class axis that is not last: cross-entropy, softmax and log_softmax on
the strided layout, with no transpose copy.

The input ``(N, C, d1, ..., dK)`` (class axis 1, PyTorch's convention) or any array normalised
along an inner axis is viewed, without a copy, as ``x`` of shape ``(A, C, B)``, C-contiguous:
``A`` = the product of the dimensions before the class axis, ``B`` = the product after it
(``B > 1``; with ``B == 1`` the rows of ``_rows.py`` are already contiguous). Position
``(a, b)`` is one distribution over ``c``, at stride ``B`` in memory, so a loop over ``c`` is
strided while a loop over ``b`` is contiguous. Every loop here therefore runs over ``b``
innermost, one distribution per SIMD lane, and the reductions over ``c`` are per-lane running
values (no horizontal sums, so no fast-math reassociation is needed to vectorise them).

Work is split into *tiles*: one ``a`` and a block ``[b0, b0 + nb)`` of at most ``bt`` positions,
chosen by the host function so that the tile's ``C × nb`` values (``TILE_BYTES``) stay in the
core's L2 cache between passes. Per tile, with ``m_b``, ``s_b`` per position:

1. online max and sum of exponentials (as ``_rows._max_sum_exp``, but per lane): over chunks of
   ``cc`` classes (``cc × nb`` values stay in L1), ``mc_b = max_c x_cb`` for the chunk, then
   ``m_b ← max(m_b, mc_b)``, ``s_b ← s_b·exp(m_old - m_b) + Σ_chunk exp(x_cb - m_b)``. The
   logits cross memory once; the two-level sum also keeps the float32 rounding error at
   O(cc + C/cc) ulp instead of O(C).
2. per position: ``log s_b`` and the loss terms (a scalar loop over ``nb``).
3. one pass writing the output or gradient in the ``(A, C, B)`` layout itself:
   softmax ``exp(x - m)/s``; log_softmax ``(x - m) - log s``; cross-entropy
   ``g_cb = exp(x_cb - m_b)·k_b - β_b·w_c`` and then ``g[t_b, b] -= α_b`` (index targets) or
   ``g_cb = σ_b·(exp(x_cb - m_b)·k_b - w_c·y'_cb)`` (probability targets), where the per-position
   coefficients carry the row scale, the weights and label smoothing (see the functions below).

Each exponential is computed in pass 1 and again in pass 3 (:func:`vexp`, a few FMAs per lane),
which costs less than storing and re-scaling them as the row kernels do, since here a tile's
running max changes per lane.

Non-finite positions, with the same results as the row kernels (and PyTorch): ``m_b`` is reduced
with ``llvm.maximum`` (NaN-propagating), so it is NaN when the position holds a NaN, +inf when it
holds +inf and -inf when every logit is -inf. Exactly then the position's loss, gradient, softmax
and log_softmax are NaN: its pass-3 coefficient is set to NaN, which poisons every value written
for it. An ignored position gets loss 0 and gradient 0 (coefficients 0; the rare ignored position
whose logits are themselves not finite is zero-filled afterwards). -inf logits beside a finite
maximum are ordinary (exp(-inf) = 0). No fast-math flag is used anywhere here, so NaN and inf
keep their IEEE meaning.

Safety: targets are validated before any kernel runs; a target outside ``[0, C)`` that is not
``ignore_index`` is still checked here (one comparison per position) and gives NaN, never an
out-of-bounds access.

Row groups: with B = 16 or 32 a loop over the tile's nb lanes is mostly loop overhead. When a
tile is all of B, R consecutive class rows are R·B contiguous values, so passes 1 and 3 (without
per-class terms) run R rows per step over R·B lanes of the flat ``(A, C·B)`` view and fold the R
partial results per position (``_max_sum_exp``, ``_write_rows``; R·B ≈ 128, chosen by the host;
the measured gain is in benchmarks/README.md).

16-bit input (``*_tiles16``, bfloat16 or float16 as uint16 bits, see ``_half.py``): each tile
is gathered into float32 scratch of shape ``(1, C, nb)`` (one a, B = nb: the tile is all of its
B, so the row groups apply), the float32 tile function above runs on it with its gradient or
output in a second scratch, and that is rounded back into the 16-bit tile; the math is the
float32 tile's, not a copy of it. The host sizes these tiles for the float32 scratch.

Indexing: the innermost index ``b0 + j`` is unsigned (uint64), so Numba emits no negative-index
wraparound for it and LLVM sees a unit-stride access it can vectorise. (Numba types
int64·uint64 as int64: every factor of a lane index is kept uint64.)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._exp import fmaximum, vexp
from ._half import F32, from_f32, to_f32
from ._rows import _log_sum

_jit = numba.njit(cache=True)
_jit_inline = numba.njit(cache=True, inline="always")
# The tile drivers release the GIL so the host can run tiles on several threads (_threads).
_jit_tiles = numba.njit(nogil=True, cache=True)

# Per-position scratch rows (each of length bt) in the work array ``wk`` of the tile drivers.
_M, _S, _MC, _CS, _K, _BETA, _SUM, _NROWS = 0, 1, 2, 3, 4, 5, 6, 7
# float64 per-position scratch in ``wk64``.
_LOGS, _LOSS, _ACC, _NROWS64 = 0, 1, 2, 3


@_jit
def _max_sum_exp(x, xf, a, b0, nb, R, cc, wk):
    """Pass 1 over one tile: wk[_M, j] = max_c x[a, c, b0+j], wk[_S, j] = Σ_c exp(x - max).

    ``b0``, ``nb`` are uint64. Online over chunks of ``cc`` classes (module docstring). A chunk
    whose max is -inf is shifted by 0 instead (exp(-inf) = 0 either way; -inf - -inf is NaN).

    Row groups: when the tile is all of B (``b0 == 0``, ``nb == B``), ``R`` consecutive class
    rows are ``R·nb`` contiguous values of ``xf`` (``x`` viewed as (A, C·B)), reduced as
    ``R·nb`` lanes (lane r·nb + j holds rows c ≡ r of position j) and folded per chunk: with
    nb = 16 or 32 a loop over nb lanes alone is mostly loop overhead. ``cc`` is a multiple of R;
    the chunk's last rows that do not fill a group take the one-row loop.
    """
    C = x.shape[1]
    B = x.shape[2]
    dt = x.dtype.type
    L = np.uint64(R) * nb  # uint64: signed·unsigned would give a signed (wrapped) index
    m = wk[_M]
    s = wk[_S]
    mc = wk[_MC]
    cs = wk[_CS]
    for j in range(nb):
        m[j] = -np.inf
        s[j] = 0
    for c0 in range(0, C, cc):
        c1 = min(c0 + cc, C)
        cg = c0 + (c1 - c0) // R * R  # rows [c0, cg) in groups of R, [cg, c1) one by one
        for f in range(L):
            mc[f] = -np.inf
        for c in range(c0, cg, R):
            base = np.uint64(c * B) + b0
            for f in range(L):
                mc[f] = fmaximum(mc[f], xf[a, base + f])
        for c in range(cg, c1):
            for j in range(nb):
                mc[j] = fmaximum(mc[j], x[a, c, b0 + j])
        for r in range(1, R):
            for j in range(nb):
                mc[j] = fmaximum(mc[j], mc[np.uint64(r) * nb + j])
        for j in range(nb):
            mn = fmaximum(m[j], mc[j])
            sh = mn if mn != -np.inf else dt(0)
            s[j] = s[j] * vexp(m[j] - sh)  # 0 while m = -inf; NaN once a NaN/+inf is seen
            m[j] = mn
            mc[j] = sh
        for r in range(1, R):
            for j in range(nb):
                mc[np.uint64(r) * nb + j] = mc[j]
        _chunk_exp_sum(x, xf, a, b0, nb, R, c0, c1, mc, cs, cs, False)
        for j in range(nb):
            s[j] += cs[j]


@_jit_inline
def _exp_term(d, cnt, f, rest):
    """exp(d); with ``rest`` (a constant at each call), 0 where d == 0 (a term of the max
    itself), counted in cnt[f] instead."""
    if rest:
        dt = cnt.dtype.type
        top = d == dt(0)
        cnt[f] += dt(1) if top else dt(0)
        return dt(0) if top else vexp(d)
    return vexp(d)


@_jit_inline
def _chunk_exp_sum(x, xf, a, b0, nb, R, c0, c1, sh, part, cnt, rest):
    """part[j] = Σ_{c in [c0, c1)} exp(x[a, c, b0+j] - sh[j]) per position j, ``sh`` holding
    each position's shift repeated R times (lane r·nb + j): groups of R rows run over the R·nb
    contiguous lanes of ``xf``, the rows left over one by one, and the R partial sums are folded.
    With ``rest``, the terms of the max itself (x == shift) are counted per lane in ``cnt``
    instead (not reset or folded here): the sum without the max's own terms."""
    B = x.shape[2]
    L = np.uint64(R) * nb  # uint64: signed·unsigned would give a signed (wrapped) index
    cg = c0 + (c1 - c0) // R * R  # rows [c0, cg) in groups of R, [cg, c1) one by one
    for f in range(L):
        part[f] = 0
    for c in range(c0, cg, R):
        base = np.uint64(c * B) + b0
        for f in range(L):
            part[f] += _exp_term(xf[a, base + f] - sh[f], cnt, f, rest)
    for c in range(cg, c1):
        for j in range(nb):
            part[j] += _exp_term(x[a, c, b0 + j] - sh[j], cnt, j, rest)
    for r in range(1, R):
        for j in range(nb):
            part[j] += part[np.uint64(r) * nb + j]


@_jit_inline
def _pass1(x, xf, a, b0, nb, R, cc, wk):
    """Pass 1 of a tile (:func:`_max_sum_exp`): the rows of ``wk`` holding each position's
    max m and sum s, and the row k for the pass-3 coefficients."""
    _max_sum_exp(x, xf, a, b0, nb, R, cc, wk)
    return wk[_M], wk[_S], wk[_K]


@_jit
def _write_rows(x, xf, out, of, a, b0, nb, R, sh, k, log):
    """Pass 3 without per-class terms: out = exp(x - sh)·k, or (x - sh) - k with ``log``.

    ``sh`` and ``k`` hold each position's value repeated R times (lane r·nb + j), so R rows go
    through one loop of R·nb contiguous lanes as in :func:`_max_sum_exp` (``of`` is ``out``
    viewed as (A, C·B)).
    """
    C = x.shape[1]
    B = x.shape[2]
    L = np.uint64(R) * nb  # uint64: signed·unsigned would give a signed (wrapped) index
    cg = C // R * R
    for r in range(1, R):
        for j in range(nb):
            sh[np.uint64(r) * nb + j] = sh[j]
            k[np.uint64(r) * nb + j] = k[j]
    if log:
        # (x - m) - log s, not x - (m + log s): the max first, as torch and _rows do.
        for c in range(0, cg, R):
            base = np.uint64(c * B) + b0
            for f in range(L):
                of[a, base + f] = (xf[a, base + f] - sh[f]) - k[f]
        for c in range(cg, C):
            for j in range(nb):
                out[a, c, b0 + j] = (x[a, c, b0 + j] - sh[j]) - k[j]
    else:
        for c in range(0, cg, R):
            base = np.uint64(c * B) + b0
            for f in range(L):
                of[a, base + f] = vexp(xf[a, base + f] - sh[f]) * k[f]
        for c in range(cg, C):
            for j in range(nb):
                out[a, c, b0 + j] = vexp(x[a, c, b0 + j] - sh[j]) * k[j]


@_jit_inline
def _zero(part, nb):
    """part[j] = 0 for the tile's nb positions (a chunk's partial sums start)."""
    for j in range(nb):
        part[j] = 0


@_jit_inline
def _add64(acc, part, nb):
    """acc[j] += part[j] in float64 (a chunk's partial sums end)."""
    for j in range(nb):
        acc[j] += np.float64(part[j])


@_jit_inline
def _position_sums(v, w, y, a, b0, nb, cc, shift, part, acc, with_y):
    """acc[j] = Σ_c w_c·(v[a, c, b0+j] - shift[j]), times y[a, c, b0+j] ``with_y`` (a constant
    at each call), per position j: summed per chunk of ``cc`` classes in ``part`` (v's dtype),
    then in float64, which keeps a float32 sum's error at O(cc + C/cc) ulp."""
    C = v.shape[1]
    for j in range(nb):
        acc[j] = 0.0
    for c0 in range(0, C, cc):
        _zero(part, nb)
        for c in range(c0, min(c0 + cc, C)):
            wc = w[c]
            for j in range(nb):
                t = wc * (v[a, c, b0 + j] - shift[j])
                part[j] += t * y[a, c, b0 + j] if with_y else t
        _add64(acc, part, nb)


# ---------------------------------------------------------------------------------------------
# Cross-entropy, class-index targets
# ---------------------------------------------------------------------------------------------
@_jit
def _ce_index_tile(
    x, xf, target, w, wsum, ign, eps, rs, g, gf, has_g, loss, a, b0, nb, R, cc, wk, wk64
):
    """One tile of :func:`ce_index_tiles`."""
    C = x.shape[1]
    dt = x.dtype.type
    m, s, k = _pass1(x, xf, a, b0, nb, R, cc, wk)
    beta = wk[_BETA]
    log_s = wk64[_LOGS]
    li = wk64[_LOSS]
    fixup = False
    # Pass 2: per position. loss = w_t·(log s - (x_t - m)) [+ smoothing, after pass 3];
    # gradient coefficients α = (1-ε)·w_t·σ (at the target), β = (ε/C)·σ, k = (α + β·W)/s.
    for j in range(nb):
        b = b0 + j
        t = target[a, b]
        k[j] = 0
        beta[j] = 0
        li[j] = 0.0
        if t == ign:
            loss[a, b] = 0
            if not math.isfinite(m[j]):
                fixup = True  # exp(NaN)·0 is NaN: zero-fill this position after pass 3
            continue
        if t < 0 or t >= C or not math.isfinite(m[j]):  # NaN / +inf / all -inf, bad target
            loss[a, b] = np.nan
            k[j] = np.nan
            li[j] = np.nan
            continue
        ls = math.log(np.float64(s[j]))
        log_s[j] = ls
        w_t = np.float64(w[t])
        li[j] = w_t * (ls - (np.float64(x[a, t, b]) - np.float64(m[j])))
        sc = np.float64(rs[a, b])
        alpha = (1.0 - eps) * w_t * sc
        bet = (eps / C) * sc
        k[j] = dt((alpha + bet * wsum) / np.float64(s[j]))
        beta[j] = dt(bet)
    # Pass 3: the gradient in place in the (A, C, B) layout, with Σ_c w_c (x_c - m) on the way
    # when label smoothing needs it.
    if has_g:
        if eps > 0:
            _position_sums(x, w, x, a, b0, nb, cc, m, wk[_CS], wk64[_ACC], False)  # before writing
            for c in range(C):
                wc = w[c]
                for j in range(nb):
                    g[a, c, b0 + j] = vexp(x[a, c, b0 + j] - m[j]) * k[j] - beta[j] * wc
        else:
            _write_rows(x, xf, g, gf, a, b0, nb, R, m, k, False)
        for j in range(nb):  # minus α at the target
            b = b0 + j
            t = target[a, b]
            if t != ign and 0 <= t < C and math.isfinite(m[j]):
                sc = np.float64(rs[a, b])
                g[a, t, b] -= dt((1.0 - eps) * np.float64(w[t]) * sc)
        if fixup:
            for j in range(nb):
                b = b0 + j
                if target[a, b] == ign and not math.isfinite(m[j]):
                    for c in range(C):
                        g[a, c, b] = 0
    elif eps > 0:
        _position_sums(x, w, x, a, b0, nb, cc, m, wk[_CS], wk64[_ACC], False)
    if eps > 0:
        acc = wk64[_ACC]
        for j in range(nb):
            b = b0 + j
            t = target[a, b]
            if t != ign and 0 <= t < C and math.isfinite(m[j]):
                loss[a, b] = (1.0 - eps) * li[j] + (eps / C) * (wsum * log_s[j] - acc[j])
    else:
        for j in range(nb):
            b = b0 + j
            t = target[a, b]
            if t != ign and 0 <= t < C and math.isfinite(m[j]):
                loss[a, b] = li[j]


@_jit_tiles
def ce_index_tiles(x, xf, target, w, wsum, ign, eps, rs, g, gf, has_g, loss, bt, R, cc, lo, hi):
    """Cross-entropy with class-index targets on tiles ``[lo, hi)`` of ``x`` (A, C, B).

    ``xf`` is ``x`` viewed as (A, C·B); ``target``, ``rs`` (row scale σ) and ``loss`` are
    (A, B); ``g`` is (A, C, B) and ``gf`` its (A, C·B) view (dummies when ``has_g`` is false);
    tile u is a = u // nbb, b0 = (u % nbb)·bt, nbb = ceil(B / bt); ``R`` rows per group when
    bt == B (see :func:`_max_sum_exp`), else 1. The math is ``xent._kernels.ce_index``'s, per
    position (a, b).
    """
    B = x.shape[2]
    wk, wk64 = _tile_work(x, R, bt)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        _ce_index_tile(
            x, xf, target, w, wsum, ign, eps, rs, g, gf, has_g, loss, a, b0, nb, R, cc, wk, wk64
        )


# ---------------------------------------------------------------------------------------------
# Cross-entropy, class-probability targets
# ---------------------------------------------------------------------------------------------
@_jit
def _ce_prob_tile(x, xf, y, w, wsum, a1, a0, rs, g, has_g, loss, a, b0, nb, R, cc, wk, wk64):
    """One tile of :func:`ce_prob_tiles`."""
    C = x.shape[1]
    dt = x.dtype.type
    m, s, k = _pass1(x, xf, a, b0, nb, R, cc, wk)
    part = wk[_SUM]
    tot = wk64[_LOSS]  # T_b = Σ_c w_c·y'_cb = a1·Σ_c w_c·y_cb + a0·W
    acc = wk64[_ACC]  # Σ_c w_c·y'_cb·(x_cb - m_b)
    for j in range(nb):
        k[j] = 0
    _position_sums(y, w, y, a, b0, nb, cc, k, part, tot, False)
    fa1 = np.float64(a1)
    fa0 = np.float64(a0)
    for j in range(nb):
        tot[j] = fa1 * tot[j] + fa0 * wsum
        if math.isfinite(m[j]):
            k[j] = dt(tot[j] / np.float64(s[j]))
        else:
            k[j] = np.nan  # NaN / +inf / all -inf: NaN loss and gradient
        acc[j] = 0.0
    for c0 in range(0, C, cc):
        _zero(part, nb)
        for c in range(c0, min(c0 + cc, C)):
            wc = w[c]
            if has_g:
                for j in range(nb):
                    b = b0 + j
                    d = x[a, c, b] - m[j]
                    wy = wc * (a1 * y[a, c, b] + a0)
                    part[j] += wy * d
                    g[a, c, b] = rs[a, b] * (vexp(d) * k[j] - wy)
            else:
                for j in range(nb):
                    b = b0 + j
                    part[j] += wc * (a1 * y[a, c, b] + a0) * (x[a, c, b] - m[j])
        _add64(acc, part, nb)
    # loss = -Σ w y' (x - m - log s) = T·log s - Σ w y' (x - m)
    for j in range(nb):
        b = b0 + j
        if math.isfinite(m[j]):
            loss[a, b] = tot[j] * math.log(np.float64(s[j])) - acc[j]
        else:
            loss[a, b] = np.nan


@_jit_tiles
def ce_prob_tiles(x, xf, y, w, wsum, a1, a0, rs, g, has_g, loss, bt, R, cc, lo, hi):
    """Cross-entropy with probability targets ``y`` (A, C, B) on tiles ``[lo, hi)``.

    y' = a1·y + a0 (a1 = 1-ε, a0 = ε/C); the math is ``xent._kernels.ce_prob``'s per position.
    """
    B = x.shape[2]
    wk, wk64 = _tile_work(x, R, bt)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        _ce_prob_tile(x, xf, y, w, wsum, a1, a0, rs, g, has_g, loss, a, b0, nb, R, cc, wk, wk64)


# ---------------------------------------------------------------------------------------------
# softmax and log_softmax
# ---------------------------------------------------------------------------------------------
@_jit
def _sum_exp_rest(x, xf, a, b0, nb, R, cc, wk):
    """wk[_SUM, j] = Σ_{c: x < m_j} exp(x[a, c, b0+j] - m_j) and wk[_CS, j] = #{c: x = m_j},
    m_j = wk[_M, j] the position's max: the sum of exponentials without the max's own terms.

    A second pass over the tile (from L2), grouped by R rows and summed per chunk of ``cc``
    classes as :func:`_max_sum_exp`; for log_softmax, which needs log1p(Σ - 1) exactly when the
    rest is below the float's resolution at 1 (see :func:`_softmax_tile`).
    """
    C = x.shape[1]
    m = wk[_M]
    sh = wk[_BETA]
    part = wk[_MC]
    cnt = wk[_CS]
    rest = wk[_SUM]
    for r in range(R):
        for j in range(nb):
            sh[np.uint64(r) * nb + j] = m[j]
    for f in range(np.uint64(R) * nb):
        cnt[f] = 0  # whole numbers: exact in any order
    for j in range(nb):
        rest[j] = 0
    for c0 in range(0, C, cc):
        _chunk_exp_sum(x, xf, a, b0, nb, R, c0, min(c0 + cc, C), sh, part, cnt, True)
        for j in range(nb):
            rest[j] += part[j]
    for r in range(1, R):
        for j in range(nb):
            cnt[j] += cnt[np.uint64(r) * nb + j]


@_jit
def _softmax_tile(x, xf, out, of, log, a, b0, nb, R, cc, wk):
    """out = exp(x - m)·(1/s), or (x - m) - log s with ``log``; NaN for non-finite positions.

    log s as the row kernels take it (``_rows._log_sum``): where s < 2 (one max, the other terms
    below 1 together) the tile sums the terms again without the max's own (:func:`_sum_exp_rest`),
    so log_softmax([0, -40]) is -log1p(e^-40) = -4.25e-18, not 0.
    """
    dt = x.dtype.type
    m, s, k = _pass1(x, xf, a, b0, nb, R, cc, wk)
    again = False
    for j in range(nb):
        if not math.isfinite(m[j]):
            k[j] = np.nan
        elif log and s[j] >= 2:
            k[j] = dt(_log_sum(s[j], 0.0, 0.0))
        elif log:
            again = True  # k[j] from the sum without the max's terms, below
        else:
            k[j] = dt(1.0 / np.float64(s[j]))
    if again:
        _sum_exp_rest(x, xf, a, b0, nb, R, cc, wk)
        rest = wk[_SUM]
        cnt = wk[_CS]
        for j in range(nb):
            if math.isfinite(m[j]) and s[j] < 2:
                k[j] = dt(_log_sum(s[j], rest[j], cnt[j]))
    _write_rows(x, xf, out, of, a, b0, nb, R, m, k, log)


@_jit_tiles
def softmax_tiles(x, xf, out, of, log, bt, R, cc, lo, hi):
    """softmax (or log_softmax with ``log``) over axis 1 of ``x`` (A, C, B) into ``out``.

    ``xf`` and ``of`` are ``x`` and ``out`` viewed as (A, C·B); tiles as :func:`ce_index_tiles`.
    """
    B = x.shape[2]
    wk = np.empty((_NROWS, R * bt), x.dtype)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        _softmax_tile(x, xf, out, of, log, a, b0, nb, R, cc, wk)


# ---------------------------------------------------------------------------------------------
# The vector-Jacobian products of softmax and log_softmax, from the forward's output
# ---------------------------------------------------------------------------------------------
@_jit
def _backward_tile(g, y, out, log, a, b0, nb, cc, ones, zeros, part, acc):
    """One tile of :func:`softmax_backward_tiles`: per position, d = Σ_c g·y (``log``: Σ_c g),
    summed as the forward's sums (:func:`_position_sums`, with unit weights and no shift:
    exactly those sums), then out = y·(g - d) (``log``: g - exp(y)·d) in one pass."""
    C = g.shape[1]
    dt = g.dtype.type
    if log:
        _position_sums(g, ones, y, a, b0, nb, cc, zeros, part, acc, False)
    else:
        _position_sums(g, ones, y, a, b0, nb, cc, zeros, part, acc, True)
    for j in range(nb):
        part[j] = dt(acc[j])
    if log:
        for c in range(C):
            for j in range(nb):
                out[a, c, b0 + j] = g[a, c, b0 + j] - vexp(y[a, c, b0 + j]) * part[j]
    else:
        for c in range(C):
            for j in range(nb):
                out[a, c, b0 + j] = y[a, c, b0 + j] * (g[a, c, b0 + j] - part[j])


@_jit_tiles
def softmax_backward_tiles(g, y, out, log, bt, R, cc, lo, hi):
    """The VJP of softmax (``log``: of log_softmax) along axis 1 of (A, C, B): ``g`` the
    upstream gradient, ``y`` the forward's output, into ``out``; tiles as
    :func:`ce_index_tiles` (``R`` unused: the rows are not grouped)."""
    B = g.shape[2]
    ones, zeros = np.ones(g.shape[1], g.dtype), np.zeros(bt, g.dtype)
    part = np.empty(bt, g.dtype)
    acc = np.empty(bt, np.float64)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        _backward_tile(g, y, out, log, a, b0, nb, cc, ones, zeros, part, acc)


# ---------------------------------------------------------------------------------------------
# 16-bit tiles: gather into float32 scratch (1, C, nb), the float32 tile function, scatter back.
# ---------------------------------------------------------------------------------------------
@_jit
def _gather(x16, kind, a, b0, nb, dst):
    """dst[0, c, j] = x[a, c, b0 + j] as float32 (``x16`` the uint16 bits of ``kind``)."""
    for c in range(x16.shape[1]):
        to_f32(x16[a, c, b0:b0 + nb], kind, dst[0, c])


@_jit
def _gather_f32(y, a, b0, nb, dst):
    """dst[0, c, j] = y[a, c, b0 + j] (float32)."""
    for c in range(y.shape[1]):
        src = y[a, c, b0:b0 + nb]
        d = dst[0, c]
        for j in range(nb):
            d[j] = src[j]


@_jit
def _scatter(src, kind, a, b0, nb, out16):
    """out[a, c, b0 + j] = src[0, c, j] rounded to ``kind`` (nearest even)."""
    for c in range(src.shape[1]):
        from_f32(src[0, c], kind, out16[a, c, b0:b0 + nb])


@_jit
def _scratch(buf, C, nb):
    """The first C·nb values of ``buf`` as (1, C, nb) and its (1, C·nb) view."""
    n = np.int64(nb)
    t = buf[:C * n].reshape((1, C, n))
    return t, t.reshape((1, C * n))


@_jit
def _tile_work(like, R, bt):
    """The per-thread work arrays of a tile driver: ``wk`` (like's dtype; R·bt lanes) and
    ``wk64`` (float64, per position)."""
    return np.empty((_NROWS, R * bt), like.dtype), np.empty((_NROWS64, bt), np.float64)


@_jit
def _tile_of(u, bt, B):
    """(a, b0, nb) of tile u: a = u // nbb, b0 = (u % nbb)·bt, nb = min(bt, B - b0), nbb =
    ceil(B / bt) tiles per a; b0 and nb as uint64, the type of every factor of a lane index
    (see Indexing above)."""
    nbb = (B + bt - 1) // bt
    a = u // nbb
    b0 = (u - a * nbb) * bt
    return a, np.uint64(b0), np.uint64(min(bt, B - b0))


@_jit
def _loss_scratch(C, bt, R, has_g):
    """The per-thread scratch of a cross-entropy tile driver: logits and gradient (C·bt
    float32; the gradient 1 without ``has_g``), the tile's row scales and losses (bt), and the
    tile function's work arrays ``wk`` (float32) and ``wk64``."""
    xs = np.empty(C * bt, np.float32)
    wk, wk64 = _tile_work(xs, R, bt)
    return (xs, np.empty(C * bt if has_g else 1, np.float32), np.empty(bt, np.float32),
            np.empty(bt, np.float32), wk, wk64)


@_jit_tiles
def ce_index_tiles16(x16, kind, target, w, wsum, ign, eps, rs, g16, has_g, loss, bt, R, cc, lo,
                     hi):
    """:func:`ce_index_tiles` on 16-bit ``x16`` and ``g16`` (uint16 bits of ``kind``)."""
    C = x16.shape[1]
    B = x16.shape[2]
    xs, gs, rsb, lb, wk, wk64 = _loss_scratch(C, bt, R, has_g)
    tg = np.empty(bt, np.int64)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        x3, xf3 = _scratch(xs, C, nb)
        g3, gf3 = _scratch(gs, C if has_g else 1, nb if has_g else np.uint64(1))
        _gather(x16, kind, a, b0, nb, x3)
        for j in range(nb):
            tg[j] = target[a, b0 + j]
            rsb[j] = rs[a, b0 + j]
        one = (1, np.int64(nb))
        _ce_index_tile(x3, xf3, tg[:nb].reshape(one), w, wsum, ign, eps, rsb[:nb].reshape(one),
                       g3, gf3, has_g, lb[:nb].reshape(one), 0, np.uint64(0), nb, R, cc, wk, wk64)
        for j in range(nb):
            loss[a, b0 + j] = lb[j]
        if has_g:
            _scatter(g3, kind, a, b0, nb, g16)


@_jit_tiles
def ce_prob_tiles16(x16, kind, y16, y32, ykind, w, wsum, a1, a0, rs, g16, has_g, loss, bt, R,
                    cc, lo, hi):
    """:func:`ce_prob_tiles` on 16-bit ``x16``, ``g16``; ``y`` 16-bit (``y16`` of ``ykind``)
    or float32 (``y32``, ykind F32), the other a dummy."""
    C = x16.shape[1]
    B = x16.shape[2]
    xs, gs, rsb, lb, wk, wk64 = _loss_scratch(C, bt, R, has_g)
    ys = np.empty(C * bt, np.float32)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        x3, xf3 = _scratch(xs, C, nb)
        y3, yf3 = _scratch(ys, C, nb)
        g3, gf3 = _scratch(gs, C if has_g else 1, nb if has_g else np.uint64(1))
        _gather(x16, kind, a, b0, nb, x3)
        if ykind == F32:
            _gather_f32(y32, a, b0, nb, y3)
        else:
            _gather(y16, ykind, a, b0, nb, y3)
        for j in range(nb):
            rsb[j] = rs[a, b0 + j]
        one = (1, np.int64(nb))
        _ce_prob_tile(x3, xf3, y3, w, wsum, a1, a0, rsb[:nb].reshape(one), g3, has_g,
                      lb[:nb].reshape(one), 0, np.uint64(0), nb, R, cc, wk, wk64)
        for j in range(nb):
            loss[a, b0 + j] = lb[j]
        if has_g:
            _scatter(g3, kind, a, b0, nb, g16)


@_jit_tiles
def softmax_tiles16(x16, kind, out16, log, bt, R, cc, lo, hi):
    """:func:`softmax_tiles` on 16-bit ``x16`` into 16-bit ``out16`` (uint16 bits of ``kind``)."""
    C = x16.shape[1]
    B = x16.shape[2]
    xs = np.empty(C * bt, np.float32)
    os_ = np.empty(C * bt, np.float32)
    wk = np.empty((_NROWS, R * bt), np.float32)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        x3, xf3 = _scratch(xs, C, nb)
        o3, of3 = _scratch(os_, C, nb)
        _gather(x16, kind, a, b0, nb, x3)
        _softmax_tile(x3, xf3, o3, of3, log, 0, np.uint64(0), nb, R, cc, wk)
        _scatter(o3, kind, a, b0, nb, out16)


@_jit_tiles
def softmax_backward_tiles16(g16, y16, kind, out16, log, bt, R, cc, lo, hi):
    """:func:`softmax_backward_tiles` on 16-bit ``g16``, ``y16`` into ``out16`` (uint16 bits of
    ``kind``), each tile gathered into float32 scratch."""
    C = g16.shape[1]
    B = g16.shape[2]
    gs = np.empty(C * bt, np.float32)
    ys = np.empty(C * bt, np.float32)
    os_ = np.empty(C * bt, np.float32)
    ones, zeros = np.ones(C, np.float32), np.zeros(bt, np.float32)
    part = np.empty(bt, np.float32)
    acc = np.empty(bt, np.float64)
    for u in range(lo, hi):
        a, b0, nb = _tile_of(u, bt, B)
        g3, _ = _scratch(gs, C, nb)
        y3, _ = _scratch(ys, C, nb)
        o3, _ = _scratch(os_, C, nb)
        _gather(g16, kind, a, b0, nb, g3)
        _gather(y16, kind, a, b0, nb, y3)
        _backward_tile(g3, y3, o3, log, 0, np.uint64(0), nb, cc, ones, zeros, part, acc)
        _scatter(o3, kind, a, b0, nb, out16)
