"""The Numba kernels (``xent._kernels``): values against PyTorch in float64, the online max/sum
across blocks, non-finite rows, safety against bad targets, in-place mode, memory, the dispatch
point, lazy import and the on-disk cache.

The conformance suites (``tests/test_core_*.py``) run every public function on both backends; the
tests here aim at what is particular to the kernels. Skipped without Numba.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

import xent  # noqa: E402
from helpers import assert_close  # noqa: E402
from xent import _backend_numpy, _dispatch  # noqa: E402
from xent import _kernels as K  # noqa: E402

BLOCK = 2048  # xent._kernels._rows._BLOCK: rows longer than this take the online path
SHAPES = [(1, 1), (3, 4), (5, 7), (2, BLOCK), (4, BLOCK + 1), (3, 3 * BLOCK + 17), (64, 300)]


def torch_ce(x, t, weight=None, ignore_index=-100, eps=0.0, row_scale=None, prob=False):
    """Per-row loss and the gradient of Σ_i row_scale_i·loss_i, from torch in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    tt = torch.tensor(t, dtype=torch.float64) if prob else torch.tensor(t, dtype=torch.int64)
    loss = F.cross_entropy(
        xt, tt, weight=w, ignore_index=ignore_index, label_smoothing=eps, reduction="none"
    )
    scale = torch.ones(x.shape[0], dtype=torch.float64) if row_scale is None else row_scale
    (loss * torch.as_tensor(scale, dtype=torch.float64)).sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


def random_rows(shape, dtype, seed=0, spread=4.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * spread).astype(dtype)


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_ce_index_matches_torch(shape, dtype, weighted, eps):
    M, C = shape
    rng = np.random.default_rng(1)
    x = random_rows(shape, dtype)
    t = rng.integers(0, C, M)
    if M > 2:
        t[1] = -100  # an ignored row
    w = rng.uniform(0.2, 2.0, C).astype(dtype) if weighted else None
    scale = rng.uniform(0.5, 1.5, M).astype(dtype)
    want_loss, want_grad = torch_ce(x.astype(np.float64), t, w, eps=eps, row_scale=scale)
    for mode in ("forward", "grad", "inplace"):
        xx = x.copy()
        g = None if mode == "forward" else (xx if mode == "inplace" else np.empty_like(x))
        loss = K.ce_index(xx, t, w, -100, eps, 0.0, None, scale, None, g)[0]
        assert_close(loss, want_loss.astype(dtype), context=f"loss {mode}")
        if mode != "forward":
            assert_close(g, want_grad.astype(dtype), context=f"grad {mode}")
        if mode == "inplace":
            assert g is xx


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_ce_prob_matches_torch(shape, dtype, eps):
    M, C = shape
    rng = np.random.default_rng(2)
    x = random_rows(shape, dtype)
    y = rng.dirichlet(np.ones(C), M).astype(dtype)
    w = rng.uniform(0.2, 2.0, C).astype(dtype)
    scale = np.full(M, 1.0 / M, dtype)
    want_loss, want_grad = torch_ce(
        x.astype(np.float64), y.astype(np.float64), w, eps=eps, row_scale=scale, prob=True
    )
    for mode in ("forward", "grad", "inplace"):
        xx = x.copy()
        g = None if mode == "forward" else (xx if mode == "inplace" else np.empty_like(x))
        loss = K.ce_prob(xx, y, w, eps, 0.0, None, scale, None, g)[0]
        assert_close(loss, want_loss.astype(dtype), context=f"loss {mode}")
        if mode != "forward":
            assert_close(g, want_grad.astype(dtype), context=f"grad {mode}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family_matches_torch(shape, dtype, op):
    x = random_rows(shape, dtype, seed=3, spread=10.0)
    want = getattr(torch, op)(torch.tensor(x, dtype=torch.float64), dim=1).numpy().astype(dtype)
    out = np.empty_like(x)
    assert getattr(K, op)(x, out) is out
    assert_close(out, want, context=op)
    xx = x.copy()
    getattr(K, op)(xx, xx)  # in place
    assert_close(xx, want, context=f"{op} in place")


def test_online_max_rescales_earlier_blocks():
    """The max grows block after block, so every block's exps are rescaled at the end."""
    C = 5 * BLOCK + 3
    x = np.linspace(-30.0, 60.0, C).reshape(1, C)
    x = np.concatenate([x, x[:, ::-1], np.where(np.arange(C) % BLOCK == 7, 50.0, -50.0)[None]])
    t = np.array([C - 1, 0, 7])
    want_loss, want_grad = torch_ce(x, t)
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        g = np.empty_like(xd)
        loss = K.ce_index(xd, t, None, -100, 0.0, 0.0, None, np.ones(3, dtype), None, g)[0]
        assert_close(loss, want_loss.astype(dtype))
        assert_close(g, want_grad.astype(dtype))
        p = K.softmax(xd, np.empty_like(xd))
        assert_close(p, torch.softmax(torch.tensor(x), 1).numpy().astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [3, 3 * BLOCK + 5])
def test_nonfinite_rows_follow_torch(dtype, C):
    """NaN or +inf anywhere (also in a late block), all -inf, and -inf blocks before the max.

    Also negative NaNs (sign bit set, as x86 makes 0·inf), which the kernels' integer-key max
    skips: in a finite row, hidden in a block of -inf before the max, and beside -inf only.
    """
    neg_nan = np.copysign(np.nan, -1.0)
    rows = np.zeros((11, C))
    rows[0, -1] = np.nan
    rows[1, -2] = np.inf
    rows[2, :] = -np.inf
    rows[3, : C // 2 + 1] = -np.inf  # leading -inf entries, finite max later
    rows[4, 0] = -np.inf
    rows[5, 1] = np.nan
    rows[5, 0] = -np.inf
    rows[6, :] = np.linspace(-1, 1, C)
    rows[7, C // 2] = neg_nan
    rows[8, : C // 2 + 1] = -np.inf
    rows[8, 1] = neg_nan  # in the first block, whose max is -inf (or in the row's only block)
    rows[9, :] = -np.inf
    rows[9, -1] = neg_nan
    rows[10, :] = -0.0
    rows[10, -1] = 0.0
    x = rows.astype(dtype)
    assert np.signbit(x[7, C // 2]) and np.isnan(x[7, C // 2])  # the cast kept the sign
    t = np.array([0, 0, 0, C - 1, 0, 2, 1, 0, C - 1, 0, 1])
    want_loss, want_grad = torch_ce(x.astype(np.float64), t)
    g = np.empty_like(x)
    loss = K.ce_index(x, t, None, -100, 0.0, 0.0, None, np.ones(11, dtype), None, g)[0]
    assert_close(loss, want_loss.astype(dtype))
    assert_close(g, want_grad.astype(dtype))
    for op in ("softmax", "log_softmax"):
        want = getattr(torch, op)(torch.tensor(x, dtype=torch.float64), 1).numpy()
        assert_close(getattr(K, op)(x, np.empty_like(x)), want.astype(dtype), context=op)


def test_large_logit_offsets_lose_nothing():
    """Shifted coordinates: (x - m) - log s, never x - (m + log s), also under fast-math."""
    for dtype in (np.float32, np.float64):
        x = np.array([[1e8, 1e8], [1e4 + 1, 1e4]], dtype=dtype)
        want = torch.log_softmax(torch.tensor(x.astype(np.float64)), 1).numpy()
        assert_close(K.log_softmax(x, np.empty_like(x)), want.astype(dtype))
        loss = K.ce_index(x, np.array([0, 1]), None, -100, 0.3, 0.0, None, np.ones(2, dtype), None,
                          None)[0]
        want_loss, _ = torch_ce(x.astype(np.float64), np.array([0, 1]), eps=0.3)
        assert_close(loss, want_loss.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_logits_matches_the_numpy_backend(dtype):
    rng = np.random.default_rng(4)
    M, Kc = 33, 70
    x = (rng.standard_normal((M, Kc)) * 8).astype(dtype)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    y = rng.uniform(0, 1, (M, Kc)).astype(dtype)
    cases = [
        (None, None, np.full((M, Kc), 0.1, dtype)),
        (rng.uniform(0.5, 2, Kc).astype(dtype), rng.uniform(0.5, 3, Kc).astype(dtype), 1.0),
        (rng.uniform(0.5, 2, (M, 1)).astype(dtype), None, rng.uniform(0, 1, (M, Kc)).astype(dtype)),
    ]
    for weight, pos_weight, scale in cases:
        sc = np.broadcast_to(np.asarray(scale, dtype), (M, Kc))
        wb = None if weight is None else np.broadcast_to(weight, (M, Kc))
        pb = None if pos_weight is None else np.broadcast_to(pos_weight, (M, Kc))
        g_ref = np.empty((M, Kc), dtype)
        ref = _backend_numpy.bce_logits(x, y, wb, pb, sc, g_ref)
        g = np.empty((M, Kc), dtype)
        got = K.bce_logits(x, y, wb, pb, sc, g)
        assert_close(got, ref)
        assert_close(g, g_ref)


# ------------------------------------------------------------------------------------------------
# Safety: validation happens before any kernel, and the kernels never index out of bounds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5, -1, -101, 2**40, -(2**62), np.iinfo(np.int64).max])
def test_bad_targets_raise_before_any_kernel_runs(bad):
    x = random_rows((4, 5), np.float32)
    before = x.copy()
    t = np.array([0, 1, bad, 2])
    with xent.use_backend("numba"), pytest.raises((IndexError, ValueError)):
        xent.cross_entropy(x, t, return_grad=True, inplace=True)
    np.testing.assert_array_equal(x, before)  # nothing ran in place


def test_kernel_called_directly_with_bad_targets_stays_in_bounds():
    """Not reachable through the public API; the kernel still never reads or writes outside.

    x and the gradient are the middle rows of larger buffers whose guard rows must not change.
    """
    C = 6
    xbuf = np.full((7, C), 123.0, np.float32)
    gbuf = np.full((7, C), 7.0, np.float32)
    xbuf[1:6] = random_rows((5, C), np.float32)
    x, g = xbuf[1:6], gbuf[1:6]
    t = np.array([C, -1, 2**62, -(2**62), 3])
    for grad in (g, x):  # into a buffer, and in place
        loss = K.ce_index(x, t, None, -100, 0.0, 0.0, None, np.ones(5, np.float32), None, grad)[0]
        assert np.isnan(loss[:4]).all() and np.isfinite(loss[4])
        assert np.isnan(grad[:4]).all() and np.isfinite(grad[4]).all()
    for buf in (xbuf, gbuf):
        assert (buf[0] == buf[0, 0]).all() and (buf[6] == buf[0, 0]).all()


@pytest.mark.parametrize("layout", ["transposed", "strided", "fortran", "k-dim"])
def test_non_contiguous_and_transposed_inputs(layout):
    rng = np.random.default_rng(5)
    base = random_rows((6, 40), np.float32)
    if layout == "transposed":
        x, axis_kw = base.T, {}  # (40, 6): rows are columns of base
    elif layout == "strided":
        x, axis_kw = base[::2, ::3], {}
    elif layout == "fortran":
        x, axis_kw = np.asfortranarray(base), {}
    else:
        x, axis_kw = base.reshape(2, 3, 40).transpose(0, 2, 1), {}  # (N, C, d) with C = 40
    C = x.shape[1]
    t = rng.integers(0, C, (x.shape[0],) + x.shape[2:])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(xt, torch.tensor(t), label_smoothing=0.1)
    ref.backward()
    with xent.use_backend("numba"):
        loss, grad = xent.cross_entropy(x, t, label_smoothing=0.1, return_grad=True, **axis_kw)
        p = xent.softmax(x, axis=1)
    assert_close(loss, ref.detach().numpy().astype(np.float32))
    assert_close(grad, xt.grad.numpy().astype(np.float32))
    assert_close(p, torch.softmax(torch.tensor(x, dtype=torch.float64), 1).numpy().astype("f4"))


# ------------------------------------------------------------------------------------------------
# In place and memory
# ------------------------------------------------------------------------------------------------
def test_inplace_writes_the_gradient_into_the_logits():
    x = random_rows((8, 3000), np.float32)
    t = np.arange(8) * 300
    with xent.use_backend("numba"):
        loss, grad = xent.cross_entropy(x.copy(), t, label_smoothing=0.05, return_grad=True)
        buf = x.copy()
        loss2, grad2 = xent.cross_entropy(
            buf, t, label_smoothing=0.05, return_grad=True, inplace=True
        )
    assert grad2 is buf or np.shares_memory(grad2, buf)
    assert_close(loss2, loss)
    assert_close(grad2, grad)


def _peak_extra_bytes(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak - base


def test_loss_plus_gradient_allocates_only_the_gradient():
    """Peak extra memory (NumPy allocations, the kernels' included) for loss + gradient."""
    M, C = 256, 4096
    x = random_rows((M, C), np.float32)
    t = np.arange(M) % C
    with xent.use_backend("numba"):
        xent.cross_entropy(x[:2].copy(), t[:2], return_grad=True)  # compile outside the trace
        xent.cross_entropy(x[:2].copy(), t[:2], return_grad=True, inplace=True)
        extra = _peak_extra_bytes(lambda: xent.cross_entropy(x, t, return_grad=True))
        buf = x.copy()
        extra_inplace = _peak_extra_bytes(
            lambda: xent.cross_entropy(buf, t, return_grad=True, inplace=True)
        )
    assert extra <= 1.1 * x.nbytes, f"{extra / x.nbytes:.2f}x the logits"
    assert extra_inplace <= 0.02 * x.nbytes, f"in place: {extra_inplace / x.nbytes:.3f}x"


# ------------------------------------------------------------------------------------------------
# Dispatch, lazy import, cache
# ------------------------------------------------------------------------------------------------
def test_forced_backends_pick_the_module():
    dt = np.dtype(np.float32)
    with xent.use_backend("numba"):
        assert _dispatch.backend_for("ce_index", 1, 1, dt) is K
    with xent.use_backend("numpy"):
        assert _dispatch.backend_for("ce_index", 10**6, 10**6, dt) is _backend_numpy
    with xent.use_backend("auto"):
        assert _dispatch.backend_for("ce_index", 4096, 32768, dt) is K
        assert _dispatch.backend_for("softmax", 3, 3, dt) is _backend_numpy


def test_auto_runs_short_rows_on_numpy_while_the_kernels_would_use_one_thread():
    """Rows of few classes: NumPy below the kernels' thread threshold (SINGLE_THREAD_ELEMENTS),
    the kernels above it and from AUTO_MIN_COLS_BY_OP classes on (the measurement behind it:
    benchmarks/README.md)."""
    for dt in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)):
        with xent.use_backend("auto"):
            for op, by_storage in _dispatch.AUTO_MIN_COLS_BY_OP.items():
                cols = by_storage[dt.itemsize == 2]
                assert _dispatch.backend_for(op, 65536, cols - 1, dt) is _backend_numpy, op
                assert _dispatch.backend_for(op, 65536, cols, dt) is K, op
                assert _dispatch.backend_for(op, 1 << 20, cols - 1, dt) is K, op
            assert _dispatch.backend_for("bce_logits", 65536, 3, dt) is K
        with xent.use_backend("numba"):
            assert _dispatch.backend_for("ce_index", 65536, 3, dt) is K


def _run(code: str, **env) -> str:
    full_env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_xent_does_not_import_numba():
    out = _run(
        """
        import sys, numpy as np, xent
        xent.softmax(np.ones((3, 3)))
        xent.cross_entropy(np.ones((3, 3)), np.array([0, 1, 2]), return_grad=True)
        print('numba' in sys.modules)
        """
    )
    assert out.strip() == "False"


def test_env_var_forces_the_backend():
    out = _run(
        """
        import sys, numpy as np, xent
        from xent import _dispatch
        print(xent.get_backend(), _dispatch.backend_for('ce_index', 9999, 9999, np.dtype('f4'))
              .__name__, 'numba' in sys.modules)
        """,
        XENT_BACKEND="numpy",
    )
    assert out.split() == ["numpy", "xent._backend_numpy", "False"]


def test_compiled_kernels_are_cached_on_disk(tmp_path):
    """Only the first process on a machine compiles; the next loads the machine code from disk."""
    code = """
        import numpy as np, xent
        from xent._kernels import _rows
        with xent.use_backend('numba'):
            xent.softmax(np.ones((3, 3), np.float32))
        stats = _rows.ROWWISE_ROWS[False, False].stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
        """
    first = _run(code, NUMBA_CACHE_DIR=str(tmp_path)).split()
    assert list(tmp_path.rglob("*.nbi")), "no Numba cache index was written"
    assert first == ["0", "1"], first  # compiled, then saved
    second = _run(code, NUMBA_CACHE_DIR=str(tmp_path)).split()
    assert second == ["1", "0"], second  # loaded from the cache, not compiled


def test_row_blocks_cover_every_row_once_and_errors_reach_the_caller():
    from xent._kernels._threads import run_rows

    seen = []

    def record(lo, hi):
        seen.extend(range(lo, hi))

    run_rows(record, 1001, 4096, ())  # above the threshold: several threads
    assert sorted(seen) == list(range(1001))

    def fail(lo, hi):
        if lo > 0:
            raise RuntimeError("block failed")

    with pytest.raises(RuntimeError, match="block failed"):
        run_rows(fail, 1001, 4096, ())
