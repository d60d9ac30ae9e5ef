#!/usr/bin/env python3
"""Test accuracy of `xent train`'s recipes over seeds: the measurement behind the default recipe.

Trains the default recipe and the tutorials' recipe on both built-in datasets (the tutorials'
make_classification data and 80/20 split, random_state 42) for each seed (the torch seed for
the weight initialisation and the batch order), with xent's losses, exactly as `xent train`
does, and prints the test accuracy per seed, the mean, the minimum, the mean test log loss and the
seconds per run; then, for the recipes that hold validation rows out, the test expected
calibration error (15 bins) per seed before and after the temperature fitted on them, and the
number of seeds where the temperature lowered it.

    python benchmarks/recipe_seeds.py                 # seeds 0-9, both recipes
    python benchmarks/recipe_seeds.py --seeds 20 --recipe default
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np
import torch

from xent.cli import _data, _train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--recipe", choices=["default", "tutorial", "both"], default="both")
    p.add_argument("--epochs", type=int, help="override the recipes' number of epochs")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of the recipes (e.g. patience=30), to measure a "
                   "neighbour of the default")
    args = p.parse_args()
    changes = {}
    for item in args.set:
        key, value = item.split("=", 1)
        changes[key] = (None if value == "None" else int(value) if value.isdigit()
                        else float(value) if value.replace(".", "", 1).isdigit() else value)
    recipes = ["default", "tutorial"] if args.recipe == "both" else [args.recipe]
    if changes:
        print(f"# the recipes with {changes}")
    seeds = list(range(args.seeds))
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}, torch {torch.__version__}"
          f" (training on 1 thread)")
    print("# test accuracy per seed (the torch seed; the data split is fixed: random_state 42),")
    print("# their mean and minimum, the mean test log loss, and the seconds per training run")
    head = ["recipe", "task"] + [str(s) for s in seeds] + ["mean", "min", "log loss", "s/run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    calibration = []
    for name in recipes:
        for task in ("binary", "multiclass"):
            table = _data.builtin(task)
            # The recipe `xent train` picks for this table (the default adapts to its size).
            recipe = _train.recipe_for(name, _train.train_rows(len(table.X), 0.2))
            if args.epochs:
                recipe = dataclasses.replace(recipe, epochs=args.epochs)
            recipe = dataclasses.replace(recipe, **changes)
            accs, losses, secs, before, after, temps = [], [], [], [], [], []
            for seed in seeds:
                t0 = time.perf_counter()
                result = _train.train(table, task, recipe, seed=seed)
                secs.append(time.perf_counter() - t0)
                m = result.metrics
                accs.append(m["test_accuracy"])
                losses.append(m["test_log_loss"])
                before.append(m["calibration"]["before"]["ece"])
                after.append(m["calibration"]["after"]["ece"])
                temps.append(m["calibration"]["temperature"])
            a = np.array(accs)
            cells = [name, task, *(f"{v:.3f}" for v in a), f"**{a.mean():.3f}**",
                     f"{a.min():.3f}", f"{np.mean(losses):.3f}", f"{np.mean(secs):.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
            if recipe.val_size:
                calibration.append((name, task, before, after, temps))
    if not calibration:
        return
    print()
    print("# test ECE (15 equal-width bins) per seed: before / after the temperature fitted on "
          "the validation rows")
    head = ["recipe", "task", "ECE"] + [str(s) for s in seeds] + ["mean", "lower after"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, task, before, after, temps in calibration:
        for label, values in (("before (T = 1)", before), ("after", after),
                              ("temperature T", temps)):
            lower = (f"**{sum(a < b for a, b in zip(after, before, strict=True))} of "
                     f"{len(seeds)}**" if label == "after" else "")
            cells = [name, task, label, *(f"{v:.3f}" for v in values),
                     f"{np.mean(values):.3f}", lower]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
