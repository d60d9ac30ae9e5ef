"""xent.torch: PyTorch drop-ins on xent's fused CPU kernels, chunked linear cross-entropy for
large vocabularies, and vocabulary-parallel cross-entropy over `torch.distributed`.

See ``docs/torch.md``.
"""

from ._activations import log_softmax, softmax
from ._distill import (
    linear_gather_log_probs,
    linear_generalized_jsd,
    vocab_parallel_generalized_jsd,
    vocab_parallel_linear_generalized_jsd,
)
from ._divergence import KLDivLoss, gather_log_probs, generalized_jsd, kl_div
from ._focal import focal_loss, poly1_cross_entropy, sigmoid_focal_loss
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
    Entmax15,
    Entmax15Loss,
    EntmaxBisect,
    EntmaxBisectLoss,
    FocalLoss,
    LinearCrossEntropyLoss,
    NLLLoss,
    Poly1CrossEntropyLoss,
    SigmoidFocalLoss,
    Sparsemax,
    SparsemaxLoss,
)
from ._parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy
from ._route import get_min_elements, min_elements, set_min_elements
from ._sparse import (
    entmax15,
    entmax15_loss,
    entmax_bisect,
    entmax_bisect_loss,
    sparsemax,
    sparsemax_loss,
)

__all__ = [
    "linear_gather_log_probs",
    "linear_generalized_jsd",
    "vocab_parallel_generalized_jsd",
    "vocab_parallel_linear_generalized_jsd",
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "DEFAULT_CHUNK_BYTES",
    "Entmax15",
    "Entmax15Loss",
    "EntmaxBisect",
    "EntmaxBisectLoss",
    "FocalLoss",
    "KLDivLoss",
    "LinearCrossEntropyLoss",
    "NLLLoss",
    "Poly1CrossEntropyLoss",
    "SigmoidFocalLoss",
    "Sparsemax",
    "SparsemaxLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "default_chunk_size",
    "entmax15",
    "entmax15_loss",
    "entmax_bisect",
    "entmax_bisect_loss",
    "focal_loss",
    "gather_log_probs",
    "generalized_jsd",
    "get_min_elements",
    "kl_div",
    "linear_cross_entropy",
    "log_softmax",
    "min_elements",
    "nll_loss",
    "poly1_cross_entropy",
    "set_min_elements",
    "sigmoid_focal_loss",
    "softmax",
    "sparsemax",
    "sparsemax_loss",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
