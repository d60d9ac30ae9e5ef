"""The same call behaves the same at every size (issue "One route through xent.torch").

Each case runs at (8, 5) and (64, 300), which PyTorch's op computes (`Route.TORCH`), and at
(512, 2048) and (4096, 4096), which xent's core computes (`Route.CORE`): it gives the same
result (checked against PyTorch in float64 on the normalised call: int64 targets, operands in
the input's dtype) or raises the same exception type with the core's message at every size.
The two large sizes run the kernels and are marked slow.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import xent.torch as xt  # noqa: E402
from xent.torch import _route  # noqa: E402

SIZES = [(8, 5), (64, 300),
         pytest.param((512, 2048), marks=pytest.mark.slow),
         pytest.param((4096, 4096), marks=pytest.mark.slow)]


def _route_of(n: int, c: int) -> _route.Route:
    return _route.plan(torch.empty(n, c), rows=True)


def test_the_sizes_take_both_routes():
    """The premise: the small sizes run PyTorch's op, the large ones xent's core."""
    assert [_route_of(*s) for s in [(8, 5), (64, 300), (512, 2048), (4096, 4096)]] == [
        _route.Route.TORCH, _route.Route.TORCH, _route.Route.CORE, _route.Route.CORE]


def _data(n: int, c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, requires_grad=True)
    t = torch.randint(0, c, (n,), generator=g)
    return x, t


def _check(ours, x, ref_fn):
    """``ours`` (a loss of ``x``) and its gradient against ``ref_fn(x64)`` in float64."""
    (g,) = torch.autograd.grad(ours, x)
    x64 = x.detach().double().requires_grad_(True)
    ref = ref_fn(x64)
    (g64,) = torch.autograd.grad(ref, x64)
    tol = dict(rtol=2e-5, atol=1e-6) if x.dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(ours.detach().double(), ref.detach(), **tol)
    torch.testing.assert_close(g.double(), g64, **tol)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_cross_entropy_and_nll_take_integer_targets_of_any_width(size, dtype):
    n, c = size
    x, t = _data(n, c)
    t = t % min(c, 200)  # (uint8 holds 0..255)
    _check(xt.cross_entropy(x, t.to(dtype)), x, lambda z: F.cross_entropy(z, t))
    logp = torch.log_softmax(x, 1)
    ours = xt.nll_loss(logp, t.to(dtype))
    _check(ours, x, lambda z: F.nll_loss(torch.log_softmax(z, 1), t))


@pytest.mark.parametrize("size", SIZES)
def test_cross_entropy_and_nll_cast_a_float64_weight_to_the_input_dtype(size):
    n, c = size
    x, t = _data(n, c)
    w = torch.rand(c, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    _check(xt.cross_entropy(x, t, weight=w), x, lambda z: F.cross_entropy(z, t, w.float().double()))
    _check(xt.nll_loss(x, t, weight=w), x, lambda z: F.nll_loss(z, t, w.float().double()))


@pytest.mark.parametrize("size", SIZES)
def test_cross_entropy_casts_float64_probabilities_to_the_input_dtype(size):
    n, c = size
    x, _ = _data(n, c)
    y = torch.softmax(torch.randn(n, c, dtype=torch.float64), 1)
    _check(xt.cross_entropy(x, y), x, lambda z: F.cross_entropy(z, y.float().double()))


@pytest.mark.parametrize("size", SIZES)
def test_a_weight_of_the_wrong_length_is_the_cores_value_error(size):
    n, c = size
    x, t = _data(n, c)
    with pytest.raises(ValueError, match=rf"weight must have shape \({c},\), one value per class"):
        xt.cross_entropy(x, t, weight=torch.ones(c + 1))
    with pytest.raises(ValueError, match=rf"weight must have shape \({c},\)"):
        xt.nll_loss(x, t, weight=torch.ones(c - 1))


@pytest.mark.parametrize("size", SIZES)
def test_an_out_of_bounds_target_is_the_cores_index_error(size):
    n, c = size
    x, t = _data(n, c)
    t[n // 2] = c
    msg = rf"target {c} at position \({n // 2},\) is out of bounds for {c} classes"
    with pytest.raises(IndexError, match=msg):
        xt.cross_entropy(x, t)
    with pytest.raises(IndexError, match=msg):
        xt.nll_loss(x, t)


@pytest.mark.parametrize("size", SIZES)
def test_probabilities_of_another_batch_size_are_a_value_error(size):
    n, c = size
    x, _ = _data(n, c)
    y = torch.softmax(torch.randn(n + 1, c), 1)
    with pytest.raises(ValueError, match=rf"Expected input batch_size \({n}\) to match target "
                                         rf"batch_size \({n + 1}\)"):
        xt.cross_entropy(x, y)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ignore_index", [-1, 0])
def test_ignore_index_with_probabilities_is_refused(size, ignore_index):
    """PyTorch ignores a negative ignore_index with probability targets and raises on a
    non-negative one; xent refuses both, at every size."""
    n, c = size
    x, _ = _data(n, c)
    y = torch.softmax(torch.randn(n, c), 1)
    with pytest.raises(ValueError, match="ignore_index"):
        xt.cross_entropy(x, y, ignore_index=ignore_index)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_0_1_is_refused(size, eps):
    n, c = size
    x, t = _data(n, c)
    with pytest.raises(ValueError, match="label_smoothing"):
        xt.cross_entropy(x, t, label_smoothing=eps)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.float64, torch.bool])
def test_binary_losses_cast_targets_to_the_input_dtype(size, target_dtype):
    n, c = size
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n, c, generator=g, requires_grad=True)
    y = torch.randint(0, 2, (n, c), generator=g)
    y_typed = y.to(target_dtype)
    _check(xt.binary_cross_entropy_with_logits(z, y_typed), z,
           lambda u: F.binary_cross_entropy_with_logits(u, y.double()))
    p = torch.sigmoid(z.detach()).requires_grad_(True)
    _check(xt.binary_cross_entropy(p, y_typed), p,
           lambda u: F.binary_cross_entropy(u, y.double()))


@pytest.mark.parametrize("size", SIZES)
def test_binary_cross_entropy_refuses_targets_outside_0_1(size):
    """PyTorch's op does not check its target's values; xent does, at every size."""
    n, c = size
    p = torch.full((n, c), 0.5)
    y = torch.zeros(n, c)
    y[n - 1, c - 1] = 1.5
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\], got 1.5"):
        xt.binary_cross_entropy(p, y)
    p[0, 0] = -0.5
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        xt.binary_cross_entropy(p, torch.zeros(n, c))


@pytest.mark.parametrize("size", SIZES)
def test_a_binary_target_of_another_shape_is_a_value_error(size):
    n, c = size
    z = torch.randn(n, c)
    with pytest.raises(ValueError, match="target must have the input's shape"):
        xt.binary_cross_entropy_with_logits(z, torch.zeros(n, c + 1))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_logits_are_computed_in_float32(size, dtype):
    """At every size a 16-bit call is the float32 call rounded once (PyTorch's own CPU loss
    rounds its intermediate results to 16 bits)."""
    if dtype not in _route.fast_dtypes():
        pytest.skip("bfloat16 needs ml_dtypes")
    n, c = size
    x32, t = _data(n, c)
    x = x32.detach().to(dtype).requires_grad_(True)
    loss = xt.cross_entropy(x, t)
    (g,) = torch.autograd.grad(loss, x)
    xf = x.detach().float().requires_grad_(True)
    ref = F.cross_entropy(xf, t)
    (gf,) = torch.autograd.grad(ref, xf)
    assert loss.dtype == dtype and g.dtype == dtype
    torch.testing.assert_close(loss, ref.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(g, gf.to(dtype), rtol=0, atol=torch.finfo(dtype).eps * 1e-3)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_softmax_with_dtype_is_the_same_at_every_size(size, name, dtype):
    """``dtype=`` casts before the operation; an integer dtype is PyTorch's error."""
    n, c = size
    x, _ = _data(n, c)
    ours, ref = getattr(xt, name), getattr(F, name)
    if not dtype.is_floating_point:
        with pytest.raises(RuntimeError):
            ours(x, 1, dtype=dtype)
        return
    y = ours(x, 1, dtype=dtype)
    assert y.dtype == dtype
    y_ref = ref(x.detach().to(dtype).float(), 1).to(dtype)
    tol = dict(rtol=0, atol=0) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    if dtype == torch.float64:
        y_ref = ref(x.detach().double(), 1)
        tol = dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(y.detach(), y_ref, **tol)
    (g,) = torch.autograd.grad(y.float().sum() if name == "softmax" else y[:, 0].float().sum(), x)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
