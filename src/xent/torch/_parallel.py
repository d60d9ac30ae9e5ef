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
from torch.autograd.function import once_differentiable

from xent import _cross_entropy, _reduction
from xent._problem import Problem, check_options, class_weight, cross_entropy_problem

from . import _bridge, _linear, _reference
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

    def __init__(self, n, dt, target, weight, ignore_index, start, local, eps, entropy=False,
                 argmax=False):
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
        # The statistics options: this slice's Σ_c p^r_c z_c (p^r its own softmax), its max and
        # the max's first column; after `combine`, the rows' mean_logit Σ_c p_c z_c, entropy
        # and global argmax.
        self.mu_local = torch.empty(n, dtype=dt) if entropy else None
        self.zmax = torch.empty(n, dtype=dt) if argmax else None
        self.amax = torch.empty(n, dtype=torch.int64) if argmax else None

    def add_chunk(self, s, e, z):
        """``z``: the (soft-capped, tempered) logits of rows ``s:e`` of this slice."""
        lse = torch.logsumexp(z, 1)
        self.lse_local[s:e] = lse
        if self.mu_local is not None:
            p = torch.exp(z - lse[:, None])
            self.mu_local[s:e] = torch.where(p > 0, p * z, torch.zeros((), dtype=z.dtype)).sum(1)
        if self.amax is not None:
            idx = z.argmax(1)
            self.amax[s:e] = idx + self.start
            self.zmax[s:e] = z.gather(1, idx[:, None])[:, 0]
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
        """The two collectives (a third, MIN, with the argmax); afterwards lse, zt, wt, wz, wsum
        (and mean_logit, entropy, argmax) are global."""
        n = self.lse_local.shape[0]
        m = self.lse_local.clone() if self.zmax is None else torch.cat([self.lse_local,
                                                                        self.zmax])
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        if self.zmax is not None:
            m, gmax = m[:n], m[n:]
            big = torch.iinfo(torch.int64).max
            cand = torch.where(self.zmax == gmax, self.amax, torch.full_like(self.amax, big))
            dist.all_reduce(cand, op=dist.ReduceOp.MIN, group=group)  # the lowest global index
            self.argmax = torch.where(cand == big, torch.zeros_like(cand), cand)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        share = torch.exp(self.lse_local - m_safe)
        parts = [share, self.zt, self.wt]
        if self.wz is not None:
            parts.append(self.wz)
        if self.mu_local is not None:  # Σ_r exp(l_r - M)·μ_r = exp(lse - M)·Σ_c p_c z_c
            parts.append(torch.where(share > 0, share * self.mu_local,
                                     torch.zeros((), dtype=share.dtype)))
        packed = torch.cat([torch.stack(parts).reshape(-1), self.wsum.reshape(1)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        rows = packed[:-1].view(len(parts), n)
        self.lse = m_safe + torch.log(rows[0])
        self.zt, self.wt = rows[1], rows[2]
        if self.wz is not None:
            self.wz = rows[3]
        if self.mu_local is not None:
            self.mean_logit = rows[-1] / rows[0]
            self.entropy = self.lse - self.mean_logit
        self.wsum = packed[-1]

    def grad_(self, s, e, z, problem: Problem, scales, aux, entropy_scale=None):
        """Overwrite this slice's logits ``z`` of rows ``s:e`` with the gradient; ``scales``:
        the (N,) row scales of the cross-entropy and of the z-loss (`_scales`);
        ``entropy_scale``: the entropy's (N,) upstream gradient, or None; ``aux``: dz/dx of
        the cap and temperature (None: 1/T)."""
        sce, sz = scales
        ent = None if entropy_scale is None else entropy_scale[s:e]
        index_grad_(z, self.lse[s:e], self.tt[s:e], self.wt[s:e], self.valid[s:e],
                    self.weight, self.wsum, problem.num_classes, self.eps,
                    problem.options.lse_square_scale, sce[s:e], None if sz is None else sz[s:e],
                    owned=self.owned[s:e], col_offset=self.start, entropy_scale=ent,
                    mean_logit=None if ent is None else self.mean_logit[s:e])
        if aux is not None:
            z.mul_(aux)
        elif problem.options.temperature != 1.0:
            z.div_(problem.options.temperature)


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


def _soft_cap(z: torch.Tensor, cap: float | None, aux: torch.Tensor | None,
              temperature: float = 1.0) -> None:
    """The cap (nothing without one) and the temperature in place on ``z``: ``z ←
    cap·tanh(z/cap)/T``, the derivative ``(1 - tanh²)/T`` into ``aux`` (with a cap)."""
    if cap is not None:
        soft_cap(z, cap, out=z, deriv=aux)
    if temperature != 1.0:
        z.div_(temperature)
        if cap is not None and aux is not None:
            aux.div_(temperature)


def _new_stats(n, dt, target, weight, problem: Problem, start, local) -> _Stats:
    o = problem.options
    return _Stats(n, dt, target, weight, problem.ignore_index, start, local,
                  o.label_smoothing, o.return_entropy, o.return_argmax)


def _extras(problem: Problem, st: _Stats, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy, argmax) after `_Stats.combine` (empty tensors where not asked)."""
    o = problem.options
    ent = st.entropy.to(dt) if o.return_entropy else torch.empty(0, dtype=dt)
    top = st.argmax if o.return_argmax else torch.empty(0, dtype=torch.int64)
    return ent, top


class _Deferred(torch.autograd.Function):
    """`vocab_parallel_cross_entropy` with the statistics options: the loss and entropy from
    the combined statistics; backward turns the kept (tempered) shard into its gradient with
    both upstream gradients (no collective: the statistics are global already)."""

    @staticmethod
    def forward(ctx, logits, loss, ent, state):  # noqa: D102
        ctx.state, ctx.dtype = state, logits.dtype
        return loss, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_ent):  # noqa: D102
        st, z, aux, counted = ctx.state
        ctx.state = None
        n, dt = z.shape[0], z.dtype
        ge = grad_ent.to(dt) if counted.options.return_entropy else None
        st.grad_(0, n, z, counted, _scales(counted, n, dt, grad_loss), aux, ge)
        return z.to(ctx.dtype), None, None, None


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
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
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
        ignore_index, reduction, label_smoothing, lse_square_scale, softcap, return_lse,
            temperature, return_entropy, return_argmax: as in `xent.torch.cross_entropy`
            (index targets only). The entropy over the whole vocabulary needs the rows'
            ``Σ_c p_c z_c``: each rank adds ``exp(l_r - M)·Σ_{c∈r} p^r_c z_c`` to the second
            collective; the argmax, the max value (in the first) then the lowest global index
            holding it (a third, MIN, collective of O(N)).

    Returns:
        The loss, identical on every rank (0-d, or ``(N,)`` for ``'none'``), then the global
        ``(N,)`` lse, entropy and argmax as asked.

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
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                            return_entropy, return_argmax)
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
    if options.stats:
        _soft_cap(z, cap, aux, options.temperature)
        st = _new_stats(n, dt, target, w, problem, start, local)
        st.add_chunk(0, n, z)
        st.combine(group)
        counted = st.counts(problem, dt)
        loss = _loss(counted, st).to(logits.dtype)
        ent, top = _extras(problem, st, logits.dtype)
        if want_grad:
            loss, ent = _Deferred.apply(logits, loss, ent, (st, z, aux, counted))
        lse = st.lse.to(logits.dtype)
        return _reference.stats_outputs(options, loss, lse, ent, top)

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

    @property
    def deferred(self) -> bool:
        """Whether the gradients wait for backward (the entropy's upstream gradient)."""
        return self.problem.options.return_entropy

    def forward(self, x, W, b, need):
        """Pass 1 (statistics), the collectives, and with ``need`` pass 2 (the gradients).
        Returns (loss, lse or an empty tensor, grads, (statistics, counted problem))."""
        p = self.problem
        n, dt, local = x.shape[0], x.dtype, W.shape[0]
        buf = torch.empty(max(1, min(self.chunk, n)), local, dtype=dt)
        cap, temp = p.options.softcap, p.options.temperature
        aux = torch.empty_like(buf) if (need and cap is not None) else None
        st = _new_stats(n, dt, self.target, self.weight, p, self.start, local)

        def statistics(s: int, e: int, z: torch.Tensor) -> None:
            _soft_cap(z, cap, None if aux is None else aux[: e - s], temp)
            st.add_chunk(s, e, z)

        _linear.chunk_loop(x, W, b, buf, statistics)
        st.combine(self.group)
        counted = st.counts(p, dt)
        grads = None
        if need:  # one chunk covering every row: its logits (and aux) are still in the buffers
            grads = self._grads(x, W, b, st, counted, need, buf, aux, None,
                                recompute=buf.shape[0] < n)
        lse = st.lse.clone() if p.options.return_lse else torch.empty(0, dtype=dt)
        out = _loss(counted, st), lse, grads, (st, counted)
        return (*out, _extras(p, st, dt)) if p.options.stats else out

    def backward(self, x, W, b, need, grad_output, state, grad_extra=None):
        """Pass 2 with each row's ``grad_output`` (``reduction='none'``) and the entropy's
        upstream gradient ``grad_extra[0]``."""
        buf = torch.empty(max(1, min(self.chunk, x.shape[0])), W.shape[0], dtype=x.dtype)
        aux = torch.empty_like(buf) if self.problem.options.softcap is not None else None
        ge = None
        if grad_extra is not None and self.problem.options.return_entropy:
            ge = grad_extra[0].to(x.dtype)
        return self._grads(x, W, b, *state, need, buf, aux, grad_output, recompute=True,
                           entropy_scale=ge)

    def _grads(self, x, W, b, st: _Stats, counted: Problem, need, buf, aux, grad_output,
               recompute: bool, entropy_scale=None):
        """Pass 2 (`_linear.chunk_loop`): each chunk's logits (recomputed unless ``buf`` holds
        them) turned into the gradient in place, and the three products; ``grad_W`` and
        ``grad_b`` accumulate in the input's dtype."""
        scales = _scales(counted, x.shape[0], x.dtype, grad_output)
        cap, temp = self.problem.options.softcap, self.problem.options.temperature

        def gradient(s: int, e: int, z: torch.Tensor) -> torch.Tensor:
            a = None if aux is None else aux[: e - s]
            if recompute:
                _soft_cap(z, cap, a, temp)
            st.grad_(s, e, z, counted, scales, a, entropy_scale)
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
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
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
            lse_square_scale, softcap, return_lse, temperature, return_entropy,
            return_argmax: as in `vocab_parallel_cross_entropy` (the entropy's gradient is
            computed in backward, its second pass).
        chunk_size: rows per chunk.
        reduce_input_grad: all-reduce the input's gradient over ``group``.

    Returns:
        The loss, identical on every rank, then the ``(N,)`` lse, entropy and argmax as
        asked.

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
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                            return_entropy, return_argmax)
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
    ent = top = None
    if torch.is_grad_enabled() and (input.requires_grad or linear_weight.requires_grad or (
            linear_bias is not None and linear_bias.requires_grad)):
        out = _linear.ChunkedLinear.apply(x, W, linear_bias, spec)
        loss, lse = out[:2]
        if options.stats:
            ent, top = out[2:]
    else:
        with torch.no_grad():
            loss, lse, _, _, *extra = spec.forward(
                x.detach(), W.detach(), None if linear_bias is None else linear_bias.detach(),
                None)
            if extra:
                ent, top = extra[0]
    if not options.stats:
        return (loss, lse) if return_lse else loss
    return _reference.stats_outputs(options, loss, lse, ent, top)
