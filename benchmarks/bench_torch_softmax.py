"""The softmax drop-ins: ``xent.torch.softmax`` / ``log_softmax`` against ``torch.softmax`` /
``torch.log_softmax``, forward and forward+backward, float32.

    python benchmarks/bench_torch_softmax.py            # (4096, 8192), 7 repeats
    python3 tasks.py bench --only torch_softmax         # the same, as a section

Each contender: ``y = f(x, dim=1)`` (forward) and ``y = f(x, dim=1); y.backward(g)``
(forward+backward; ``x.grad`` dropped after each call, as a training step drops it), with
PyTorch on its default threads and xent's kernels on theirs. Beside them, the backward's memory
floor: read the output and the upstream gradient once, write one gradient (``floor backward``:
``torch.add(y, g, out=buf)`` into a reused buffer, the same bytes). Medians of interleaved
repeats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kernels import time_interleaved  # noqa: E402

SHAPE = (4096, 8192)
QUICK_SHAPE = (512, 4096)


def run(repeats: int, quick: bool) -> None:
    import torch

    import xent.torch as xt

    n, c = QUICK_SHAPE if quick else SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen).requires_grad_(True)
    g = torch.randn(n, c, generator=gen)
    buf = torch.empty(n, c)
    for name, theirs, ours in (("softmax", torch.softmax, xt.softmax),
                               ("log_softmax", torch.log_softmax, xt.log_softmax)):
        y = theirs(x.detach(), 1)

        def fwd_bwd(f):
            def call():
                x.grad = None
                f(x, 1).backward(g)
            return call

        def fwd(f):
            def call():
                with torch.no_grad():
                    f(x, 1)
            return call

        t = time_interleaved({
            "torch forward": fwd(theirs), "xent forward": fwd(ours),
            "torch fwd+bwd": fwd_bwd(theirs), "xent fwd+bwd": fwd_bwd(ours),
            "floor backward": lambda y=y: torch.add(y, g, out=buf),
        }, repeats)
        ms = {k: v * 1e3 for k, v in t.items()}
        bwd_x = ms["xent fwd+bwd"] - ms["xent forward"]
        bwd_t = ms["torch fwd+bwd"] - ms["torch forward"]
        print(f"\nxent.torch.{name} vs torch.{name}, ({n}, {c}) float32, dim=1")
        print("  contender           median  vs torch")
        for k in ("torch forward", "xent forward", "torch fwd+bwd", "xent fwd+bwd",
                  "floor backward"):
            ref = ms["torch fwd+bwd" if "bwd" in k else "torch forward"]
            vs = f"{ref / ms[k]:7.2f}x" if not k.startswith("floor") else ""
            print(f"  {k:<16s} {ms[k]:8.1f} ms  {vs}")
        print(f"  backward alone (fwd+bwd - forward): xent {bwd_x:.1f} ms, torch {bwd_t:.1f} ms;"
              f" xent's backward / its floor = {bwd_x / ms['floor backward']:.2f}")
        print(f"  target: xent fwd+bwd >= 1.5x torch's: "
              f"{ms['torch fwd+bwd'] / ms['xent fwd+bwd']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small shape, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    run(args.repeats or (3 if args.quick else 7), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
