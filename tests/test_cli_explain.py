"""`xent explain` run as a user runs it: its printed numbers against the tutorials' (000_*.txt,
001_*.txt) and against PyTorch float64 autograd, the overflow demonstration, the options, and
every bad input as one line with exit status 2.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xent.cli import main


def explain(capsys, *argv: str) -> str:
    rc = main(["explain", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    return out


def parse(text: str) -> np.ndarray:
    """``[a b c]`` or ``a`` as printed, to float64."""
    text = text.strip()
    if text.startswith("["):
        return np.array([float(v) for v in text.strip("[]").split()])
    return np.array(float(text))


def value(out: str, prefix: str, occurrence: int = 0) -> np.ndarray:
    """The value after the last ' = ' on the ``occurrence``-th line starting with ``prefix``."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) > occurrence, f"no line {prefix!r} in\n{out}"
    text = lines[occurrence].rsplit(" = ", 1)[1]
    return parse(re.sub(r"\s+\(the same\)$|\s+<- .*$", "", text))


def arrow(out: str, prefix: str, occurrence: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The values before and after '->' on a 'loss  plain A  ->  ... = B' line."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(prefix)]
    before, after = lines[occurrence].split("->")
    return parse(before.split("plain")[-1]), parse(after.rsplit(" = ", 1)[-1])


def line_after(out: str, prefix: str) -> str:
    """The stripped line after the first line starting with ``prefix``."""
    lines = [ln.strip() for ln in out.splitlines()]
    i = next(i for i, ln in enumerate(lines) if ln.startswith(prefix))
    return lines[i + 1]


def grad_after(out: str, occurrence: int = 0) -> np.ndarray:
    """The vector on the '->    [...]' line that follows a 'grad  plain' line."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("->")]
    return parse(lines[occurrence][2:])


def torch_ce(z, t, **kw):
    x = torch.tensor(np.asarray(z, dtype=np.float64)[None], requires_grad=True)
    loss = F.cross_entropy(x, torch.tensor([t]), **kw)
    loss.backward()
    return loss.item(), x.grad[0].numpy()


def torch_bce(z, y, **kw):
    x = torch.tensor(np.asarray(z, dtype=np.float64), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, torch.tensor(np.asarray(y, np.float64)), **kw)
    loss.backward()
    return loss.item(), x.grad.numpy()


# ---------------------------------------------------------------------------------------------
# Multi-class: the tutorials' [2.0, 1.0, 0.1], target 0


def test_tutorial_softmax_example(capsys):
    out = explain(capsys, "2.0", "1.0", "0.1", "--target", "0")
    # The tutorials print softmax [0.65900114 0.24243297 0.09856589] (NumPy) / [0.6590 0.2424
    # 0.0986] (torch) and CrossEntropyLoss 0.4170299470424652 (001_*.txt).
    p = value(out, "p = e^(z-m) / sum")
    np.testing.assert_allclose(p, [0.65900114, 0.24243297, 0.09856589], atol=1e-6)
    assert np.array2string(p, precision=4, floatmode="fixed") == "[0.6590 0.2424 0.0986]"
    assert round(float(value(out, "loss  L =")), 4) == 0.4170
    np.testing.assert_allclose(value(out, "loss  L ="), 0.4170299470424652, atol=1e-6)
    # Each step, against float64 math done here.
    z = np.array([2.0, 1.0, 0.1])
    assert float(value(out, "m = max(z)")) == 2.0
    np.testing.assert_allclose(value(out, "z - m"), z - 2.0, atol=1e-6)
    np.testing.assert_allclose(value(out, "e^(z-m) ="), np.exp(z - 2.0), atol=1e-6)
    np.testing.assert_allclose(value(out, "sum ="), np.exp(z - 2.0).sum(), atol=1e-6)
    lse = float(torch.logsumexp(torch.tensor(z), 0))
    np.testing.assert_allclose(value(out, "lse = m + log(sum)"), lse, atol=1e-6)
    assert "L = lse - z[t] = 2.417030 - 2.000000" in out
    loss, grad = torch_ce(z, 0)
    np.testing.assert_allclose(value(out, "grad  ="), grad, atol=1e-6)
    np.testing.assert_allclose(grad, p - [1, 0, 0], atol=1e-6)  # softmax - one-hot
    # The naive formulas beside: the same values here, and the raw exponentials.
    np.testing.assert_allclose(value(out, "naive: np.exp(z) ="), np.exp(z), atol=1e-6)
    assert "naive: np.exp(z) / np.sum(np.exp(z)) = [0.659001 0.242433 0.098566]  (the same)" in out
    assert "naive: -np.sum(y * np.log(p)), y = one-hot [1 0 0]: 0.417030  (the same)" in out
    assert "Why the naive formula fails" not in out  # nothing fails on these numbers


@pytest.mark.parametrize("z, t", [([0.5, 2.0, 0.3], 0), ([0.1, 0.2, 3.9, -4.0], 2),
                                  ([-3.0, -3.0], 1), ([1e-3, -2.5e2, 7.0, 0.0, 1.0], 4)])
def test_softmax_steps_match_pytorch(capsys, z, t):
    out = explain(capsys, *map(str, z), "--target", str(t))
    loss, grad = torch_ce(z, t)
    np.testing.assert_allclose(value(out, "loss  L ="), loss, atol=1e-6)
    np.testing.assert_allclose(value(out, "grad  ="), grad, atol=1e-6)
    np.testing.assert_allclose(value(out, "p = e^(z-m)"),
                               torch.softmax(torch.tensor(z, dtype=torch.float64), 0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Large logits: the naive formula overflows


def test_overflow_demonstration(capsys):
    out = explain(capsys, "1000", "1", "--target", "0")
    # np.exp(1000) = inf, inf / inf = nan: the tutorials' formula gives [nan, 0] (README of
    # the seeds); the shifted exponentials are e^0 = 1 and e^-999 = 0.
    assert "naive: np.exp(z) = [inf 2.718282]" in out
    assert "np.sum(np.exp(z)) = inf" in out
    assert "naive: np.exp(z) / np.sum(np.exp(z)) = [nan 0]  <- NOT FINITE" in out
    assert "inf / inf = nan" in out
    np.testing.assert_array_equal(value(out, "z - m"), [0.0, -999.0])
    np.testing.assert_array_equal(value(out, "e^(z-m) ="), [1.0, 0.0])
    np.testing.assert_array_equal(value(out, "p = e^(z-m)"), [1.0, 0.0])
    np.testing.assert_array_equal(value(out, "lse = m + log(sum)"), 1000.0)
    assert "naive: np.log(np.sum(np.exp(z))) = inf  <- NOT FINITE" in out
    assert "Why the naive formula fails here" in out
    assert "the largest is e^0 = 1" in out
    assert float(value(out, "loss  L =")) == 0.0


def test_overflow_wrong_class(capsys):
    out = explain(capsys, "1000", "1", "--target", "1")
    loss, grad = torch_ce([1000.0, 1.0], 1)
    assert loss == 999.0
    np.testing.assert_allclose(value(out, "loss  L ="), loss)
    np.testing.assert_allclose(value(out, "grad  ="), grad, atol=1e-6)
    assert "-log 0 = inf" in out  # the naive loss from xent's own p: log of a rounded 0


def test_exponent_spelling_negative_logit(capsys):
    # argparse alone takes "-1e3" for an option; explain reads it as a logit.
    out = explain(capsys, "-1e3", "2", "--target", "1")
    np.testing.assert_array_equal(value(out, "z - m"), [-1002.0, 0.0])
    assert "np.exp(-1000.000000) underflows to 0" in out


# ---------------------------------------------------------------------------------------------
# Binary


def test_tutorial_bce_example(capsys):
    out = explain(capsys, "--binary", "2.0", "-1.0", "0.5", "--target", "1", "0", "1")
    # Tutorial 000, example 1: sigmoid [0.8808, 0.2689, 0.6225], BCELoss 0.3047555685043335.
    p = value(out, "p = xent.sigmoid(z)")
    np.testing.assert_allclose(p, [0.8808, 0.2689, 0.6225], atol=5e-5)
    assert round(float(value(out, "loss  L =")), 4) == 0.3048
    np.testing.assert_allclose(value(out, "loss  L ="), 0.3047555685043335, atol=1e-6)
    np.testing.assert_allclose(value(out, "xent.binary_cross_entropy(p, y) ="),
                               0.3047555685043335, atol=1e-6)
    z, y = [2.0, -1.0, 0.5], [1.0, 0.0, 1.0]
    # sigma (1 - sigma), the tutorials' derivative, against autograd of torch.sigmoid.
    x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    torch.sigmoid(x).sum().backward()
    np.testing.assert_allclose(value(out, "sigma (1 - sigma) ="), x.grad.numpy(), atol=1e-6)
    # Both gradients (chain rule through p, and sigma - y) against PyTorch.
    loss, grad = torch_bce(z, y)
    np.testing.assert_allclose(value(out, "grad  ="), grad, atol=1e-6)
    np.testing.assert_allclose(value(out, "= xent.sigmoid_backward(dL/dp, p)"), grad, atol=1e-6)
    np.testing.assert_allclose(grad, (p - y) / 3, atol=1e-6)
    xp = torch.tensor(np.asarray(p), requires_grad=True)
    F.binary_cross_entropy(xp, torch.tensor(y, dtype=torch.float64)).backward()
    np.testing.assert_allclose(value(out, "= xent.binary_cross_entropy(p, y, return_grad"),
                               xp.grad.numpy(), rtol=1e-5)


def test_binary_saturated_logit(capsys):
    out = explain(capsys, "--binary", "40", "-40", "--target", "0", "1")
    # 1 / (1 + exp(-40)) rounds to 1 in float64, log(1 - 1) = -inf: the naive loss is inf.
    assert "<- NOT FINITE" in out
    loss, grad = torch_bce([40.0, -40.0], [0.0, 1.0])
    assert loss == 40.0
    np.testing.assert_allclose(value(out, "loss  L ="), loss)
    np.testing.assert_allclose(value(out, "grad  ="), grad, atol=1e-12)
    assert "Use BCE with logits" in out  # the chain-rule gradient through p loses it


# ---------------------------------------------------------------------------------------------
# Options, against PyTorch's F.cross_entropy / F.binary_cross_entropy_with_logits


@pytest.mark.parametrize("eps", [0.1, 0.35, 1.0])
def test_label_smoothing_matches_pytorch(capsys, eps):
    z, t = [2.0, 1.0, 0.1], 0
    out = explain(capsys, *map(str, z), "--target", str(t), "--label-smoothing", str(eps))
    plain, smoothed = arrow(out, "loss  plain")
    loss0, grad0 = torch_ce(z, t)
    loss1, grad1 = torch_ce(z, t, label_smoothing=eps)
    np.testing.assert_allclose(plain, loss0, atol=1e-6)
    np.testing.assert_allclose(smoothed, loss1, atol=1e-6)
    np.testing.assert_allclose(grad_after(out), grad1, atol=1e-6)
    # The printed formulas of the change hold.
    np.testing.assert_allclose(value(out, "change = eps (z[t] - mean(z))"), loss1 - loss0,
                               atol=2e-6)
    np.testing.assert_allclose(value(out, "change = eps (one-hot - 1/C)"), grad1 - grad0,
                               atol=2e-6)


@pytest.mark.parametrize("t", [0, 2])
def test_weight_matches_pytorch(capsys, t):
    z, w = [2.0, 1.0, 0.1], [1.0, 2.0, 3.5]
    out = explain(capsys, *map(str, z), "--target", str(t), "--weight", *map(str, w))
    wt = torch.tensor(w, dtype=torch.float64)
    loss_sum, grad_sum = torch_ce(z, t, weight=wt, reduction="sum")
    loss_mean, grad_mean = torch_ce(z, t, weight=wt)
    _, after = arrow(out, "loss  plain")
    np.testing.assert_allclose(after, loss_sum, atol=1e-6)
    np.testing.assert_allclose(grad_after(out), grad_sum, atol=1e-6)
    np.testing.assert_allclose(value(out, "loss  xent.cross_entropy(z, t, weight=w)"),
                               loss_mean, atol=1e-6)
    mean_grad_line = line_after(out, "loss  xent.cross_entropy(z, t, weight=w)")
    np.testing.assert_allclose(parse(mean_grad_line.removeprefix("grad")), grad_mean, atol=1e-6)


def test_both_options_match_pytorch(capsys):
    z, t, w, eps = [0.5, 2.0, 0.3, -1.0], 1, [0.5, 2.0, 1.0, 4.0], 0.2
    out = explain(capsys, *map(str, z), "--target", str(t), "--weight", *map(str, w),
                  "--label-smoothing", str(eps))
    loss, grad = torch_ce(z, t, weight=torch.tensor(w, dtype=torch.float64),
                          label_smoothing=eps)
    section = out.split("9. Both options")[1].splitlines()
    np.testing.assert_allclose(parse(section[1].split("->")[1]), loss, atol=1e-6)
    np.testing.assert_allclose(parse(section[2].split("->")[1]), grad, atol=1e-6)


def test_binary_options_match_pytorch(capsys):
    z, y, w, eps = [2.0, -1.0, 0.5], [1.0, 0.0, 1.0], [1.0, 3.0, 0.5], 0.1
    out = explain(capsys, "--binary", *map(str, z), "--target", "1", "0", "1",
                  "--label-smoothing", str(eps), "--weight", *map(str, w))
    q = (1 - eps) * np.array(y) + eps / 2  # smoothed binary labels
    loss0, grad0 = torch_bce(z, y)
    loss_s, grad_s = torch_bce(z, q)
    loss_w, grad_w = torch_bce(z, y, weight=torch.tensor(w, dtype=torch.float64))
    _, after_s = arrow(out, "loss  plain", 0)
    _, after_w = arrow(out, "loss  plain", 1)
    np.testing.assert_allclose(after_s, loss_s, atol=1e-6)
    np.testing.assert_allclose(after_w, loss_w, atol=1e-6)
    np.testing.assert_allclose(grad_after(out, 0), grad_s, atol=1e-6)
    np.testing.assert_allclose(grad_after(out, 1), grad_w, atol=1e-6)
    loss_change = line_after(out, "change = mean(eps (y - 1/2) z)")  # "= value"
    np.testing.assert_allclose(parse(loss_change.removeprefix("=")), loss_s - loss0, atol=2e-6)
    np.testing.assert_allclose(value(out, "change = eps (y - 1/2) / N"), grad_s - grad0,
                               atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2


@pytest.mark.parametrize("argv, message", [
    (["2", "abc", "--target", "0"], "logit 2: expected a number, found 'abc'"),
    (["2", "nan", "--target", "0"], "logit 2 is nan"),
    (["inf", "1", "--target", "0"], "logit 1 is inf"),
    (["2", "-inf", "--target", "0"], "logit 2 is -inf"),
    (["1e999", "1", "--target", "0"], "logit 1 is inf ('1e999')"),
    (["2", "1", "--target", "2"], "--target 2 is out of range for 2 logits"),
    (["2", "1", "--target", "-1"], "--target -1 is out of range"),
    (["2", "1", "--target", "x"], "expected a class index"),
    (["2", "1", "--target", "0", "1"], "2 values; expected one class index"),
    (["2", "1"], "missing --target"),
    (["2", "--target", "0"], "1 logit; expected at least 2"),
    (["2", "1", "--target", "0", "--weight", "1"], "--weight: 1 value; expected 2, one per class"),
    (["2", "1", "--target", "0", "--weight", "1", "nan"], "--weight value 2 is nan"),
    (["2", "1", "--target", "0", "--weight", "1", "-2"], "--weight value 2 is -2.000000"),
    (["2", "1", "--target", "0", "--label-smoothing", "1.5"], "expected a number from 0 to 1"),
    (["2", "1", "--target", "0", "--label-smoothing", "nan"], "expected a number from 0 to 1"),
    (["--binary", "2", "1", "--target", "1", "2"], "--target label 2: expected 0 or 1, found "
     "'2'"),
    (["--binary", "2", "1", "--target", "0.5", "1"], "expected 0 or 1, found '0.5'"),
    (["--binary", "2", "1", "--target", "1"], "--target: 1 label for 2 logits"),
    (["--binary", "2", "1", "0", "--target", "1", "0", "1", "--weight", "1", "2"],
     "--weight: 2 values; expected 3, one per logit"),
    ([str(i) for i in range(21)] + ["--target", "0"], "21 logits"),
    (["--target", "0"], "the following arguments are required: Z"),
])
def test_bad_numbers_are_one_line(capsys, argv, message):
    assert main(["explain", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("xent: error: ") and err.count("\n") == 1, err
    assert message in err, err


# ---------------------------------------------------------------------------------------------
# The installed command


def test_subprocess_no_warnings():
    """`python -m xent explain` as a user runs it; a numpy warning would be an error here."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "xent", "explain", "1000", "1",
                           "--target", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "[nan 0]  <- NOT FINITE" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "xent", "explain", "2", "nope", "--target", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr == "xent: error: logit 2: expected a number, found 'nope'\n"


def test_logits_after_target_are_logits(capsys):
    """`--target 0 2.0 1.0 0.1` (issue 20): argparse gives every number to --target; they are
    taken back as the logits, the first being the class (with --binary, half are labels)."""
    assert explain(capsys, "--target", "0", "2.0", "1.0", "0.1") == explain(
        capsys, "2.0", "1.0", "0.1", "--target", "0")
    assert explain(capsys, "--binary", "--target", "1", "0", "2.0", "-1.0") == explain(
        capsys, "--binary", "2.0", "-1.0", "--target", "1", "0")
    assert main(["explain", "--binary", "--target", "1", "0", "2.0"]) == 2
    assert "one label per logit" in capsys.readouterr().err
    assert main(["explain", "--target", "0"]) == 2
    assert "required: Z" in capsys.readouterr().err


# --- --focal GAMMA (issue 19, item 7): the focal factor beside cross-entropy -----------------

def _focal_rows(out: str) -> dict[str, np.ndarray]:
    """The focal table: example name -> (p_t, CE, focal, focal/CE, grad CE, grad focal,
    grad ratio) as printed."""
    lines = out.split("Focal loss (Lin et al. 2017)")[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["example", "p_t"]) + 2
    rows = {}
    for ln in lines[start:]:
        if not ln.strip():
            break
        name, *nums = ln.strip().rsplit(None, 7)
        rows[name] = np.array([float(v) for v in nums])
    return rows


def _torch_focal(z: torch.Tensor, t: int, gamma: float):
    """Cross-entropy and focal loss of one row, and d/dz[t] of each, by torch float64
    autograd on the definition -(1 - p_t)^gamma log p_t."""
    out = []
    for g in (0.0, gamma):
        x = z.clone().requires_grad_(True)
        logp = F.log_softmax(x, 0)[t]
        loss = -((1 - logp.exp()) ** g) * logp
        loss.backward()
        out += [loss.item(), x.grad[t].item()]
    return out


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
def test_focal_table_matches_pytorch(capsys, gamma):
    z = [2.0, 1.0, 0.1]
    out = explain(capsys, *map(str, z), "--target", "0", "--focal", str(gamma))
    rows = _focal_rows(out)
    assert len(rows) == 5 and list(rows)[0] == "your logits"
    for name, r in rows.items():
        zz = torch.tensor(z, dtype=torch.float64)
        if name != "your logits":  # z[t]=VALUE: the target's logit moved
            zz[0] = float(name.split("=")[1])
        p_t = torch.softmax(zz, 0)[0].item()
        ce, g_ce, fl, g_fl = _torch_focal(zz, 0, gamma)
        # (printed to 4 significant digits)
        np.testing.assert_allclose(r, [p_t, ce, fl, fl / ce, g_ce, g_fl, g_fl / g_ce],
                                   rtol=6e-4, atol=0, err_msg=name)
        # hand math: the loss ratio is (1 - p_t)^gamma, the gradient ratio the printed factor
        np.testing.assert_allclose(r[3], (1 - p_t) ** gamma, rtol=6e-4)
        factor = (1 - p_t) ** gamma - gamma * p_t * (1 - p_t) ** (gamma - 1) * np.log(p_t)
        np.testing.assert_allclose(r[6], factor, rtol=6e-4)
    # the extra examples sit at the p_t they name
    np.testing.assert_allclose([r[0] for r in list(rows.values())[1:]], [0.1, 0.5, 0.9, 0.99],
                               rtol=1e-12)
    if gamma == 0:  # gamma 0 is cross-entropy itself
        for r in rows.values():
            assert r[2] == r[1] and r[3] == 1 and r[6] == 1


def test_focal_binary_table_matches_torchvision_formula(capsys):
    """--binary: one example per logit; torchvision's sigmoid_focal_loss with alpha < 0 in
    torch float64 (BCE-with-logits times (1 - p_t)^gamma), and its autograd gradient."""
    z, y = [3.0, -1.0, 0.2, -2.5], [1, 1, 0, 1]
    out = explain(capsys, "--binary", *map(str, z), "--target", *map(str, y), "--focal", "2")
    rows = list(_focal_rows(out).values())
    assert len(rows) == 4
    for r, zi, yi in zip(rows, z, y, strict=True):
        vals = []
        for g in (0.0, 2.0):
            x = torch.tensor(zi, dtype=torch.float64, requires_grad=True)
            t = torch.tensor(float(yi), dtype=torch.float64)
            p = torch.sigmoid(x)
            ce = F.binary_cross_entropy_with_logits(x, t)
            p_t = p * t + (1 - p) * (1 - t)
            loss = ce * (1 - p_t) ** g
            loss.backward()
            vals += [loss.item(), x.grad.item()]
        ce, g_ce, fl, g_fl = vals
        p_t = 1 / (1 + np.exp(-zi)) if yi else 1 / (1 + np.exp(zi))
        np.testing.assert_allclose(r, [p_t, ce, fl, fl / ce, g_ce, g_fl, g_fl / g_ce],
                                   rtol=6e-4, atol=0)


def test_focal_negative_gamma_is_one_line(capsys):
    assert main(["explain", "1.0", "2.0", "--target", "0", "--focal", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--focal" in err and "expected a number >= 0" in err and "\n" == err[-1]
    assert err.count("\n") == 1
