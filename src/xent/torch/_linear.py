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
``grad_output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xent import _cross_entropy, _reduction
from xent._problem import Problem, check_options

from . import _bridge, _functional, _reference

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

    problem: Problem  # the validated call, logits (N, V)
    target: np.ndarray  # (N,) int64 or (N, V) probabilities, rows as the kernels take them
    chunk: int
    allow_retain_graph: bool


def _run_chunks(x, W, b, spec, row_scale, z_row_scale, need):
    """One pass over the chunks. ``row_scale``, ``z_row_scale``: (N,) per-row scales of the
    cross-entropy and of the z-loss, or None for forward only. ``need``: which of (gx, gW, gb)
    to compute. Returns (ce rows, lse rows, gx, gW, gb); ce and lse are (N,) NumPy arrays."""
    n, v = x.shape[0], W.shape[0]
    dt = x.dtype
    want_grad = row_scale is not None and any(need)
    chunk = max(1, min(spec.chunk, n))
    buf = torch.empty(chunk, v, dtype=dt)
    bufn = buf.numpy()
    ndt = bufn.dtype
    ce, lse = np.empty(n, ndt), np.empty(n, ndt)
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
        zn = bufn[: e - s]
        rs = row_scale[s:e] if want_grad else None
        rz = z_row_scale[s:e] if (want_grad and z_row_scale is not None) else None
        ce[s:e], lse[s:e] = _cross_entropy.backend_rows(spec.problem, zn, spec.target[s:e], rs, rz,
                                                        zn if want_grad else None)
        if not want_grad:
            continue
        if gx is not None:
            torch.mm(z, W, out=gx[s:e])
        if gW is not None:
            gW.addmm_(z.t(), xs)
        if gb is not None:
            gb += z.sum(0)
    return ce, lse, gx, gW, gb


def _row_scales(p: Problem, n: int, grad_output: np.ndarray | None):
    """(N,) scales of the cross-entropy rows and of the z-loss rows (None without z-loss)."""
    g: Any
    if p.reduction == "none":
        g = grad_output.reshape(n).astype(p.dtype)
    else:
        g = p.dtype.type(1) if grad_output is None else grad_output.reshape(()).astype(p.dtype)
    rs = np.broadcast_to(_reduction.row_scale(p.reduction, g, p.denom), (n,))
    if not p.options.lse_square_scale:
        return rs, None
    return rs, np.broadcast_to(_reduction.row_scale(p.reduction, g, p.denom_z), (n,))


def _loss(spec: _Spec, ce: np.ndarray, lse: np.ndarray) -> torch.Tensor:
    p = spec.problem
    return torch.as_tensor(np.asarray(_cross_entropy.rows_loss(
        p, ce, lse, None if p.all_valid else p.valid), dtype=p.dtype))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, spec):  # noqa: D102
        need = tuple(ctx.needs_input_grad[:3])
        ctx.spec = spec
        ctx.need = need
        n = x.shape[0]
        if spec.problem.reduction != "none" and any(need):
            ce, lse, gx, gW, gb = _run_chunks(x, W, b, spec, *_row_scales(spec.problem, n, None),
                                              need)
            ctx.grads = [gx, gW, gb]
        else:
            ce, lse, *_ = _run_chunks(x, W, b, spec, None, None, need)
            ctx.grads = None
            if any(need):
                ctx.save_for_backward(x, W, b)
        lse_t = torch.from_numpy(lse)
        ctx.mark_non_differentiable(lse_t)
        return _loss(spec, ce, lse), lse_t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):  # noqa: D102
        spec = ctx.spec
        if spec.problem.reduction == "none":
            x, W, b = ctx.saved_tensors
            g = _bridge.as_numpy(grad_loss.contiguous())
            _, _, gx, gW, gb = _run_chunks(x, W, b, spec, *_row_scales(spec.problem, x.shape[0], g),
                                           ctx.need)
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


def _fallback(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
              options, torch_options):
    if not options.extended:  # ignore_index None: PyTorch's own default and checks
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=weight, reduction=reduction,
                                      ignore_index=ignore_index, label_smoothing=
                                      options.label_smoothing, options=torch_options)
    return _reference.cross_entropy(
        F.linear(input, linear_weight, linear_bias), target, weight,
        -100 if ignore_index is None else ignore_index, reduction,
        options.label_smoothing, options.lse_square_scale, options.softcap, options.return_lse)


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
    opts = check_options(label_smoothing, lse_square_scale, softcap, return_lse)
    if options is not None:
        chunk_size = chunk_size or getattr(options, "batch_chunk_size", None)
        allow_retain_graph = allow_retain_graph or bool(
            getattr(options, "allow_retain_graph", False))
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    ii = -100 if ignore_index is None else ignore_index
    fallback = (input, linear_weight, target, linear_bias, weight, reduction, ignore_index, opts,
                options)
    if (_bridge.tracing() or not isinstance(input, torch.Tensor) or input.dim() not in (1, 2)
            or not isinstance(linear_weight, torch.Tensor) or linear_weight.dim() != 2):
        return _fallback(*fallback)  # PyTorch's own checks (and its K-dimensional weights)
    single = input.dim() == 1
    h, v = input.shape[-1], linear_weight.shape[0]
    if linear_weight.shape[1] != h:
        raise ValueError(f"input has {h} features but linear_weight has shape "
                         f"{tuple(linear_weight.shape)}: expected (V, {h})")
    if linear_bias is not None and tuple(linear_bias.shape) != (v,):
        raise ValueError(f"linear_bias must have shape ({v},), got {tuple(linear_bias.shape)}")
    shape = (v,) if single else (input.shape[0], v)
    problem = _functional.problem_for(input, target, weight, ii, reduction, opts, shape=shape)
    if problem.prob and ignore_index is not None:
        raise ValueError(f"ignore_index={ignore_index} cannot be given with class-probability "
                         "targets (as torch.nn.functional.linear_cross_entropy)")
    eligible = (
        _bridge.fast_path_ok(input, target, weight, small_ok=True)
        and _bridge.plain_cpu(linear_weight) and linear_weight.dtype == input.dtype
        and (linear_bias is None or (_bridge.plain_cpu(linear_bias)
                                     and linear_bias.dtype == input.dtype))
    )
    if not eligible:
        return _fallback(*fallback)
    x = input[None] if single else input
    n = x.shape[0]
    rows = problem.y.reshape(n, v) if problem.prob else problem.target
    spec = _Spec(
        problem=problem, target=np.ascontiguousarray(rows),
        chunk=int(chunk_size) if chunk_size else default_chunk_size(v, x.element_size()),
        allow_retain_graph=allow_retain_graph,
    )
    xc = x.contiguous()
    Wc = linear_weight.contiguous()
    grad_on = torch.is_grad_enabled() and (
        input.requires_grad or linear_weight.requires_grad
        or (linear_bias is not None and linear_bias.requires_grad))
    if grad_on:
        loss, lse = _LinearCrossEntropy.apply(xc, Wc, linear_bias, spec)
    else:
        with torch.no_grad():
            ce, lse_n, *_ = _run_chunks(xc.detach(), Wc.detach(), None if linear_bias is None
                                        else linear_bias.detach(), spec, None, None, (False,) * 3)
            loss, lse = _loss(spec, ce, lse_n), torch.from_numpy(lse_n)
    if single and reduction == "none":
        loss = loss.reshape(())
    if not return_lse:
        return loss
    return loss, (lse.reshape(()) if single else lse)
