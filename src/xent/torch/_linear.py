"""Chunked linear cross-entropy: ``cross_entropy(input @ W.T + b, target)`` and its gradients
without ever holding the ``(N, V)`` logits.

For each chunk of ``m`` rows the logits ``x[i:i+m] @ W.T + b`` go into one reusable ``(m, V)``
buffer; the core's fused kernel (``xent.cross_entropy(..., inplace=True)``) turns the buffer into
d loss / d logits in place (z-loss and soft-capping use the torch row math of `_rows` instead);
then ``grad_x[i:i+m] = dz @ W``, ``grad_W += dz.T @ x[i:i+m]`` and ``grad_b += dz.sum(0)``. The
gradients are computed in the forward pass (as Liger-Kernel and PyTorch's chunked path do) so
that ``backward`` is a scale by ``grad_output``; for ``reduction='none'`` the chunks are
recomputed in ``backward`` with each row's ``grad_output``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

import xent

from . import _functional, _rows

#: Bytes of the ``(chunk_size, V)`` logits buffer when ``chunk_size`` is not given: the chunk's
#: row count is ``DEFAULT_CHUNK_BYTES // (V * itemsize)``, at least 64 rows (512 rows at V=65536
#: in float32). Chosen from the chunk-size sweep in docs/torch.md: smaller chunks make the
#: ``grad_W += dz.T @ x`` update stream the whole ``(V, H)`` gradient more often; larger ones add
#: memory and gain nothing measurable.
DEFAULT_CHUNK_BYTES = 128 * 2**20
_MIN_CHUNK_ROWS = 64


def default_chunk_size(num_classes: int, itemsize: int = 4) -> int:
    """Rows per chunk for ``num_classes`` logits of ``itemsize`` bytes (see DEFAULT_CHUNK_BYTES).

    >>> default_chunk_size(65536)
    512
    """
    return max(_MIN_CHUNK_ROWS, DEFAULT_CHUNK_BYTES // max(1, num_classes * itemsize))


@dataclass
class _Spec:
    """Everything about a call but the differentiable tensors."""

    target: torch.Tensor  # (N,) int64 or (N, V) probabilities
    prob: bool
    weight: torch.Tensor | None
    ignore_index: int
    reduction: str
    eps: float
    zscale: float
    cap: float | None
    chunk: int
    return_lse: bool
    allow_retain_graph: bool
    count_ce: torch.Tensor | None = None  # the mean's denominators, set by _denominators
    count_z: torch.Tensor | None = None


def _denominators(spec: _Spec, n: int, dtype: torch.dtype) -> None:
    if spec.prob:
        spec.count_ce = spec.count_z = torch.tensor(float(n), dtype=dtype)
        return
    valid = spec.target != spec.ignore_index
    spec.count_z = valid.sum().to(dtype)
    if spec.weight is None:
        spec.count_ce = spec.count_z
    else:
        tt = torch.where(valid, spec.target, 0)
        spec.count_ce = (spec.weight[tt] * valid).sum()


def _inv(count: torch.Tensor) -> torch.Tensor:
    return torch.where(count > 0, 1.0 / count, torch.zeros_like(count))


def _chunk_rows(z, spec, t, scale_ce, scale_z, aux):
    """Loss per row, lse per row (or None) and, when ``scale_ce`` is given, the gradient in z."""
    options = spec.zscale or spec.cap is not None
    if not options:
        lse = torch.logsumexp(z, 1) if spec.return_lse else None
        zn = _functional.as_numpy(z)
        tn = _functional.as_numpy(t)
        wn = _functional.as_numpy(spec.weight)
        ii = -100 if spec.prob else spec.ignore_index
        if scale_ce is None:
            loss = xent.cross_entropy(zn, tn, wn, ii, "none", spec.eps)
        else:
            loss, _ = xent.cross_entropy(zn, tn, wn, ii, "none", spec.eps, return_grad=True,
                                         grad_output=_functional.as_numpy(scale_ce),
                                         inplace=True)
        return torch.from_numpy(loss), lse
    if spec.prob:
        ce, lse = _rows.rows_prob(z, t, spec.weight, spec.eps, spec.zscale, spec.cap, scale_ce,
                                  scale_z, aux)
        zl = spec.zscale * lse * lse
    else:
        ce, lse, valid = _rows.rows_index(z, t, spec.weight, spec.ignore_index, spec.eps,
                                          spec.zscale, spec.cap, scale_ce, scale_z, aux)
        zl = spec.zscale * lse * lse * valid
    return ce, lse, zl


def _run_chunks(x, W, b, spec, row_scale_ce, row_scale_z, need):
    """One pass over the chunks. ``row_scale_*``: (N,) per-row scales of the cross-entropy and
    of the z-loss, or None for forward only. ``need``: which of (gx, gW, gb) to compute.

    Returns (ce rows, z-loss rows or None, lse rows or None, gx, gW, gb)."""
    n, v = x.shape[0], W.shape[0]
    dt = x.dtype
    want_grad = row_scale_ce is not None and any(need)
    chunk = max(1, min(spec.chunk, n))
    buf = torch.empty(chunk, v, dtype=dt)
    aux = torch.empty(chunk, v, dtype=dt) if (want_grad and spec.cap is not None) else None
    ce_rows = torch.empty(n, dtype=dt)
    options = bool(spec.zscale) or spec.cap is not None
    zl_rows = torch.empty(n, dtype=dt) if spec.zscale else None
    lse_rows = torch.empty(n, dtype=dt) if (spec.return_lse or options) else None
    gx = torch.empty_like(x) if (want_grad and need[0]) else None
    gW = torch.zeros_like(W) if (want_grad and need[1]) else None
    gb = torch.zeros(v, dtype=dt) if (want_grad and need[2]) else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xs = x[s:e]
        z = buf[: e - s]
        if b is None:
            torch.mm(xs, W.t(), out=z)
        else:
            torch.addmm(b, xs, W.t(), out=z)
        sc = row_scale_ce[s:e] if want_grad else None
        sz = row_scale_z[s:e] if (want_grad and row_scale_z is not None) else None
        out = _chunk_rows(z, spec, spec.target[s:e], sc, sz, None if aux is None else aux[: e - s])
        ce_rows[s:e] = out[0]
        if out[1] is not None and lse_rows is not None:
            lse_rows[s:e] = out[1]
        if zl_rows is not None:
            zl_rows[s:e] = out[2]
        if not want_grad:
            continue
        if gx is not None:
            torch.mm(z, W, out=gx[s:e])
        if gW is not None:
            gW.addmm_(z.t(), xs)
        if gb is not None:
            gb += z.sum(0)
    return ce_rows, zl_rows, lse_rows, gx, gW, gb


def _row_scales(spec: _Spec, n: int, dt: torch.dtype, grad_output: torch.Tensor | None):
    if spec.reduction == "none":
        g = grad_output.reshape(n).to(dt)
        return g, g
    g = torch.ones((), dtype=dt) if grad_output is None else grad_output.reshape(()).to(dt)
    if spec.reduction == "sum":
        return g.expand(n), g.expand(n)
    return (g * _inv(spec.count_ce)).expand(n), (g * _inv(spec.count_z)).expand(n)


def _reduce(spec: _Spec, ce_rows, zl_rows):
    if spec.reduction == "none":
        return ce_rows if zl_rows is None else ce_rows + zl_rows
    if spec.reduction == "sum":
        loss = ce_rows.sum()
        return loss if zl_rows is None else loss + zl_rows.sum()
    loss = ce_rows.sum() / spec.count_ce
    return loss if zl_rows is None else loss + zl_rows.sum() / spec.count_z


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, spec):  # noqa: D102
        need = tuple(ctx.needs_input_grad[:3])
        ctx.spec = spec
        ctx.need = need
        n, dt = x.shape[0], x.dtype
        if spec.reduction != "none" and any(need):
            sce, sz = _row_scales(spec, n, dt, None)
            ce, zl, lse, gx, gW, gb = _run_chunks(x, W, b, spec, sce, sz, need)
            ctx.grads = [gx, gW, gb]
        else:
            ce, zl, lse, *_ = _run_chunks(x, W, b, spec, None, None, need)
            ctx.grads = None
            if any(need):
                ctx.save_for_backward(x, W, b)
        loss = _reduce(spec, ce, zl)
        lse = lse if lse is not None else torch.empty(0, dtype=dt)
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):  # noqa: D102
        spec = ctx.spec
        if spec.reduction == "none":
            x, W, b = ctx.saved_tensors
            sce, sz = _row_scales(spec, x.shape[0], x.dtype, grad_loss)
            _, _, _, gx, gW, gb = _run_chunks(x, W, b, spec, sce, sz, ctx.need)
            return gx, gW, gb, None
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "xent.torch.linear_cross_entropy: backward ran a second time through a graph "
                "whose precomputed gradients were already consumed; pass "
                "allow_retain_graph=True to keep them (one more copy of each gradient)")
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


def _fallback(input, linear_weight, target, linear_bias, weight, reduction, ignore_index, eps,
              options, zscale, cap, return_lse):
    if not (zscale or cap is not None or return_lse):
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=weight, reduction=reduction,
                                      ignore_index=ignore_index, label_smoothing=eps,
                                      options=options)
    logits = F.linear(input, linear_weight, linear_bias)
    return _functional._cross_entropy_options_torch(
        logits, target, weight, -100 if ignore_index is None else ignore_index, reduction, eps,
        zscale, cap, return_lse)


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
        linear_weight: ``(V, H)`` classifier matrix.
        target: class indices ``(N,)``/``()`` (int64) or probabilities ``(N, V)``/``(V,)``.
        linear_bias: ``(V,)`` or None.
        weight: class weights ``(V,)`` or None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: ignored target value; None means -100, as in PyTorch.
        label_smoothing: ``eps`` in ``[0, 1]``.
        options: a ``torch.nn.LinearCrossEntropyOptions`` (accepted for compatibility: its
            ``batch_chunk_size`` is used as ``chunk_size`` and its ``allow_retain_graph``
            honoured; the fallback path passes it on to PyTorch).
        chunk_size: rows per chunk; default ``default_chunk_size(V)`` (a 128 MiB buffer).
        lse_square_scale: z-loss coefficient ``s``.
        softcap: logit soft-capping value, or None.
        return_lse: also return the per-row ``lse`` (after soft-capping, not differentiable).
        allow_retain_graph: keep the precomputed gradients after ``backward`` so that it can
            run again (``retain_graph=True``, gradcheck); by default they are handed to autograd
            without a copy and a second backward raises.

    Returns:
        The loss (0-d, or ``(N,)`` for ``'none'``), and the ``(N,)`` lse with ``return_lse``.

    Edge cases: everything ignored gives a NaN mean with zero gradients. Off the fast path
    (non-CPU, dtypes other than float32/float64, ``(C, d1, ..)`` weights, a target or class
    weight that requires grad, tracing/compiling) PyTorch's own function runs.

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
    _functional._check_reduction(reduction)
    eps = float(label_smoothing)
    zscale = float(lse_square_scale)
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    if options is not None:
        chunk_size = chunk_size or getattr(options, "batch_chunk_size", None)
        allow_retain_graph = allow_retain_graph or bool(
            getattr(options, "allow_retain_graph", False))
    eligible = (
        _functional.fast_path_ok(input, target, weight, small_ok=True)
        and isinstance(linear_weight, torch.Tensor) and linear_weight.dim() == 2
        and _functional._plain_cpu(linear_weight) and linear_weight.dtype == input.dtype
        and input.dim() in (1, 2)
        and (linear_bias is None or (_functional._plain_cpu(linear_bias)
                                     and linear_bias.dtype == input.dtype
                                     and linear_bias.shape == linear_weight.shape[:1]))
    )
    if not eligible:
        return _fallback(input, linear_weight, target, linear_bias, weight, reduction,
                         ignore_index, eps, options, zscale, softcap, return_lse)
    single = input.dim() == 1
    x = input[None] if single else input
    n, h = x.shape
    v = linear_weight.shape[0]
    if linear_weight.shape[1] != h:
        raise ValueError(f"input has {h} features but linear_weight has shape "
                         f"{tuple(linear_weight.shape)}: expected (V, {h})")
    dt = x.dtype
    prob = target.dim() == input.dim() and target.shape[-1] == v and target.is_floating_point()
    if prob:
        t = target.detach().reshape(n, v).to(dt).contiguous()
        ii = -100
    else:
        if target.dtype != torch.int64:
            raise TypeError(f"expected class-index target of dtype int64 (or float probabilities "
                            f"of shape {(n, v) if not single else (v,)}), got {target.dtype}")
        t = target.reshape(-1)
        if t.shape[0] != n:
            raise ValueError(f"Expected input batch_size ({n}) to match target batch_size "
                             f"({t.shape[0]})")
        ii = -100 if ignore_index is None else int(ignore_index)
        bad = (t != ii) & ((t < 0) | (t >= v))
        if bool(bad.any()):
            raise IndexError(f"target {int(t[bad][0])} is out of bounds for {v} classes "
                             f"(valid: 0..{v - 1}, or ignore_index={ii})")
    if weight is not None and weight.shape != (v,):
        raise ValueError(f"weight must have shape ({v},), got {tuple(weight.shape)}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    spec = _Spec(
        target=t, prob=prob, weight=None if weight is None else weight.detach().to(dt),
        ignore_index=ii, reduction=reduction, eps=eps, zscale=zscale, cap=softcap,
        chunk=int(chunk_size) if chunk_size else default_chunk_size(v, x.element_size()),
        return_lse=return_lse, allow_retain_graph=allow_retain_graph,
    )
    _denominators(spec, n, dt)
    xc = x.contiguous()
    Wc = linear_weight.contiguous()
    grad_on = torch.is_grad_enabled() and (
        input.requires_grad or linear_weight.requires_grad
        or (linear_bias is not None and linear_bias.requires_grad))
    if grad_on:
        loss, lse = _LinearCrossEntropy.apply(xc, Wc, linear_bias, spec)
    else:
        with torch.no_grad():
            ce, zl, lse, *_ = _run_chunks(xc.detach(), Wc.detach(), None if linear_bias is None
                                          else linear_bias.detach(), spec, None, None,
                                          (False,) * 3)
            loss = _reduce(spec, ce, zl)
    if single and reduction == "none":
        loss = loss.reshape(())
    if not return_lse:
        return loss
    return loss, (lse.reshape(()) if single else lse)
