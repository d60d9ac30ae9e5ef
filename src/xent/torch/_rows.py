"""Row math in torch ops for the options the core kernels do not have: z-loss, soft-capping and
the per-row log-sum-exp. Shared by the plain form (`_functional`), the chunked linear form
(`_linear`) and the vocabulary-parallel form (`_parallel`).

Every function here works on a 2-D block ``z`` of logits ``(m, C)`` (classes last, contiguous)
and, when asked for the gradient, overwrites ``z`` with it: the block is the only buffer of its
size. No validation happens here: the callers validate.

Math of one row (``w`` class weights, ones when absent; ``eps`` label smoothing; ``s`` the z-loss
scale; ``lse = log Σ_c exp(z_c)`` after soft-capping ``z ← cap·tanh(z/cap)``)::

    index target t:  loss = (1-eps)·w_t·(lse - z_t) + (eps/C)·Σ_c w_c·(lse - z_c) + s·lse²
    prob. target y:  loss = -Σ_c w_c·y'_c·(z_c - lse) + s·lse²,   y' = (1-eps)·y + eps/C
    d loss / d z   = p·(a + 2·s·lse) - (1-eps)·w_t·e_t - (eps/C)·w      (index)
                   = p·(Σ_c w_c y'_c + 2·s·lse) - w·y'                  (probabilities)
    with p = softmax(z), a = (1-eps)·w_t + (eps/C)·Σ_c w_c; through the cap: · (1 - tanh²(z/cap)).

Ignored rows (index targets equal to ``ignore_index``) have loss 0 and gradient 0, z-loss included.

`rows_index` and `rows_prob` run the fused Numba kernels of ``xent._kernels._options`` (one
call per block, one read of each row) when they can: ``z`` a C-contiguous float32/float64 CPU
tensor and the backend (``xent.get_backend()``, decided by ``xent._dispatch.backend_for``) not
NumPy; the torch ops below are the definition and the fallback (CUDA, other dtypes, the NumPy
backend, small blocks under ``auto``, Numba missing).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _dispatch

_KERNEL_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _kernel(z: torch.Tensor, name: str):
    """The kernel ``xent._kernels.<name>`` that can run on the block ``z``, or None."""
    dt = _KERNEL_DTYPES.get(z.dtype)
    if (dt is None or z.device.type != "cpu" or z.dim() != 2 or not z.is_contiguous()
            or z.numel() == 0 or z.is_neg() or z.is_conj()):
        return None
    return getattr(_dispatch.backend_for(name, z.shape[0], z.shape[1], dt), name, None)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().resolve_neg().numpy()


def softcap_(z: torch.Tensor, cap: float, aux: torch.Tensor | None) -> None:
    """``z ← cap·tanh(z/cap)`` in place; ``aux ← 1 - tanh²(z/cap)`` (its derivative) if given."""
    z.div_(cap).tanh_()
    if aux is not None:
        torch.mul(z, z, out=aux)
        aux.neg_().add_(1.0)
    z.mul_(cap)


def index_stats(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
    smoothing: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per row: (valid mask, safe target, weighted target logit w_t·z_t ... pieces).

    Returns ``valid`` (bool), ``tt`` (target with ignored rows mapped to 0), ``z_t`` and
    ``Σ_c w_c z_c`` (None unless ``smoothing``).
    """
    valid = target != ignore_index
    tt = torch.where(valid, target, torch.zeros((), dtype=target.dtype))
    zt = z.gather(1, tt[:, None])[:, 0]
    wz = None
    if smoothing:
        wz = z.sum(1) if weight is None else torch.mv(z, weight)
    return valid, tt, zt, wz


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


def _capped_lse(
    z: torch.Tensor, src: torch.Tensor | None, cap: float | None, want_grad: bool,
    aux: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The torch-op start of `rows_index`/`rows_prob`: the logits into ``z`` (from ``src``), the
    cap in place (its derivative into ``aux`` when the gradient is wanted), the row log-sum-exp.
    Returns (aux, lse)."""
    if src is not None:
        z.copy_(src)
    if cap is not None:
        if want_grad and aux is None:
            aux = torch.empty_like(z)
        softcap_(z, cap, aux if want_grad else None)
    return aux, torch.logsumexp(z, 1)


def rows_index(
    z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
    eps: float, zscale: float, cap: float | None, scale_ce: torch.Tensor | None,
    scale_z: torch.Tensor | None, aux: torch.Tensor | None = None,
    src: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy per row (z-loss not included), log-sum-exp per row and the valid-row mask
    for index targets; the gradient of the total (z-loss included, ``scale_ce`` for the
    cross-entropy and ``scale_z`` for the z-loss of each row) into ``z`` when ``scale_ce`` is
    given (``aux``: a ``z``-sized scratch buffer, used with ``cap``). With ``src`` (the logits,
    z's shape), ``z`` is only a buffer: the logits are copied into it first (by the kernel, row by
    row)."""
    kernel = _kernel(z, "ce_index_options")
    if kernel is not None:
        loss, lse = kernel(_np(z), _np(target), _np(weight), ignore_index, eps, zscale, cap,
                           _np(scale_ce), _np(scale_z), src=_np(src))
        return torch.from_numpy(loss), torch.from_numpy(lse), target != ignore_index
    want_grad = scale_ce is not None
    aux, lse = _capped_lse(z, src, cap, want_grad, aux)
    num_classes = z.shape[1]
    valid, tt, zt, wz = index_stats(z, target, weight, ignore_index, bool(eps))
    vf = valid.to(z.dtype)
    wt = vf if weight is None else weight[tt] * vf
    wsum = num_classes if weight is None else weight.sum()
    loss = index_loss(lse, zt, wz, wt, wsum, valid, num_classes, eps)
    if want_grad:
        index_grad_(z, lse, tt, wt, valid, weight, wsum, num_classes, eps, zscale, scale_ce,
                    scale_z)
        if cap is not None:
            z.mul_(aux)
    return loss, lse, valid


def rows_prob(
    z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, zscale: float,
    cap: float | None, scale_ce: torch.Tensor | None, scale_z: torch.Tensor | None,
    aux: torch.Tensor | None = None, src: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `rows_index` for class-probability targets ``y`` ``(m, C)`` (no ignored rows; returns
    the cross-entropy and the log-sum-exp of each row)."""
    kernel = _kernel(z, "ce_prob_options")
    if kernel is not None:
        loss, lse = kernel(_np(z), _np(y), _np(weight), eps, zscale, cap, _np(scale_ce),
                           _np(scale_z), src=_np(src))
        return torch.from_numpy(loss), torch.from_numpy(lse)
    want_grad = scale_ce is not None
    aux, lse = _capped_lse(z, src, cap, want_grad, aux)
    num_classes = z.shape[1]
    wy = y * (1.0 - eps) + eps / num_classes if eps else y.clone()
    if weight is not None:
        wy.mul_(weight)
    swy = wy.sum(1)
    loss = lse * swy - (wy * z).sum(1)
    if want_grad:
        coef = scale_ce * swy
        if zscale:
            coef = coef + scale_z * (2.0 * zscale) * lse
        z.sub_(lse[:, None]).exp_().mul_(coef[:, None])
        z.sub_(wy.mul_(scale_ce[:, None] if scale_ce.dim() else scale_ce))
        if cap is not None:
            z.mul_(aux)
    return loss, lse
