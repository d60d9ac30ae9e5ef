"""Before/after timing of xent's large calls, for a refactor: run this file once per source tree
(``PYTHONPATH=<tree>/src python benchmarks/ab_compare.py LABEL``), alternating trees, and compare
the medians; the bandwidth floor (read twice, write once) is timed in the same process.

Prints one line per operation: ``LABEL op median_ms floor_ms``. (4096, 32768) float32.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import xent


def median_ms(fn, repeats: int = 7) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
        del out
    return 1e3 * float(np.median(ts))


def main(label: str) -> None:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_kernels import floor_kernels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 32768), dtype=np.float32)
    t = rng.integers(0, 32768, 4096)
    floor = floor_kernels()
    buf = np.empty_like(x)
    f = median_ms(lambda: floor(x, buf))
    with xent.use_backend("numba"):
        ops = {
            "ce forward": lambda: xent.cross_entropy(x, t),
            "ce forward+backward": lambda: xent.cross_entropy(x, t, return_grad=True),
            "ce fwd+bwd smoothing 0.1": lambda: xent.cross_entropy(
                x, t, label_smoothing=0.1, return_grad=True),
            "softmax": lambda: xent.softmax(x),
            "log_softmax": lambda: xent.log_softmax(x),
        }
        for name, fn in ops.items():
            print(f"{label:6s} {name:26s} {median_ms(fn):8.1f} ms   floor {f:6.1f} ms", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "xent")
