"""What `xent train` shows: the per-network text report, the loss curves and the reliability
diagram."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

RELIABILITY_FILE = "reliability.png"


def _fmt_classes(classes: list) -> str:
    """The class labels for the report; more than `MATRIX_CLASSES` are shortened.

    >>> _fmt_classes(list(range(50)))
    '0, 1, 2, ..., 49 (50 classes)'
    """
    if len(classes) > MATRIX_CLASSES:
        shown = [*map(str, classes[:3]), "...", str(classes[-1])]
        return f"{', '.join(shown)} ({len(classes)} classes)"
    return ", ".join(str(c) for c in classes)


MATRIX_CLASSES = 10  # more classes: the report lists the most frequent confusions instead
TOP_CONFUSIONS = 10


def _top_confusions(cm: list[list[int]], classes: list) -> list[str]:
    """The most frequent off-diagonal cells, ``true -> predicted: count``, most first.

    >>> _top_confusions([[5, 2, 0], [0, 7, 3], [1, 0, 4]], ["a", "b", "c"])[2:]
    ['  b -> c  3', '  a -> b  2', '  c -> a  1']
    """
    m = np.array(cm)
    k = len(m)
    off = [(int(m[i, j]), i, j) for i in range(k) for j in range(k) if i != j and m[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    wrong, total = sum(c for c, _, _ in off), int(m.sum())
    head = [f"{k} classes: the {min(TOP_CONFUSIONS, len(off))} most frequent of {len(off)} "
            f"confusions, true -> predicted ({wrong} of {total} test rows wrong);",
            "the full matrix is in model.json (metrics.confusion_matrix)"]
    shown = off[:TOP_CONFUSIONS]
    width = max([len(f"{classes[i]} -> {classes[j]}") for _, i, j in shown], default=0)
    return [*head, *(f"  {f'{classes[i]} -> {classes[j]}':<{width}}  {c}" for c, i, j in shown)]


def _confusion(cm: list[list[int]], classes: list) -> list[str]:
    if len(classes) > MATRIX_CLASSES:
        return _top_confusions(cm, classes)
    names = [str(c) for c in classes]
    width = max(5, *(len(s) for s in names), *(len(str(v)) for row in cm for v in row))
    first = max(len("true \\ predicted"), *(len(s) for s in names))
    lines = ["true \\ predicted".ljust(first) + "".join(f"  {s:>{width}}" for s in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:<{first}}" + "".join(f"  {v:>{width}}" for v in row))
    return lines


def _calibration(cal: dict, val_rows: int) -> list[str]:
    """The calibration lines: test ECE, Brier score and log loss before and after T."""
    head = (f"  calibration (test rows; ECE over {cal['n_bins']} bins)      ECE    Brier  "
            "log loss")
    rows = [("before", "T = 1", cal["before"])]
    if val_rows:
        rows.append(("after", f"T = {cal['temperature']:.3f}, fitted on the validation rows",
                     cal["after"]))
    width = max(len(f"{a} ({b})") for a, b, _ in rows)
    lines = [head]
    for a, b, v in rows:
        lines.append(f"    {f'{a} ({b})':<{width}}  {v['ece']:.4f}  {v['brier']:.4f}  "
                     f"{v['log_loss']:.4f}")
    return lines


def summary(result, paths: dict[str, Path], quiet: bool = False) -> str:
    """The report of one trained network: data, recipe, accuracy, log loss, confusion, files."""
    m = result.metrics
    clf = result.classifier
    r = result.recipe
    if quiet:
        return (f"{result.task}: train accuracy {m['train_accuracy']:.4f}, test accuracy "
                f"{m['test_accuracy']:.4f}, test log loss {m['test_log_loss']:.4f} -> "
                f"{paths['model'].parent}")
    arch = "NeuralNet1" if result.task == "binary" else "NeuralNet2"
    k = len(clf.classes)
    out = "1 logit -> sigmoid" if result.task == "binary" else f"{k} logits -> softmax"
    batch = "full batch" if r.batch_size is None else f"batch {r.batch_size}"
    wd = f", weight decay {r.weight_decay:g}" if r.weight_decay else ""
    val_rows = m.get("val_rows", 0)
    if val_rows:
        stop = (f", early stopping after {r.patience} epochs without improvement"
                if r.patience else "")
        schedule = [f"  validation {r.val_size:g} of the training rows held out "
                    f"({m['fit_rows']} fit / {val_rows} validation){stop}",
                    f"  best epoch {m['best_epoch']} of {m['epochs_run']} run "
                    f"(validation loss {m['best_val_loss']:.4f})"
                    + ("; stopped early" if m["stopped_early"] else "")
                    + (": its weights are the model's" if m["kept_epoch"] == m["best_epoch"]
                       else f"; the model is epoch {m['kept_epoch']}'s (no early stopping)")]
    else:
        schedule = ["  validation none (--val-size 0): the last epoch's weights, no temperature"]
    n = result.table.n_rows
    lines = [
        f"{arch} ({result.task}): {len(clf.features)} features -> {r.hidden} hidden (ReLU) "
        f"-> {out}",
        f"  data       {result.table.source}",
        f"             {n} rows, classes {_fmt_classes(clf.classes)}; "
        f"{m['train_rows']} train / {m['test_rows']} test",
        *_columns_lines(result.table),
        f"  recipe     {r.name}: {r.optimizer} lr {r.lr:g}{wd}, {r.epochs} epochs, {batch}, "
        f"seed {result.seed}, loss {result.objective} ({result.loss})",
        *schedule,
        f"  accuracy   train {m['train_accuracy']:.4f}   test {m['test_accuracy']:.4f}",
        *_balance_lines(result),
        f"  log loss   train {m['train_log_loss']:.4f}   test {m['test_log_loss']:.4f}",
        *_calibration(m["calibration"], val_rows),
        "  confusion matrix (test rows)",
        *("    " + line for line in _confusion(m["confusion_matrix"], clf.classes)),
        f"  files      {paths['weights']}",
        f"             {paths['model']}",
        f"             {paths['plot']}",
        *([f"             {paths['reliability']}"] if "reliability" in paths else []),
        f"  time       {result.seconds:.2f} s (training and evaluation)",
    ]
    return "\n".join(lines)


RARE_CLASS = 0.10  # a class under this share of the rows: the report shows balanced accuracy


def _balance_lines(result) -> list[str]:
    """Balanced accuracy (the mean of the per-class recalls) and the hint for
    ``--class-weight balanced`` when the smallest class is under `RARE_CLASS` of the rows: the
    option that addresses the imbalance (benchmarks/bench_imbalance.py: ``--loss focal`` alone
    barely moves the balanced accuracy, so a focal run is told so)."""
    y = result.table.y
    counts = np.bincount(y, minlength=len(result.classifier.classes))
    k = int(np.argmin(counts))
    share = counts[k] / len(y)
    if share >= RARE_CLASS:
        return []
    m = result.metrics
    line = (f"  balanced   test {m['test_balanced_accuracy']:.4f} (class "
            f"{result.classifier.classes[k]}: {share:.1%} of the rows")
    if result.recipe.class_weight != "balanced":
        line += "; try --class-weight balanced"
        if getattr(result, "loss", None) == "focal":
            line += ": the focal loss weights hard rows, not rare classes"
    line += ")"
    return [line]


def _columns_lines(table) -> list[str]:
    """The table of the file's columns: role and what was done (CSV data only)."""
    if not table.roles:
        return []
    name_w = max(len("column"), *(len(r.column) for r in table.roles))
    role_w = max(len("identifier"), *(len(r.role) for r in table.roles))
    lines = [f"  columns    {'column':<{name_w}}  {'role':<{role_w}}  what was done"]
    for r in table.roles:
        lines.append(f"             {r.column:<{name_w}}  {r.role:<{role_w}}  {r.done}")
    if table.unlabeled:
        lines.append(f"  labels     {table.unlabeled} row(s) with a missing label in "
                     f"{table.target!r} dropped (--drop-unlabeled, the default)")
    return lines


def data_name(result) -> str:
    """The data a plot shows, for its title: the CSV file's name, or the built-in data."""
    source = result.table.source
    if source.startswith("built-in "):
        return "data: built-in make_classification"
    return f"data: {Path(source).name}"


def _figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def loss_curves_png(result) -> bytes:
    """A PNG of the train, validation and test loss per epoch, the best epoch marked."""
    h = result.history
    epochs = np.arange(1, len(h["train_loss"]) + 1)
    m = result.metrics
    arch = "NeuralNet1" if result.task == "binary" else "NeuralNet2"
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    fit_rows = m.get("fit_rows", m["train_rows"])
    ax.plot(epochs, h["train_loss"], label=f"train ({fit_rows} rows)", color="tab:blue")
    if "val_loss" in h:
        ax.plot(epochs, h["val_loss"], label=f"validation ({m['val_rows']} rows)",
                color="tab:green")
    ax.plot(epochs, h["test_loss"], label=f"test ({m['test_rows']} rows)", color="tab:orange")
    if "val_loss" in h and m.get("best_epoch"):
        best = m["best_epoch"]
        ax.axvline(best, color="0.3", linestyle="--", linewidth=1)
        kept = m.get("kept_epoch", best)
        note = "" if kept == best else f"\nthe model: epoch {kept}"
        ax.annotate(f"best epoch {best}\n(val loss {h['val_loss'][best - 1]:.3f}){note}",
                    xy=(best, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -4),
                    textcoords="offset points", va="top", fontsize=8, color="0.3")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy" if result.task == "binary" else "cross-entropy")
    ax.set_title(f"{arch} ({result.task}), recipe {result.recipe.name}, seed {result.seed}: "
                 f"test accuracy {m['test_accuracy']:.3f}\n{data_name(result)}", fontsize=10)
    ax.set_xlim(1, max(2, len(epochs)))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _png(fig)


def reliability_png(result) -> bytes:
    """A PNG reliability diagram of the test rows: accuracy per confidence bin against the
    diagonal, before and after the temperature (Guo et al. 2017, fig. 1)."""
    import dataclasses

    from xent.metrics import calibration_bins

    clf, data = result.classifier, result.split
    cal = result.metrics["calibration"]
    n_bins = cal["n_bins"]
    panels = [("before: T = 1", 1.0, cal["before"])]
    if result.metrics.get("val_rows"):
        panels.append((f"after: T = {cal['temperature']:.3f}", cal["temperature"],
                       cal["after"]))
    fig = _figure(4.0 * len(panels) + 0.6, 4.2)
    width = 1.0 / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    for k, (title, t, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        proba = dataclasses.replace(clf, temperature=t).proba(data.raw_test)
        counts, accuracy, confidence = calibration_bins(data.y_test, proba, n_bins)
        shown = counts > 0
        ax.bar(centres[shown], accuracy[shown], width=width, edgecolor="black",
               color="tab:blue", label="accuracy")
        ax.bar(centres[shown], (confidence - accuracy)[shown], bottom=accuracy[shown],
               width=width, edgecolor="tab:red", color="tab:red", alpha=0.3, label="gap")
        ax.plot([0, 1], [0, 1], "--", color="0.3", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (largest probability)")
        if k == 0:
            ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {values['ece']:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{result.task}, test rows ({len(data.y_test)}), {n_bins} bins; "
                 f"{data_name(result)}", fontsize=10)
    return _png(fig)
