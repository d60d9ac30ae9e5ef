"""bfloat16 (``ml_dtypes``) and float16 in xent's NumPy API, on both backends.

Semantics (issue 10, as PyTorch's CPU kernels): the 16-bit logits are read as they are, the
math runs in float32, and the loss, gradient and softmax outputs come back in the 16-bit dtype,
rounded once to nearest even. Expected values are float64 PyTorch on the same 16-bit values
(which float64 holds exactly), with a bound of half a 16-bit ulp (the final rounding) plus the
float32 computation's error; and xent must be at least as close to that truth as PyTorch's own
result at the 16-bit dtype. The kernel path must not make a float32 copy of the input.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
from xent import _cross_entropy, _dispatch, _problem, _validation
from xent.torch import _reference

ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPES = [pytest.param(BF16, id="bf16"), pytest.param(F16, id="f16")]
TORCH_DTYPE = {BF16: torch.bfloat16, F16: torch.float16}
# float32 arithmetic error of the computation before its one rounding to 16 bits (relative).
REL32 = 2e-5


def _ulp(v: np.ndarray, dt: np.dtype) -> np.ndarray:
    """The spacing of ``dt`` (bfloat16 / float16) at the magnitude of float64 values ``v``."""
    nmant, minexp = (7, -126) if dt == BF16 else (10, -14)
    a = np.abs(v)
    e = np.where(a > 0, np.frexp(a)[1] - 1, minexp)
    return np.exp2(np.maximum(e, minexp) - nmant)


def _assert_rounded(got: np.ndarray, truth: np.ndarray, dt: np.dtype, name: str) -> None:
    """``got`` (dtype ``dt``) is ``truth`` (float64) rounded to ``dt`` up to float32 error:
    |got - truth| <= ulp/2 + REL32·|truth| + 1e-6·max|truth| elementwise; NaN where truth is."""
    assert got.dtype == dt, f"{name}: dtype {got.dtype}, expected {dt}"
    assert got.shape == truth.shape, f"{name}: shape {got.shape}, expected {truth.shape}"
    g = got.astype(np.float64)
    nan = np.isnan(truth)
    np.testing.assert_array_equal(np.isnan(g), nan, err_msg=f"{name}: NaN positions")
    t = np.where(nan, 0, truth)
    g = np.where(nan, 0, g)
    inf = np.isinf(t)
    np.testing.assert_array_equal(g[inf], t[inf], err_msg=f"{name}: infinities")
    t, g = np.where(inf, 0, t), np.where(inf, 0, g)
    scale = np.abs(t).max() if t.size else 0.0
    bound = 0.5 * _ulp(t, dt) + REL32 * np.abs(t) + 1e-6 * scale
    err = np.abs(g - t)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert (err <= bound).all(), (
        f"{name}: |xent - float64| = {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(xent {g[worst]!r}, truth {t[worst]!r})")


def _logits(rng, shape, dt, scale=4.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(dt)


def _t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a).astype(np.float64))


def _truth_ce(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              lse_square_scale=0.0, softcap=None):
    """(loss, grad) in float64 PyTorch (``_reference``'s composition of the options)."""
    xt = _t64(x).requires_grad_()
    tgt = torch.tensor(target) if np.asarray(target).dtype.kind in "iu" else _t64(target)
    w = None if weight is None else _t64(weight)
    loss = _reference.cross_entropy(xt, tgt, w, ignore_index, reduction, label_smoothing,
                                    lse_square_scale, softcap, False)
    loss.backward(torch.ones_like(loss))
    return loss.detach().numpy(), xt.grad.numpy()


# ---------------------------------------------------------------------------------------------
# Validation and dtypes (no kernel needed)
# ---------------------------------------------------------------------------------------------
def test_validation_recognises_bfloat16():
    assert _validation.is_half(BF16) and _validation.is_half(F16)
    assert not _validation.is_half(np.dtype(np.float32))
    assert not _validation.is_half(np.dtype("V2"))  # two raw bytes are not a bfloat16
    assert _validation.compute_dtype(BF16, "x") == (np.float32, BF16)
    assert _validation.compute_dtype(F16, "x") == (np.float32, F16)
    x = np.zeros((2, 3), BF16)
    assert _validation.as_storage(x, "x")[0] is x  # kept as it is: no float32 copy
    with pytest.raises(TypeError, match="bfloat16"):
        _validation.compute_dtype(np.dtype(np.complex64), "x")
    # A 16-bit dtype handed to the validation step stands for float32.
    p = _problem.cross_entropy_problem((2, 3), BF16, [0, 2], weight=np.ones(3, BF16))
    assert p.dtype == np.float32 and p.weight.dtype == np.float32


def test_import_without_ml_dtypes():
    """``import xent`` and the float16 path work where ml_dtypes is not installed."""
    code = (
        "import sys; sys.modules['ml_dtypes'] = None\n"
        "import numpy as np, xent\n"
        "x = np.array([[1.0, 2.0, 0.5]], np.float16)\n"
        "l, g = xent.cross_entropy(x, [1], return_grad=True)\n"
        "assert l.dtype == np.float16 and g.dtype == np.float16\n"
        "assert 'ml_dtypes' not in sys.modules or sys.modules['ml_dtypes'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"XENT_BACKEND": "numpy", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_dispatch_sends_16_bit_to_the_kernels():
    pytest.importorskip("numba")
    for dt in (BF16, F16):
        with xent.use_backend("numpy"):
            assert _dispatch.backend_for("ce_index", 4096, 4096, dt).__name__ == (
                "xent._backend_numpy")
        with xent.use_backend("auto"):
            assert _dispatch.backend_for("ce_index", 4, 4, dt).__name__ == "xent._backend_numpy"
            assert _dispatch.backend_for("softmax", 4096, 4096, dt).__name__ == "xent._kernels"


# ---------------------------------------------------------------------------------------------
# Cross-entropy, class-index targets, every option, against float64
# ---------------------------------------------------------------------------------------------
INDEX_CASES = {
    "plain": {},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "weights16": {"weight": "16"},
    "weights32": {"weight": "32"},
    "ignore": {"ignore_index": 3},
    "smoothing": {"label_smoothing": 0.1, "weight": "32"},
    "zloss_cap": {"lse_square_scale": 1e-3, "softcap": 5.0},
    "everything": {"lse_square_scale": 1e-2, "softcap": 8.0, "label_smoothing": 0.2,
                   "weight": "32", "ignore_index": 3},
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
@pytest.mark.parametrize("dt", DTYPES)
def test_cross_entropy_index(backend, dt, case):
    opts = dict(INDEX_CASES[case])
    rng = np.random.default_rng(len(case))
    N, C = 37, 301
    x = _logits(rng, (N, C), dt)
    t = rng.integers(0, C, N)
    if "ignore_index" in opts:
        t[::4] = opts["ignore_index"]
    w = opts.pop("weight", None)
    if w is not None:
        w = (rng.random(C) + 0.5).astype(dt if w == "16" else np.float32)
    loss, grad = xent.cross_entropy(x, t, w, return_grad=True, **opts)
    tl, tg = _truth_ce(x, t, w, **opts)
    _assert_rounded(np.asarray(loss), tl, dt, "loss")
    _assert_rounded(grad, tg, dt, "grad")


@pytest.mark.parametrize("dt", DTYPES)
def test_return_lse_and_inplace(backend, dt):
    rng = np.random.default_rng(5)
    x = _logits(rng, (16, 200), dt)
    t = rng.integers(0, 200, 16)
    t[3] = -100
    loss, lse, grad = xent.cross_entropy(x, t, return_lse=True, return_grad=True, softcap=6.0,
                                         reduction="none")
    xt = _t64(x)
    z = 6.0 * torch.tanh(xt / 6.0)
    _assert_rounded(lse, torch.logsumexp(z, 1).numpy(), dt, "lse")
    buf = x.copy()
    l2, g2 = xent.cross_entropy(buf, t, return_grad=True, inplace=True)
    assert g2 is buf
    tl, tg = _truth_ce(x, t)
    _assert_rounded(np.asarray(l2), tl, dt, "loss")
    _assert_rounded(buf, tg, dt, "in-place grad")


# The kernels' blocks: 2048 elements for the online max / sum of exps (_rows._BLOCK), 16384
# for the pass that keeps a 16-bit row's exps for its gradient or softmax (_rows._BLOCK16).
BLOCK, BLOCK16 = 2048, 16384


@pytest.mark.parametrize("shape", [(6, 5000), (4, 2 * BLOCK16 + 7232)], ids=["5000", "40000"])
@pytest.mark.parametrize("dt", DTYPES)
def test_rows_of_several_blocks(backend, dt, shape):
    """Rows longer than the kernels' blocks: targets in later blocks with weights and label
    smoothing (the target's gradient entry is finished and rounded on its own), the row max in
    a later block than the first, a row whose first block is all -inf, probabilities in the
    other 16-bit format, in place."""
    rng = np.random.default_rng(19)
    N, C = shape
    block = BLOCK if C < BLOCK16 else BLOCK16
    x = _logits(rng, (N, C), dt)
    x[2, -3] = 30.0  # the max in the last block: the earlier blocks' exps are rescaled
    t = np.array([C - 1, block, block - 1, 0, C - 900, 3000])[:N]
    w = (rng.random(C) + 0.5).astype(np.float32)
    loss, grad = xent.cross_entropy(x, t, w, label_smoothing=0.1, return_grad=True)
    tl, tg = _truth_ce(x, t, w, label_smoothing=0.1)
    _assert_rounded(np.asarray(loss), tl, dt, "loss")
    _assert_rounded(grad, tg, dt, "grad")
    xi = x.copy()
    xi[1, :block] = -np.inf
    loss, grad = xent.cross_entropy(xi, t, reduction="none", return_grad=True)
    tl, tg = _truth_ce(xi, t, reduction="none")
    _assert_rounded(loss, tl, dt, "-inf block loss")
    _assert_rounded(grad, tg, dt, "-inf block grad")
    for f, ref in ((xent.softmax, torch.softmax), (xent.log_softmax, torch.log_softmax)):
        _assert_rounded(f(xi), ref(_t64(xi), -1).numpy(), dt, f.__name__)
    other = F16 if dt == BF16 else BF16
    y = rng.dirichlet(np.ones(C), N).astype(other)
    buf = x.copy()
    loss, g2 = xent.cross_entropy(buf, y, return_grad=True, inplace=True)
    assert g2 is buf
    tl, tg = _truth_ce(x, y)
    _assert_rounded(np.asarray(loss), tl, dt, "prob loss")
    _assert_rounded(buf, tg, dt, "prob in-place grad")


@pytest.mark.slow
@pytest.mark.parametrize("dt", DTYPES)
def test_kernel_softmax_in_place(dt):
    """The kernels' softmax / log_softmax with ``out`` being ``x`` itself (as the torch layer
    may call them), several blocks per row, equal to float64 PyTorch rounded."""
    pytest.importorskip("numba")
    from xent import _kernels

    rng = np.random.default_rng(37)
    x = _logits(rng, (5, BLOCK16 + 4500), dt, scale=6.0)
    for name in ("softmax", "log_softmax"):
        buf = x.copy()
        assert getattr(_kernels, name)(buf, buf) is buf
        _assert_rounded(buf, getattr(torch, name)(_t64(x), -1).numpy(), dt, f"{name} in place")


# ---------------------------------------------------------------------------------------------
# Probability targets (16-bit or float32), K-dimensional layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ydt", ["same", "float32"])
@pytest.mark.parametrize("dt", DTYPES)
def test_cross_entropy_prob(backend, dt, ydt):
    rng = np.random.default_rng(7)
    N, C = 23, 257
    x = _logits(rng, (N, C), dt)
    y = rng.dirichlet(np.ones(C), N).astype(dt if ydt == "same" else np.float32)
    w = (rng.random(C) + 0.5).astype(np.float32)
    for opts in ({}, {"label_smoothing": 0.1, "softcap": 5.0, "lse_square_scale": 1e-3}):
        loss, grad = xent.cross_entropy(x, y, w, return_grad=True, **opts)
        tl, tg = _truth_ce(x, y, w, **opts)
        _assert_rounded(np.asarray(loss), tl, dt, f"loss {opts}")
        _assert_rounded(grad, tg, dt, f"grad {opts}")


@pytest.mark.parametrize("dt", DTYPES)
def test_kdim_layouts(backend, dt):
    """(N, C, d1, d2) logits: cross-entropy (index and probability targets, weights, ignore,
    smoothing) and softmax / log_softmax along axis 1."""
    rng = np.random.default_rng(11)
    N, C, d1, d2 = 3, 67, 5, 7
    x = _logits(rng, (N, C, d1, d2), dt)
    t = rng.integers(0, C, (N, d1, d2))
    t[0, 0, :3] = -100
    w = (rng.random(C) + 0.5).astype(np.float32)
    loss, grad = xent.cross_entropy(x, t, w, label_smoothing=0.1, return_grad=True)
    tl, tg = _truth_ce(x, t, w, label_smoothing=0.1)
    _assert_rounded(np.asarray(loss), tl, dt, "index loss")
    _assert_rounded(grad, tg, dt, "index grad")
    y = rng.dirichlet(np.ones(C), (N, d1, d2)).transpose(0, 3, 1, 2).astype(dt)
    loss, grad = xent.cross_entropy(x, y, reduction="sum", return_grad=True)
    tl, tg = _truth_ce(x, y, reduction="sum")
    _assert_rounded(np.asarray(loss), tl, dt, "prob loss")
    _assert_rounded(grad, tg, dt, "prob grad")
    _assert_rounded(xent.softmax(x, axis=1), torch.softmax(_t64(x), 1).numpy(), dt, "softmax")
    _assert_rounded(xent.log_softmax(x, axis=1), torch.log_softmax(_t64(x), 1).numpy(), dt,
                    "log_softmax")


# ---------------------------------------------------------------------------------------------
# softmax, log_softmax, BCE with logits, NLL
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_softmax_log_softmax(backend, dt):
    rng = np.random.default_rng(13)
    x = _logits(rng, (19, 3000), dt, scale=6.0)
    x[0] += 100  # large logits: the max is subtracted first
    _assert_rounded(xent.softmax(x), torch.softmax(_t64(x), -1).numpy(), dt, "softmax")
    _assert_rounded(xent.log_softmax(x), torch.log_softmax(_t64(x), -1).numpy(), dt,
                    "log_softmax")
    _assert_rounded(xent.softmax(x, axis=0), torch.softmax(_t64(x), 0).numpy(), dt, "axis 0")
    assert xent.softmax(x.astype(np.float32), dtype=dt).dtype == dt


@pytest.mark.parametrize("dt", DTYPES)
def test_bce_with_logits(backend, dt):
    rng = np.random.default_rng(17)
    x = _logits(rng, (41, 53), dt)
    y = (rng.random((41, 53)) > 0.5).astype(dt)
    w = (rng.random(53) + 0.5).astype(np.float32)
    pw = (rng.random(53) * 3).astype(np.float32)
    for kw in ({}, {"weight": w, "pos_weight": pw, "reduction": "none"}):
        loss, grad = xent.binary_cross_entropy_with_logits(x, y, return_grad=True, **kw)
        xt = _t64(x).requires_grad_()
        tl = F.binary_cross_entropy_with_logits(
            xt, _t64(y), None if "weight" not in kw else _t64(w), reduction=kw.get(
                "reduction", "mean"), pos_weight=None if "pos_weight" not in kw else _t64(pw))
        tl.backward(torch.ones_like(tl))
        _assert_rounded(np.asarray(loss), tl.detach().numpy(), dt, f"loss {list(kw)}")
        _assert_rounded(grad, xt.grad.numpy(), dt, f"grad {list(kw)}")


@pytest.mark.parametrize("dt", DTYPES)
def test_nll_and_the_rest(dt):
    """NLL gathers in float32; sigmoid, log_sigmoid and logsumexp compute in float32."""
    rng = np.random.default_rng(19)
    x = _logits(rng, (9, 12), dt)
    t = rng.integers(0, 12, 9)
    loss, grad = xent.nll_loss(x, t, return_grad=True)
    xt = _t64(x).requires_grad_()
    tl = F.nll_loss(xt, torch.tensor(t))
    tl.backward()
    _assert_rounded(np.asarray(loss), tl.detach().numpy(), dt, "nll loss")
    _assert_rounded(grad, xt.grad.numpy(), dt, "nll grad")
    _assert_rounded(xent.sigmoid(x), torch.sigmoid(_t64(x)).numpy(), dt, "sigmoid")
    _assert_rounded(xent.log_sigmoid(x), F.logsigmoid(_t64(x)).numpy(), dt, "log_sigmoid")
    _assert_rounded(xent.logsumexp(x), torch.logsumexp(_t64(x), -1).numpy(), dt, "logsumexp")


# ---------------------------------------------------------------------------------------------
# Non-finite values and overflow
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_nonfinite_rows(backend, dt):
    """A row with NaN or +inf, or all -inf, gives NaN loss, gradient and softmax (as PyTorch);
    -inf entries beside a finite max have probability 0; the other rows are unaffected."""
    rng = np.random.default_rng(23)
    x = _logits(rng, (6, 40), dt)
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    x[3, :] = -np.inf
    x[4, :20] = -np.inf
    t = np.array([0, 1, 2, 3, 30, 5])
    loss, grad = xent.cross_entropy(x, t, reduction="none", return_grad=True)
    tl, tg = _truth_ce(x, t, reduction="none")
    _assert_rounded(loss, tl, dt, "loss")
    _assert_rounded(grad, tg, dt, "grad")
    assert np.isnan(grad[1:4].astype(np.float32)).all() and (grad[4, :20] == 0).all()
    _assert_rounded(xent.softmax(x), torch.softmax(_t64(x), -1).numpy(), dt, "softmax")
    _assert_rounded(xent.log_softmax(x), torch.log_softmax(_t64(x), -1).numpy(), dt,
                    "log_softmax")


def test_float16_overflow_to_inf(backend):
    """A float32 result beyond float16's range rounds to -inf, as IEEE rounding gives."""
    x = np.array([[-60000.0, 60000.0, 0.0]], np.float16)
    out = xent.log_softmax(x)
    assert out.dtype == np.float16
    assert out[0, 0] == -np.inf and out[0, 1] == 0 and out[0, 2] == -60000


# ---------------------------------------------------------------------------------------------
# At least as close to float64 as PyTorch at the same dtype
# ---------------------------------------------------------------------------------------------
TORCH_CASES = [((64, 1000), {}), ((32, 8192), {}), ((64, 500), {"label_smoothing": 0.1}),
               ((64, 500), {"weight": True}), ((64, 500), {"ignore": True})]


@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
@pytest.mark.parametrize("dt", DTYPES)
def test_as_accurate_as_torch(backend, dt, case):
    shape, opts = TORCH_CASES[case]
    rng = np.random.default_rng(100 + case)
    x = _logits(rng, shape, dt, scale=4.0)
    t = rng.integers(0, shape[1], shape[0])
    if opts.get("ignore"):
        t[::3] = -100
    w = (rng.random(shape[1]) + 0.5).astype(dt) if opts.get("weight") else None
    ls = opts.get("label_smoothing", 0.0)
    tl, tg = _truth_ce(x, t, w, label_smoothing=ls)
    xt = torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPE[dt]).requires_grad_()
    wt = None if w is None else torch.from_numpy(w.astype(np.float32)).to(TORCH_DTYPE[dt])
    lt = F.cross_entropy(xt, torch.tensor(t), wt, label_smoothing=ls)
    lt.backward()
    torch_loss_err = abs(lt.item() - float(tl)) / abs(float(tl))
    torch_grad_err = np.abs(xt.grad.double().numpy() - tg).max()
    loss, grad = xent.cross_entropy(x, t, w, label_smoothing=ls, return_grad=True)
    loss_err = abs(float(loss) - float(tl)) / abs(float(tl))
    grad_err = np.abs(grad.astype(np.float64) - tg).max()
    assert loss_err <= torch_loss_err, (loss_err, torch_loss_err)
    assert grad_err <= torch_grad_err, (grad_err, torch_grad_err)


# ---------------------------------------------------------------------------------------------
# The kernel path: conversions, zero-copy, torch views
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_conversions_match_ml_dtypes_and_numpy():
    """_half's 16 -> 32 conversion on every bit pattern, and 32 -> 16 (round to nearest even)
    on random float32 bits, ties, the overflow threshold and the specials, against ml_dtypes'
    and NumPy's casts."""
    pytest.importorskip("numba")
    from xent._kernels import _half, _rows

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    rng = np.random.default_rng(29)
    raw = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 1 << 16, 4096, dtype=np.uint32) << 16) | 0x8000  # exact halves
    ties16 = (rng.integers(0, 1 << 19, 4096, dtype=np.uint32) << 13) | 0x1000
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.99,
                        65520.0, 3.3895314e38, 3.4e38, np.finfo(np.float32).max, 1e-8,
                        -6e-8, 1e-40], np.float32)
    f32 = np.concatenate([raw.view(np.float32), ties.view(np.float32), ties16.view(np.float32),
                          special])
    for dt, kind in ((BF16, _half.BF16), (F16, _half.F16)):
        up = np.empty(every.size, np.float32)
        _half.to_f32(every, kind, up)
        ref = every.view(dt).astype(np.float32)
        np.testing.assert_array_equal(up, ref)
        down = np.empty(f32.size, np.uint16)
        _half.from_f32(f32, kind, down)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = f32.astype(dt)
        got = down.view(dt).astype(np.float32)
        nan = np.isnan(f32)
        assert np.isnan(got[nan]).all()
        np.testing.assert_array_equal(got[~nan], ref.astype(np.float32)[~nan])
        # The row kernels' element access (_half.load / put on tag views), through their copy
        # loop: the same conversions.
        up2 = np.empty(every.size, np.float32)
        _rows._copy(_half.tagged(every.view(dt)), up2)
        np.testing.assert_array_equal(up2, up)
        down2 = np.empty(f32.size, dt)
        _rows._copy(f32, _half.tagged(down2))
        np.testing.assert_array_equal(down2.view(np.uint16), down)


@pytest.mark.slow
@pytest.mark.parametrize("dt", DTYPES)
def test_kernel_path_makes_no_float32_copy(dt):
    """Cross-entropy with its gradient, and softmax, on (1024, 4096) 16-bit logits allocate
    their 16-bit output and nothing the size of a float32 copy of the input."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(31)
    N, C = 1024, 4096
    x = _logits(rng, (N, C), dt)
    t = rng.integers(0, C, N)
    copy32 = N * C * 4
    with xent.use_backend("numba"):
        xent.cross_entropy(x, t, return_grad=True)  # compile / load outside the measurement
        xent.softmax(x)
        xent.empty_cache()
        for fn in (lambda: xent.cross_entropy(x, t, return_grad=True)[1],
                   lambda: xent.cross_entropy(x, t, label_smoothing=0.1, return_grad=True,
                                              softcap=20.0)[1],
                   lambda: xent.softmax(x), lambda: xent.log_softmax(x)):
            tracemalloc.start()
            out = fn()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert out.dtype == dt
            del out
            assert peak < 0.6 * copy32, f"peak {peak} bytes, a float32 copy is {copy32}"


@pytest.mark.parametrize("dt", DTYPES)
def test_torch_int16_view_in_place(backend, dt):
    """The view xent.torch hands over (``tensor.view(torch.int16).numpy().view(dtype)``) goes
    through the core as it is: ``backend_rows`` writes the 16-bit gradient into the tensor's
    own storage, in place, and the result matches the same call on an ml_dtypes array."""
    rng = np.random.default_rng(37)
    N, C = 24, 333
    x = _logits(rng, (N, C), dt)
    t = rng.integers(0, C, N)
    tensor = torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPE[dt])
    view = tensor.view(torch.int16).numpy().view(dt)
    assert view.dtype == dt and np.shares_memory(view, tensor.numpy() if dt == F16 else view)
    problem = _problem.cross_entropy_problem(view.shape, view.dtype, t, reduction="sum")
    ce, lse = _cross_entropy.backend_rows(problem, view, problem.target,
                                          np.ones(N, np.float32), None, view)
    assert ce.dtype == np.float32
    tl, tg = _truth_ce(x, t, reduction="none")
    _assert_rounded(ce.astype(dt), tl, dt, "rows' loss")
    got = tensor.view(torch.int16).numpy().view(dt)  # the tensor itself holds the gradient
    _assert_rounded(got, tg, dt, "in-place grad")
