"""xent.torch on small batches: the threads PyTorch is left with, and the cheap routing.

The thread tests run in a fresh interpreter each (what they check is process-wide OpenMP state).
Evidence is what PyTorch's OpenMP runtime reports (``torch.__config__.parallel_info()``) and the
threads the process has (``/proc/self/task``), never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import xent.torch as xt  # noqa: E402
from helpers import spy  # noqa: E402
from xent.torch import _bridge  # noqa: E402

_PROBE = r"""
import json, os, re, sys, threading
import numpy as np
import torch

torch.set_num_threads(1)
import xent
from xent._kernels import _threads


def omp_max():
    m = re.search(r"omp_get_max_threads\(\) : (\d+)", torch.__config__.parallel_info())
    return int(m.group(1))


def state():
    before = len(os.listdir("/proc/self/task"))
    y = torch.ones(1 << 21)
    for _ in range(3):
        y = (y * 1.0001).exp_().log_()  # elementwise ops PyTorch splits over its OpenMP team
    return {"torch": torch.get_num_threads(), "omp": omp_max(),
            "new_threads": len(os.listdir("/proc/self/task")) - before}


out = {"before_kernel": state()}  # PyTorch has run its ops (and set up its OpenMP) already
rng = np.random.default_rng(0)
x = rng.standard_normal((1024, 1024), dtype=np.float32)  # 1M elements: the multi-threaded path
t = rng.integers(0, 1024, 1024)
with xent.use_backend("numba"):
    xent.cross_entropy(x, t, return_grad=True)
    xent.cross_entropy(x[:4, :3], t[:4] % 3, return_grad=True)
out["helper_ran"] = any(th.name.startswith("xent-kernel") for th in threading.enumerate())
out["after_kernel"] = state()
import numba  # the control: what happens when Numba's threading layer starts

numba.get_num_threads()
out["after_layer"] = state()
numba.set_num_threads(1)  # still honoured by the kernels
out["count_after_set"] = _threads.thread_count()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_kernel_leaves_torch_on_one_thread():
    """A multi-threaded kernel call (1M elements) leaves ``torch.set_num_threads(1)`` in force:
    OpenMP still runs one thread and PyTorch's ops start no OpenMP workers afterwards.

    The control shows the check can fail: starting Numba's threading layer in the same process
    (what ``numba.get_num_threads()`` does, and what the kernels did before) raises OpenMP to
    ``NUMBA_NUM_THREADS`` under PyTorch, whose next ops start an OpenMP worker. Fresh
    interpreter: OpenMP's state is process-wide."""
    pytest.importorskip("numba")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XENT_BACKEND")}
    env["NUMBA_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["helper_ran"], "the kernel did not run on its helper threads"
    assert out["before_kernel"]["omp"] == 1
    assert out["after_kernel"] == {"torch": 1, "omp": 1, "new_threads": 0}
    assert out["after_layer"]["omp"] == 2
    assert out["after_layer"]["new_threads"] >= 1
    assert out["count_after_set"] == 1


# --- the default cut-off: cheap calls go to PyTorch's own op first --------------------------

@pytest.fixture
def core_calls(monkeypatch):
    """One entry per drop-in call that took xent's path (every one goes through run_core)."""
    calls: list[str] = []
    spy(monkeypatch, [(_bridge, "run_core", "xent")], calls.append)
    return calls


def _loss_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    loss.backward(torch.linspace(0.5, 2.0, loss.numel()).reshape(loss.shape))
    return loss.detach(), x.grad


def test_small_call_is_pytorchs_op(core_calls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    t = torch.tensor([0, 1, 2, -100] * 8)
    w = torch.tensor([0.5, 1.0, 2.0])
    for kwargs in ({}, {"weight": w, "label_smoothing": 0.1}, {"reduction": "none"}):
        ours = _loss_and_grad(xt.cross_entropy, x, t, **kwargs)
        ref = _loss_and_grad(F.cross_entropy, x, t, **kwargs)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    logp = torch.log_softmax(x, 1)
    assert torch.equal(xt.nll_loss(logp, t), F.nll_loss(logp, t))
    p, y = torch.rand(40, generator=g), torch.rand(40, generator=g)
    assert torch.equal(xt.binary_cross_entropy(p, y), F.binary_cross_entropy(p, y))
    assert torch.equal(xt.binary_cross_entropy_with_logits(x[:, 0], y[:32]),
                       F.binary_cross_entropy_with_logits(x[:, 0], y[:32]))
    assert core_calls == []


def test_small_call_errors_are_the_cores():
    """Below the cut-off PyTorch computes the call, and where it refuses it the core's
    validation raises its own error (the same exception at every size: test_torch_sizes)."""
    x = torch.randn(4, 3)
    with pytest.raises(IndexError, match=r"target 3 at position \(3,\) is out of bounds"):
        xt.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="reduction"):
        xt.cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        xt.cross_entropy([[1.0, 2.0]], torch.tensor([0]))


@pytest.mark.parametrize("eps", [float("nan"), -0.1])
def test_smoothing_pytorch_accepts_is_refused_below_the_cutoff(eps):
    """PyTorch's own loss takes these without a word (F.cross_entropy gives a number); the
    drop-in refuses them at every size, as the core does."""
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(x, t, label_smoothing=eps)  # no error from PyTorch
    with pytest.raises(ValueError, match="label_smoothing"):
        xt.cross_entropy(x, t, label_smoothing=eps)


def test_calls_pytorch_computes_raise_the_cores_errors(core_calls):
    """Rows of few classes run PyTorch's op at any size; a call it refuses raises the core's
    IndexError, not PyTorch's RuntimeError."""
    n = 4096
    x, t = torch.randn(n, 64), torch.zeros(n, dtype=torch.int64)
    t[7] = 64
    with pytest.raises(IndexError, match="target"):
        xt.cross_entropy(x, t)
    with pytest.raises(IndexError, match="target"):
        xt.nll_loss(x, t)
    t[7] = 0
    torch.testing.assert_close(xt.cross_entropy(x, t), F.cross_entropy(x, t))
    assert core_calls == []  # validated by the core, computed by PyTorch


def test_valid_calls_pytorch_computes_cost_no_validation(monkeypatch, core_calls):
    """A valid call PyTorch's op computes never runs the core's validation (it costs nothing
    on top of PyTorch's time); an invalid one raises the core's error, not chained to
    PyTorch's."""
    validated: list[str] = []
    spy(monkeypatch, [(_bridge, "problem_for", "validate")], validated.append)
    for n in (8, 4096):
        x, t = torch.randn(n, 64), torch.randint(0, 64, (n,))
        torch.testing.assert_close(xt.cross_entropy(x, t), F.cross_entropy(x, t))
        logp = torch.log_softmax(x, 1)
        torch.testing.assert_close(xt.nll_loss(logp, t), F.nll_loss(logp, t))
    assert validated == [] and core_calls == []
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)") as err:
        xt.cross_entropy(x, t, weight=torch.ones(50))
    assert err.value.__context__ is None and err.value.__cause__ is None
    assert validated == ["validate"]


def test_calls_pytorch_refuses_and_the_core_accepts_are_computed():
    """What PyTorch's op refuses and xent accepts (int32 class indices, a float64 weight for
    float32 logits) is normalised before PyTorch's op runs: the result of the int64 / float32
    call."""
    x, t = torch.randn(64, 64), torch.randint(0, 64, (64,))
    w = torch.rand(64, dtype=torch.float64) + 0.5
    torch.testing.assert_close(xt.cross_entropy(x, t.int()), F.cross_entropy(x, t))
    torch.testing.assert_close(xt.cross_entropy(x, t, weight=w), F.cross_entropy(x, t, w.float()))
    torch.testing.assert_close(xt.nll_loss(x, t.short(), weight=w), F.nll_loss(x, t, w.float()))


def test_xent_options_are_still_checked_and_computed_below_the_cutoff(core_calls):
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="softcap"):
        xt.cross_entropy(x, t, softcap=0.0)
    with pytest.raises(ValueError, match="lse_square_scale"):
        xt.cross_entropy(x, t, lse_square_scale=float("nan"))
    loss, lse = xt.cross_entropy(x, t, return_lse=True, reduction="none")
    torch.testing.assert_close(lse, torch.logsumexp(x, 1))
    torch.testing.assert_close(loss, F.cross_entropy(x, t, reduction="none"))
    assert core_calls == ["xent"]  # the options run on xent's kernels at any size


def test_short_rows_go_to_pytorch_long_rows_to_xent(core_calls):
    n = xt.get_min_elements()
    short = torch.randn(n // 512, 512)  # MIN_CLASSES is 1024 (tests/test_thresholds.py)
    long = torch.randn(n // 1024, 1024)
    for x in (short, long):
        t = torch.randint(0, x.shape[1], (x.shape[0],))
        ours = _loss_and_grad(xt.cross_entropy, x, t)
        ref = _loss_and_grad(F.cross_entropy, x, t)
        torch.testing.assert_close(ours, ref)
    assert core_calls == ["xent"]  # the long rows only
    with xt.min_elements(0):  # the cut-off at 0: every call, rows of any length
        xt.cross_entropy(short[:4], torch.zeros(4, dtype=torch.int64))
        xt.nll_loss(short, torch.zeros(len(short), dtype=torch.int64))
    assert core_calls == ["xent"] * 3
