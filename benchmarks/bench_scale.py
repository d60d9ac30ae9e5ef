#!/usr/bin/env python3
"""`xent train`'s default recipe at scale, side by side with scikit-learn's MLPClassifier.

The issue's data: ``make_classification(n_samples=100_000, n_features=20, n_informative=12,
n_redundant=2, n_classes=4, random_state=1)``, split 80/20 with ``random_state=42`` (the split
`xent train` makes). Each contender is timed in this one process, one after the other:

- ``sklearn MLPClassifier``: ``MLPClassifier(early_stopping=True, random_state=0)``, every other
  parameter its default, ``fit`` on the 80,000 training rows (timed: ``fit`` only);
- ``xent train (default)``: `xent train`'s own training function with the recipe the command
  line picks for this data (`recipe_for('default', 80000)`: `default-large`), timed from the
  table to the evaluated model: split, scaler, validation split, the epochs, the temperature
  and the test metrics (the imports and the CSV parsing are not counted);
- with ``--torch-loss``, the same with PyTorch's own loss (``--loss torch``), to show what the
  bridge to xent's NumPy kernels costs.

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --torch-loss --seed 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import sklearn
import torch
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from xent.cli import _data, _train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="torch seed of xent's run and "
                   "MLPClassifier's random_state (default 0)")
    p.add_argument("--torch-loss", action="store_true", help="also time --loss torch")
    args = p.parse_args()

    X, y = make_classification(n_samples=100_000, n_features=20, n_informative=12,
                               n_redundant=2, n_classes=4, random_state=1)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"Python {platform.python_version()}, torch {torch.__version__} (xent trains on 1 "
          f"thread), scikit-learn {sklearn.__version__}")
    print(f"# make_classification(n_samples=100_000, n_features=20, n_informative=12, "
          f"n_redundant=2, n_classes=4, random_state=1); {len(X_train)} train / {len(X_test)} "
          f"test rows (random_state 42); seed {args.seed}")
    rows = []

    t0 = time.perf_counter()
    mlp = MLPClassifier(early_stopping=True, random_state=args.seed).fit(X_train, y_train)
    seconds = time.perf_counter() - t0
    rows.append(("sklearn MLPClassifier(early_stopping=True)", mlp.score(X_test, y_test),
                 seconds, f"{mlp.n_iter_} epochs, hidden (100,), adam lr 0.001, batch 200, "
                 f"0.1 held out, best val score at epoch "
                 f"{int(np.argmax(mlp.validation_scores_)) + 1}"))

    table = _data.Table(X=X, y=y, classes=[0, 1, 2, 3],
                        features=[f"x{i + 1}" for i in range(X.shape[1])], target="y",
                        source="make_classification(100000, 20, ...)")
    recipe = _train.recipe_for("default", _train.train_rows(len(X), 0.2))
    for loss in ["xent", "torch"] if args.torch_loss else ["xent"]:
        t0 = time.perf_counter()
        result = _train.train(table, "multiclass", recipe, seed=args.seed, loss=loss)
        seconds = time.perf_counter() - t0
        m = result.metrics
        r = recipe
        rows.append((f"xent train (recipe {r.name}, --loss {loss})", m["test_accuracy"],
                     seconds, f"{m['epochs_run']} epochs (best {m['best_epoch']}), hidden "
                     f"{r.hidden}, {r.optimizer} lr {r.lr:g}, batch {r.batch_size}, "
                     f"{r.val_size:g} held out, patience {r.patience}"))
    base_acc, base_s = rows[0][1], rows[0][2]
    print("| contender | test accuracy | vs sklearn | seconds | vs sklearn | schedule |")
    print("|---|---|---|---|---|---|")
    for name, acc, s, note in rows:
        print(f"| {name} | {acc:.4f} | {acc - base_acc:+.4f} | {s:.1f} | {s / base_s:.2f}x | "
              f"{note} |", flush=True)


if __name__ == "__main__":
    main()
