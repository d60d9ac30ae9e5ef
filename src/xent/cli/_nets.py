"""The tutorials' two networks (this module imports torch; `_model` imports it on first use)."""

from __future__ import annotations

import torch
from torch import nn


class NeuralNet1(nn.Module):
    """Binary classifier: Linear → ReLU → Linear (one logit) → sigmoid, as in the tutorial.

    ``forward`` returns the probability of the second class, as the tutorial's network does;
    ``logits`` returns the raw output, which the default recipe trains with
    ``binary_cross_entropy_with_logits``.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)  # input layer
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden_size, 1)  # output layer: one logit

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw output ``(N, 1)``."""
        return self.linear2(self.relu(self.linear1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The probability of the second class ``(N, 1)``."""
        return torch.sigmoid(self.logits(x))


class NeuralNet2(nn.Module):
    """Multi-class classifier: Linear → ReLU → Linear, raw logits, as in the tutorial."""

    def __init__(self, input_size: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden_size, num_classes)  # raw logits: no softmax here

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw output ``(N, C)``."""
        return self.linear2(self.relu(self.linear1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits ``(N, C)`` (``CrossEntropyLoss`` applies the softmax)."""
        return self.logits(x)
