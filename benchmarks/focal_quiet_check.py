"""Issue 19, quiet check: focal, poly-1 and cross_entropy forward+backward at (4096, 32768)
float32 beside the floor, first as a loop of xent calls, then with a torch eager call
interleaved (`bench_kernels.time_interleaved`, medians).

    python3 benchmarks/focal_quiet_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import xent.torch as xt  # noqa: E402
from bench_focal import _step, _torch_focal  # noqa: E402
from bench_kernels import floor_kernels, time_interleaved  # noqa: E402


def main() -> None:
    N, C = 4096, 32768
    rng = np.random.default_rng(0)
    x32 = np.empty((N, C), np.float32)
    rng.standard_normal(dtype=np.float32, out=x32)
    t = torch.from_numpy(rng.integers(0, C, N))
    x = torch.from_numpy(x32).requires_grad_()
    floor = floor_kernels()
    out = np.empty_like(x32)
    fns = {"xent focal": _step(lambda a, b: xt.focal_loss(a, b), x, t),
           "xent poly1": _step(lambda a, b: xt.poly1_cross_entropy(a, b), x, t),
           "xent cross_entropy": _step(xt.cross_entropy, x, t),
           "floor": lambda: floor(x32, out)}
    for title, repeats in (("xent calls only", 7), ("with torch eager interleaved", 5)):
        if repeats == 5:
            fns["torch eager focal"] = _step(_torch_focal, x, t)
        times = time_interleaved(fns, repeats)
        print(f"-- {title}")
        for name, s in times.items():
            print(f"{name:20s} {s * 1e3:7.1f} ms  {s / times['floor']:.2f}x floor")


if __name__ == "__main__":
    main()
