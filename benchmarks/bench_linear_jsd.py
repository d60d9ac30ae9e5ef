#!/usr/bin/env python3
"""Fused linear distillation: xent.torch.linear_generalized_jsd beside its four matrix products
and the eager composition (issue 18).

    python3 benchmarks/bench_linear_jsd.py [--quick] [--v128k]
    python3 tasks.py bench --only linear_jsd [--quick]   # the same section in the kernel run

Section (``run(repeats, quick)``, one process): student and teacher heads at N=4096, H=1024,
V=32768 (``--quick``: 1024x256x8192; ``--v128k``: also V=128256), float32 and bfloat16,
forward+backward of the generalized JSD (beta=0.5, temperature 1, every 17th row ignored;
gradients of the student's input and weight), timed interleaved
(bench_kernels.time_interleaved: contenders in turn, rotating order, medians):
  xent           xent.torch.linear_generalized_jsd(xs, Ws, xt, Wt, target) (default chunks)
  xent tl        the same with the teacher's logits precomputed (``teacher_logits=``, (N, V)
                 float32 or bfloat16 held by the caller; three products)
  4 matmuls      xent's four products alone at its chunking and dtype (student and teacher
                 logits into the chunk buffers, grad_x = dz @ Ws, grad_W += dz.T @ xs): the
                 floor for xent's time
  eager          the composition a user writes: both full (N, V) logits (the teacher's under
                 no_grad), TRL's ``GKDTrainer.generalized_jsd_loss`` on them (its formula
                 inline where TRL is not installed), backward; it holds several (N, V) tensors
                 (about 8 GB at the main size), so it is timed once, in its own process
and, for xent and eager, the peak resident memory of one call in a fresh process beyond what it
held before, minus the gradients of xs and Ws (VmHWM after a reset, bench_linear's measure).
Targets (issue 18): xent / 4 matmuls <= 1.2; extra peak <= 256 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

SECTION_SIZE = (4096, 1024, 32768)
SECTION_QUICK = (1024, 256, 8192)
SIZE_128K = (4096, 1024, 128256)
BETA = 0.5


def _trl_loss():
    """TRL's generalized_jsd_loss, or its formula (F.kl_div, as TRL writes it) without TRL."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
        return GKDTrainer.generalized_jsd_loss, "TRL generalized_jsd_loss"
    except ImportError:
        pass
    import torch
    import torch.nn.functional as F

    def loss(zs, zt, labels, beta=0.5, temperature=1.0):
        ls = F.log_softmax(zs / temperature, -1)
        lt = F.log_softmax(zt / temperature, -1)
        b = torch.tensor(beta, dtype=ls.dtype)
        lm = torch.logsumexp(torch.stack([ls + torch.log1p(-b), lt + torch.log(b)]), 0)
        jsd = (beta * F.kl_div(lm, lt, reduction="none", log_target=True)
               + (1 - beta) * F.kl_div(lm, ls, reduction="none", log_target=True))
        mask = labels != -100
        return jsd[mask].sum() / mask.sum().clamp_min(1)

    return loss, "TRL's formula (inline)"


def _operands(n: int, h: int, v: int, dtype):
    import torch
    g = torch.Generator().manual_seed(0)
    xs = (torch.randn(n, h, generator=g) * 0.5).to(dtype).requires_grad_(True)
    Ws = (torch.randn(v, h, generator=g) / h**0.5).to(dtype).requires_grad_(True)
    xt = (torch.randn(n, h, generator=g) * 0.5).to(dtype)
    Wt = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    t[::17] = -100
    return xs, Ws, xt, Wt, t


def _contender(method: str, trl_loss):
    """fn(xs, Ws, xt, Wt, t, zt) -> loss for a method name."""
    import torch

    import xent.torch as xtorch

    if method == "xent":
        return lambda xs, Ws, xt, Wt, t, zt: xtorch.linear_generalized_jsd(
            xs, Ws, xt, Wt, t, beta=BETA)
    if method == "xent-tl":
        return lambda xs, Ws, xt, Wt, t, zt: xtorch.linear_generalized_jsd(
            xs, Ws, None, None, t, teacher_logits=zt, beta=BETA)

    def eager(xs, Ws, xt, Wt, t, zt):
        with torch.no_grad():
            zteacher = xt @ Wt.T
        return trl_loss(xs @ Ws.T, zteacher, t, beta=BETA)

    if method == "eager":
        return eager
    raise SystemExit(f"unknown method {method!r}")


def worker(method: str, n: int, h: int, v: int, dtname: str, out: str) -> None:
    """One forward+backward of ``method`` in this (fresh) process: its extra peak memory."""
    import torch

    from bench_linear import _peak_bytes, _reset_peak, _rss_bytes

    dt = getattr(torch, dtname)
    xs, Ws, xt, Wt, t = _operands(n, h, v, dt)
    zt = (xt @ Wt.T) if method == "xent-tl" else None
    fn = _contender(method, _trl_loss()[0])
    # warm-up on a small problem (the kernels' JIT/cache load is not a step's cost)
    small = min(v, 4096)
    fn(xs[:64].detach().requires_grad_(True), Ws[:small].detach().requires_grad_(True),
       xt[:64], Wt[:small], t[:64] % small, None if zt is None else zt[:64, :small]).backward()
    xs.grad = Ws.grad = None
    reset_ok = _reset_peak()
    before = _rss_bytes()
    t0 = time.perf_counter()
    fn(xs, Ws, xt, Wt, t, zt).backward()
    elapsed = time.perf_counter() - t0
    peak = _peak_bytes(reset_ok)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in (xs, Ws))
    with open(out, "w") as f:
        json.dump({"extra_peak_mb": max(0, peak - before - grads) / 2**20, "time_s": elapsed},
                  f)


def _fresh(method: str, n: int, h: int, v: int, dtname: str) -> dict:
    """`worker` in a fresh process: {"extra_peak_mb", "time_s"} (NaN where it failed, e.g.
    killed for memory)."""
    out = Path(tempfile.mkdtemp(prefix="bench_jsd_")) / "mem.json"
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(h), str(v), dtname, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        sys.stderr.write(f"{method}: exit {proc.returncode} {proc.stderr[-2000:]}\n")
        return {"extra_peak_mb": float("nan"), "time_s": float("nan")}


def _floor_fn(xs, Ws, xt, Wt, chunk: int, teacher: bool = True):
    """xent's products alone at its chunking: the student's (and the teacher's) logits, the
    student's grad_x and grad_W (accumulated as xent does, `_linear._GradW`)."""
    import torch

    from xent.torch import _linear
    n, v = xs.shape[0], Ws.shape[0]

    def call() -> None:
        with torch.no_grad():
            buf = torch.empty(min(chunk, n), v, dtype=xs.dtype)
            tbuf = torch.empty(min(chunk, n), v, dtype=xs.dtype) if teacher else None
            gx, gW = torch.empty_like(xs), _linear._GradW(Ws, n > chunk, False)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                z = buf[: e - s]
                torch.mm(xs[s:e], Ws.t(), out=z)
                if tbuf is not None:
                    torch.mm(xt[s:e], Wt.t(), out=tbuf[: e - s])
                torch.mm(z, Ws, out=gx[s:e])
                gW.add(z, xs[s:e])
            gW.result()
    return call


def _size_table(n: int, h: int, v: int, repeats: int, dtypes) -> None:
    import torch

    from bench_kernels import time_interleaved
    from xent.torch import _distill
    trl_loss, trl_name = _trl_loss()
    print(f"\nlinear_generalized_jsd, N={n}, H={h}, V={v}, beta={BETA}, forward+backward, "
          f"{repeats} interleaved repeats (medians), torch on {torch.get_num_threads()} threads; "
          "load average {:.1f} {:.1f} {:.1f}; eager: {}".format(*os.getloadavg(), trl_name))
    print("| dtype | contender | time | matmuls at its chunking | / matmuls | eager | "
          "eager / contender | extra peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for dt in dtypes:
        name = str(dt).replace("torch.", "")
        xs, Ws, xt, Wt, t = _operands(n, h, v, dt)
        zt = (xt @ Wt.T).detach()
        chunk = _distill._chunk_rows(None, v, n, xs, _distill.JSD_BUFFERS)

        def step(method, xs=xs, Ws=Ws, xt=xt, Wt=Wt, t=t, zt=zt):
            fn = _contender(method, trl_loss)

            def call() -> None:
                fn(xs, Ws, xt, Wt, t, zt).backward()
                xs.grad = Ws.grad = None
            return call

        fns = {m: step(m) for m in ("xent", "xent-tl")}
        fns["matmuls"] = _floor_fn(xs.detach(), Ws.detach(), xt, Wt, chunk)
        fns["matmuls-tl"] = _floor_fn(xs.detach(), Ws.detach(), xt, Wt, chunk, teacher=False)
        times = time_interleaved(fns, repeats, pause=0.5)
        del xs, Ws, xt, Wt, t, zt, fns
        # eager holds several (N, V) tensors (8 GB at the main size): timed once in its own
        # process, with its memory, after the in-process contenders have let go of theirs
        eager = _fresh("eager", n, h, v, name)
        for m, floor_key, label in (("xent", "matmuls", "4"), ("xent-tl", "matmuls-tl", "3")):
            floor = times[floor_key]
            print(f"| {name} | {m} (chunk {min(chunk, n)} rows) | {times[m]:.3f} s | "
                  f"{floor:.3f} s ({label}) | {times[m] / floor:.3f} | {eager['time_s']:.3f} s | "
                  f"{eager['time_s'] / times[m]:.2f}x | "
                  f"{_fresh(m, n, h, v, name)['extra_peak_mb']:.0f} |", flush=True)
        print(f"| {name} | eager (one call, fresh process) | {eager['time_s']:.3f} s | | | | | "
              f"{eager['extra_peak_mb']:.0f} |", flush=True)


def run(repeats: int, quick: bool, v128k: bool = False) -> None:
    """Print the linear_jsd section: float32 at N=4096, H=1024, V=32768 (and V=128256 with
    ``v128k``); bfloat16 at the quick size (1024x256x8192) only, where the CPU has no bfloat16
    instructions (no avx512_bf16 / AMX: PyTorch's bfloat16 products run 10 to 20 times slower
    than float32 there, and the main size would take an hour)."""
    import torch
    reps = max(2, min(repeats, 2 if not quick else repeats))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16_native = "avx512_bf16" in flags or "amx_bf16" in flags
    n, h, v = SECTION_QUICK if quick else SECTION_SIZE
    _size_table(n, h, v, reps, (torch.float32, torch.bfloat16) if quick or bf16_native
                else (torch.float32,))
    if not quick and not bf16_native:
        _size_table(*SECTION_QUICK, reps, (torch.bfloat16,))
    if v128k and not quick:
        _size_table(*SIZE_128K, 2, (torch.float32,))
    print("targets: xent / 4 matmuls <= 1.2; extra peak <= 256 MB (one call in a fresh process, "
          "beyond inputs, weights and gradients; 'xent-tl' holds the caller's (N, V) teacher "
          "logits as an input)")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        method, n, h, v, dtname, out = argv[1:7]
        worker(method, int(n), int(h), int(v), dtname, out)
        return 0
    from bench_linear import _machine
    print(f"Machine: {_machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    quick = "--quick" in argv
    run(3 if quick else 7, quick, "--v128k" in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
