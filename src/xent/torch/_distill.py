"""Distillation and log-probabilities from hidden states: the chunked linear forms and the
vocabulary-parallel forms of the generalized Jensen-Shannon divergence.

`linear_gather_log_probs` and `linear_generalized_jsd` run the chunk loop of
`xent.torch._linear` (``chunk_loop``: each chunk's logits ``x[s:e] @ W.T + b`` in one reusable
``(m, V)`` buffer, then ``grad_x = dz @ W``, ``grad_W += dz.T @ x``, ``grad_b += dz.sum(0)``)
and its autograd (``ChunkedLinear``), so that no ``(N, V)`` tensor is ever held:

- log-probabilities of K given classes: one pass keeps each row's log-sum-exp of
  ``z = softcap(x W^T + b) / T`` and the gathered ``z[idx] - lse``; ``backward`` recomputes each
  chunk and writes ``(scatter(g) - (Σ_k g_k)·softmax(z)) / T · (1 - (z_cap/c)²)`` in place;
- the generalized JSD: per chunk the student's logits (and the teacher's, from its hidden states
  or from precomputed ``teacher_logits``) go to the core's row function
  `xent._divergence.jsd_rows`, which returns each row's divergence and d loss_i / d z_s; the
  reduction's row scales turn it into the chunk's ``dz`` (in the forward pass, as
  ``linear_cross_entropy``, except for ``reduction='none'``, recomputed in ``backward``).

The vocabulary-parallel forms hold a slice of the classes on each rank. Both distributions'
log-sum-exps are global after two O(N) collectives (the row max and the sum of exp, packed for
student and teacher), after which ``log p = z/T - lse`` and the mixture
``log m = logaddexp(log p_s + log(1-β), log p_t + log β)`` are local per element; each rank sums
its slice's terms, one more O(N) collective gives the rows' divergences (and the KL sums the
softmax Jacobian needs), and each rank's gradient is local::

    J   = β·KL(p_t ‖ m) + (1-β)·KL(p_s ‖ m)
    dJ/dz_s = (1-β)·p_s ⊙ (log p_s - log m - KL(p_s ‖ m)) / T
    dJ/dz_t =     β·p_t ⊙ (log p_t - log m - KL(p_t ‖ m)) / T

(``β = 0``: ``J = KL(p_t ‖ p_s)``, ``dJ/dz_s = (p_s - p_t)/T``; ``β = 1``: ``J = KL(p_s ‖ p_t)``,
``dJ/dz_s = p_s ⊙ (log p_s - log p_t - J)/T``; ``0·log 0 = 0`` throughout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from xent._divergence import check_jsd_options, jsd_rows
from xent._validation import check_ignore_index, check_real

from . import _bridge, _linear, _route
from ._divergence import gather_composed, jsd_composed
from ._reference import soft_cap

_HALF = (torch.bfloat16, torch.float16)
_FLOATS = (torch.float32, torch.float64, torch.bfloat16)


# -- arguments ------------------------------------------------------------------------------------

def _compute_dtype(dt: torch.dtype) -> torch.dtype:
    """The dtype the softmax math runs in: float32 for 16-bit storage."""
    return torch.float32 if dt in _HALF else dt


def _check_chunk(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    return chunk_size


def _check_head(input: Any, weight: Any, bias: Any, names: tuple[str, str, str]) -> None:
    """``input`` (N, H), ``weight`` (V, H), ``bias`` (V,) or None: floating tensors of one
    dtype, else a TypeError/ValueError naming what arrived."""
    xi, wi, bi = names
    for t, name in ((input, xi), (weight, wi), (bias, bi)):
        if t is None and name == bi:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if input.dim() != 2:
        raise ValueError(f"{xi} must be (N, H), got shape {tuple(input.shape)}")
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise ValueError(f"{xi} has {input.shape[1]} features but {wi} has shape "
                         f"{tuple(weight.shape)}: expected (V, {input.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{bi} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError(f"{xi}, {wi} and {bi} must have one dtype, got {input.dtype}, "
                        f"{weight.dtype}" + ("" if bias is None else f", {bias.dtype}"))


def _check_target(target: Any, n: int, ignore_index: int) -> torch.Tensor | None:
    """The (N,) mask of the counted rows, or None when every row counts."""
    if target is None:
        return None
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be an integer tensor of shape ({n},) or None, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if tuple(target.shape) != (n,):
        raise ValueError(f"Expected target of shape ({n},) (one per row), got "
                         f"{tuple(target.shape)}")
    return (target != ignore_index).cpu()


def _denominator(reduction: str, valid: torch.Tensor | None, n: int, v: int) -> float:
    """What the reduction divides the rows' sum by: ``batchmean`` the counted rows (at least 1,
    as TRL's ``clamp_min(1)``), ``mean`` their elements (counted rows x V, as ``jsd.mean()``),
    ``sum``/``none`` 1."""
    count = n if valid is None else int(valid.sum())
    if reduction == "batchmean":
        return float(max(count, 1))
    if reduction == "mean":
        return float(count * v) if count * v else math.nan
    return 1.0


def _reduce(rows: torch.Tensor, reduction: str, denom: float) -> torch.Tensor:
    return rows if reduction == "none" else rows.sum() / denom


@dataclass(frozen=True)
class _Reduction:
    """What `_linear.ChunkedLinear` reads of a call's ``problem``: its reduction (``'none'``:
    the gradients recomputed in ``backward`` with each row's ``grad_output``)."""

    reduction: str


class _Scaled:
    """The chunk buffers of one pass: ``buf`` (m, V) for the products in the input's dtype, and
    ``work``, where ``z = softcap(logits) / T`` is computed (``buf`` itself in float32/float64,
    a float32 copy for 16-bit input); ``aux`` the cap's derivative when a gradient needs it."""

    def __init__(self, chunk: int, v: int, dtype: torch.dtype, temperature: float,
                 softcap: float | None, grad: bool) -> None:
        self.buf = torch.empty(chunk, v, dtype=dtype)
        cdt = _compute_dtype(dtype)
        self.work = self.buf if cdt == dtype else torch.empty(chunk, v, dtype=cdt)
        self.aux = torch.empty(chunk, v, dtype=cdt) if (grad and softcap is not None) else None
        self.t, self.cap = temperature, softcap

    def scaled(self, z: torch.Tensor) -> torch.Tensor:
        """``softcap(z) / T`` of the chunk ``z = buf[:m]``, in ``work`` (in place)."""
        m = z.shape[0]
        w = z if self.work is self.buf else self.work[:m].copy_(z)
        if self.cap is not None:
            soft_cap(w, self.cap, out=w, deriv=None if self.aux is None else self.aux[:m])
        if self.t != 1.0:
            w.div_(self.t)
        return w

    def chain(self, z: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
        """d loss / d logits from ``dw`` = d loss / d(softcap(z)/T) (in ``work``), into ``z``'s
        buffer in the input's dtype."""
        if self.t != 1.0:
            dw.div_(self.t)
        if self.aux is not None:
            dw.mul_(self.aux[: dw.shape[0]])
        return dw if dw is z else z.copy_(dw)


#: (m, V) buffers of the input's itemsize that share the default chunk's bytes: the linear JSD's
#: student and teacher logits and the chunk's gradient; its vocabulary-parallel form's buffers
#: and the temporaries of `_jsd_grads` (float32 ones count twice for 16-bit input).
JSD_BUFFERS = 3
PARALLEL_JSD_BUFFERS = 8


def _chunk_rows(chunk_size: int | None, v: int, n: int, x: torch.Tensor, buffers: int) -> int:
    """Rows per chunk: ``chunk_size``, else `_linear.default_chunk_size` (`DEFAULT_CHUNK_BYTES`)
    shared by ``buffers`` (m, V) buffers of the input's itemsize."""
    if chunk_size is not None:
        return max(1, min(chunk_size, n))
    return max(1, min(n, _linear.default_chunk_size(v, x.element_size()) // buffers))


# -- log-probabilities of given classes ----------------------------------------------------------

@dataclass
class _GatherSpec:
    """`linear_gather_log_probs`'s passes for `_linear.ChunkedLinear`."""

    index: torch.Tensor  # (N, K) int64
    temperature: float
    softcap: float | None
    chunk: int
    problem: _Reduction = _Reduction("none")

    def forward(self, x, W, b, need):
        """Each row's lse of ``z = softcap(x W^T + b)/T`` and ``z[index] - lse``: (log-probs,
        an empty tensor, None, lse)."""
        n, k = self.index.shape
        cdt = _compute_dtype(x.dtype)
        out, lse = torch.empty(n, k, dtype=cdt), torch.empty(n, dtype=cdt)
        sc = _Scaled(self.chunk, W.shape[0], x.dtype, self.temperature, self.softcap, False)

        def on_chunk(s: int, e: int, z: torch.Tensor) -> None:
            w = sc.scaled(z)
            torch.logsumexp(w, 1, out=lse[s:e])
            torch.sub(w.gather(1, self.index[s:e]), lse[s:e, None], out=out[s:e])

        _linear.chunk_loop(x, W, b, sc.buf, on_chunk)
        return out.to(x.dtype), torch.empty(0, dtype=x.dtype), None, lse

    def backward(self, x, W, b, need, grad_output, lse):
        """The chunks recomputed: d/dz of Σ_k g_k·log p[index_k] is ``scatter(g) - (Σ_k g_k)·p``
        (then the temperature's and the cap's chain rule)."""
        cdt = lse.dtype
        g = grad_output.to(cdt).reshape(self.index.shape)
        total = g.sum(1)
        sc = _Scaled(self.chunk, W.shape[0], x.dtype, self.temperature, self.softcap, True)

        def on_chunk(s: int, e: int, z: torch.Tensor) -> torch.Tensor:
            w = sc.scaled(z)
            w.sub_(lse[s:e, None]).exp_().mul_(total[s:e, None].neg())
            w.scatter_add_(1, self.index[s:e], g[s:e])
            return sc.chain(z, w)

        return list(_linear.chunk_loop(x, W, b, sc.buf, on_chunk, need, gb_dtype=cdt))


def _gather_buffers(dtype: torch.dtype, cap: float | None) -> int:
    """`linear_gather_log_probs`' (m, V) buffers in the input's itemsize: the logits, for 16-bit
    input their float32 copy (two), and the cap's derivative in ``backward``."""
    wide = 2 if dtype in _HALF else 1
    return (1 + wide if dtype in _HALF else 1) + (wide if cap is not None else 0)


def _gather_composed(x, W, b, index, temperature, softcap):
    """The same on the full logits (tensors the chunk loop cannot read: CUDA, tracing,
    autocast): `xent.torch._divergence.gather_composed`, in float32 for 16-bit input."""
    z = F.linear(x, W, b)
    return gather_composed(z.float() if z.dtype in _HALF else z, index, temperature,
                           softcap).to(x.dtype)


def linear_gather_log_probs(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    index: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Log-probabilities of given classes from hidden states, chunked: never holds the
    ``(N, V)`` logits.

    For row ``i`` with ``z = softcap(W x_i + b) / T`` (``softcap(y) = c·tanh(y/c)``, none by
    default) and ``lse_i = log Σ_c exp(z_c)``::

        out[i, k] = z[index[i, k]] - lse_i = log softmax(z)[index[i, k]]

    the log-probabilities of the sampled tokens at the sampling temperature (``K = 1``) or of a
    teacher's top-k. Differentiable with respect to ``input``, ``linear_weight`` and
    ``linear_bias``; the forward pass keeps the ``(N,)`` lse, ``backward`` recomputes each
    chunk's logits (one more product) and runs the two gradient products. Peak memory beyond
    the inputs, the weights and their gradients: one ``(chunk_size, V)`` buffer (two for 16-bit
    input, whose softmax runs in float32; one more with ``softcap`` in ``backward``).

    Args:
        input: ``(*, H)`` hidden states, float32, float64 or bfloat16.
        linear_weight: ``(V, H)`` classifier, the input's dtype.
        index: ``(*, K)`` integer class ids in ``[0, V)`` (duplicates allowed).
        linear_bias: ``(V,)`` or None.
        temperature: ``T > 0``, applied after the cap.
        softcap: the cap ``c > 0`` or None.
        chunk_size: rows per chunk; by default the chunk's buffers share
            `DEFAULT_CHUNK_BYTES` (128 MiB).

    Returns:
        ``(*, K)`` log-probabilities in the input's dtype (computed in float32 for bfloat16).

    Edge cases: ``N = 0`` or ``K = 0`` give an empty result; a row with NaN or +inf logits gives
    NaN. CUDA tensors, graph capture and autocast run the same formula in PyTorch ops on the
    full logits.

    Example:
        >>> import torch
        >>> from xent.torch import linear_gather_log_probs
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(5, 4, generator=g, requires_grad=True)
        >>> W = torch.randn(11, 4, generator=g, requires_grad=True)
        >>> ids = torch.tensor([[1, 2], [3, 3], [0, 10], [5, 6], [7, 8]])
        >>> lp = linear_gather_log_probs(x, W, ids, temperature=0.7, chunk_size=2)
        >>> ref = torch.log_softmax(x @ W.T / 0.7, -1).gather(1, ids)
        >>> bool(torch.allclose(lp, ref)), [round(v, 3) for v in lp[0].tolist()]
        (True, [-3.319, -7.647])
        >>> lp.sum().backward()
        >>> x.grad.shape, W.grad.shape
        (torch.Size([5, 4]), torch.Size([11, 4]))

    References: verl's ``linear_topk_log_probs``; Wijmans et al., Cut Your Losses in
    Large-Vocabulary Language Models (2024).
    """
    t = check_real(temperature, "temperature", positive=True)
    cap = None if softcap is None else check_real(softcap, "softcap", positive=True)
    chunk_size = _check_chunk(chunk_size)
    if not isinstance(input, torch.Tensor) or input.dim() < 1:
        raise TypeError(f"input must be a tensor of shape (*, H), got "
                        f"{getattr(input, 'shape', type(input).__name__)}")
    lead = tuple(input.shape[:-1])
    x = input.reshape(-1, input.shape[-1])
    _check_head(x, linear_weight, linear_bias, ("input", "linear_weight", "linear_bias"))
    if (not isinstance(index, torch.Tensor) or index.is_floating_point() or index.is_complex()
            or index.dtype == torch.bool):
        raise TypeError(f"index must be an integer tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.dim() != len(lead) + 1 or tuple(index.shape[:-1]) != lead:
        raise ValueError(f"index must have shape (*, K) with * = input's leading shape {lead}, "
                         f"got {tuple(index.shape)}")
    v = linear_weight.shape[0]
    idx = index.reshape(x.shape[0], index.shape[-1]).to(torch.int64)
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= v:
            bad = lo if lo < 0 else hi
            raise IndexError(f"index {bad} is out of bounds for {v} classes (valid: 0..{v - 1})")
    route = _route.plan(x, idx, params=(linear_weight, linear_bias), extended=True,
                        custom_op=False)
    if route is not _route.Route.CORE or x.dtype not in _FLOATS:
        out = _gather_composed(x, linear_weight, linear_bias, idx.to(x.device), t, cap)
        return out.reshape(*lead, idx.shape[1])
    n = x.shape[0]
    spec = _GatherSpec(index=idx.contiguous(), temperature=t, softcap=cap,
                       chunk=_chunk_rows(chunk_size, v, n, x, _gather_buffers(x.dtype, cap)))
    xc, Wc = x.contiguous(), linear_weight.contiguous()
    if torch.is_grad_enabled() and any(p is not None and p.requires_grad
                                       for p in (xc, Wc, linear_bias)):
        out, _ = _linear.ChunkedLinear.apply(xc, Wc, linear_bias, spec)
    else:
        with torch.no_grad():
            out, *_ = spec.forward(xc.detach(), Wc.detach(), None if linear_bias is None
                                   else linear_bias.detach(), None)
    return out.reshape(*lead, idx.shape[1])


# -- the generalized JSD, chunked -----------------------------------------------------------------

class _Teacher:
    """The teacher's logits chunk by chunk: from its hidden states (`_linear.chunk_logits` into
    a buffer of the teacher's dtype) or rows of precomputed ``logits`` (any float dtype)."""

    def __init__(self, chunk: int, v: int, logits: torch.Tensor | None, x: torch.Tensor | None,
                 W: torch.Tensor | None, b: torch.Tensor | None) -> None:
        self.logits, self.x, self.W, self.b = logits, x, W, b
        self.buf = None if x is None else torch.empty(chunk, v, dtype=x.dtype)

    def chunk(self, s: int, e: int) -> torch.Tensor:
        if self.logits is not None:
            return self.logits[s:e]
        return _linear.chunk_logits(self.buf[: e - s], self.x[s:e], self.W, self.b)


def _row_scale(valid: torch.Tensor | None, n: int, dt: torch.dtype, reduction: str,
               denom: float, grad_output: torch.Tensor | None) -> torch.Tensor:
    """(N,) d loss / d row_i times the upstream gradient: 0 on ignored rows."""
    if reduction == "none":
        g = grad_output.to(dt).reshape(n)
    else:
        g = torch.full((n,), 1.0 / denom, dtype=dt)
    return g if valid is None else g * valid


@dataclass
class _LinearJSDCall:
    """The checked arguments of the linear JSD forms (plain and vocabulary-parallel)."""

    beta: float
    temperature: float
    reduction: str
    valid: torch.Tensor | None  # (N,) counted rows, None: all
    chunk: int  # rows per chunk
    teacher: Callable[[int], _Teacher]  # a reader of the teacher's logits, ``chunk`` rows each

    @classmethod
    def checked(cls, x, W, b, xt, Wt, bt, teacher_logits, target, beta, temperature,
                ignore_index, reduction, chunk_size, buffers) -> _LinearJSDCall:
        """Every argument checked (TypeError/ValueError naming it): the student's head
        ``(N, H) @ (V, H).T``, the teacher's of the same ``(N, V)`` or its logits; the default
        chunk shared by ``buffers`` (m, V) buffers."""
        beta, temperature, reduction = check_jsd_options(beta, temperature, reduction)
        ii = check_ignore_index(ignore_index)
        chunk_size = _check_chunk(chunk_size)
        _check_head(x, W, b, ("student_input", "student_weight", "student_bias"))
        n, v = x.shape[0], W.shape[0]
        if teacher_logits is not None:
            if xt is not None or Wt is not None or bt is not None:
                raise ValueError("give the teacher either as teacher_logits or as "
                                 "teacher_input, teacher_weight (and teacher_bias), not both")
            if (not isinstance(teacher_logits, torch.Tensor)
                    or not teacher_logits.is_floating_point()):
                got = getattr(teacher_logits, "dtype", type(teacher_logits).__name__)
                raise TypeError(f"teacher_logits must be a floating-point tensor of shape "
                                f"({n}, {v}), got {got}")
            if tuple(teacher_logits.shape) != (n, v):
                raise ValueError(f"teacher_logits must have shape ({n}, {v}) (student_input's "
                                 f"rows, student_weight's classes), got "
                                 f"{tuple(teacher_logits.shape)}")
        else:
            if xt is None or Wt is None:
                raise ValueError("the teacher needs teacher_input and teacher_weight, or "
                                 "teacher_logits")
            _check_head(xt, Wt, bt, ("teacher_input", "teacher_weight", "teacher_bias"))
            if xt.shape[0] != n or Wt.shape[0] != v:
                raise ValueError(f"the teacher's logits would be ({xt.shape[0]}, "
                                 f"{Wt.shape[0]}), the student's ({n}, {v})")
        detached = [None if a is None else a.detach() for a in (teacher_logits, xt, Wt, bt)]
        tl, xt, Wt, bt = detached
        xt, Wt = (None if a is None else a.contiguous() for a in (xt, Wt))

        def teacher(rows: int) -> _Teacher:
            return _Teacher(rows, v, tl, xt, Wt, bt)

        return cls(beta, temperature, reduction, _check_target(target, n, ii),
                   _chunk_rows(chunk_size, v, n, x, buffers), teacher)


def _chunked(spec: Any, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None):
    """``spec``'s loss through `_linear.ChunkedLinear` (forward only without a gradient)."""
    xc, Wc = x.contiguous(), W.contiguous()
    if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (xc, Wc, b)):
        return _linear.ChunkedLinear.apply(xc, Wc, b, spec)[0]
    with torch.no_grad():
        return spec.forward(xc.detach(), Wc.detach(), None if b is None else b.detach(), None)[0]


@dataclass
class _JSDSpec:
    """`linear_generalized_jsd`'s passes for `_linear.ChunkedLinear`."""

    problem: _Reduction
    teacher: Callable[[int], _Teacher]  # a teacher reader for ``chunk`` rows
    valid: torch.Tensor | None  # (N,) counted rows, None: all
    denom: float
    beta: float
    temperature: float
    chunk: int
    allow_retain_graph: bool = False
    consumed = ("xent.torch.linear_generalized_jsd: backward ran a second time through a graph "
                "whose precomputed gradients were already consumed; pass "
                "allow_retain_graph=True to keep them")

    def forward(self, x, W, b, need):
        cdt = _compute_dtype(x.dtype)
        scale = (_row_scale(self.valid, x.shape[0], cdt, self.problem.reduction, self.denom,
                            None) if need else None)
        rows, grads = self._run(x, W, b, scale, need or (False,) * 3)
        loss = _reduce(rows, self.problem.reduction, self.denom).to(x.dtype)
        return loss, torch.empty(0, dtype=x.dtype), grads if need else None, None

    def backward(self, x, W, b, need, grad_output, state):
        cdt = _compute_dtype(x.dtype)
        scale = _row_scale(self.valid, x.shape[0], cdt, "none", 1.0, grad_output)
        return self._run(x, W, b, scale, need)[1]

    def _run(self, x, W, b, scale, need):
        """One pass of the chunk loop: (the rows' divergences, 0 where ignored; [gx, gW, gb])."""
        n, v = x.shape[0], W.shape[0]
        cdt = _compute_dtype(x.dtype)
        buf = torch.empty(self.chunk, v, dtype=x.dtype)
        teacher = self.teacher(self.chunk)
        rows = torch.empty(n, dtype=cdt)
        want = scale is not None and any(need)

        keep = None if self.valid is None else self.valid.numpy()
        rs = None if not want else scale.numpy()

        def on_chunk(s: int, e: int, z: torch.Tensor) -> torch.Tensor | None:
            # the core's rows (`xent._divergence.jsd_rows`): loss_i and row_scale_i·d loss_i/d z
            loss, gs, _ = jsd_rows(_bridge.as_numpy(z), _bridge.as_numpy(teacher.chunk(s, e)),
                                   self.beta, self.temperature, want, False,
                                   row_scale=1.0 if rs is None else rs[s:e],
                                   keep=None if keep is None else keep[s:e])
            rows[s:e] = torch.from_numpy(loss)
            return None if gs is None else _bridge.from_numpy(gs)

        grads = _linear.chunk_loop(x, W, b, buf, on_chunk, need if want else (False,) * 3,
                                   gb_dtype=cdt)
        return rows, list(grads)


def linear_generalized_jsd(
    student_input: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_input: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    target: torch.Tensor | None = None,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    teacher_logits: torch.Tensor | None = None,
    allow_retain_graph: bool = False,
) -> torch.Tensor:
    r"""Generalized Jensen-Shannon divergence between a student's and a teacher's linear heads,
    chunked: neither ``(N, V)`` logit tensor is ever held.

    With ``z_s = W_s x_s + b_s``, ``z_t = W_t x_t + b_t`` (or ``teacher_logits``),
    ``p_s = softmax(z_s / T)``, ``p_t = softmax(z_t / T)`` and ``m = β·p_t + (1-β)·p_s``, the
    unreduced loss of row ``i`` is TRL's ``generalized_jsd_loss`` summed over the classes::

        β = 0:  KL(p_t ‖ p_s)   ("forward" KL)
        β = 1:  KL(p_s ‖ p_t)   ("reverse" KL)
        else:   β·KL(p_t ‖ m) + (1-β)·KL(p_s ‖ m)

    and 0 where ``target == ignore_index``. Per chunk of rows both logit chunks are formed by
    the matrix products and passed to the core's row function (`xent._divergence.jsd_rows`):
    four products in all (two for the logits, two for the student's gradients; with
    ``reduction='none'`` the logits are recomputed in ``backward``). Gradients flow to the
    student's input, weight and bias; the teacher is a constant (a teacher operand that
    requires grad runs the PyTorch composition instead, which differentiates it too).

    Peak memory beyond the inputs, the weights and their gradients: the student's and the
    teacher's ``(chunk_size, V)`` buffers, the chunk's gradient, and O(N) vectors; for
    bfloat16 over several chunks also `_linear`'s float32 ``(V, H)`` accumulator of
    ``grad_W``.

    Args:
        student_input: ``(N, H_s)`` float32, float64 or bfloat16.
        student_weight: ``(V, H_s)``, ``student_input``'s dtype.
        teacher_input: ``(N, H_t)``, or None with ``teacher_logits``.
        teacher_weight: ``(V, H_t)``, ``teacher_input``'s dtype, or None with
            ``teacher_logits``.
        target: ``(N,)`` integer labels, used only to mask rows equal to ``ignore_index``; None
            counts every row.
        student_bias, teacher_bias: ``(V,)`` or None.
        beta: ``β`` in ``[0, 1]``.
        temperature: ``T > 0``.
        ignore_index: the label of rows that contribute nothing.
        reduction: ``'batchmean'`` (the sum over counted rows divided by their number, at least
            1, as TRL's), ``'sum'``, ``'mean'`` (divided by counted rows x V, TRL's
            ``jsd.mean()``) or ``'none'`` (``(N,)``).
        chunk_size: rows per chunk; default a third of `default_chunk_size(V)` (three ``(m, V)``
            buffers, about 128 MiB in all).
        teacher_logits: ``(N, V)`` precomputed teacher logits in any float dtype, instead of
            ``teacher_input`` / ``teacher_weight``.
        allow_retain_graph: keep the precomputed gradients for a second ``backward``.

    Returns:
        The loss in the student's dtype: 0-d, or ``(N,)`` for ``'none'``.

    Edge cases: every row ignored gives 0 (``'batchmean'``, ``'sum'``) with zero gradients;
    ``0·log 0 = 0``; CUDA tensors, graph capture and autocast run the composition on full
    logits.

    Example:
        >>> import torch
        >>> from xent.torch import linear_generalized_jsd
        >>> g = torch.Generator().manual_seed(0)
        >>> xs = torch.randn(6, 4, generator=g, requires_grad=True)
        >>> Ws = torch.randn(10, 4, generator=g, requires_grad=True)
        >>> xt, Wt = torch.randn(6, 8, generator=g), torch.randn(10, 8, generator=g)
        >>> t = torch.tensor([1, 2, -100, 3, 4, 5])
        >>> loss = linear_generalized_jsd(xs, Ws, xt, Wt, t, beta=0.5, chunk_size=4)
        >>> round(loss.item(), 4)
        0.3497
        >>> loss.backward()
        >>> xs.grad.shape, Ws.grad.shape
        (torch.Size([6, 4]), torch.Size([10, 4]))

    References: Agarwal et al., On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes (GKD, 2024), Eq. (1); TRL's ``GKDTrainer.generalized_jsd_loss``;
    Liger-Kernel's ``LigerFusedLinearJSDLoss``.
    """
    call = _LinearJSDCall.checked(student_input, student_weight, student_bias, teacher_input,
                                  teacher_weight, teacher_bias, teacher_logits, target, beta,
                                  temperature, ignore_index, reduction, chunk_size,
                                  JSD_BUFFERS)
    b_, t, reduction, valid = call.beta, call.temperature, call.reduction, call.valid
    n, v = student_input.shape[0], student_weight.shape[0]
    denom = _denominator(reduction, valid, n, v)
    teacher_ops = (teacher_logits, teacher_input, teacher_weight, teacher_bias)
    route = _route.plan(student_input, *teacher_ops, target,
                        params=(student_weight, student_bias), extended=True, custom_op=False)
    if route is not _route.Route.CORE:
        # the full logits through `xent.torch._divergence.jsd_composed` (float32 for 16-bit)
        zs = F.linear(student_input, student_weight, student_bias)
        zt = teacher_logits if teacher_logits is not None else F.linear(
            teacher_input, teacher_weight, teacher_bias)
        wide = torch.float32 if zs.dtype in _HALF else zs.dtype
        return jsd_composed(zs.to(wide), zt.to(wide), target, b_, t, ignore_index,
                            reduction).to(zs.dtype)
    spec = _JSDSpec(problem=_Reduction(reduction), teacher=call.teacher, valid=valid,
                    denom=denom, beta=b_, temperature=t, chunk=call.chunk,
                    allow_retain_graph=allow_retain_graph)
    return _chunked(spec, student_input, student_weight, student_bias)


# -- the terms of log-probabilities (whole rows, or a rank's slice of each row) ------------------

def _plogr(lp: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``exp(lp)·r`` with ``0·r = 0`` where ``exp(lp) = 0`` (the ``0·log 0 = 0`` of the KL
    terms, also where ``r`` is ±inf or NaN from ``-inf - -inf``)."""
    p = lp.exp()
    return (p * r).masked_fill_(p == 0, 0.0)


def _mixture(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> torch.Tensor:
    """``log m = log(β·p_t + (1-β)·p_s)`` elementwise from the log-probabilities."""
    return torch.logaddexp(ls + math.log1p(-beta), lt + math.log(beta))


def _jsd_terms(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> tuple[torch.Tensor, ...]:
    """Per row, the sums over the given columns of log-probabilities ``ls`` (student) and
    ``lt`` (teacher), normalised over the whole vocabulary: (J, KL(p_s ‖ m), KL(p_t ‖ m));
    for β in {0, 1} J alone (the gradients need no other sum)."""
    if beta == 0.0:
        return (_plogr(lt, lt - ls).sum(1),)
    if beta == 1.0:
        return (_plogr(ls, ls - lt).sum(1),)
    lm = _mixture(ls, lt, beta)
    kls, klt = _plogr(ls, ls - lm).sum(1), _plogr(lt, lt - lm).sum(1)
    return beta * klt + (1.0 - beta) * kls, kls, klt


def _jsd_grads(ls: torch.Tensor, lt: torch.Tensor, beta: float, sums: torch.Tensor,
               need_s: bool, need_t: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """d J_i / d(z_s/T) and d J_i / d(z_t/T) on the given columns, from the rows' whole sums
    ``sums`` (`_jsd_terms`' stacked, (k, m)): the softmax Jacobian ``p ⊙ (u - Σ p u)``."""
    j = sums[0][:, None]
    gs = gt = None
    if beta == 0.0:  # J = Σ p_t (log p_t - log p_s)
        gs = ls.exp() - lt.exp() if need_s else None
        gt = _plogr(lt, lt - ls - j) if need_t else None
    elif beta == 1.0:  # J = Σ p_s (log p_s - log p_t)
        gs = _plogr(ls, ls - lt - j) if need_s else None
        gt = lt.exp() - ls.exp() if need_t else None
    else:  # ∂J/∂p_s = (1-β)(log p_s - log m), ∂J/∂p_t = β(log p_t - log m)
        lm = _mixture(ls, lt, beta)
        gs = _plogr(ls, ls - lm - sums[1][:, None]).mul_(1.0 - beta) if need_s else None
        gt = _plogr(lt, lt - lm - sums[2][:, None]).mul_(beta) if need_t else None
    return gs, gt


# -- vocabulary-parallel --------------------------------------------------------------------------

class _ShardJSD:
    """Per-row statistics of this rank's slice of both distributions: the log-sum-exps of
    ``z/T`` (local, then global after `combine_lse`) and the sums of `_jsd_terms` (local, then
    global after `combine_terms`)."""

    def __init__(self, n: int, dt: torch.dtype, beta: float) -> None:
        self.beta = beta
        self.lse = torch.empty(2, n, dtype=dt)  # (student, teacher)
        self.sums = torch.zeros(1 if beta in (0.0, 1.0) else 3, n, dtype=dt)

    def add_lse(self, s: int, e: int, ws: torch.Tensor, wt: torch.Tensor) -> None:
        torch.logsumexp(ws, 1, out=self.lse[0, s:e])
        torch.logsumexp(wt, 1, out=self.lse[1, s:e])

    def combine_lse(self, group) -> None:
        """Two collectives of 2N: the rows' max, then the sum of exp below it."""
        m = self.lse.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        se = torch.exp(self.lse - m)
        dist.all_reduce(se, op=dist.ReduceOp.SUM, group=group)
        self.lse = m + torch.log(se)

    def log_probs_(self, s: int, e: int, ws: torch.Tensor, wt: torch.Tensor) -> None:
        ws.sub_(self.lse[0, s:e, None])
        wt.sub_(self.lse[1, s:e, None])

    def add_terms(self, s: int, e: int, ls: torch.Tensor, lt: torch.Tensor) -> None:
        for row, part in zip(self.sums, _jsd_terms(ls, lt, self.beta), strict=True):
            row[s:e] = part

    def combine_terms(self, group) -> None:
        """One collective of N (β in {0, 1}) or 3N."""
        dist.all_reduce(self.sums, op=dist.ReduceOp.SUM, group=group)

    def grads(self, s, e, ls, lt, need_s, need_t):
        return _jsd_grads(ls, lt, self.beta, self.sums[:, s:e], need_s, need_t)


def _scale_rows_(g: torch.Tensor | None, scale: torch.Tensor, temperature: float) -> None:
    """``g`` (d J_i / d(z/T)) times each row's scale and 1/T, in place; ignored rows (scale 0)
    exactly 0."""
    if g is not None:
        g.mul_((scale / temperature)[:, None])
        g.masked_fill_((scale == 0)[:, None], 0.0)


class _PairGrad(torch.autograd.Function):
    """A loss of two tensors whose gradients were computed with it: ``compute()`` ->
    (loss, grad_a or None, grad_b or None); backward scales them by ``grad_output`` (per row for
    an ``(N,)`` loss)."""

    @staticmethod
    def forward(ctx, a, b, compute):  # noqa: D102
        loss, ga, gb = compute()
        ctx.grads = (ga, gb)
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        go = grad_output[:, None] if grad_output.dim() else grad_output
        return tuple(None if g is None else g * go for g in ctx.grads) + (None,)


def _shard_vocab(local: int, reduction: str, group) -> int:
    """The whole vocabulary's size, needed by ``reduction='mean'`` only (one all_gather of the
    shard sizes, `_parallel._vocab_range`); ``local`` otherwise (unused)."""
    if reduction != "mean":
        return local
    from ._parallel import _vocab_range
    return _vocab_range(local, 0, None, group)[1]


def vocab_parallel_generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    r"""Generalized Jensen-Shannon divergence of logits sharded along the vocabulary across
    the ranks of ``group``.

    Equals ``xent.torch.generalized_jsd`` (TRL's ``generalized_jsd_loss``, see
    `linear_generalized_jsd` for the formula) on the concatenation of the shards in rank order.
    Three collectives of O(N) each: the rows' max of both distributions' local log-sum-exps,
    the sum of exp below it (then ``log p = z/T - lse`` and the mixture are local), and the
    sum of the rows' slice terms; the gradient of each rank's slice is then local.

    Args:
        student_logits: ``(N, V_r)`` this rank's classes of the student.
        teacher_logits: ``(N, V_r)`` the same classes of the teacher, any float dtype.
        target: ``(N,)`` labels masking rows equal to ``ignore_index`` (the same on every rank),
            or None.
        beta, temperature, ignore_index, reduction: as in `linear_generalized_jsd`
            (``'mean'`` adds one all_gather of the shard sizes).
        group: the process group (default: the world).

    Returns:
        The loss, identical on every rank: 0-d, or ``(N,)`` for ``'none'``. Gradients reach this
        rank's student shard and, where it requires grad, the teacher's.

    Example (one process: the group of one rank holds the whole vocabulary):
        >>> import torch, torch.distributed as dist
        >>> from xent.torch import vocab_parallel_generalized_jsd
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> zs = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
        >>> zt = torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 2.0]])
        >>> round(vocab_parallel_generalized_jsd(zs, zt, beta=0.5).item(), 4)
        0.0339
        >>> dist.destroy_process_group()
    """
    b_, t, reduction = check_jsd_options(beta, temperature, reduction)
    ii = check_ignore_index(ignore_index)
    for z, name in ((student_logits, "student_logits"), (teacher_logits, "teacher_logits")):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != 2:
            raise TypeError(f"{name} must be a floating-point tensor (N, V_r), got "
                            f"{getattr(z, 'dtype', type(z).__name__)} "
                            f"{tuple(getattr(z, 'shape', ()))}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have one shape")
    n, local = student_logits.shape
    valid = _check_target(target, n, ii)
    denom = _denominator(reduction, valid, n, _shard_vocab(local, reduction, group))
    dt = _compute_dtype(student_logits.dtype)
    need_s = torch.is_grad_enabled() and student_logits.requires_grad
    need_t = torch.is_grad_enabled() and teacher_logits.requires_grad

    def compute():
        ls = student_logits.detach().to(dt, copy=True).div_(t)
        lt = teacher_logits.detach().to(dt, copy=True).div_(t)
        st = _ShardJSD(n, dt, b_)
        st.add_lse(0, n, ls, lt)
        st.combine_lse(group)
        st.log_probs_(0, n, ls, lt)
        st.add_terms(0, n, ls, lt)
        st.combine_terms(group)
        rows = st.sums[0] if valid is None else torch.where(valid, st.sums[0], 0.0)
        loss = _reduce(rows, reduction, denom).to(student_logits.dtype)
        gs, gt = st.grads(0, n, ls, lt, need_s, need_t)
        scale = _row_scale(valid, n, dt, reduction, denom,
                           torch.ones(n, dtype=dt) if reduction == "none" else None)
        _scale_rows_(gs, scale, t)
        _scale_rows_(gt, scale, t)
        return (loss, None if gs is None else gs.to(student_logits.dtype),
                None if gt is None else gt.to(teacher_logits.dtype))

    if need_s or need_t:
        return _PairGrad.apply(student_logits, teacher_logits, compute)
    with torch.no_grad():
        return compute()[0]


@dataclass
class _ParallelJSDSpec:
    """`vocab_parallel_linear_generalized_jsd`'s passes for `_linear.ChunkedLinear`."""

    problem: _Reduction
    teacher: Callable[[int], _Teacher]  # a reader of this shard's teacher logits
    valid: torch.Tensor | None
    denom: float
    beta: float
    temperature: float
    chunk: int
    group: Any
    reduce_input_grad: bool
    allow_retain_graph = False
    consumed = ("vocab_parallel_linear_generalized_jsd: backward ran twice through a graph "
                "whose precomputed gradients were already consumed")

    def forward(self, x, W, b, need):
        """Pass 1 (local lse of both), two collectives, pass 2 (the slice's terms), one
        collective, and with ``need`` pass 3 (the gradients). When one chunk covers every row
        its log-probabilities stay in the buffers and are not recomputed."""
        n = x.shape[0]
        sc = _Scaled(self.chunk, W.shape[0], x.dtype, self.temperature, None, False)
        teacher = self.teacher(self.chunk)
        cdt = _compute_dtype(x.dtype)
        tw = torch.empty(self.chunk, W.shape[0], dtype=cdt)
        st = _ShardJSD(n, cdt, self.beta)
        resident = self.chunk >= n

        def both(s: int, e: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            wt = tw[: e - s].copy_(teacher.chunk(s, e)).div_(self.temperature)
            return sc.scaled(z), wt

        def pass1(s: int, e: int, z: torch.Tensor) -> None:
            st.add_lse(s, e, *both(s, e, z))

        def pass2(s: int, e: int, z: torch.Tensor) -> None:
            ls, lt = (sc.work[: e - s], tw[: e - s]) if resident else both(s, e, z)
            st.log_probs_(s, e, ls, lt)
            st.add_terms(s, e, ls, lt)

        _linear.chunk_loop(x, W, b, sc.buf, pass1)
        st.combine_lse(self.group)
        if resident:
            pass2(0, n, sc.buf[:n])
        else:
            _linear.chunk_loop(x, W, b, sc.buf, pass2)
        st.combine_terms(self.group)
        rows = st.sums[0] if self.valid is None else torch.where(self.valid, st.sums[0], 0.0)
        loss = _reduce(rows, self.problem.reduction, self.denom).to(x.dtype)
        grads = None
        if need:
            scale = _row_scale(self.valid, n, cdt, self.problem.reduction, self.denom, None)
            grads = self._grads(x, W, b, st, need, scale, (sc, teacher, tw) if resident
                                else None)
        return loss, torch.empty(0, dtype=x.dtype), grads, st

    def backward(self, x, W, b, need, grad_output, st):
        """Pass 3 with each row's ``grad_output`` (``reduction='none'``)."""
        scale = _row_scale(self.valid, x.shape[0], _compute_dtype(x.dtype), "none", 1.0,
                           grad_output)
        return self._grads(x, W, b, st, need, scale, None)

    def _grads(self, x, W, b, st: _ShardJSD, need, scale, resident):
        """Pass 3 (`_linear.chunk_loop`): each chunk's log-probabilities (kept in ``resident``'s
        buffers, else recomputed), the student's gradient into the chunk's buffer, the three
        products; ``grad_x`` summed over the group unless ``reduce_input_grad`` is off."""
        if resident is None:
            sc = _Scaled(self.chunk, W.shape[0], x.dtype, self.temperature, None, False)
            teacher = self.teacher(self.chunk)
            tw = torch.empty(self.chunk, W.shape[0], dtype=_compute_dtype(x.dtype))
        else:
            sc, teacher, tw = resident

        def pass3(s: int, e: int, z: torch.Tensor) -> torch.Tensor:
            if resident is None:
                ls = sc.scaled(z)
                lt = tw[: e - s].copy_(teacher.chunk(s, e)).div_(self.temperature)
                st.log_probs_(s, e, ls, lt)
            else:
                ls, lt = sc.work[: e - s], tw[: e - s]
            gs = st.grads(s, e, ls, lt, True, False)[0]
            _scale_rows_(gs, scale[s:e], self.temperature)
            return z.copy_(gs)

        gx, gW, gb = _linear.chunk_loop(x, W, b, sc.buf, pass3, need,
                                        recompute=resident is None,
                                        gb_dtype=_compute_dtype(x.dtype))
        if gx is not None and self.reduce_input_grad:
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=self.group)
        return [gx, gW, gb]


def vocab_parallel_linear_generalized_jsd(
    student_input: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_input: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    target: torch.Tensor | None = None,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    teacher_logits: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    reduce_input_grad: bool = True,
) -> torch.Tensor:
    r"""`linear_generalized_jsd` with both classifiers sharded along the vocabulary across
    the ranks of ``group``: each rank holds the rows ``W[start:start + V_r]`` of the student's
    and the teacher's heads (or the teacher's logits of those classes).

    Equals ``linear_generalized_jsd`` with the shards stacked in rank order. Chunked as it, in
    up to three passes over this rank's logits (the local log-sum-exps; the slice's terms once
    the lse is global; the gradients once the rows' KL sums are global), with the collectives
    of `vocab_parallel_generalized_jsd` (three of O(N)) in between; when one chunk covers every
    row its log-probabilities are kept and not recomputed (the default chunk is an eighth of
    `default_chunk_size(V_r)`: its buffers and temporaries share 128 MiB). The student input's
    gradient sums every rank's share (one all_reduce of ``(N, H)``, skipped with
    ``reduce_input_grad=False``).

    Args:
        student_input: ``(N, H_s)`` the same on every rank.
        student_weight: ``(V_r, H_s)`` this rank's rows of the student's head.
        teacher_input: ``(N, H_t)`` or None; teacher_weight: ``(V_r, H_t)`` or None.
        target, student_bias (``(V_r,)``), teacher_bias, beta, temperature, ignore_index,
            reduction, chunk_size, teacher_logits (``(N, V_r)``): as in
            `linear_generalized_jsd`, on this rank's classes.
        group: the process group (default: the world).
        reduce_input_grad: all-reduce the student input's gradient over ``group``.

    Returns:
        The loss, identical on every rank (0-d, or ``(N,)`` for ``'none'``).

    Example (one process holding the whole vocabulary):
        >>> import torch, torch.distributed as dist
        >>> from xent.torch import linear_generalized_jsd, vocab_parallel_linear_generalized_jsd
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = torch.Generator().manual_seed(0)
        >>> xs, Ws = torch.randn(6, 4, generator=g), torch.randn(10, 4, generator=g)
        >>> xt, Wt = torch.randn(6, 8, generator=g), torch.randn(10, 8, generator=g)
        >>> loss = vocab_parallel_linear_generalized_jsd(xs, Ws, xt, Wt, chunk_size=4)
        >>> bool(torch.allclose(loss, linear_generalized_jsd(xs, Ws, xt, Wt)))
        True
        >>> dist.destroy_process_group()
    """
    call = _LinearJSDCall.checked(student_input, student_weight, student_bias, teacher_input,
                                  teacher_weight, teacher_bias, teacher_logits, target, beta,
                                  temperature, ignore_index, reduction, chunk_size,
                                  PARALLEL_JSD_BUFFERS)
    n, local = student_input.shape[0], student_weight.shape[0]
    denom = _denominator(call.reduction, call.valid, n,
                         _shard_vocab(local, call.reduction, group))
    spec = _ParallelJSDSpec(problem=_Reduction(call.reduction), teacher=call.teacher,
                            valid=call.valid, denom=denom, beta=call.beta,
                            temperature=call.temperature, chunk=call.chunk, group=group,
                            reduce_input_grad=reduce_input_grad)
    return _chunked(spec, student_input, student_weight, student_bias)
