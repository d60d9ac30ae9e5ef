"""Benchmark: the generalized JSD (GKD distillation loss), forward + backward, float32.

Section "jsd" of ``benchmarks/bench_kernels.py`` (``--only jsd``), or alone::

    python benchmarks/bench_jsd.py [--rows 4096] [--vocab 32768] [--peer-rows 1024] [--repeats 5]

Two tables, each timed side by side in one process (medians of ``--repeats`` calls):

1. ``(rows, vocab)`` (default 4096 x 32768, 512 MiB per logit tensor): the memory floor (a
   Numba loop that reads both logit tensors twice and writes one ``(N, V)`` array, on the
   kernels' threads), ``xent.generalized_jsd(..., return_grad=True)`` on the kernels (loss and
   the student's gradient), and ``xent.torch.generalized_jsd`` + ``backward()``.
2. ``(peer_rows, vocab)`` (default 1024 x 32768: TRL's eager form keeps about ten ``(N, V)``
   float32 tensors for its backward, 5 GiB at 4096 rows on a shared 23 GiB host): the drop-in
   against TRL's ``GKDTrainer.generalized_jsd_loss`` eager and under ``torch.compile``.

beta = 0.5, temperature = 1, labels with 10% ignored positions, teacher not requiring grad.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _median(fn, repeats: int) -> float:
    fn()  # warm: compile, first-touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_kernel():
    """Read both (N, V) tensors twice, write one (N, V) array: a pass of integer maxima over
    each row (``_rows._max``, vectorised) then one loop reading both rows and writing their
    difference; rows over the kernels' threads."""
    import numba

    from xent._kernels import _rows
    from xent._kernels._threads import run_rows

    @numba.njit(nogil=True, cache=True)
    def read2_write1(a, b, out, lo, hi):
        for i in range(lo, hi):
            ra, rb, ro = a[i], b[i], out[i]
            ma = _rows._max(ra)  # read 1 of each
            mb = _rows._max(rb)
            for j in range(ra.shape[0]):  # read 2 of each, the one write
                ro[j] = (ra[j] - ma) - (rb[j] - mb)

    def floor(a, b, out):
        run_rows(read2_write1, a.shape[0], a.shape[1], (a, b, out))
        return out

    return floor


def run(repeats: int, quick: bool, rows: int = 4096, vocab: int = 32768,
        peer_rows: int = 1024) -> None:
    import torch

    import xent
    import xent.torch as xt

    if quick:
        rows, peer_rows = rows // 4, peer_rows // 4
    from bench_kernels import machine

    print("\n## jsd: generalized JSD forward+backward, float32, beta=0.5, T=1")
    print(machine())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; repeats {repeats}")
    rng = np.random.default_rng(0)
    zs = rng.standard_normal((rows, vocab), np.float32) * 3
    zt = rng.standard_normal((rows, vocab), np.float32) * 3
    labels = rng.integers(0, vocab, rows)
    labels[rng.random(rows) < 0.1] = -100
    floor = floor_kernel()
    out = np.empty_like(zs)
    gbytes = 5 * zs.nbytes / 1e9  # read two tensors twice, write one

    def core():
        with xent.use_backend("numba"):
            return xent.generalized_jsd(zs, zt, labels, return_grad=True, teacher_grad=False)

    s = torch.from_numpy(zs).requires_grad_()
    t, y = torch.from_numpy(zt), torch.from_numpy(labels)

    def drop_in():
        s.grad = None
        xt.generalized_jsd(s, t, y).backward()

    res = {"floor (read both twice, write one)": _median(lambda: floor(zs, zt, out), repeats),
           "xent.generalized_jsd (kernels)": _median(core, repeats),
           "xent.torch.generalized_jsd + backward": _median(drop_in, repeats)}
    f = res["floor (read both twice, write one)"]
    print(f"\n({rows}, {vocab}) float32, floor traffic {gbytes:.2f} GB")
    print(f"{'contender':44s} {'median ms':>10s} {'x floor':>8s} {'GB/s':>7s}")
    for k, v in res.items():
        print(f"{k:44s} {v * 1e3:10.1f} {v / f:8.2f} {gbytes / v:7.1f}")


    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError as exc:
        print(f"(TRL not importable: {exc})")
        return
    trl = GKDTrainer.generalized_jsd_loss
    n = peer_rows
    sp = torch.from_numpy(zs[:n].copy()).requires_grad_()
    tp, yp = torch.from_numpy(zt[:n].copy()), torch.from_numpy(labels[:n].copy())
    compiled = torch.compile(trl)

    def step(fn):
        def call():
            sp.grad = None
            fn(sp, tp, yp).backward()

        return call

    peers = {"xent.torch.generalized_jsd": step(xt.generalized_jsd),
             "TRL generalized_jsd_loss eager": step(trl),
             "TRL generalized_jsd_loss torch.compile": step(compiled)}
    got = {k: _median(fn, repeats) for k, fn in peers.items()}
    x = got["xent.torch.generalized_jsd"]
    print(f"\n({n}, {vocab}) float32, the same call side by side; 'speed-up' = contender / xent")
    print(f"{'contender':44s} {'median ms':>10s} {'speed-up':>9s}")
    for k, v in got.items():
        print(f"{k:44s} {v * 1e3:10.1f} {v / x:9.2f}")
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--peer-rows", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    run(a.repeats, a.quick, a.rows, a.vocab, a.peer_rows)


if __name__ == "__main__":
    main()
