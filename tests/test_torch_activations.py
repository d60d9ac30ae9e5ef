"""xent.torch.softmax / log_softmax against torch.nn.functional's: values and gradients for
every dim, float32/float64, non-contiguous input, ``dtype=``, the small-input cut-off, double
backward and the errors PyTorch raises."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt
from helpers import spy

OPS = {"softmax": (xt.softmax, F.softmax), "log_softmax": (xt.log_softmax, F.log_softmax)}
DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def calls(monkeypatch):
    """Labels of the core functions the drop-ins called (proves xent's path ran)."""
    seen: list[str] = []
    spy(monkeypatch, [(xent, n, n) for n in ("softmax", "log_softmax", "softmax_backward",
                                             "log_softmax_backward")], seen.append)
    return seen


def _value_and_grad(fn, x, dim, g, **kw):
    leaf = x.detach().clone().requires_grad_(True) if x.is_contiguous() else x
    y = fn(leaf, dim, **kw)
    (gx,) = torch.autograd.grad(y, leaf, g)
    return y.detach(), gx


def _noncontiguous(x):
    """Same values, every stride changed: a transposed copy viewed back."""
    return x.detach().transpose(0, -1).contiguous().transpose(0, -1).requires_grad_(True)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 9), (4, 6, 5), (3, 4, 2, 5)])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_every_dim_matches_torch(calls, name, dtype, shape, layout):
    ours, theirs = OPS[name]
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    if layout == "noncontiguous":
        x = _noncontiguous(x)
        assert len(shape) == 1 or not x.is_contiguous()
    with xt.min_elements(0):
        for dim in range(-len(shape), len(shape)):
            go = torch.randn(shape, generator=g, dtype=dtype)
            calls.clear()
            y, gx = _value_and_grad(ours, x, dim, go)
            assert calls == [name, name + "_backward"], f"dim={dim}: xent's path did not run"
            ry, rgx = _value_and_grad(theirs, x, dim, go)
            torch.testing.assert_close(y, ry, msg=lambda m, d=dim: f"value dim={d}: {m}")
            torch.testing.assert_close(gx, rgx, msg=lambda m, d=dim: f"grad dim={d}: {m}")
            assert y.dtype == dtype and gx.dtype == dtype


@pytest.mark.parametrize("name", list(OPS))
def test_default_cut_off(calls, name):
    ours, theirs = OPS[name]
    small = torch.randn(4, 5, requires_grad=True)
    assert small.numel() < xt.get_min_elements()
    torch.testing.assert_close(ours(small, 1), theirs(small, 1))
    assert calls == [], "a small input should run PyTorch's op by default"
    n = -(-xt.get_min_elements() // 320)  # at the cut-off; softmax along an inner dim
    big = torch.randn(n, 8, 40, requires_grad=True)
    assert big.numel() >= xt.get_min_elements()
    go = torch.randn_like(big)
    y, gx = _value_and_grad(ours, big, 1, go)
    assert calls == [name, name + "_backward"]
    ry, rgx = _value_and_grad(theirs, big, 1, go)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(gx, rgx)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize(("in_dtype", "dtype"), [(torch.float32, torch.float64),
                                                 (torch.float64, torch.float32),
                                                 (torch.float16, torch.float32),
                                                 (torch.bfloat16, torch.float64)])
def test_dtype_casts_before_the_op(calls, name, in_dtype, dtype):
    ours, theirs = OPS[name]
    x = (torch.randn(6, 7, dtype=torch.float64) * 4).to(in_dtype)
    go = torch.randn(6, 7, dtype=dtype)
    with xt.min_elements(0):
        y, gx = _value_and_grad(ours, x, 0, go, dtype=dtype)
    assert calls == [name, name + "_backward"]
    ry, rgx = _value_and_grad(theirs, x, 0, go, dtype=dtype)
    assert y.dtype == dtype and gx.dtype == in_dtype
    torch.testing.assert_close(y, ry)
    # The gradient was computed in ``dtype``: compare at the coarser of the two precisions.
    low = min(in_dtype, dtype, key=lambda d: torch.finfo(d).eps * -1)
    torch.testing.assert_close(gx.to(low), rgx.to(low))


@pytest.mark.parametrize("name", list(OPS))
def test_dim_none_is_pytorchs_legacy_choice_with_its_warning(name):
    ours, theirs = OPS[name]
    with xt.min_elements(0):
        for shape in [(5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)]:
            x = torch.randn(shape, dtype=torch.float64)
            with pytest.warns(UserWarning, match="Implicit dimension choice") as rec:
                y = ours(x)
            assert rec[0].filename == __file__, "the warning should point at the caller"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.testing.assert_close(y, theirs(x))


def test_signature_is_torchs():
    for name, (ours, theirs) in OPS.items():
        a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        assert list(a) == list(b), name
        assert all(a[k].default == b[k].default and a[k].kind == b[k].kind for k in a), name


@pytest.mark.parametrize("name", list(OPS))
def test_scalar_empty_and_nonfinite_slices(name):
    ours, theirs = OPS[name]
    inf = float("inf")
    x = torch.tensor([[0.0, -inf, 1.0], [-inf, -inf, -inf], [inf, 0.0, 1.0], [2.0, 2.0, 2.0]])
    with xt.min_elements(0):
        torch.testing.assert_close(ours(x, 1), theirs(x, 1), equal_nan=True)
        s = torch.tensor(1.5, requires_grad=True)
        for d in (0, -1):
            torch.testing.assert_close(ours(s, d), theirs(s, d))
        e = torch.empty(0, 3)
        assert ours(e, 1).shape == (0, 3)


@pytest.mark.parametrize("name", list(OPS))
def test_double_backward_matches_torch(name):
    ours, theirs = OPS[name]
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    with xt.min_elements(0):
        assert torch.autograd.gradgradcheck(lambda a: ours(a, 1), (x,))
        v = torch.randn(4, 5, dtype=torch.float64)

        def hvp(fn):
            (g,) = torch.autograd.grad((fn(x, 0) * v).sum() ** 2, x, create_graph=True)
            return torch.autograd.grad(g.sum(), x)[0]

        torch.testing.assert_close(hvp(ours), hvp(theirs))


def test_no_grad_and_inputs_that_do_not_require_grad(calls):
    x = torch.randn(3, 4)
    with xt.min_elements(0):
        assert xt.softmax(x, 1).grad_fn is None
        with torch.no_grad():
            y = xt.log_softmax(x.requires_grad_(True), 0)
    assert y.grad_fn is None and calls == ["softmax", "log_softmax"]
    torch.testing.assert_close(y, F.log_softmax(x, 0))


def test_output_modified_in_place_is_caught_by_autograd():
    x = torch.randn(3, 4, requires_grad=True)
    with xt.min_elements(0):
        y = xt.softmax(x, 1)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("call", [
    lambda f: f(torch.randn(3, 4), 2),  # dim out of range: IndexError
    lambda f: f(torch.randn(3, 4), -3),
    lambda f: f(torch.tensor(1.0), 1),
    lambda f: f(torch.randn(3, 4), 0.5),  # not an int: TypeError
    lambda f: f(torch.arange(6).reshape(2, 3), 1),  # integers: NotImplementedError
    lambda f: f(torch.randn(3, 4), 1, dtype=torch.int64),
    lambda f: f([1.0, 2.0], 0),  # not a tensor
])
def test_errors_are_pytorchs(name, call):
    ours, theirs = OPS[name]
    with pytest.raises(Exception) as want:  # noqa: PT011 (whatever PyTorch raises)
        call(theirs)
    with xt.min_elements(0), pytest.raises(type(want.value)) as got:
        call(ours)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [1, 0])
def test_16_bit_input_is_as_close_to_float64_as_pytorchs(calls, name, dtype, dim):
    """16-bit input on the kernels (read as it is, computed in float32, rounded once): value and
    gradient as close to float64 (on the same 16-bit values) as PyTorch's own, within 1% of its
    error (both round one float32 result; the gradient's sums run in another order, measured
    up to 0.3% apart either way)."""
    ours, theirs = OPS[name]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(48, 300, generator=g) * 4).to(dtype)
    go = torch.randn(48, 300, generator=g, dtype=torch.float64)
    truth = _value_and_grad(theirs, x.double(), dim, go)
    ref = _value_and_grad(theirs, x, dim, go.to(dtype))
    with xt.min_elements(0):
        got = _value_and_grad(ours, x, dim, go.to(dtype))
    assert calls == [name, name + "_backward"]

    def err(a, e):
        return ((a.double() - e).norm() / e.norm()).item()

    for what, a, r, e in zip(("value", "gradient"), got, ref, truth, strict=True):
        assert a.dtype == dtype
        assert err(a, e) <= err(r, e) * 1.01, (what, err(a, e), err(r, e))
