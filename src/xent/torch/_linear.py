"""Chunked linear cross-entropy: ``cross_entropy(input @ W.T + b, target)`` and its gradients
without ever holding the ``(N, V)`` logits.

The call is validated once by the core's validation step (for logits of shape ``(N, V)``, never
built), which also gives the reduction's denominators. For each chunk of ``m`` rows the logits
``x[i:i+m] @ W.T + b`` go into one reusable ``(m, V)`` buffer; the core's row kernel
(``xent._cross_entropy.backend_rows``, every option included) turns the buffer into
d loss / d logits in place; then ``grad_x[i:i+m] = dz @ W``, ``grad_W += dz.T @ x[i:i+m]``
and ``grad_b += dz.sum(0)``. The gradients are computed in the forward pass (as Liger-Kernel
and PyTorch's chunked path do) so that ``backward`` is a scale by ``grad_output``; for
``reduction='none'`` the chunks are recomputed in ``backward`` with each row's
``grad_output``. The chunk loop (`chunk_loop`, the products included) and the autograd
(`ChunkedLinear`) are also those of the vocabulary-parallel linear form (`xent.torch._parallel`),
which passes its own per-chunk step.

PyTorch 2.13's K-dimensional weight ``(C, d1, ..., dK, H)`` is its ``(C·D, H)`` view: each
chunk's ``(m, C·D)`` buffer, viewed ``(m, C, D)``, goes to the core's K-dimensional kernel
(`_chunk_ce`). bfloat16 runs the products in bfloat16 and the kernels on the bfloat16 buffer;
``grad_W`` over several chunks accumulates in float32 unless ``acc_policy="compact"``
(`_GradW`). Under CPU autocast (bfloat16) the float32 operands are cast and that path runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xent import _cross_entropy, _dispatch, _reduction
from xent._problem import Problem, check_options
from xent._thresholds import DEFAULT_CHUNK_BYTES, GW_BLOCK_BYTES, MIN_CHUNK_ROWS

from . import _bridge, _reference, _route

# (the default chunk's bytes and least rows: `xent._thresholds`)
_MIN_CHUNK_ROWS = MIN_CHUNK_ROWS
_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def default_chunk_size(num_classes: int, itemsize: int = 4) -> int:
    """Rows per chunk for ``num_classes`` logits of ``itemsize`` bytes (see DEFAULT_CHUNK_BYTES).

    >>> default_chunk_size(65536)
    512
    """
    return max(_MIN_CHUNK_ROWS, DEFAULT_CHUNK_BYTES // max(1, num_classes * itemsize))


@dataclass
class _Spec:
    """Everything about a call but the differentiable tensors; its passes for
    `ChunkedLinear`."""

    problem: Problem  # the validated call, logits (N, C, d1, ..., dK) or (N, C)
    target: np.ndarray  # (N·D,) int64 or (N, C, D) probabilities, as the kernels take them
    chunk: int
    allow_retain_graph: bool
    positions: int = 1  # D = d1·...·dK: class-axis positions per row of the (N, C·D) logits
    compact: bool = False  # 16-bit grad_W accumulated in its dtype (options' acc_policy)
    loss_dtype: torch.dtype | None = None  # the loss's and lse's dtype; None: the input's
    consumed = ("xent.torch.linear_cross_entropy: backward ran a second time through a graph "
                "whose precomputed gradients were already consumed; pass "
                "allow_retain_graph=True to keep them (one more copy of each gradient)")

    @property
    def deferred(self) -> bool:
        """Whether the gradients wait for backward (the entropy's upstream gradient)."""
        return self.problem.options.return_entropy

    def forward(self, x, W, b, need):
        """`ChunkedLinear`'s pass: (loss, lse, [gx, gW, gb] or None, state), and with the
        statistics options a fifth item, (entropy, argmax) (empty tensors where not asked)."""
        scales = _row_scales(self.problem, None) if need else (None, None)
        ce, lse, ent, top, *grads = _run_chunks(x, W, b, self, *scales, need or (False,) * 3)
        dt = self.loss_dtype or x.dtype
        # (the statistics options: each position's lse and entropy, O(N), for backward)
        state = (lse, ent) if self.problem.options.stats else None
        out = _loss(self, ce, lse, dt), _lse(self, lse, dt), grads if need else None, state
        if not self.problem.options.stats:
            return out
        o, shape = self.problem.options, self.problem.loss_shape
        ent_t = (torch.from_numpy(ent).reshape(shape).to(dt) if o.return_entropy
                 else torch.empty(0, dtype=dt))
        top_t = (torch.from_numpy(top).reshape(shape) if o.return_argmax
                 else torch.empty(0, dtype=torch.int64))
        return (*out, (ent_t, top_t))

    def backward(self, x, W, b, need, grad_output, state, grad_extra=None):
        """`ChunkedLinear`'s recomputed gradients (``reduction='none'``, or the entropy's
        upstream gradient ``grad_extra[0]``)."""
        cdt = _TORCH[self.problem.dtype]
        g = _bridge.as_numpy(grad_output.to(cdt).contiguous())
        ge = None
        if grad_extra is not None and self.problem.options.return_entropy:
            ge = _bridge.as_numpy(grad_extra[0].to(cdt).contiguous()).reshape(-1)
        return _run_chunks(x, W, b, self, *_row_scales(self.problem, g), need, ge, state)[4:]


def _chunk_ce(spec: _Spec, z: np.ndarray, tgt: np.ndarray, rs, rz, grad: np.ndarray | None,
              spare: np.ndarray | None, ge: np.ndarray | None = None, saved: Any = None):
    """The cross-entropy of one chunk ``z`` (m, C·D) of logits: (ce (m·D,), lse (m·D,) or None,
    the array holding d loss / d z or None), and with the statistics options (temperature,
    entropy, argmax) two more, the entropy and argmax (m·D,); ``ge``: the entropy's upstream
    gradient (m·D,) or None; ``saved``: the positions' (lse, entropy) from the forward pass.
    ``grad``: where the gradient may go (``z`` itself or ``spare``); ``spare``: a second
    (m, C·D) buffer, needed when D > 1.

    D == 1: the row kernel in place (``backend_rows``). D > 1: the (m, C, D) view goes to the
    core's K-dimensional kernel where the dispatcher picks one and no option needs the rows
    (gradient into ``spare``); otherwise the class axis is moved last into ``spare``, the row
    kernel runs there in place, and the gradient is moved back into ``z``.
    """
    p = spec.problem
    d = spec.positions
    stats = p.options.stats
    if d == 1:
        if stats:
            ce, lse, ent, top = _cross_entropy.backend_rows(p, z, tgt, rs, rz, grad, ge, saved)
            return ce, lse, grad, ent, top
        ce, lse = _cross_entropy.backend_rows(p, z, tgt, rs, rz, grad)
        return ce, lse, grad
    m, C = z.shape[0], p.num_classes
    z3 = z.reshape(m, C, d)
    kdim = None if p.options.extended else _dispatch.kdim_kernel(
        "ce_prob" if p.prob else "ce_index", m, C, d, z.dtype)
    eps = p.options.label_smoothing
    if kdim is not None:
        g3 = None if grad is None else spare.reshape(m, C, d)
        if p.prob:
            ce = kdim(z3, tgt, p.weight, eps, rs, g3)
        else:
            ce = kdim(z3, tgt, p.weight, p.ignore_index, eps, rs, g3)
        return ce.reshape(m * d), None, (None if grad is None else spare)
    r3 = spare.reshape(m, d, C)
    np.copyto(r3, z3.transpose(0, 2, 1))
    rows = r3.reshape(m * d, C)
    t = np.ascontiguousarray(tgt.transpose(0, 2, 1)).reshape(m * d, C) if p.prob else tgt
    out = _cross_entropy.backend_rows(p, rows, t, rs, rz, None if grad is None else rows,
                                      *((ge, saved) if stats else ()))
    if grad is None:
        return (out[0], out[1], None, *out[2:])
    np.copyto(z3, r3.transpose(0, 2, 1))
    return (out[0], out[1], z, *out[2:])


def chunk_logits(out: torch.Tensor, x: torch.Tensor, W: torch.Tensor,
                 b: torch.Tensor | None) -> torch.Tensor:
    """The logits ``x @ W.T + b`` of a chunk of rows, into ``out``, in the input's dtype
    (bfloat16: oneDNN's bf16 product, float32 accumulation inside it)."""
    if b is None:
        return torch.mm(x, W.t(), out=out)
    return torch.addmm(b, x, W.t(), out=out)


def chunk_loop(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, buf: torch.Tensor,
    on_chunk: Callable[[int, int, torch.Tensor], torch.Tensor | None],
    need: tuple[bool, ...] = (False, False, False), *, compact: bool = False,
    gb_dtype: torch.dtype | None = None, recompute: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The chunk loop of the linear forms (this module's and the vocabulary-parallel one).

    For each chunk of rows ``s:e`` (``buf``'s row count at a time): its logits into
    ``z = buf[:e-s]`` (`chunk_logits`; left as they are when not ``recompute``, ``buf`` then
    holding them already), then ``dz = on_chunk(s, e, z)``, the chunk's d loss / d logits
    (``z`` itself or another (e-s, V) tensor) or None; from each ``dz`` the products that
    ``need`` asks for: ``grad_x[s:e] = dz @ W``, ``grad_W += dz.T @ x[s:e]`` (`_GradW`,
    ``compact``) and ``grad_b += dz.sum(0)`` (accumulated in ``gb_dtype``, default the
    input's, returned in the input's). Returns (grad_x, grad_W, grad_b), None where not needed.
    """
    n, v = x.shape[0], W.shape[0]
    chunk = buf.shape[0]
    gx = torch.empty_like(x) if need[0] else None
    gW = _GradW(W, n > chunk, compact) if need[1] else None
    gb = torch.zeros(v, dtype=gb_dtype or x.dtype) if need[2] else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = x[s:e]
        z = buf[: e - s]
        if recompute:
            chunk_logits(z, xs, W, b)
        dz = on_chunk(s, e, z)
        if dz is None:
            continue
        if gx is not None:
            torch.mm(dz, W, out=gx[s:e])
        if gW is not None:
            gW.add(dz, xs)
        if gb is not None:
            gb += dz.sum(0, dtype=gb.dtype)
    return gx, None if gW is None else gW.result(), None if gb is None else gb.to(x.dtype)


def _run_chunks(x, W, b, spec, row_scale, z_row_scale, need, entropy_scale=None, saved=None):
    """One pass of `chunk_loop` with the core's kernels on each chunk (`_chunk_ce`). ``W``
    (C·D, H), ``b`` (C·D,) or None; ``row_scale``, ``z_row_scale``: (N·D,) per-position scales
    of the cross-entropy and of the z-loss, or None for forward only. ``need``: which of
    (gx, gW, gb) to compute; ``entropy_scale``: the entropy's (N·D,) upstream gradient, or None;
    ``saved``: the positions' (lse, entropy) (N·D,) from the forward pass, or None.
    Returns (ce, lse, entropy, argmax, gx, gW, gb); ce, lse, entropy are (N·D,) NumPy arrays in
    the compute dtype (entropy and argmax filled with the statistics options only); ``grad_b``
    accumulates in the compute dtype.
    """
    n, v = x.shape[0], W.shape[0]
    d = spec.positions
    dt = x.dtype
    cdt = spec.problem.dtype
    want_grad = row_scale is not None and any(need)
    chunk = max(1, min(spec.chunk, n))
    buf = torch.empty(chunk, v, dtype=dt)
    bufn = _bridge.as_numpy(buf)
    spare_t = torch.empty(chunk, v, dtype=dt) if d > 1 else None
    spare = None if spare_t is None else _bridge.as_numpy(spare_t)
    ce, lse = np.empty(n * d, cdt), np.full(n * d, np.nan, cdt)
    stats = spec.problem.options.stats
    ent = np.empty(n * d if stats else 0, cdt)
    top = np.empty(n * d if stats else 0, np.int64)

    def on_chunk(s: int, e: int, z: torch.Tensor) -> torch.Tensor | None:
        zn = bufn[: e - s]
        pos = slice(s * d, e * d)
        tgt = spec.target[s:e] if spec.problem.prob else spec.target[pos]
        rs = row_scale[pos] if want_grad else None
        rz = z_row_scale[pos] if (want_grad and z_row_scale is not None) else None
        sp = None if spare is None else spare[: e - s]
        ge = None if entropy_scale is None or not want_grad else entropy_scale[pos]
        sv = None if saved is None else (saved[0][pos], saved[1][pos])
        ce[pos], lse_c, gn, *st = _chunk_ce(spec, zn, tgt, rs, rz, zn if want_grad else None,
                                            sp, ge, sv)
        if st:
            ent[pos], top[pos] = st
        if lse_c is not None:
            lse[pos] = lse_c
        if not want_grad:
            return None
        return z if gn is zn else spare_t[: e - s]

    gx, gW, gb = chunk_loop(x, W, b, buf, on_chunk, need if want_grad else (False,) * 3,
                            compact=spec.compact, gb_dtype=_TORCH[cdt])
    return ce, lse, ent, top, gx, gW, gb


_GW_BLOCK_BYTES = GW_BLOCK_BYTES  # (one vocabulary block of a chunk's gradient: `_GradW`)


class _GradW:
    """``grad_W = Σ_chunks dz.T @ x[chunk]``.

    float32/float64, a single chunk, or ``compact``: ``addmm_`` into the gradient in its own
    dtype (for bfloat16 each chunk's ``addmm_`` rounds the running sum: over k >= 2 chunks the
    error grows, measured 1.1x to 1.25x PyTorch's one ``(N, V)`` product at 2 to 4 chunks).
    16-bit input over several chunks otherwise ("accurate", the default, as PyTorch's CPU
    default policy): a float32 ``(V, H)`` accumulator and float32 products of each chunk's
    vocabulary blocks, upcast (exact: bfloat16 values and their products are exact in float32),
    with oneDNN's bf16 arithmetic for float32 matmuls on for the call
    (``torch.backends.mkldnn.matmul.fp32_precision = 'bf16'``: exact on these inputs, float32
    accumulation), so the gradient is rounded to bfloat16 once, as PyTorch's.
    """

    def __init__(self, W: torch.Tensor, several_chunks: bool, compact: bool) -> None:
        self.dtype = W.dtype
        self.upcast = (W.dtype in (torch.bfloat16, torch.float16) and several_chunks
                       and not compact)
        self.acc = torch.zeros(W.shape, dtype=torch.float32 if self.upcast else W.dtype)

    def add(self, dz: torch.Tensor, xs: torch.Tensor) -> None:
        if not self.upcast:
            self.acc.addmm_(dz.t(), xs)
            return
        m, v = dz.shape
        block = max(1, _GW_BLOCK_BYTES // max(1, 4 * m))
        x32 = xs.float()
        with _bf16_float32_matmuls(self.dtype == torch.bfloat16):
            for s in range(0, v, block):
                e = min(v, s + block)
                self.acc[s:e].addmm_(dz[:, s:e].float().t(), x32)

    def result(self) -> torch.Tensor:
        return self.acc if self.acc.dtype == self.dtype else self.acc.to(self.dtype)


@contextlib.contextmanager
def _bf16_float32_matmuls(on: bool) -> Iterator[None]:
    """oneDNN's bf16 arithmetic for float32 matmuls (float32 accumulation) inside the block."""
    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if not on or mm is None or not hasattr(mm, "fp32_precision"):
        yield
        return
    old = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = old


def _row_scales(p: Problem, grad_output: np.ndarray | None):
    """(N·D,) scales of the cross-entropy positions and of the z-loss (None without z-loss)."""
    g: Any
    if p.reduction == "none":
        g = grad_output.astype(p.dtype)
    else:
        g = p.dtype.type(1) if grad_output is None else grad_output.reshape(()).astype(p.dtype)
    return _reduction.row_scales(p.reduction, g, p.denom,
                                 p.denom_z if p.options.lse_square_scale else None, p.positions)


def _loss(spec: _Spec, ce: np.ndarray, lse: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The loss (0-d, or the loss shape for 'none') in the input's ``dtype``."""
    p = spec.problem
    loss = np.asarray(_cross_entropy.rows_loss(p, ce, lse, None if p.all_valid else p.valid),
                      dtype=p.dtype)
    if p.reduction == "none":
        loss = loss.reshape(p.loss_shape)
    return torch.as_tensor(loss).to(dtype)


def _lse(spec: _Spec, lse: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The per-position log-sum-exp in the loss's shape and the input's dtype."""
    return torch.from_numpy(lse).reshape(spec.problem.loss_shape).to(dtype)


class ChunkedLinear(torch.autograd.Function):
    """The autograd of the chunked linear forms (this module's `_Spec`, the vocabulary-parallel
    ``_ParallelSpec``), ``apply(x, W, b, spec)`` -> (loss, lse (not differentiable)).

    ``spec.forward(x, W, b, need)`` -> (loss, lse, grads, state) runs the forward pass, with
    the gradients ``need`` asks for (x, W, b) computed in it for a ``grad_output`` of 1 when
    ``need`` is given (``reduction`` other than ``'none'``; ``grads`` None otherwise);
    ``backward`` then scales them. For ``'none'`` it calls ``spec.backward(x, W, b, need,
    grad_output, state)``, which recomputes the chunks with each row's ``grad_output``.
    ``spec.allow_retain_graph``: keep the precomputed gradients for another backward (a
    copy each); otherwise they are handed over and a second backward raises
    ``spec.consumed``.
    """

    @staticmethod
    def forward(ctx, x, W, b, spec):  # noqa: D102
        need = tuple(ctx.needs_input_grad[:3])
        deferred = spec.problem.reduction == "none" or getattr(spec, "deferred", False)
        eager = any(need) and not deferred
        loss, lse, ctx.grads, ctx.state, *extra = spec.forward(x, W, b, need if eager else None)
        ctx.spec, ctx.need, ctx.deferred = spec, need, deferred
        if any(need) and not eager:
            ctx.save_for_backward(x, W, b)
        ctx.mark_non_differentiable(lse)
        if not extra:
            return loss, lse
        ent, top = extra[0]  # (the statistics options: the entropy differentiable)
        ctx.mark_non_differentiable(top)
        return loss, lse, ent, top

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse, *grad_extra):  # noqa: D102
        spec = ctx.spec
        if ctx.deferred:
            x, W, b = ctx.saved_tensors
            more = {"grad_extra": grad_extra} if grad_extra else {}
            gx, gW, gb = spec.backward(x, W, b, ctx.need, grad_loss, ctx.state, **more)
            return gx, gW, gb, None
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(spec.consumed)
        if not _route.plain_cpu(grad_loss):  # batched gradients (vmap over backward): torch ops
            return tuple(None if g is None else g * grad_loss for g in grads) + (None,)
        if not spec.allow_retain_graph:
            ctx.grads = None  # hand the buffers to autograd: no copy of grad_W
        one = bool(grad_loss == 1)
        out = []
        for g in grads:
            if g is None or one:
                out.append(g if (one and not spec.allow_retain_graph) or g is None
                           else g.clone())
            elif spec.allow_retain_graph:
                out.append(g * grad_loss)
            else:
                out.append(g.mul_(grad_loss))
        return out[0], out[1], out[2], None


def _flat_linear(input, linear_weight, linear_bias):
    """PyTorch's logits of the K-dimensional form: ``linear`` on the (C·D, H) view of the
    weight, reshaped to (N, C, d1, ..., dK)."""
    if linear_weight.dim() <= 2:
        return F.linear(input, linear_weight, linear_bias)
    out = tuple(linear_weight.shape[:-1])
    flat = F.linear(input, linear_weight.reshape(-1, linear_weight.shape[-1]),
                    None if linear_bias is None else linear_bias.reshape(-1))
    return flat.reshape(*input.shape[:-1], *out)


def _fallback(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
              options, torch_options):
    if not options.extended:  # ignore_index None: PyTorch's own default and checks
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=weight, reduction=reduction,
                                      ignore_index=ignore_index, label_smoothing=
                                      options.label_smoothing, options=torch_options)
    return _reference.cross_entropy(
        _flat_linear(input, linear_weight, linear_bias), target, weight,
        -100 if ignore_index is None else ignore_index, reduction,
        options.label_smoothing, options.lse_square_scale, options.softcap, options.return_lse,
        options.temperature, options.return_entropy, options.return_argmax)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object | None = None,
    chunk_size: int | None = None,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    allow_retain_graph: bool = False,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_argmax: bool = False,
    _loss_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    r"""Cross-entropy of a linear layer's output, chunked: a drop-in for
    `torch.nn.functional.linear_cross_entropy` that never holds the ``(N, V)`` logits.

    The loss is that of ``xent.torch.cross_entropy(input @ linear_weight.T + linear_bias,
    target, ...)``: unreduced, for row ``i`` with ``z = W x_i + b`` (soft-capped when
    ``softcap`` is set) and ``lse = log Σ_c exp(z_c)``::

        loss_i = (1-eps)·w_t·(lse - z_t) + (eps/V)·Σ_c w_c·(lse - z_c) + s·lse²

    (class-probability targets as in `cross_entropy`), 0 where ``t_i == ignore_index``; the
    mean divides the cross-entropy by ``Σ_i w_{t_i}`` over non-ignored rows and the z-loss by
    their count. Gradients for ``input``, ``linear_weight`` and ``linear_bias`` are computed
    chunk by chunk in the forward pass; ``backward`` scales them by ``grad_output`` (for
    ``reduction='none'`` it recomputes the chunks with each row's ``grad_output``).

    Peak memory beyond the inputs, the weights and their gradients: one ``(chunk_size, V)``
    buffer (two with ``softcap``, which keeps ``1 - tanh²``) plus O(N) vectors.

    Args:
        input: ``(N, H)`` or ``(H,)`` hidden states.
        linear_weight: ``(V, H)`` classifier matrix, or ``(C, d1, ..., dK, H)`` for PyTorch
            2.13's K-dimensional loss (batched input only): the logits are then
            ``(N, C, d1, ..., dK)`` (``input @ W.reshape(-1, H).T`` viewed so) and the
            cross-entropy runs along ``C`` at each position ``(d1, ..., dK)``.
        target: class indices ``(N,)``/``()``/``(N, d1, ..., dK)`` (int64) or probabilities of
            the logits' shape.
        linear_bias: ``linear_weight``'s shape without its last dimension, or None.
        weight: class weights ``(C,)`` or None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: ignored target value; None means -100, as in PyTorch (and must be None
            with probability targets).
        label_smoothing: ``eps`` in ``[0, 1]``.
        options: a ``torch.nn.LinearCrossEntropyOptions``: its ``batch_chunk_size`` is the
            chunk size (unless ``chunk_size`` is given), a ``chunking_method`` other than
            ``"auto"`` picks it by PyTorch's own heuristic, ``allow_retain_graph`` is honoured.
            ``acc_policy`` and ``acc_dtype`` are ignored: xent's kernels always compute the
            cross-entropy in float32 or float64 (and ``grad_b`` accumulates in float32 for
            bfloat16). The fallback path passes ``options`` on to PyTorch.
        chunk_size: rows per chunk; default ``default_chunk_size(C·d1·...·dK)`` (a 128 MiB
            buffer; two 64 MiB ones for a K-dimensional weight).
        lse_square_scale: z-loss coefficient ``s``.
        softcap: logit soft-capping value, or None.
        return_lse: also return the per-position ``lse`` (after soft-capping, not
            differentiable).
        allow_retain_graph: keep the precomputed gradients after ``backward`` so that it can
            run again (``retain_graph=True``, gradcheck); by default they are handed to autograd
            without a copy and a second backward raises.
        temperature: ``T`` (positive, finite): the logits are ``z / T`` after the cap, before
            the lse, loss, z-loss, entropy and argmax.
        return_entropy: also return each position's entropy ``lse(z) - Σ_c softmax(z)_c z_c``
            (every position, ignored or not), differentiable: its gradient reaches ``input``,
            ``linear_weight`` and ``linear_bias`` through the same chunks (computed in
            ``backward``, where its upstream gradient is known: the chunks' logits are formed
            twice).
        return_argmax: also return each position's argmax class (int64, first on ties).
        _loss_dtype: private, for CPU autocast: the loss and lse reduced in this dtype
            (float32) rather than the input's.

    Returns:
        The loss (0-d, or the target's shape for ``'none'``) in the input's dtype, then the lse,
        entropy and argmax of that shape as asked (a tuple when more than the loss). The RL
        call: ``nll, entropy = linear_cross_entropy(h, W, tokens, reduction="none",
        temperature=T, return_entropy=True)``, the log-probabilities being ``-nll``.

    Edge cases: everything ignored gives a NaN mean with zero gradients. bfloat16 runs the
    three products in bfloat16 (oneDNN) and the cross-entropy on xent's kernels on the
    bfloat16 chunk in place, once the core takes bfloat16 arrays. Off the fast path (non-CPU,
    float16, bfloat16 before that, mixed dtypes, bfloat16 probability targets, a target or class
    weight that requires grad, tracing/compiling, unbatched input with a K-dimensional weight)
    PyTorch's own function runs.

    Example:
        >>> import torch
        >>> from xent.torch import linear_cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(6, 4, generator=g, requires_grad=True)
        >>> W = torch.randn(10, 4, generator=g, requires_grad=True)
        >>> t = torch.tensor([1, 2, 3, -100, 9, 0])
        >>> loss = linear_cross_entropy(x, W, t, chunk_size=4)
        >>> ref = torch.nn.functional.cross_entropy(x @ W.T, t)
        >>> bool(torch.allclose(loss, ref))
        True
        >>> loss.backward()
        >>> x.grad.shape, W.grad.shape
        (torch.Size([6, 4]), torch.Size([10, 4]))

    References: PyTorch ``torch.nn.functional.linear_cross_entropy``; Liger-Kernel's fused
    linear cross-entropy; Wijmans et al., Cut Your Losses in Large-Vocabulary Language Models
    (2024).
    """
    opts = check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                         return_entropy, return_argmax)
    if options is not None:
        allow_retain_graph = allow_retain_graph or bool(
            getattr(options, "allow_retain_graph", False))
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    ii = -100 if ignore_index is None else ignore_index
    fallback = (input, linear_weight, target, linear_bias, weight, reduction, ignore_index, opts,
                options)
    if (not isinstance(input, torch.Tensor) or input.dim() not in (1, 2)
            or not isinstance(linear_weight, torch.Tensor) or linear_weight.dim() < 2
            or (linear_weight.dim() > 2 and input.dim() != 2)):
        return _fallback(*fallback)  # PyTorch's own checks and errors
    # The plan: the chunks on xent's kernels at every size (no small-size cut-off: extended),
    # no custom operator (under graph capture PyTorch's function is traced)
    route = _route.plan(input, target, weight, params=(linear_weight, linear_bias),
                        extended=True, custom_op=False)
    if route is _route.Route.CUSTOM_OP:  # CPU autocast
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return _fallback(*fallback)
        return _autocast_bf16(input, linear_weight, target, linear_bias, dict(
            weight=weight, reduction=reduction, ignore_index=ignore_index,
            label_smoothing=label_smoothing, options=options, chunk_size=chunk_size,
            lse_square_scale=lse_square_scale, softcap=softcap, return_lse=return_lse,
            allow_retain_graph=allow_retain_graph, temperature=temperature,
            return_entropy=return_entropy, return_argmax=return_argmax))
    if route is not _route.Route.CORE:
        return _fallback(*fallback)
    single = input.dim() == 1
    h, C, out = input.shape[-1], linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    d = math.prod(out)
    v = C * d
    if linear_weight.shape[-1] != h:
        want = "(V, " if not out else "(C, d1, ..., dK, "
        raise ValueError(f"input has {h} features but linear_weight has shape "
                         f"{tuple(linear_weight.shape)}: expected {want}{h})")
    if linear_bias is not None and tuple(linear_bias.shape) != (C, *out):
        raise ValueError(f"linear_bias must have shape {(C, *out)} (linear_weight's shape "
                         f"without its last dimension), got {tuple(linear_bias.shape)}")
    shape = (C,) if single else (input.shape[0], C, *out)
    problem = _bridge.problem_for(input, target, weight, ii, reduction, opts, shape=shape)
    if problem.prob and ignore_index is not None:
        raise ValueError(f"ignore_index={ignore_index} cannot be given with class-probability "
                         "targets (as torch.nn.functional.linear_cross_entropy)")
    if not _kernel_dtypes(input, target, problem.prob):
        return _fallback(*fallback)
    x = input[None] if single else input
    n = x.shape[0]
    if problem.prob:
        rows = problem.y.reshape(n, C, d) if d > 1 else problem.y.reshape(n, v)
    else:
        rows = problem.target
    chunk = _chunk_size(chunk_size, options, n, h, v, x)
    compact = getattr(options, "acc_policy", None) == "compact"
    spec = _Spec(problem=problem, target=np.ascontiguousarray(rows),
                 chunk=chunk or _default_chunk(v, d, x, compact),
                 allow_retain_graph=allow_retain_graph, positions=d, compact=compact,
                 loss_dtype=_loss_dtype)
    xc = x.contiguous()
    Wc = (linear_weight if not out else linear_weight.reshape(v, h)).contiguous()
    bc = None if linear_bias is None else linear_bias.reshape(v)
    grad_on = torch.is_grad_enabled() and (
        input.requires_grad or linear_weight.requires_grad
        or (linear_bias is not None and linear_bias.requires_grad))
    ent = top = None
    if grad_on:
        out = ChunkedLinear.apply(xc, Wc, bc, spec)
        loss, lse = out[:2]
        if opts.stats:
            ent, top = out[2:]
    else:
        with torch.no_grad():
            loss, lse, _, _, *extra = spec.forward(xc.detach(), Wc.detach(), None if bc is None
                                                   else bc.detach(), None)
            if extra:
                ent, top = extra[0]
    if not opts.stats:
        return (loss, lse) if return_lse else loss
    return _reference.stats_outputs(opts, loss, lse, ent, top)


def _autocast_bf16(input, linear_weight, target, linear_bias, kwargs):
    """The linear form under ``torch.autocast("cpu", dtype=torch.bfloat16)``, as PyTorch's:
    autocast runs ``linear`` in bfloat16 (float32 operands cast, differentiably) and
    ``cross_entropy`` in float32 (its float32 list), so the loss is float32 and the gradients
    reach float32 leaves in float32. Here: the bfloat16 chunked path on the cast operands,
    its loss (and lse) returned in float32."""
    def cast(t):
        return t.to(torch.bfloat16) if t is not None and t.dtype == torch.float32 else t

    with torch.autocast("cpu", enabled=False):
        out = linear_cross_entropy(cast(input), cast(linear_weight), target,
                                   linear_bias=cast(linear_bias), **kwargs,
                                   _loss_dtype=torch.float32)  # (reduced in float32: no bf16)
    if isinstance(out, tuple):
        return tuple(o.float() for o in out)
    return out.float()


def _default_chunk(v: int, d: int, x: torch.Tensor, compact: bool = False) -> int:
    """xent's default rows per chunk: `default_chunk_size`, halved for a K-dimensional weight
    (a second buffer) and for 16-bit input over several chunks unless ``compact`` (the float32
    ``grad_W`` accumulator, `_GradW`), so that the buffers stay near `DEFAULT_CHUNK_BYTES`."""
    rows = default_chunk_size(v, x.element_size())
    if x.element_size() == 2 and x.shape[0] > rows and not compact:
        rows //= 2
    return max(1, rows // min(d, 2))


def _chunk_size(chunk_size: int | None, options: Any, n: int, h: int, v: int,
                x: torch.Tensor) -> int | None:
    """Rows per chunk: ``chunk_size``; else the options' ``batch_chunk_size``, or PyTorch's own
    heuristic (``options._adjust``) when they name a ``chunking_method`` other than ``"auto"``;
    else None (xent's default, `default_chunk_size`)."""
    if chunk_size is not None or options is None:
        return None if chunk_size is None else int(chunk_size)
    method = getattr(options, "chunking_method", None)
    if method not in (None, "auto") and hasattr(options, "_adjust"):
        return int(options._adjust(num_batches=n, in_features=h, num_classes=v, dtype=x.dtype,
                                   device=x.device).batch_chunk_size)
    size = getattr(options, "batch_chunk_size", None)
    return None if size is None else int(size)


_CORE_DTYPES = (torch.float32, torch.float64)


def _kernel_dtypes(input: torch.Tensor, target: torch.Tensor, prob: bool) -> bool:
    """What the chunked path adds to the plan's test (`_route.kernels_take`): the input in
    float32, float64 or bfloat16 (float16 runs PyTorch's function), probability targets in
    float32/float64."""
    return (input.dtype in _CORE_DTYPES or input.dtype is torch.bfloat16) and (
        not prob or target.dtype in _CORE_DTYPES)
