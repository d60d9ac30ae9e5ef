#!/usr/bin/env python3
"""Linear cross-entropy at language-model scale, and the cost of xent.torch's bridge.

    python3 tasks.py bench-linear            # N=8192, H=1024, V in 32768, 65536, 131072 (fp32)
    python3 tasks.py bench-linear --quick    # small sizes, a minute
    python3 benchmarks/bench_linear.py --sizes 4096x1024x32768 --methods xent,eager
    python3 benchmarks/bench_linear.py --section [--quick]  # the in-process section below
    python3 tasks.py bench --only linear     # the same section, in the kernel benchmark's run

Section (``run(repeats, quick)``, one process): linear cross-entropy at N=4096, H=1024,
V=32768 (``--quick``: 1024x256x8192), float32 and bfloat16, forward+backward, timed interleaved
(bench_kernels.time_interleaved: contenders in turn, rotating order, medians):
  xent           xent.torch.linear_cross_entropy (default chunk size)
  3 matmuls      its three products alone at the same chunking and dtype (logits x@W.T into the
                 chunk buffer, grad_x = dz@W, grad_W += dz.T@x): the floor for xent's time
  torch          F.linear_cross_entropy (options=None: PyTorch's reference, the (N, V) logits)
and, for xent and torch, the peak resident memory during one call beyond what it held before,
minus the gradients of x and W (VmHWM after a reset through /proc/self/clear_refs).

Table 1, linear cross-entropy forward+backward (loss = CE(x @ W.T, t), gradients of x and W):
  eager          F.cross_entropy(x @ W.T, t): PyTorch holding the (N, V) logits
  compile        torch.compile of the same (where it compiles; its warm-up run is not timed)
  torch-chunked  F.linear_cross_entropy(..., options=torch.nn.LinearCrossEntropyOptions())
  xent           xent.torch.linear_cross_entropy (default chunk size)
  gemm-only      the three products alone (x@W.T, dz@W, dz.T@x), unchunked: a floor for time
  xent@ROWS      xent with chunk_size=ROWS (give it in --methods, e.g. xent@256,xent@1024)
Each (method, size) runs in a fresh process. "extra peak" is the process's peak resident memory
during the timed step (VmHWM after resetting it through /proc/self/clear_refs; ru_maxrss where
that is unavailable) minus its resident memory just before, minus the gradients of x and W that
every method must produce: the memory beyond inputs, weights and their gradients. "match" is the
largest difference from eager of the loss and of both gradients, relative to each one's largest
magnitude (gradients of W compared on 512 sampled rows).

Table 2, the bridge: torch.nn.CrossEntropyLoss vs xent.torch.CrossEntropyLoss vs the NumPy core
called directly (loss and gradient) on (N, C) logits, and a whole training step (linear layer,
loss, backward, SGD) with each loss module. Bridge overhead = xent.torch time - core time (the
bridge forced on even below MIN_ELEMENTS). Medians of blocks; the load average is printed because
other work on the machine slows PyTorch's multi-threaded ops far more than single-threaded ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_SIZES = [(8192, 1024, 32768), (8192, 1024, 65536), (8192, 1024, 131072)]
QUICK_SIZES = [(1024, 256, 8192), (2048, 256, 16384)]
METHODS = ["eager", "compile", "torch-chunked", "xent", "gemm-only"]
SECTION_METHODS = ["xent", "xent-compact", "torch-lce"]  # (worker only: the section's memory)
SAMPLE_ROWS = 512


# --- worker: one (method, size) in a fresh process ---------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(method: str, n: int, h: int, v: int, out: str) -> None:
    import torch
    import torch.nn.functional as F

    import xent.torch as xt

    method, _, dtname = method.partition(":")  # e.g. xent:bfloat16
    dt = getattr(torch, dtname or "float32")
    torch.manual_seed(0)
    x = (torch.randn(n, h) * 0.5).to(dt).requires_grad_(True)
    W = (torch.randn(v, h) * (1.0 / h**0.5)).to(dt).requires_grad_(True)
    t = torch.randint(0, v, (n,))
    t[::17] = -100

    def eager_fn(a, B, tt):
        return F.cross_entropy(a @ B.T, tt)

    if method == "eager":
        fn = eager_fn
    elif method == "compile":
        fn = torch.compile(eager_fn)
    elif method == "torch-chunked":
        def fn(a, B, tt):
            return F.linear_cross_entropy(a, B, tt,
                                          options=torch.nn.LinearCrossEntropyOptions())
    elif method == "xent":
        def fn(a, B, tt):
            return xt.linear_cross_entropy(a, B, tt)
    elif method == "xent-compact":  # 16-bit grad_W accumulated in its dtype
        def fn(a, B, tt):
            return xt.linear_cross_entropy(
                a, B, tt, options=torch.nn.LinearCrossEntropyOptions(acc_policy="compact"))
    elif method == "torch-lce":
        def fn(a, B, tt):
            return F.linear_cross_entropy(a, B, tt)
    elif method.startswith("xent@"):  # a given chunk size: xent@512
        rows_per_chunk = int(method[5:])

        def fn(a, B, tt):
            return xt.linear_cross_entropy(a, B, tt, chunk_size=rows_per_chunk)
    elif method == "gemm-only":
        fn = None
    else:
        raise SystemExit(f"unknown method {method!r}; expected one of {METHODS}")

    # warm-up on a small problem, large enough per chunk (128 x 8192) that xent's core takes its
    # Numba path: its one-time JIT/cache load (~100 MB) is not part of a training step.
    # torch.compile warms up at full size instead (recompiling per shape).
    wv = min(v, 8192)
    xs, Ws, ts = x[:128].detach(), W[:wv].detach().clone().requires_grad_(True), t[:128] % wv
    if fn is not None and method != "compile":
        fn(xs.clone().requires_grad_(True), Ws, ts).backward()
    result = {"method": method, "n": n, "h": h, "v": v}
    try:
        if method == "compile":
            t0 = time.perf_counter()
            fn(x, W, t).backward()
            result["compile_s"] = time.perf_counter() - t0
            x.grad = None
            W.grad = None
        reset_ok = _reset_peak()
        before = _rss_bytes()
        t0 = time.perf_counter()
        if fn is None:
            with torch.no_grad():
                z = x @ W.T
                gx = z @ W
                gw = z.T @ x
                loss = z[0, 0]
            del z
        else:
            loss = fn(x, W, t)
            loss.backward()
            gx, gw = x.grad, W.grad
        elapsed = time.perf_counter() - t0
        peak = _peak_bytes(reset_ok)
        grads = gx.numel() * gx.element_size() + gw.numel() * gw.element_size()
        result.update(time_s=elapsed, extra_peak_mb=max(0, peak - before - grads) / 2**20,
                      peak_method="VmHWM" if reset_ok else "ru_maxrss")
        g = torch.Generator().manual_seed(1)
        rows = torch.randperm(v, generator=g)[:SAMPLE_ROWS]
        torch.save({"loss": loss.detach().double(), "gx": gx.detach(),
                    "gw": gw.detach()[rows].clone()}, out + ".pt")
    except Exception as exc:  # a method that cannot run reports why; the table says so
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    with open(out, "w") as f:
        json.dump(result, f)


def _rel(a, b) -> float:
    scale = b.abs().max().clamp_min(1e-30)
    return float((a.double() - b.double()).abs().max() / scale)


def run_linear(sizes, methods, timeout) -> list[dict]:
    import torch
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_linear_"))
    for n, h, v in sizes:
        ref = None
        for method in methods:
            out = str(tmp / f"{method}_{n}_{h}_{v}.json")
            cmd = [sys.executable, __file__, "--worker", method, str(n), str(h), str(v), out]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if not os.path.exists(out):
                    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    res = {"method": method, "n": n, "h": h, "v": v, "error": err[:120]}
                else:
                    res = json.load(open(out))
            except subprocess.TimeoutExpired:
                res = {"method": method, "n": n, "h": h, "v": v,
                       "error": f"timed out after {timeout} s"}
            if "error" not in res and method != "gemm-only":
                data = torch.load(out + ".pt")
                if method == "eager":
                    ref = data
                    res["match"] = "reference"
                elif ref is not None:
                    errs = [_rel(data[k], ref[k]) for k in ("loss", "gx", "gw")]
                    res["match"] = "loss {:.0e}, dx {:.0e}, dW {:.0e}".format(*errs)
                    res["match_ok"] = max(errs) < 1e-4
                os.remove(out + ".pt")
            elif "error" not in res:
                os.remove(out + ".pt")
            rows.append(res)
            _print_linear_row(res)
    return rows


def _print_linear_row(r: dict) -> None:
    size = f"{r['n']}x{r['h']}x{r['v']}"
    if "error" in r:
        print(f"| {size} | {r['method']} | - | - | failed: {r['error']} |", flush=True)
        return
    extra = f"{r['extra_peak_mb']:.0f}" if r["method"] != "gemm-only" else "n/a"
    match = r.get("match", "n/a")
    if "match_ok" in r:
        match = ("yes: " if r["match_ok"] else "NO: ") + match
    comp = f" (compile {r['compile_s']:.0f} s, untimed)" if "compile_s" in r else ""
    print(f"| {size} | {r['method']} | {r['time_s']:.2f}{comp} | {extra} | {match} |",
          flush=True)


# --- bridge overhead ---------------------------------------------------------------------------

def _blocks(fns: dict, repeat: int, min_time: float = 0.3) -> dict:
    """Median time of each function, each timed in its own block after a warm-up call.

    Blocks rather than round-robin: switching between PyTorch's OpenMP pool and Numba's within
    a loop makes each pay for the other's spinning threads on a 2-core machine."""
    out = {}
    for k, fn in fns.items():
        fn()
        times = []
        start = time.perf_counter()
        while len(times) < repeat or (time.perf_counter() - start < min_time
                                      and len(times) < 200):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[k] = statistics.median(times)
    return out


def _bridge_row(n: int, c: int, repeat: int) -> None:
    import torch

    import xent
    import xent.torch as xt

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=g).requires_grad_(True)
    t = torch.randint(0, c, (n,), generator=g)
    xn, tn = logits.detach().numpy(), t.numpy()

    def step(loss_fn):
        logits.grad = None
        loss_fn(logits, t).backward()

    ref_fn, our_fn = torch.nn.CrossEntropyLoss(), xt.CrossEntropyLoss()
    cutoff = xt.set_min_elements(0)  # time the bridge itself, even where it would defer to torch
    try:
        res = _blocks({
            "torch": lambda: step(ref_fn),
            "xent": lambda: step(our_fn),
            "core": lambda: xent.cross_entropy(xn, tn, return_grad=True),
        }, repeat)
    finally:
        xt.set_min_elements(cutoff)
    note = " (below the cut-off: runs torch)" if n * c < cutoff else ""
    print(f"| {n} x {c}{note} | {res['torch'] * 1e3:.3f} ms | {res['xent'] * 1e3:.3f} ms | "
          f"{res['core'] * 1e3:.3f} ms | {(res['xent'] - res['core']) * 1e6:.0f} µs | "
          f"{res['torch'] / res['xent']:.2f}x |", flush=True)


def _train_row(n: int, hdim: int, c: int, repeat: int) -> None:
    import torch

    import xent.torch as xt

    steps = {}
    for name, loss_fn in (("torch", torch.nn.CrossEntropyLoss()),
                          ("xent", xt.CrossEntropyLoss())):
        torch.manual_seed(0)
        model = torch.nn.Linear(hdim, c)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(n, hdim)
        t = torch.randint(0, c, (n,))

        def train_step(model=model, opt=opt, loss_fn=loss_fn, x=x, t=t):
            opt.zero_grad()
            loss_fn(model(x), t).backward()
            opt.step()

        steps[name] = train_step
    res = _blocks(steps, repeat)
    print(f"| N={n}, H={hdim}, C={c} | {res['torch'] * 1e3:.2f} ms | {res['xent'] * 1e3:.2f} ms "
          f"| {res['torch'] / res['xent']:.2f}x |", flush=True)


def run_bridge(shapes, train_shapes, repeat: int) -> None:
    print("\nload average before the bridge tables: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("\n| N x C (loss + backward) | torch.nn.CrossEntropyLoss | xent.torch.CrossEntropyLoss | "
          "xent core (NumPy in/out) | bridge overhead | speed-up vs torch |")
    print("|---|---|---|---|---|---|")
    for n, c in shapes:
        _bridge_row(n, c, repeat)
    print("\n| training step (Linear H->C, loss, backward, SGD) | torch.nn.CrossEntropyLoss | "
          "xent.torch.CrossEntropyLoss | speed-up |")
    print("|---|---|---|---|")
    for n, hdim, c in train_shapes:
        _train_row(n, hdim, c, max(3, repeat // 3))


# --- the section: xent against its three matrix products, in one process ----------------------

SECTION_SIZE = (4096, 1024, 32768)
SECTION_QUICK = (1024, 256, 8192)


def _floor_fn(x, W, chunk: int):
    """The three products of xent's chunked pass alone, at its chunking and in its dtype."""
    import torch

    n, v = x.shape[0], W.shape[0]

    def call() -> None:
        with torch.no_grad():
            buf = torch.empty(min(chunk, n), v, dtype=x.dtype)
            gx, gW = torch.empty_like(x), torch.zeros_like(W)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                z = buf[: e - s]
                torch.mm(x[s:e], W.t(), out=z)
                torch.mm(z, W, out=gx[s:e])
                gW.addmm_(z.t(), x[s:e])
    return call


def _extra_peak_mb(method: str, n: int, h: int, v: int, dtype: str) -> float:
    """Peak resident memory of one forward+backward of ``method`` in a fresh process, beyond
    what it held before, minus the gradients of x and W (MiB; the worker's measure)."""
    out = Path(tempfile.mkdtemp(prefix="bench_linear_")) / "mem.json"
    cmd = [sys.executable, __file__, "--worker", f"{method}:{dtype}", str(n), str(h), str(v),
           str(out)]
    subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    try:
        res = json.loads(out.read_text())
        Path(str(out) + ".pt").unlink(missing_ok=True)
        return float(res.get("extra_peak_mb", float("nan")))
    except (OSError, ValueError):
        return float("nan")


def run(repeats: int, quick: bool) -> None:
    """Print the linear cross-entropy section: xent, its three matmuls, PyTorch; fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import xent.torch as xt
    from bench_kernels import time_interleaved
    from xent.torch import _linear

    n, h, v = SECTION_QUICK if quick else SECTION_SIZE
    reps = max(2, min(repeats, 3 if not quick else repeats))
    print(f"\nLinear cross-entropy, N={n}, H={h}, V={v}, forward+backward, {reps} interleaved "
          f"repeats (medians), torch on {torch.get_num_threads()} threads; load average "
          "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("| dtype | contender | time | 3 matmuls at its chunking | / matmuls | torch "
          "F.linear_cross_entropy | torch / contender | extra peak (MiB) | path |")
    print("|---|---|---|---|---|---|---|---|---|")
    compact = torch.nn.LinearCrossEntropyOptions(acc_policy="compact")
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(n, h, generator=g) * 0.5).to(dt).requires_grad_(True)
        W = (torch.randn(v, h, generator=g) / h**0.5).to(dt).requires_grad_(True)
        t = torch.randint(0, v, (n,), generator=g)
        t[::17] = -100
        name = str(dt).replace("torch.", "")
        on_kernels = dt != torch.bfloat16 or _linear._bf16_on_the_kernels()

        def step(fn, x=x, W=W, t=t):
            def call() -> None:
                fn(x, W, t).backward()
                x.grad = W.grad = None
            return call

        variants = {"xent": (None, _linear._default_chunk(v, 1, x))}
        if dt == torch.bfloat16:
            variants["xent-compact"] = (compact, _linear._default_chunk(v, 1, x, True))
        fns = {"torch": step(F.linear_cross_entropy)}
        for k, (opt, chunk) in variants.items():
            fns[k] = step(lambda a, B, tt, opt=opt: xt.linear_cross_entropy(a, B, tt,
                                                                            options=opt))
            fns[f"matmuls@{chunk}"] = _floor_fn(x.detach(), W.detach(), chunk)
        # warm-up of the kernels on a small problem (their JIT/cache load is not a step's cost)
        xt.linear_cross_entropy(x[:64].detach(), W[:4096].detach().requires_grad_(True),
                                t[:64] % 4096).backward()
        times = time_interleaved(fns, reps, pause=0.5)
        for k, (_, chunk) in variants.items():
            floor = times[f"matmuls@{chunk}"]
            path = (f"kernels, chunk {min(chunk, n)} rows" if on_kernels
                    else "PyTorch fallback (core/bridge lack bfloat16)")
            print(f"| {name} | {k} | {times[k]:.3f} s | {floor:.3f} s | "
                  f"{times[k] / floor:.3f} | {times['torch']:.3f} s | "
                  f"{times['torch'] / times[k]:.2f}x | "
                  f"{_extra_peak_mb(k, n, h, v, name):.0f} | {path} |", flush=True)
        print(f"| {name} | torch | {times['torch']:.3f} s | | | | | "
              f"{_extra_peak_mb('torch-lce', n, h, v, name):.0f} | F.linear_cross_entropy |",
              flush=True)
    print("targets: xent / matmuls <= 1.1 and extra peak <= 256 MB, float32 and bfloat16; "
          "extra peak: one call in a fresh process, beyond inputs, weights and gradients")


def _machine() -> str:
    import numpy
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"NumPy {numpy.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


def _parse_size(s: str) -> tuple[int, int, int]:
    try:
        n, h, v = (int(a) for a in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxHxV like 8192x1024x65536, got {s!r}") \
            from None
    return n, h, v


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        method, n, h, v, out = argv[1:6]
        worker(method, int(n), int(h), int(v), out)
        return 0
    if argv[:1] == ["--section"]:
        quick = "--quick" in argv[1:]
        run(3 if quick else 7, quick)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--sizes", type=_parse_size, nargs="+", help="NxHxV sizes")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}, or xent@ROWS")
    p.add_argument("--no-bridge", action="store_true", help="skip the bridge table")
    p.add_argument("--no-linear", action="store_true", help="skip the linear table")
    p.add_argument("--timeout", type=float, default=900, help="seconds per (method, size)")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(m for m in set(methods) - set(METHODS)
                     if not (m.startswith("xent@") and m[5:].isdigit()))
    if unknown:
        p.error(f"unknown methods {unknown}; expected a subset of {METHODS}")
    if "eager" in methods:  # eager is the reference for "match": run it first
        methods = ["eager"] + [m for m in methods if m != "eager"]
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    print(f"Machine: {_machine()}\n")
    if not args.no_linear:
        print("Linear cross-entropy, fp32, forward+backward, one timed step per process "
              "(extra peak: beyond inputs, weights and their gradients)\n")
        print("| N x H x V | method | time (s) | extra peak (MB) | match vs eager |")
        print("|---|---|---|---|---|")
        run_linear(sizes, methods, args.timeout)
    if not args.no_bridge:
        if args.quick:
            shapes = [(64, 10), (256, 100), (1024, 1000), (2048, 8192)]
            train = [(64, 32, 10), (1024, 256, 1000)]
        else:
            shapes = [(64, 10), (256, 100), (256, 1000), (1024, 1000), (4096, 32768)]
            train = [(64, 32, 10), (1024, 256, 1000), (4096, 512, 32768)]
        run_bridge(shapes, train, repeat=5 if args.quick else 21)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
