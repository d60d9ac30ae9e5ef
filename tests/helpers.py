"""Assertion helpers: compare xent's NumPy results with PyTorch (the reference) or float64 math.

`assert_close(actual, expected)` wraps `torch.testing.assert_close` with the default tolerances
for the expected dtype, after checking that xent returned an ndarray of the right shape and dtype,
and reports where the values differ and every NaN/inf mismatch (as Liger-Kernel's helper does).

`torch_reference(...)` computes a loss and its gradient with torch autograd, in the precision xent
promises: float32/float64 as given, float16 computed in float32 then cast to float16, integer
logits promoted to float64.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_NP_TO_TORCH = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


def result_dtype(input_dtype: np.dtype) -> np.dtype:
    """The dtype xent returns for an input of `input_dtype` (issue 2, item 3)."""
    input_dtype = np.dtype(input_dtype)
    if input_dtype.kind in "iub":
        return np.dtype(np.float64)  # integer logits are promoted to float64, as SciPy does
    return input_dtype


def compute_dtype(input_dtype: np.dtype) -> np.dtype:
    """The dtype xent computes in: float16 is computed in float32."""
    out = result_dtype(input_dtype)
    return np.dtype(np.float32) if out == np.float16 else out


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _describe_nonfinite(actual: np.ndarray, expected: np.ndarray, limit: int = 8) -> list[str]:
    lines = []
    for name, test in (("nan", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        differ = test(actual) != test(expected)
        if differ.any():
            idx = np.argwhere(differ)[:limit]
            pairs = ", ".join(
                f"{tuple(int(i) for i in ix)}: "
                f"xent={actual[tuple(ix)]!r} ref={expected[tuple(ix)]!r}"
                for ix in idx
            )
            lines.append(f"{int(differ.sum())} {name} mismatch(es), first at {pairs}")
    return lines


def _describe_mismatch(
    actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, limit: int = 8
) -> list[str]:
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return []
    idx = np.argwhere(bad)[:limit]
    pairs = "; ".join(
        f"{tuple(int(i) for i in ix)}: xent={a[tuple(ix)]!r} ref={e[tuple(ix)]!r}" for ix in idx
    )
    return [f"{int(bad.sum())}/{bad.size} value(s) differ, first at {pairs}"]


def assert_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    equal_nan: bool = True,
    context: str = "",
) -> None:
    """Assert that xent's `actual` equals the reference `expected`.

    `actual` must be an ndarray (xent returns arrays, 0-d for reduced losses) with `expected`'s
    shape and with dtype `dtype` (default: `expected`'s dtype). Values are compared by
    `torch.testing.assert_close` with its default tolerances for that dtype unless `rtol`/`atol`
    are given; NaNs compare equal when `equal_nan` (xent follows PyTorch's NaN results).
    """
    assert isinstance(actual, np.ndarray), (
        f"{context}: xent returned {type(actual).__name__}, expected numpy.ndarray"
    )
    exp = to_numpy(expected)
    want_dtype = np.dtype(dtype) if dtype is not None else exp.dtype
    assert actual.dtype == want_dtype, f"{context}: dtype {actual.dtype}, expected {want_dtype}"
    assert actual.shape == exp.shape, f"{context}: shape {actual.shape}, expected {exp.shape}"
    exp = exp.astype(want_dtype, copy=False)
    if (rtol is None) != (atol is None):
        raise TypeError("give both rtol and atol, or neither")
    report = _describe_nonfinite(actual, exp) if equal_nan else []
    if rtol is None:
        t = _NP_TO_TORCH.get(want_dtype)
        # assert_close's defaults: float16 1e-3/1e-5, float32 1.3e-6/1e-5, float64 1e-7/1e-7.
        rtol, atol = {
            torch.float16: (1e-3, 1e-5),
            torch.float32: (1.3e-6, 1e-5),
            torch.float64: (1e-7, 1e-7),
        }.get(t, (0.0, 0.0))
    report += _describe_mismatch(actual, exp, rtol, atol)

    def message(default: str) -> str:
        return "\n".join(x for x in (context, default, *report) if x)

    torch.testing.assert_close(
        torch.from_numpy(np.array(actual, copy=True)),
        torch.from_numpy(np.array(exp, copy=True)),
        rtol=rtol,
        atol=atol,
        equal_nan=equal_nan,
        msg=message,
    )


def torch_input(x: np.ndarray, requires_grad: bool = True) -> torch.Tensor:
    """A torch leaf tensor holding `x` in the precision xent computes in."""
    x = np.asarray(x)
    t = torch.from_numpy(np.array(x, dtype=compute_dtype(x.dtype), copy=True))
    return t.requires_grad_(requires_grad)


def torch_tensor(a: Any, like: np.dtype | None = None) -> torch.Tensor | None:
    """`a` as a torch tensor: integer arrays as int64 (torch's class-index dtype), floating point
    ones in the compute dtype of `like` (the input's dtype) or their own."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return torch.from_numpy(np.array(a, dtype=np.int64, copy=True))
    dt = compute_dtype(like if like is not None else a.dtype)
    return torch.from_numpy(np.array(a, dtype=dt, copy=True))


def torch_loss_and_grad(
    fn: Callable[..., torch.Tensor],
    x: np.ndarray,
    *args: Any,
    grad_output: np.ndarray | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and d loss/d x from torch autograd, cast to the dtype xent returns.

    `fn` is e.g. `F.cross_entropy`; positional array `args` (target, weight, ...) are converted
    with `torch_tensor`, as are the array keyword arguments. For an unreduced loss the gradient is
    the vector-Jacobian product with `grad_output` (ones when None).
    """
    x = np.asarray(x)
    xt = torch_input(x)
    targs = [torch_tensor(a, like=x.dtype) if isinstance(a, np.ndarray) else a for a in args]
    tkw = {
        k: torch_tensor(v, like=x.dtype) if isinstance(v, np.ndarray) else v
        for k, v in kwargs.items()
    }
    loss = fn(xt, *targs, **tkw)
    if grad_output is None:
        g = torch.ones_like(loss)
    else:
        g = torch.from_numpy(np.array(grad_output, dtype=compute_dtype(x.dtype), copy=True))
    loss.backward(g)
    grad = xt.grad if xt.grad is not None else torch.zeros_like(xt)
    out = result_dtype(x.dtype)
    return to_numpy(loss).astype(out), to_numpy(grad).astype(out)


TORCH_LOSSES = {
    "cross_entropy": F.cross_entropy,
    "nll_loss": F.nll_loss,
    "binary_cross_entropy": F.binary_cross_entropy,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}


def assert_no_less_accurate_than_torch(
    actual: Any, torch_value: Any, truth: Any, *, context: str = ""
) -> None:
    """For float32 results whose rounding depends on summation order (wide rows): xent's error
    against the float64 `truth` may be no worse than PyTorch's own float32 error (`torch_value`)
    plus assert_close's float32 tolerance, as ml-cross-entropy tests its kernels."""
    assert isinstance(actual, np.ndarray), f"{context}: xent returned {type(actual).__name__}"
    a = actual.astype(np.float64)
    t = to_numpy(truth).astype(np.float64)
    r = to_numpy(torch_value).astype(np.float64)
    assert a.shape == t.shape, f"{context}: shape {a.shape}, expected {t.shape}"
    torch_err = float(np.max(np.abs(r - t), initial=0.0))
    allowed = torch_err + 1e-5 + 1.3e-6 * np.abs(t)
    err = np.abs(a - t)
    bad = ~(err <= allowed)
    if bad.any():
        ix = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{context}: {int(bad.sum())}/{bad.size} value(s) less accurate than torch's "
            f"float32 (max error {torch_err:.3g}); first at {ix}: xent={a[ix]!r} "
            f"truth={t[ix]!r} torch={r[ix]!r}"
        )


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A command-line error as the user sees it: exit status 2, nothing on stdout, no traceback,
    and exactly one line ``xent: error: ...`` on stderr holding every one of ``fragments``."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xent: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    assert proc.stdout == "", proc.stdout
    return lines[0]


def run_xent(*args: str, cwd, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``python -m xent ARGS`` in ``cwd`` as a user does (standard streams captured, text).

    ``timeout`` makes a hang fail the test (`subprocess.TimeoutExpired`) instead of hanging the
    suite; other keyword arguments go to `subprocess.run` (``env``, ``preexec_fn``, ...).
    """
    import sys

    return subprocess.run([sys.executable, "-m", "xent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def dead_pid() -> int:
    """The process id of a process that has exited (for leftovers of a 'killed' run)."""
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def spy(monkeypatch, targets, on_call: Callable[[str], object]) -> None:
    """Wrap each ``(module, attribute, label)`` of ``targets`` so that every call first runs
    ``on_call(label)``, then the real function (a test proves which path ran)."""
    for module, attr, label in targets:
        real = getattr(module, attr)

        def wrapper(*args, _real=real, _label=label, **kwargs):
            on_call(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, attr, wrapper)


def spy_core(monkeypatch) -> list[str]:
    """The calls that reach xent's core, by loss, appended as they arrive (a test proves the
    fast path ran): 'cross_entropy', 'nll_loss', 'binary_cross_entropy', 'bce_with_logits'."""
    import xent
    from xent import _cross_entropy

    calls: list[str] = []
    spy(monkeypatch, [(_cross_entropy, "solve", "cross_entropy"),
                      (_cross_entropy, "nll_solve", "nll_loss"),
                      (xent, "binary_cross_entropy", "binary_cross_entropy"),
                      (xent, "binary_cross_entropy_with_logits", "bce_with_logits")],
        calls.append)
    return calls


def run_on_gloo(worker: Callable[..., None], world: int) -> None:
    """Run ``worker(rank, world, port, errors)`` on ``world`` spawned processes that meet on a
    free local TCP port (gloo); a rank that fails puts its traceback on ``errors``, and the
    test fails with it."""
    import socket

    import pytest
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(worker, args=(world, port, errors), nprocs=world, join=True)
    except mp.ProcessRaisedException as exc:
        pytest.fail(errors.get() if not errors.empty() else str(exc))
