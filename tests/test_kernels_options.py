"""The option kernels (``xent._kernels._options``: soft-cap, z-loss, log-sum-exp) against the
torch-op row math of ``xent.torch._rows`` (backend "numpy" forces it) and against float64
PyTorch composites; non-finite rows; and that the kernel path is really taken."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xent
import xent.torch as xt
from xent.torch import _rows

pytest.importorskip("numba")
import xent._kernels as kernels  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
INF, NAN = float("inf"), float("nan")


@pytest.fixture
def calls(monkeypatch):
    """Counts calls of the two kernels (a test using it fails if the torch ops ran instead)."""
    count = {"ce_index_options": 0, "ce_prob_options": 0}
    for name in count:
        real = getattr(kernels, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            count[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)
    return count


def _case(dtype, m, C, seed, nonfinite=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, C, generator=g, dtype=torch.float64).mul_(4).to(dtype)
    t = torch.randint(0, C, (m,), generator=g)
    y = torch.rand(m, C, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    if nonfinite and m >= 8:
        z[0, C // 2] = NAN  # NaN
        z[1, C - 1] = INF  # +inf
        z[2, :] = -INF  # all -inf
        z[3, 0] = -INF  # finite row with a -inf (at class 0 and maybe the target)
        t[3] = 0
        z[4, C // 3] = INF  # +inf in an ignored row
        z[4, 0] = -INF
        t[4] = -100
        z[5, :] = NAN
        z[5, 1:] = -INF  # NaN among -inf
        z[6, C // 2] = -INF  # -inf in an ignored row
        t[6] = -100
    return z, t, y, w


def _run(backend, fn, z, *args):
    z = z.clone()
    with xent.use_backend(backend):
        out = fn(z, *args)
    return (*out, z)


def _assert_same(ours, ref, dtype, **tol):
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {k}"
        if a.dtype == torch.bool:
            assert torch.equal(a, b), f"output {k}"
            continue
        torch.testing.assert_close(a, b, equal_nan=True, **(tol or TOL[dtype]),
                                   msg=lambda msg, k=k: f"output {k}: {msg}")


SHAPES = [(1, 1), (5, 1), (9, 7), (8, 2048), (3, 5000)]  # 5000 > _BLOCK: three blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize(("eps", "zscale"), [(0.0, 0.0), (0.0, 0.01), (0.1, 0.01)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scales", ["none", "0-d", "per-row"])
def test_index_kernel_matches_torch_ops(calls, dtype, shape, cap, eps, zscale, weighted, scales):
    m, C = shape
    z, t, _, w = _case(dtype, m, C, seed=m * 31 + C, nonfinite=True)
    t[:: 3] = -100  # some ignored rows
    w = w if weighted else None
    sce = sz = None
    if scales == "0-d":
        sce, sz = torch.tensor(0.25, dtype=dtype), torch.tensor(0.5, dtype=dtype)
    elif scales == "per-row":
        sce = torch.linspace(0.1, 1.0, m, dtype=dtype)
        sz = torch.linspace(1.0, 2.0, m, dtype=dtype)
    args = (t, w, -100, eps, zscale, cap, sce, sz)
    ours = _run("numba", _rows.rows_index, z, *args)
    assert calls["ce_index_options"] == 1
    ref = _run("numpy", _rows.rows_index, z, *args)
    assert calls["ce_index_options"] == 1
    _assert_same(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize(("eps", "zscale"), [(0.0, 0.0), (0.0, 0.01), (0.1, 0.01)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scales", ["none", "0-d", "per-row"])
def test_prob_kernel_matches_torch_ops(calls, dtype, shape, cap, eps, zscale, weighted, scales):
    m, C = shape
    z, _, y, w = _case(dtype, m, C, seed=m * 17 + C, nonfinite=True)
    w = w if weighted else None
    sce = sz = None
    if scales == "0-d":
        sce, sz = torch.tensor(0.25, dtype=dtype), torch.tensor(0.5, dtype=dtype)
    elif scales == "per-row":
        sce = torch.linspace(0.1, 1.0, m, dtype=dtype)
        sz = torch.linspace(1.0, 2.0, m, dtype=dtype)
    args = (y, w, eps, zscale, cap, sce, sz)
    ours = _run("numba", _rows.rows_prob, z, *args)
    assert calls["ce_prob_options"] == 1
    ref = _run("numpy", _rows.rows_prob, z, *args)
    _assert_same(ours, ref, dtype)


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_src_copies_the_logits_in_row_by_row(calls, prob, backend):
    """With ``src`` the block's contents are ignored: the same results, bit for bit, as copying
    the logits into it first, on the kernel and on the torch ops; the logits are not touched."""
    dtype, m, C = torch.float32, 37, 3000
    z, t, y, w = _case(dtype, m, C, seed=5, nonfinite=True)
    t[::4] = -100
    sce = torch.linspace(0.1, 1.0, m, dtype=dtype)
    sz = torch.full((m,), 0.5, dtype=dtype)
    fn, target = (_rows.rows_prob, y) if prob else (_rows.rows_index, t)
    args = (target, w) + (() if prob else (-100,)) + (0.1, 0.01, 3.0, sce, sz)
    logits = z.clone()
    copied = z.clone()
    garbage = torch.full_like(z, float("nan"))
    with xent.use_backend(backend):
        want = fn(copied, *args)
        got = fn(garbage, *args, src=logits)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(garbage, copied, rtol=0, atol=0, equal_nan=True)  # the gradients
    torch.testing.assert_close(logits, z, rtol=0, atol=0, equal_nan=True)
    kernel = "ce_prob_options" if prob else "ce_index_options"
    assert calls[kernel] == (2 if backend == "numba" else 0)


@pytest.mark.parametrize("cap", [None, 3.0])
def test_non_finite_rows_give_what_the_torch_ops_give(calls, cap):
    """Spelled out: NaN/inf land where rows_index puts them (torch.logsumexp's conventions)."""
    z = torch.tensor([[0.0, NAN, 1.0], [0.0, INF, 1.0], [-INF, -INF, -INF], [0.0, -INF, 1.0]])
    t = torch.tensor([0, 0, 0, 1])
    sc = torch.tensor(1.0)
    ce, lse, valid, g = _run("numba", _rows.rows_index, z, t, None, -100, 0.0, 0.0, cap, sc, sc)
    ref = _run("numpy", _rows.rows_index, z, t, None, -100, 0.0, 0.0, cap, sc, sc)
    _assert_same((ce, lse, valid, g), ref, torch.float32)
    assert calls["ce_index_options"] == 1
    assert ce[0].isnan() and lse[0].isnan() and g[0].isnan().all()
    if cap is None:
        assert lse[1] == INF and lse[2] == -INF
        assert ce[1] == INF and ce[2].isnan()  # inf - 0; -inf - (-inf)
        assert ce[3] == INF and lse[3].isfinite()  # the target is the -inf entry
        assert g[1, 1].isnan() and g[1, 0] == -1.0 and g[1, 2] == 0.0
    else:  # the cap makes every infinity finite
        assert ce[1:].isfinite().all() and lse[1:].isfinite().all() and g[1:].isfinite().all()


def test_every_row_ignored(calls):
    z, t, _, w = _case(torch.float32, 6, 300, seed=3)
    t[:] = -100
    sc = torch.tensor(0.5)
    ours = _run("numba", _rows.rows_index, z, t, w, -100, 0.1, 0.01, 5.0, sc, sc)
    assert calls["ce_index_options"] == 1
    ref = _run("numpy", _rows.rows_index, z, t, w, -100, 0.1, 0.01, 5.0, sc, sc)
    _assert_same(ours, ref, torch.float32)
    assert (ours[0] == 0).all() and (ours[3] == 0).all() and not ours[2].any()
    torch.testing.assert_close(ours[1], torch.logsumexp(5.0 * torch.tanh(z / 5.0), 1))


def test_forward_only_caps_in_place_like_the_torch_ops(calls):
    z, t, y, _ = _case(torch.float64, 4, 3000, seed=5)
    ours = _run("numba", _rows.rows_index, z, t, None, -100, 0.1, 0.0, 2.0, None, None)
    ref = _run("numpy", _rows.rows_index, z, t, None, -100, 0.1, 0.0, 2.0, None, None)
    _assert_same(ours, ref, torch.float64)
    ours = _run("numba", _rows.rows_prob, z, y, None, 0.0, 0.0, 2.0, None, None)
    ref = _run("numpy", _rows.rows_prob, z, y, None, 0.0, 0.0, 2.0, None, None)
    _assert_same(ours, ref, torch.float64)
    assert calls == {"ce_index_options": 1, "ce_prob_options": 1}


def _composite(x, target, w, eps, cap):
    """(CE_i, lse_i) of cap·tanh(x/cap) in PyTorch ops (the autograd reference)."""
    zc = x if cap is None else cap * torch.tanh(x / cap)
    ce = F.cross_entropy(zc, target, w, reduction="none", label_smoothing=eps)
    return ce, torch.logsumexp(zc, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("C", [1, 33, 4500])
def test_kernel_against_float64_pytorch(calls, dtype, prob, C):
    m = 12
    z, t, y, w = _case(dtype, m, C, seed=C)
    t[::4] = -100
    eps, zscale, cap = 0.1, 0.02, 4.0
    sce = torch.linspace(0.5, 1.5, m, dtype=dtype)
    sz = torch.linspace(1.0, 3.0, m, dtype=dtype)
    x64 = z.double().requires_grad_(True)
    target = y.double() if prob else t
    ce64, lse64 = _composite(x64, target, w.double(), eps, cap)
    valid = torch.ones(m, dtype=torch.float64) if prob else (t != -100).double()
    # d/dz of Σ sce·ce + sz·zscale·lse² (valid rows only).
    total = (sce.double() * ce64 + sz.double() * zscale * lse64 ** 2 * valid).sum()
    (g64,) = torch.autograd.grad(total, x64)
    with xent.use_backend("numba"):
        zk = z.clone()
        if prob:
            ce, lse = _rows.rows_prob(zk, y, w, eps, zscale, cap, sce, sz)
        else:
            ce, lse, _ = _rows.rows_index(zk, t, w, -100, eps, zscale, cap, sce, sz)
    assert sum(calls.values()) == 1
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ce.double(), ce64.detach(), **tol)
    torch.testing.assert_close(lse.double(), lse64.detach(), **tol)
    torch.testing.assert_close(zk.double(), g64, **tol)


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options_take_the_kernel_and_match_torch(calls, prob, reduction):
    z, t, y, w = _case(torch.float32, 64, 2500, seed=11)
    t[::5] = -100
    target = y if prob else t
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.05, lse_square_scale=1e-3,
              softcap=20.0, return_lse=True)
    out = {}
    for backend in ("numba", "numpy"):
        x = z.clone().requires_grad_(True)
        with xent.use_backend(backend):
            loss, lse = xt.cross_entropy(x, target, **kw)
        loss.sum().backward()
        out[backend] = (loss.detach(), lse, x.grad)
    assert calls["ce_prob_options" if prob else "ce_index_options"] == 1
    _assert_same(out["numba"], out["numpy"], torch.float32, rtol=2e-5, atol=1e-5)


def test_linear_cross_entropy_takes_the_kernel_per_chunk(calls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g, dtype=torch.float64)
    W = torch.randn(3000, 16, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3000, (40,), generator=g)
    grads = {}
    for backend in ("numba", "numpy"):
        xx, WW = x.clone().requires_grad_(True), W.clone().requires_grad_(True)
        with xent.use_backend(backend):
            loss = xt.linear_cross_entropy(xx, WW, t, lse_square_scale=1e-3, softcap=15.0,
                                           chunk_size=16)
        loss.backward()
        grads[backend] = (loss.detach(), xx.grad, WW.grad)
    assert calls["ce_index_options"] == 3  # 40 rows in chunks of 16
    _assert_same(grads["numba"], grads["numpy"], torch.float64)


def test_numpy_backend_and_other_inputs_use_the_torch_ops(calls):
    z, t, _, _ = _case(torch.float32, 4, 10, seed=1)
    sc = torch.tensor(1.0)
    with xent.use_backend("numpy"):
        _rows.rows_index(z.clone(), t, None, -100, 0.0, 0.01, None, sc, sc)
    with xent.use_backend("numba"):
        _rows.rows_index(z.clone()[:, ::2], t % 5, None, -100, 0.0, 0.01, None, sc, sc)
        _rows.rows_index(z.clone().bfloat16(), t, None, -100, 0.0, 0.01, None, None, None)
    assert calls == {"ce_index_options": 0, "ce_prob_options": 0}
