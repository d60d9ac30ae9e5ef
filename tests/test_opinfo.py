"""PyTorch's own test inputs, run through xent: the OpInfo entries of ``op_db`` and the
ModuleInfo entries of ``module_db`` (``torch.testing._internal``) for the operators xent implements.

For every sample input PyTorch ships (float32 and float64, as generated and made non-contiguous
by ``SampleInput.noncontiguous()``), on both backends:

* the drop-ins (``xent.torch.softmax``, ``log_softmax``, ``cross_entropy``, ``nll_loss``,
  ``binary_cross_entropy(_with_logits)``, ``linear_cross_entropy`` and the loss modules, with
  ``LinearCrossEntropyLoss`` given PyTorch's module's parameters), with the small-input cut-off
  at 0 so xent's path runs: value and the gradient of every input (and module parameter) that
  requires one (``torch.autograd.grad``) against PyTorch's own op on the same tensors;
* the NumPy functions (``xent.softmax``, ``log_softmax``, ``logsumexp``, ``sigmoid``,
  ``log_sigmoid``, ``cross_entropy``, ``nll_loss``, ``binary_cross_entropy(_with_logits)``)
  where the signature allows: value, and the gradient from ``return_grad=True`` or the
  ``*_backward`` function, against PyTorch;
* every error input (``error_inputs``, ``module_error_inputs``) must raise: any exception from a
  drop-in, ``ValueError``/``TypeError``/``IndexError`` from a NumPy function.

Tolerances are ``torch.testing.assert_close``'s defaults for the dtype. The only exceptions are the
rows of the README table "Where PyTorch and xent differ", each an explicit skip below
(``README_*``) naming its row. Failures in the cross-entropy core (the lead's area at the
time of writing) are ``xfail(strict=True)`` with what differs.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (test extra)")

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402
from torch.testing._internal.common_utils import noncontiguous_like  # noqa: E402

import xent  # noqa: E402
import xent.torch as xt  # noqa: E402

# torch's own linear_cross_entropy warns that it ignores ``options`` for some of its samples
# (probability targets with the chunked variants); the warning is about the sample, not xent.
pytestmark = pytest.mark.filterwarnings("ignore:linear_cross_entropy. ``options`` ignored")

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LAYOUTS = ("contiguous", "noncontiguous")
_NP = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

# ---------------------------------------------------------------------------------------------
# The documented differences (README.md, "Where PyTorch and xent differ"): the only exceptions.
README_OTHER_FLOAT_DTYPE = (
    "README 'Where PyTorch and xent differ': operands of another float dtype (float64 weight or "
    "target with float32 logits) - torch: error, or a float64 result; xent: cast to the input's "
    "dtype"
)


# ---------------------------------------------------------------------------------------------
# The entries


def _opinfo(name: str, variant: str = "") -> Any:
    for op in op_db:
        if op.name == name and op.variant_test_name == variant:
            return op
    raise LookupError(f"no OpInfo {name!r} variant {variant!r} in this torch")


def _moduleinfo(cls: type) -> Any:
    for m in module_db:
        if m.module_cls is cls:
            return m
    raise LookupError(f"no ModuleInfo for {cls.__name__} in this torch")


# op key -> (OpInfo name, variant)
OPS = {
    "softmax": ("softmax", ""),
    "softmax.with_dtype": ("softmax", "with_dtype"),
    "log_softmax": ("log_softmax", ""),
    "log_softmax.with_dtype": ("log_softmax", "with_dtype"),
    "logsumexp": ("logsumexp", ""),
    "sigmoid": ("sigmoid", ""),
    "logsigmoid": ("nn.functional.logsigmoid", ""),
    "cross_entropy": ("nn.functional.cross_entropy", ""),
    "nll_loss": ("nn.functional.nll_loss", ""),
    "binary_cross_entropy": ("nn.functional.binary_cross_entropy", ""),
    "binary_cross_entropy_with_logits": ("nn.functional.binary_cross_entropy_with_logits", ""),
    "linear_cross_entropy": ("nn.functional.linear_cross_entropy", ""),
    "linear_cross_entropy.chunked": ("nn.functional.linear_cross_entropy", "chunked"),
    "linear_cross_entropy.chunked_none": ("nn.functional.linear_cross_entropy", "chunked_none"),
}
DROP_INS: dict[str, Callable[..., Any]] = {
    "softmax": xt.softmax,
    "softmax.with_dtype": xt.softmax,
    "log_softmax": xt.log_softmax,
    "log_softmax.with_dtype": xt.log_softmax,
    "cross_entropy": xt.cross_entropy,
    "nll_loss": xt.nll_loss,
    "binary_cross_entropy": xt.binary_cross_entropy,
    "binary_cross_entropy_with_logits": xt.binary_cross_entropy_with_logits,
    "linear_cross_entropy": xt.linear_cross_entropy,
    "linear_cross_entropy.chunked": xt.linear_cross_entropy,
    "linear_cross_entropy.chunked_none": xt.linear_cross_entropy,
}
NUMPY_OPS = [k for k in OPS if not k.startswith("linear_cross_entropy")]
MODULES = {
    "CrossEntropyLoss": (torch.nn.CrossEntropyLoss, xt.CrossEntropyLoss),
    "NLLLoss": (torch.nn.NLLLoss, xt.NLLLoss),
    "BCELoss": (torch.nn.BCELoss, xt.BCELoss),
    "BCEWithLogitsLoss": (torch.nn.BCEWithLogitsLoss, xt.BCEWithLogitsLoss),
    "LinearCrossEntropyLoss": (torch.nn.LinearCrossEntropyLoss, xt.LinearCrossEntropyLoss),
}


@functools.cache
def _samples(key: str, kind: str, dtype: str) -> tuple[Any, ...]:
    """The OpInfo's sample (or reference) inputs, generated once under a fixed seed."""
    op = _opinfo(*OPS[key])
    gen = op.sample_inputs if kind == "sample" else op.reference_inputs
    torch.manual_seed(0)
    return tuple(gen("cpu", DTYPES[dtype], requires_grad=True))


@functools.cache
def _module_inputs(key: str, dtype: str) -> tuple[Any, ...]:
    info = _moduleinfo(MODULES[key][0])
    torch.manual_seed(0)
    return tuple(info.module_inputs_func(info, device="cpu", dtype=DTYPES[dtype],
                                         requires_grad=True, training=True))


def _sample(key: str, kind: str, dtype: str, layout: str, i: int) -> Any:
    s = _samples(key, kind, dtype)[i]
    return s.noncontiguous() if layout == "noncontiguous" else s


def _describe(s: Any) -> str:
    def d(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return "x".join(map(str, v.shape)) or "0d"
        if isinstance(v, (tuple, list)):
            return "(" + ",".join(d(a) for a in v) + ")"
        return str(v)

    parts = [d(s.input)] + [d(a) for a in s.args]
    parts += [f"{k}={d(v)}" for k, v in s.kwargs.items() if k != "options"]
    return "-".join(parts).replace(" ", "")


# Known failures in the lead's area (cross-entropy core, xent.torch): (key, kind, dtype, layout,
# index, api) -> reason. Each is xfail(strict=True), so a fix shows up as an unexpected pass.
LEAD_XFAILS: dict[tuple[str, str, str, str, int, str], str] = {}


def _cases(keys: list[str], kinds: tuple[str, ...], api: str) -> Iterator[Any]:
    for key in keys:
        for kind in kinds:
            if kind == "reference" and _opinfo(*OPS[key]).reference_inputs_func is None:
                continue
            for dtype in DTYPES:
                for i, s in enumerate(_samples(key, kind, dtype)):
                    for layout in LAYOUTS:
                        marks = []
                        why = LEAD_XFAILS.get((key, kind, dtype, layout, i, api))
                        if why is not None:
                            marks.append(pytest.mark.xfail(strict=True, reason=f"lead: {why}"))
                        yield pytest.param(
                            key, kind, dtype, layout, i, marks=marks,
                            id=f"{key}-{kind}{i:03d}-{dtype}-{layout}-{_describe(s)}")


# ---------------------------------------------------------------------------------------------
# Comparison helpers


def _tensors_needing_grad(s: Any) -> list[torch.Tensor]:
    found = [s.input, *s.args, *s.kwargs.values()]
    return [t for t in found if isinstance(t, torch.Tensor) and t.requires_grad]


def _grad_output(out: torch.Tensor) -> torch.Tensor:
    """A fixed, not all-ones cotangent of the output's shape and dtype."""
    n = max(out.numel(), 1)
    g = torch.linspace(-1.5, 2.0, n, dtype=torch.float64)[: out.numel()]
    return g.reshape(out.shape).to(out.dtype)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor) -> list[Any]:
    if not inputs or not out.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(out, inputs, g, allow_unused=True))


def _assert_close(actual: Any, expected: Any, what: str, atol: float | None = None) -> None:
    actual = torch.as_tensor(np.asarray(actual)) if not isinstance(actual, torch.Tensor) else actual
    rtol = None if atol is None else 1.3e-6
    torch.testing.assert_close(actual.detach(), expected.detach(), equal_nan=True, atol=atol,
                               rtol=rtol, msg=lambda m: f"{what}: {m}")


def _assert_grads(got: list[Any], want: list[Any], inputs: list[torch.Tensor],
                  sums_from: int | None = None) -> None:
    """The gradients agree; those from position ``sums_from`` on are sums over the batch (a
    module's parameters: ``x.T @ dz``), summed in another order than PyTorch's, so in float32
    their absolute tolerance is 1e-5 of the tensor's largest magnitude (a few float32 ulp of it)
    where an entry is small by cancellation."""
    for k, (a, b, t) in enumerate(zip(got, want, inputs, strict=True)):
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        atol = None
        if sums_from is not None and k >= sums_from and b.dtype == torch.float32 and b.numel():
            atol = 1e-5 * max(1.0, float(b.detach().abs().nan_to_num(0, 0, 0).max()))
        _assert_close(a, b, f"gradient of differentiable argument {k} {tuple(t.shape)}", atol)


@pytest.fixture(params=["numpy", pytest.param("numba", marks=pytest.mark.slow)])
def backend(request):
    """conftest's ``backend`` with the Numba half marked slow (thousands of tiny calls)."""
    if request.param == "numba":
        try:
            importlib.import_module("xent._kernels")
        except ImportError as exc:
            pytest.skip(f"the Numba kernels cannot be imported: {exc}")
    with xent.use_backend(request.param):
        yield request.param


@pytest.fixture
def fast_path():
    """xent.torch's cut-off at 0: every eligible call takes xent's path, however small."""
    with xt.min_elements(0):
        yield


# ---------------------------------------------------------------------------------------------
# (a) the drop-ins


@pytest.mark.parametrize(("key", "kind", "dtype", "layout", "i"),
                         list(_cases(list(DROP_INS), ("sample",), "drop-in")))
def test_drop_in_matches_torch_on_opinfo_samples(backend, fast_path, key, kind, dtype, layout, i):
    s = _sample(key, kind, dtype, layout, i)
    op = _opinfo(*OPS[key])
    inputs = _tensors_needing_grad(s)
    want = op.op(s.input, *s.args, **s.kwargs)
    got = DROP_INS[key](s.input, *s.args, **s.kwargs)
    _assert_close(got, want, "value")
    g = _grad_output(want)
    _assert_grads(_grads(got, inputs, g), _grads(want, inputs, g), inputs)


@functools.cache
def _error_inputs(key: str) -> tuple[Any, ...]:
    return tuple(_opinfo(*OPS[key]).error_inputs("cpu"))


def _error_cases() -> Iterator[Any]:
    # The linear_cross_entropy variants share one function and one list of error inputs.
    for key in ("linear_cross_entropy",):
        for dtype in DTYPES:
            for i, e in enumerate(_error_inputs(key)):
                marks = []
                why = LEAD_XFAILS.get((key, "error", dtype, "contiguous", i, "drop-in"))
                if why is not None:
                    marks.append(pytest.mark.xfail(strict=True, reason=f"lead: {why}"))
                yield pytest.param(key, dtype, i, marks=marks,
                                   id=f"{key}-error{i}-{dtype}-{e.error_regex[:40]}")


@pytest.mark.parametrize(("key", "dtype", "i"), list(_error_cases()))
def test_drop_in_raises_on_opinfo_error_inputs(backend, fast_path, key, dtype, i):
    e = _error_inputs(key)[i]
    dt = DTYPES[dtype]
    s = e.sample_input.transform(lambda t: t.to(dt) if t.is_floating_point() else t)
    op = _opinfo(*OPS[key])
    with pytest.raises(e.error_type):  # torch itself: this is an error input
        op.op(s.input, *s.args, **s.kwargs)
    with pytest.raises(Exception):  # noqa: B017, PT011 (any exception for drop-ins)
        DROP_INS[key](s.input, *s.args, **s.kwargs)


def _constructor_signature(m: Any) -> tuple[Any, ...]:
    """What a ModuleInfo case asks of the module's constructor: its positional arity and the
    names of its keyword arguments (the values are the functional sweep's business)."""
    c = m.constructor_input
    return len(c.args), tuple(sorted(c.kwargs))


def _module_cases(api: str) -> Iterator[Any]:
    """One ModuleInfo case per constructor signature and dtype, contiguous: a loss module's
    forward is one call of the drop-in that `test_drop_in_matches_torch_on_opinfo_samples`
    sweeps on every sample and layout, so the module sweep keeps what the module itself adds
    (its constructor's arguments, its buffers and parameters: LinearCrossEntropyLoss's
    gradients)."""
    for key in MODULES:
        for dtype in DTYPES:
            seen: set[tuple[Any, ...]] = set()
            for i, m in enumerate(_module_inputs(key, dtype)):
                sig = _constructor_signature(m)
                if sig in seen:
                    continue
                seen.add(sig)
                for layout in LAYOUTS[:1]:
                    marks = []
                    why = LEAD_XFAILS.get((key, "module", dtype, layout, i, api))
                    if why is not None:
                        marks.append(pytest.mark.xfail(strict=True, reason=f"lead: {why}"))
                    desc = m.desc if getattr(m, "desc", "") else "default"
                    yield pytest.param(key, dtype, layout, i, marks=marks,
                                       id=f"{key}-{i:03d}-{dtype}-{layout}-{desc}")


def _layout(v: Any, layout: str) -> Any:
    """``v`` (a tensor, tuple or dict of them) with every tensor made non-contiguous (same
    values, same requires_grad) for the non-contiguous layout."""
    if layout == "contiguous":
        return v
    if isinstance(v, torch.Tensor):
        return noncontiguous_like(v)
    if isinstance(v, tuple):
        return tuple(_layout(a, layout) for a in v)
    if isinstance(v, dict):
        return {k: _layout(a, layout) for k, a in v.items()}
    return v


@pytest.mark.parametrize(("key", "dtype", "layout", "i"), list(_module_cases("module")))
def test_loss_module_matches_torch_on_moduleinfo_inputs(backend, fast_path, key, dtype, layout,
                                                        i):
    m = _module_inputs(key, dtype)[i]
    ctor_args = _layout(m.constructor_input.args, layout)
    ctor_kwargs = _layout(m.constructor_input.kwargs, layout)
    args = _layout(m.forward_input.args, layout)
    kwargs = _layout(m.forward_input.kwargs, layout)
    torch_cls, xent_cls = MODULES[key]
    torch.manual_seed(i)  # the module's random parameters: the same whatever ran before
    theirs = torch_cls(*ctor_args, **ctor_kwargs)
    ours = xent_cls(*ctor_args, **ctor_kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same (random) parameters
    want = theirs(*args, **kwargs)
    got = ours(*args, **kwargs)
    _assert_close(got, want, "value")
    inputs = [t for t in (*args, *kwargs.values())
              if isinstance(t, torch.Tensor) and t.requires_grad]
    g = _grad_output(want)
    # the gradients of the inputs, then of each module's own parameters (LinearCrossEntropyLoss)
    mine, ref = [*inputs, *ours.parameters()], [*inputs, *theirs.parameters()]
    _assert_grads(_grads(got, mine, g), _grads(want, ref, g), ref, sums_from=len(inputs))


@pytest.mark.parametrize(("key", "dtype", "layout", "i"), list(_module_cases("state")))
def test_loss_module_state_and_repr_match_torch(key, dtype, layout, i):
    """What a module adds to its function: the constructor's arguments held as PyTorch holds
    them (buffers, parameters, attributes), the same state_dict (loadable both ways) and the
    same extra_repr."""
    m = _module_inputs(key, dtype)[i]
    torch_cls, xent_cls = MODULES[key]
    torch.manual_seed(i)
    theirs = torch_cls(*m.constructor_input.args, **m.constructor_input.kwargs)
    ours = xent_cls(*m.constructor_input.args, **m.constructor_input.kwargs)
    assert isinstance(ours, torch_cls)
    assert ours.extra_repr() == theirs.extra_repr()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    for name in ("reduction", "ignore_index", "label_smoothing"):
        assert getattr(ours, name, None) == getattr(theirs, name, None), name


def _module_error_cases() -> Iterator[Any]:
    for key, (torch_cls, _) in MODULES.items():
        info = _moduleinfo(torch_cls)
        if info.module_error_inputs_func is None:
            continue
        errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                               requires_grad=True, training=True)
        for i, e in enumerate(errors):
            marks = []
            if key == "NLLLoss" and e.error_regex.startswith("expected scalar type"):
                marks.append(pytest.mark.skip(reason=README_OTHER_FLOAT_DTYPE))
            why = LEAD_XFAILS.get((key, "module-error", "float64", "contiguous", i, "module"))
            if why is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=f"lead: {why}"))
            yield pytest.param(key, i, marks=marks, id=f"{key}-error{i}-{e.error_regex[:40]}")


@functools.cache
def _module_errors(key: str) -> tuple[Any, ...]:
    info = _moduleinfo(MODULES[key][0])
    torch.manual_seed(0)
    return tuple(info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                               requires_grad=True, training=True))


@pytest.mark.parametrize(("key", "i"), list(_module_error_cases()))
def test_loss_module_raises_on_moduleinfo_error_inputs(backend, fast_path, key, i):
    e = _module_errors(key)[i]
    m = e.module_error_input
    torch_cls, xent_cls = MODULES[key]
    ctor = (m.constructor_input.args, m.constructor_input.kwargs)
    fwd = (m.forward_input.args, m.forward_input.kwargs)
    if e.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(e.error_type):
            torch_cls(*ctor[0], **ctor[1])
        with pytest.raises(Exception):  # noqa: B017, PT011 (any exception for drop-ins)
            xent_cls(*ctor[0], **ctor[1])
        return
    with pytest.raises(e.error_type):
        torch_cls(*ctor[0], **ctor[1])(*fwd[0], **fwd[1])
    with pytest.raises(Exception):  # noqa: B017, PT011 (any exception for drop-ins)
        xent_cls(*ctor[0], **ctor[1])(*fwd[0], **fwd[1])
    # The NumPy function with the same arguments raises one of its documented types.
    numpy_fn = {"CrossEntropyLoss": xent.cross_entropy, "NLLLoss": xent.nll_loss}.get(key)
    if numpy_fn is not None:
        x, t = (a.detach().numpy() for a in fwd[0])
        kw = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in ctor[1].items()}
        with pytest.raises((ValueError, TypeError, IndexError)):
            numpy_fn(x, t, **kw)


# ---------------------------------------------------------------------------------------------
# (b) the NumPy functions


def _np(t: Any) -> Any:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t


def _np_dtype(d: Any) -> Any:
    return None if d is None else _NP[d]


def _numpy_call(key: str, s: Any, g: torch.Tensor) -> tuple[Any, Any]:
    """(value, dL/d input or None) from the NumPy API for OpInfo sample ``s``, cotangent g."""
    x = _np(s.input)
    go = _np(g)
    kw = dict(s.kwargs)
    if key.startswith(("softmax", "log_softmax")):
        name = key.split(".")[0]
        (dim,) = s.args
        y = getattr(xent, name)(x, axis=dim, dtype=_np_dtype(kw.pop("dtype", None)))
        assert not kw
        # dtype=d casts x to d first: the chain rule through that cast casts the gradient back.
        return y, getattr(xent, name + "_backward")(go, y, axis=dim).astype(x.dtype)
    if key == "logsumexp":
        dim, keepdim = s.args
        return xent.logsumexp(x, axis=dim, keepdims=keepdim), None  # no logsumexp_backward
    if key == "sigmoid":
        y = xent.sigmoid(x)
        return y, xent.sigmoid_backward(go, y)
    if key == "logsigmoid":
        return xent.log_sigmoid(x), xent.log_sigmoid_backward(go, x)
    fn = {"cross_entropy": xent.cross_entropy, "nll_loss": xent.nll_loss,
          "binary_cross_entropy": xent.binary_cross_entropy,
          "binary_cross_entropy_with_logits": xent.binary_cross_entropy_with_logits}[key]
    (target,) = s.args
    kw = {k: _np(v) for k, v in kw.items()}
    return fn(x, _np(target), **kw, return_grad=True, grad_output=go)


@pytest.mark.parametrize(("key", "kind", "dtype", "layout", "i"),
                         list(_cases(NUMPY_OPS, ("sample", "reference"), "numpy")))
def test_numpy_function_matches_torch_on_opinfo_samples(backend, key, kind, dtype, layout, i):
    s = _sample(key, kind, dtype, layout, i)
    op = _opinfo(*OPS[key])
    # torch differentiates a fresh leaf of the same values (some reference inputs are expanded
    # views, stride 0, that autograd does not reach); xent gets the sample's own layout.
    x = s.input.detach().clone().requires_grad_(s.input.requires_grad)
    want = op.op(x, *s.args, **s.kwargs)
    g = _grad_output(want)
    value, grad = _numpy_call(key, s, g)
    # The README's sigmoid row (torch's float32 sigmoid is 0 below -88.7, xent's exact) shows
    # in four float32 reference inputs only below assert_close's atol: no adjustment needed.
    _assert_close(value, want, "value")
    if grad is not None and x.requires_grad:
        (want_grad,) = torch.autograd.grad(want, x, g)
        _assert_close(grad, want_grad, "gradient of the input")
