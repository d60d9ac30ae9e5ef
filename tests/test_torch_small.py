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
if sys.argv[1] == "control":  # what happens when Numba's threading layer starts
    import numba

    numba.get_num_threads()
    out["after_layer"] = state()
elif sys.argv[1] == "numba_set":  # numba.set_num_threads is still honoured
    import numba

    numba.set_num_threads(1)
    out["count_after_set"] = _threads.thread_count()
print(json.dumps(out))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XENT_BACKEND")}
    env["NUMBA_NUM_THREADS"] = "2"
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


pytest.importorskip("numba")
pytest.importorskip("torch")


def test_kernel_leaves_torch_on_one_thread():
    """A multi-threaded kernel call leaves ``torch.set_num_threads(1)`` in force: OpenMP still
    runs one thread and PyTorch's ops start no OpenMP workers afterwards."""
    out = _probe("plain")
    assert out["helper_ran"], "the kernel did not run on its helper threads"
    assert out["before_kernel"]["omp"] == 1
    assert out["after_kernel"] == {"torch": 1, "omp": 1, "new_threads": 0}


def test_probe_detects_numba_threading_layer():
    """The check above can fail: starting Numba's threading layer in the same process (what
    ``numba.get_num_threads()`` does, and what the kernels did before) raises OpenMP to
    ``NUMBA_NUM_THREADS`` under PyTorch, and its ops then start an OpenMP worker."""
    out = _probe("control")
    assert out["after_kernel"]["omp"] == 1
    assert out["after_layer"]["omp"] == 2
    assert out["after_layer"]["new_threads"] >= 1


def test_numba_set_num_threads_still_honoured():
    out = _probe("numba_set")
    assert out["count_after_set"] == 1
