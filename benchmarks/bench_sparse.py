"""Section "sparse" (issue 19, item 8): sparsemax and 1.5-entmax at (4096, 32768).

Contenders, each forward + backward, medians of interleaved runs:

* ``xent loss``: `xent.sparsemax_loss` / `xent.entmax15_loss` with ``return_grad=True``
  (loss and gradient in one pass: τ without a sort, one read of the logits, one write);
* ``xent map``: `xent.sparsemax` / `xent.entmax15` then its VJP (``*_backward``) with an
  upstream gradient of ones (the map's own forward + backward: 3 reads and 2 writes);
* ``entmax loss`` / ``entmax map``: the ``entmax`` package (PyTorch ops, full sort on CPU),
  the same computations through ``torch.autograd``; ``entmax compiled``: its loss under
  ``torch.compile`` where that compiles. At (4096, 32768) the package needs several GiB per
  call (sort values and int64 indices, cumulative sums, autograd's saved tensors) and tens of
  seconds: it runs on the first ``PEER_ROWS`` rows and its time is scaled by N / PEER_ROWS
  (row-wise work: linear in the rows), marked ``(scaled)``;
* ``floor``: `bench_kernels.floor_kernels` (read the logits twice, write one N×C array), on the
  same threads; the map's floor is twice that.

float32 and bfloat16 (xent reads the 16 bits; the package runs on torch.bfloat16). Run:
``python benchmarks/bench_sparse.py [--quick]`` or ``python3 tasks.py bench`` (section
"sparse").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import xent  # noqa: E402
from bench_kernels import (  # noqa: E402
    floor_kernels,
    fmt_time,
    machine,
    time_interleaved,
)

PEER_ROWS = 512


def _torch_step(fn: Callable, x32: np.ndarray, t: np.ndarray, dtype) -> Callable[[], object]:
    import torch

    xt = torch.from_numpy(x32).to(dtype).requires_grad_()
    tt = torch.from_numpy(t)

    def call():
        xt.grad = None
        loss = fn(xt, tt)
        loss.backward()
        return loss, xt.grad

    return call


def run(repeats: int, quick: bool) -> None:
    """Print the tables (see the module docstring); ``quick``: (512, 4096)."""
    import entmax
    import ml_dtypes
    import torch

    N, C = (512, 4096) if quick else (4096, 32768)
    rng = np.random.default_rng(0)
    x32 = np.empty((N, C), np.float32)
    rng.standard_normal(dtype=np.float32, out=x32)
    t = rng.integers(0, C, N)
    floor = floor_kernels()
    bf16 = np.dtype(ml_dtypes.bfloat16)
    peer_repeats = max(1, min(repeats, 3))  # the package takes seconds per call
    for name, loss_fn, map_fn, vjp_fn, ref_loss, ref_map in [
        ("sparsemax", xent.sparsemax_loss, xent.sparsemax, xent.sparsemax_backward,
         entmax.sparsemax_loss, entmax.sparsemax),
        ("entmax15", xent.entmax15_loss, xent.entmax15, xent.entmax15_backward,
         entmax.entmax15_loss, entmax.entmax15),
    ]:
        for label, dt, tdt in (("float32", np.float32, torch.float32),
                               ("bfloat16", bf16, torch.bfloat16)):
            x = x32.astype(dt)
            ones = np.ones_like(x)
            out = np.empty_like(x32) if dt == np.float32 else np.empty(
                (N, C // 2), np.float32)
            xin = x32 if dt == np.float32 else x.view(np.float32)

            def xent_map(x=x, ones=ones, map_fn=map_fn, vjp_fn=vjp_fn):
                return vjp_fn(ones, map_fn(x))

            fns = {
                "xent loss": lambda x=x, f=loss_fn: f(x, t, return_grad=True),
                "xent map": xent_map,
                "floor": lambda xin=xin, out=out: floor(xin, out),
            }
            with xent.use_backend("auto"):
                for _ in range(2):  # compile / warm the kernels and the buffer cache
                    for f in fns.values():
                        f()
                times = time_interleaved(fns, repeats)

            def ref_loss_mean(a, b, f=ref_loss):
                return f(a, b).mean()

            def ref_map_sum(a, b, f=ref_map):
                return f(a, dim=-1).sum()

            rows = min(N, PEER_ROWS)
            xp, tp = x32[:rows], t[:rows]
            peers = {"entmax loss": _torch_step(ref_loss_mean, xp, tp, tdt),
                     "entmax map": _torch_step(ref_map_sum, xp, tp, tdt)}
            if label == "float32":
                try:
                    compiled = torch.compile(ref_loss_mean)
                    step = _torch_step(compiled, xp, tp, tdt)
                    step()
                    peers["entmax compiled"] = step
                except Exception as exc:  # noqa: BLE001  (reported, not fatal)
                    print(f"  (entmax loss under torch.compile: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:80]})")
            scaled = {k: v * N / rows for k, v in time_interleaved(peers, peer_repeats).items()}
            times.update(scaled)
            print(f"\n{name} ({N}, {C}) {label}: forward + backward")
            print(f"  {'contender':16s} {'median':>10s}  notes")
            notes = {
                "xent loss": f"{times['xent loss'] / times['floor']:.2f}x floor, "
                             f"{times['entmax loss'] / times['xent loss']:.1f}x faster than "
                             "entmax loss",
                "xent map": f"{times['xent map'] / (2 * times['floor']):.2f}x 2·floor, "
                            f"{times['entmax map'] / times['xent map']:.1f}x faster than "
                            "entmax map",
            }
            if "entmax compiled" in times:
                ratio = times["entmax compiled"] / times["xent loss"]
                notes["entmax compiled"] = f"xent loss {ratio:.1f}x faster"
            for who, sec in times.items():
                mark = " (scaled)" if who in scaled and rows < N else ""
                print(f"  {who:16s} {fmt_time(sec):>10s}  {notes.get(who, '')}{mark}")
    print("  targets (issue 19): xent >= 10x the entmax package, within 2x the memory floor")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="(512, 4096) instead of (4096, 32768)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(machine())
    run(args.repeats, args.quick)


if __name__ == "__main__":
    main()
