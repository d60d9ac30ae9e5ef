"""Autograd drop-ins for `torch.nn.functional`'s cross-entropy family on xent's core.

Each drop-in reads the same three steps: normalise and validate its arguments (`_bridge`:
legacy reductions, the options, integer targets to int64, float operands to the input's dtype),
ask the plan (`_route.plan`), and run the route it names: PyTorch's op with the core's errors,
the core through `_bridge.SavedGrad`, xent's custom operator (`_ops`, under ``torch.compile`` /
``torch.export`` / autocast) or the options composed from PyTorch ops (`_reference`). The routes
differ in speed only: the same call gives the same result, or the same exception, at every size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xent import _binary
from xent._problem import check_options

from . import _bridge, _ops, _reference
from ._route import Route, batched, plan, torch_by_size

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "nll_loss"]


def _plain_small_call(input: Any, target: Any) -> bool:
    """A CE / NLL call whose normalisation changes nothing (float32 or float64 logits: no
    16-bit upcast; int64 class indices) and whose route is `Route.TORCH` by size."""
    return (type(input) is torch.Tensor and type(target) is torch.Tensor
            and target.dtype is torch.int64
            and (input.dtype is torch.float32 or input.dtype is torch.float64)
            and torch_by_size(input, True))


def _tensor(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


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
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
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
        temperature: ``T``, positive and finite: the logits are ``z / T`` after the cap and
            before everything else (lse, loss, z-loss, entropy, argmax) (keyword only).
        return_entropy: also return each position's entropy ``H = lse(z) - Σ_c p_c z_c``
            (``p = softmax(z)``), every position, ignored or not, in the unreduced loss's
            shape; differentiable (``dH/dz = -p ⊙ (z - Σ_c p_c z_c)``) (keyword only).
        return_argmax: also return each position's argmax class (int64, the first on ties as
            ``torch.argmax``), not differentiable (keyword only).

    Returns:
        The loss (0-d for ``'mean'``/``'sum'``, the target's shape for ``'none'``), in the
        input's dtype; then ``lse``, ``entropy``, ``argmax`` as asked, a tuple when more than
        the loss.

    Edge cases: everything ignored gives a NaN mean and a zero gradient, as in PyTorch; ``-inf``
    logits are fine as long as a row has one finite entry. The route (`_route.plan`):
    xent's kernels for CPU float32, float64, float16 and bfloat16 from the cut-offs on (and at
    every size with an xent-only option), PyTorch's op below them and on CUDA (16-bit input
    computed in float32 there too), the same result or error either way.

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
        >>> nll, ent = cross_entropy(x, torch.tensor([0, 2]), reduction="none", temperature=2.0,
        ...                          return_entropy=True)
        >>> ent.detach().numpy().round(4)
        array([0.9343, 0.8555], dtype=float32)

    References: PyTorch ``torch.nn.functional.cross_entropy``; z-loss: Chowdhery et al., PaLM
    (2022), §5; soft-capping: Gemma 2 (2024).
    """
    if (weight is None and size_average is None and reduce is None and softcap is None
            and return_lse is False and return_entropy is False and return_argmax is False
            and type(temperature) is float and temperature == 1.0
            and type(lse_square_scale) is float and lse_square_scale == 0
            and type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0
            and _plain_small_call(input, target)):
        # The usual small call: its arguments are normalised already (float32/float64 logits,
        # int64 class indices, no weight, no option of xent's) and the plan's answer is
        # Route.TORCH by size: PyTorch's op, at PyTorch's cost (a call it refuses continues
        # below, to raise the core's error)
        try:
            return F.cross_entropy(input, target, None, None, ignore_index, None, reduction,
                                   label_smoothing)
        except (RuntimeError, ValueError, TypeError, IndexError):
            pass
    _tensor(input, "input")
    reduction = _bridge.legacy_reduction(size_average, reduce, reduction)
    options = check_options(label_smoothing, lse_square_scale, softcap, return_lse, temperature,
                            return_entropy, return_argmax)
    target, weight = _bridge.normalise_class_operands(input, target, weight)

    def validate():
        return _bridge.problem_for(input, target, weight, ignore_index, reduction, options)

    route = plan(input, target, weight, rows=True, extended=options.extended)
    if options.stats:
        return _stats_route(route, input, target, weight, ignore_index, reduction, options,
                            validate)
    if route is Route.TORCH:
        if ignore_index != -100 and isinstance(target, torch.Tensor) and (
                target.is_floating_point()):
            validate()  # (PyTorch ignores a negative ignore_index with probabilities; xent refuses)

        return _bridge.torch_op(F.cross_entropy, validate, input, target, weight,
                                ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=options.label_smoothing)
    if route is Route.CUSTOM_OP:
        return _ops.cross_entropy(input, target, weight, ignore_index, reduction, options)

    def reference(x: torch.Tensor):
        return _reference.cross_entropy(x, target, weight, ignore_index, reduction,
                                        options.label_smoothing, options.lse_square_scale,
                                        options.softcap, options.return_lse)

    problem = validate()
    if route is Route.COMPOSED:
        return reference(input)
    x = _bridge.as_numpy(input)
    lse = []

    def compute(grad: bool):
        loss, lse_rows, g = _ops.ce_arrays(problem, x, grad)  # shared with xent::cross_entropy
        if options.return_lse:
            lse.append(_bridge.from_numpy(lse_rows))
        return loss, g

    def differentiable(x: torch.Tensor) -> torch.Tensor:
        out = reference(x)
        return out[0] if options.return_lse else out

    loss = _bridge.run_core(input, compute, _bridge.class_dim_for_none(input, reduction),
                            differentiable)
    return (loss, lse[0]) if options.return_lse else loss


def _stats_route(route: Route, input: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None, ignore_index: int, reduction: str, options: Any,
                 validate: Any) -> Any:
    """`cross_entropy` with the statistics options (temperature, entropy, argmax): the custom
    operator, the composition, or the core through `_StatsCE` (PyTorch has no such op)."""
    o = options
    if route is Route.CUSTOM_OP:
        return _ops.cross_entropy_stats(input, target, weight, ignore_index, reduction, o)
    problem = validate()
    if route is not Route.CORE:
        return _reference.cross_entropy(input, target, weight, ignore_index, reduction,
                                        o.label_smoothing, o.lse_square_scale, o.softcap,
                                        o.return_lse, o.temperature, o.return_entropy,
                                        o.return_argmax)
    x = _bridge.as_numpy(input)
    loss, lse, ent, top, saved = _ops.ce_stats_forward(problem, x)

    def t(a: Any) -> Any:
        return None if a is None else _bridge.from_numpy(a)

    loss_t, lse_t, ent_t, top_t = t(loss), t(lse), t(ent), t(top)
    if _bridge.wants_grad(input):
        def reference(xr: torch.Tensor) -> Any:  # (batched gradients: `_StatsCE.backward`)
            return _reference.cross_entropy(xr, target, weight, ignore_index, reduction,
                                            o.label_smoothing, o.lse_square_scale, o.softcap,
                                            False, o.temperature, True, False)

        loss_t, ent_t = _StatsCE.apply(input, (problem, saved, reference), loss_t, ent_t)
    return _reference.stats_outputs(o, loss_t, lse_t, ent_t, top_t)


class _StatsCE(torch.autograd.Function):
    """The autograd of `cross_entropy` with the statistics options on the core: the forward's
    loss and entropy passed through; backward recomputes the rows with both upstream gradients
    (`_ops.ce_stats_backward`: the logits read again, the gradient written once, the rows' max
    and sums taken from the forward's lse and entropy)."""

    @staticmethod
    def forward(ctx, input, state, loss, ent):  # noqa: D102
        ctx.save_for_backward(input)
        ctx.problem, ctx.saved, ctx.reference = state  # (saved: the rows' lse and entropy)
        ctx.has_entropy = ent is not None
        return loss, (ent if ent is not None else loss.new_empty(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_entropy):  # noqa: D102
        (input,) = ctx.saved_tensors
        if batched(grad_loss) or (ctx.has_entropy and batched(grad_entropy)):
            # Batched gradients (legacy vmap over this backward: ``is_grads_batched=True``,
            # ``jacobian(vectorize=True)``): torch ops only, the VJP of the composition.
            with torch.enable_grad():
                xr = input.detach().requires_grad_(True)
                loss, ent = ctx.reference(xr)
                outs, gos = ((loss, ent), (grad_loss, grad_entropy)) if ctx.has_entropy \
                    else ((loss,), (grad_loss,))
                (g,) = torch.autograd.grad(outs, xr, gos)
            return g, None, None, None
        p = ctx.problem
        tdt = torch.float64 if p.dtype == np.float64 else torch.float32
        g = _bridge.as_numpy(grad_loss.to(tdt).contiguous())
        ge = (_bridge.as_numpy(grad_entropy.to(tdt).contiguous()) if ctx.has_entropy
              else None)
        grad = _ops.ce_stats_backward(p, _bridge.as_numpy(input.detach()), g, ge, ctx.saved)
        return _bridge.from_numpy(grad), None, None, None


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
    if (weight is None and size_average is None and reduce is None
            and _plain_small_call(input, target)):  # (see cross_entropy)
        try:
            return F.nll_loss(input, target, None, None, ignore_index, None, reduction)
        except (RuntimeError, ValueError, TypeError, IndexError):
            pass
    _tensor(input, "input")
    reduction = _bridge.legacy_reduction(size_average, reduce, reduction)
    target, weight = _bridge.normalise_index(target), _bridge.normalise_float(input, weight)

    def validate():
        return _bridge.problem_for(input, target, weight, ignore_index, reduction,
                                   fn="nll_loss", probabilities=False)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(x, target, weight, ignore_index=ignore_index, reduction=reduction)

    route = plan(input, target, weight, rows=True)
    if route is Route.TORCH:
        return _bridge.torch_op(F.nll_loss, validate, input, target, weight,
                                ignore_index=ignore_index, reduction=reduction)
    if route is Route.CUSTOM_OP:
        return _ops.nll_loss(input, target, weight, ignore_index, reduction)
    problem = validate()
    x = _bridge.as_numpy(input)

    def compute(grad: bool):
        return _ops.nll_arrays(problem, x, grad)

    return _bridge.run_core(input, compute, _bridge.class_dim_for_none(input, reduction),
                            reference)


def _same_shape_after_broadcast(input: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether every tensor of ``others`` broadcasts to ``input``'s shape: no more dimensions,
    each 1 or equal (what ``torch.broadcast_shapes`` says, without its cost per call)."""
    shape = input.shape
    for t in others:
        if t is None:
            continue
        s = t.shape
        if len(s) > len(shape) or any(a != 1 and a != b for a, b in
                                      zip(reversed(s), reversed(shape), strict=False)):
            return False
    return True


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
    _tensor(input, "input")
    reduction = _bridge.legacy_reduction(size_average, reduce, reduction)
    target, weight = _bridge.normalise_float(input, target), _bridge.normalise_float(input, weight)

    def validate():
        return _bce_validate(input, target, weight, None, reduction, probabilities=True)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(x, target, weight, reduction=reduction)

    route = _bce_route(input, target, weight)
    if route is Route.TORCH:
        if isinstance(target, torch.Tensor) and not bool(((target >= 0) & (target <= 1)).all()):
            validate()  # (PyTorch does not check the target's values; xent does)
        return _bridge.torch_op(F.binary_cross_entropy, validate, input, target, weight,
                                reduction=reduction)
    if route is Route.CUSTOM_OP:
        return _ops.binary_cross_entropy(input, target, weight, reduction)
    x, y, w = _bridge.as_numpy(input), _bridge.as_numpy(target), _bridge.as_numpy(weight)

    def compute(grad: bool):
        return _ops.bce_arrays(x, y, w, reduction, grad)

    return _bridge.run_core(input, compute, None, reference)


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
    _tensor(input, "input")
    reduction = _bridge.legacy_reduction(size_average, reduce, reduction)
    target, weight, pos_weight = (_bridge.normalise_float(input, t)
                                  for t in (target, weight, pos_weight))

    def validate():
        return _bce_validate(input, target, weight, pos_weight, reduction, probabilities=False)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(x, target, weight, reduction=reduction,
                                                  pos_weight=pos_weight)

    route = _bce_route(input, target, weight, pos_weight)
    if route is Route.TORCH:
        return _bridge.torch_op(F.binary_cross_entropy_with_logits, validate, input, target,
                                weight, reduction=reduction, pos_weight=pos_weight)
    if route is Route.CUSTOM_OP:
        return _ops.binary_cross_entropy_with_logits(input, target, weight, pos_weight,
                                                     reduction)
    x, y = _bridge.as_numpy(input), _bridge.as_numpy(target)
    w, pw = _bridge.as_numpy(weight), _bridge.as_numpy(pos_weight)

    def compute(grad: bool):
        return _ops.bce_logits_arrays(x, y, w, pw, reduction, grad)

    return _bridge.run_core(input, compute, None, reference)


def _bce_route(input: torch.Tensor, target: Any, *weights: torch.Tensor | None) -> Route:
    """`plan` for a binary loss: its kernels take a target of the input's shape and weights
    that do not broadcast the loss beyond it (PyTorch's op computes the rest)."""
    if not (isinstance(target, torch.Tensor) and target.shape == input.shape
            and _same_shape_after_broadcast(input, *weights)):
        return Route.TORCH
    return plan(input, target, *weights)


def _bce_validate(input: torch.Tensor, target: Any, weight: Any, pos_weight: Any,
                  reduction: str, *, probabilities: bool) -> None:
    """The core's validation of a binary loss on tensors (`xent._binary.bce_operands`, and for
    probabilities the values of input and target)."""
    dt = _bridge.compute_dtype(input)
    x, y, w, pw = (_bridge.numpy_operand(t, dt) if isinstance(t, torch.Tensor) else t
                   for t in (input, target, weight, pos_weight))
    y, *_ = _binary.bce_operands(x, y, w, pw, reduction, dt)
    if probabilities:
        _binary.check_probabilities(x, y)
