"""Vocabulary-parallel cross-entropy over `torch.distributed` (Megatron-LM's scheme).

Each rank holds the logits of a contiguous slice of the classes, ``[start, start + V_r)`` (or, in
the linear form, the rows ``W[start:start + V_r]`` of the classifier). Per row the rank computes
its local log-sum-exp ``l_r``, its share of the target logit, of the target weight and (with
label smoothing) of ``Σ_c w_c z_c``; then two collectives of O(N) each combine them::

    M   = all_reduce_MAX(l_r)                                 # collective 1: (N,)
    S   = all_reduce_SUM([exp(l_r - M), z_t·[t∈r], w_t·[t∈r], Σ_{c∈r} w_c z_c, Σ_{c∈r} w_c])
    lse = M + log S[0]                                        # collective 2: (k·N + 1,)

after which every rank knows each row's loss, and the gradient of its own slice is local:
``p - e_t`` restricted to the slice (plus the smoothing and z-loss terms). Both are the formulas
of `xent.torch._reference` (``index_loss``, ``index_grad_``, ``soft_cap``) on the combined
statistics; the reduction is ``xent._reduction``'s, and the linear form runs the chunk loop of
`xent.torch._linear` (``chunk_loop``). Every rank returns the same loss; ``backward`` on each
rank fills the gradient of that rank's shard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from xent import _cross_entropy, _reduction
from xent._problem import Problem, check_options, class_weight, cross_entropy_problem

from . import _bridge, _linear
from ._reference import index_grad_, index_loss, soft_cap


def _vocab_range(local: int, vocab_start, vocab_size, group) -> tuple[int, int]:
    """(start, V): given, or from one all_gather of the shard sizes (O(world))."""
    if vocab_start is not None and vocab_size is not None:
        return int(vocab_start), int(vocab_size)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([local], dtype=torch.int64), group=group)
    sizes = [int(s) for s in gathered]
    start = sum(sizes[:rank]) if vocab_start is None else int(vocab_start)
    return start, sum(sizes) if vocab_size is None else int(vocab_size)


class _Stats:
    """Per-row statistics of this rank's slice, accumulated chunk by chunk, then combined."""

    def __init__(self, n, dt, target, weight, ignore_index, start, local, eps):
        self.valid = target != ignore_index
        self.owned = self.valid & (target >= start) & (target < start + local)
        self.tt = torch.where(self.valid, target, torch.zeros((), dtype=target.dtype))
        self.local_t = torch.where(self.owned, target - start, torch.zeros((), dtype=target.dtype))
        self.start, self.weight, self.eps = start, weight, eps
        self.lse_local = torch.empty(n, dtype=dt)
        self.zt = torch.zeros(n, dtype=dt)
        self.wz = torch.zeros(n, dtype=dt) if eps else None
        of = self.owned.to(dt)
        self.wt = of if weight is None else weight[self.local_t] * of
        self.wsum = torch.tensor(float(local), dtype=dt) if weight is None else weight.sum()

    def add_chunk(self, s, e, z):
        """``z``: the (soft-capped) logits of rows ``s:e`` of this slice."""
        self.lse_local[s:e] = torch.logsumexp(z, 1)
        zt = z.gather(1, self.local_t[s:e, None])[:, 0]
        self.zt[s:e] = zt * self.owned[s:e]
        if self.wz is not None:
            self.wz[s:e] = z.sum(1) if self.weight is None else torch.mv(z, self.weight)

    def counts(self, problem: Problem, dt) -> Problem:
        """``problem`` with the mean's denominators as tensors of ``dt`` (after `combine`): the
        problem's, except the weighted one, which sums the row weights the collectives gathered
        from the shards."""
        count_z = torch.tensor(float(problem.denom_z), dtype=dt)
        return replace(problem, denom=count_z if self.weight is None else self.wt.sum(),
                       denom_z=count_z)

    def combine(self, group):
        """The two collectives; afterwards lse, zt, wt, wz, wsum are global."""
        m = self.lse_local.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        parts = [torch.exp(self.lse_local - m_safe), self.zt, self.wt]
        if self.wz is not None:
            parts.append(self.wz)
        packed = torch.cat([torch.stack(parts).reshape(-1), self.wsum.reshape(1)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        n = m.shape[0]
        rows = packed[:-1].view(len(parts), n)
        self.lse = m_safe + torch.log(rows[0])
        self.zt, self.wt = rows[1], rows[2]
        if self.wz is not None:
            self.wz = rows[3]
        self.wsum = packed[-1]

    def grad_(self, s, e, z, problem: Problem, scales, aux):
        """Overwrite this slice's logits ``z`` of rows ``s:e`` with the gradient; ``scales``:
        the (N,) row scales of the cross-entropy and of the z-loss (`_scales`)."""
        sce, sz = scales
        index_grad_(z, self.lse[s:e], self.tt[s:e], self.wt[s:e], self.valid[s:e],
                    self.weight, self.wsum, problem.num_classes, self.eps,
                    problem.options.lse_square_scale, sce[s:e], None if sz is None else sz[s:e],
                    owned=self.owned[s:e], col_offset=self.start)
        if aux is not None:
            z.mul_(aux)


def _scales(problem: Problem, n, dt, grad_output=None):
    """(N,) scales of the cross-entropy rows and of the z-loss rows (None without z-loss), from
    ``problem``'s denominators (`_Stats.counts`)."""
    if problem.reduction == "none":
        g = torch.ones(n, dtype=dt) if grad_output is None else grad_output.to(dt)
    else:
        g = torch.ones((), dtype=dt) if grad_output is None else grad_output.reshape(()).to(dt)
    zl = problem.options.lse_square_scale
    return _reduction.row_scales(problem.reduction, g, problem.denom,
                                 problem.denom_z if zl else None, n)


def _loss(problem: Problem, st: _Stats) -> torch.Tensor:
    """The loss from the combined statistics, with ``problem``'s denominators."""
    ce = index_loss(st.lse, st.zt, st.wz, st.wt, st.wsum, st.valid, problem.num_classes,
                    problem.options.label_smoothing)
    return _cross_entropy.rows_loss(problem, ce, st.lse, st.valid)


def _soft_cap(z: torch.Tensor, cap: float | None, aux: torch.Tensor | None) -> None:
    """The cap in place on ``z`` (nothing without one), its derivative into ``aux``."""
    if cap is not None:
        soft_cap(z, cap, out=z, deriv=aux)


def _problem(logits_shape, target, weight, ignore_index, reduction, options, dt, start, local):
    """The core's validation step for this rank's call (targets against the whole vocabulary,
    the weight against this shard), and the shard's weight in ``dt``."""
    n, vocab = logits_shape
    if not 0 <= start <= start + local <= vocab:
        raise ValueError(f"this rank's classes [{start}, {start + local}) do not fit in a "
                         f"vocabulary of {vocab}")
    if not isinstance(target, torch.Tensor) or target.is_floating_point():
        raise TypeError("target must be a tensor of int64 class indices (probability targets "
                        "are not supported by the vocabulary-parallel forms)")
    cdt = np.dtype(np.float64 if dt == torch.float64 else np.float32)
    class_weight(_bridge.numpy_operand(weight, cdt), local, cdt)
    problem = cross_entropy_problem(logits_shape, cdt, _bridge.numpy_operand(target, cdt), None,
                                    ignore_index, reduction, options)
    return problem, None if weight is None else weight.detach().to(dt)


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    vocab_start: int | None = None,
    vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Cross-entropy of logits sharded along the vocabulary across the ranks of ``group``.

    The loss (and, on each rank, the gradient of its shard) equals
    ``xent.torch.cross_entropy(full_logits, target, weight=full_weight, ...)`` on the
    concatenation of the shards in rank order: unreduced, with ``lse`` over all ``V`` classes,
    ``loss_i = (1-eps)·w_t·(lse - z_t) + (eps/V)·Σ_c w_c·(lse - z_c) + s·lse²`` (0 for ignored
    rows). Two collectives of O(N) per call (see the module docstring), plus one all_gather of
    the shard sizes when ``vocab_start``/``vocab_size`` are not given.

    Args:
        logits: ``(N, V_r)``, this rank's classes ``[vocab_start, vocab_start + V_r)``.
        target: ``(N,)`` int64 global class indices (the same on every rank).
        vocab_start, vocab_size: this shard's first class and the total ``V``; found with an
            all_gather of the shard sizes (shards in rank order) when None.
        group: the process group (default: the world).
        weight: this rank's slice ``(V_r,)`` of the class weights, or None.
        ignore_index, reduction, label_smoothing, lse_square_scale, softcap, return_lse: as in
            `xent.torch.cross_entropy` (index targets only).

    Returns:
        The loss, identical on every rank (0-d, or ``(N,)`` for ``'none'``), and the global
        ``(N,)`` lse with ``return_lse``.

    Edge cases: a rank may hold no target of a row (its one-hot term is then 0); ranks must
    call this collectively with the same ``target`` and options.

    Example (one process: the group of one rank holds the whole vocabulary):
        >>> import os, torch, torch.distributed as dist
        >>> from xent.torch import cross_entropy, vocab_parallel_cross_entropy
        >>> store = dist.HashStore()
        >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> t = torch.tensor([0, 2])
        >>> round(vocab_parallel_cross_entropy(z, t, vocab_start=0, vocab_size=3).item(), 4)
        0.1755
        >>> dist.destroy_process_group()
    """
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    n, local = logits.shape
    start, vocab = _vocab_range(local, vocab_start, vocab_size, group)
    dt = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    problem, w = _problem((n, vocab), target, weight, ignore_index, reduction, options, dt, start,
                          local)
    z = logits.detach().to(dt, copy=True).contiguous()
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    cap = options.softcap
    aux = torch.empty_like(z) if (want_grad and cap is not None) else None
    holder = {}

    def compute():
        _soft_cap(z, cap, aux)
        st = _Stats(n, dt, target, w, problem.ignore_index, start, local,
                    options.label_smoothing)
        st.add_chunk(0, n, z)
        st.combine(group)
        counted = st.counts(problem, dt)
        holder["lse"] = st.lse
        loss = _loss(counted, st).to(logits.dtype)
        if not want_grad:
            return loss, None
        st.grad_(0, n, z, counted, _scales(counted, n, dt), aux)
        return loss, z.to(logits.dtype)

    if want_grad:
        loss = _bridge.SavedGrad.apply(logits, compute, 1 if reduction == "none" else None)
    else:
        loss, _ = compute()
    return (loss, holder["lse"].to(logits.dtype)) if return_lse else loss


@dataclass
class _ParallelSpec:
    """Everything about a vocabulary-parallel linear call but the differentiable tensors; its
    passes for `_linear.ChunkedLinear`."""

    problem: Problem  # the validated call over the whole vocabulary (N, V)
    target: torch.Tensor  # (N,) int64 global class indices
    weight: torch.Tensor | None  # this shard's class weights (V_r,) in the input's dtype
    start: int  # this shard's first class
    group: Any  # the process group (None: the world)
    chunk: int  # rows per chunk
    reduce_input_grad: bool  # all_reduce grad_x over the group
    allow_retain_graph = False
    consumed = ("vocab_parallel_linear_cross_entropy: backward ran twice through a graph whose "
                "precomputed gradients were already consumed")

    def forward(self, x, W, b, need):
        """Pass 1 (statistics), the collectives, and with ``need`` pass 2 (the gradients).
        Returns (loss, lse or an empty tensor, grads, (statistics, counted problem))."""
        p = self.problem
        n, dt, local = x.shape[0], x.dtype, W.shape[0]
        buf = torch.empty(max(1, min(self.chunk, n)), local, dtype=dt)
        cap = p.options.softcap
        aux = torch.empty_like(buf) if (need and cap is not None) else None
        st = _Stats(n, dt, self.target, self.weight, p.ignore_index, self.start, local,
                    p.options.label_smoothing)

        def statistics(s: int, e: int, z: torch.Tensor) -> None:
            _soft_cap(z, cap, None if aux is None else aux[: e - s])
            st.add_chunk(s, e, z)

        _linear.chunk_loop(x, W, b, buf, statistics)
        st.combine(self.group)
        counted = st.counts(p, dt)
        grads = None
        if need:  # one chunk covering every row: its logits (and aux) are still in the buffers
            grads = self._grads(x, W, b, st, counted, need, buf, aux, None,
                                recompute=buf.shape[0] < n)
        lse = st.lse.clone() if p.options.return_lse else torch.empty(0, dtype=dt)
        return _loss(counted, st), lse, grads, (st, counted)

    def backward(self, x, W, b, need, grad_output, state):
        """Pass 2 with each row's ``grad_output`` (``reduction='none'``)."""
        buf = torch.empty(max(1, min(self.chunk, x.shape[0])), W.shape[0], dtype=x.dtype)
        aux = torch.empty_like(buf) if self.problem.options.softcap is not None else None
        return self._grads(x, W, b, *state, need, buf, aux, grad_output, recompute=True)

    def _grads(self, x, W, b, st: _Stats, counted: Problem, need, buf, aux, grad_output,
               recompute: bool):
        """Pass 2 (`_linear.chunk_loop`): each chunk's logits (recomputed unless ``buf`` holds
        them) turned into the gradient in place, and the three products; ``grad_W`` and
        ``grad_b`` accumulate in the input's dtype."""
        scales = _scales(counted, x.shape[0], x.dtype, grad_output)
        cap = self.problem.options.softcap

        def gradient(s: int, e: int, z: torch.Tensor) -> torch.Tensor:
            a = None if aux is None else aux[: e - s]
            if recompute:
                _soft_cap(z, cap, a)
            st.grad_(s, e, z, counted, scales, a)
            return z

        gx, gW, gb = _linear.chunk_loop(x, W, b, buf, gradient, need, compact=True,
                                        recompute=recompute)
        if gx is not None and self.reduce_input_grad:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=self.group)
        return [gx, gW, gb]


def vocab_parallel_linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    vocab_start: int | None = None,
    vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    chunk_size: int | None = None,
    reduce_input_grad: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Linear cross-entropy with the classifier sharded along the vocabulary across ranks.

    Equals ``xent.torch.linear_cross_entropy(input, full_W, target, linear_bias=full_b, ...)``
    where ``full_W`` stacks every rank's ``linear_weight`` ``(V_r, H)`` in rank order. The
    logits of this rank's slice are formed chunk by chunk (``chunk_size`` rows, default
    `default_chunk_size(V_r)`): a first pass keeps only per-row statistics, the two O(N)
    collectives combine them, and a second pass recomputes each chunk's logits and accumulates
    the gradients (when one chunk covers all N rows its logits are kept and not recomputed).
    The gradient of ``input`` sums every rank's share: one more all_reduce of ``(N, H)``
    (Megatron's column-parallel input gradient), skipped with ``reduce_input_grad=False``.

    Args:
        input: ``(N, H)`` hidden states, the same on every rank.
        linear_weight: ``(V_r, H)`` this rank's rows of the classifier.
        target: ``(N,)`` int64 global class indices.
        linear_bias: ``(V_r,)`` this rank's slice of the bias, or None.
        vocab_start, vocab_size, group, weight, ignore_index, reduction, label_smoothing,
            lse_square_scale, softcap, return_lse: as in `vocab_parallel_cross_entropy`.
        chunk_size: rows per chunk.
        reduce_input_grad: all-reduce the input's gradient over ``group``.

    Returns:
        The loss, identical on every rank, and the ``(N,)`` lse with ``return_lse``.

    Example (one process holding the whole vocabulary):
        >>> import torch, torch.distributed as dist
        >>> from xent.torch import vocab_parallel_linear_cross_entropy
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> x, W = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
        >>> t = torch.tensor([1, 2, 3, -100, 9, 0])
        >>> loss = vocab_parallel_linear_cross_entropy(x, W, t, chunk_size=4)
        >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(x @ W.T, t)))
        True
        >>> dist.destroy_process_group()
    """
    n, h = input.shape
    local = linear_weight.shape[0]
    if linear_weight.shape[1] != h:
        raise ValueError(f"input has {h} features but linear_weight has shape "
                         f"{tuple(linear_weight.shape)}: expected (V_r, {h})")
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    start, vocab = _vocab_range(local, vocab_start, vocab_size, group)
    dt = input.dtype
    problem, w = _problem((n, vocab), target, weight, ignore_index, reduction, options, dt, start,
                          local)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    spec = _ParallelSpec(
        problem=problem, target=target, weight=w, start=start, group=group,
        chunk=int(chunk_size) if chunk_size else _linear.default_chunk_size(
            local, input.element_size()),
        reduce_input_grad=reduce_input_grad)
    x, W = input.contiguous(), linear_weight.contiguous()
    if torch.is_grad_enabled() and (input.requires_grad or linear_weight.requires_grad or (
            linear_bias is not None and linear_bias.requires_grad)):
        loss, lse = _linear.ChunkedLinear.apply(x, W, linear_bias, spec)
    else:
        with torch.no_grad():
            loss, lse, *_ = spec.forward(x.detach(), W.detach(), None if linear_bias is None
                                         else linear_bias.detach(), None)
    return (loss, lse) if return_lse else loss
