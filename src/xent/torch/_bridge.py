"""The zero-copy bridge between torch tensors and xent's NumPy core.

`below_cutoff` sends small calls to PyTorch's op before anything else (`MIN_ELEMENTS`,
`MIN_CLASSES`); `fast_path_ok` decides whether xent's kernels can compute a call (plain strided
CPU tensors of float32/float64, outside tracing/compiling and functorch transforms, only
``input`` requiring grad, at least `MIN_ELEMENTS` elements); `as_numpy` / `from_numpy` share
memory with the tensors; `SavedGrad` is the `torch.autograd.Function` that hands the gradient
the core computed in the forward pass to ``backward``; `run_core` wires a core call into it.
The drop-ins (`_functional`), linear (`_linear`) and parallel (`_parallel`) forms import these
public names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import operator
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.autograd.forward_ad  # noqa: F401  (read by tracing)
from torch._subclasses.fake_tensor import FakeTensor  # torch.export's stand-in for tensors
from torch.nn import _reduction as _Reduction

from xent import _buffers, _validation


def _bfloat16() -> np.dtype | None:
    """``ml_dtypes.bfloat16`` as the core names it, None without ml_dtypes. The first call
    imports ml_dtypes (0.6 s on the development VM, more than `xent train`'s whole training),
    so nothing calls it before a bfloat16 tensor or array arrives."""
    return _validation.bfloat16()


#: Whether ml_dtypes is installed (found, not imported: `torch.compile` traces the checks
#: that read this, and importing it costs 0.6 s): NumPy then views bfloat16 tensors.
_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None


def _bfloat16_ok(compiling: bool) -> bool:
    """Whether NumPy can view a bfloat16 tensor: ml_dtypes installed and, outside tracing (where
    nothing is imported), importable (the first call imports it)."""
    return _ML_DTYPES and (compiling or _bfloat16() is not None)


def fast_dtypes() -> tuple[torch.dtype, ...]:
    """The input dtypes of the fast path: float32, float64 and the 16-bit floats the core reads
    in their own storage (`xent._validation.as_storage`): float16, and bfloat16 where ml_dtypes
    can be imported (this imports it)."""
    return (*_FAST_DTYPES, *((torch.bfloat16,) if _bfloat16_ok(False) else ()))


_FAST_DTYPES = (torch.float32, torch.float64, torch.float16)


#: Below this many input elements PyTorch's own op runs even where xent's could: a call through
#: the bridge and the core has a fixed cost (autograd Function, validation, NumPy views, kernel
#: dispatch) above PyTorch's whole loss on a small batch. The crossover of the forced path with
#: PyTorch's op, measured by benchmarks/bench_small.py (benchmarks/README.md, "Small batches").
#: 0 sends everything to xent. Change it with `set_min_elements` or, for a block, `min_elements`.
MIN_ELEMENTS = 1 << 19

#: Cross-entropy and NLL rows of fewer classes than this run PyTorch's op whatever their number
#: (unless the cut-off is 0): xent's row kernels pay a cost per row that PyTorch's vectorised
#: loss does not, and lose to it on short rows at every size (same measurement).
MIN_CLASSES = 1024

#: From this many elements on, a cross-entropy or NLL call that PyTorch's op computes (see
#: `below_cutoff`: rows of fewer than `MIN_CLASSES` classes) raises the core's errors
#: (ValueError / IndexError naming the argument), as every call xent computes does
#: (`torch_op_with_core_errors`); below it (`unchecked`) PyTorch's own errors stand.
CHECK_MIN_ELEMENTS = 1 << 18


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


def below_cutoff(input: object, rows: bool = False) -> bool:
    """Whether PyTorch's own op computes this call by default: ``input`` is a tensor of fewer
    than `MIN_ELEMENTS` elements or, for a loss over rows of classes (``rows``: cross-entropy,
    NLL) given as ``(N, C)``, with ``C < MIN_CLASSES``. The drop-ins test it first, before any
    of their own argument handling, and call PyTorch's op with the arguments as given: it checks
    them itself, so such a call costs what PyTorch's does.

    Example:
        >>> import torch
        >>> below_cutoff(torch.zeros(32, 3)), below_cutoff(torch.zeros(1024, 1024), rows=True)
        (True, False)
    """
    if not isinstance(input, torch.Tensor):
        return False
    if input.numel() < MIN_ELEMENTS:
        return True
    return rows and MIN_ELEMENTS > 0 and input.dim() == 2 and input.shape[1] < MIN_CLASSES


def unchecked(input: torch.Tensor) -> bool:
    """Whether a call `below_cutoff` goes to PyTorch's op with PyTorch's errors: fewer than
    `CHECK_MIN_ELEMENTS` elements, or a traced / autocast call (the core cannot read traced
    values; PyTorch's autocast casts its own losses)."""
    return input.numel() < CHECK_MIN_ELEMENTS or tracing() or autocasting()


def torch_op_with_core_errors(op: Callable[[], torch.Tensor],
                              validate: Callable[[], object]) -> torch.Tensor:
    """``op()`` (PyTorch's loss on a call `below_cutoff`), raising the core's error where it
    fails: when PyTorch raises, ``validate()`` (the core's validation step of the same call)
    runs and raises its own error naming the argument; if the core finds nothing wrong,
    PyTorch's error stands. PyTorch checks everything the core would refuse on these calls, so
    a valid call costs PyTorch's time alone: validating first cost 13-28 µs timed alone and
    about 45 µs inside a training loop, 8% of PyTorch's forward+backward at 2^19 elements on the
    AMD EPYC host, over the 5% the default path may add (benchmarks/README.md)."""
    try:
        return op()
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        error = exc
    validate()  # (outside the handler: the core's error is not chained to PyTorch's)
    raise error


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's handling of the deprecated ``size_average``/``reduce`` (it warns, as torch does)."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


def tracing() -> bool:
    """Whether the call is traced or transformed: TorchScript, ``torch.compile`` /
    ``torch.export`` (`graph_capture`, where `_ops` runs), or forward-mode AD."""
    # (is_compiling first: under dynamo it is True and nothing after it is traced. TorchScript
    # never runs this Python, so torch.jit.is_scripting() is False here and is_tracing() is
    # torch._C._is_tracing(): a call per test less, on every small call.)
    return (
        torch.compiler.is_compiling()
        or torch._C._is_tracing()
        or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0  # inside dual_level()
    )


def autocasting() -> bool:
    """Whether CPU autocast is on (``torch.autocast("cpu")``): the drop-ins then run xent's
    custom operators (`_ops`), whose autocast rule casts their inputs as PyTorch's autocast
    casts its losses' (16-bit floats to float32, float64 kept)."""
    return torch.is_autocast_enabled("cpu")


def graph_capture() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` traces the call (and not TorchScript or
    forward-mode AD): there the drop-ins run xent's custom operators (`_ops`)."""
    return (
        torch.compiler.is_compiling()
        and not (torch.jit.is_scripting() or torch.jit.is_tracing())
        and getattr(torch.autograd.forward_ad, "_current_level", -1) < 0
    )


def plain_cpu(t: torch.Tensor, compiling: bool | None = None) -> bool:
    """Whether ``t`` is a plain strided CPU tensor (a fake one under ``torch.compile``), not a
    functorch wrapper. ``compiling``: `torch.compiler.is_compiling`, when the caller knows it."""
    if compiling is None:
        compiling = torch.compiler.is_compiling()
    return (
        (type(t) in _PLAIN_TYPES or (compiling and type(t) is FakeTensor))
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and (compiling  # dynamo cannot call the check (it traces functorch)
             or not torch._C._functorch.is_functorch_wrapped_tensor(t))
    )


def fast_path_ok(input: object, *others: object, small_ok: bool = False,
                 captured: bool = False, untraced: bool = False) -> bool:
    """Whether xent's kernels can compute this call: see the module docstring. Inputs of fewer
    than `MIN_ELEMENTS` elements go to PyTorch unless ``small_ok``. ``captured``: the caller
    runs xent's custom operators (`_ops`) under `graph_capture`, which then does not count as
    tracing. ``untraced``: the caller has just found `tracing` False (the test is skipped, and
    so is `torch.compiler.is_compiling`, which `tracing` includes)."""
    if not isinstance(input, torch.Tensor) or (
            not untraced and tracing() and not (captured and graph_capture())):
        return False
    if not small_ok and input.numel() < MIN_ELEMENTS:
        return False
    compiling = False if untraced else torch.compiler.is_compiling()
    dt = input.dtype
    if (dt not in _FAST_DTYPES and not (dt is torch.bfloat16 and _bfloat16_ok(compiling))) or (
            not plain_cpu(input, compiling)):
        return False
    for t in others:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not plain_cpu(t, compiling) or t.requires_grad:
            return False
    return True


def as_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (zero-copy; a copy only for negated-bit views). bfloat16,
    which NumPy lacks, is viewed as ``ml_dtypes.bfloat16`` through its int16 bits."""
    if t is None:
        return None
    if t.requires_grad:  # (each tensor method is a dispatcher call: µs on a small call)
        t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    if t.dtype == torch.bfloat16:
        bf16 = _bfloat16()
        if bf16 is None:  # (found at import, but it cannot be imported)
            raise RuntimeError("xent.torch: a bfloat16 tensor needs ml_dtypes, which cannot be "
                               "imported here")
        return t.view(torch.int16).numpy().view(bf16)
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory (a copy only when ``a`` is read-only); an
    ``ml_dtypes.bfloat16`` array becomes a torch.bfloat16 tensor through its int16 bits."""
    a = np.asarray(a)
    if not a.flags.writeable:
        a = a.copy()
    if a.dtype.kind == "V" and a.dtype == _bfloat16():  # (bfloat16's kind: V; ml_dtypes loaded)
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)



class SavedGrad(torch.autograd.Function):
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
            return SavedGrad._differentiable_grad(ctx, grad_output), None, None, None
        (grad,) = ctx.saved_tensors
        if grad_output.dim() == 0 and grad_output.item() == 1:  # (item: no tensor op)
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
        return from_numpy(out), None, None, None  # (bfloat16 too)

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


#: ``SavedGrad``'s C ``apply`` (``torch._C._FunctionBase.apply``), what
#: ``torch.autograd.Function.apply`` calls last outside functorch transforms; `run_core` calls
#: it directly there (its Python wrapper cost ~5 µs a call: a setup_context probe and a pass
#: over the arguments unwrapping dead functorch wrappers, of which the fast path's plain
#: tensors have none).
_SAVED_GRAD_APPLY = super(torch.autograd.Function, SavedGrad).apply


def wants_grad(input: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


def run_core(input: torch.Tensor, compute, class_dim: int | None, reference) -> torch.Tensor:
    """The loss of ``input`` from ``compute(grad: bool) -> (loss, grad or None)`` (NumPy arrays
    from the core, on a NumPy view of ``input``), through `SavedGrad` when autograd wants the
    gradient. ``reference(input)``: the same loss in PyTorch ops, for a double backward."""
    if not wants_grad(input):
        return from_numpy(compute(False)[0])

    def both():
        loss, grad = compute(True)
        return from_numpy(loss), from_numpy(grad)

    if torch._C._are_functorch_transforms_active():
        return SavedGrad.apply(input, both, class_dim, reference)
    return _SAVED_GRAD_APPLY(input, both, class_dim, reference)


def class_dim_for_none(input: torch.Tensor, reduction: str) -> int | None:
    return 1 if reduction == "none" and input.dim() >= 2 else None


def numpy_operand(t: torch.Tensor | None, float_dtype: np.dtype,
                  plain: bool = False) -> np.ndarray | None:
    """What the core's validation step reads of a target or weight tensor ``t``: a NumPy view of
    a CPU tensor NumPy can hold; class indices (or weights) of any other tensor copied to the
    CPU (O(N) values); a float tensor that NumPy cannot view (CUDA, bfloat16 without
    ml_dtypes, ...) as a zero-stride stand-in of its shape in ``float_dtype`` (only its shape
    and kind are checked). ``plain``: `fast_path_ok` has found ``t`` a plain CPU tensor."""
    if t is None:
        return None
    if (t.dtype in _NUMPY_VIEWABLE or (t.dtype is torch.bfloat16 and _bfloat16_ok(False))
            ) and (plain or plain_cpu(t)):  # (plain_cpu: a CPU tensor)
        return as_numpy(t)
    if t.is_floating_point() and t.dim() > 1:
        return np.broadcast_to(np.zeros((), float_dtype), tuple(t.shape))
    return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).numpy()


#: The dtypes NumPy views without ml_dtypes (bfloat16 too where it is installed).
_NUMPY_VIEWABLE = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                   torch.int16, torch.int8, torch.uint8, torch.bool)
