"""Autograd drop-ins for `torch.nn.functional`'s cross-entropy family on xent's CPU kernels.

Three layers, as in Liger-Kernel: the core (`xent.cross_entropy`, ...) computes the loss *and* its
gradient in one fused pass over a zero-copy NumPy view of the tensor; `_SavedGrad` is the
`torch.autograd.Function` that only wires the saved gradient to `backward` (a scale by
``grad_output``); the public functions choose between that fast path and PyTorch's own ops.

The fast path is taken for strided CPU tensors of dtype float32/float64 that are plain tensors
(or parameters), outside ``torch.jit`` tracing/scripting, ``torch.compile``, functorch
transforms and forward-mode AD, when only ``input`` may require grad. Everything else (CUDA,
bfloat16/float16, a ``target``/``weight``/``pos_weight`` that requires grad, weights that
broadcast the loss beyond the input's shape) runs PyTorch's own function, so behaviour is the same
everywhere and only speed differs; so do inputs of fewer than `MIN_ELEMENTS` elements, where the
bridge would cost more than the loss.
"""

from __future__ import annotations

import contextlib
import operator
import weakref
from collections.abc import Iterator

import numpy as np
import torch
import torch.autograd.forward_ad  # noqa: F401  (read by _tracing)
import torch.nn.functional as F
from torch.nn import _reduction as _Reduction

import xent
from xent import _buffers

from . import _rows

_FAST_DTYPES = (torch.float32, torch.float64)
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

#: Below this many input elements PyTorch's own op runs even where xent's could: the bridge costs
#: tens of microseconds (autograd Function, NumPy views), more than the whole loss of a small
#: batch. Measured by benchmarks/bench_linear.py (bridge table); 0 sends everything to xent.
#: Change it with `set_min_elements` or, for a block, `min_elements`.
MIN_ELEMENTS = 8192


def get_min_elements() -> int:
    """Inputs with fewer elements than this run PyTorch's own op instead of xent's kernels."""
    return MIN_ELEMENTS


def set_min_elements(n: int) -> int:
    """Set the small-input cut-off (0: every eligible call runs xent's); returns the old one.

    Example:
        >>> import xent.torch
        >>> old = xent.torch.set_min_elements(0)
        >>> xent.torch.get_min_elements()
        0
        >>> _ = xent.torch.set_min_elements(old)
    """
    global MIN_ELEMENTS
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"min_elements must be >= 0, got {n}")
    old, MIN_ELEMENTS = MIN_ELEMENTS, n
    return old


@contextlib.contextmanager
def min_elements(n: int) -> Iterator[None]:
    """Run a block with another small-input cut-off, e.g. ``min_elements(0)`` to send every
    eligible call to xent's functions however small (as ``xent train`` does)."""
    old = set_min_elements(n)
    try:
        yield
    finally:
        set_min_elements(old)

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's handling of the deprecated ``size_average``/``reduce`` (it warns, as torch does)."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction=} must be one of ('none', 'mean', 'sum')")


def _tracing() -> bool:
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0  # inside dual_level()
    )


def _plain_cpu(t: torch.Tensor) -> bool:
    return (
        type(t) in _PLAIN_TYPES
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
    )


def fast_path_ok(input: object, *others: object, small_ok: bool = False) -> bool:
    """Whether xent's kernels can compute this call: see the module docstring. Inputs of fewer
    than `MIN_ELEMENTS` elements go to PyTorch unless ``small_ok``."""
    if not isinstance(input, torch.Tensor) or _tracing():
        return False
    if not small_ok and input.numel() < MIN_ELEMENTS:
        return False
    if input.dtype not in _FAST_DTYPES or not _plain_cpu(input):
        return False
    for t in others:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not _plain_cpu(t) or t.requires_grad:
            return False
    return True


def as_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (zero-copy; a copy only for negated-bit views)."""
    if t is None:
        return None
    return t.detach().resolve_neg().numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory (a copy only when ``a`` is read-only)."""
    a = np.asarray(a)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


class _SavedGrad(torch.autograd.Function):
    """``loss`` whose gradient was computed in the same pass; backward scales it.

    ``compute()`` returns ``(loss, grad)``: for ``reduction='none'`` ``grad`` is the VJP with
    ones, so the VJP with ``grad_output`` is ``grad * grad_output`` broadcast along the class
    dimension ``class_dim`` (None for elementwise losses and for reduced ones).

    Double backward (``create_graph=True``, e.g. a gradient penalty): the saved gradient is a
    constant, so backward then differentiates ``reference(input)``, the same loss written with
    PyTorch's differentiable ops, and returns a gradient with a graph (PyTorch's own cost for
    that call). The input is held only by a weak reference: the first-order backward never reads
    it, so the loss keeps nothing of size N×C but the gradient (logits nobody else holds are
    freed after the forward, as before), and modifying them in place after the loss stays
    allowed, as with ``F.cross_entropy``. A double backward therefore needs the caller to keep
    the logits (it raises otherwise) and checks that they were not modified in place.
    """

    @staticmethod
    def forward(ctx, input, compute, class_dim, reference=None):  # noqa: D102
        loss, grad = compute()
        ctx.class_dim = class_dim
        ctx.save_for_backward(grad)
        ctx.input = weakref.ref(input)
        ctx.input_version, ctx.reference = input._version, reference
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            return _SavedGrad._differentiable_grad(ctx, grad_output), None, None, None
        (grad,) = ctx.saved_tensors
        if grad_output.dim() == 0 and bool(grad_output == 1):
            # The usual `loss.backward()`: hand the saved gradient over as it is. Unless the
            # graph is retained, autograd has released our reference by the time it
            # accumulates, so it takes the buffer without a copy.
            return grad, None, None, None
        if ctx.class_dim is not None and grad_output.dim() > 0:
            grad_output = grad_output.unsqueeze(ctx.class_dim)
        if grad.device.type != "cpu" or grad_output.device.type != "cpu":
            return grad * grad_output, None, None, None
        # Into xent's output-buffer cache (memory already touched when a gradient of this size
        # was dropped before; e.g. `(loss / accumulation_steps).backward()` every step).
        g, go = as_numpy(grad), as_numpy(grad_output)
        out = _buffers.empty(np.broadcast_shapes(g.shape, go.shape), np.result_type(g, go))
        np.multiply(g, go, out=out)
        return torch.from_numpy(out), None, None, None

    @staticmethod
    def _differentiable_grad(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        if ctx.reference is None:
            raise RuntimeError(
                "xent.torch: this loss has no double backward (create_graph=True); compute it "
                "with PyTorch's ops for a second derivative"
            )
        x = ctx.input()
        if x is None:
            raise RuntimeError(
                "xent.torch: a double backward (create_graph=True) needs the loss's input: keep a "
                "reference to the logits until then (e.g. logits = model(x); loss = "
                "cross_entropy(logits, target)); the loss itself keeps only its gradient"
            )
        if x._version != ctx.input_version:
            raise RuntimeError(
                "xent.torch: the loss's input was modified in place after the loss was computed;"
                " a double backward (create_graph=True) needs it unchanged"
            )
        with torch.enable_grad():
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            loss = ctx.reference(xr)
            (g,) = torch.autograd.grad(loss, xr, grad_output, create_graph=True)
        return g


def _wants_grad(input: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


def _run_core(input: torch.Tensor, core_fn, args: tuple, kwargs: dict, class_dim,
              reference) -> torch.Tensor:
    """Call ``core_fn(input_np, *args, **kwargs)``; under autograd with ``return_grad=True``.

    ``reference(input)``: the same loss in PyTorch ops, differentiated for a double backward.
    """
    x = as_numpy(input)
    if not _wants_grad(input):
        return from_numpy(core_fn(x, *args, **kwargs))

    def compute():
        loss, grad = core_fn(x, *args, return_grad=True, **kwargs)
        return from_numpy(loss), from_numpy(grad)

    return _SavedGrad.apply(input, compute, class_dim, reference)


def _class_dim_for_none(input: torch.Tensor, reduction: str) -> int | None:
    return 1 if reduction == "none" and input.dim() >= 2 else None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Cross-entropy between logits and targets: `torch.nn.functional.cross_entropy` on xent's
    fused CPU kernel, plus the options large-vocabulary training uses.

    Unreduced, for row ``i`` with logits ``z`` (soft-capped first when ``softcap`` is set:
    ``z ← softcap·tanh(z/softcap)``), ``lse = log Σ_c exp(z_c)``, class weights ``w`` (ones when
    None), smoothing ``eps`` and ``C`` classes::

        index target t:  loss_i = (1-eps)·w_t·(lse - z_t) + (eps/C)·Σ_c w_c·(lse - z_c) + s·lse²
        probabilities y: loss_i = -Σ_c w_c·((1-eps)·y_c + eps/C)·(z_c - lse) + s·lse²

    with ``s = lse_square_scale`` (z-loss, PaLM; 0 by default); rows whose target is
    ``ignore_index`` give 0. ``'mean'`` divides the cross-entropy by ``Σ_i w_{t_i}`` over the
    non-ignored rows (by the number of rows for probability targets), exactly as PyTorch does,
    and the z-loss by the number of non-ignored rows (as Liger-Kernel does). ``'sum'`` sums.

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices (int64) of shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, or
            class probabilities of the input's shape (chosen as PyTorch does: by equal shapes).
        weight: class weights ``(C,)`` or None.
        size_average, reduce: deprecated, as in PyTorch (they override ``reduction``).
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        label_smoothing: ``eps`` in ``[0, 1]``.
        lse_square_scale: z-loss coefficient ``s`` (keyword only).
        softcap: logit soft-capping value (Gemma 2 uses 30), None for none (keyword only).
        return_lse: also return ``lse`` (after soft-capping), shape of the unreduced loss,
            not differentiable (keyword only).

    Returns:
        The loss (0-d for ``'mean'``/``'sum'``, the target's shape for ``'none'``), in the
        input's dtype; with ``return_lse`` a pair ``(loss, lse)``.

    Edge cases: everything ignored gives a NaN mean and a zero gradient, as in PyTorch; ``-inf``
    logits are fine as long as a row has one finite entry. The fast path covers CPU float32 and
    float64 with only ``input`` requiring grad; the rest runs PyTorch's ops (with the options
    composed from them), so CUDA and bfloat16 work, at PyTorch's speed.

    Example:
        >>> import torch
        >>> from xent.torch import cross_entropy
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], requires_grad=True)
        >>> loss = cross_entropy(x, torch.tensor([0, 2]))
        >>> round(loss.item(), 4)
        0.1755
        >>> loss.backward()
        >>> x.grad.numpy().round(4)
        array([[-0.1072,  0.0876,  0.0196],
               [ 0.0247,  0.0272, -0.0519]], dtype=float32)
        >>> loss, lse = cross_entropy(x, torch.tensor([0, 2]), lse_square_scale=1e-4,
        ...                           return_lse=True, reduction="none")
        >>> lse.numpy().round(4)
        array([2.2413, 3.1096], dtype=float32)

    References: PyTorch ``torch.nn.functional.cross_entropy``; z-loss: Chowdhery et al., PaLM
    (2022), §5; soft-capping: Gemma 2 (2024).
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    eps = float(label_smoothing)
    options = bool(lse_square_scale) or softcap is not None or return_lse
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap!r}")
    if not fast_path_ok(input, target, weight, small_ok=options):
        if options:
            return _cross_entropy_options_torch(
                input, target, weight, ignore_index, reduction, eps, float(lse_square_scale),
                softcap, return_lse,
            )
        return F.cross_entropy(input, target, weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=eps)
    if options:
        return _cross_entropy_options_fast(
            input, target, weight, ignore_index, reduction, eps, float(lse_square_scale),
            softcap, return_lse,
        )
    kwargs = dict(weight=as_numpy(weight), ignore_index=ignore_index, reduction=reduction,
                  label_smoothing=eps)
    return _run_core(input, xent.cross_entropy, (as_numpy(target),), kwargs,
                     _class_dim_for_none(input, reduction),
                     lambda x: F.cross_entropy(x, target, weight, ignore_index=ignore_index,
                                               reduction=reduction, label_smoothing=eps))


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative log-likelihood of log-probabilities: `torch.nn.functional.nll_loss` on xent.

    Unreduced: ``loss_i = -w_{t_i}·input[i, t_i]``, 0 where ``t_i == ignore_index``; ``'mean'``
    divides the sum by ``Σ_i w_{t_i}`` over the non-ignored rows, ``'sum'`` sums.

    Args:
        input: log-probabilities ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        target: class indices ``()``, ``(N,)`` or ``(N, d1, ..., dK)`` (int64).
        weight: class weights ``(C,)`` or None.
        size_average, reduce: deprecated, as in PyTorch.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    Returns:
        0-d loss for ``'mean'``/``'sum'``, the target's shape for ``'none'``.

    Edge cases: everything ignored gives NaN for ``'mean'``, as in PyTorch.

    Example:
        >>> import torch
        >>> from xent.torch import nll_loss
        >>> logp = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), 1)
        >>> round(nll_loss(logp, torch.tensor([0, 2])).item(), 4)
        0.1755
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if not fast_path_ok(input, target, weight):
        return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    kwargs = dict(weight=as_numpy(weight), ignore_index=ignore_index, reduction=reduction)
    return _run_core(input, xent.nll_loss, (as_numpy(target),), kwargs,
                     _class_dim_for_none(input, reduction),
                     lambda x: F.nll_loss(x, target, weight, ignore_index=ignore_index,
                                          reduction=reduction))


def _same_shape_after_broadcast(input: torch.Tensor, *others: torch.Tensor | None) -> bool:
    shapes = [t.shape for t in others if t is not None]
    try:
        return torch.broadcast_shapes(input.shape, *shapes) == input.shape
    except RuntimeError:
        return False


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary cross-entropy of probabilities: `torch.nn.functional.binary_cross_entropy` on xent.

    Unreduced: ``loss = -w·(y·log(p) + (1-y)·log(1-p))`` elementwise, each log clamped at
    ``-100`` as PyTorch does (so ``p = 0`` or ``1`` gives a finite loss).

    Args:
        input: probabilities ``p`` in ``[0, 1]``, any shape.
        target: ``y``, the input's shape.
        weight: broadcastable to the input's shape, or None.
        size_average, reduce: deprecated, as in PyTorch.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    Returns:
        0-d loss for ``'mean'``/``'sum'``, the input's shape for ``'none'``.

    Example:
        >>> import torch
        >>> from xent.torch import binary_cross_entropy
        >>> p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(binary_cross_entropy(p, y).item(), 4)
        0.2798
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if (not fast_path_ok(input, target, weight) or target.shape != input.shape
            or not _same_shape_after_broadcast(input, weight)):
        return F.binary_cross_entropy(input, target, weight, reduction=reduction)
    kwargs = dict(weight=as_numpy(weight), reduction=reduction)
    return _run_core(input, xent.binary_cross_entropy, (as_numpy(target),), kwargs, None,
                     lambda x: F.binary_cross_entropy(x, target, weight, reduction=reduction))


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Binary cross-entropy of logits: `torch.nn.functional.binary_cross_entropy_with_logits`
    on xent's kernel.

    Unreduced, elementwise: ``loss = w·[(1-y)·x + (1 + (pw-1)·y)·softplus(-x)]``, which is
    ``-w·[pw·y·log σ(x) + (1-y)·log(1-σ(x))]`` computed without forming ``σ(x)``.

    Args:
        input: logits ``x``, any shape ``(..., K)``.
        target: ``y``, the input's shape.
        weight: broadcastable to the input's shape, or None.
        size_average, reduce: deprecated, as in PyTorch.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        pos_weight: ``pw``, broadcastable along the last dimension ``(K,)``, or None.

    Returns:
        0-d loss for ``'mean'``/``'sum'``, the input's shape for ``'none'``.

    Example:
        >>> import torch
        >>> from xent.torch import binary_cross_entropy_with_logits
        >>> x, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(binary_cross_entropy_with_logits(x, y).item(), 4)
        0.3048
        >>> pw = torch.full((3,), 2.0)
        >>> round(binary_cross_entropy_with_logits(x, y, pos_weight=pw).item(), 4)
        0.5051
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if (not fast_path_ok(input, target, weight, pos_weight) or target.shape != input.shape
            or not _same_shape_after_broadcast(input, weight, pos_weight)):
        return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                                  pos_weight=pos_weight)
    kwargs = dict(weight=as_numpy(weight), reduction=reduction, pos_weight=as_numpy(pos_weight))
    return _run_core(input, xent.binary_cross_entropy_with_logits, (as_numpy(target),), kwargs,
                     None, lambda x: F.binary_cross_entropy_with_logits(
                         x, target, weight, reduction=reduction, pos_weight=pos_weight))


# --- cross-entropy with z-loss / soft-capping / log-sum-exp -------------------------------------


def _reduce_zloss(zl: torch.Tensor, count: torch.Tensor | int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return zl
    return zl.sum() if reduction == "sum" else zl.sum() / count


def _cross_entropy_options_torch(input, target, weight, ignore_index, reduction, eps, zscale,
                                 softcap, return_lse):
    """The options composed from PyTorch ops (autograd-differentiable everywhere): the
    definition the fast path is tested against, and the fallback off the fast path."""
    z = input if softcap is None else softcap * torch.tanh(input / softcap)
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=eps)
    class_dim = 1 if input.dim() >= 2 else 0
    lse = torch.logsumexp(z, dim=class_dim)
    if zscale:
        if target.shape == input.shape:  # probabilities: every row counts
            zl = zscale * lse * lse
            count = lse.numel()
        else:
            valid = target != ignore_index
            zl = zscale * lse * lse * valid
            count = valid.sum()
        loss = loss + _reduce_zloss(zl, count, reduction)
    return (loss, lse.detach()) if return_lse else loss


def _cross_entropy_options_fast(input, target, weight, ignore_index, reduction, eps, zscale,
                                softcap, return_lse):
    """The options on a contiguous (M, C) copy of the logits: one pass computes the loss, the
    log-sum-exp and (under autograd) the gradient into that copy."""
    class_dim = 1 if input.dim() >= 2 else 0
    num_classes = input.shape[class_dim]
    prob = target.shape == input.shape
    cdt = input.dtype
    moved = input.detach().movedim(class_dim, -1)
    # The block the kernels work on (and the gradient they leave in it), from xent's output-buffer
    # cache: filling fresh memory cost more than the fused option kernels themselves.
    z = torch.from_numpy(_buffers.empty(tuple(moved.shape), _NP_DTYPES[cdt]))
    src = None  # contiguous logits are copied into z row by row by the kernel (one pass less)
    if moved.is_contiguous() and not moved.is_neg():
        src = moved.view(-1, num_classes)
    else:
        z.copy_(moved)
    z = z.view(-1, num_classes)
    rows = z.shape[0]
    out_shape = moved.shape[:-1]
    w = None if weight is None else weight.detach().to(cdt)
    want_grad = _wants_grad(input)

    if prob:
        y = target.detach().movedim(class_dim, -1).reshape(rows, num_classes).to(cdt)
        count_ce = count_z = rows
        valid = None
    else:
        if target.dtype != torch.int64:
            raise TypeError(f"expected class-index target of dtype int64, got {target.dtype}")
        t = target.reshape(-1)
        if t.shape[0] != rows:
            raise ValueError(f"Expected input batch_size ({rows}) to match target batch_size "
                             f"({t.shape[0]})")
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= num_classes))
        if bool(bad.any()):
            v = int(t[bad][0])
            raise IndexError(f"target {v} is out of bounds for {num_classes} classes (valid: "
                             f"0..{num_classes - 1}, or ignore_index={ignore_index})")
        count_z = valid.sum().to(cdt)
        count_ce = count_z if w is None else (w[torch.where(valid, t, 0)] * valid).sum()

    def scale(count):
        if reduction != "mean":
            return torch.ones((), dtype=cdt)
        return torch.where(count > 0, 1.0 / count, 0.0).to(cdt) if isinstance(
            count, torch.Tensor) else torch.tensor(1.0 / max(count, 1), dtype=cdt)

    s_ce = scale(count_ce) if want_grad else None
    s_z = scale(count_z) if want_grad else None
    holder = {}

    def compute():
        if prob:
            ce, lse = _rows.rows_prob(z, y, w, eps, zscale, softcap, s_ce, s_z, src=src)
            zl = zscale * lse * lse if zscale else None
        else:
            ce, lse, vmask = _rows.rows_index(z, t, w, ignore_index, eps, zscale, softcap, s_ce,
                                              s_z, src=src)
            zl = zscale * lse * lse * vmask if zscale else None
        if reduction == "none":
            loss = ce if zl is None else ce + zl
            loss = loss.view(out_shape)
        else:
            loss = ce.sum() if reduction == "sum" else ce.sum() / count_ce
            if zl is not None:
                loss = loss + _reduce_zloss(zl, count_z, reduction)
        holder["lse"] = lse.view(out_shape)
        grad = None
        if want_grad:
            grad = z.view(moved.shape).movedim(-1, class_dim)
        return loss.to(input.dtype), grad

    def reference(x):
        out = _cross_entropy_options_torch(x, target, weight, ignore_index, reduction, eps,
                                           zscale, softcap, False)
        return out.to(input.dtype)

    if want_grad:
        loss = _SavedGrad.apply(input, compute, _class_dim_for_none(input, reduction), reference)
    else:
        loss, _ = compute()
    return (loss, holder["lse"]) if return_lse else loss
