"""xent: stable softmax, sigmoid and the cross-entropy family with PyTorch's semantics.

The public API is exactly the names below. ``xent.torch`` (PyTorch drop-ins) and ``xent.cli``
are subpackages imported on demand; ``import xent`` needs only NumPy.
"""

from ._activations import (
    log_sigmoid,
    log_sigmoid_backward,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
)
from ._binary import binary_cross_entropy, binary_cross_entropy_with_logits
from ._buffers import CacheInfo, cache_info, empty_cache, get_cache_limit, set_cache_limit
from ._cross_entropy import cross_entropy, nll_loss
from ._dispatch import get_backend, set_backend, use_backend

__version__ = "0.1.0"

__all__ = [
    "CacheInfo",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cache_info",
    "cross_entropy",
    "empty_cache",
    "get_backend",
    "get_cache_limit",
    "log_sigmoid",
    "log_sigmoid_backward",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "nll_loss",
    "set_backend",
    "set_cache_limit",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "use_backend",
]
