"""Focal loss, poly-1 cross-entropy and sigmoid focal loss: xent against PyTorch eager, the same
compositions under ``torch.compile``, and the memory floor.

    python3 benchmarks/bench_focal.py [--quick] [--repeats N] [--no-compile]
    python3 tasks.py bench --only focal

At (4096, 32768), class-index targets, mean reduction, forward + backward (``loss.backward()``
on a leaf tensor, the gradient landing in ``.grad``), float32 and bfloat16:

* ``xent``: ``xent.torch.focal_loss(x, t, gamma=2)`` / ``poly1_cross_entropy(x, t,
  epsilon=1)`` (the fused row kernel: one read of the logits, one write of the gradient);
* ``torch eager``: the composition a PyTorch user writes, ``lp = log_softmax(x).gather(t)``,
  ``(-(1 - lp.exp())**2 * lp).mean()`` (focal) / ``(-lp + (1 - lp.exp())).mean()`` (poly-1),
  in the input's dtype;
* ``torch compile``: ``torch.compile`` of that composition (Inductor, compiled before timing);
* ``floor``: ``bench_kernels.floor_kernels`` (read the logits twice, write an N×C array once)
  on the same bytes (16-bit logits viewed as float32 (N, C/2)).

Then the sigmoid focal loss (elementwise, (4096, 32768), ``reduction='mean'``, forward +
backward) beside torchvision's formula (torchvision/ops/focal_loss.py, written out here:
torchvision is not a dependency), eager and compiled. Its floor reads the logits and the
targets and writes the gradient, which ``floor`` (two reads of the logits, one write) models.
Times are medians of calls interleaved repeat by repeat (``bench_kernels.time_interleaved``).
Targets (issue 19): focal and poly-1 float32 within 1.3x the floor and at least 5x eager.
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
from bench_kernels import floor_kernels, fmt_time, machine, time_interleaved  # noqa: E402


def _table(title: str, times: dict[str, float], floor: str | None) -> None:
    print(f"\n{title}")
    print(f"  {'contender':14s} {'median':>10s}  notes")
    for name, t in times.items():
        parts = []
        if floor and name != floor and floor in times:
            parts.append(f"{t / times[floor]:.2f}x floor")
        if name == "xent":
            parts += [f"{times[r] / t:.2f}x faster than {r}" for r in times
                      if r.startswith("torch")]
        print(f"  {name:14s} {fmt_time(t):>10s}  {', '.join(parts)}")


def _torch_focal(x, t):
    import torch.nn.functional as F

    lp = F.log_softmax(x, dim=1).gather(1, t[:, None]).squeeze(1)
    return (-((1 - lp.exp()) ** 2) * lp).mean()


def _torch_poly1(x, t):
    import torch.nn.functional as F

    lp = F.log_softmax(x, dim=1).gather(1, t[:, None]).squeeze(1)
    return (-lp + 1.0 * (1 - lp.exp())).mean()


def _torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss (reduction='mean'), as published."""
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean()


def _step(fn: Callable, x, *args) -> Callable[[], object]:
    def call():
        x.grad = None
        loss = fn(x, *args)
        loss.backward()
        return loss, x.grad

    return call


def run(repeats: int, quick: bool, compile_: bool = True) -> None:
    """Print the tables (see the module docstring); ``quick``: (512, 4096)."""
    import torch

    import xent.torch as xt

    N, C = (512, 4096) if quick else (4096, 32768)
    rng = np.random.default_rng(0)
    x32 = np.empty((N, C), np.float32)
    rng.standard_normal(dtype=np.float32, out=x32)
    t = torch.from_numpy(rng.integers(0, C, N))
    floor = floor_kernels()
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        xt_ = torch.from_numpy(x32).to(dtype).requires_grad_()
        width = xt_.detach().view(torch.int16).numpy().view(np.float32) if dtype != torch.float32 \
            else x32
        out = np.empty_like(width)
        for loss_name, ours, theirs in (
            ("focal_loss (gamma=2)", lambda x, t: xt.focal_loss(x, t, gamma=2.0), _torch_focal),
            ("poly1_cross_entropy (epsilon=1)",
             lambda x, t: xt.poly1_cross_entropy(x, t, epsilon=1.0), _torch_poly1),
        ):
            fns: dict[str, Callable[[], object]] = {
                "xent": _step(ours, xt_, t),
                "torch eager": _step(theirs, xt_, t),
            }
            if compile_:
                fns["torch compile"] = _step(torch.compile(theirs), xt_, t)
            fns["floor"] = lambda width=width, out=out: floor(width, out)
            with xent.use_backend("auto"):
                times = time_interleaved(fns, repeats)
            _table(f"{loss_name} ({N}, {C}) {name}, index targets, mean: forward + backward",
                   times, "floor")
        yt = torch.from_numpy((rng.random((N, C)) < 0.1).astype(np.float32)).to(dtype)
        sfns: dict[str, Callable[[], object]] = {
            "xent": _step(lambda x, y: xt.sigmoid_focal_loss(x, y, reduction="mean"), xt_, yt),
            "torch eager": _step(_torchvision_sigmoid_focal, xt_, yt),
        }
        if compile_:
            sfns["torch compile"] = _step(torch.compile(_torchvision_sigmoid_focal), xt_, yt)
        sfns["floor"] = lambda width=width, out=out: floor(width, out)
        with xent.use_backend("auto"):
            times = time_interleaved(sfns, repeats)
        _table(f"sigmoid_focal_loss ({N}, {C}) {name}, mean: forward + backward "
               "(torch = torchvision's formula)", times, "floor")
    print("  floor = read the logits twice, write an N×C array once, in the logits' width")
    print("  targets (issue 19): focal / poly-1 float32 <= 1.3x floor and >= 5x torch eager")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="(512, 4096), 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per contender")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    args = ap.parse_args(argv)
    print(machine())
    run(args.repeats or (3 if args.quick else 5), args.quick, not args.no_compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
