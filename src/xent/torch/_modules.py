"""`torch.nn` loss modules on xent's kernels: subclasses of PyTorch's own modules, so that the
constructor signatures, the legacy ``size_average``/``reduce`` handling, the registered
``weight``/``pos_weight`` buffers, ``state_dict`` and ``repr`` are PyTorch's, and
``isinstance(m, torch.nn.CrossEntropyLoss)`` holds. Only ``forward`` differs: one call into
`xent.torch`'s functional form, which asks the plan (`_route.plan`) which code computes the call.
"""

from __future__ import annotations

from typing import cast

import torch

from . import _functional, _linear


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
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, _functional.cross_entropy(  # no return_lse: one tensor
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
        ))


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
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = (self.num_classes, *self.out_features)
        bias = self.linear.bias
        return cast(torch.Tensor, _linear.linear_cross_entropy(
            input, self.linear.weight.reshape(*shape, self.linear.in_features), target,
            linear_bias=None if bias is None else bias.reshape(shape), weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options,
        ))
