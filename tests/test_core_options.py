"""The cross-entropy options in the core (z-loss, soft-capping, lse): ``xent.cross_entropy``
on both backends against the same loss composed from float64 PyTorch ops
(``xent.torch._reference``), and every entry point (NumPy core, the torch drop-in with and
without options, linear and vocabulary-parallel cross-entropy) rejecting the same bad input
through the one validation step. The reproducers of issue 9 are tests named after the bug."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch
import torch.distributed as dist

import xent
import xent.torch as xt
from helpers import spy
from xent.torch import _reference

INF, NAN = float("inf"), float("nan")
TOL = {np.float32: dict(rtol=2e-4, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    if request.param == "numba":
        pytest.importorskip("numba")
    with xent.use_backend(request.param):
        yield request.param


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the kernels' ce_index/ce_prob calls (a test fails if NumPy ran instead)."""
    pytest.importorskip("numba")
    import xent._kernels as kernels

    count: collections.Counter = collections.Counter()
    spy(monkeypatch, [(kernels, n, n) for n in ("ce_index", "ce_prob")],
        lambda n: count.update((n,)))
    return count


def _case(shape, seed, nonfinite=False):
    g = np.random.default_rng(seed)
    x = g.standard_normal(shape) * 4
    C = shape[1] if len(shape) > 1 else shape[0]
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    t = g.integers(0, C, tshape)
    if t.size > 2:
        t.reshape(-1)[2] = -100
    y = g.random(shape)
    w = g.random(C) + 0.5
    if nonfinite and len(shape) == 2 and shape[0] >= 8:
        x[0, C // 2] = NAN
        x[1, C - 1] = INF
        x[2, :] = -INF
        x[3, 0] = -INF
        t[3] = 0  # a -inf target logit in a finite row: inf loss, as PyTorch
        x[4, C // 3] = INF  # +inf in an ignored row: 0
        t[4] = -100
        x[5, :] = -INF
        x[5, 0] = NAN  # NaN among -inf
    return x, t, y, w


def _torch_reference(x, target, w, reduction, eps, zscale, cap, go):
    """Loss, lse and dL/dx from the PyTorch-ops composition in float64."""
    xt64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(target)
    wt = None if w is None else torch.tensor(w, dtype=torch.float64)
    loss, lse = _reference.cross_entropy(xt64, tt, wt, -100, reduction, eps, zscale, cap, True)
    g = torch.ones_like(loss) if go is None else torch.tensor(go, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, xt64, g)
    return loss.detach().numpy(), lse.numpy(), grad.numpy()


SHAPES = [(1, 1), (5, 1), (9, 7), (8, 2048), (3, 5000), (6,), (4, 5, 3)]  # 5000: three blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("cap,zscale", [(None, 1e-2), (3.0, 0.0), (3.0, 1e-2)])
@pytest.mark.parametrize("eps,weighted,reduction", [
    (0.1, True, "mean"), (0.1, False, "sum"), (0.0, True, "none")])
def test_options_match_the_torch_composition(backend, dtype, shape, prob, cap, zscale, eps,
                                             weighted, reduction):
    x, t, y, w = _case(shape, seed=len(shape) + shape[0])
    target = y if prob else t
    w = w if weighted else None
    go = None
    if reduction == "none":
        go = np.random.default_rng(1).random(shape[:1] + shape[2:] if len(shape) > 1 else ())
    ref = _torch_reference(x, target, w, reduction, eps, zscale, cap, go)
    ours = xent.cross_entropy(x.astype(dtype), target, None if w is None else w.astype(dtype),
                              reduction=reduction, label_smoothing=eps, lse_square_scale=zscale,
                              softcap=cap, return_lse=True, return_grad=True, grad_output=go)
    for name, a, b in zip(("loss", "lse", "grad"), ours, ref, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("zscale", [0.0, 1e-2])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_non_finite_rows_give_the_definitions_values(backend, cap, zscale, eps):
    """NaN, +inf and all -inf rows: NaN loss and gradient where the composition has them; its
    logsumexp (nan, inf, -inf) as lse; ignored rows contribute exactly 0, z-loss and gradient
    included (PyTorch's gradient there is nan·0 = nan: a documented difference)."""
    x, t, _, w = _case((12, 7), seed=3, nonfinite=True)
    ref = _torch_reference(x, t, w, "none", eps, zscale, cap, None)
    ref[2][t == -100] = 0
    ours = xent.cross_entropy(x, t, w, reduction="none", label_smoothing=eps,
                              lse_square_scale=zscale, softcap=cap, return_lse=True,
                              return_grad=True)
    for name, a, b in zip(("loss", "lse", "grad"), ours, ref, strict=True):
        np.testing.assert_allclose(a, b, err_msg=name, equal_nan=True, rtol=1e-10, atol=1e-12)
    assert ours[0][4] == 0 and not ours[2][4].any()  # the ignored row with a +inf


def test_zloss_with_an_inf_logit_is_nan_as_the_definition():
    """Issue 9: the option kernel gave inf where the PyTorch-ops definition gives nan."""
    x = np.zeros((4, 5))
    x[1, 2] = INF
    for backend in ("numpy", "numba"):
        with xent.use_backend(backend):
            loss = xent.cross_entropy(x, [0, 1, 2, 3], lse_square_scale=1e-4, reduction="none")
        assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2, 3]]).all(), backend


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("cap", [None, 5.0])
def test_inplace_with_options(backend, prob, cap):
    x, t, y, _ = _case((6, 300), seed=5)
    target = y if prob else t
    kw = dict(lse_square_scale=1e-3, softcap=cap, label_smoothing=0.1, return_grad=True)
    loss, grad = xent.cross_entropy(x, target, **kw)
    buf = x.copy()
    loss2, grad2 = xent.cross_entropy(buf, target, inplace=True, **kw)
    assert grad2 is buf
    np.testing.assert_allclose(loss2, loss, rtol=1e-12)
    np.testing.assert_allclose(grad2, grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("opts", [dict(softcap=30.0), dict(lse_square_scale=1e-4),
                                  dict(return_lse=True), dict()])
def test_large_calls_with_options_run_the_kernel(kernel_calls, prob, opts):
    x, t, y, w = _case((64, 2048), seed=6)
    with xent.use_backend("auto"):
        xent.cross_entropy(x.astype(np.float32), y if prob else t, w.astype(np.float32), **opts,
                           return_grad=True)
    assert kernel_calls["ce_prob" if prob else "ce_index"] == 1


# ---------------------------------------------------------------------------------------------
# One validation step for every entry point.
# ---------------------------------------------------------------------------------------------
N, C = 6, 200


def _entry_points():
    """name -> f(logits (N, C) float32 tensor, target, **kwargs) for every cross-entropy
    entry point: the same bad input must raise the same exception type in each."""
    def core(z, t, **k):
        return xent.cross_entropy(z.numpy(), t.numpy(), **{
            a: (b.numpy() if isinstance(b, torch.Tensor) else b) for a, b in k.items()})

    def drop_in(z, t, **k):
        with xt.min_elements(0):
            return xt.cross_entropy(z.requires_grad_(), t, **k)

    def drop_in_large(z, t, **k):  # 4096x200: past the cut-off with its default value
        reps = 4096 // N + 1
        t2 = t.repeat(reps, *([1] * (t.dim() - 1)))[:4096]
        return xt.cross_entropy(z.repeat(reps, 1)[:4096].requires_grad_(), t2, **k)

    def linear(z, t, **k):  # logits = z @ I: the same problem through linear_cross_entropy
        ii = k.pop("ignore_index", None)
        return xt.linear_cross_entropy(z.requires_grad_(), torch.eye(C), t, ignore_index=ii,
                                       **k)

    def parallel(z, t, **k):
        return xt.vocab_parallel_cross_entropy(z.requires_grad_(), t, vocab_start=0,
                                               vocab_size=C, **k)

    def parallel_linear(z, t, **k):
        return xt.vocab_parallel_linear_cross_entropy(z.requires_grad_(), torch.eye(C), t,
                                                      vocab_start=0, vocab_size=C, **k)

    return {"core": core, "drop-in": drop_in, "drop-in 4096x200": drop_in_large,
            "linear": linear, "vocab-parallel": parallel, "vocab-parallel linear": parallel_linear}


@pytest.fixture(scope="module")
def process_group():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield
        dist.destroy_process_group()
    else:
        yield


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=g), torch.randint(0, C, (N,), generator=g)


w_full = torch.rand(C) + 0.5
BAD = {  # kwargs -> the exception every entry point must raise
    "weight too short (issue 9: -1.6e12)": (dict(weight=w_full[:150]), ValueError),
    "weight 2-D": (dict(weight=w_full.reshape(2, 100)), ValueError),
    "label_smoothing 1.5": (dict(label_smoothing=1.5), ValueError),
    "label_smoothing -0.1": (dict(label_smoothing=-0.1), ValueError),
    "label_smoothing nan": (dict(label_smoothing=NAN), ValueError),
    "label_smoothing str": (dict(label_smoothing="0.1"), TypeError),
    "softcap inf": (dict(softcap=INF), ValueError),
    "softcap 0": (dict(softcap=0.0), ValueError),
    "softcap -1": (dict(softcap=-1.0), ValueError),
    "softcap nan": (dict(softcap=NAN), ValueError),
    "softcap str": (dict(softcap="30"), TypeError),
    "lse_square_scale inf": (dict(lse_square_scale=INF), ValueError),
    "lse_square_scale nan": (dict(lse_square_scale=NAN), ValueError),
    "reduction": (dict(reduction="avg"), ValueError),
    "return_lse not a bool": (dict(return_lse="yes"), TypeError),
}
COMBOS = [dict(), dict(softcap=30.0), dict(lse_square_scale=1e-4), dict(return_lse=True)]
TARGET_BAD = {
    "target out of range": (lambda t: t.clone().index_fill_(0, torch.tensor([1]), C), IndexError),
    "target negative": (lambda t: t.clone().index_fill_(0, torch.tensor([1]), -3), IndexError),
    "target too short": (lambda t: t[:4], ValueError),
    "target float of the wrong shape": (lambda t: t.double(), TypeError),
}


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("bad", list(BAD), ids=str)
@pytest.mark.parametrize("entry", list(_entry_points()))
def test_every_entry_point_rejects_bad_arguments(process_group, entry, bad, combo):
    kwargs, exc = BAD[bad]
    kwargs = {**combo, **kwargs}
    if entry.startswith("vocab-parallel") and "weight" in kwargs and kwargs["weight"].dim() == 1:
        pytest.skip("the parallel forms take this rank's slice of the weight (any length fits "
                    "a shard of that length: covered by the 2-D case)")
    z, t = _inputs()
    with pytest.raises(exc) as info:
        _entry_points()[entry](z, t, **kwargs)
    name = next(iter(BAD[bad][0]))
    assert name in str(info.value) or exc is ValueError and "reduction" in str(info.value)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("bad", list(TARGET_BAD), ids=str)
@pytest.mark.parametrize("entry", list(_entry_points()))
def test_every_entry_point_rejects_bad_targets(process_group, entry, bad, combo):
    make, exc = TARGET_BAD[bad]
    z, t = _inputs()
    if entry.startswith("vocab-parallel") and exc is TypeError:
        exc = TypeError  # float targets: the parallel forms take class indices only
    with pytest.raises(exc, match="target"):
        _entry_points()[entry](z, make(t), **combo)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("entry", ["core", "drop-in", "drop-in 4096x200", "linear"])
def test_ignore_index_with_probabilities_is_an_error(entry, combo):
    """Issue 9: ignore_index=0 with probability targets was silently ignored on the option
    and linear paths (PyTorch's linear_cross_entropy raises for it)."""
    z, _ = _inputs()
    y = torch.softmax(torch.randn(N, C), 1)
    if entry == "drop-in 4096x200":
        z, y = z.repeat(700, 1), y.repeat(700, 1)
    with pytest.raises(ValueError, match="ignore_index"):
        _entry_points()[entry](z, y, ignore_index=0, **combo)


def test_valid_calls_agree_across_entry_points(process_group):
    z, t = _inputs()
    t[3] = -100
    kw = dict(weight=w_full, label_smoothing=0.1, lse_square_scale=1e-3, softcap=8.0)
    ref = _reference.cross_entropy(z.double(), t, w_full.double(), -100, "mean", 0.1, 1e-3, 8.0,
                                   False)
    for name, fn in _entry_points().items():
        if name == "drop-in 4096x200":
            continue
        kwargs = dict(kw)
        if name.startswith("vocab-parallel"):
            kwargs["weight"] = w_full  # one rank holds every class
        loss = fn(z.clone(), t, **kwargs)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
        assert float(loss) == pytest.approx(float(ref), rel=1e-5), name


@pytest.mark.parametrize("ls", list(itertools.product([0.0, 1.0], [None, 2.0])))
def test_smoothing_bounds_are_accepted(ls):
    eps, cap = ls
    z, t = _inputs()
    loss = xent.cross_entropy(z.numpy(), t.numpy(), label_smoothing=eps, softcap=cap)
    ref = _reference.cross_entropy(z.double(), t, None, -100, "mean", eps, 0.0, cap, False)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
