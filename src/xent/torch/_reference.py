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

The same cross-entropy from a row's statistics, for logits that are never whole (the
vocabulary-parallel form, `xent.torch._parallel`, whose shards combine these statistics over
the ranks): with ``lse`` the row's log-sum-exp, ``w`` the class weights (ones when absent),
``ε`` the label smoothing, ``V`` the classes, ``s`` / ``s_z`` the row's gradient scales::

    loss = (1-ε)·w_t·(lse - z_t) + (ε/V)·Σ_c w_c·(lse - z_c)              (`index_loss`)
    grad = p·(s·((1-ε)·w_t + (ε/V)·Σ_c w_c) + 2ζ·s_z·lse) - s·(1-ε)·w_t·e_t - s·(ε/V)·w
                                                                          (`index_grad_`)

times ``1 - (z/softcap)²`` through a cap (`soft_cap`'s ``deriv``); the z-loss rows and the
reduction are ``xent._reduction``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xent import _reduction


def soft_cap(x: torch.Tensor, cap: float, *, out: torch.Tensor | None = None,
            deriv: torch.Tensor | None = None) -> torch.Tensor:
    """``cap·tanh(x/cap)``: a new (differentiable) tensor, or written into ``out`` (which may
    be ``x``: in place); ``deriv``, if given, gets its derivative ``1 - tanh²(x/cap)``."""
    t = torch.tanh(x / cap) if out is None else torch.div(x, cap, out=out).tanh_()
    if deriv is not None:
        torch.mul(t, t, out=deriv)
        deriv.neg_().add_(1.0)
    return cap * t if out is None else t.mul_(cap)


def cross_entropy(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
    reduction: str, label_smoothing: float, lse_square_scale: float, softcap: float | None,
    return_lse: bool, temperature: float = 1.0, return_entropy: bool = False,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The loss, then (as asked) the detached lse, the differentiable entropy
    ``lse(z) - Σ_c softmax(z)_c z_c`` and the argmax of ``z = softcap·tanh(x/softcap) /
    temperature`` at every position, in PyTorch ops; see the module."""
    z = input if softcap is None else soft_cap(input, softcap)
    if temperature != 1.0:
        z = z / temperature
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if not (lse_square_scale or return_lse or return_entropy or return_argmax):
        return loss
    dim = 1 if input.dim() >= 2 else 0
    lse = torch.logsumexp(z, dim=dim)
    if lse_square_scale:
        prob = target.shape == input.shape
        valid = None if prob else target != ignore_index
        count = lse.numel() if prob else valid.sum()
        zl = _reduction.z_loss_rows(lse, lse_square_scale, valid)
        loss = loss + _reduction.reduce(zl, reduction, count)
    out = [loss]
    if return_lse:
        out.append(lse.detach())
    if return_entropy:
        out.append(entropy(z, dim))
    if return_argmax:
        out.append(z.detach().argmax(dim))
    return out[0] if len(out) == 1 else tuple(out)


def stats_outputs(o: Any, loss: Any, lse: Any, ent: Any, top: Any) -> Any:
    """The loss and the outputs the options ask for, in the order loss, lse, entropy, argmax
    (the loss alone when nothing else is asked)."""
    out = [loss] + [t for t, on in ((lse, o.return_lse), (ent, o.return_entropy),
                                    (top, o.return_argmax)) if on]
    return out[0] if len(out) == 1 else tuple(out)


def entropy(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``lse(z) - Σ_c softmax(z)_c z_c`` along ``dim`` (differentiable; a class of
    probability 0 adds 0, also at ``z_c = -inf``)."""
    logp = torch.log_softmax(z, dim)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype)).sum(dim)


def index_loss(
    lse: torch.Tensor, zt: torch.Tensor, wz: torch.Tensor | None, wt: torch.Tensor,
    wsum: float | torch.Tensor, valid: torch.Tensor, num_classes: int, eps: float,
) -> torch.Tensor:
    """Unreduced cross-entropy of each row from its statistics (see the module), z-loss not
    included: ``zt`` the target's logit, ``wt`` its weight (0 where ignored), ``wz``
    ``Σ_c w_c z_c`` (needed with ``eps`` only), ``wsum`` ``Σ_c w_c``."""
    loss = (1.0 - eps) * wt * (lse - zt)
    if eps:
        loss = loss + (eps / num_classes) * (wsum * lse - wz) * valid
    return loss


def index_grad_(
    z: torch.Tensor, lse: torch.Tensor, tt: torch.Tensor, wt: torch.Tensor, valid: torch.Tensor,
    weight: torch.Tensor | None, wsum: float | torch.Tensor, num_classes: int, eps: float,
    zscale: float, scale_ce: torch.Tensor, scale_z: torch.Tensor | None,
    owned: torch.Tensor | None = None, col_offset: int = 0,
    entropy_scale: torch.Tensor | None = None, mean_logit: torch.Tensor | None = None,
) -> None:
    """Overwrite the (soft-capped) logits ``z`` with d(Σ_i s_i·loss_i + s_z,i·ζ·lse_i²)/dz
    (`index_loss`'s gradient and the z-loss's; with ``entropy_scale`` u (N,) also that of
    ``Σ_i u_i·H_i``, ``mean_logit`` the rows' ``Σ_c p_c z_c``), before the cap's chain rule.
    ``owned`` / ``col_offset`` restrict the one-hot term to the targets that fall in this
    block's columns (vocabulary shards); ``lse`` is the row's log-sum-exp over every class."""
    vf = valid.to(z.dtype)
    coef = scale_ce * ((1.0 - eps) * wt + (eps / num_classes) * wsum * vf)
    if zscale:
        coef = coef + scale_z * (2.0 * zscale) * lse * vf
    if entropy_scale is None:
        z.sub_(lse[:, None]).exp_().mul_(coef[:, None])
    else:  # + the entropy's -u·p ⊙ (z - μ), μ = mean_logit = Σ_c p_c z_c over every class
        u = entropy_scale[:, None]
        f = (coef[:, None] + u * mean_logit[:, None]) - u * z
        z.sub_(lse[:, None]).exp_()
        z.mul_(torch.where(z > 0, f, torch.zeros((), dtype=z.dtype)))
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
