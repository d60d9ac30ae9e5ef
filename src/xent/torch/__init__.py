"""xent.torch: PyTorch drop-ins on xent's fused CPU kernels, chunked linear cross-entropy for
large vocabularies, and vocabulary-parallel cross-entropy over `torch.distributed`.

See ``docs/torch.md``.
"""

from ._activations import log_softmax, softmax
from ._functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    nll_loss,
)
from ._linear import DEFAULT_CHUNK_BYTES, default_chunk_size, linear_cross_entropy
from ._modules import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
    NLLLoss,
)
from ._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy
from ._route import get_min_elements, min_elements, set_min_elements

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "DEFAULT_CHUNK_BYTES",
    "LinearCrossEntropyLoss",
    "NLLLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "default_chunk_size",
    "get_min_elements",
    "linear_cross_entropy",
    "log_softmax",
    "min_elements",
    "nll_loss",
    "set_min_elements",
    "softmax",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
