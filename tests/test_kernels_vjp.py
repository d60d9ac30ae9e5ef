"""The fused vector-Jacobian products of softmax and log_softmax (``xent._kernels``
``softmax_backward`` / ``log_softmax_backward`` and their ``_kdim`` forms) against PyTorch's
float64 autograd: rows longer than the kernels' blocks, the ``(A, C, B)`` layout with narrowed
and ragged tiles, float32/float64/16-bit storage, non-finite values, outputs that overlap an
input, and the dispatch that sends the public functions to them. Skipped without Numba.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import xent  # noqa: E402
from helpers import assert_close, spy  # noqa: E402
from xent import _backend_numpy, _dispatch  # noqa: E402
from xent import _kernels as K  # noqa: E402
from xent._validation import bfloat16  # noqa: E402

OPS = ("softmax", "log_softmax")
ROWS = [(1, 1), (3, 4), (5, 7), (2, 2048), (4, 2049), (3, 3 * 2048 + 17), (64, 300), (3, 40000)]
KDIM = [(2, 5, 3), (3, 1, 4), (4, 37, 5), (2, 3000, 70), (8, 1000, 160), (2, 5000, 3)]
HALF = [np.float16] + ([bfloat16()] if bfloat16() is not None else [])


def torch_vjp(op, x, g, axis):
    """d(Σ g·op(x))/dx by torch autograd in float64, and torch's float64 forward output."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    y = getattr(torch, op)(xt, axis)
    y.backward(torch.tensor(np.asarray(g, np.float64)))
    return xt.grad.numpy(), y.detach().numpy()


def inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    g = rng.standard_normal(shape)
    return x.astype(dtype), g.astype(dtype)


def tolerance(dtype, C):
    """float32 sums over thousands of classes round a little more than assert_close's default."""
    if dtype == np.float32 and C >= 1000:
        return {"rtol": 1e-5, "atol": 3e-5}
    return {}


@pytest.fixture
def calls(monkeypatch):
    """Count the backward kernels the public functions call."""
    counts: collections.Counter = collections.Counter()
    names = [f"{op}_backward{k}" for op in OPS for k in ("", "_kdim")]
    spy(monkeypatch, [(K, n, n) for n in names], lambda n: counts.update((n,)))
    with xent.use_backend("numba"):
        yield counts


@pytest.mark.parametrize("shape", ROWS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", OPS)
def test_row_vjp_matches_torch_autograd(calls, op, dtype, shape):
    x, g = inputs(shape, dtype)
    want, _ = torch_vjp(op, x, g, -1)
    y = getattr(xent, op)(x)
    got = getattr(xent, op + "_backward")(g, y)
    assert calls[op + "_backward"] == 1, dict(calls)
    assert_close(got, want.astype(dtype), **tolerance(dtype, shape[1]))


@pytest.mark.parametrize("shape", KDIM, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", OPS)
def test_kdim_vjp_matches_torch_autograd(calls, op, dtype, shape):
    x, g = inputs(shape, dtype, seed=1)
    want, _ = torch_vjp(op, x, g, 1)
    y = getattr(xent, op)(x, axis=1)
    got = getattr(xent, op + "_backward")(g, y, axis=1)
    assert calls[op + "_backward_kdim"] == 1 and calls[op + "_backward"] == 0, dict(calls)
    assert_close(got, want.astype(dtype), **tolerance(dtype, shape[1]))


@pytest.mark.parametrize("layout", [(4, 3000), (3, 700, 9)], ids=str)
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OPS)
def test_16bit_vjp_is_the_float32_vjp_rounded_once(calls, op, dtype, layout):
    """16-bit g and y are read as they are, computed in float32 and rounded once: the result is
    torch's float64 VJP of the same 16-bit values, rounded to the 16-bit dtype (within one
    rounding of the float32 arithmetic)."""
    axis = 1
    x, g = inputs(layout, np.float32, seed=2)
    y = getattr(xent, op)(x.astype(dtype), axis=axis)
    g16 = g.astype(dtype)
    got = getattr(xent, op + "_backward")(g16, y, axis=axis)
    assert got.dtype == np.dtype(dtype)
    assert sum(calls.values()) == 1, dict(calls)
    gt = torch.tensor(g16.astype(np.float64))
    yt = torch.tensor(y.astype(np.float64))
    fn = torch._softmax_backward_data if op == "softmax" else torch._log_softmax_backward_data
    want = fn(gt, yt, axis, torch.float64).numpy()
    step = 2.0 ** -(8 if dtype is not np.float16 else 11)  # one 16-bit rounding, relative
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=step, atol=step * 1e-2)


@pytest.mark.parametrize("layout", ["rows", "kdim"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_values_follow_torch(calls, op, dtype, layout):
    """NaN and ±inf in the upstream gradient or in the output give what PyTorch's backward
    gives (the kernels' sums use no fast-math flag that would drop them)."""
    shape, axis = ((6, 3000), -1) if layout == "rows" else ((2, 3000, 6), 1)
    rng = np.random.default_rng(3)
    y = rng.random(shape)
    if op == "log_softmax":
        y = np.log(y)
    g = rng.standard_normal(shape)
    idx = (lambda i, c: (i, c)) if layout == "rows" else (lambda i, c: (0, c, i))
    g[idx(0, 5)] = np.nan
    y[idx(1, 7)] = np.nan
    g[idx(2, 9)] = np.inf
    y[idx(3, 11)] = -np.inf
    g[idx(4, 13)] = -np.inf
    y, g = y.astype(dtype), g.astype(dtype)
    got = getattr(xent, op + "_backward")(g, y, axis=axis)
    assert sum(calls.values()) == 1, dict(calls)
    fn = torch._softmax_backward_data if op == "softmax" else torch._log_softmax_backward_data
    want = fn(torch.tensor(g, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), axis,
              torch.float64).numpy()
    assert_close(got, want.astype(dtype), **tolerance(dtype, 3000))


@pytest.mark.parametrize("op", OPS)
def test_kernel_output_may_overlap_an_input_or_be_strided(op):
    """The host functions write through a scratch buffer when the output is an input, overlaps
    one, or is not C-contiguous; the values are the NumPy reference's."""
    x, g = inputs((7, 3001), np.float64, seed=4)
    y = getattr(xent, op)(x)
    want = np.empty_like(y)
    getattr(_backend_numpy, op + "_backward")(g, y, want)
    fn = getattr(K, op + "_backward")
    for which in ("grad_out", "out"):
        gg, yy = g.copy(), y.copy()
        fn(gg, yy, gg if which == "grad_out" else yy)
        assert_close(gg if which == "grad_out" else yy, want, context=f"written over {which}")
    strided = np.empty((7, 6002))[:, ::2]
    fn(g, y, strided)
    assert_close(np.ascontiguousarray(strided), want, context="strided out")


@pytest.mark.parametrize("op", OPS)
def test_auto_dispatch_sends_large_calls_to_the_kernels(monkeypatch, op):
    counts: collections.Counter = collections.Counter()
    spy(monkeypatch, [(K, op + "_backward", "k")], lambda n: counts.update((n,)))
    x, g = inputs((512, 1024), np.float32, seed=5)
    y = getattr(xent, op)(x)
    with xent.use_backend("auto"):
        getattr(xent, op + "_backward")(g, y)
        assert counts["k"] == 1
        assert _dispatch.backend_for(op + "_backward", 4, 4, np.dtype(np.float32)) is (
            _backend_numpy)
