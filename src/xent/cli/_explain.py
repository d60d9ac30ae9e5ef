"""`xent explain`: softmax cross-entropy (or sigmoid + binary cross-entropy) step by step.

For one row of logits and its target the command prints every intermediate number of the stable
computation, beside the tutorials' naive NumPy formula where the two differ:

* multi-class: the max shift, the exponentials and their sum, the softmax, the log-sum-exp, the
  loss ``lse - z[t]`` and the gradient ``softmax - one_hot``;
* ``--binary``: the sigmoid, the per-label loss, the mean, the sigmoid's derivative
  ``sigma (1 - sigma)``, the chain-rule gradient through the probabilities and the gradient of
  BCE with logits ``sigma - y``;
* ``--label-smoothing`` and ``--weight``: the value without and with the option, and the formula
  of the change.

The values (softmax, log-sum-exp, losses, gradients) come from xent's own functions; the
explanation only shows the arithmetic that leads to them. All numbers are float64, as in the
tutorials' NumPy code. Logits must be finite: the command refuses nan and inf with a message
saying what xent does with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import xent

from ._errors import CLIError
from ._examples import _naive_softmax

MAX_LOGITS = 20  # every number of every step is printed: more would not be readable
_LOG_MAX = math.log(np.finfo(np.float64).max)  # 709.78: np.exp overflows beyond it


# ---------------------------------------------------------------------------------------------
# Formatting


def num(v: Any) -> str:
    """One number as printed: 6 decimals, or 6 significant digits in e-notation when tiny/huge.

    >>> num(0.6590011388859679), num(-999.0), num(0.0), num(1e-300), num(float("inf"))
    ('0.659001', '-999.000000', '0', '1.000000e-300', 'inf')
    """
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    if 1e-4 <= abs(v) < 1e7:
        return f"{v:.6f}"
    return f"{v:.6e}"


def vec(a: Sequence[float] | np.ndarray) -> str:
    """A vector as ``[a b c]`` with `num` for every element.

    >>> vec([1.0, 0.5, -2.0])
    '[1.000000 0.500000 -2.000000]'
    """
    return "[" + " ".join(num(v) for v in np.asarray(a, dtype=np.float64).ravel()) + "]"


def labels(a: Sequence[float] | np.ndarray) -> str:
    """Labels or a one-hot vector as integers, ``[1 0 0]``."""
    return "[" + " ".join(str(int(v)) for v in np.asarray(a).ravel()) + "]"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the naive value equals xent's to float64 rounding (nan never equals)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all(np.isfinite(a)) and np.allclose(a, b, rtol=1e-12, atol=1e-300))


def _paren(v: float) -> str:
    """A number to subtract: in parentheses when negative."""
    return f"({num(v)})" if v < 0 else num(v)


def _naive_note(naive: np.ndarray, ours: np.ndarray) -> str:
    if _same(naive, ours):
        return "  (the same)"
    if not np.all(np.isfinite(naive)):
        return "  <- NOT FINITE"
    return "  <- differs"


# ---------------------------------------------------------------------------------------------
# Parsing and checking the numbers


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _numbers(values: Sequence[str], what: str) -> np.ndarray:
    """Parse ``values`` as finite float64 numbers; `CLIError` naming the bad one."""
    out = []
    for i, s in enumerate(values, 1):
        try:
            v = float(s)
        except ValueError:
            raise CLIError(f"{what} {i}: expected a number, found {s!r}") from None
        if math.isnan(v):
            raise CLIError(f"{what} {i} is nan ({s!r}); expected a finite number (a row holding "
                           "nan gives nan in every xent function, as in PyTorch: there is no "
                           "arithmetic to explain)")
        if math.isinf(v):
            raise CLIError(
                f"{what} {i} is {'-' if v < 0 else ''}inf ({s!r}); expected a finite number "
                "(xent.cross_entropy gives nan for a row holding +inf, as PyTorch does, and "
                "probability 0 for -inf; to see an overflow explained, try a large finite "
                "value such as 1000)")
        out.append(v)
    return np.array(out, dtype=np.float64)


def _logits(values: Sequence[str], binary: bool) -> np.ndarray:
    z = _numbers(values, "logit")
    if len(z) > MAX_LOGITS:
        raise CLIError(f"{len(z)} logits; xent explain prints every number of every step and "
                       f"takes at most {MAX_LOGITS}")
    if not binary and len(z) < 2:
        raise CLIError(f"{len(z)} logit; expected at least 2, one per class (for one "
                       "probability of a single label, use --binary)")
    return z


def _class_target(values: Sequence[str] | None, C: int) -> int:
    if not values:
        raise CLIError(f"missing --target; expected the index of the true class, 0 to {C - 1}")
    if len(values) != 1:
        raise CLIError(f"--target: {len(values)} values; expected one class index for one row "
                       "of logits (one label per logit is --binary)")
    s = values[0]
    try:
        t = int(s)
    except ValueError:
        raise CLIError(f"--target: expected a class index (an integer 0 to {C - 1}), found "
                       f"{s!r}") from None
    if not 0 <= t < C:
        raise CLIError(f"--target {t} is out of range for {C} logits (classes 0 to {C - 1})")
    return t


def _binary_labels(values: Sequence[str] | None, N: int) -> np.ndarray:
    if not values:
        raise CLIError(f"missing --target; expected {N} labels 0 or 1, one per logit")
    if len(values) != N:
        raise CLIError(f"--target: {_count(len(values), 'label')} for {N} logits; expected one "
                       "label (0 or 1) per logit")
    y = []
    for i, s in enumerate(values, 1):
        try:
            v = float(s)
        except ValueError:
            v = math.nan
        if v not in (0.0, 1.0):
            raise CLIError(f"--target label {i}: expected 0 or 1, found {s!r}")
        y.append(v)
    return np.array(y, dtype=np.float64)


def _weights(values: Sequence[str] | None, n: int, per: str) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) != n:
        raise CLIError(f"--weight: {_count(len(values), 'value')}; expected {n}, one per {per}")
    w = _numbers(values, "--weight value")
    if np.any(w < 0):
        i = int(np.argmax(w < 0)) + 1
        raise CLIError(f"--weight value {i} is {num(w[i - 1])}; expected a weight >= 0")
    return w


# ---------------------------------------------------------------------------------------------
# Multi-class: softmax cross-entropy of one row


def explain_softmax(z: np.ndarray, t: int, eps: float | None = None,
                    weight: np.ndarray | None = None) -> str:
    r"""The step-by-step text for softmax cross-entropy of logits ``z`` ``(C,)``, target ``t``.

    .. math:: L = \mathrm{lse}(z) - z_t,\quad \mathrm{lse}(z) = m + \log\sum_j e^{z_j - m},
              \quad \frac{\partial L}{\partial z} = \mathrm{softmax}(z) - \mathrm{onehot}(t)

    Args:
        z: finite float64 logits, shape ``(C,)``, ``C >= 2``.
        t: the true class, ``0 <= t < C``.
        eps: label smoothing in [0, 1], or None.
        weight: class weights ``(C,)``, or None.

    Returns:
        The explanation, lines joined by newlines. The loss and gradient it prints are
        ``xent.cross_entropy(z, t, return_grad=True)``'s.

    Example:
        >>> text = explain_softmax(np.array([2.0, 1.0, 0.1]), 0)
        >>> [ln.strip() for ln in text.splitlines() if ln.strip().startswith("loss  ")]
        ['loss  L = xent.cross_entropy(z, t) = 0.417030']
    """
    C = len(z)
    onehot = np.zeros(C)
    onehot[t] = 1.0
    m = float(np.max(z))
    shifted = z - m
    e = np.exp(shifted)  # every exponent <= 0: no overflow, and the largest term is exactly 1
    s = float(np.sum(e))
    p = xent.softmax(z)
    lse = float(xent.logsumexp(z))
    loss_arr, grad = xent.cross_entropy(z, t, return_grad=True)
    loss = float(loss_arr)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        # The tutorials' formulas, computed as they wrote them, to show where they fail.
        n_exp = np.exp(z)
        n_sum = float(np.sum(n_exp))
        n_p = _naive_softmax(z)  # np.exp(z) / np.sum(np.exp(z)), as `xent examples` shows it
        n_lse = float(np.log(np.sum(np.exp(z))))
        n_loss = float(-np.sum(onehot * np.log(n_p)))
        n_loss_ours_p = float(-np.sum(onehot * np.log(p)))

    L = ["Softmax cross-entropy of one row, step by step (float64; xent's values, the "
         "tutorials' formulas beside)",
         f"  logits z = {vec(z)}   target t = {t}   C = {C} classes",
         "",
         "1. The max shift",
         f"   m = max(z) = {num(m)}",
         f"   z - m = {vec(shifted)}",
         "   softmax(z) = softmax(z - m): e^(z-m) / sum e^(z-m) = e^-m e^z / (e^-m sum e^z). "
         "After the",
         "   shift every exponent is <= 0, so no e^x overflows, and the largest term is e^0 = 1, "
         "so the sum",
         "   is >= 1: never 0/0, never log 0.",
         "   naive (tutorials): no shift",
         "",
         "2. The exponentials and their sum",
         f"   e^(z-m) = {vec(e)}",
         f"   sum = {num(s)}",
         f"   naive: np.exp(z) = {vec(n_exp)}",
         f"          np.sum(np.exp(z)) = {num(n_sum)}",
         "",
         "3. The softmax probabilities",
         f"   p = e^(z-m) / sum = xent.softmax(z) = {vec(p)}",
         f"   naive: np.exp(z) / np.sum(np.exp(z)) = {vec(n_p)}{_naive_note(n_p, p)}",
         "",
         "4. The log-sum-exp",
         f"   lse = m + log(sum) = {num(m)} + log({num(s)}) = xent.logsumexp(z) = {num(lse)}",
         f"   naive: np.log(np.sum(np.exp(z))) = {num(n_lse)}"
         f"{_naive_note(np.array(n_lse), np.array(lse))}",
         "",
         "5. The loss: L = -log p[t] = lse - z[t]  (no log of a rounded probability)",
         f"   L = lse - z[t] = {num(lse)} - {_paren(z[t])}",
         f"   loss  L = xent.cross_entropy(z, t) = {num(loss)}",
         f"   naive: -np.sum(y * np.log(p)), y = one-hot {labels(onehot)}: {num(n_loss)}"
         f"{_naive_note(np.array(n_loss), np.array(loss))}",
         "",
         "6. The gradient: dL/dz = softmax(z) - one-hot(t)",
         f"   {vec(p)} - {labels(onehot)}",
         f"   grad  = xent.cross_entropy(z, t, return_grad=True)[1] = {vec(grad)}",
         "   naive (tutorials): none; PyTorch's autograd computes it from the graph"]
    if not _same(n_p, p) or not np.isfinite(n_loss) or not np.isfinite(n_loss_ours_p):
        L += ["", "Why the naive formula fails here"]
        big = z[z > _LOG_MAX]
        with np.errstate(over="ignore"):
            tiny = z[np.exp(z) == 0]
        if big.size:
            L.append(f"   np.exp({num(big[0])}) overflows: float64 holds at most "
                     f"1.797693e+308 = e^{_LOG_MAX:.2f},")
            L.append("   so it is inf, the sum is inf, and inf / inf = nan.")
        if tiny.size:
            L.append(f"   np.exp({num(tiny[0])}) underflows to 0.")
        if not np.isfinite(n_loss_ours_p):
            L.append(f"   Even from xent's p, -np.sum(y * np.log(p)) = {num(n_loss_ours_p)}: "
                     "a probability that rounds to 0")
            L.append("   has log 0 = -inf, and " + (
                "0 * -inf = nan (a class that is not the target)." if np.isnan(n_loss_ours_p)
                else "-log 0 = inf (the target's own probability)."))
        L.append(f"   With the shift the exponents are z - m = {vec(shifted)}: the largest is "
                 "e^0 = 1, so")
        L.append(f"   the sum is {num(s)} (>= 1), p is finite, and L = lse - z[t] = "
                 f"{num(loss)} needs no log of p.")
    if eps is not None:
        L += ["", *_softmax_smoothing(z, t, eps, loss, grad, onehot, lse)]
    if weight is not None:
        L += ["", *_softmax_weight(z, t, weight, loss, grad)]
    if eps is not None and weight is not None:
        both, g_both = xent.cross_entropy(z, t, weight=weight, label_smoothing=eps,
                                          return_grad=True)
        L += ["", f"9. Both options (weight and label smoothing {num(eps)}), reduction 'mean'",
              f"   loss  {num(loss)}  ->  {num(both)}",
              f"   grad  {vec(grad)}  ->  {vec(g_both)}"]
    return "\n".join(L)


def _softmax_smoothing(z: np.ndarray, t: int, eps: float, loss: float, grad: np.ndarray,
                       onehot: np.ndarray, lse: float) -> list[str]:
    C = len(z)
    q = (1 - eps) * onehot + eps / C
    s_loss, s_grad = xent.cross_entropy(z, t, label_smoothing=eps, return_grad=True)
    return [
        f"7. Label smoothing eps = {num(eps)}: the target becomes q = (1 - eps) one-hot + eps / C",
        f"   q = {vec(q)}",
        "   L_eps = (1 - eps)(lse - z[t]) + (eps / C) sum_c (lse - z_c) = -sum_c q_c log p_c",
        f"   loss  plain {num(loss)}  ->  xent.cross_entropy(z, t, label_smoothing={eps:g}) = "
        f"{num(s_loss)}",
        f"   change = eps (z[t] - mean(z)) = {num(eps)} * ({num(z[t])} - {num(np.mean(z))}) = "
        f"{num(eps * (z[t] - np.mean(z)))}",
        "   dL_eps/dz = softmax(z) - q",
        f"   grad  plain {vec(grad)}",
        f"         ->    {vec(s_grad)}",
        f"   change = eps (one-hot - 1/C) = {vec(eps * (onehot - 1 / C))}",
    ]


def _softmax_weight(z: np.ndarray, t: int, w: np.ndarray, loss: float,
                    grad: np.ndarray) -> list[str]:
    sum_loss, sum_grad = xent.cross_entropy(z, t, weight=w, reduction="sum", return_grad=True)
    mean_loss, mean_grad = xent.cross_entropy(z, t, weight=w, return_grad=True)
    wt = w[t]
    lines = [
        f"8. Class weights w = {vec(w)}: the row's loss is scaled by its class's weight "
        f"w[t] = {num(wt)}",
        "   reduction 'sum' (or 'none'): L_w = w[t] (lse - z[t]),  dL_w/dz = w[t] (softmax - "
        "one-hot)",
        f"   loss  plain {num(loss)}  ->  xent.cross_entropy(z, t, weight=w, reduction='sum') = "
        f"{num(sum_loss)}",
        f"   grad  plain {vec(grad)}",
        f"         ->    {vec(sum_grad)}",
        "   reduction 'mean' (the default) divides by the sum of w[t_n] over the batch: for one "
        "row that is",
        "   w[t] itself, so the weight cancels; it matters when rows of different classes are "
        "averaged",
        f"   loss  xent.cross_entropy(z, t, weight=w) = {num(mean_loss)}",
        f"   grad  {vec(mean_grad)}",
    ]
    if wt == 0:
        lines.append("   w[t] = 0: 'mean' divides 0 by 0, which is nan, as in PyTorch")
    return lines


# ---------------------------------------------------------------------------------------------
# Binary: sigmoid and binary cross-entropy, one label per logit


def explain_binary(z: np.ndarray, y: np.ndarray, eps: float | None = None,
                   weight: np.ndarray | None = None) -> str:
    r"""The step-by-step text for sigmoid + binary cross-entropy of logits ``z`` ``(N,)``.

    .. math:: L = \frac{1}{N}\sum_i \left[\max(z_i, 0) - z_i y_i + \log(1 + e^{-|z_i|})\right],
              \quad \frac{\partial L}{\partial z_i} = \frac{\sigma(z_i) - y_i}{N}

    Args:
        z: finite float64 logits ``(N,)``.
        y: labels 0 or 1 ``(N,)``.
        eps: label smoothing in [0, 1] (targets ``(1 - eps) y + eps / 2``), or None.
        weight: per-label weights ``(N,)``, or None.

    Returns:
        The explanation; its loss and gradient are
        ``xent.binary_cross_entropy_with_logits(z, y, return_grad=True)``'s.

    Example:
        >>> text = explain_binary(np.array([2.0, -1.0, 0.5]), np.array([1.0, 0.0, 1.0]))
        >>> [ln.strip() for ln in text.splitlines() if ln.strip().startswith("loss  ")]
        ['loss  L = xent.binary_cross_entropy_with_logits(z, y) = 0.304756']
    """
    N = len(z)
    p = xent.sigmoid(z)
    terms = xent.binary_cross_entropy_with_logits(z, y, reduction="none")
    loss_arr, grad = xent.binary_cross_entropy_with_logits(z, y, return_grad=True)
    loss = float(loss_arr)
    p_loss, dldp = xent.binary_cross_entropy(p, y, return_grad=True)
    dsig = xent.sigmoid_backward(np.ones(N), p)
    chain = xent.sigmoid_backward(dldp, p)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        n_p = 1 / (1 + np.exp(-z))  # the tutorials' sigmoid
        n_terms = -(y * np.log(n_p) + (1 - y) * np.log(1 - n_p))
        n_loss = float(np.mean(n_terms))
    L = [f"Sigmoid and binary cross-entropy, one label per logit, step by step (float64; N = {N})",
         f"  logits z = {vec(z)}   labels y = {labels(y)}",
         "",
         "1. The sigmoid: p = 1 / (1 + e^-z), computed as e^z / (1 + e^z) where z < 0, so e^x "
         "never",
         "   sees a positive argument and never overflows",
         f"   p = xent.sigmoid(z) = {vec(p)}",
         f"   naive (tutorials): 1 / (1 + np.exp(-z)) = {vec(n_p)}{_naive_note(n_p, p)}",
         "",
         "2. The loss of each label: -(y log p + (1 - y) log(1 - p))",
         "   from the logit: max(z, 0) - z y + log(1 + e^-|z|)  (no log of a rounded p)",
         f"   xent.binary_cross_entropy_with_logits(z, y, reduction='none') = {vec(terms)}",
         f"   naive: -(y * np.log(p) + (1 - y) * np.log(1 - p)) = {vec(n_terms)}"
         f"{_naive_note(n_terms, terms)}",
         "",
         "3. The loss: the mean over the N labels",
         f"   loss  L = xent.binary_cross_entropy_with_logits(z, y) = {num(loss)}",
         "   on the probabilities, as the tutorials' nn.BCELoss (log clamped at -100, as in "
         "PyTorch):",
         f"   xent.binary_cross_entropy(p, y) = {num(p_loss)}",
         f"   naive: np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))) = {num(n_loss)}"
         f"{_naive_note(np.array(n_loss), np.array(loss))}",
         "",
         "4. The sigmoid's derivative (the tutorials' formula): dp/dz = sigma(z) (1 - sigma(z))",
         f"   sigma (1 - sigma) = xent.sigmoid_backward(1, p) = {vec(dsig)}",
         "",
         "5. The gradient through the probabilities (chain rule, what nn.BCELoss after "
         "torch.sigmoid does)",
         "   dL/dp = (p - y) / (p (1 - p)) / N",
         f"         = xent.binary_cross_entropy(p, y, return_grad=True)[1] = {vec(dldp)}",
         "   dL/dz = dL/dp * sigma (1 - sigma)",
         f"         = xent.sigmoid_backward(dL/dp, p) = {vec(chain)}",
         "",
         "6. The gradient of BCE with logits: the sigma (1 - sigma) cancels against the "
         "p (1 - p) above",
         "   dL/dz = (sigma(z) - y) / N",
         f"   ({vec(p)} - {labels(y)}) / {N}",
         "   xent.binary_cross_entropy_with_logits(z, y, return_grad=True)[1]:",
         f"   grad  = {vec(grad)}"]
    bad_chain = not np.allclose(chain, grad, rtol=1e-6, atol=1e-12)
    if not _same(n_terms, terms) or bad_chain:
        L += ["", "Why the naive formula fails here"]
        for i in range(N):
            if not np.isclose(n_terms[i], terms[i], rtol=1e-9, atol=0):
                L.append(f"   label {i + 1}: z = {num(z[i])} gives p = {num(n_p[i])} in float64, "
                         f"so 1 - p = {num(1 - n_p[i])} and the naive loss is {num(n_terms[i])};")
                L.append(f"   from the logit it is {num(terms[i])}.")
        if bad_chain:
            L.append("   Through p, dL/dp = (p - y) / (p (1 - p)) needs p (1 - p), which is 0 "
                     "or tiny where |z| is large")
            L.append("   and is clamped at 1e-12 (as PyTorch does): the chain-rule gradient "
                     f"{vec(chain)}")
            L.append(f"   loses what sigma - y keeps: {vec(grad)}. Use BCE with logits.")
    if eps is not None:
        q = (1 - eps) * y + eps / 2
        s_loss, s_grad = xent.binary_cross_entropy_with_logits(z, q, return_grad=True)
        L += ["",
              f"7. Label smoothing eps = {num(eps)}: each label becomes q = (1 - eps) y + eps / 2",
              f"   q = {vec(q)}",
              f"   loss  plain {num(loss)}  ->  xent.binary_cross_entropy_with_logits(z, q) = "
              f"{num(s_loss)}",
              "   change = mean(eps (y - 1/2) z) (the loss is linear in the label: "
              "(1 - q) z + log(1 + e^-z))",
              f"          = {num(np.mean(eps * (y - 0.5) * z))}",
              "   dL/dz = (sigma(z) - q) / N",
              f"   grad  plain {vec(grad)}",
              f"         ->    {vec(s_grad)}",
              f"   change = eps (y - 1/2) / N = {vec(eps * (y - 0.5) / N)}"]
    if weight is not None:
        w_loss, w_grad = xent.binary_cross_entropy_with_logits(z, y, weight=weight,
                                                               return_grad=True)
        L += ["",
              f"8. Weights w = {vec(weight)}: each label's loss is multiplied by its weight",
              "   L_w = mean(w_i l_i)  (the mean still divides by N, not by sum(w), as in "
              "PyTorch)",
              f"   loss  plain {num(loss)}  ->  xent.binary_cross_entropy_with_logits(z, y, "
              f"weight=w) = {num(w_loss)}",
              "   dL_w/dz = w (sigma(z) - y) / N",
              f"   grad  plain {vec(grad)}",
              f"         ->    {vec(w_grad)}"]
    if eps is not None and weight is not None:
        both, g_both = xent.binary_cross_entropy_with_logits(
            z, (1 - eps) * y + eps / 2, weight=weight, return_grad=True)
        L += ["", f"9. Both options (weights and label smoothing {num(eps)})",
              f"   loss  {num(loss)}  ->  {num(both)}",
              f"   grad  {vec(grad)}  ->  {vec(g_both)}"]
    return "\n".join(L)


FOCAL_P_T = (0.1, 0.5, 0.9, 0.99)  # the extra examples of `explain_focal`: these p_t


def explain_focal(z: np.ndarray, target: Any, gamma: float, binary: bool = False) -> str:
    r"""How the focal factor ``(1 - p_t)^gamma`` rescales each example's loss and gradient,
    beside cross-entropy's: a table of examples (``--focal GAMMA``).

    .. math:: FL = (1 - p_t)^\gamma\, CE,\quad CE = -\log p_t,\quad
              \frac{\partial FL}{\partial z} = \Bigl[(1 - p_t)^\gamma
              - \gamma\, p_t (1 - p_t)^{\gamma - 1} \log p_t\Bigr]
              \frac{\partial CE}{\partial z}

    Multi-class (``z`` ``(C,)``, class ``target``): the row as given, then the same logits
    with ``z[t]`` moved so that ``p_t`` is each of `FOCAL_P_T`; values from
    ``xent.cross_entropy`` and ``xent.focal_loss`` (``return_grad=True``), the gradient's
    ``z[t]`` entry shown (every entry scales by the same factor). Binary (``z`` ``(N,)``,
    labels ``target`` ``(N,)``): one example per logit, from
    ``xent.binary_cross_entropy_with_logits`` and ``xent.sigmoid_focal_loss(alpha=-1)``.

    Example:
        >>> text = explain_focal(np.array([2.0, 1.0, 0.1]), 0, 2.0)
        >>> print(text.splitlines()[8])  # example, p_t, CE, focal, focal/CE, grads, ratio
        ... # doctest: +NORMALIZE_WHITESPACE
        your logits  0.659  0.417  0.04849  0.1163  -0.341  -0.1036  0.3037
    """
    if binary:
        y = np.asarray(target, np.float64)
        ce, g_ce = xent.binary_cross_entropy_with_logits(z, y, reduction="none",
                                                         return_grad=True,
                                                         grad_output=np.ones_like(z))
        fl, g_fl = xent.sigmoid_focal_loss(z, y, alpha=-1.0, gamma=gamma, reduction="none",
                                           return_grad=True, grad_output=np.ones_like(z))
        p = xent.sigmoid(z)
        p_t = np.where(y == 1, p, 1 - p)
        names = [f"z={num(v)} y={int(lab)}" for v, lab in zip(z, y, strict=True)]
        rows = list(zip(names, p_t, ce, fl, g_ce, g_fl, strict=True))
        what = ("torchvision's sigmoid focal loss (no alpha) beside BCE", "one per logit",
                "d/dz")
    else:
        t = int(target)
        others = float(xent.logsumexp(np.delete(z, t)))
        examples = [("your logits", z)]
        for want in FOCAL_P_T:  # z[t] = logit(p_t) + log sum_{j != t} e^z_j gives that p_t
            zz = z.copy()
            zz[t] = math.log(want / (1 - want)) + others
            examples.append((f"z[t]={num(zz[t])}", zz))
        rows = []
        for name, zz in examples:
            ce, g_ce = xent.cross_entropy(zz, t, return_grad=True)
            fl, g_fl = xent.focal_loss(zz, t, gamma=gamma, return_grad=True)
            rows.append((name, float(xent.softmax(zz)[t]), float(ce), float(fl), g_ce[t],
                         g_fl[t]))
        what = ("softmax focal loss beside cross-entropy", "your logits, then z[t] moved so "
                f"that p_t = {', '.join(f'{v:g}' for v in FOCAL_P_T)}", "d/dz[t]")
    width = max(11, *(len(r[0]) for r in rows))
    L = [f"Focal loss (Lin et al. 2017), gamma = {gamma:g}: {what[0]}",
         f"   examples: {what[1]}",
         "   FL = (1 - p_t)^gamma * CE, CE = -log p_t: the loss of an example the model "
         "already gets right",
         "   (p_t near 1) shrinks by the factor (1 - p_t)^gamma, a hard one (p_t small) keeps "
         "most of it;",
         "   the gradient scales by (1 - p_t)^gamma - gamma p_t (1 - p_t)^(gamma-1) log p_t "
         "(gamma = 0: CE)",
         "",
         "   " + " ".join([f"{'example':<{width}}", *(f"{h:>10}" for h in (
             "p_t", "CE", "focal", "focal/CE", "grad CE", "grad focal", "grad ratio"))]),
         "   " + " ".join([" " * width, *[" " * 10] * 4, f"{what[2]:>10}", f"{what[2]:>10}"])]
    for name, p_t, ce, fl, g_ce, g_fl in rows:
        ratio = fl / ce if ce else math.nan
        g_ratio = g_fl / g_ce if g_ce else math.nan
        L.append(f"   {name:<{width}} " + " ".join(  # 4 significant digits: 7 columns
            f"{v:>10.4g}" for v in (p_t, ce, fl, ratio, g_ce, g_fl, g_ratio)))
    L += ["", "   values: xent." + (
        "binary_cross_entropy_with_logits, xent.sigmoid_focal_loss" if binary
        else "cross_entropy, xent.focal_loss") + " (return_grad=True); ratios: quotients",
          f"   train with it: xent train --loss focal --focal-gamma {gamma:g}"]
    return "\n".join(line.rstrip() for line in L)


def explain_sparsemax(z: np.ndarray, t: int | None = None) -> str:
    r"""Sparsemax of one row step by step, beside softmax (``--sparsemax``): the sorted logits,
    the test that finds the support, the threshold τ, and the probabilities with their exact
    zeros; with a target, the sparsemax loss and its gradient ``p - one_hot``.

    τ is found as in Martins & Astudillo (2016), Algorithm 1: sort the logits decreasing,
    z_(1) >= z_(2) >= ...; the support is the largest k with ``1 + k z_(k) > Σ_{j<=k} z_(j)``;
    ``τ = (Σ_{j<=K} z_(j) - 1) / K``; ``p_i = max(z_i - τ, 0)``. The probabilities, loss and
    gradient shown are xent's (``xent.sparsemax``, ``xent.sparsemax_loss``).

    Example:
        >>> text = explain_sparsemax(np.array([1.0, 0.8, 0.1]))
        >>> "τ = (1.000000 + 0.800000 - 1) / 2 = 0.400000" in text
        True
    """
    order = np.argsort(-z, kind="stable")
    s = z[order]
    cs = np.cumsum(s)
    k = np.arange(1, len(z) + 1)
    inside = 1 + k * s > cs
    K = int(inside.sum())
    tau = (cs[K - 1] - 1) / K
    p = xent.sparsemax(z)
    soft = xent.softmax(z)
    w = max(8, *(len(num(v)) for v in s))
    lines = ["sparsemax (Martins & Astudillo 2016): the probabilities nearest to z, "
             "p = max(z - τ, 0) with τ chosen so that Σ p = 1",
             "  1. sort the logits, largest first, and find the support: the largest k with "
             "1 + k·z_(k) > z_(1) + ... + z_(k)",
             f"     {'k':>3}  {'class':>5}  {'z_(k)':>{w}}  {'1 + k·z_(k)':>{w + 3}}  "
             f"{'sum to k':>{w}}  in support"]
    for i in range(len(z)):
        lines.append(f"     {i + 1:>3}  {int(order[i]):>5}  {num(s[i]):>{w}}  "
                     f"{num(1 + (i + 1) * s[i]):>{w + 3}}  {num(cs[i]):>{w}}  "
                     f"{'yes' if inside[i] else 'no'}")
    terms = " + ".join(num(v) for v in s[:K])
    lines += [f"  2. support size K = {K}; threshold τ = ({terms} - 1) / {K} = {num(tau)}",
              "  3. p_i = max(z_i - τ, 0): every logit at or below τ gets exactly 0; softmax "
              "never does",
              f"     {'class':>5}  {'z':>{w}}  {'softmax':>{w}}  {'sparsemax':>{w}}"]
    for c in range(len(z)):
        lines.append(f"     {c:>5}  {num(z[c]):>{w}}  {num(soft[c]):>{w}}  {num(p[c]):>{w}}")
    zeros = [c for c in range(len(z)) if p[c] == 0]
    lines.append(f"     sums: softmax {num(soft.sum())}, sparsemax {num(p.sum())}; exact zeros "
                 f"for {len(zeros)} of {len(z)} classes" + (f" {zeros}" if zeros else ""))
    if t is not None:
        loss, grad = xent.sparsemax_loss(z[None], [t], return_grad=True)
        lines += [f"  4. sparsemax loss for target {t}: (1 - Σ p²)/2 + Σ p·z - z[t] = "
                  f"{num(loss)} (0 once z[t] leads every other logit by 1 or more)",
                  f"     gradient p - one_hot = {vec(grad[0])}"]
    lines.append("   computed by xent.sparsemax and xent.sparsemax_loss; 1.5-entmax "
                 "(xent.entmax15) is the smooth middle ground")
    return "\n".join(lines)


def _unswallow(args) -> None:
    """``--target 0 2.0 1.0 0.1``: argparse gives every number to ``--target`` (it takes one
    or more values) and none to the logits. Take them back: the first value is the class (with
    ``--binary``, the first half are the labels, one per logit)."""
    if args.logits or not args.target:
        if not args.logits:
            raise CLIError("the following arguments are required: Z (the logits; see "
                           "'xent explain --help')")
        return
    values = list(args.target)
    if args.binary:
        if len(values) % 2:
            raise CLIError(f"--target took all {len(values)} numbers; with --binary give the "
                           "logits first, then --target with one label per logit")
        half = len(values) // 2
        args.target, args.logits = values[:half], values[half:]
    elif len(values) > 1:
        args.target, args.logits = values[:1], values[1:]
    else:
        raise CLIError("the following arguments are required: Z (the logits; see "
                       "'xent explain --help')")


def run(args) -> int:
    """The `xent explain` command."""
    _unswallow(args)
    z = _logits(args.logits, args.binary)
    eps = args.label_smoothing
    if args.binary:
        y = _binary_labels(args.target, len(z))
        w = _weights(args.weight, len(z), "logit")
        text = explain_binary(z, y, eps, w)
    elif getattr(args, "sparsemax", False) and args.target is None:
        print(explain_sparsemax(z), flush=True)  # (no target: the map alone)
        return 0
    else:
        t = _class_target(args.target, len(z))
        w = _weights(args.weight, len(z), "class")
        text = explain_softmax(z, t, eps, w)
    if getattr(args, "focal", None) is not None:
        text += "\n\n" + explain_focal(z, y if args.binary else t, args.focal, args.binary)
    if getattr(args, "sparsemax", False) and not args.binary:
        text += "\n\n" + explain_sparsemax(z, t)
    print(text, flush=True)
    return 0
