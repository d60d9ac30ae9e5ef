"""Vocabulary-parallel cross-entropy with the gloo backend on CPU: 2 and 3 processes started by
the test; each rank compares its loss and its shard's gradients with the single-process result
(xent.torch.cross_entropy / linear_cross_entropy on the whole vocabulary, itself tested against
PyTorch), and counts the collectives."""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.distributed as dist

import xent.torch as xt
from helpers import run_on_gloo

N, H, V = 13, 6, 29
CASES = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="none", weighted=True),
    dict(weighted=True, label_smoothing=0.2, lse_square_scale=1e-2, softcap=3.0),
    dict(ignore_index=5, lse_square_scale=1e-3),
]


def _shards(world: int) -> list[tuple[int, int]]:
    """Uneven contiguous slices of V classes, in rank order."""
    base, extra = divmod(V, world)
    sizes = [base + (r < extra) for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return list(zip(starts, sizes, strict=True))


def _problem(case: dict):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (N,), generator=g)
    ii = case.get("ignore_index", -100)
    t[::4] = ii
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.5 if case.get("weighted") else None
    go = torch.rand(N, generator=g, dtype=torch.float64)
    return x, W, b, t, w, go


def _options(case: dict) -> dict:
    return {k: v for k, v in case.items() if k != "weighted"}


def _worker(rank: int, world: int, port: int, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        torch.set_num_threads(1)
        calls = []
        real = dist.all_reduce

        def counting(tensor, *a, **k):
            calls.append(tensor.numel())
            return real(tensor, *a, **k)

        dist.all_reduce = counting
        start, size = _shards(world)[rank]
        sl = slice(start, start + size)
        for case in CASES:
            x, W, b, t, w, go = _problem(case)
            opts = _options(case)
            reduction = opts.get("reduction", "mean")
            g_out = go if reduction == "none" else None

            # plain form: the full logits' reference vs this rank's shard
            z = (x @ W.T + b).requires_grad_(True)
            ref, ref_lse = xt.cross_entropy(z, t, w, return_lse=True, **opts)
            ref.backward(torch.ones_like(ref) if g_out is None else g_out)
            zs = (x @ W.T + b)[:, sl].detach().clone().requires_grad_(True)
            calls.clear()
            loss, lse = xt.vocab_parallel_cross_entropy(
                zs, t, vocab_start=start, vocab_size=V,
                weight=None if w is None else w[sl], return_lse=True, **opts)
            if len(calls) != 2 or max(calls) > 4 * N + 1:
                raise AssertionError(f"collectives: {calls}, expected 2 of O(N={N})")
            loss.backward(torch.ones_like(loss) if g_out is None else g_out)
            torch.testing.assert_close(loss, ref.detach(), msg=lambda m, c=case: f"{c}: {m}")
            torch.testing.assert_close(lse, ref_lse)
            torch.testing.assert_close(zs.grad, z.grad[:, sl], msg=lambda m, c=case: f"{c}: {m}")

            # linear form, with and without chunking; shard sizes found by all_gather
            leaves = [p.clone().requires_grad_(True) for p in (x, W, b)]
            ref = xt.linear_cross_entropy(*leaves[:2], t, linear_bias=leaves[2], weight=w,
                                          **opts)
            ref.backward(torch.ones_like(ref) if g_out is None else g_out)
            for chunk in (4, N):
                xp = x.clone().requires_grad_(True)
                Wp = W[sl].clone().requires_grad_(True)
                bp = b[sl].clone().requires_grad_(True)
                loss = xt.vocab_parallel_linear_cross_entropy(
                    xp, Wp, t, linear_bias=bp, weight=None if w is None else w[sl],
                    chunk_size=chunk, **opts)
                loss.backward(torch.ones_like(loss) if g_out is None else g_out)
                ctx = f"linear chunk={chunk} {case}"
                torch.testing.assert_close(loss, ref.detach(), msg=lambda m, c=ctx: f"{c}: {m}")
                torch.testing.assert_close(xp.grad, leaves[0].grad,
                                           msg=lambda m, c=ctx: f"{c} grad x: {m}")
                torch.testing.assert_close(Wp.grad, leaves[1].grad[sl],
                                           msg=lambda m, c=ctx: f"{c} grad W: {m}")
                torch.testing.assert_close(bp.grad, leaves[2].grad[sl],
                                           msg=lambda m, c=ctx: f"{c} grad b: {m}")
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_matches_single_process(world):
    run_on_gloo(_worker, world)


def test_vocab_parallel_validates():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="do not fit"):
        xt.vocab_parallel_cross_entropy(z, torch.tensor([0, 1, 2]), vocab_start=2, vocab_size=5)
    with pytest.raises(IndexError, match="out of bounds for 5 classes"):
        xt.vocab_parallel_cross_entropy(z, torch.tensor([0, 1, 7]), vocab_start=0, vocab_size=5)
    with pytest.raises(ValueError, match="input batch_size \\(3\\) to match target batch_size"):
        xt.vocab_parallel_cross_entropy(z, torch.tensor([0, 1]), vocab_start=0, vocab_size=5)


def test_vocab_parallel_linear_runs_the_linear_forms_chunk_loop(monkeypatch):
    """One process holding the whole vocabulary: both passes of the parallel linear form are
    the linear form's chunk loop (`_linear.chunk_loop`), the loss and gradient those of the
    float64 composition in PyTorch, and its precomputed gradients are handed over once."""
    from helpers import spy
    from xent.torch import _linear

    calls: list[str] = []
    spy(monkeypatch, [(_linear, "chunk_loop", "loop")], calls.append)
    x, W, b, t, w, _ = _problem(dict(weighted=True))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        xp = x.clone().requires_grad_(True)
        loss = xt.vocab_parallel_linear_cross_entropy(
            xp, W, t, linear_bias=b, weight=w, chunk_size=4, label_smoothing=0.1,
            lse_square_scale=1e-2, softcap=3.0)
        assert calls == ["loop", "loop"]
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="backward ran twice"):
            loss.backward()
    finally:
        dist.destroy_process_group()
    xr = x.clone().requires_grad_(True)
    z = 3.0 * torch.tanh(torch.nn.functional.linear(xr, W, b) / 3.0)
    lse, valid = torch.logsumexp(z, 1), t != -100
    ref = (torch.nn.functional.cross_entropy(z, t, w, label_smoothing=0.1)
           + 1e-2 * (lse[valid] ** 2).sum() / valid.sum())
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach())
    torch.testing.assert_close(xp.grad, xr.grad)
