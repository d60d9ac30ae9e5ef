"""Benchmark xent's fused CPU kernels against PyTorch eager, xent's NumPy path and JAX.

    python3 tasks.py bench              # the full sweep (a few minutes on 2 cores)
    python3 tasks.py bench --quick      # a smoke run (seconds)
    python3 tasks.py bench --crossover  # also the NumPy/kernel sweep behind _dispatch's threshold
    python3 tasks.py bench --only half  # sections: core half torch_softmax compile small linear

One process, one run: every contender is timed on the same inputs, interleaved repeat by repeat
in a rotating order with a short pause before each call (so load from other processes, and other
runtimes' threads winding down, hit all of them alike), and the table shows medians. Printed:

* the machine (CPU model, cores, memory) and library versions;
* for each shape and operation, the median time of each contender, its ratio to PyTorch eager
  (>1 means faster than PyTorch) and, for the main shape, the peak extra memory;
* xent as users call it ("xent": the output-buffer cache on, so a dropped gradient's memory is
  reused by the next call) and with the cache bypassed ("xent no cache": fresh memory each call);
* the bandwidth floor, timed among the contenders (same memory state): a kernel that reads the
  logits twice (two passes per row, as the fused kernel does) and writes an N×C array once, into
  a freshly allocated array and into a reused one (compare "xent no cache" with the first,
  "xent" and "xent inplace" with the second);
* the first-use cost: Numba compilation in a fresh cache, and loading from the cache afterwards.

Peak extra memory is measured in a subprocess per contender: the resident set size high-water
mark (``VmHWM``) minus the resident size just before the call, with the inputs already in memory
and everything warmed up on a small input, so it counts what the call allocates (NumPy, Numba,
PyTorch and XLA alike). For xent, two calls (the first gradient dropped before the second) and
what stays resident in between (the cache's idle buffer). The high-water mark only counts if
the call raises it above everything before it, which it does here (a call allocates at least
the gradient, 1x the logits).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the section scripts (SECTIONS)

import xent  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------
def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
        simd = [f for f in ("avx2", "fma", "avx512f") if f" {f}" in flags]
    except (OSError, IndexError):
        simd = []
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        mem = float("nan")
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "torch", "scipy", "jax", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"CPU: {model} ({os.cpu_count()} logical cores; SIMD: {', '.join(simd) or '?'}), "
        f"memory {mem:.0f} GiB, {platform.system()} {platform.release()}\n"
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"\nload average at start: {', '.join(f'{v:.2f}' for v in load)}"
    )


def mem_available() -> float:
    """Bytes of memory available now (Linux), or +inf when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    setup: dict[str, Callable[[], None]] | None = None,
    min_time: float = 0.0,
    pause: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn within each repeat.

    ``setup[name]`` (untimed) runs before each timed call (e.g. a fresh copy for in-place).
    With ``min_time``, a sample is the mean over as many calls as fill ``min_time`` (tiny inputs).
    ``clock``: wall clock by default; ``time.thread_time`` counts only this thread's CPU time
    (for calls that run on the calling thread alone: not disturbed by other jobs' load).
    """
    setup = setup or {}
    for name, fn in fns.items():  # warm-up: compilation, JIT tracing, first-touch allocations
        setup.get(name, lambda: None)()
        fn()
    loops = {}
    for name, fn in fns.items():
        n, t = 1, 0.0
        while min_time and n < 1_000_000:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t = time.perf_counter() - t0
            if t >= min_time:
                break
            n *= 4
        loops[name] = n
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeats):
        # Rotate the order each repeat, and pause before each call: a runtime's worker threads
        # (PyTorch's OpenMP, XLA's, ours) keep a core busy for a while after their call returns,
        # which would otherwise always slow down whichever contender comes next.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            fn = fns[name]
            setup.get(name, lambda: None)()
            gc.collect()
            time.sleep(pause)
            n = loops[name]
            t0 = clock()
            for _ in range(n):
                fn()
            samples[name].append((clock() - t0) / n)
    return {name: statistics.median(v) for name, v in samples.items()}


# ------------------------------------------------------------------------------------------------
# Contenders
# ------------------------------------------------------------------------------------------------
def have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


HAVE_TORCH, HAVE_JAX, HAVE_SCIPY = have("torch"), have("jax") and have("optax"), have("scipy")


def floor_kernels():
    """The bandwidth floor: read each row twice, write an N×C array once.

    Compiled like the kernels (Numba, ``nogil``) and run over blocks of rows on the same threads
    (``xent._kernels._threads.run_rows``), so the floor and the kernels share their parallelism.
    """
    import numba

    from xent._kernels import _rows
    from xent._kernels._threads import run_rows

    # The kernels' own vectorised row loops (two reductions, one write), so the floor measures
    # memory traffic, not compute: a max reduction written with max() would stay scalar.
    @numba.njit(nogil=True, cache=True)
    def read2_write1(x, out, lo, hi):
        for i in range(lo, hi):
            r = x[i]
            s = _rows._sum_exp(r, r[0])  # read 1
            s2 = _rows._dot(r, r)  # read 2
            _rows._shift_sub_to(r, out[i], s * 0, s2 * 0)  # write: out = r (depends on s, s2)

    def floor(x, out):
        run_rows(read2_write1, x.shape[0], x.shape[1], (x, out))
        return out

    return floor


# Memory, in multiples of the logits, for the big shape: what a contender keeps resident while
# the others run (the in-place buffer, JAX's device copy) and what one call allocates.
_RESIDENT = {"xent": 1.0, "xent inplace": 1.0, "jax jit": 1.0}
_TRANSIENT_FWD = {"xent numpy": 2.0, "torch": 1.2, "jax jit": 1.2}
_TRANSIENT_BWD = {
    "xent": 1.0, "xent no cache": 1.0, "floor fresh": 1.0, "xent numpy": 2.0, "torch": 3.2,
    "jax jit": 2.2,
}
_PRIORITY = [
    "xent",
    "xent no cache",
    "floor fresh",
    "xent inplace",
    "floor reused",
    "torch",
    "xent numpy",
    "jax jit",
]
_BACKWARD_ONLY = ("xent no cache", "xent inplace", "floor fresh", "floor reused")


def without_cache(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with xent's output-buffer cache bypassed (every output in fresh memory), leaving
    the cache's idle buffers in place for the other contenders."""
    from xent import _buffers

    def run():
        saved = _buffers.MIN_BYTES
        _buffers.MIN_BYTES = 1 << 62
        try:
            return fn()
        finally:
            _buffers.MIN_BYTES = saved

    return run


def fit_in_memory(nbytes: int, backward: bool) -> set[str]:
    """The contenders that fit together beside the logits in 75% of the memory available now."""
    budget = 0.75 * mem_available() / nbytes - 1.0  # the logits themselves
    transient = _TRANSIENT_BWD if backward else _TRANSIENT_FWD
    chosen: set[str] = set()
    for name in _PRIORITY:
        if name in _BACKWARD_ONLY and not backward:
            continue
        trial = chosen | {name}
        resident = sum(_RESIDENT.get(n, 0.0) for n in trial)
        if resident + max(transient.get(n, 0.0) for n in trial) <= budget:
            chosen = trial
    if "floor reused" in chosen and "xent inplace" not in chosen:
        chosen.discard("floor reused")  # it writes into the in-place buffer
    return chosen


def ce_contenders(x: np.ndarray, t: np.ndarray, backward: bool, floor=None, only=None):
    """name -> (fn, setup or None) for cross-entropy with class-index targets, mean reduction.

    ``x`` is (N, C) or (N, C, d...) with the class axis 1, as in PyTorch. With ``floor`` (and
    ``backward``), the floor kernel is timed among the contenders, in the same memory state:
    into a fresh array and into the in-place contender's buffer (refilled before its own call).
    ``only``: the names to build (None: all); nothing is allocated for the others.
    """
    fns: dict[str, Callable[[], object]] = {}
    setups: dict[str, Callable[[], None]] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    def xent_call(backend):
        def run():
            with xent.use_backend(backend):
                return xent.cross_entropy(x, t, return_grad=backward)

        return run

    if want("xent"):
        fns["xent"] = xent_call("auto")
    if backward and want("xent no cache"):
        fns["xent no cache"] = without_cache(xent_call("auto"))
    if want("xent numpy"):
        fns["xent numpy"] = xent_call("numpy")
    if backward and x.ndim == 2 and want("xent inplace"):
        buf = np.empty_like(x)

        def refill():
            np.copyto(buf, x)

        def inplace():
            return xent.cross_entropy(buf, t, return_grad=True, inplace=True)

        fns["xent inplace"] = inplace
        setups["xent inplace"] = refill
        if floor is not None and want("floor reused"):
            fns["floor reused"] = lambda: floor(x, buf)
    if backward and x.ndim == 2 and floor is not None and want("floor fresh"):
        fns["floor fresh"] = lambda: floor(x, np.empty_like(x))
    if HAVE_TORCH and want("torch"):
        import torch
        import torch.nn.functional as F

        xt = torch.from_numpy(x).requires_grad_(backward)
        tt = torch.from_numpy(t)
        if backward:

            def torch_call():
                xt.grad = None
                loss = F.cross_entropy(xt, tt)
                loss.backward()
                return loss, xt.grad
        else:

            def torch_call():
                with torch.no_grad():
                    return F.cross_entropy(xt, tt)

        fns["torch"] = torch_call
    if HAVE_JAX and want("jax jit"):
        import jax
        import jax.numpy as jnp
        import optax

        def loss_fn(logits, labels):
            if logits.ndim > 2:
                logits = jnp.moveaxis(logits, 1, -1)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        f = jax.jit(jax.value_and_grad(loss_fn) if backward else loss_fn)
        xj, tj = jax.device_put(x), jax.device_put(t.astype(np.int32))

        def jax_call():
            return jax.block_until_ready(f(xj, tj))

        fns["jax jit"] = jax_call
    return fns, setups


def option_contenders(x: np.ndarray, t: np.ndarray):
    """Cross-entropy forward + backward with z-loss or soft-capping: xent's core (the one fused
    row kernel) against the same loss composed from PyTorch ops (``xent.torch._reference``)."""
    fns: dict[str, Callable[[], object]] = {}
    options = {"z-loss 1e-4": dict(lse_square_scale=1e-4), "softcap 30": dict(softcap=30.0)}
    for name, opts in options.items():
        fns[f"xent {name}"] = lambda o=opts: xent.cross_entropy(x, t, return_grad=True, **o)
    if HAVE_TORCH:
        import torch

        from xent.torch import _reference

        xt, tt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(t)
        for name, opts in options.items():
            def torch_call(o=opts):
                xt.grad = None
                loss = _reference.cross_entropy(
                    xt, tt, None, -100, "mean", 0.0, o.get("lse_square_scale", 0.0),
                    o.get("softcap"), False)
                loss.backward()
                return loss, xt.grad

            fns[f"torch {name}"] = torch_call
    return fns


def softmax_contenders(x: np.ndarray, op: str):
    fns: dict[str, Callable[[], object]] = {
        "xent": lambda: getattr(xent, op)(x, axis=-1),
        "xent no cache": without_cache(lambda: getattr(xent, op)(x, axis=-1)),
    }

    def xent_numpy():
        with xent.use_backend("numpy"):
            return getattr(xent, op)(x, axis=-1)

    fns["xent numpy"] = xent_numpy
    if HAVE_TORCH:
        import torch

        xt = torch.from_numpy(x)
        fns["torch"] = lambda: getattr(torch, op)(xt, -1)
    if HAVE_SCIPY:
        import scipy.special

        fns["scipy"] = lambda: getattr(scipy.special, op)(x, axis=-1)
    if HAVE_JAX:
        import jax

        f = jax.jit(lambda a: getattr(jax.nn, op)(a, axis=-1))
        xj = jax.device_put(x)
        fns["jax jit"] = lambda: jax.block_until_ready(f(xj))
    return fns


def softmax_backward_contenders(x: np.ndarray, op: str):
    """Forward + backward (the VJP from the forward's output, for a random upstream gradient):
    xent's forward and its fused VJP kernel, the NumPy path, PyTorch's autograd."""
    g = np.random.default_rng(1).standard_normal(x.shape, dtype=x.dtype)
    fwd, vjp = getattr(xent, op), getattr(xent, op + "_backward")
    fns: dict[str, Callable[[], object]] = {"xent": lambda: vjp(g, fwd(x, axis=-1), axis=-1)}

    def xent_numpy():
        with xent.use_backend("numpy"):
            return vjp(g, fwd(x, axis=-1), axis=-1)

    fns["xent numpy"] = xent_numpy
    if HAVE_TORCH:
        import torch

        xt, gt = torch.from_numpy(x), torch.from_numpy(g)

        def torch_call():
            a = xt.detach().requires_grad_()
            getattr(torch, op)(a, -1).backward(gt)
            return a.grad

        fns["torch"] = torch_call
    return fns


def bce_contenders(x: np.ndarray, y: np.ndarray):
    fns: dict[str, Callable[[], object]] = {
        "xent": lambda: xent.binary_cross_entropy_with_logits(x, y, return_grad=True),
    }

    def xent_numpy():
        with xent.use_backend("numpy"):
            return xent.binary_cross_entropy_with_logits(x, y, return_grad=True)

    fns["xent numpy"] = xent_numpy
    if HAVE_TORCH:
        import torch
        import torch.nn.functional as F

        xt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)

        def torch_call():
            xt.grad = None
            loss = F.binary_cross_entropy_with_logits(xt, yt)
            loss.backward()
            return loss, xt.grad

        fns["torch"] = torch_call
    return fns


# ------------------------------------------------------------------------------------------------
# Peak memory, in a subprocess per contender
# ------------------------------------------------------------------------------------------------
_MEM_SCRIPT = """
import json, sys, numpy as np
sys.path.insert(0, {src!r})
N, C, who = {N}, {C}, {who!r}
after = None  # xent only: what stays resident between two calls
x = np.empty((N, C), np.float32)
np.random.default_rng(0).standard_normal(dtype=np.float32, out=x)
t = np.random.default_rng(1).integers(0, C, N)

def status(field):
    # VmHWM is this process's own high-water mark (ru_maxrss would include the parent's resident
    # size at fork time, which Linux carries across exec).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

def rss():
    return status("VmRSS")

if who.startswith("xent"):
    import xent
    backend = "numpy" if who == "xent numpy" else "numba"
    with xent.use_backend(backend):  # load the kernels (the parallel driver too) before measuring
        xent.cross_entropy(x[:64].copy(), t[:64], return_grad=True)
        xent.cross_entropy(x[:64].copy(), t[:64], return_grad=True, inplace=True)
        if who == "xent no cache":
            xent.set_cache_limit(0)
        base = rss()
        out = xent.cross_entropy(x, t, return_grad=True, inplace=(who == "xent inplace"))
        del out  # a cached gradient stays resident, idle, for the next call
        after = rss() - base
        out = xent.cross_entropy(x, t, return_grad=True, inplace=(who == "xent inplace"))
elif who == "torch":
    import torch, torch.nn.functional as F
    xs = torch.zeros(4, 4, requires_grad=True)
    F.cross_entropy(xs, torch.zeros(4, dtype=torch.long)).backward()
    xt, tt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(t)
    base = rss()
    loss = F.cross_entropy(xt, tt)
    loss.backward()
elif who == "jax jit":
    import jax, jax.numpy as jnp, optax
    f = jax.jit(jax.value_and_grad(
        lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a, b).mean()))
    xj, tj = jax.device_put(x), jax.device_put(t.astype(np.int32))
    compiled = f.lower(xj, tj).compile()
    base = rss()
    out = jax.block_until_ready(compiled(xj, tj))
peak = status("VmHWM")
print(json.dumps({{"extra": peak - base, "after": after, "logits": x.nbytes}}))
"""


def peak_extra(who: str, N: int, C: int) -> tuple[float, float | None] | None:
    """Peak extra memory of loss + gradient calls, as a multiple of the logits' size.

    For xent, two calls: the gradient of the first is dropped before the second (the cache keeps
    its memory for the second); also returned, the memory the first call left resident once its
    gradient was dropped (the cache's idle buffer). Others: one call, and None.
    """
    code = _MEM_SCRIPT.format(src=str(ROOT / "src"), N=N, C=C, who=who)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    after = None if res["after"] is None else res["after"] / res["logits"]
    return res["extra"] / res["logits"], after


# ------------------------------------------------------------------------------------------------
# First use: compile into an empty cache, then load from it
# ------------------------------------------------------------------------------------------------
_FIRST_USE = """
import time, sys, numpy as np
t0 = time.perf_counter()
sys.path.insert(0, {src!r})
import xent
x = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
t = np.zeros(1024, int)
t1 = time.perf_counter()
with xent.use_backend("numba"):
    xent.cross_entropy(x, t, return_grad=True)
    t2 = time.perf_counter()
    xent.softmax(x); xent.log_softmax(x)
    t3 = time.perf_counter()
    xent.cross_entropy(x, t, return_grad=True)
    t4 = time.perf_counter()
print(t2 - t1, t3 - t2, t4 - t3)
"""


def first_use() -> str:
    code = _FIRST_USE.format(src=str(ROOT / "src"))
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("empty cache (compiles)", "warm cache (loads)"):
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env
            )
            if proc.returncode:
                return f"first-use measurement failed: {proc.stderr[-500:]}"
            ce, sm, again = (float(v) for v in proc.stdout.split())
            lines.append(
                f"  {label:24s}: first cross_entropy (float32, loss+grad, Numba import included) "
                f"{ce:.2f} s; then softmax+log_softmax {sm:.2f} s; "
                f"a second cross_entropy {again * 1e3:.1f} ms"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} us"


def table(title: str, times: dict[str, float], extra: dict[str, str] | None = None) -> None:
    ref = times.get("torch")
    print(f"\n{title}")
    print(f"  {'contender':14s} {'median':>10s} {'vs torch':>9s}  notes")
    for name, t in times.items():
        ratio = f"{ref / t:8.2f}x" if ref else "        -"
        note = (extra or {}).get(name, "")
        print(f"  {name:14s} {fmt_time(t):>10s} {ratio}  {note}")


def _crossover_pairs(B, K, x, t, rs, y, sc, out):
    """(NumPy call, kernel call) for softmax, log_softmax, ce_index (loss+grad), bce_logits."""
    return [
        (lambda: B.softmax(x, out), lambda: K.softmax(x, out)),
        (lambda: B.log_softmax(x, out), lambda: K.log_softmax(x, out)),
        (
            lambda: B.ce_index(x, t, None, -100, 0.0, 0.0, None, rs, None, out),
            lambda: K.ce_index(x, t, None, -100, 0.0, 0.0, None, rs, None, out),
        ),
        (
            lambda: B.bce_logits(x, y, None, None, sc, out),
            lambda: K.bce_logits(x, y, None, None, sc, out),
        ),
    ]


def crossover() -> None:
    """NumPy path vs kernels, one call, at growing sizes (behind _dispatch.AUTO_MIN_ELEMENTS)."""
    from xent import _backend_numpy as B
    from xent import _kernels as K

    rng = np.random.default_rng(0)
    print("\nCrossover (float32, backend functions called directly): NumPy time / kernel time")
    print(f"  {'shape':>14s} {'elements':>9s}  softmax  log_softmax  ce_index f+b  bce f+b")
    sizes = [(3, 3), (16, 64), (32, 128), (64, 256), (64, 1024), (128, 2048), (256, 4096)]
    sizes += [(512, 4096)]
    for M, C in sizes:
        x = rng.standard_normal((M, C)).astype(np.float32)
        t = rng.integers(0, C, M)
        rs = np.full(M, 1 / M, np.float32)
        y = rng.uniform(0, 1, (M, C)).astype(np.float32)
        sc = np.broadcast_to(np.float32(1 / x.size), (M, C))
        pairs = _crossover_pairs(B, K, x, t, rs, y, sc, np.empty_like(x))
        ratios = []
        for fb, fk in pairs:
            r = time_interleaved({"np": fb, "nb": fk}, repeats=7, min_time=2e-3)
            ratios.append(r["np"] / r["nb"])
        print(
            f"  {str((M, C)):>14s} {M * C:9d}  "
            + "  ".join(f"{v:7.2f}x" for v in ratios[:2])
            + f"  {ratios[2]:11.2f}x  {ratios[3]:6.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per contender")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--crossover", action="store_true", help="also the NumPy/kernel crossover")
    ap.add_argument("--only", action="append", choices=["core", *SECTIONS], default=None,
                    help="run only these sections (repeatable; default: all)")
    args = ap.parse_args(argv)
    only = set(args.only or ["core", *SECTIONS])
    repeats = args.repeats or (3 if args.quick else 7)

    print("xent kernel benchmark", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(machine())
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; repeats: {repeats}")
    print("times are medians; 'vs torch' = torch time / contender time (>1: faster than torch)")

    if "core" in only:
        core_tables(args, repeats)
    # 16-bit floats, torch.compile, small batches, linear cross-entropy: their own modules
    for name, module in SECTIONS.items():
        if name in only:
            importlib.import_module(module).run(repeats, args.quick)

    if "core" in only:
        print(
            "\nFirst use of the kernels (fresh process; NUMBA_CACHE_DIR = a new temporary "
            "directory):"
        )
        print(first_use())
    return 0


#: Sections in their own scripts (each has ``run(repeats, quick)``), run after the core tables.
SECTIONS = {
    "half": "bench_half",
    "torch_softmax": "bench_torch_softmax",
    "compile": "bench_compile",
    "small": "bench_small",
    "linear": "bench_linear",
    "entropy": "bench_entropy",
    "imbalance": "bench_imbalance",
    "linear_jsd": "bench_linear_jsd",
    "focal": "bench_focal",
    "jsd": "bench_jsd",
    "sparse": "bench_sparse",
}


def core_tables(args: argparse.Namespace, repeats: int) -> None:
    """The float32 tables: cross-entropy, options, K-dim, softmax, BCE, tiny inputs."""
    rng = np.random.default_rng(0)
    main_shape = (512, 4096) if args.quick else (4096, 32768)
    big_shape = None if args.quick else (8192, 128256)
    floor = floor_kernels()

    # -- cross-entropy, class-index targets, mean reduction ---------------------------------
    for shape in [main_shape, big_shape]:
        if shape is None:
            continue
        N, C = shape
        nbytes = N * C * 4
        # xent needs the logits and the gradient; torch ~4x the logits; NumPy path ~3x; JAX ~3x.
        if mem_available() < 3.2 * nbytes:
            print(f"\n(skipping {shape}: {mem_available() / 2**30:.1f} GiB available)")
            continue
        x = np.empty(shape, np.float32)
        rng.standard_normal(dtype=np.float32, out=x)
        t = rng.integers(0, C, N)
        r = 3 if shape == big_shape else repeats
        for backward in (False, True):
            only = None if shape != big_shape else fit_in_memory(nbytes, backward)
            fns, setups = ce_contenders(x, t, backward, floor, only)
            times = time_interleaved(fns, r, setups)
            notes = {}
            if backward:
                # The cached gradient lands in memory already touched (as "floor reused" does),
                # "xent no cache" in fresh memory (as "floor fresh").
                for who, ref in (("xent", "floor reused"), ("xent inplace", "floor reused"),
                                 ("xent no cache", "floor fresh")):
                    if who in times and ref in times:
                        notes[who] = f"{times[who] / times[ref]:.2f}x {ref}"
                if "jax jit" in times:
                    notes["xent"] = (
                        notes.get("xent", "") + f"  {times['jax jit'] / times['xent']:.2f}x jax"
                    ).strip()
                if shape == main_shape and not args.no_memory:
                    for who in times:
                        if who.startswith("floor"):
                            continue
                        m = peak_extra(who, N, C)
                        if m is None:
                            continue
                        note = f"  peak extra {m[0]:.2f}x logits"
                        if m[1] is not None:
                            note += f", {m[1]:.2f}x kept after"
                        notes[who] = (notes.get(who, "") + note).strip()
            kind = "forward + backward" if backward else "forward"
            table(f"cross_entropy {shape} float32, index targets, mean: {kind}", times, notes)
            if backward:
                print("  floor = read the logits twice, write an N×C array once (fresh or reused)")
                print("  xent reuses a dropped gradient's memory (its output-buffer cache;")
                print("  xent.empty_cache() releases it); 'xent no cache' allocates anew")
        if shape == main_shape:
            times = time_interleaved(option_contenders(x, t), repeats)
            notes = {f"xent {k}": f"{times[f'torch {k}'] / times[f'xent {k}']:.2f}x torch"
                     for k in ("z-loss 1e-4", "softcap 30") if f"torch {k}" in times}
            table(f"cross_entropy {shape} float32 with options: forward + backward", times,
                  notes)
        del x

    # -- K-dimensional input -----------------------------------------------------------------
    kshape = (8, 100, 64) if args.quick else (64, 1000, 32)
    xk = rng.standard_normal(kshape).astype(np.float32)
    tk = rng.integers(0, kshape[1], (kshape[0], kshape[2]))
    # About a millisecond a call: a sample is the mean of back-to-back calls filling 50 ms, as
    # for the tiny inputs. One call alone after the pause pays the idle machine's wake-up (about
    # +1 ms measured for every contender here, one thread or two), which would hide the work.
    for backward in (False, True):
        fns, setups = ce_contenders(xk, tk, backward)
        kind = "forward + backward" if backward else "forward"
        table(
            f"cross_entropy {kshape} float32 (N, C, d), mean: {kind} (back-to-back calls)",
            time_interleaved(fns, repeats, setups, min_time=0.05),
        )

    # -- softmax / log_softmax ------------------------------------------------------------------
    for shape in [main_shape]:
        x = rng.standard_normal(shape).astype(np.float32)
        for op in ("softmax", "log_softmax"):
            table(f"{op} {shape} float32", time_interleaved(softmax_contenders(x, op), repeats))
    # forward + backward: the VJP reads the output and the upstream gradient once, writes one
    # gradient (xent.torch.softmax's backward is this VJP)
    x = rng.standard_normal((256, 2048) if args.quick else (4096, 8192)).astype(np.float32)
    for op in ("softmax", "log_softmax"):
        table(f"{op} {x.shape} float32: forward + backward",
              time_interleaved(softmax_backward_contenders(x, op), repeats))

    # -- binary cross-entropy with logits ------------------------------------------------------
    bshape = (256, 1024) if args.quick else (2048, 8192)
    xb = rng.standard_normal(bshape).astype(np.float32)
    yb = rng.uniform(0, 1, bshape).astype(np.float32)
    table(
        f"binary_cross_entropy_with_logits {bshape} float32, mean: forward + backward",
        time_interleaved(bce_contenders(xb, yb), repeats),
    )

    # -- tiny inputs --------------------------------------------------------------------------
    for shape in [(3, 3), (3, 4)]:
        x = rng.standard_normal(shape).astype(np.float32)
        t = rng.integers(0, shape[1], shape[0])
        table(
            f"softmax {shape} float32 (per call)",
            time_interleaved(softmax_contenders(x, "softmax"), repeats, min_time=0.02),
        )
        fns, setups = ce_contenders(x, t, True)
        fns.pop("xent inplace", None)
        table(
            f"cross_entropy {shape} float32, forward + backward (per call)",
            time_interleaved(fns, repeats, min_time=0.02),
        )

    if args.crossover:
        crossover()


if __name__ == "__main__":
    sys.exit(main())
