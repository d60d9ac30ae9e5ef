"""The cross-entropy options composed from PyTorch ops: the definition the fast path is tested
against, the fallback where xent's kernels cannot run (CUDA, bfloat16/float16, tracing), and
the differentiable form a double backward (``create_graph=True``) goes through.

For logits ``x`` with the class axis 1 (0 for ``(C,)``)::

    z    = softcap·tanh(x / softcap)            (z = x without a cap)
    lse  = logsumexp(z, class axis)
    loss = F.cross_entropy(z, target, weight, ignore_index, reduction, label_smoothing)
         + reduce(ζ·lse² over the positions not ignored)     (ζ = lse_square_scale)

where the z-loss's ``'mean'`` divides by the number of positions not ignored, and an ignored
position contributes exactly 0 (``xent._reduction``). No validation happens here: callers have
run the core's validation step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xent import _reduction


def cross_entropy(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
    reduction: str, label_smoothing: float, lse_square_scale: float, softcap: float | None,
    return_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The loss (and the detached lse with ``return_lse``) in PyTorch ops; see the module."""
    z = input if softcap is None else softcap * torch.tanh(input / softcap)
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if not (lse_square_scale or return_lse):
        return loss
    lse = torch.logsumexp(z, dim=1 if input.dim() >= 2 else 0)
    if lse_square_scale:
        prob = target.shape == input.shape
        valid = None if prob else target != ignore_index
        count = lse.numel() if prob else valid.sum()
        zl = lse_square_scale * lse * lse
        if valid is not None:
            zl = torch.where(valid, zl, torch.zeros((), dtype=zl.dtype, device=zl.device))
        loss = loss + _reduction.reduce(zl, reduction, count)
    return (loss, lse.detach()) if return_lse else loss
