"""bfloat16 and float16 on xent's kernels, through the NumPy API, against PyTorch eager and the
16-bit memory floor.

    python3 benchmarks/bench_half.py [--quick] [--repeats N]
    python3 tasks.py bench --only half

At (4096, 32768), class-index targets, mean reduction, forward + backward:

* ``xent bf16`` / ``xent f16``: ``xent.cross_entropy(x, t, return_grad=True)`` on an
  ``ml_dtypes.bfloat16`` / ``numpy.float16`` array (the kernels read 16 bits, compute in
  float32, write the 16-bit gradient rounded to nearest even);
* ``xent f32``: the same call on the float32 logits, for reference;
* ``torch bf16`` / ``torch f16``: ``F.cross_entropy(x, t).backward()`` on a 16-bit tensor;
* ``floor 16-bit``: the bandwidth floor of ``bench_kernels.floor_kernels`` (read the logits
  twice, write an N×C array once) on the same bytes: a float32 array of (N, C/2) is exactly
  the 16-bit logits' storage, so the floor reads 2·N·C·2 bytes and writes N·C·2, into a reused
  buffer (as xent's gradient lands in its output-buffer cache); ``floor f32`` likewise on the
  float32 logits.

Then softmax and log_softmax on the bfloat16 logits (xent, torch) beside the same 16-bit floor.
Times are medians of calls interleaved repeat by repeat (``bench_kernels.time_interleaved``);
the notes give the ratio to the floor of the same width and PyTorch's time over xent's.
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
    HAVE_TORCH,
    floor_kernels,
    fmt_time,
    machine,
    time_interleaved,
)


def _table(title: str, times: dict[str, float], notes: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"  {'contender':14s} {'median':>10s}  notes")
    for name, t in times.items():
        print(f"  {name:14s} {fmt_time(t):>10s}  {notes.get(name, '')}")


def _ratio_notes(times: dict[str, float], pairs: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """For each contender, its ratio to its floor and the torch contender's time over its own."""
    notes = {}
    for who, (floor, *rivals) in pairs.items():
        if who not in times:
            continue
        parts = [f"{times[who] / times[floor]:.2f}x {floor}"] if floor in times else []
        parts += [f"{times[r] / times[who]:.2f}x faster than {r}" for r in rivals if r in times]
        notes[who] = ", ".join(parts)
    return notes


def run(repeats: int, quick: bool) -> None:
    """Print the 16-bit tables (see the module docstring); ``quick``: (512, 4096)."""
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    N, C = (512, 4096) if quick else (4096, 32768)
    rng = np.random.default_rng(0)
    x32 = np.empty((N, C), np.float32)
    rng.standard_normal(dtype=np.float32, out=x32)
    xb, xh = x32.astype(bf16), x32.astype(np.float16)
    t = rng.integers(0, C, N)
    floor = floor_kernels()
    # The 16-bit logits' bytes as float32 (N, C/2): the floor over exactly their storage.
    bytes16 = xb.view(np.float32)
    out16, out32 = np.empty_like(bytes16), np.empty_like(x32)

    fns: dict[str, Callable[[], object]] = {
        "xent bf16": lambda: xent.cross_entropy(xb, t, return_grad=True),
        "xent f16": lambda: xent.cross_entropy(xh, t, return_grad=True),
        "xent f32": lambda: xent.cross_entropy(x32, t, return_grad=True),
        "floor 16-bit": lambda: floor(bytes16, out16),
        "floor f32": lambda: floor(x32, out32),
    }
    if HAVE_TORCH:
        import torch
        import torch.nn.functional as F

        tt = torch.from_numpy(t)

        def torch_step(dtype: torch.dtype) -> Callable[[], object]:
            xt = torch.from_numpy(x32).to(dtype).requires_grad_()

            def call():
                xt.grad = None
                loss = F.cross_entropy(xt, tt)
                loss.backward()
                return loss, xt.grad

            return call

        fns["torch bf16"] = torch_step(torch.bfloat16)
        fns["torch f16"] = torch_step(torch.float16)
    with xent.use_backend("auto"):
        times = time_interleaved(fns, repeats)
    notes = _ratio_notes(times, {"xent bf16": ("floor 16-bit", "torch bf16"),
                                 "xent f16": ("floor 16-bit", "torch f16"),
                                 "xent f32": ("floor f32",),
                                 "torch bf16": ("floor 16-bit",),
                                 "torch f16": ("floor 16-bit",)})
    _table(f"cross_entropy ({N}, {C}) 16-bit, index targets, mean: forward + backward", times,
           notes)
    print("  floor = read the logits twice, write an N×C array once, in the logits' width")
    print("  targets (issue 10): bf16 <= 1.3x floor 16-bit and >= 5x torch bf16; "
          "f16 <= 1.5x floor 16-bit")

    for op in ("softmax", "log_softmax"):
        sfns: dict[str, Callable[[], object]] = {
            "xent bf16": lambda op=op: getattr(xent, op)(xb, axis=-1),
            "floor 16-bit": lambda: floor(bytes16, out16),
        }
        if HAVE_TORCH:
            xtb = torch.from_numpy(x32).to(torch.bfloat16)
            sfns["torch bf16"] = lambda op=op, xtb=xtb: getattr(torch, op)(xtb, -1)
        with xent.use_backend("auto"):
            st = time_interleaved(sfns, repeats)
        _table(f"{op} ({N}, {C}) bfloat16", st,
               _ratio_notes(st, {"xent bf16": ("floor 16-bit", "torch bf16"),
                                 "torch bf16": ("floor 16-bit",)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="(512, 4096), 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per contender")
    args = ap.parse_args(argv)
    print(machine())
    run(args.repeats or (3 if args.quick else 7), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
