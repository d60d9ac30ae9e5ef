#!/usr/bin/env python3
"""`xent train` on imbalanced data: the default loss, `--loss focal`, `--loss poly1` and
`--class-weight balanced`, by balanced accuracy (issue 19, item 6 and its target).

The data stand in for ISLR's ``Default`` (10,000 rows, 3.3% positives):
``make_classification(n_samples=10_000, n_features=3, n_informative=1, n_redundant=0,
n_clusters_per_class=1, weights=[0.97], class_sep=0.5, flip_y=0, random_state=2)`` (3.0%
positives; one informative feature, as ``balance`` is in ``Default``; logistic regression
scores 0.67 balanced accuracy on it, 0.85 with balanced class weights),
written to a CSV and trained from that file as a user would (``xent train --data imbalance.csv
--target y`` plus the options of each row), through the function `xent train` runs (the CLI's
reading, split, recipe and evaluation; the report's numbers). Test rows: 2,000
(``random_state=42``); the recipe is the default one (8,000 training rows). Each configuration
runs for ``--seeds`` torch seeds; the table shows the mean and the range of the test balanced
accuracy, the test accuracy and the test log loss (after the temperature).

    python benchmarks/bench_imbalance.py               # seeds 0-2
    python benchmarks/bench_imbalance.py --seeds 1 --csv /tmp/imbalance.csv

Registered as the section "imbalance" of benchmarks/bench_kernels.py (``run``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = dict(n_samples=10_000, n_features=3, n_informative=1, n_redundant=0,
            n_clusters_per_class=1, weights=[0.97], class_sep=0.5, flip_y=0.0, random_state=2)
# (label, the options after `xent train --data imbalance.csv --target y`)
CONFIGS = [
    ("default (cross-entropy)", []),
    ("--loss focal", ["--loss", "focal"]),
    ("--loss focal --focal-gamma 5", ["--loss", "focal", "--focal-gamma", "5"]),
    ("--loss poly1", ["--loss", "poly1"]),
    ("--class-weight balanced", ["--class-weight", "balanced"]),
    ("--loss focal --class-weight balanced", ["--loss", "focal", "--class-weight", "balanced"]),
]


def write_data(path: Path) -> float:
    """Write the data set as a CSV (columns x0..x2, y); return the share of positives."""
    from sklearn.datasets import make_classification

    X, y = make_classification(**DATA)
    with open(path, "w") as f:
        f.write(",".join([f"x{j}" for j in range(X.shape[1])] + ["y"]) + "\n")
        for row, label in zip(X, y, strict=True):
            f.write(",".join(f"{v:.6g}" for v in row) + f",{label}\n")
    return float(np.mean(y))


def train_once(csv: Path, options: list[str], seed: int) -> dict:
    """One `xent train` run's test metrics, as the command line computes them (nothing is
    written): the parser, the CSV reader, the recipe, `_train.train`."""
    from xent.cli import _data, _train, build_parser

    args = build_parser().parse_args(["train", "--data", str(csv), "--target", "y", "--seed",
                                      str(seed), "--quiet", *options])
    table = _data.read_training_csv(args.data, args.target, options=_train.csv_options(args))
    recipe = _train.resolve_recipe(args, table.n_rows)
    _train.check_loss(args.loss, _train.recipe_changes(args))
    t0 = time.perf_counter()
    result = _train.train(table, "binary", recipe, seed=seed, test_size=args.test_size,
                          loss=args.loss)
    m = result.metrics
    return {"balanced": m["test_balanced_accuracy"], "accuracy": m["test_accuracy"],
            "log_loss": m["calibration"]["after"]["log_loss"],
            "seconds": time.perf_counter() - t0, "recipe": recipe.name}


def run(repeats: int = 3, quick: bool = False, csv: Path | None = None,
        only: list[str] | None = None) -> None:
    """Print the table: ``repeats`` seeds per configuration, at most 3 (each run trains 200
    epochs on 8,000 rows: minutes); ``quick``: 1 seed, 2 configurations."""
    seeds = range(1 if quick else min(repeats, 3))
    configs = CONFIGS[::4] if quick else CONFIGS
    if only:
        configs = [c for c in configs if c[0] in only]
    with tempfile.TemporaryDirectory() as tmp:
        path = csv or Path(tmp) / "imbalance.csv"
        share = write_data(path)
        print(f"\nImbalanced binary data ({share:.1%} positives): make_classification("
              + ", ".join(f"{k}={v}" for k, v in DATA.items()) + "); test 2000 rows; "
              f"seeds {seeds.start}-{seeds.stop - 1}; {platform.processor() or platform.machine()}"
              f", {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        print("| xent train --data imbalance.csv --target y ... | recipe | balanced accuracy "
              "(mean, min-max) | accuracy | log loss (after T) | s per run |")
        print("|---|---|---|---|---|---|")
        for label, options in configs:
            runs = [train_once(path, options, s) for s in seeds]
            bal = [r["balanced"] for r in runs]
            print(f"| {label} | {runs[0]['recipe']} | {np.mean(bal):.3f} ({min(bal):.3f}-"
                  f"{max(bal):.3f}) | {np.mean([r['accuracy'] for r in runs]):.4f} | "
                  f"{np.mean([r['log_loss'] for r in runs]):.4f} | "
                  f"{np.mean([r['seconds'] for r in runs]):.0f} |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="torch seeds per configuration")
    p.add_argument("--quick", action="store_true", help="one seed, two configurations")
    p.add_argument("--csv", type=Path, help="also keep the data set at this path")
    p.add_argument("--only", action="append", choices=[c[0] for c in CONFIGS],
                   help="run only this configuration (repeatable)")
    args = p.parse_args()
    run(args.seeds, args.quick, args.csv, args.only)


if __name__ == "__main__":
    main()
