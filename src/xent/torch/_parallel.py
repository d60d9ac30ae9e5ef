"""Vocabulary-parallel cross-entropy over `torch.distributed` (Megatron-LM's scheme).

Each rank holds the logits of a contiguous slice of the classes, ``[start, start + V_r)`` (or, in
the linear form, the rows ``W[start:start + V_r]`` of the classifier). Per row the rank computes
its local log-sum-exp ``l_r``, its share of the target logit, of the target weight and (with
label smoothing) of ``Σ_c w_c z_c``; then two collectives of O(N) each combine them::

    M   = all_reduce_MAX(l_r)                                 # collective 1: (N,)
    S   = all_reduce_SUM([exp(l_r - M), z_t·[t∈r], w_t·[t∈r], Σ_{c∈r} w_c z_c, Σ_{c∈r} w_c])
    lse = M + log S[0]                                        # collective 2: (k·N + 1,)

after which every rank knows each row's loss, and the gradient of its own slice is local:
``p - e_t`` restricted to the slice (plus the smoothing and z-loss terms). Every rank returns the
same loss; ``backward`` on each rank fills the gradient of that rank's shard.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from xent import _reduction
from xent._problem import Problem, check_options, class_weight, cross_entropy_problem

from . import _bridge, _linear


# The row math of the shards in PyTorch ops (the shards may live on any device), with
# ``lse`` the row's global log-sum-exp, ``w`` the class weights (ones when absent), ``eps`` the
# label smoothing, ζ the z-loss scale::
#     loss = (1-eps)·w_t·(lse - z_t) + (eps/V)·Σ_c w_c·(lse - z_c)
#     grad = p·((1-eps)·w_t + (eps/V)·Σ_c w_c + 2ζ·lse) - (1-eps)·w_t·e_t - (eps/V)·w
# each term summed over the shards by the collectives; through a cap: ·(1 - tanh²(z/cap)).
def softcap_(z: torch.Tensor, cap: float, aux: torch.Tensor | None) -> None:
    """``z ← cap·tanh(z/cap)`` in place; ``aux ← 1 - tanh²(z/cap)`` (its derivative) if given."""
    z.div_(cap).tanh_()
    if aux is not None:
        torch.mul(z, z, out=aux)
        aux.neg_().add_(1.0)
    z.mul_(cap)


def index_loss(
    lse: torch.Tensor, zt: torch.Tensor, wz: torch.Tensor | None, wt: torch.Tensor,
    wsum: float | torch.Tensor, valid: torch.Tensor, num_classes: int, eps: float,
) -> torch.Tensor:
    """Unreduced cross-entropy of each row from its statistics, z-loss not included."""
    loss = (1.0 - eps) * wt * (lse - zt)
    if eps:
        loss = loss + (eps / num_classes) * (wsum * lse - wz) * valid
    return loss


def index_grad_(
    z: torch.Tensor, lse: torch.Tensor, tt: torch.Tensor, wt: torch.Tensor, valid: torch.Tensor,
    weight: torch.Tensor | None, wsum: float | torch.Tensor, num_classes: int, eps: float,
    zscale: float, scale_ce: torch.Tensor, scale_z: torch.Tensor, owned: torch.Tensor | None = None,
    col_offset: int = 0,
) -> None:
    """Overwrite the (soft-capped) logits ``z`` with d(Σ_i scale_i·loss_i)/dz, before the cap's
    chain rule. ``owned``/``col_offset`` restrict the one-hot term to the targets that fall in
    this block's columns (vocabulary shards); ``lse`` is the row's global log-sum-exp."""
    vf = valid.to(z.dtype)
    coef = scale_ce * ((1.0 - eps) * wt + (eps / num_classes) * wsum * vf)
    if zscale:
        coef = coef + scale_z * (2.0 * zscale) * lse * vf
    z.sub_(lse[:, None]).exp_().mul_(coef[:, None])
    onehot = -(scale_ce * (1.0 - eps) * wt)
    if owned is None:
        z.scatter_add_(1, tt[:, None], onehot[:, None])
    else:
        local = torch.where(owned, tt - col_offset, torch.zeros((), dtype=tt.dtype))
        z.scatter_add_(1, local[:, None], (onehot * owned.to(z.dtype))[:, None])
    if eps:
        a = scale_ce * vf * (eps / num_classes)
        if weight is None:
            z.sub_(a[:, None])
        else:
            z.addr_(a, weight, alpha=-1.0)


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

    def counts(self, problem: Problem, dt):
        """The mean's denominators (after `combine`): the problem's, except the weighted one,
        which sums the row weights the collectives gathered from the shards."""
        count_z = torch.tensor(float(problem.denom_z), dtype=dt)
        return (count_z if self.weight is None else self.wt.sum()), count_z

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

    def grad_(self, s, e, z, num_classes, zscale, scale_ce, scale_z, aux):
        """Overwrite this slice's logits ``z`` of rows ``s:e`` with the gradient."""
        index_grad_(z, self.lse[s:e], self.tt[s:e], self.wt[s:e], self.valid[s:e],
                    self.weight, self.wsum, num_classes, self.eps, zscale, scale_ce, scale_z,
                    owned=self.owned[s:e], col_offset=self.start)
        if aux is not None:
            z.mul_(aux)


def _scales(problem: Problem, n, dt, count_ce, count_z, grad_output=None):
    """(N,) scales of the cross-entropy rows and of the z-loss rows (``xent._reduction``)."""
    if problem.reduction == "none":
        g = torch.ones(n, dtype=dt) if grad_output is None else grad_output.reshape(n).to(dt)
        return g, g
    g = torch.ones((), dtype=dt) if grad_output is None else grad_output.reshape(()).to(dt)
    return (_reduction.row_scale(problem.reduction, g, count_ce).expand(n),
            _reduction.row_scale(problem.reduction, g, count_z).expand(n))


def _loss(problem: Problem, st: _Stats, count_ce, count_z) -> torch.Tensor:
    zscale = problem.options.lse_square_scale
    ce = index_loss(st.lse, st.zt, st.wz, st.wt, st.wsum, st.valid, problem.num_classes,
                    problem.options.label_smoothing)
    zl = _reduction.z_loss_rows(st.lse, zscale, st.valid) if zscale else None
    return _reduction.total(problem.reduction, ce, count_ce, zl, count_z)


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
        if cap is not None:
            softcap_(z, cap, aux)
        st = _Stats(n, dt, target, w, problem.ignore_index, start, local,
                    options.label_smoothing)
        st.add_chunk(0, n, z)
        st.combine(group)
        count_ce, count_z = st.counts(problem, dt)
        holder["lse"] = st.lse
        loss = _loss(problem, st, count_ce, count_z).to(logits.dtype)
        if not want_grad:
            return loss, None
        sce, sz = _scales(problem, n, dt, count_ce, count_z)
        st.grad_(0, n, z, vocab, options.lse_square_scale, sce, sz, aux)
        return loss, z.to(logits.dtype)

    if want_grad:
        loss = _bridge.SavedGrad.apply(logits, compute, 1 if reduction == "none" else None)
    else:
        loss, _ = compute()
    return (loss, holder["lse"].to(logits.dtype)) if return_lse else loss


class _ParallelLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, cfg):  # noqa: D102
        need = tuple(ctx.needs_input_grad[:3])
        n, dt = x.shape[0], x.dtype
        local = W.shape[0]
        chunk = max(1, min(cfg["chunk"], n))
        single = chunk >= n
        buf = torch.empty(chunk, local, dtype=dt)
        cap = cfg["softcap"]
        problem = cfg["problem"]
        st = _Stats(n, dt, cfg["target"], cfg["weight"], problem.ignore_index, cfg["start"],
                    local, cfg["eps"])
        want_grad = any(need)
        aux = torch.empty(chunk, local, dtype=dt) if (want_grad and cap is not None) else None

        def logits(s, e):
            z = buf[: e - s]
            if b is None:
                torch.mm(x[s:e], W.t(), out=z)
            else:
                torch.addmm(b, x[s:e], W.t(), out=z)
            if cap is not None:
                softcap_(z, cap, None if aux is None else aux[: e - s])
            return z

        for s in range(0, n, chunk):  # pass 1: statistics only
            st.add_chunk(s, min(n, s + chunk), logits(s, min(n, s + chunk)))
        st.combine(cfg["group"])
        count_ce, count_z = st.counts(problem, dt)
        loss = _loss(problem, st, count_ce, count_z)
        ctx.cfg, ctx.need, ctx.st = cfg, need, st
        ctx.counts = (count_ce, count_z)
        ctx.grads = None
        if want_grad and cfg["reduction"] != "none":
            sce, sz = _scales(problem, n, dt, count_ce, count_z)
            ctx.grads = _ParallelLinear._grads(x, W, b, st, cfg, need, sce, sz, chunk, buf, aux,
                                               logits, reuse=single)
        elif want_grad:
            ctx.save_for_backward(x, W, b)
        lse = st.lse.clone() if cfg["return_lse"] else torch.empty(0, dtype=dt)
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def _grads(x, W, b, st, cfg, need, sce, sz, chunk, buf, aux, logits, reuse):
        """Pass 2: recompute each chunk's logits (kept when one chunk covers every row), turn
        them into the gradient in place, and accumulate the three products."""
        n = x.shape[0]
        gx = torch.empty_like(x) if need[0] else None
        gW = torch.zeros_like(W) if need[1] else None
        gb = torch.zeros(W.shape[0], dtype=x.dtype) if need[2] else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = buf[: e - s] if reuse else logits(s, e)
            st.grad_(s, e, z, cfg["vocab"], cfg["zscale"], sce[s:e], sz[s:e],
                     None if aux is None else aux[: e - s])
            if gx is not None:
                torch.mm(z, W, out=gx[s:e])
            if gW is not None:
                gW.addmm_(z.t(), x[s:e])
            if gb is not None:
                gb += z.sum(0)
        if gx is not None and cfg["reduce_input_grad"]:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=cfg["group"])
        return [gx, gW, gb]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):  # noqa: D102
        cfg = ctx.cfg
        if cfg["reduction"] == "none":
            x, W, b = ctx.saved_tensors
            n, dt = x.shape[0], x.dtype
            chunk = max(1, min(cfg["chunk"], n))
            buf = torch.empty(chunk, W.shape[0], dtype=dt)
            cap = cfg["softcap"]
            aux = torch.empty_like(buf) if cap is not None else None

            def logits(s, e):
                z = buf[: e - s]
                if b is None:
                    torch.mm(x[s:e], W.t(), out=z)
                else:
                    torch.addmm(b, x[s:e], W.t(), out=z)
                if cap is not None:
                    softcap_(z, cap, aux[: e - s])
                return z

            sce, sz = _scales(cfg["problem"], n, dt, *ctx.counts, grad_output=grad_loss)
            grads = _ParallelLinear._grads(x, W, b, ctx.st, cfg, ctx.need, sce, sz, chunk, buf,
                                           aux, logits, reuse=False)
            return grads[0], grads[1], grads[2], None
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("vocab_parallel_linear_cross_entropy: backward ran twice through "
                               "a graph whose precomputed gradients were already consumed")
        ctx.grads = None
        if not bool(grad_loss == 1):
            grads = [None if g is None else g.mul_(grad_loss) for g in grads]
        return grads[0], grads[1], grads[2], None


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
    cfg = dict(
        problem=problem, target=target, weight=w, start=start, vocab=vocab,
        eps=options.label_smoothing, zscale=options.lse_square_scale, softcap=options.softcap,
        reduction=problem.reduction, group=group,
        chunk=int(chunk_size) if chunk_size else _linear.default_chunk_size(
            local, input.element_size()),
        return_lse=options.return_lse, reduce_input_grad=reduce_input_grad,
    )
    x, W = input.contiguous(), linear_weight.contiguous()
    if torch.is_grad_enabled() and (input.requires_grad or linear_weight.requires_grad or (
            linear_bias is not None and linear_bias.requires_grad)):
        loss, lse = _ParallelLinear.apply(x, W, linear_bias, cfg)
    else:
        with torch.no_grad():
            loss, lse = _ParallelLinear.apply(x.detach(), W.detach(), None if linear_bias is None
                                              else linear_bias.detach(), cfg)
    return (loss, lse) if return_lse else loss
