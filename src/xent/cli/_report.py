"""What `xent train` shows: the per-network text report and the loss-curve picture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _fmt_classes(classes: list) -> str:
    return ", ".join(str(c) for c in classes)


def _confusion(cm: list[list[int]], classes: list) -> list[str]:
    names = [str(c) for c in classes]
    width = max(5, *(len(s) for s in names), *(len(str(v)) for row in cm for v in row))
    first = max(len("true \\ predicted"), *(len(s) for s in names))
    lines = ["true \\ predicted".ljust(first) + "".join(f"  {s:>{width}}" for s in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:<{first}}" + "".join(f"  {v:>{width}}" for v in row))
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
    n = len(result.table.X)
    lines = [
        f"{arch} ({result.task}): {len(clf.features)} features -> {r.hidden} hidden (ReLU) "
        f"-> {out}",
        f"  data       {result.table.source}",
        f"             {n} rows, classes {_fmt_classes(clf.classes)}; "
        f"{m['train_rows']} train / {m['test_rows']} test",
        f"  recipe     {r.name}: {r.optimizer} lr {r.lr:g}{wd}, {r.epochs} epochs, {batch}, "
        f"seed {result.seed}, loss {result.objective} ({result.loss})",
        f"  accuracy   train {m['train_accuracy']:.4f}   test {m['test_accuracy']:.4f}",
        f"  log loss   train {m['train_log_loss']:.4f}   test {m['test_log_loss']:.4f}",
        "  confusion matrix (test rows)",
        *("    " + line for line in _confusion(m["confusion_matrix"], clf.classes)),
        f"  files      {paths['weights']}",
        f"             {paths['model']}",
        f"             {paths['plot']}",
        f"  time       {result.seconds:.2f} s (training and evaluation)",
    ]
    return "\n".join(lines)


def loss_curves_png(result) -> bytes:
    """A PNG of the train and test loss per epoch (Agg canvas: no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h = result.history
    epochs = np.arange(1, len(h["train_loss"]) + 1)
    m = result.metrics
    arch = "NeuralNet1" if result.task == "binary" else "NeuralNet2"
    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, h["train_loss"], label=f"train ({m['train_rows']} rows)", color="tab:blue")
    ax.plot(epochs, h["test_loss"], label=f"test ({m['test_rows']} rows)", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("binary cross-entropy" if result.task == "binary" else "cross-entropy")
    ax.set_title(f"{arch} ({result.task}), recipe {result.recipe.name}, seed {result.seed}: "
                 f"test accuracy {m['test_accuracy']:.3f}", fontsize=10)
    ax.set_xlim(1, max(2, len(epochs)))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
