"""The fused-linear and vocabulary-parallel distillation forms (xent.torch._distill):
`linear_gather_log_probs`, `linear_generalized_jsd`, `vocab_parallel_generalized_jsd`,
`vocab_parallel_linear_generalized_jsd`.

Expected values and gradients come from float64 PyTorch on the full logits: ``log_softmax``
and ``gather`` for the log-probabilities, TRL's ``generalized_jsd_loss`` formula (written out
below with ``F.kl_div`` as TRL does, and checked against TRL's own function) for the JSD. bfloat16
results must be no further from the float64 truth (on the same bfloat16 inputs) than the eager
bfloat16 composition. The gloo runs (2 and 3 processes) compare each rank with one process.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import xent.torch as xt
from helpers import run_on_gloo
from xent.torch import _distill, _linear

N, H, HT, V = 13, 6, 5, 29


def _rel(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.double(), e.double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def _check(actual, expected, dtype, eager=None, what=""):
    """float32/float64: assert_close at the dtype's tolerances (float32 relaxed for wide sums);
    bfloat16: no further from ``expected`` (float64) than PyTorch's eager bfloat16 ``eager``
    (25% slack: these shapes are small) or within bfloat16's unit round-off 2^-8 (norm-wise)."""
    if dtype == torch.bfloat16:
        assert actual.dtype == torch.bfloat16, what
        assert _rel(actual, expected) <= max(_rel(eager, expected) * 1.25, 2.0**-8), (
            what, _rel(actual, expected), _rel(eager, expected))
        return
    assert actual.dtype == dtype, what
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(actual, expected.to(dtype), msg=lambda m: f"{what}: {m}", **tol)


def _data(seed=0, n=N, v=V, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=g, dtype=torch.float64)
    W = torch.randn(v, H, generator=g, dtype=torch.float64) * 0.7
    b = torch.randn(v, generator=g, dtype=torch.float64)
    xt_ = torch.randn(n, HT, generator=g, dtype=torch.float64)
    Wt = torch.randn(v, HT, generator=g, dtype=torch.float64) * 0.8
    bt = torch.randn(v, generator=g, dtype=torch.float64)
    # the same (rounded) inputs in every dtype: the float64 truth is of the bfloat16 values
    return [p.to(dtype).double() if dtype != torch.float64 else p
            for p in (x, W, b, xt_, Wt, bt)]


def _run(fn, leaves, dtype, go=None):
    """fn on copies of ``leaves`` in ``dtype`` requiring grad: [output, *grads]."""
    ps = [p.to(dtype).clone().requires_grad_(True) for p in leaves]
    out = fn(*ps)
    out.backward(torch.ones_like(out) if go is None else go.to(out.dtype))
    return [out.detach(), *(p.grad for p in ps)]


# -- linear_gather_log_probs ----------------------------------------------------------------------

def _gather_ref(x, W, b, idx, temperature=1.0, softcap=None):
    z = F.linear(x, W, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return torch.log_softmax(z / temperature, -1).gather(-1, idx)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 4, 5])
@pytest.mark.parametrize("opts", [dict(), dict(temperature=0.7),
                                  dict(temperature=1.3, softcap=2.5, bias=True)])
def test_gather_log_probs_matches_float64_log_softmax(dtype, chunk, opts):
    opts = dict(opts)
    bias = opts.pop("bias", False)
    x, W, b, *_ = _data(1, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, V, (N, 4), generator=g)
    idx[3, 1] = idx[3, 0]  # a repeated id: both its gradients add up
    go = torch.randn(N, 4, generator=g, dtype=torch.float64)
    leaves = [x, W, b] if bias else [x, W]

    def ours(x_, W_, b_=None):
        return xt.linear_gather_log_probs(x_, W_, idx, linear_bias=b_, chunk_size=chunk, **opts)

    def ref(x_, W_, b_=None):
        return _gather_ref(x_, W_, b_, idx, **opts)

    truth = _run(ref, leaves, torch.float64, go)
    mine = _run(ours, leaves, dtype, go)
    eager = _run(ref, leaves, dtype, go) if dtype == torch.bfloat16 else [None] * len(mine)
    for name, a, e, p in zip(("log_probs", "grad_x", "grad_W", "grad_b"), mine, truth, eager,
                             strict=False):
        _check(a, e, dtype, p, f"{name} {dtype} chunk={chunk} {opts}")


def test_gather_log_probs_leading_dims_empty_and_no_grad():
    x, W, *_ = _data(2)
    idx = torch.randint(0, V, (N, 2), generator=torch.Generator().manual_seed(0))
    flat = xt.linear_gather_log_probs(x, W, idx)
    out = xt.linear_gather_log_probs(x[:12].reshape(3, 4, H), W, idx[:12].reshape(3, 4, 2))
    assert out.shape == (3, 4, 2)
    torch.testing.assert_close(out.reshape(12, 2), flat[:12])
    assert xt.linear_gather_log_probs(x, W, idx[:, :0]).shape == (N, 0)
    assert xt.linear_gather_log_probs(x[:0], W, idx[:0]).shape == (0, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            xt.linear_gather_log_probs(x.requires_grad_(True), W, idx), flat)


def test_gather_log_probs_float16_runs_the_composition():
    """float16 (which the chunk loop does not take) runs the PyTorch composition, in float32."""
    x, W, *_ = _data(3)
    idx = torch.randint(0, V, (N, 3), generator=torch.Generator().manual_seed(1))
    out = xt.linear_gather_log_probs(x.half(), W.half(), idx, temperature=0.5)
    ref = _gather_ref(x.half().double(), W.half().double(), None, idx, temperature=0.5)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, ref.half(), rtol=2e-3, atol=2e-3)


def test_gather_log_probs_errors():
    x, W, *_ = _data(0)
    idx = torch.zeros(N, 2, dtype=torch.int64)
    with pytest.raises(IndexError, match=f"index {V} is out of bounds for {V} classes"):
        xt.linear_gather_log_probs(x, W, torch.full((N, 1), V))
    with pytest.raises(IndexError, match="index -1 is out of bounds"):
        xt.linear_gather_log_probs(x, W, torch.full((N, 1), -1))
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        xt.linear_gather_log_probs(x, W, idx.double())
    with pytest.raises(ValueError, match=r"index must have shape \(\*, K\)"):
        xt.linear_gather_log_probs(x, W, idx[:5])
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        xt.linear_gather_log_probs(x, W, idx, temperature=0.0)
    with pytest.raises(ValueError, match="softcap must be a positive"):
        xt.linear_gather_log_probs(x, W, idx, softcap=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        xt.linear_gather_log_probs(x, W, idx, chunk_size=0)
    with pytest.raises(ValueError, match=r"input has 6 features but linear_weight has shape"):
        xt.linear_gather_log_probs(x, W[:, :4], idx)
    with pytest.raises(TypeError, match="must have one dtype"):
        xt.linear_gather_log_probs(x, W.float(), idx)


# -- linear_generalized_jsd -----------------------------------------------------------------------

def trl_generalized_jsd(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                        reduction="batchmean"):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (trl 0.2x, trl/experimental/gkd), as written
    there; ``reduction='none'`` here sums the classes and keeps ignored rows as 0 (TRL returns
    the masked elements)."""
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta_t = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log1p(-beta_t),
                         teacher_log_probs + torch.log(beta_t)]), dim=0)
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none",
                              log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none",
                              log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    if reduction == "none":
        rows = jsd.sum(-1)
        return rows if labels is None else torch.where(labels != -100, rows, 0.0)
    if labels is not None:
        mask = labels != -100
        jsd = jsd[mask]
    if reduction == "batchmean":
        denom = mask.sum().clamp_min(1) if labels is not None else max(jsd.size(0), 1)
        return jsd.sum() / denom
    if reduction == "sum":
        return jsd.sum()
    return jsd.mean()


def test_the_formula_here_is_trls():
    trl = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(7, 11, generator=g), torch.randn(7, 11, generator=g)
    lab = torch.tensor([1, -100, 2, 3, -100, 4, 5])
    for beta in (0.0, 0.3, 1.0):
        for reduction in ("batchmean", "sum", "mean"):
            for labels in (None, lab):
                torch.testing.assert_close(
                    trl_generalized_jsd(zs, zt, labels, beta, 1.7, reduction),
                    trl.GKDTrainer.generalized_jsd_loss(zs, zt, labels, beta, 1.7, reduction))


def _target(seed=0, n=N):
    t = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))
    t[::4] = -100
    return t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_linear_jsd_matches_trls_formula(dtype, beta, reduction):
    x, W, b, xt_, Wt, bt = _data(4, dtype=dtype)
    t = _target(1)
    go = torch.rand(N, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    go = go if reduction == "none" else None
    T = 1.4

    def ours(x_, W_, b_):
        return xt.linear_generalized_jsd(
            x_, W_, xt_.to(x_.dtype), Wt.to(x_.dtype), t, student_bias=b_,
            teacher_bias=bt.to(x_.dtype), beta=beta, temperature=T, reduction=reduction,
            chunk_size=5)

    def ref(x_, W_, b_):
        zs = F.linear(x_, W_, b_)
        zt = F.linear(xt_.to(x_.dtype), Wt.to(x_.dtype), bt.to(x_.dtype))
        return trl_generalized_jsd(zs, zt, t, beta, T, reduction)

    truth = _run(ref, [x, W, b], torch.float64, go)
    mine = _run(ours, [x, W, b], dtype, go)
    eager = _run(ref, [x, W, b], dtype, go) if dtype == torch.bfloat16 else [None] * 4
    for name, a, e, p in zip(("loss", "grad_x", "grad_W", "grad_b"), mine, truth, eager,
                             strict=True):
        _check(a, e, dtype, p, f"{name} {dtype} beta={beta} {reduction}")


@pytest.mark.parametrize("teacher_dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 3, N])
def test_linear_jsd_with_precomputed_teacher_logits(teacher_dtype, chunk):
    """``teacher_logits=`` in any float dtype: the student's float32 loss and gradients equal
    the float64 formula on those (rounded) teacher logits."""
    x, W, b, xt_, Wt, bt = _data(6)
    zt = F.linear(xt_, Wt, bt).to(teacher_dtype)
    t = _target(2)

    def ours(x_, W_, b_):
        return xt.linear_generalized_jsd(x_, W_, None, None, t, student_bias=b_,
                                         teacher_logits=zt, beta=0.6, chunk_size=chunk)

    def ref(x_, W_, b_):
        return trl_generalized_jsd(F.linear(x_, W_, b_), zt.double(), t, 0.6)

    truth = _run(ref, [x, W, b], torch.float64)
    for name, a, e in zip(("loss", "grad_x", "grad_W", "grad_b"),
                          _run(ours, [x, W, b], torch.float32), truth, strict=True):
        _check(a, e, torch.float32, what=f"{name} teacher {teacher_dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_jsd_above_the_kernel_threshold(backend, dtype):
    """Chunks of 48 x 2048 logits (past `AUTO_MIN_ELEMENTS`: the Numba row kernel under
    ``auto``), on both backends."""
    n, v = 100, 2048
    x, W, b, xt_, Wt, bt = _data(11, n=n, v=v, dtype=dtype)
    t = _target(5, n)

    def ours(x_, W_, b_):
        return xt.linear_generalized_jsd(x_, W_, xt_.to(x_.dtype), Wt.to(x_.dtype), t,
                                         student_bias=b_, beta=0.5, temperature=0.9,
                                         chunk_size=48)

    def ref(x_, W_, b_):
        return trl_generalized_jsd(F.linear(x_, W_, b_), F.linear(
            xt_.to(x_.dtype), Wt.to(x_.dtype)), t, 0.5, 0.9)

    truth = _run(ref, [x, W, b], torch.float64)
    eager = _run(ref, [x, W, b], dtype) if dtype == torch.bfloat16 else [None] * 4
    for name, a, e, p in zip(("loss", "grad_x", "grad_W", "grad_b"),
                             _run(ours, [x, W, b], dtype), truth, eager, strict=True):
        _check(a, e, dtype, p, f"{name} {dtype}")


def test_linear_jsd_edges():
    x, W, b, xt_, Wt, bt = _data(7)
    xs = x.float().requires_grad_(True)
    args = (W.float(), xt_.float(), Wt.float())
    # every row ignored: 0 (TRL's clamp_min(1)), zero gradients
    loss = xt.linear_generalized_jsd(xs, *args, torch.full((N,), -100))
    loss.backward()
    assert loss.item() == 0.0 and not xs.grad.any()
    assert math.isnan(xt.linear_generalized_jsd(xs, *args, torch.full((N,), -100),
                                                reduction="mean").item())
    # -inf logits of the teacher: zero-probability classes (0·log 0 = 0)
    zt = F.linear(xt_, Wt, bt).float()
    zt[:, :3] = -math.inf
    loss = xt.linear_generalized_jsd(xs.detach(), W.float(), None, None, teacher_logits=zt,
                                     reduction="none")
    ref = trl_generalized_jsd(F.linear(x, W), zt.double().nan_to_num(neginf=-1e300),
                              reduction="none")
    torch.testing.assert_close(loss, ref.float())
    # no rows
    assert xt.linear_generalized_jsd(xs[:0], *args[:1], xt_[:0].float(), args[2]).item() == 0.0
    # a second backward keeps the gradients only when asked
    for keep in (True, False):
        xs.grad = None
        loss = xt.linear_generalized_jsd(xs, *args, allow_retain_graph=keep)
        loss.backward(retain_graph=True)
        first = xs.grad.clone()
        if keep:
            loss.backward()
            torch.testing.assert_close(xs.grad, 2 * first)
        else:
            with pytest.raises(RuntimeError, match="already consumed"):
                loss.backward()


def test_linear_jsd_teacher_requiring_grad_runs_the_composition():
    """A teacher operand that requires grad leaves the chunk loop (it gives the student's
    gradients only): the PyTorch composition differentiates both heads."""
    x, W, b, xt_, Wt, bt = _data(8)
    got = _run(lambda a, B, c, d: xt.linear_generalized_jsd(a, B, c, d, beta=0.4),
               [x, W, xt_, Wt], torch.float64)
    ref = _run(lambda a, B, c, d: trl_generalized_jsd(a @ B.T, c @ d.T, beta=0.4),
               [x, W, xt_, Wt], torch.float64)
    for a, e in zip(got, ref, strict=True):
        torch.testing.assert_close(a, e)


def test_linear_jsd_runs_the_core_rows_once_per_chunk(monkeypatch):
    """Each chunk's logits go to the core's `jsd_rows`, in chunks of at most ``chunk_size`` rows
    (never the (N, V) logits), and the loop is `_linear.chunk_loop`."""
    seen, loops = [], []
    real_rows, real_loop = _distill.jsd_rows, _linear.chunk_loop

    def rows(zs, zt, *a, **k):
        seen.append(zs.shape)
        return real_rows(zs, zt, *a, **k)

    def loop(*a, **k):
        loops.append(1)
        return real_loop(*a, **k)

    monkeypatch.setattr(_distill, "jsd_rows", rows)
    monkeypatch.setattr(_linear, "chunk_loop", loop)
    x, W, b, xt_, Wt, bt = _data(9)
    loss = xt.linear_generalized_jsd(x.requires_grad_(True), W, xt_, Wt, chunk_size=5)
    loss.backward()
    assert seen == [(5, V), (5, V), (3, V)] and loops == [1]


def test_linear_jsd_errors():
    x, W, b, xt_, Wt, bt = _data(0)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        xt.linear_generalized_jsd(x, W, xt_, Wt, beta=1.5)
    with pytest.raises(ValueError, match="reduction='avg' must be one of"):
        xt.linear_generalized_jsd(x, W, xt_, Wt, reduction="avg")
    with pytest.raises(ValueError, match="not both"):
        xt.linear_generalized_jsd(x, W, xt_, Wt, teacher_logits=x @ W.T)
    with pytest.raises(ValueError, match="needs teacher_input and teacher_weight"):
        xt.linear_generalized_jsd(x, W, None, None)
    with pytest.raises(ValueError, match=rf"teacher_logits must have shape \({N}, {V}\)"):
        xt.linear_generalized_jsd(x, W, None, None, teacher_logits=(x @ W.T)[:, 1:])
    with pytest.raises(ValueError, match="the teacher's logits would be"):
        xt.linear_generalized_jsd(x, W, xt_, Wt[1:])
    with pytest.raises(ValueError, match=r"Expected target of shape \(13,\)"):
        xt.linear_generalized_jsd(x, W, xt_, Wt, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        xt.linear_generalized_jsd(x, W, xt_, Wt, torch.zeros(N))


# -- vocabulary-parallel --------------------------------------------------------------------------

PARALLEL_CASES = [
    dict(beta=0.5, reduction="batchmean", target=True),
    dict(beta=0.0, reduction="sum", temperature=0.8),
    dict(beta=1.0, reduction="none", target=True, temperature=1.5),
    dict(beta=0.3, reduction="mean", target=True, teacher_logits=True),
]


def _shards(world: int) -> list[tuple[int, int]]:
    base, extra = divmod(V, world)
    sizes = [base + (r < extra) for r in range(world)]
    return [(sum(sizes[:r]), sizes[r]) for r in range(world)]


def _msg(context: str) -> Callable[[str], str]:
    return lambda m: f"{context}: {m}"


def _parallel_checks(rank: int, world: int, calls: list[int]) -> None:
    """This rank's shard of every case against the whole vocabulary in one process."""
    start, size = _shards(world)[rank]
    sl = slice(start, start + size)
    for case in PARALLEL_CASES:
        x, W, b, xt_, Wt, bt = (p.float() for p in _data(10))
        t = _target(3) if case.get("target") else None
        opts: dict[str, Any] = dict(beta=case["beta"], reduction=case["reduction"],
                                    temperature=case.get("temperature", 1.0))
        go = torch.rand(N, generator=torch.Generator().manual_seed(4))
        go = go if opts["reduction"] == "none" else torch.ones(())

        # plain form, with the teacher's gradient
        zs_full = F.linear(x, W, b).requires_grad_(True)
        zt_full = F.linear(xt_, Wt, bt).requires_grad_(True)
        ref = trl_generalized_jsd(zs_full.double(), zt_full.double(), t, opts["beta"],
                                  opts["temperature"], opts["reduction"])
        ref.backward(go.double())
        zs = zs_full.detach()[:, sl].clone().requires_grad_(True)
        zt = zt_full.detach()[:, sl].clone().requires_grad_(True)
        calls.clear()
        loss = xt.vocab_parallel_generalized_jsd(zs, zt, t, **opts)
        expect = 3 + (opts["reduction"] == "mean")  # (+ all_gather of the shard sizes)
        if len(calls) != expect or max(calls) > 3 * N:
            raise AssertionError(f"collectives {calls}: expected {expect} of O(N={N})")
        loss.backward(go)
        ctx = f"world={world} rank={rank} {case}"
        torch.testing.assert_close(loss, ref.float(), msg=_msg(ctx))
        torch.testing.assert_close(zs.grad, zs_full.grad[:, sl], msg=_msg(f"{ctx} gs"))
        torch.testing.assert_close(zt.grad, zt_full.grad[:, sl], msg=_msg(f"{ctx} gt"))

        # linear form: against linear_generalized_jsd on the whole vocabulary, chunked and not
        teach: dict[str, Any] = (dict(teacher_logits=F.linear(xt_, Wt, bt))
                                 if case.get("teacher_logits") else {})
        leaves = [p.clone().requires_grad_(True) for p in (x, W, b)]
        whole = xt.linear_generalized_jsd(
            leaves[0], leaves[1], None if teach else xt_, None if teach else Wt, t,
            student_bias=leaves[2], teacher_bias=None if teach else bt, **teach, **opts)
        whole.backward(go)
        for chunk in (4, N):
            ps = [x.clone().requires_grad_(True), W[sl].clone().requires_grad_(True),
                  b[sl].clone().requires_grad_(True)]
            tk: dict[str, Any] = ({"teacher_logits": teach["teacher_logits"][:, sl]} if teach
                                  else {})
            loss = xt.vocab_parallel_linear_generalized_jsd(
                ps[0], ps[1], None if teach else xt_, None if teach else Wt[sl], t,
                student_bias=ps[2], teacher_bias=None if teach else bt[sl], chunk_size=chunk,
                **tk, **opts)
            loss.backward(go)
            ctx = f"linear world={world} rank={rank} chunk={chunk} {case}"
            torch.testing.assert_close(loss, whole.detach(), msg=_msg(ctx))
            for name, a, e in (("x", ps[0].grad, leaves[0].grad),
                               ("W", ps[1].grad, leaves[1].grad[sl]),
                               ("b", ps[2].grad, leaves[2].grad[sl])):
                torch.testing.assert_close(a, e, msg=_msg(f"{ctx} grad {name}"))


def _counting_all_reduce(calls: list[int]):
    real_reduce, real_gather = dist.all_reduce, dist.all_gather

    def reduce(tensor, *a, **k):
        calls.append(tensor.numel())
        return real_reduce(tensor, *a, **k)

    def gather(out, tensor, *a, **k):
        calls.append(tensor.numel())
        return real_gather(out, tensor, *a, **k)

    return reduce, gather


def test_vocab_parallel_in_one_process_equals_the_whole_vocabulary(monkeypatch):
    calls: list[int] = []
    reduce, gather = _counting_all_reduce(calls)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "all_reduce", reduce)
        monkeypatch.setattr(dist, "all_gather", gather)
        _parallel_checks(0, 1, calls)
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        torch.set_num_threads(1)
        calls: list[int] = []
        dist.all_reduce, dist.all_gather = _counting_all_reduce(calls)
        _parallel_checks(rank, world, calls)
        dist.destroy_process_group()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_on_gloo_equals_one_process(world):
    run_on_gloo(_worker, world)


def test_vocab_parallel_errors():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="must have one shape"):
        xt.vocab_parallel_generalized_jsd(z, z[:, :3])
    with pytest.raises(TypeError, match=r"student_logits must be a floating-point tensor"):
        xt.vocab_parallel_generalized_jsd(z.long(), z)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        xt.vocab_parallel_generalized_jsd(z, z, beta=-0.1)
    with pytest.raises(ValueError, match="the teacher needs"):
        xt.vocab_parallel_linear_generalized_jsd(z, z, None, None)
