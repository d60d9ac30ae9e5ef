"""`xent examples`: every worked example of the tutorials, computed by xent beside PyTorch.

Each line shows a quantity as xent computes it (NumPy float64, as the tutorials' NumPy code
does), as PyTorch computes it (float32, as the tutorials' PyTorch code does) when PyTorch is
installed, a mark for their agreement (to float32 precision: ``rtol=1e-6, atol=1e-7``; labels
exactly), and the value the tutorial printed. The exit status is 1 if any pair disagrees.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

import xent

RTOL, ATOL = 1e-6, 1e-7


@dataclass
class Row:
    """One quantity: xent's value, PyTorch's (None without PyTorch) and the tutorial's text."""

    name: str
    xent: object
    torch: object = None
    tutorial: str = ""
    exact: bool = False  # labels: compare exactly
    compare: bool = True  # False for the naive formula, shown only as a contrast


@dataclass
class Example:
    title: str
    source: str
    rows: list[Row] = field(default_factory=list)


def _fmt(v: object) -> list[str]:
    """A value as text lines: scalars with 4 decimals, vectors on one line, matrices per row."""
    a = np.asarray(v)
    if a.dtype.kind in "iub":
        return [str(a.tolist())]
    with np.printoptions(precision=4, suppress=True, floatmode="fixed"):
        if a.ndim == 0:
            return [f"{float(a):.6f}"]
        if a.ndim == 1:
            return [np.array2string(a, separator=" ")]
        return [np.array2string(r, separator=" ") for r in a]


def _agree(row: Row) -> bool:
    x, t = np.asarray(row.xent), np.asarray(row.torch)
    if x.shape != t.shape:
        return False
    if row.exact:
        return bool(np.array_equal(x, t))
    return bool(np.allclose(x.astype(np.float64), t.astype(np.float64), rtol=RTOL, atol=ATOL,
                            equal_nan=True))


def _naive_softmax(x: np.ndarray) -> np.ndarray:
    """The tutorials' formula, ``np.exp(x) / np.sum(np.exp(x))``: overflows for large x.

    >>> _naive_softmax(np.array([1000.0, 1.0]))  # exp(1000) = inf, inf / inf = nan
    array([nan,  0.])
    >>> xent.softmax([1000.0, 1.0])
    array([1., 0.])
    """
    with np.errstate(over="ignore", invalid="ignore"):  # exp(1000) = inf, inf/inf = nan: shown
        return np.exp(x) / np.sum(np.exp(x), axis=0)


def build(torch=None) -> list[Example]:
    """The examples, with PyTorch's values when ``torch`` (the module) is given."""
    F = torch.nn.functional if torch is not None else None

    def tv(fn):
        """PyTorch's value as a NumPy array (None without PyTorch)."""
        if torch is None:
            return None
        out = fn()
        return out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)

    def t32(v):
        return torch.tensor(v, dtype=torch.float32)

    ex: list[Example] = []
    x = np.array([2.0, 1.0, 0.1])

    e = Example("Softmax and sigmoid of [2.0, 1.0, 0.1]", "tutorials 000, 001, 002")
    e.rows.append(Row("softmax(x)", xent.softmax(x), tv(lambda: torch.softmax(t32(x), dim=0)),
                      "[0.65900114 0.24243297 0.09856589]"))
    e.rows.append(Row("sigmoid(x)", xent.sigmoid(x), tv(lambda: torch.sigmoid(t32(x))),
                      "[0.88079708 0.73105858 0.52497919]"))
    ex.append(e)

    e = Example("Cross-entropy of a one-hot target [1, 0, 0, 0]: -log of the true class's "
                "probability", "tutorial 000, worked example")
    for p, tut in (([0.4, 0.1, 0.3, 0.2], "0.916"), ([0.9, 0.05, 0.03, 0.02], "0.105")):
        logp = np.log(np.array([p]))
        e.rows.append(Row(f"-log p[0], p = {p}", xent.nll_loss(logp, [0]),
                          tv(lambda logp=logp: F.nll_loss(t32(logp), torch.tensor([0]))), tut))
    ex.append(e)

    logits = np.array([2.0, -1.0, 0.5])
    y = np.array([1.0, 0.0, 1.0])
    e = Example("Binary cross-entropy on sigmoid outputs: logits [2.0, -1.0, 0.5], "
                "labels [1, 0, 1]", "tutorial 000, example 1")
    sig = xent.sigmoid(logits)
    e.rows.append(Row("sigmoid(logits)", sig, tv(lambda: torch.sigmoid(t32(logits))),
                      "[0.8808, 0.2689, 0.6225]"))
    e.rows.append(Row("BCE(sigmoid(logits), y)", xent.binary_cross_entropy(sig, y),
                      tv(lambda: torch.nn.BCELoss()(torch.sigmoid(t32(logits)), t32(y))),
                      "0.3047555685043335"))
    e.rows.append(Row("BCE with logits(logits, y)", xent.binary_cross_entropy_with_logits(
        logits, y), tv(lambda: F.binary_cross_entropy_with_logits(t32(logits), t32(y))),
        "(not in the tutorial: the stable form)"))
    ex.append(e)

    z = np.array([[2.0, 1.0, 0.1, 0.5], [0.3, 2.2, 0.5, 1.1], [1.2, 0.7, 1.5, 0.3]])
    t = np.array([0, 1, 2])
    e = Example("Cross-entropy of 3 samples and 4 classes, targets [0, 1, 2]",
                "tutorial 000, example 2")
    e.rows.append(Row("softmax(logits)", xent.softmax(z, axis=1),
                      tv(lambda: torch.softmax(t32(z), dim=1)),
                      "[[0.5745 0.2114 0.0859 0.1282] ...]"))
    e.rows.append(Row("cross_entropy", xent.cross_entropy(z, t),
                      tv(lambda: torch.nn.CrossEntropyLoss()(t32(z), torch.tensor(t))),
                      "0.6589792370796204"))
    ex.append(e)

    onehot = np.array([[1.0, 0.0, 0.0]])
    e = Example("NumPy cross-entropy of one-hot y = [[1, 0, 0]] against probabilities "
                "(-sum(y * log p))", "tutorial 001")
    for name, p, tut in (("good", [0.7, 0.2, 0.1], "0.35667494393873245"),
                         ("bad", [0.1, 0.3, 0.6], "2.3025850929940455")):
        logp = np.log(np.array([p]))
        e.rows.append(Row(f"{name}: p = {p}", xent.nll_loss(logp, [0], reduction="sum"),
                          tv(lambda logp=logp: F.nll_loss(t32(logp), torch.tensor([0]),
                                                          reduction="sum")), tut))
        # The same loss from the one-hot target itself: probability targets of cross_entropy,
        # with log p as logits (their logsumexp is log 1 = 0).
        e.rows.append(Row("  as one-hot target", xent.cross_entropy(logp, onehot,
                                                                     reduction="sum"),
                          tv(lambda logp=logp: F.cross_entropy(t32(logp), t32(onehot),
                                                               reduction="sum")), tut))
    ex.append(e)

    e = Example("PyTorch CrossEntropyLoss of one sample, target [0], and its prediction",
                "tutorial 001")
    for name, row, tut, tut_pred in (("good", [[2.0, 1.0, 0.1]], "0.4170299470424652", "0"),
                                     ("bad", [[0.5, 2.0, 0.3]], "1.840616226196289", "1")):
        a = np.array(row)
        e.rows.append(Row(f"loss {name}: {row[0]}", xent.cross_entropy(a, [0]),
                          tv(lambda a=a: torch.nn.CrossEntropyLoss()(t32(a), torch.tensor([0]))),
                          tut))
        e.rows.append(Row(f"prediction {name}", np.argmax(xent.softmax(a, axis=1), axis=1),
                          tv(lambda a=a: torch.max(t32(a), 1)[1]), tut_pred, exact=True))
    ex.append(e)

    for title, source, target, good, bad, tuts in (
        ("Batch of 3 samples, targets [2, 0, 1]", "tutorial 001",
         [2, 0, 1],
         [[0.1, 0.2, 3.9], [1.2, 0.1, 0.3], [0.3, 2.2, 0.2]],
         [[0.9, 0.2, 0.1], [0.1, 0.3, 1.5], [1.2, 0.2, 0.5]],
         ("0.2834", "1.6418", "[2, 0, 1]", "[0, 2, 0]")),
        ("The fruit example: Cherry, Apple, Banana = targets [2, 0, 1]", "tutorial 000",
         [2, 0, 1],
         [[0.1, 1.0, 2.1], [2.0, 1.0, 0.1], [0.1, 3.0, 0.1]],
         [[2.1, 1.0, 0.1], [0.1, 1.0, 2.1], [0.1, 3.0, 0.1]],
         ("0.3018", "1.6242", "[2, 0, 1]", "[0, 2, 1]")),
    ):
        e = Example(title, source)
        tt = np.array(target)
        for name, logit, tut in (("good", good, tuts[0]), ("bad", bad, tuts[1])):
            a = np.array(logit)
            e.rows.append(Row(f"loss {name}", xent.cross_entropy(a, tt),
                              tv(lambda a=a, tt=tt: torch.nn.CrossEntropyLoss()(
                                  t32(a), torch.tensor(tt))),
                              tut))
        for name, logit, tut in (("good", good, tuts[2]), ("bad", bad, tuts[3])):
            a = np.array(logit)
            e.rows.append(Row(f"predictions {name}", np.argmax(xent.softmax(a, axis=1), axis=1),
                              tv(lambda a=a: torch.max(t32(a), 1)[1]), tut, exact=True))
        ex.append(e)

    big = np.array([1000.0, 1.0])
    e = Example("Large logits [1000.0, 1.0]: the tutorials' formula overflows",
                "the tutorials' NumPy softmax")
    e.rows.append(Row("exp(x)/sum(exp(x))", _naive_softmax(big), None,
                      "(the naive formula: exp(1000) = inf)", compare=False))
    e.rows.append(Row("softmax(x)", xent.softmax(big), tv(lambda: torch.softmax(
        torch.tensor(big), dim=0))))
    e.rows.append(Row("log_softmax(x)", xent.log_softmax(big), tv(lambda: torch.log_softmax(
        torch.tensor(big), dim=0))))
    e.rows.append(Row("cross_entropy(x, 1)", xent.cross_entropy(big, 1), tv(
        lambda: F.cross_entropy(torch.tensor(big), torch.tensor(1)))))
    ex.append(e)
    return ex


def render(examples: list[Example], with_torch: bool, marks: tuple[str, str]) -> tuple[str, int]:
    """The report text and the number of disagreements."""
    ok_mark, bad_mark = marks
    table = []  # (name, xent lines, torch lines, mark, tutorial)
    for e in examples:
        for r in e.rows:
            if not with_torch or r.torch is None:
                mark = "" if r.compare else "   "
            else:
                mark = ok_mark if _agree(r) else bad_mark
            table.append((r, _fmt(r.xent), _fmt(r.torch) if r.torch is not None else [""],
                          mark))
    wn = max(len(r.name) for r, *_ in table)
    wx = max(len(s) for _, xs, _, _ in table for s in xs)
    wt = max(len(s) for _, _, ts, _ in table for s in ts)
    lines, bad, k = [], 0, 0
    head = f"   {'':<{wn}}  {'xent':<{wx}}"
    if with_torch:
        head += f"  {'PyTorch':<{wt}}     "
    head += "  tutorial printed"
    for i, e in enumerate(examples, 1):
        lines += ["", f"{i}. {e.title}  ({e.source})", head]
        for _ in e.rows:
            r, xs, ts, mark = table[k]
            k += 1
            bad += mark == bad_mark
            for j in range(max(len(xs), len(ts))):
                x = xs[j] if j < len(xs) else ""
                line = f"   {r.name if j == 0 else '':<{wn}}  {x:<{wx}}"
                if with_torch:
                    t = ts[j] if j < len(ts) else ""
                    line += f"  {t:<{wt}}  {mark if j == 0 else '':<3}"
                line += f"  {r.tutorial if j == 0 else ''}"
                lines.append(line.rstrip())
    return "\n".join(lines), bad


def run(args) -> int:
    """The `xent examples` command."""
    try:
        import torch
    except ImportError:
        torch = None
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(enc)
        marks = ("✓", "✗")
    except (UnicodeEncodeError, LookupError):
        marks = ("ok", "BAD")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xent must not warn on any of these
        examples = build(torch)
    text, bad = render(examples, torch is not None, marks)
    if torch is None:
        intro = ("The tutorials' worked examples computed by xent (PyTorch is not installed, "
                 "so there is no comparison).")
    else:
        intro = (f"The tutorials' worked examples: xent (NumPy, float64) beside PyTorch "
                 f"{torch.__version__} (float32, as in the tutorials); {marks[0]} = they agree "
                 f"to float32 precision (rtol {RTOL:g}), labels exactly.")
    print(intro + "\n" + text)
    total = sum(1 for e in examples for r in e.rows if r.torch is not None and r.compare)
    if torch is not None:
        print(f"\n{total - bad} of {total} values agree." if bad else
              f"\nAll {total} values agree.")
    return 1 if bad else 0
