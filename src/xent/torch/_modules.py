"""`torch.nn` loss modules on xent's kernels: subclasses of PyTorch's own modules, so that the
constructor signatures, the legacy ``size_average``/``reduce`` handling, the registered
``weight``/``pos_weight`` buffers, ``state_dict`` and ``repr`` are PyTorch's, and
``isinstance(m, torch.nn.CrossEntropyLoss)`` holds. Only ``forward`` differs: one call into
`xent.torch`'s functional form, which asks the plan (`_route.plan`) which code computes the call.
"""

from __future__ import annotations

from typing import Any

import torch

from xent._problem import check_options

from . import _focal, _functional, _linear, _sparse


def _keep_stats_options(module: Any, temperature: float, return_entropy: bool,
                        return_argmax: bool) -> None:
    """Check xent's constructor options of the cross-entropy modules (issue 18) and keep them
    on ``module`` for ``forward``."""
    check_options(temperature=temperature, return_entropy=return_entropy,
                  return_argmax=return_argmax)
    module.temperature, module.return_entropy = temperature, return_entropy
    module.return_argmax = return_argmax


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    r"""`torch.nn.CrossEntropyLoss` computed by `xent.torch.cross_entropy`.

    ``CrossEntropyLoss(weight=None, size_average=None, ignore_index=-100, reduce=None,
    reduction='mean', label_smoothing=0.0)``: the same arguments, meanings and defaults as
    PyTorch's module; ``forward(input, target)`` takes logits ``(C,)``, ``(N, C)`` or
    ``(N, C, d1, ..., dK)`` and class indices or probabilities, exactly as PyTorch's does.
    Unreduced loss of row ``i`` with index target ``t``:
    ``(1-eps)·w_t·(lse_i - x_{i,t}) + (eps/C)·Σ_c w_c·(lse_i - x_{i,c})``.

    Example:
        >>> import torch
        >>> from xent.torch import CrossEntropyLoss
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], requires_grad=True)
        >>> round(loss_fn(x, torch.tensor([0, 2])).item(), 4)
        0.3455
        >>> isinstance(loss_fn, torch.nn.CrossEntropyLoss)
        True

    xent's keyword-only constructor arguments ``temperature``, ``return_entropy`` and
    ``return_argmax`` (issue 18) are those of `xent.torch.cross_entropy`; with either flag
    ``forward`` returns a tuple (loss, then entropy, then argmax).
    """

    def __init__(self, weight: torch.Tensor | None = None, size_average: Any = None,
                 ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, temperature: float = 1.0,
                 return_entropy: bool = False, return_argmax: bool = False) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _keep_stats_options(self, temperature, return_entropy, return_argmax)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Any:
        return _functional.cross_entropy(  # no return_lse
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
            temperature=getattr(self, "temperature", 1.0),
            return_entropy=getattr(self, "return_entropy", False),
            return_argmax=getattr(self, "return_argmax", False),
        )


class NLLLoss(torch.nn.NLLLoss):
    r"""`torch.nn.NLLLoss` computed by `xent.torch.nll_loss`.

    ``NLLLoss(weight=None, size_average=None, ignore_index=-100, reduce=None, reduction='mean')``
    as in PyTorch; unreduced ``loss_i = -w_{t_i}·input[i, t_i]`` (0 for ignored targets).

    Example:
        >>> import torch
        >>> from xent.torch import NLLLoss
        >>> logp = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), 1)
        >>> round(NLLLoss(reduction="sum")(logp, torch.tensor([0, 2])).item(), 4)
        0.3509
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _functional.nll_loss(input, target, weight=self.weight,
                                    ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(torch.nn.BCELoss):
    r"""`torch.nn.BCELoss` computed by `xent.torch.binary_cross_entropy`.

    ``BCELoss(weight=None, size_average=None, reduce=None, reduction='mean')`` as in PyTorch;
    unreduced ``loss = -w·(y·log p + (1-y)·log(1-p))``, logs clamped at -100.

    Example:
        >>> import torch
        >>> from xent.torch import BCELoss
        >>> p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(BCELoss()(p, y).item(), 4)
        0.2798
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _functional.binary_cross_entropy(input, target, weight=self.weight,
                                                reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    r"""`torch.nn.BCEWithLogitsLoss` computed by `xent.torch.binary_cross_entropy_with_logits`.

    ``BCEWithLogitsLoss(weight=None, size_average=None, reduce=None, reduction='mean',
    pos_weight=None)`` as in PyTorch; unreduced
    ``loss = w·[(1-y)·x + (1 + (pw-1)·y)·softplus(-x)]``.

    Example:
        >>> import torch
        >>> from xent.torch import BCEWithLogitsLoss
        >>> x, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(BCEWithLogitsLoss()(x, y).item(), 4)
        0.3048
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _functional.binary_cross_entropy_with_logits(
            input, target, weight=self.weight, reduction=self.reduction,
            pos_weight=self.pos_weight,
        )


class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
    r"""`torch.nn.LinearCrossEntropyLoss` computed by `xent.torch.linear_cross_entropy`.

    ``LinearCrossEntropyLoss(in_features, num_classes, *, out_features=(), bias=False,
    device=None, dtype=None, reduction='mean', weight=None, ignore_index=None,
    label_smoothing=0.0, options=None)`` as in PyTorch 2.13: the module owns the classifier,
    ``self.linear`` (a `torch.nn.Linear` from ``in_features`` to ``num_classes·Π out_features``
    outputs, stored two-dimensional and viewed as ``(num_classes, *out_features, in_features)``
    in ``forward``), and the class ``weight`` buffer, so ``state_dict`` keys (``linear.weight``,
    ``linear.bias``, ``weight``) and ``repr`` are PyTorch's and a state dict loads either way.
    ``forward(input, target)`` is the chunked ``linear_cross_entropy(input, W, target, ...)``,
    which never holds the ``(N, C, *out_features)`` logits: for row ``i`` and position ``k``,
    with ``z = W x_i + b``, ``loss_ik = lse_k(z) - z_{t_ik, k}`` (weights and smoothing as
    `CrossEntropyLoss`). ``options`` is honoured as by `linear_cross_entropy`.

    Example:
        >>> import torch
        >>> from xent.torch import LinearCrossEntropyLoss
        >>> _ = torch.manual_seed(0)
        >>> ours = LinearCrossEntropyLoss(4, 10, out_features=(3,), bias=True)
        >>> theirs = torch.nn.LinearCrossEntropyLoss(4, 10, out_features=(3,), bias=True)
        >>> theirs.load_state_dict(ours.state_dict())
        <All keys matched successfully>
        >>> x, t = torch.randn(5, 4), torch.randint(0, 10, (5, 3))
        >>> bool(torch.allclose(ours(x, t), theirs(x, t)))
        True

    xent's keyword-only ``temperature``, ``return_entropy``, ``return_argmax`` (issue 18) are
    those of `xent.torch.linear_cross_entropy` (the RL call: ``reduction='none'``,
    ``return_entropy=True`` gives ``(nll, entropy)``).
    """

    def __init__(self, *args: Any, temperature: float = 1.0, return_entropy: bool = False,
                 return_argmax: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_stats_options(self, temperature, return_entropy, return_argmax)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Any:
        shape = (self.num_classes, *self.out_features)
        bias = self.linear.bias
        return _linear.linear_cross_entropy(
            input, self.linear.weight.reshape(*shape, self.linear.in_features), target,
            linear_bias=None if bias is None else bias.reshape(shape), weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options,
            temperature=getattr(self, "temperature", 1.0),
            return_entropy=getattr(self, "return_entropy", False),
            return_argmax=getattr(self, "return_argmax", False),
        )


class FocalLoss(torch.nn.modules.loss._WeightedLoss):
    r"""Multi-class focal loss as a module: `xent.torch.focal_loss`.

    ``FocalLoss(weight=None, ignore_index=-100, reduction='mean', gamma=2.0,
    label_smoothing=0.0)``; ``forward(input, target)`` takes what `CrossEntropyLoss` takes.
    Unreduced loss of row ``i`` with index target ``t``: ``-w_t·(1 - p_t)^gamma·log p_t``.

    Example:
        >>> import torch
        >>> from xent.torch import FocalLoss
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> round(FocalLoss(gamma=2.0)(x, torch.tensor([0, 2])).item(), 4)
        0.0061
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight, reduction=reduction)
        self.ignore_index, self.gamma, self.label_smoothing = ignore_index, gamma, label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal.focal_loss(input, target, self.weight, self.ignore_index, self.reduction,
                                 self.gamma, self.label_smoothing)


class Poly1CrossEntropyLoss(torch.nn.modules.loss._WeightedLoss):
    r"""Poly-1 cross-entropy as a module: `xent.torch.poly1_cross_entropy`.

    ``Poly1CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean',
    label_smoothing=0.0, epsilon=1.0)``; unreduced ``w_t·(-log p_t + epsilon·(1 - p_t))``.

    Example:
        >>> import torch
        >>> from xent.torch import Poly1CrossEntropyLoss
        >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> round(Poly1CrossEntropyLoss(epsilon=2.0)(x, torch.tensor([0, 2])).item(), 4)
        0.4937
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0,
                 epsilon: float = 1.0) -> None:
        super().__init__(weight, reduction=reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.epsilon = epsilon

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal.poly1_cross_entropy(input, target, self.weight, self.ignore_index,
                                          self.reduction, self.label_smoothing, self.epsilon)


class SigmoidFocalLoss(torch.nn.Module):
    r"""torchvision's sigmoid focal loss as a module: `xent.torch.sigmoid_focal_loss`.

    ``SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='none')`` (the function's defaults,
    as torchvision's); elementwise ``alpha_t·BCE_with_logits(x, y)·(1 - p_t)^gamma``.

    Example:
        >>> import torch
        >>> from xent.torch import SigmoidFocalLoss
        >>> x, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(SigmoidFocalLoss(reduction="sum")(x, y).item(), 4)
        0.0343
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal.sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


# -- sparsemax / entmax (the ``entmax`` package's modules; `xent.torch._sparse`) ----------------

class Sparsemax(torch.nn.Module):
    r"""``entmax.Sparsemax`` as a module: `xent.torch.sparsemax` along ``dim``.

    Example:
        >>> import torch
        >>> from xent.torch import Sparsemax
        >>> Sparsemax(dim=-1)(torch.tensor([1.0, 0.8, 0.1])).numpy().round(4)
        array([0.6, 0.4, 0. ], dtype=float32)
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _sparse.sparsemax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Entmax15(Sparsemax):
    r"""``entmax.Entmax15`` as a module: `xent.torch.entmax15` along ``dim``.

    Example:
        >>> import torch
        >>> from xent.torch import Entmax15
        >>> Entmax15()(torch.tensor([2.0, 1.0, 0.1])).numpy().round(4)
        array([0.8307, 0.1693, 0.    ], dtype=float32)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _sparse.entmax15(input, self.dim)


class EntmaxBisect(torch.nn.Module):
    r"""``entmax.EntmaxBisect(alpha=1.5, dim=-1, n_iter=50)``: `xent.torch.entmax_bisect`.

    Example:
        >>> import torch
        >>> from xent.torch import EntmaxBisect
        >>> EntmaxBisect(alpha=1.2)(torch.tensor([2.0, 1.0, 0.1])).numpy().round(4)
        array([0.7267, 0.2191, 0.0542], dtype=float32)
    """

    def __init__(self, alpha: float = 1.5, dim: int = -1, n_iter: int = 50) -> None:
        super().__init__()
        self.alpha, self.dim, self.n_iter = alpha, dim, n_iter

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _sparse.entmax_bisect(input, self.alpha, self.dim, self.n_iter)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, dim={self.dim}, n_iter={self.n_iter}"


class SparsemaxLoss(torch.nn.Module):
    r"""``entmax.SparsemaxLoss(ignore_index=-100, reduction='mean')``:
    `xent.torch.sparsemax_loss` (the package's ``k`` is not needed: no sort to bound).

    Example:
        >>> import torch
        >>> from xent.torch import SparsemaxLoss
        >>> x = torch.tensor([[2.0, 1.0, 0.1], [1.0, 0.8, 0.1]])
        >>> round(SparsemaxLoss()(x, torch.tensor([0, 1])).item(), 4)
        0.18
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _sparse.sparsemax_loss(input, target, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class Entmax15Loss(SparsemaxLoss):
    r"""``entmax.Entmax15Loss(ignore_index=-100, reduction='mean')``: `xent.torch.entmax15_loss`.

    Example:
        >>> import torch
        >>> from xent.torch import Entmax15Loss
        >>> x = torch.tensor([[2.0, 1.0, 0.1]])
        >>> round(Entmax15Loss()(x, torch.tensor([1])).item(), 4)
        1.0617
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _sparse.entmax15_loss(input, target, self.ignore_index, self.reduction)


class EntmaxBisectLoss(SparsemaxLoss):
    r"""``entmax.EntmaxBisectLoss(alpha=1.5, n_iter=50, ignore_index=-100, reduction='mean')``:
    `xent.torch.entmax_bisect_loss`.

    Example:
        >>> import torch
        >>> from xent.torch import EntmaxBisectLoss
        >>> x = torch.tensor([[2.0, 1.0, 0.1]])
        >>> round(EntmaxBisectLoss(alpha=1.5)(x, torch.tensor([1])).item(), 4)
        1.0617
    """

    def __init__(self, alpha: float = 1.5, n_iter: int = 50, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__(ignore_index, reduction)
        self.alpha, self.n_iter = alpha, n_iter

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _sparse.entmax_bisect_loss(input, target, self.alpha, self.n_iter,
                                          self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, n_iter={self.n_iter}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")
