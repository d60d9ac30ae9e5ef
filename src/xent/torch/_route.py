"""The plan: which code computes a call of `xent.torch` (the one place that decides).

Every drop-in (`_functional`, `_activations`), the linear form (`_linear`) and the
vocabulary-parallel forms (`_parallel`) read the same three steps: normalise and validate the
arguments, ask `plan`, run the route it names. There are four routes:

=================  =================================================================================
`Route.TORCH`      PyTorch's own op: small calls (fewer than `MIN_ELEMENTS` elements; rows of fewer
                   than `MIN_CLASSES` classes for cross-entropy / NLL), where xent's fixed cost per
                   call is more than PyTorch's whole loss, and tensors the kernels cannot read
                   (CUDA, functorch wrappers, an operand other than ``input`` requiring grad,
                   bfloat16 without ml_dtypes). The arguments have been normalised to what
                   PyTorch's op takes (integer targets of any width to int64, float operands to
                   the input's dtype; 16-bit input is computed in float32 and rounded once), and
                   when PyTorch raises, the core's validation raises its own error for the same
                   mistake (`_bridge.torch_op`).
`Route.CORE`       xent's core on zero-copy NumPy views of CPU tensors (the fused kernels for large
                   inputs), through `_bridge.SavedGrad`.
`Route.CUSTOM_OP`  xent's `torch.library` operators (`_ops`): under ``torch.compile`` /
                   ``torch.export`` and CPU autocast, which must see an operator, not Python.
`Route.COMPOSED`   options PyTorch's op lacks (z-loss, soft-capping, the lse) on tensors the
                   kernels cannot read: the loss composed from PyTorch ops (`_reference`), after
                   the core's validation.
=================  =================================================================================

The routes differ in speed only: what one accepts, all accept, and what one refuses, all refuse
with the same exception (``tests/test_torch_sizes.py`` runs every such case at four sizes).
The size thresholds live in `xent._thresholds`.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import operator
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad  # noqa: F401  (read by tracing)
from torch._subclasses.fake_tensor import FakeTensor  # torch.export's stand-in for tensors

from xent import _thresholds, _validation

__all__ = ["Route", "get_min_elements", "min_elements", "plan", "set_min_elements"]


class Route(enum.Enum):
    TORCH = "torch"
    CORE = "core"
    CUSTOM_OP = "custom_op"
    COMPOSED = "composed"


# -- the one mutable threshold ------------------------------------------------------------------

def get_min_elements() -> int:
    """Inputs with fewer elements than this run PyTorch's own op instead of xent's kernels."""
    return _thresholds.MIN_ELEMENTS


def set_min_elements(n: int) -> int:
    """Set the small-input cut-off (0: every call xent can compute runs xent's); returns the
    old one.

    Example:
        >>> import xent.torch
        >>> old = xent.torch.set_min_elements(0)
        >>> xent.torch.get_min_elements()
        0
        >>> _ = xent.torch.set_min_elements(old)
    """
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"min_elements must be >= 0, got {n}")
    old, _thresholds.MIN_ELEMENTS = _thresholds.MIN_ELEMENTS, n
    return old


@contextlib.contextmanager
def min_elements(n: int) -> Iterator[None]:
    """Run a block with another small-input cut-off, e.g. ``min_elements(0)`` to send every
    call xent can compute to xent's functions however small (as ``xent train`` does)."""
    old = set_min_elements(n)
    try:
        yield
    finally:
        set_min_elements(old)


# -- what the call is inside of -----------------------------------------------------------------

def tracing() -> bool:
    """Whether the call is traced or transformed: TorchScript, ``torch.compile`` /
    ``torch.export``, or forward-mode AD."""
    # (is_compiling first: under dynamo it is True and nothing after it is traced. TorchScript
    # never runs this Python, so torch.jit.is_scripting() is False here and is_tracing() is
    # torch._C._is_tracing().)
    return (
        torch.compiler.is_compiling()
        or torch._C._is_tracing()
        or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0  # inside dual_level()
    )


def graph_capture() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` traces the call (and not TorchScript or
    forward-mode AD): there the drop-ins run xent's custom operators."""
    return (
        torch.compiler.is_compiling()
        and not (torch.jit.is_scripting() or torch.jit.is_tracing())  # (dynamo knows these)
        and getattr(torch.autograd.forward_ad, "_current_level", -1) < 0
    )


def autocasting() -> bool:
    """Whether CPU autocast is on: the custom operators' autocast rule then casts their inputs
    as PyTorch's autocast casts its losses' (16-bit floats to float32)."""
    return torch.is_autocast_enabled("cpu")


# -- what the kernels can read ------------------------------------------------------------------

#: Whether ml_dtypes is installed (found, not imported: `torch.compile` traces the checks that
#: read this, and importing it costs 0.6 s): NumPy then views bfloat16 tensors.
_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
_FAST_DTYPES = (torch.float32, torch.float64, torch.float16)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def bfloat16_ok(compiling: bool = False) -> bool:
    """Whether NumPy can view a bfloat16 tensor: ml_dtypes installed and, outside tracing (where
    nothing is imported), importable (the first call imports it)."""
    return _ML_DTYPES and (compiling or _validation.bfloat16() is not None)


def fast_dtypes() -> tuple[torch.dtype, ...]:
    """The input dtypes xent's kernels take: float32, float64, float16, and bfloat16 where
    ml_dtypes can be imported (this imports it)."""
    return (*_FAST_DTYPES, *((torch.bfloat16,) if bfloat16_ok() else ()))


def plain_cpu(t: torch.Tensor, compiling: bool | None = None) -> bool:
    """Whether ``t`` is a plain strided CPU tensor (a fake one under ``torch.compile``), not a
    functorch wrapper nor a legacy-vmap batched tensor (``is_grads_batched``)."""
    if compiling is None:
        compiling = torch.compiler.is_compiling()
    return (
        (type(t) in _PLAIN_TYPES or (compiling and type(t) is FakeTensor))
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and (compiling  # dynamo cannot call the checks (it traces functorch)
             or not (torch._C._functorch.is_functorch_wrapped_tensor(t) or batched(t)))
    )


def batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is a legacy-vmap batched tensor: what a backward receives under
    ``autograd.grad(..., is_grads_batched=True)``, ``jacobian(vectorize=True)`` and
    ``gradcheck(check_batched_grad=True)``. Only torch operations run on it."""
    return torch._C._functorch.is_legacy_batchedtensor(t)


def kernels_take(input: torch.Tensor, *others: torch.Tensor | None,
                 params: tuple[torch.Tensor | None, ...] = (), compiling: bool = False) -> bool:
    """Whether xent's kernels can read this call: ``input`` a plain CPU tensor of a dtype they
    take, every other operand a plain CPU tensor (or None) not requiring grad, every one of
    ``params`` a plain CPU tensor of ``input``'s dtype (or None)."""
    dt = input.dtype
    if (dt not in _FAST_DTYPES and not (dt is torch.bfloat16 and bfloat16_ok(compiling))) or (
            not plain_cpu(input, compiling)):
        return False
    for t in params:
        if t is not None and (t.dtype is not dt or not plain_cpu(t, compiling)):
            return False
    for t in others:
        if t is not None and (not isinstance(t, torch.Tensor) or not plain_cpu(t, compiling)
                              or t.requires_grad):
            return False
    return True


def small(input: torch.Tensor, rows: bool) -> bool:
    """Whether PyTorch's op is faster than xent's on this call: fewer than `MIN_ELEMENTS`
    elements or, for a loss over rows of classes (``rows``), ``(N, C)`` with
    ``C < MIN_CLASSES``."""
    n = _thresholds.MIN_ELEMENTS
    return input.numel() < n or (rows and n > 0 and input.dim() == 2
                                 and input.shape[1] < _thresholds.MIN_CLASSES)


def torch_by_size(input: torch.Tensor, rows: bool) -> bool:
    """Whether `plan` answers `Route.TORCH` by size alone: a `small` call outside tracing
    (under ``torch.compile`` / ``torch.export`` every size runs the custom operators, which
    validate the values as the eager core does). The drop-ins' first test for the usual small
    call, whose arguments need no normalisation."""
    return small(input, rows) and not tracing()


# -- the plan -------------------------------------------------------------------------------------

def plan(input: torch.Tensor, *others: torch.Tensor | None, rows: bool = False,
         extended: bool = False, params: tuple[torch.Tensor | None, ...] = (),
         custom_op: bool = True) -> Route:
    """The route of a call on ``input`` with the other tensor operands ``others``.

    ``rows``: a loss over rows of classes (cross-entropy, NLL), whose short rows PyTorch's op
    computes faster. ``extended``: the call asks for something PyTorch's op lacks (z-loss,
    soft-capping, the lse): never `Route.TORCH`. ``params``: operands that may require grad
    besides ``input`` (a linear layer's weight and bias), in ``input``'s dtype. ``custom_op``:
    whether the call has a custom operator (the linear forms have none: under graph capture
    they run `Route.TORCH` / `Route.COMPOSED`).

    Example:
        >>> import torch
        >>> plan(torch.zeros(32, 3), rows=True), plan(torch.zeros(4096, 4096), rows=True)
        (<Route.TORCH: 'torch'>, <Route.CORE: 'core'>)
        >>> plan(torch.zeros(32, 3), extended=True)
        <Route.CORE: 'core'>
        >>> plan(torch.zeros(4096, 4096), torch.zeros(4096, requires_grad=True))
        <Route.TORCH: 'torch'>
    """
    other = Route.COMPOSED if extended else Route.TORCH
    if not extended and torch_by_size(input, rows):  # (the common small call: cheap tests)
        return Route.TORCH
    if tracing():
        if (custom_op and graph_capture()
                and kernels_take(input, *others, params=params, compiling=True)):
            return Route.CUSTOM_OP
        return other
    if not kernels_take(input, *others, params=params):
        return other
    return Route.CUSTOM_OP if autocasting() else Route.CORE
