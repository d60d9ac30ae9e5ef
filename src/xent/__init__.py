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
from ._divergence import gather_log_probs, generalized_jsd, kl_div
from ._focal import focal_loss, poly1_cross_entropy, sigmoid_focal_loss
from ._sparse import (
    entmax15,
    entmax15_backward,
    entmax15_loss,
    entmax_bisect,
    entmax_bisect_backward,
    entmax_bisect_loss,
    sparsemax,
    sparsemax_backward,
    sparsemax_loss,
)

__version__ = "0.1.0"

__all__ = [
    "CacheInfo",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cache_info",
    "cross_entropy",
    "empty_cache",
    "entmax15",
    "entmax15_backward",
    "entmax15_loss",
    "entmax_bisect",
    "entmax_bisect_backward",
    "entmax_bisect_loss",
    "focal_loss",
    "gather_log_probs",
    "generalized_jsd",
    "get_backend",
    "get_cache_limit",
    "kl_div",
    "log_sigmoid",
    "log_sigmoid_backward",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "nll_loss",
    "poly1_cross_entropy",
    "set_backend",
    "set_cache_limit",
    "sigmoid",
    "sigmoid_backward",
    "sigmoid_focal_loss",
    "softmax",
    "softmax_backward",
    "sparsemax",
    "sparsemax_backward",
    "sparsemax_loss",
    "use_backend",
]
