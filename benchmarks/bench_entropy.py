#!/usr/bin/env python3
"""Issue 18, item 1: cross-entropy with the per-position entropy (and a temperature), and its
linear form, beside the memory floor, PyTorch and the RL libraries' formulas.

    python3 benchmarks/bench_entropy.py [--quick] [--big] [--repeats R]
    python3 tasks.py bench --only entropy      # the same, as a section of the kernel benchmark

Table 1, cross-entropy with ``return_entropy`` forward+backward at (4096, 32768) (``--quick``:
(512, 4096)), float32 and bfloat16; loss = mean(nll) - 0.01·mean(entropy), the RL objective's
shape, so both upstream gradients are live:
  xent           xent.torch.cross_entropy(x, t, reduction="none", return_entropy=True)
  floor          read the logits twice, write an (N, C) array once (bench_kernels.floor_kernels,
                 the kernels' own loops and threads; float32 only)
  eager          log_softmax + gather + -(p·log p).sum, PyTorch eager
  compile        torch.compile of the same
  trl            F.cross_entropy + TRL's ``entropy_from_logits`` (trl.trainer.utils, its
                 chunked CPU path)
Table 2, linear cross-entropy with entropy at temperature 0.7, N=4096, H=1024, V=32768
(``--big`` adds V=128256 for xent and its matmuls only: the eager forms hold several (N, V)
float32 tensors, 2 GiB each; ``--quick``: 1024x256x8192):
  xent           nll, ent = xent.torch.linear_cross_entropy(h, W, t, reduction="none",
                 temperature=0.7, return_entropy=True)
  3 matmuls      its three products alone at its chunking (bench_linear._floor_fn)
  eager          the composition on the (N, V) logits in PyTorch
  verl           verl's FusedLinearForPPO formula written here in PyTorch: chunks of 512 rows,
                 forward without grad, backward recomputing each chunk's logits and applying
                 d logits = [g_lp·(onehot - p) - g_H·p·(z - Σ p z)]/T analytically
"extra peak": one call in a fresh process, peak resident memory beyond what it held before,
minus the gradients of h and W (bench_linear's worker method). Times are medians of
interleaved repeats (bench_kernels.time_interleaved); the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

T = 0.7


def _ce_fns(x, t):
    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import entropy_from_logits

    import xent.torch as xt

    def objective(nll, ent):
        (nll.mean() - 0.01 * ent.mean()).backward()

    def eager_parts(z):
        logp = torch.log_softmax(z.float(), 1)
        nll = -logp.gather(1, t[:, None])[:, 0]
        return nll, -(logp.exp() * logp).sum(1)

    compiled = torch.compile(eager_parts)

    def run(fn):
        def call():
            objective(*fn(x))
            x.grad = None
        return call

    return {
        "xent": run(lambda z: xt.cross_entropy(z, t, reduction="none", return_entropy=True)),
        "eager": run(eager_parts),
        "compile": run(compiled),
        "trl": run(lambda z: (F.cross_entropy(z, t, reduction="none"), entropy_from_logits(z))),
    }


def ce_table(repeats: int, quick: bool) -> None:
    import numpy as np
    import torch

    from bench_kernels import floor_kernels, time_interleaved

    n, c = (512, 4096) if quick else (4096, 32768)
    print(f"\nCross-entropy with entropy, ({n}, {c}), forward+backward of mean(nll) - "
          f"0.01·mean(H), {repeats} interleaved repeats (medians); torch on "
          f"{torch.get_num_threads()} threads; load average "
          "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("| dtype | xent | floor (read 2x, write 1x) | xent / floor | eager | compile | trl "
          "| eager / xent | compile / xent | trl / xent |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(n, c, generator=g) * 2).to(dt).requires_grad_(True)
        t = torch.randint(0, c, (n,), generator=g)
        fns = _ce_fns(x, t)
        if dt == torch.float32:
            floor = floor_kernels()
            xn, out = x.detach().numpy(), np.empty((n, c), np.float32)
            fns["floor"] = lambda floor=floor, xn=xn, out=out: floor(xn, out)
        times = time_interleaved(fns, repeats, pause=0.3)
        fl = times.get("floor")
        name = str(dt).replace("torch.", "")
        xt_ = times["xent"]
        print(f"| {name} | {xt_ * 1e3:.1f} ms | "
              + (f"{fl * 1e3:.1f} ms | {xt_ / fl:.2f} | " if fl else "— | — | ")
              + f"{times['eager'] * 1e3:.1f} ms | {times['compile'] * 1e3:.1f} ms | "
              f"{times['trl'] * 1e3:.1f} ms | {times['eager'] / xt_:.2f}x | "
              f"{times['compile'] / xt_:.2f}x | {times['trl'] / xt_:.2f}x |", flush=True)
    print("targets (float32): xent within 1.3x the floor, >= 8x eager, >= 3x torch.compile")


def _verl_fn():
    """verl's FusedLinearForPPO (log-probs and entropy of chunks of hidden states at a
    temperature), its formula written in PyTorch: forward without autograd, backward by
    recomputing each chunk's logits."""
    import torch

    class FusedLinearForPPO(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, W, t, temperature, chunk):
            with torch.no_grad():
                lps, ents = [], []
                for s in range(0, h.shape[0], chunk):
                    z = (h[s:s + chunk] @ W.T).float() / temperature
                    logp = torch.log_softmax(z, -1)
                    p = logp.exp()
                    lps.append(logp.gather(-1, t[s:s + chunk, None])[:, 0])
                    ents.append(torch.logsumexp(z, -1) - (p * z).sum(-1))
            ctx.save_for_backward(h, W, t)
            ctx.temperature, ctx.chunk = temperature, chunk
            return torch.cat(lps), torch.cat(ents)

        @staticmethod
        def backward(ctx, g_lp, g_ent):
            h, W, t = ctx.saved_tensors
            T, chunk = ctx.temperature, ctx.chunk
            gh, gW = torch.empty_like(h), torch.zeros_like(W, dtype=torch.float32)
            for s in range(0, h.shape[0], chunk):
                hs = h[s:s + chunk]
                z = (hs @ W.T).float() / T
                p = torch.softmax(z, -1)
                mu = (p * z).sum(-1, keepdim=True)
                dz = -g_ent[s:s + chunk, None] * p * (z - mu) - g_lp[s:s + chunk, None] * p
                dz.scatter_add_(1, t[s:s + chunk, None], g_lp[s:s + chunk, None])
                dz = (dz / T).to(h.dtype)
                gh[s:s + chunk] = dz @ W
                gW.addmm_(dz.t().float(), hs.float())
            return gh, gW.to(W.dtype), None, None, None

    return lambda h, W, t: FusedLinearForPPO.apply(h, W, t, T, 512)


def _linear_call(method: str):
    import torch

    import xent.torch as xt

    if method == "xent":
        def fn(h, W, t):
            return xt.linear_cross_entropy(h, W, t, reduction="none", temperature=T,
                                           return_entropy=True)
    elif method == "eager":
        def fn(h, W, t):
            z = (h @ W.T).float() / T
            logp = torch.log_softmax(z, -1)
            return -logp.gather(1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
    else:
        verl = _verl_fn()

        def fn(h, W, t):
            lp, ent = verl(h, W, t)
            return -lp, ent
    return fn


def _objective(nll, ent) -> None:
    (nll.mean() - 0.01 * ent.mean()).backward()


def _extra_peak(method: str, n: int, h: int, v: int, dtype: str) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench_entropy_")) / "mem.json"
    cmd = [sys.executable, __file__, "--worker", method, dtype, str(n), str(h), str(v), str(out)]
    subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    try:
        return float(json.loads(out.read_text())["extra_peak_mb"])
    except (OSError, ValueError, KeyError):
        return float("nan")


def worker(method: str, dtype: str, n: int, h: int, v: int, out: str) -> None:
    import torch

    from bench_linear import _peak_bytes, _reset_peak, _rss_bytes

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    x = (torch.randn(n, h) * 0.5).to(dt).requires_grad_(True)
    W = (torch.randn(v, h) / h**0.5).to(dt).requires_grad_(True)
    t = torch.randint(0, v, (n,))
    fn = _linear_call(method)
    _objective(*fn(x[:64], W, t[:64]))  # warm-up (kernels loaded), then the measured call
    x.grad = W.grad = None
    before = _rss_bytes()
    ok = _reset_peak()
    _objective(*fn(x, W, t))
    peak = _peak_bytes(ok)
    grads = (x.grad.numel() + W.grad.numel()) * x.element_size()
    Path(out).write_text(json.dumps({"extra_peak_mb": (peak - before - grads) / 2**20}))


def linear_table(repeats: int, quick: bool, big: bool, memory: bool = True) -> None:
    import torch

    from bench_kernels import time_interleaved
    from bench_linear import _floor_fn
    from xent.torch import _linear

    sizes = [(1024, 256, 8192)] if quick else [(4096, 1024, 32768)]
    if big and not quick:
        sizes.append((4096, 1024, 128256))
    print(f"\nLinear cross-entropy with entropy at T={T} (nll and H per token, reduction "
          f"'none', loss = mean(nll) - 0.01·mean(H)), forward+backward, {repeats} interleaved "
          f"repeats (medians); load average " + "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("| dtype | N, H, V | xent | 3 matmuls | xent / matmuls | eager | verl (chunked "
          "torch) | eager / xent | verl / xent | extra peak MiB: xent / eager / verl |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (n, h, v), dt in [(s, d) for s in sizes for d in (torch.float32, torch.bfloat16)]:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(n, h, generator=g) * 0.5).to(dt).requires_grad_(True)
        W = (torch.randn(v, h, generator=g) / h**0.5).to(dt).requires_grad_(True)
        t = torch.randint(0, v, (n,), generator=g)
        methods = ["xent"] if v > 65536 else ["xent", "eager", "verl"]

        def step(fn, x=x, W=W, t=t):
            def call():
                _objective(*fn(x, W, t))
                x.grad = W.grad = None
            return call

        fns = {m: step(_linear_call(m)) for m in methods}
        chunk = _linear._default_chunk(v, 1, x)
        fns["matmuls"] = _floor_fn(x.detach(), W.detach(), chunk)
        times = time_interleaved(fns, repeats, pause=0.5)
        name = str(dt).replace("torch.", "")
        mem = [(_extra_peak(m, n, h, v, name) if memory else float("nan")) for m in methods]
        mem += [float("nan")] * (3 - len(mem))
        xs = times["xent"]

        def col(m, times=times):
            return f"{times[m]:.2f} s" if m in times else "—"

        def ratio(m, times=times, xs=xs):
            return f"{times[m] / xs:.2f}x" if m in times else "—"

        print(f"| {name} | {n}, {h}, {v} | {xs:.2f} s | {times['matmuls']:.2f} s | "
              f"{xs / times['matmuls']:.3f} | {col('eager')} | {col('verl')} | "
              f"{ratio('eager')} | {ratio('verl')} | "
              + " / ".join("—" if m != m else f"{m:.0f}" for m in mem) + " |", flush=True)
    print("targets: xent / matmuls <= 1.15 (float32), <= 1.3 (bfloat16); extra peak <= 256 MB "
          "at V=128256")


def run(repeats: int, quick: bool) -> None:
    """The section of bench_kernels.py (``--only entropy``)."""
    from bench_linear import _machine

    print("\nEntropy and temperature (issue 18): " + _machine())
    reps = max(2, min(repeats, 3))
    ce_table(reps, quick)
    linear_table(reps, quick, big=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true", help="also V=128256 (xent and matmuls)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--only", choices=["ce", "linear"], default=None)
    ap.add_argument("--worker", nargs=6, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        m, d, n, h, v, out = args.worker
        worker(m, d, int(n), int(h), int(v), out)
        return 0
    from bench_linear import _machine

    print("Entropy and temperature (issue 18): " + _machine())
    if args.only in (None, "ce"):
        ce_table(args.repeats, args.quick)
    if args.only in (None, "linear"):
        linear_table(args.repeats, args.quick, args.big, not args.no_memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
