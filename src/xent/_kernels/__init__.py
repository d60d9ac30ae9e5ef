"""Fused Numba CPU kernels with the signatures of ``xent._backend_numpy`` (the backend contract).

Imported only by ``xent._dispatch`` on first need, so ``import xent`` never imports Numba. The
functions here are thin host wrappers (as Liger-Kernel's host functions are): they never
validate, they only normalise what the contract leaves open (``weight=None``, a broadcast
``row_scale``, ``grad_out`` being ``x`` itself, a non-contiguous buffer) into the few argument
types each compiled kernel is specialised for, and run the kernel over blocks of rows, on several
threads for large inputs (``_threads.run_rows``).

Contract (``docs/ARCHITECTURE.md``): ``x`` is ``(M, C)`` in the compute dtype (float32 or
float64) or a 16-bit float (float16, ``ml_dtypes.bfloat16``: viewed as 16-bit integers,
zero-copy, converted to float32 as each element loads and rounded as each result is stored, see
``_half.py``; the gradient or output is then in x's 16-bit dtype and the returned losses are
float32); ``row_scale`` is ``(M,)``;
``grad_out`` is an ``(M, C)`` buffer, possibly ``x`` itself, or None for the forward pass only.
Each returns the unreduced per-row (per-element for ``bce_logits``) loss. The ``*_kdim``
functions take ``x`` as ``(A, C, B)`` instead, the class axis in the middle (the
``(N, C, d1, ..., dK)`` layout, viewed without a copy), see ``_kdim.py``.

Compiled code is cached on disk (``cache=True``; the directory is Numba's ``__pycache__`` beside
these files or ``NUMBA_CACHE_DIR``), so only the first call on a machine pays for compilation.
Numba checks each cached function against its own source file only: after editing ``_exp.py``
or ``_half.py`` alone, delete ``src/xent/_kernels/__pycache__/*.nbi`` and ``*.nbc`` (or the cache
directory), or the kernels in ``_rows.py``/``_bce.py``/``_kdim.py`` keep the old exp or the old
16-bit element access.
"""

from __future__ import annotations

import functools

import numpy as np

from .. import _buffers
from .._thresholds import CHUNK_BYTES, GROUP_LANES, MAX_TILE, TILE_BYTES
from . import _bce, _half, _kdim, _rows
from ._exp import vexp_array
from ._threads import PARALLEL_MIN_ELEMENTS, run_rows

__all__ = [
    "PARALLEL_MIN_ELEMENTS",
    "bce_logits",
    "ce_index",
    "ce_index_kdim",
    "ce_prob",
    "ce_prob_kdim",
    "log_softmax",
    "log_softmax_backward",
    "log_softmax_backward_kdim",
    "log_softmax_kdim",
    "softmax",
    "softmax_backward",
    "softmax_backward_kdim",
    "softmax_kdim",
    "vexp_array",
]


def _contiguous(a, dt):
    return np.ascontiguousarray(a, dtype=dt)


def _row_vector(a, M: int, dt) -> np.ndarray:
    """``a`` (None, a scalar, or broadcastable to (M,)) as a C-contiguous (M,) array."""
    if a is None:
        return np.zeros(M, dt)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dt), (M,)))


def _same_buffer(a, b) -> bool:
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def _prepare(x, grad_out):
    """Return (xc, g, grad, inplace, copy_back): the kernel's x, gradient buffer and switches.

    ``grad``: a gradient is written into ``g`` (a dummy without); ``inplace``: ``g`` is ``xc``
    itself. ``copy_back`` is the caller's buffer to copy ``g`` into afterwards when it could not
    be written directly (not C-contiguous, another dtype, or overlapping ``x`` without being
    ``x``).
    """
    dt = x.dtype
    inplace = grad_out is not None and _same_buffer(x, grad_out)
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    if grad_out is None:
        return xc, np.empty((1, 1), dt), False, False, None
    if inplace:  # x not contiguous: in place in the copy, copied back at the end
        return xc, xc, True, True, None if xc is x else grad_out
    if (
        grad_out.flags.c_contiguous
        and grad_out.dtype == dt
        and not np.may_share_memory(grad_out, xc)
    ):
        return xc, grad_out, True, False, None
    return xc, np.empty(xc.shape, dt), True, False, grad_out


_F32 = np.dtype(np.float32)


def _compute(dt) -> np.dtype:
    """The compute dtype of storage ``dt``: float32 for the 16-bit floats, else ``dt``."""
    return _F32 if _half.kind_of(dt) is not None else dt


def _prepare16(x, grad_out):
    """Return (xt, g, gt, copy_back) for 16-bit ``x``: its C-contiguous tag view
    (``_half.tagged``), the 16-bit gradient buffer (None without) and its tag view (a dummy
    without; ``x``'s own in place: a row's result is written only after the row has been read),
    and the caller's buffer to copy ``g`` into afterwards when it could not be written directly
    (other dtype, not C-contiguous, or overlapping ``x`` without being it)."""
    xc = np.ascontiguousarray(x)
    xt = _half.tagged(xc)
    if grad_out is None:
        return xt, None, np.empty((1, 1), xt.dtype), None
    if grad_out.dtype == x.dtype and grad_out.flags.c_contiguous:
        if _same_buffer(xc, grad_out):
            return xt, grad_out, xt, None
        if not np.may_share_memory(grad_out, xc):
            return xt, grad_out, _half.tagged(grad_out), None
    g = np.empty(xc.shape, x.dtype)
    return xt, g, _half.tagged(g), grad_out


def _run_ce(M: int, C: int, x, grad_out, targets, options, loss, lse, stats=None) -> None:
    """Run the cross-entropy driver of this call's switches (a gradient, in place, a cap) over
    the rows; ``targets`` an ``_rows.IndexTargets`` or ``_rows.ProbTargets``; ``stats`` an
    ``_rows.Stats`` for the statistics drivers (temperature, entropy, argmax), or None."""
    capped = options.softcap is not None
    options = options._replace(softcap=float(options.softcap) if capped else 1.0)
    if _half.kind_of(x.dtype) is None:
        xc, g, grad, inplace, copy_back = _prepare(x, grad_out)
        xk, gk = xc, g
    else:  # 16-bit: the gradient goes through a float32 row, also in place
        xk, g, gk, copy_back = _prepare16(x, grad_out)
        grad, inplace = grad_out is not None, False
    index = isinstance(targets, _rows.IndexTargets)
    if stats is None:
        run_rows(_rows.CE_ROWS[index, grad, inplace, capped], M, C,
                 (xk, targets, options, gk, loss, lse))
    else:
        run_rows(_rows.CE_STATS_ROWS[index, grad, inplace, capped], M, C,
                 (xk, targets, options, stats, gk, loss, lse))
    _finish(g, copy_back)


def _stats(M: int, dt, stats: bool, temperature, entropy_scale, saved=None):
    """The ``_rows.Stats`` of a call with ``stats`` (None otherwise); ``saved``: (lse, entropy)
    (M,) of each row from an earlier pass, or None."""
    if not stats:
        return None
    none = np.empty(0, dt)
    return _rows.Stats(temperature=float(temperature),
                       entropy_scale=_row_vector(entropy_scale, M, dt),
                       entropy=np.empty(M, dt), argmax=np.empty(M, np.int64),
                       given=saved is not None,
                       lse_in=none if saved is None else _contiguous(saved[0], dt),
                       entropy_in=none if saved is None else _contiguous(saved[1], dt))


def _no_stats(M: int, dt):
    """The entropy and argmax of rows of no class (or no row)."""
    return np.full(M, np.nan, dt), np.zeros(M, np.int64)


def _finish(g, copy_back):
    if copy_back is not None:
        copy_back[...] = g


def _no_elements(shape: int | tuple[int, ...], dt, grad_out) -> np.ndarray:
    """A cross-entropy over no element: zero loss of ``shape``, zero gradient."""
    if grad_out is not None:
        grad_out[...] = 0
    return np.zeros(shape, dt)


def _weights(weight, C: int, dt) -> tuple[np.ndarray, float]:
    """(w, Σ_c w_c): the class weights as a contiguous (C,) array (ones for None), and their sum."""
    if weight is None:
        return np.ones(C, dt), float(C)
    w = _contiguous(weight, dt)
    return w, float(w.sum(dtype=np.float64))


def _ignore_key(ignore_index) -> np.int64:
    """``ignore_index`` as an int64 a kernel can compare targets with (none equals it if it is
    None or outside int64)."""
    info = np.iinfo(np.int64)
    ign = int(ignore_index) if ignore_index is not None else info.min
    return np.int64(ign if info.min <= ign <= info.max else info.min)


def _options(M, C, dt, weight, label_smoothing, lse_square_scale, softcap, row_scale,
             z_row_scale) -> _rows.Options:
    """The options and the rows' scales as the kernels take them (``dt``: the compute dtype);
    ``softcap`` None or the cap (:func:`_run_ce` picks the driver by it)."""
    w, wsum = _weights(weight, C, dt)
    zscale = float(lse_square_scale)
    return _rows.Options(
        weight=w, weight_sum=wsum, label_smoothing=float(label_smoothing),
        lse_square_scale=zscale, softcap=softcap, row_scale=_row_vector(row_scale, M, dt),
        z_row_scale=_row_vector(z_row_scale if zscale else None, M, dt))


def ce_index(x, target, weight, ignore_index, label_smoothing, lse_square_scale, softcap,
             row_scale, z_row_scale, grad_out, *, ignored_lse=True, temperature=1.0,
             stats=False, entropy_scale=None, saved=None):
    """Cross-entropy with class-index targets and the options, per row, gradient fused.

    z = cap·tanh(x/cap) (no cap: z = x), lse_i = log Σ_c exp(z_ic),
    loss_i = (1-ε)·w[t_i]·(lse_i - z[i,t_i]) + (ε/C)·Σ_c w_c·(lse_i - z[i,c]);  0 if ignored.
    grad_i = [s_i·((1-ε)·w[t_i]·(p_i - e_{t_i}) + (ε/C)·(W·p_i - w)) + 2ζ·s^z_i·lse_i·p_i]
             ·(1 - (z_i/cap)²),  W = Σ_c w_c.

    ``x`` (M, C), ``target`` int (M,), ``weight`` (C,) or None, ``row_scale`` (M,) = s_i,
    ``z_row_scale`` (M,) = s^z_i or None, ``grad_out`` (M, C) or ``x`` (in place) or None.
    Returns (loss (M,), lse (M,)) in x's dtype. A row with NaN or +inf, or all -inf (after the
    cap), gets NaN loss and gradient (as PyTorch) and torch.logsumexp's lse; an ignored row
    gets 0 for both, and its lse only with ``ignored_lse`` (NaN otherwise: the row is not read).
    With ``stats`` (``_rows.CE_STATS_ROWS``): z = cap·tanh(x/cap)/T, every row read, and
    (loss, lse, entropy, argmax) returned; ``entropy_scale`` (M,) or a scalar or None: the
    entropy's upstream gradient (``xent._backend_numpy.ce_stats``); ``saved``: (lse, entropy)
    of each row from the forward pass over the same logits, or None (``_rows.Stats``).
    """
    M, C = x.shape
    dt = _compute(x.dtype)
    if M == 0 or C == 0:
        out = _no_elements(M, dt, grad_out), np.full(M, -np.inf, dt)
        return (*out, *_no_stats(M, dt)) if stats else out
    options = _options(M, C, dt, weight, label_smoothing, lse_square_scale, softcap, row_scale,
                       z_row_scale)
    targets = _rows.IndexTargets(target=_contiguous(target, np.int64),
                                 ignore_index=_ignore_key(ignore_index),
                                 ignored_lse=bool(ignored_lse))
    loss, lse = np.empty(M, dt), np.full(M, np.nan, dt)
    st = _stats(M, dt, stats, temperature, entropy_scale, saved)
    _run_ce(M, C, x, grad_out, targets, options, loss, lse, st)
    return (loss, lse) if st is None else (loss, lse, st.entropy, st.argmax)


def ce_prob(x, y, weight, label_smoothing, lse_square_scale, softcap, row_scale, z_row_scale,
            grad_out, *, temperature=1.0, stats=False, entropy_scale=None, saved=None):
    """Cross-entropy with class-probability targets and the options, per row, gradient fused.

    z as in :func:`ce_index`, y' = (1-ε)·y + ε/C;  loss_i = -Σ_c w_c·y'_ic·log softmax(z_i)_c;
    grad_i = [s_i·(p_i·Σ_c w_c·y'_ic - w∘y'_i) + 2ζ·s^z_i·lse_i·p_i]·(1 - (z_i/cap)²).
    ``x``, ``y`` (M, C); the rest as :func:`ce_index`. Returns (loss (M,), lse (M,)), and the
    entropy and argmax with ``stats``.
    """
    M, C = x.shape
    kind = _half.kind_of(x.dtype)
    dt = _compute(x.dtype)
    if M == 0 or C == 0:
        out = _no_elements(M, dt, grad_out), np.full(M, -np.inf, dt)
        return (*out, *_no_stats(M, dt)) if stats else out
    options = _options(M, C, dt, weight, label_smoothing, lse_square_scale, softcap, row_scale,
                       z_row_scale)
    eps = options.label_smoothing
    if kind is None:
        yk = _contiguous(np.broadcast_to(y, (M, C)), dt)
    else:
        y16, y32, ykind = _half.operand(y, (M, C))
        yk = y32 if ykind == _half.F32 else _half.tagged(y16.view(np.asarray(y).dtype))
    targets = _rows.ProbTargets(y=yk, a1=dt.type(1.0 - eps), a0=dt.type(eps / C))
    loss, lse = np.empty(M, dt), np.empty(M, dt)
    st = _stats(M, dt, stats, temperature, entropy_scale, saved)
    _run_ce(M, C, x, grad_out, targets, options, loss, lse, st)
    return (loss, lse) if st is None else (loss, lse, st.entropy, st.argmax)


def _rowwise(log, x, out):
    M, C = x.shape
    if M == 0 or C == 0:
        return out
    if _half.kind_of(x.dtype) is None:
        xk, g, _, inplace, copy_back = _prepare(x, out)
        gk = g
    else:
        xk, g, gk, copy_back = _prepare16(x, out)
        inplace = gk is xk
    run_rows(_rows.ROWWISE_ROWS[log, inplace], M, C, (xk, gk))
    _finish(g, copy_back)
    return out


def log_softmax(x, out):
    """``out = (x - max) - log Σ exp(x - max)`` row-wise over (M, C); ``out`` may be ``x``."""
    return _rowwise(True, x, out)


def softmax(x, out):
    """``out = exp(x - max) / Σ exp(x - max)`` row-wise over (M, C); ``out`` may be ``x``."""
    return _rowwise(False, x, out)


def _apart(out, *ins) -> bool:
    """Whether the kernels can write ``out`` directly: C-contiguous, overlapping no input."""
    return out.flags.c_contiguous and not any(np.may_share_memory(out, a) for a in ins)


def _backward(fn, g, y, out):
    M, C = y.shape
    if M == 0 or C == 0:
        return out
    gc, yc = np.ascontiguousarray(g), np.ascontiguousarray(y)
    o = out if _apart(out, gc, yc) else np.empty(yc.shape, yc.dtype)
    run_rows(fn, M, C, (_half.tagged(gc), _half.tagged(yc), _half.tagged(o)))
    _finish(o, None if o is out else out)
    return out


def softmax_backward(grad_out, out, grad_in):
    """``grad_in = out·(grad_out - Σ_c grad_out·out)`` row-wise over (M, C): the VJP of softmax
    from its output (all three of one storage dtype; 16-bit ones computed in float32)."""
    return _backward(_rows.softmax_backward_rows, grad_out, out, grad_in)


def log_softmax_backward(grad_out, out, grad_in):
    """``grad_in = grad_out - exp(out)·Σ_c grad_out`` row-wise over (M, C): the VJP of
    log_softmax from its output."""
    return _backward(_rows.log_softmax_backward_rows, grad_out, out, grad_in)


# ---------------------------------------------------------------------------------------------
# Class axis not last: x viewed as (A, C, B), see _kdim.py. Not part of the row contract; the
# public functions call these only when the dispatcher picked this module for the op.
# ---------------------------------------------------------------------------------------------
# Tile, chunk and group sizes: `xent._thresholds` (TILE_BYTES, CHUNK_BYTES, MAX_TILE, GROUP_LANES).


def _tiling(C: int, B: int, itemsize: int) -> tuple[int, int, int]:
    """(bt, R, cc): positions per tile, class rows per group (1 unless bt == B), classes per
    chunk (a multiple of R).

    Tiles are narrowed below B only where that brings them under TILE_BYTES; where even 16
    positions (one 64-byte line of float32) exceed it, narrowing would only make the reads
    strided, so the tile stays all of B.
    """
    if C * B * itemsize <= TILE_BYTES or C * 16 * itemsize > TILE_BYTES:
        bt = B
    else:
        bt = TILE_BYTES // (C * itemsize)
        bt = max(16, bt - bt % 16)  # whole 64-byte lines (float32), full SIMD vectors
    bt = min(bt, B, MAX_TILE)
    R = max(1, GROUP_LANES // bt) if bt == B else 1
    cc = max(R, CHUNK_BYTES // (bt * itemsize) // R * R)
    return bt, R, cc


def _kdim_out(xc, out):
    """(buffer, copy_back): where a kernel writes ``out`` (A, C, B); a dummy when out is None."""
    if out is None:
        return np.empty((1, 1, 1), xc.dtype), None
    if out.flags.c_contiguous and out.dtype == xc.dtype and not np.may_share_memory(out, xc):
        return out, None
    return np.empty(xc.shape, xc.dtype), out  # the kdim kernels never write over their input


def _flat(a):
    """(A, C, B) C-contiguous -> its (A, C·B) view."""
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2])


def _run_tiles(fn, A: int, C: int, B: int, itemsize: int, args: tuple) -> None:
    bt, R, cc = _tiling(C, B, itemsize)
    run_rows(fn, A * ((B + bt - 1) // bt), C * bt, (*args, bt, R, cc))


def _run_tiles16(fn, A: int, C: int, B: int, args: tuple) -> None:
    """:func:`_run_tiles` for the 16-bit tile drivers, whose tiles are gathered into float32
    scratch of B = nb positions: at most TILE_BYTES of float32 (16 positions at the least), so
    :func:`_tiling` of that width makes each tile all of its B (row groups apply)."""
    width = TILE_BYTES // (C * 4)
    width = max(16, width - width % 16)
    bt, R, cc = _tiling(C, min(B, width), 4)
    run_rows(fn, A * ((B + bt - 1) // bt), C * bt, (*args, bt, R, cc))


def _kdim_out16(xc, out):
    """(out buffer, its uint16 bits, copy_back) for 16-bit ``xc`` (A, C, B): as
    :func:`_kdim_out`; a dummy when out is None."""
    if out is None:
        return None, np.empty((1, 1, 1), np.uint16), None
    if out.flags.c_contiguous and out.dtype == xc.dtype and not np.may_share_memory(out, xc):
        return out, _half.bits(out), None
    o = np.empty(xc.shape, xc.dtype)
    return o, _half.bits(o), out


def _kdim_operands(x, weight, grad_out):
    """(xc, g, copy_back, w, wsum): contiguous logits, gradient buffer, weights and their sum."""
    dt = x.dtype
    xc = _contiguous(x, dt)
    g, copy_back = _kdim_out(xc, grad_out)
    return (xc, g, copy_back, *_weights(weight, x.shape[1], dt))


def ce_index_kdim(x, target, weight, ignore_index, label_smoothing, row_scale, grad_out):
    """:func:`ce_index` along axis 1 of ``x`` (A, C, B), with no transpose: per position (a, b),

    loss_ab = (1-ε)·w[t_ab]·(lse_ab - x[a,t_ab,b]) + (ε/C)·Σ_c w_c·(lse_ab - x[a,c,b]),
    grad[a,:,b] = s_ab·[(1-ε)·w[t_ab]·(p_ab - e_t) + (ε/C)·(W·p_ab - w)].

    ``target`` int (A·B,) or (A, B); ``row_scale`` (A·B,) or None; ``grad_out`` (A, C, B)
    (not ``x``) or None. Returns the loss (A, B). NaN/inf and ignored positions as ``ce_index``.
    """
    A, C, B = x.shape
    kind = _half.kind_of(x.dtype)
    dt = _compute(x.dtype)
    if A == 0 or B == 0 or C == 0:
        return _no_elements((A, B), dt, grad_out)
    tgt = _contiguous(target, np.int64).reshape(A, B)
    rs = _row_vector(row_scale, A * B, dt).reshape(A, B)
    loss = np.empty((A, B), dt)
    eps, has_g = float(label_smoothing), grad_out is not None
    if kind is None:
        xc, g, copy_back, w, wsum = _kdim_operands(x, weight, grad_out)
        args = (xc, _flat(xc), tgt, w, wsum, _ignore_key(ignore_index), eps, rs, g, _flat(g),
                has_g, loss)
        _run_tiles(_kdim.ce_index_tiles, A, C, B, dt.itemsize, args)
    else:
        xc = np.ascontiguousarray(x)
        g, gb, copy_back = _kdim_out16(xc, grad_out)
        w, wsum = _weights(weight, C, dt)
        args = (_half.bits(xc), kind, tgt, w, wsum, _ignore_key(ignore_index), eps, rs, gb,
                has_g, loss)
        _run_tiles16(_kdim.ce_index_tiles16, A, C, B, args)
    _finish(g, copy_back)
    return loss


def ce_prob_kdim(x, y, weight, label_smoothing, row_scale, grad_out):
    """:func:`ce_prob` along axis 1 of ``x`` and ``y`` (A, C, B), with no transpose.

    y' = (1-ε)·y + ε/C;  loss_ab = -Σ_c w_c·y'[a,c,b]·logp[a,c,b];
    grad[a,:,b] = s_ab·(p_ab·Σ_c w_c·y'[a,c,b] - w∘y'[a,:,b]). Returns the loss (A, B).
    """
    A, C, B = x.shape
    kind = _half.kind_of(x.dtype)
    dt = _compute(x.dtype)
    if A == 0 or B == 0 or C == 0:
        return _no_elements((A, B), dt, grad_out)
    eps = float(label_smoothing)
    rs = _row_vector(row_scale, A * B, dt).reshape(A, B)
    loss = np.empty((A, B), dt)
    a1, a0, has_g = dt.type(1.0 - eps), dt.type(eps / C), grad_out is not None
    if kind is None:
        xc, g, copy_back, w, wsum = _kdim_operands(x, weight, grad_out)
        yc = _contiguous(np.broadcast_to(y, (A, C, B)), dt)
        args = (xc, _flat(xc), yc, w, wsum, a1, a0, rs, g, has_g, loss)
        _run_tiles(_kdim.ce_prob_tiles, A, C, B, dt.itemsize, args)
    else:
        xc = np.ascontiguousarray(x)
        g, gb, copy_back = _kdim_out16(xc, grad_out)
        w, wsum = _weights(weight, C, dt)
        y16, y32, ykind = _half.operand(y, (A, C, B))
        args = (_half.bits(xc), kind, y16, y32, ykind, w, wsum, a1, a0, rs, gb, has_g, loss)
        _run_tiles16(_kdim.ce_prob_tiles16, A, C, B, args)
    _finish(g, copy_back)
    return loss


def _softmax_kdim(x, out, log):
    A, C, B = x.shape
    if A == 0 or B == 0 or C == 0:
        return out
    xc = _contiguous(x, x.dtype)
    kind = _half.kind_of(x.dtype)
    if kind is None:
        o, copy_back = _kdim_out(xc, out)
        _run_tiles(_kdim.softmax_tiles, A, C, B, x.dtype.itemsize,
                   (xc, _flat(xc), o, _flat(o), log))
    else:
        o, ob, copy_back = _kdim_out16(xc, out)
        _run_tiles16(_kdim.softmax_tiles16, A, C, B, (_half.bits(xc), kind, ob, log))
    _finish(o, copy_back)
    return out


#: :func:`log_softmax` and :func:`softmax` along axis 1 of (A, C, B).
log_softmax_kdim = functools.partial(_softmax_kdim, log=True)
softmax_kdim = functools.partial(_softmax_kdim, log=False)


def _backward_kdim(g, y, out, log):
    A, C, B = y.shape
    if A == 0 or B == 0 or C == 0:
        return out
    gc, yc = np.ascontiguousarray(g), np.ascontiguousarray(y)
    o = out if _apart(out, gc, yc) else np.empty(yc.shape, yc.dtype)
    kind = _half.kind_of(y.dtype)
    if kind is None:  # tiles sized for both inputs (each tile is read twice)
        _run_tiles(_kdim.softmax_backward_tiles, A, C, B, 2 * y.dtype.itemsize, (gc, yc, o, log))
    else:
        _run_tiles16(_kdim.softmax_backward_tiles16, A, C, B,
                     (_half.bits(gc), _half.bits(yc), kind, _half.bits(o), log))
    _finish(o, None if o is out else out)
    return out


#: :func:`softmax_backward` and :func:`log_softmax_backward` along axis 1 of (A, C, B).
softmax_backward_kdim = functools.partial(_backward_kdim, log=False)
log_softmax_backward_kdim = functools.partial(_backward_kdim, log=True)


def _compact(a, M: int, K: int, dt) -> np.ndarray:
    """``a`` broadcastable to (M, K) as a C-contiguous (1 or M, 1 or K) array, no broadcast copy.

    A single value becomes a (1, K) row, so the kernel's inner loop always runs over a
    contiguous row (a stride-0 operand would keep LLVM from vectorising it).
    """
    b = np.broadcast_to(np.asarray(a, dtype=dt), (M, K))
    if M > 1 and b.strides[0] == 0:
        b = b[:1]
    if K > 1 and b.strides[1] == 0:
        b = b[:, :1]
    if b.shape == (1, 1):
        return np.full((1, K), b[0, 0], dt)
    return np.ascontiguousarray(b)


def bce_logits(x, y, weight, pos_weight, scale, grad_out):
    """Binary cross-entropy on logits, elementwise, gradient fused.

    loss = w·[(1-y)·x + lw·softplus(-x)], lw = 1 + (pos_weight-1)·y;
    grad = scale·w·[(1-y) - lw·sigmoid(-x)].
    ``x``, ``y`` (M, K) (any other shape is viewed as rows of its last axis); ``weight`` None or
    broadcastable to x; ``pos_weight`` None or broadcastable to x (per class: (K,));
    ``scale`` broadcastable to x;
    ``grad_out`` like x, or None. Returns the elementwise loss, shaped like x (float32 for a
    16-bit x, whose gradient is rounded to x's dtype; a 16-bit y is read in 16 bits).
    """
    dt = x.dtype
    kind = _half.kind_of(dt)
    cdt = _compute(dt)
    shape = x.shape
    K = shape[-1] if x.ndim >= 1 else 1
    M = int(np.prod(shape[:-1])) if x.ndim >= 1 else 1
    if x.ndim != 2:  # view as rows of the last axis; broadcast operands follow
        if weight is not None:
            weight = np.broadcast_to(np.asarray(weight, cdt), shape).reshape(M, K)
        if pos_weight is not None:
            pos_weight = np.broadcast_to(np.asarray(pos_weight, cdt), shape).reshape(M, K)
        if scale is not None:
            scale = np.broadcast_to(np.asarray(scale, cdt), shape).reshape(M, K)
        y = np.asarray(y)
        y = np.broadcast_to(y if kind is not None else y.astype(dt, copy=False), shape)
        out2 = None if grad_out is None else np.empty((M, K), dt)
        loss = bce_logits(x.reshape(M, K), y.reshape(M, K), weight, pos_weight, scale, out2)
        if grad_out is not None:
            grad_out[...] = out2.reshape(shape)
        return loss.reshape(shape)
    if M == 0 or K == 0:
        return np.zeros(shape, cdt)
    w = _compact(1 if weight is None else weight, M, K, cdt)
    has_pw = pos_weight is not None
    pw = _compact(pos_weight if has_pw else 1, M, K, cdt)
    has_g = grad_out is not None
    sc = _compact(0 if scale is None else scale, M, K, cdt)
    if has_g and grad_out.flags.c_contiguous and grad_out.dtype == dt:
        g, copy_back = grad_out, None  # elementwise: writing over x (in place) is safe
    elif has_g:
        g, copy_back = np.empty((M, K), dt), grad_out
    else:
        g, copy_back = np.empty((1, K), dt), None
    loss = _buffers.empty((M, K), cdt)
    if kind is None:
        xc = _contiguous(x, dt)
        yc = _contiguous(np.broadcast_to(np.asarray(y, dt), (M, K)), dt)
        run_rows(_bce.bce_rows, M, K, (xc, yc, w, pw, has_pw, sc, g, has_g, loss))
    else:
        y16, y32, ykind = _half.operand(y, (M, K))
        args = (_half.bits(np.ascontiguousarray(x)), kind, y16, y32, ykind, w, pw, has_pw, sc,
                _half.bits(g), has_g, loss)
        run_rows(_bce.bce_rows16, M, K, args)
    _finish(g, copy_back)
    return loss

# The other families' host functions (their own modules; the op names of `_dispatch.backend_for`)
from ._focal import focal_index, focal_prob, sigmoid_focal  # noqa: E402, F401  (xent._focal)
from ._jsd import jsd  # noqa: E402, F401  (the generalized JSD row kernel: xent._divergence)
from ._sparse import (  # noqa: E402, F401  (sparsemax / entmax maps, VJPs, losses: xent._sparse)
    entmax15,
    entmax15_backward,
    entmax15_loss,
    entmax_bisect,
    entmax_bisect_backward,
    entmax_bisect_loss,
    sparsemax,
    sparsemax_backward,
    sparsemax_loss,
)
