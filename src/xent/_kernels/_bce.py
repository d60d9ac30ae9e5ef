"""Numba kernel for binary cross-entropy on logits, with its gradient in the same pass.

Elementwise, in float64 internally (the result is rounded once to the compute dtype)::

    softplus(-x) = max(-x, 0) + log1p(exp(-|x|))        never overflows
    loss = w·[(1-y)·x + lw·softplus(-x)],               lw = 1 + (pos_weight - 1)·y
    grad = scale·w·[(1-y) - lw·sigmoid(-x)],           sigmoid(-x) = e/(1+e) if x >= 0 else 1/(1+e),
                                                        e = exp(-|x|)

The same formulas, in the same order, as ``xent._backend_numpy.bce_logits``, so the two agree on
non-finite input too (for instance ``x = +inf, y = 1`` gives ``0·inf = nan`` in both).

``w``, ``pw`` (pos_weight) and ``scale`` arrive compacted to shape ``(1 or M, 1 or K)``: a
dimension of length 1 is
broadcast (stride 0 in the loop), so no ``(M, K)`` copy of a broadcast weight is made.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

_jit = numba.njit(cache=True)


@_jit
def _bce_row(i, x, y, w, pw, has_pw, scale, g, has_g, loss):
    K = x.shape[1]
    wr = w[i if w.shape[0] > 1 else 0]
    wc = 1 if w.shape[1] > 1 else 0
    pr = pw[i if pw.shape[0] > 1 else 0]
    pc = 1 if pw.shape[1] > 1 else 0
    sr = scale[i if scale.shape[0] > 1 else 0]
    scc = 1 if scale.shape[1] > 1 else 0
    dt = x.dtype.type
    for j in range(K):
        xv = np.float64(x[i, j])
        yv = np.float64(y[i, j])
        wv = np.float64(wr[j * wc])
        e = math.exp(-abs(xv))
        sp = max(-xv, 0.0) + math.log1p(e)  # softplus(-x)
        if xv != xv:
            sp = xv  # NaN in, NaN out (max() would drop it)
        one_m_y = 1.0 - yv
        if has_pw:
            lw = 1.0 + (np.float64(pr[j * pc]) - 1.0) * yv
            li = one_m_y * xv + lw * sp
        else:
            lw = 1.0
            li = one_m_y * xv + sp
        loss[i, j] = dt(wv * li)
        if has_g:
            sn = e / (1.0 + e) if xv >= 0 else 1.0 / (1.0 + e)  # sigmoid(-x)
            gv = one_m_y - (lw * sn if has_pw else sn)
            g[i, j] = dt(gv * wv * np.float64(sr[j * scc]))


@numba.njit(parallel=True, cache=True)
def bce_par(x, y, w, pw, has_pw, scale, g, has_g, loss):
    for i in prange(x.shape[0]):
        _bce_row(i, x, y, w, pw, has_pw, scale, g, has_g, loss)


@_jit
def bce_ser(x, y, w, pw, has_pw, scale, g, has_g, loss):
    for i in range(x.shape[0]):
        _bce_row(i, x, y, w, pw, has_pw, scale, g, has_g, loss)
