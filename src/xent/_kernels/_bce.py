"""Numba kernel for binary cross-entropy on logits, with its gradient in the same pass.

Elementwise, in float64 internally (the result is rounded once to the compute dtype)::

    z = exp(-|x|)                                       in (0, 1], never overflows
    softplus(-x) = max(-x, 0) + log1p(z)
    loss = w·[(1-y)·x + lw·softplus(-x)],               lw = 1 + (pos_weight - 1)·y
    grad = scale·w·[(1-y) - lw·sigmoid(-x)],            sigmoid(-x) = z/(1+z) if x >= 0
                                                                      else 1/(1+z)

The same formulas, in the same order, as ``xent._backend_numpy.bce_logits``, so the two agree on
non-finite input too (for instance ``x = +inf, y = 1`` gives ``0·inf = nan`` in both).

``log1p(z)`` for z in [0, 1] is computed without a libm call, so the loop vectorises:
``log1p(z) = 2·atanh(s)``, ``s = z/(2+z)`` in [0, 1/3] (formed from z itself, so nothing is lost
to rounding 1+z), and ``atanh(s) = s·Σ_k s^(2k)/(2k+1)`` to k = 17, whose remainder is below
1e-18 relative. With :func:`vexp` for exp(-|x|) the whole loop is SIMD code.

``w``, ``pw`` (pos_weight) and ``scale`` arrive compacted to shape ``(1 or M, 1 or K)``; the
host function expands a ``(1, 1)`` operand to ``(1, K)``, and a per-row ``(M, 1)`` operand is
expanded one row at a time here, so no ``(M, K)`` copy of a broadcast operand is made.

16-bit logits (:func:`bce_rows16`, bfloat16 or float16 bits, see ``_half.py``): each row is
converted into float32 scratch rows, run through the same loop, and its gradient rounded back
into 16 bits; the elementwise loss stays float32 (the compute dtype).
"""

from __future__ import annotations

import numba
import numpy as np

from ._exp import vexp
from ._half import F32, from_f32, operand_to_f32, to_f32

_jit = numba.njit(cache=True)


# error_model="numpy": a float division is IEEE (no ZeroDivisionError branch, which would keep
# the loop scalar); inline="always" inlines it into the loop at Numba's level.
@numba.njit(fastmath={"contract"}, error_model="numpy", inline="always", cache=True)
def _log1p_01(z):
    """log1p(z) for z in [0, 1] (float64), NaN in NaN out: 2·atanh(z/(2+z)) by its series."""
    s = z / (2.0 + z)
    s2 = s * s
    p = 1.0 / 35.0
    p = p * s2 + 0.030303030303030304  # 1/33
    p = p * s2 + 0.03225806451612903  # 1/31
    p = p * s2 + 0.034482758620689655  # 1/29
    p = p * s2 + 0.037037037037037035  # 1/27
    p = p * s2 + 0.04  # 1/25
    p = p * s2 + 0.043478260869565216  # 1/23
    p = p * s2 + 0.047619047619047616  # 1/21
    p = p * s2 + 0.05263157894736842  # 1/19
    p = p * s2 + 0.058823529411764705  # 1/17
    p = p * s2 + 0.06666666666666667  # 1/15
    p = p * s2 + 0.07692307692307693  # 1/13
    p = p * s2 + 0.09090909090909091  # 1/11
    p = p * s2 + 0.1111111111111111  # 1/9
    p = p * s2 + 0.14285714285714285  # 1/7
    p = p * s2 + 0.2  # 1/5
    p = p * s2 + 0.3333333333333333  # 1/3
    p = p * s2 + 1.0  # 1/1
    return 2.0 * s * p


@numba.njit(fastmath={"contract"}, error_model="numpy", cache=True)
def _bce_loop(x, y, w, pw, has_pw, scale, g, has_g, loss):
    """One row: every operand a contiguous (K,) array."""
    dt = x.dtype.type
    for j in range(x.shape[0]):
        xv = np.float64(x[j])
        yv = np.float64(y[j])
        ax = abs(xv)
        z = vexp(-ax)
        neg = -xv
        sp = (neg if neg > 0.0 else 0.0) + _log1p_01(z)  # softplus(-x); NaN via log1p(NaN)
        one_m_y = 1.0 - yv
        if has_pw:
            lw = 1.0 + (np.float64(pw[j]) - 1.0) * yv
            li = one_m_y * xv + lw * sp
        else:
            lw = 1.0
            li = one_m_y * xv + sp
        wv = np.float64(w[j])
        loss[j] = dt(wv * li)
        if has_g:
            sn = z / (1.0 + z) if xv >= 0 else 1.0 / (1.0 + z)  # sigmoid(-x)
            gv = one_m_y - (lw * sn if has_pw else sn)
            g[j] = dt(gv * wv * np.float64(scale[j]))


@_jit
def _row_of(a, i, K):
    """Row i of a (1 or M, 1 or K) operand as a contiguous (K,) array."""
    r = a[np.int64(i) if a.shape[0] > 1 else 0]
    if a.shape[1] == K:
        return r
    return np.full(K, r[0])


@_jit
def _bce_row(i, x, y, w, pw, has_pw, scale, g, has_g, loss):
    K = x.shape[1]
    _bce_loop(
        x[i],
        y[i],
        _row_of(w, i, K),
        _row_of(pw, i, K),
        has_pw,
        _row_of(scale, i, K),
        g[i] if has_g else g[0],
        has_g,
        loss[i],
    )


@numba.njit(nogil=True, cache=True)
def bce_rows(x, y, w, pw, has_pw, scale, g, has_g, loss, lo, hi):
    for i in range(lo, hi):
        _bce_row(i, x, y, w, pw, has_pw, scale, g, has_g, loss)


@numba.njit(nogil=True, cache=True)
def bce_rows16(x, kind, y16, y32, ykind, w, pw, has_pw, scale, g, has_g, loss, lo, hi):
    """:func:`bce_rows` on 16-bit ``x`` and ``g`` (uint16 bits of ``kind``); ``y`` is 16-bit
    (``y16`` of ``ykind``) or float32 (``y32``, ykind F32), the other a dummy; ``loss``
    float32."""
    K = x.shape[1]
    xb = np.empty(K, np.float32)
    yb = np.empty(K, np.float32)
    gb = np.empty(K if has_g else 1, np.float32)
    f32 = ykind == F32
    for i in range(lo, hi):
        to_f32(x[i], kind, xb)
        operand_to_f32(y16[0 if f32 else i], y32[i if f32 else 0], ykind, yb)
        _bce_loop(xb, yb, _row_of(w, i, K), _row_of(pw, i, K), has_pw, _row_of(scale, i, K), gb,
                  has_g, loss[i])
        if has_g:
            from_f32(gb, kind, g[i])
