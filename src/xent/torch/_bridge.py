"""The zero-copy bridge between torch tensors and xent's NumPy core, and the argument handling
every route shares.

`normalise_*` turn what xent accepts and PyTorch's op does not (integer targets of any width,
float operands of another dtype) into what both take, so that every route (`_route.plan`) gets
the same arguments; `problem_for` is the core's validation step on tensors; `torch_op` runs
PyTorch's op (16-bit input in float32) and, where it raises, raises the core's error for the
same mistake; `as_numpy` / `from_numpy` share memory with the tensors; `SavedGrad` is the
`torch.autograd.Function` that hands the gradient the core computed in the forward pass to
``backward``; `run_core` wires a core call into it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import _reduction as _Reduction

from xent import _buffers, _validation
from xent._problem import Options, Problem, cross_entropy_problem

from ._route import bfloat16_ok, plain_cpu


def compute_dtype(t: torch.Tensor) -> np.dtype:
    """The NumPy dtype the core computes ``t``'s call in (float32 for the 16-bit floats)."""
    return _F64 if t.dtype == torch.float64 else _F32


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_HALF = (torch.float16, torch.bfloat16)


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's handling of the deprecated ``size_average``/``reduce`` (it warns, as torch does)."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


# -- the arguments every route gets ---------------------------------------------------------------

def normalise_index(target: Any) -> Any:
    """Class indices of any integer dtype as int64 (what PyTorch's losses take); anything else
    as it is (the validation step judges it)."""
    if (isinstance(target, torch.Tensor) and target.dtype is not torch.int64
            and not target.is_floating_point() and not target.is_complex()
            and target.dtype is not torch.bool):
        return target.to(torch.int64)
    return target


def normalise_float(input: Any, t: Any) -> Any:
    """A real operand ``t`` (a weight, a probability or BCE target; float, integer or bool) in
    ``input``'s dtype: xent computes in the input's dtype and casts its other operands to it, as
    the core does (README, "Where PyTorch and xent differ"); PyTorch's ops refuse such a call."""
    if (isinstance(t, torch.Tensor) and isinstance(input, torch.Tensor)
            and t.dtype is not input.dtype and input.is_floating_point() and not t.is_complex()):
        return t.to(input.dtype)
    return t


def normalise_class_operands(input: Any, target: Any, weight: Any) -> tuple[Any, Any]:
    """``(target, weight)`` of a cross-entropy / NLL call: indices as int64, probabilities and
    weights in the input's dtype."""
    if weight is None and type(target) is torch.Tensor and target.dtype is torch.int64:
        return target, None  # (the usual call, at the cost of three tests)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        target = normalise_float(input, target)
    else:
        target = normalise_index(target)
    return target, normalise_float(input, weight)


def torch_op(op: Callable[..., torch.Tensor], validate: Callable[[], object],
             input: torch.Tensor, *operands: Any, **kwargs: Any) -> torch.Tensor:
    """`_route.Route.TORCH`: ``op(input, *operands, **kwargs)``, PyTorch's op on the normalised
    arguments, with two things of xent's.

    - 16-bit input is computed as xent computes it: in float32 (the operands of the input's
      dtype too), the result rounded once to the input's dtype (PyTorch's CPU losses round
      their intermediate results to 16 bits); the gradient flows back through the casts.
    - Where PyTorch raises, ``validate()`` (the core's validation step of the same call) runs and
      raises its own error naming the argument, not chained to PyTorch's; if the core finds
      nothing wrong, PyTorch's error stands. A valid call costs PyTorch's time alone:
      validating first cost 13-28 µs timed alone and about 45 µs inside a training loop, 8% of
      PyTorch's forward+backward at 2^19 elements on the AMD EPYC host (benchmarks/README.md).
    """
    try:
        if input.dtype not in _HALF:
            return op(input, *operands, **kwargs)
        up = [t.float() if isinstance(t, torch.Tensor) and t.dtype is input.dtype else t
              for t in operands]
        return op(input.float(), *up, **kwargs).to(input.dtype)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        error = exc
    validate()  # (outside the handler: the core's error is not chained to PyTorch's)
    raise error


def problem_for(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
    reduction: str, options: Options | None = None, *, fn: str = "cross_entropy",
    probabilities: bool = True, shape: tuple[int, ...] | None = None,
) -> Problem:
    """The core's validation step for a call on tensors (logits of ``shape``, default
    ``input``'s)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    dt = compute_dtype(input)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    return cross_entropy_problem(
        tuple(input.shape) if shape is None else shape, dt,
        numpy_operand(target, dt), numpy_operand(weight, dt),
        ignore_index, reduction, options, fn=fn, probabilities=probabilities)


# -- NumPy views ----------------------------------------------------------------------------------

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
        bf16 = _validation.bfloat16()
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
    if a.dtype.kind == "V" and a.dtype == _validation.bfloat16():  # (bfloat16: kind V)
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
        if ctx.class_dim is not None and grad_output.dim() > 0:
            grad_output = grad_output.unsqueeze(ctx.class_dim)
        if not (plain_cpu(grad_output) and plain_cpu(grad)):
            # CUDA, or batched gradients (``is_grads_batched=True``, ``jacobian(vectorize=
            # True)``, batched gradcheck: legacy vmap over this backward): torch ops only
            return grad * grad_output, None, None, None
        if grad_output.dim() == 0 and grad_output.item() == 1:  # (item: no tensor op)
            # The usual `loss.backward()`: hand the saved gradient over as it is. Unless the
            # graph is retained, autograd has released our reference by the time it
            # accumulates, so it takes the buffer without a copy.
            return grad, None, None, None
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


def numpy_operand(t: torch.Tensor | None, float_dtype: np.dtype) -> np.ndarray | None:
    """What the core's validation step reads of a target or weight tensor ``t``: a NumPy view of
    a CPU tensor NumPy can hold; class indices (or weights) of any other tensor copied to the
    CPU (O(N) values); a float tensor that NumPy cannot view (CUDA, bfloat16 without
    ml_dtypes, ...) as a zero-stride stand-in of its shape in ``float_dtype`` (only its shape
    and kind are checked)."""
    if t is None:
        return None
    if (t.dtype in _NUMPY_VIEWABLE or (t.dtype is torch.bfloat16 and bfloat16_ok())
            ) and plain_cpu(t):
        return as_numpy(t)
    if t.is_floating_point() and t.dim() > 1:
        return np.broadcast_to(np.zeros((), float_dtype), tuple(t.shape))
    return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).numpy()


#: The dtypes NumPy views without ml_dtypes (bfloat16 too where it is installed).
_NUMPY_VIEWABLE = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                   torch.int16, torch.int8, torch.uint8, torch.bool)
