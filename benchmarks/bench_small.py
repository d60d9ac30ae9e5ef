"""Small batches: xent.torch's cross-entropy against PyTorch's from (3, 3) to (4096, 64).

    python benchmarks/bench_small.py            # the sweep (a minute or two on 2 cores)
    python benchmarks/bench_small.py --quick    # a few sizes, few repeats (seconds)
    python3 tasks.py bench --only small         # the same, as a section of the kernel benchmark

Each row times, on the same float32 ``(N, C)`` logits and class-index targets, forward and
backward of a mean cross-entropy (``loss = f(x, t); loss.backward()``, the gradient dropped after
each call as a training step drops it):

* **torch**: ``torch.nn.functional.cross_entropy``;
* **xent default**: ``xent.torch.cross_entropy`` with the default cut-offs (inputs of fewer
  than ``xent.torch.get_min_elements()`` elements, or rows of fewer than
  ``xent._thresholds.MIN_CLASSES`` classes, run PyTorch's op: ``xent.torch._route.plan``);
* **xent forced**: the same with the cut-off at 0 (``set_min_elements(0)``), so xent's bridge and
  kernels run at every size, as under ``xent train``;
* **core**: ``xent.cross_entropy(x, t, return_grad=True)`` on the NumPy views, no autograd;
* **bridge**: forced minus core, the fixed cost of the bridge per call (autograd Function,
  validation, tensor/array views), which PyTorch's own op also pays for its autograd part.

Ratios are contender time / torch time (<1: faster than PyTorch; the issue's targets are
phrased so; the core tables' "vs torch" is the inverse). Timing: `time_interleaved`
from bench_kernels.py (contenders in turn within each repeat, rotating order, medians; each
sample the mean of enough calls to fill a few milliseconds), by the calling thread's CPU time
(``time.thread_time``): every contender runs on that one thread here (PyTorch is set to one
thread; xent's kernels use one below ``_threads.PARALLEL_MIN_ELEMENTS`` = 2^20 elements, above
the sweep), and on a 2-core machine shared with other jobs wall-clock samples of 30 µs calls
moved by 40% between identical contenders (below the cut-offs "xent default" runs the same
PyTorch op as "torch"). The cut-offs' defaults
(``xent._thresholds.MIN_ELEMENTS``, ``MIN_CLASSES``) are chosen from this table: the sizes
from which the forced path stays faster than PyTorch (benchmarks/README.md, "Small batches").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kernels import time_interleaved  # noqa: E402

#: The sweep: the issue's corners, typical classifier batches, and sizes around the cut-offs
#: (MIN_ELEMENTS, MIN_CLASSES): rows of 128 to 4096 classes at 2^17 to 2^19 elements.
SIZES = [(3, 3), (32, 3), (32, 10), (128, 10), (64, 64), (256, 32), (128, 128), (256, 64),
         (512, 64), (256, 256), (1024, 64), (2048, 64), (4096, 64),
         (32, 4096), (128, 1024), (2048, 128), (1024, 256), (512, 512), (256, 1024),
         (64, 4096), (4096, 128), (2048, 256), (1024, 512), (512, 1024), (128, 4096)]
QUICK_SIZES = [(3, 3), (32, 3), (256, 64), (4096, 64), (512, 1024)]


def row(n: int, c: int, repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per forward+backward call of each contender at ``(n, c)``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import xent
    import xent.torch as xt

    g = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, generator=g, requires_grad=True)
    t = torch.randint(0, c, (n,), generator=g)
    xn, tn = x.detach().numpy(), t.numpy()
    default = xt.get_min_elements()

    def step(loss_fn):
        def call() -> None:
            loss_fn(x, t).backward()
            x.grad = None
        return call

    def core() -> None:
        xent.cross_entropy(xn, tn, return_grad=True)

    fns = {"torch": step(F.cross_entropy), "xent default": step(xt.cross_entropy),
           "xent forced": step(xt.cross_entropy), "core": core}
    # The cut-off is process-wide: each contender sets it before its samples (untimed).
    setup = {name: (lambda: xt.set_min_elements(0)) if name == "xent forced"
             else (lambda: xt.set_min_elements(default)) for name in fns}
    try:
        times = time_interleaved(fns, repeats, setup=setup, min_time=min_time, pause=0.01,
                                 clock=time.thread_time)
    finally:
        xt.set_min_elements(default)
    assert np.isfinite(list(times.values())).all()
    return times


def run(repeats: int, quick: bool) -> None:
    """Print the small-batch table (``repeats`` interleaved samples per contender and size)."""
    import torch

    import xent.torch as xt
    from xent import _thresholds

    sizes = QUICK_SIZES if quick else SIZES
    min_time = 0.002 if quick else 0.01
    threads = torch.get_num_threads()
    # One thread for PyTorch, as `xent train` runs (xent's kernels run on one thread below
    # PARALLEL_MIN_ELEMENTS, far above this sweep). With two, every tiny PyTorch call on a
    # machine shared with other jobs sometimes waited milliseconds on its OpenMP team.
    torch.set_num_threads(1)
    steady = _steady_heap()
    print("\nSmall batches: cross-entropy forward+backward, float32 (N, C) logits, index targets;"
          " CPU time of the calling thread; torch on 1 thread;"
          f" {'steady heap (glibc: no mmap/trim under 64 MiB);' if steady else ''} default cut-off"
          f" {xt.get_min_elements()} elements, rows of {_thresholds.MIN_CLASSES} classes;"
          " load average "
          "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("| N x C | elements | torch | xent default | time / torch | xent forced | time / torch "
          "| core | bridge per call |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for n, c in sizes:
            _print_row(n, c, row(n, c, repeats, min_time))
    finally:
        torch.set_num_threads(threads)
        if steady:
            _steady_heap(restore=True)
    print("time / torch: the contender's time over PyTorch's (<1: faster than PyTorch; the "
          "other tables' 'vs torch' is the inverse); '(torch)' / '(xent)': what the default "
          "cut-offs run at that size; bridge = forced - core")


def _steady_heap(restore: bool = False) -> bool:
    """glibc only: serve the sweep's allocations (gradients up to 2 MiB) from the heap without
    returning them to the system between calls (``mallopt`` M_MMAP_THRESHOLD 64 MiB,
    M_TRIM_THRESHOLD 256 MiB); ``restore``: back to glibc's initial 128 KiB (its dynamic threshold
    stays off). With glibc's default, whether a 2 MiB gradient is a fresh ``mmap`` (512 page
    faults, about 0.3 ms of this thread's CPU time) or reused heap depends on the calls before:
    PyTorch's own op moved between 0.6 and 1.1 ms per call at 2^19 elements within one run, and
    identical work in two contenders differed by 20%. Returns whether it applied."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim, m_mmap = -1, -3
    mmap_at, trim_at = (128 << 10, 128 << 10) if restore else (64 << 20, 256 << 20)
    return bool(mallopt(m_mmap, mmap_at)) and bool(mallopt(m_trim, trim_at))


def _print_row(n: int, c: int, t: dict[str, float]) -> None:
    import torch

    from xent.torch import _route

    us = {k: v * 1e6 for k, v in t.items()}
    routed = _route.plan(torch.empty(n, c), rows=True).value
    print(f"| {n} x {c} | {n * c} ({routed}) | {us['torch']:.1f} µs "
          f"| {us['xent default']:.1f} µs | {t['xent default'] / t['torch']:.2f} "
          f"| {us['xent forced']:.1f} µs | {t['xent forced'] / t['torch']:.2f} "
          f"| {us['core']:.1f} µs | {us['xent forced'] - us['core']:.1f} µs |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few sizes, few repeats")
    ap.add_argument("--repeats", type=int, default=None, help="samples per contender and size")
    args = ap.parse_args(argv)
    run(args.repeats or (3 if args.quick else 9), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
