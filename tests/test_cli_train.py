"""End-to-end tests of `xent train`, run as a user runs it: ``python -m xent train ...`` in a
subprocess, checking the exit status, the report and the files it writes.

Expected values are computed here independently (scikit-learn's own split and scaler, the
confusion matrix's own arithmetic, PyTorch's own losses through ``--loss torch``), never copied
from a run of the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TIMEOUT = 300


def xent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m xent ARGS`` in ``cwd``; standard streams captured (so: not a TTY)."""
    return subprocess.run([sys.executable, "-m", "xent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, "PYTHONWARNINGS": ""})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n" \
                                 f"stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def meta(path: Path) -> dict:
    return json.loads((path / "model.json").read_text())


def builtin(task: str):
    """The tutorials' data, made here as the tutorials make it."""
    from sklearn.datasets import make_classification

    if task == "binary":
        return make_classification(n_samples=200, n_features=4, n_informative=2, n_redundant=0,
                                   n_classes=2, random_state=42)
    return make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=42)


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_train_without_arguments_trains_both_tutorial_networks(tmp_path):
    """The README's first command: the default recipe on the built-in data, files in runs/."""
    proc = ok(xent("train", cwd=tmp_path))
    out = proc.stdout
    assert "NeuralNet1 (binary)" in out and "NeuralNet2 (multiclass)" in out
    assert out.count("confusion matrix") == 2 and out.count("  log loss   train") == 2
    assert out.count("calibration (test rows; ECE over 15 bins)") == 2
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    for task, rows, n_test, k in (("binary", 200, 40, 2), ("multiclass", 300, 60, 3)):
        run = tmp_path / "runs" / task
        names = sorted(p.name for p in run.iterdir())
        assert names == ["loss_curves.png", "model.json", "model.safetensors",
                         "reliability.png"]  # no temp files
        assert (run / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run / "model.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header
        m = meta(run)
        assert m["task"] == task and m["classes"] == list(range(k))
        assert m["features"] == ["x1", "x2", "x3", "x4"]
        assert m["data"]["rows"] == rows
        metrics = m["metrics"]
        cm = np.array(metrics["confusion_matrix"])
        assert cm.shape == (k, k) and cm.sum() == n_test == metrics["test_rows"]
        assert metrics["train_rows"] == rows - n_test
        assert metrics["test_accuracy"] == pytest.approx(np.trace(cm) / n_test)
        # The default recipe's promise (benchmarks/recipe_seeds.py measures seeds 0-9).
        assert metrics["test_accuracy"] >= 0.80
        assert len(m["history"]["train_loss"]) == m["training"]["epochs"]
        assert f"test {metrics['test_accuracy']:.4f}" in out
        assert str(Path("runs") / task / "model.safetensors") in out


def test_scaler_is_fitted_on_the_training_rows_and_tutorial_recipe_on_all(tmp_path,
                                                                          monkeypatch):
    from sklearn.model_selection import train_test_split

    from xent.cli import main

    X, y = builtin("binary")
    X_train, _, _, _ = train_test_split(X, y, test_size=0.2, random_state=42)
    monkeypatch.chdir(tmp_path)  # in-process: the command's code, without a second start-up
    assert main(["train", "--task", "binary", "--epochs", "2", "--out", "d", "--quiet"]) == 0
    assert main(["train", "--task", "binary", "--recipe", "tutorial", "--epochs", "2", "--out",
                 "t", "--quiet"]) == 0
    d, t = meta(tmp_path / "d"), meta(tmp_path / "t")
    np.testing.assert_allclose(d["scaler"]["mean"], X_train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(d["scaler"]["scale"], X_train.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(t["scaler"]["mean"], X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(t["scaler"]["scale"], X.std(axis=0), rtol=1e-12)
    # The tutorial's recipe, with the --epochs override.
    tr = t["training"]
    assert (tr["optimizer"], tr["lr"], tr["hidden"], tr["batch_size"]) == ("sgd", 0.1, 5, None)
    assert tr["epochs"] == 2 and tr["objective"] == "binary_cross_entropy(sigmoid(logit))"
    assert t["architecture"]["hidden_size"] == 5


def test_same_seed_gives_the_same_bytes(tmp_path):
    import dataclasses

    from xent.cli import _data, _model, _train

    args = ("train", "--epochs", "12", "--seed", "3", "--quiet")
    first = ok(xent(*args, "--out", "a", cwd=tmp_path))
    second = ok(xent(*args, "--out", "b", cwd=tmp_path))
    assert first.stdout.replace("-> a/", "-> b/") == second.stdout
    recipe = dataclasses.replace(_train.DEFAULT, epochs=12)
    for task in ("binary", "multiclass"):
        for name in ("model.json", "model.safetensors", "loss_curves.png", "reliability.png"):
            a = (tmp_path / "a" / task / name).read_bytes()
            b = (tmp_path / "b" / task / name).read_bytes()
            assert a == b, f"{task}/{name} differs between two runs with the same seed"
        # The same run in this process gives the same weights; another seed, others.
        weights = (tmp_path / "a" / task / "model.safetensors").read_bytes()
        table = _data.builtin(task)
        for seed in (3, 4):
            net = _train.train(table, task, recipe, seed=seed).classifier.net
            assert (_model.weights_bytes(net) == weights) == (seed == 3)


def _assert_same_losses(root: Path, label: str) -> None:
    for task in ("binary", "multiclass"):
        x, t = meta(root / "xent" / task), meta(root / "torch" / task)
        assert x["training"]["loss"] == "xent" and t["training"]["loss"] == "torch"
        for key in ("epoch_loss", "train_loss", "test_loss"):
            assert len(x["history"][key]) == 8
            np.testing.assert_allclose(x["history"][key], t["history"][key], rtol=1e-5,
                                       err_msg=f"{label} {task} {key}")


def test_loss_torch_agrees_with_xent_over_a_short_run(tmp_path):
    """`--loss torch` trains with torch.nn's losses: the recorded losses agree with xent's."""
    for loss in ("xent", "torch"):
        ok(xent("train", "--epochs", "8", "--loss", loss, "--out", loss, "--quiet",
                cwd=tmp_path))
    _assert_same_losses(tmp_path, "default")


def test_loss_torch_agrees_with_xent_in_the_tutorial_recipe(tmp_path, monkeypatch):
    """The same in-process for the tutorial recipe (BCE on the sigmoid, full-batch SGD)."""
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    for loss in ("xent", "torch"):
        assert main(["train", "--recipe", "tutorial", "--epochs", "8", "--loss", loss, "--out",
                     loss, "--quiet"]) == 0
    _assert_same_losses(tmp_path, "tutorial")


def test_training_calls_xent_losses_for_every_batch(tmp_path, monkeypatch):
    """In-process: with --loss xent, each batch's loss and gradient come from xent's functions
    (through xent.torch), not from torch.nn.functional."""
    import collections

    import torch.nn.functional as F

    import xent
    from helpers import spy
    from xent import _cross_entropy
    from xent.cli import main

    calls: collections.Counter = collections.Counter()
    # xent.torch's drop-in and xent.cross_entropy both end in the core's solve()
    spy(monkeypatch, [(_cross_entropy, "solve", "cross_entropy"),
                      (xent, "binary_cross_entropy_with_logits",
                       "binary_cross_entropy_with_logits")], lambda n: calls.update((n,)))

    def forbidden(*a, **k):
        raise AssertionError("torch.nn.functional's loss ran instead of xent's")

    monkeypatch.setattr(F, "cross_entropy", forbidden)
    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", forbidden)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "2", "--quiet", "--out", "r"]) == 0
    # 2 epochs x (4 or 6 batches of 32 of the 128 or 192 rows left after the validation split,
    # then the train, validation and test losses) + 4 for the metrics (the train and test log
    # loss, the test log loss before and after the temperature).
    assert calls == {"binary_cross_entropy_with_logits": 2 * (4 + 3) + 4,
                     "cross_entropy": 2 * (6 + 3) + 4}


def test_train_on_a_csv_with_string_labels(tmp_path):
    X, y = builtin("multiclass")
    names = np.array(["cherry", "apple", "banana"])  # sorted order: apple, banana, cherry
    header = ["sweetness", "acidity", "size", "weight", "fruit"]
    write_csv(tmp_path / "fruit.csv", header,
              [[*map(float, x), label] for x, label in zip(X, names[y], strict=True)])
    proc = ok(xent("train", "--data", "fruit.csv", "--target", "fruit", "--epochs", "30",
                   cwd=tmp_path))
    assert "NeuralNet2 (multiclass)" in proc.stdout
    assert re.search(r"true \\ predicted\s+apple\s+banana\s+cherry", proc.stdout)
    m = meta(tmp_path / "runs" / "multiclass")
    assert m["classes"] == ["apple", "banana", "cherry"]
    assert m["features"] == header[:-1] and m["target"] == "fruit"
    assert m["metrics"]["test_accuracy"] > 0.6

    # Predict on the rows themselves: the target column may stay, the labels come back as names.
    pred = ok(xent("predict", "--model", "runs/multiclass", "--data", "fruit.csv", cwd=tmp_path))
    rows = list(csv.reader(pred.stdout.splitlines()))
    assert rows[0] == ["predicted", "prob_apple", "prob_banana", "prob_cherry"]
    assert len(rows) == 1 + len(X)
    labels = [r[0] for r in rows[1:]]
    assert set(labels) <= {"apple", "banana", "cherry"}
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert [["apple", "banana", "cherry"][i] for i in probs.argmax(axis=1)] == labels
    accuracy = np.mean(np.array(labels) == names[y])
    assert accuracy > 0.6


def test_train_on_a_csv_with_two_string_classes_and_integer_labels(tmp_path, monkeypatch):
    from xent.cli import main

    X, y = builtin("binary")
    write_csv(tmp_path / "yes_no.csv", ["a", "b", "c", "d", "answer"],
              [[*map(float, x), "yes" if t else "no"] for x, t in zip(X, y, strict=True)])
    ok(xent("train", "--data", "yes_no.csv", "--target", "answer", "--epochs", "20",
            "--out", "yn", "--quiet", cwd=tmp_path))
    m = meta(tmp_path / "yn")
    assert m["task"] == "binary" and m["architecture"]["name"] == "NeuralNet1"
    assert m["classes"] == ["no", "yes"]

    # Integer labels sort as numbers (2 < 7 < 10), not as strings.
    Xm, ym = builtin("multiclass")
    codes = np.array([10, 2, 7])
    write_csv(tmp_path / "codes.csv", ["code", "p", "q", "r", "s"],
              [[int(c), *map(float, x)] for x, c in zip(Xm, codes[ym], strict=True)])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "codes.csv", "--target", "code", "--epochs", "5", "--out",
                 "cd", "--quiet"]) == 0
    m = meta(tmp_path / "cd")
    assert m["classes"] == [2, 7, 10] and m["features"] == ["p", "q", "r", "s"]


# ---------------------------------------------------------------------------------------------
# Validation split, early stopping, divergence, loss options, temperature


def _strict_json(path: Path) -> dict:
    """model.json parsed so that NaN, Infinity and -Infinity are errors, not floats."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads((path / "model.json").read_text(), parse_constant=refuse)


def _scaled_train_split(task: str):
    """The training rows `xent train` uses with --val-size 0, made here with scikit-learn."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = builtin(task)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    scaler = StandardScaler().fit(X_train)
    return (scaler.transform(X_train).astype(np.float32), y_train,
            scaler.transform(X_test).astype(np.float32), y_test)


def _forward(run: Path, X: np.ndarray):
    """The saved network's logits, computed here from the safetensors file with torch ops."""
    import torch
    from safetensors.torch import load_file

    w = load_file(str(run / "model.safetensors"))
    x = torch.from_numpy(X)
    h = torch.relu(x @ w["linear1.weight"].T + w["linear1.bias"])
    return h @ w["linear2.weight"].T + w["linear2.bias"]


def test_early_stopping_keeps_the_best_epochs_weights(tmp_path, monkeypatch):
    """--patience 5: the run stops 5 epochs after the lowest validation loss, and the saved
    weights are those of that epoch: the same bytes as a run of exactly that many epochs."""
    import dataclasses

    from xent.cli import _data, _model, _train, main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "80", "--patience", "5", "--seed", "2",
                 "--out", "es", "--quiet"]) == 0
    m = _strict_json(tmp_path / "es")
    tr, h = m["training"], m["history"]
    best = tr["best_epoch"]
    assert tr["patience"] == 5 and tr["stopped_early"] is True
    assert tr["epochs_run"] == best + 5 == len(h["val_loss"]) == len(h["train_loss"])
    assert best == int(np.argmin(h["val_loss"])) + 1 and tr["kept_epoch"] == best
    assert m["metrics"]["best_val_loss"] == min(h["val_loss"])
    recipe = dataclasses.replace(_train.DEFAULT, epochs=best, patience=None)
    net = _train.train(_data.builtin("binary"), "binary", recipe, seed=2).classifier.net
    assert _model.weights_bytes(net) == (tmp_path / "es" / "model.safetensors").read_bytes()


def test_without_patience_the_last_epoch_is_kept_and_the_best_reported(tmp_path, monkeypatch):
    import dataclasses

    from xent.cli import _data, _train

    recipe = dataclasses.replace(_train.DEFAULT, epochs=25)
    fit = _train.train(_data.builtin("multiclass"), "multiclass", recipe, seed=0).fit
    assert fit.epochs_run == fit.kept_epoch == 25 and not fit.stopped_early
    assert fit.best_epoch == int(np.argmin(fit.history["val_loss"])) + 1
    assert (fit.fit_rows, fit.val_rows) == (192, 48)  # 0.2 of the 240 training rows


def test_validation_split_is_stratified_and_val_size_zero_turns_it_off(tmp_path, monkeypatch):
    from sklearn.model_selection import train_test_split

    from xent.cli import _train, main

    _, y_train, _, _ = _scaled_train_split("multiclass")
    i_fit, i_val = _train.validation_split(y_train, 0.2)
    _, expected_val = train_test_split(np.arange(len(y_train)), test_size=0.2, random_state=42,
                                       stratify=y_train)
    assert sorted(i_val) == sorted(expected_val) and len(i_fit) + len(i_val) == len(y_train)

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "multiclass", "--val-size", "0", "--epochs", "3", "--out",
                 "nv"]) == 0
    m = _strict_json(tmp_path / "nv")
    assert m["calibration"]["temperature"] == 1.0 and m["calibration"]["fitted_on"] is None
    assert m["metrics"]["val_rows"] == 0 and m["metrics"]["fit_rows"] == 240
    assert "val_loss" not in m["history"] and m["training"]["kept_epoch"] == 3


def test_a_diverging_run_stops_with_one_line_and_keeps_the_old_model(tmp_path, monkeypatch,
                                                                     capsys):
    """In-process (tests/test_cli_faults.py runs the issue's command in a subprocess): exit 2,
    one line naming the epoch and --lr, and the model already in --out untouched."""
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "2", "--out", "d", "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    capsys.readouterr()
    for task in ("binary", "multiclass"):
        assert main(["train", "--task", task, "--lr", "1e6", "--optimizer", "sgd", "--out",
                     "d"]) == 2
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 1 and out == "", err
        assert re.match(r"xent: error: training diverged in epoch 1: .* is nan; .*smaller --lr",
                        lines[0]), lines[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before


def test_class_weight_balanced_is_sklearns_and_weights_the_loss(tmp_path, monkeypatch):
    """The weights are compute_class_weight('balanced') of the training rows; the recorded loss
    is PyTorch's weighted cross-entropy (and BCE with the per-row weights) of the saved net."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.class_weight import compute_class_weight

    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    for k in (2, 3):
        X, y = make_classification(n_samples=300, n_features=4, n_informative=3,
                                   n_redundant=0, n_classes=k, weights=[0.7] + [0.3 / (k - 1)]
                                   * (k - 1), random_state=0)
        write_csv(tmp_path / f"w{k}.csv", ["a", "b", "c", "d", "y"],
                  [[*map(float, x), int(t)] for x, t in zip(X, y, strict=True)])
        assert main(["train", "--data", f"w{k}.csv", "--target", "y", "--class-weight",
                     "balanced", "--val-size", "0", "--epochs", "1", "--out", f"w{k}",
                     "--quiet"]) == 0
        m = _strict_json(tmp_path / f"w{k}")
        X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=42)
        expected = compute_class_weight("balanced", classes=np.arange(k), y=y_train)
        np.testing.assert_allclose(m["training"]["class_weights"], expected, rtol=1e-12)
        assert m["training"]["class_weight"] == "balanced"
        Xs = StandardScaler().fit(X_train).transform(X_train).astype(np.float32)
        z = _forward(tmp_path / f"w{k}", Xs)
        w = torch.tensor(expected, dtype=torch.float32)
        yt = torch.tensor(y_train)
        if k == 2:
            loss = F.binary_cross_entropy_with_logits(z[:, 0], yt.float(), weight=w[yt])
        else:
            loss = F.cross_entropy(z, yt, weight=w)
        assert m["history"]["train_loss"][0] == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_label_smoothing_is_pytorchs(tmp_path, monkeypatch, task):
    """The recorded loss is F.cross_entropy(..., label_smoothing=0.1) of the saved network; for
    the binary net that of the two logits [0, z] (sigmoid(z) = softmax([0, z])[1])."""
    import torch
    import torch.nn.functional as F

    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", task, "--label-smoothing", "0.1", "--val-size", "0",
                 "--epochs", "1", "--out", "ls", "--quiet"]) == 0
    m = _strict_json(tmp_path / "ls")
    X_train, y_train, _, _ = _scaled_train_split(task)
    z = _forward(tmp_path / "ls", X_train)
    if task == "binary":
        z = torch.cat([torch.zeros_like(z), z], dim=1)
    expected = F.cross_entropy(z, torch.tensor(y_train), label_smoothing=0.1).item()
    plain = F.cross_entropy(z, torch.tensor(y_train)).item()
    assert m["history"]["train_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - plain) > 1e-3  # the option changed the loss
    assert m["training"]["label_smoothing"] == 0.1


def test_predict_applies_the_temperature_fitted_on_the_validation_rows(tmp_path, monkeypatch):
    """model.json's temperature minimises the validation log loss (rows found here with
    scikit-learn), predict prints softmax(logits / T), and the test calibration metrics are
    scikit-learn's of those probabilities."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import brier_score_loss
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "multiclass", "--epochs", "60", "--out", "t",
                 "--quiet"]) == 0
    m = _strict_json(tmp_path / "t")
    t = m["calibration"]["temperature"]
    assert t != 1.0 and m["calibration"]["fitted_on"] == "validation rows (48)"

    X, y = builtin("multiclass")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    scaler = StandardScaler().fit(X_train)
    _, X_val, _, y_val = train_test_split(X_train, y_train, test_size=0.2, random_state=42,
                                          stratify=y_train)
    z_val = _forward(tmp_path / "t", scaler.transform(X_val).astype(np.float32)).double()
    nll = [F.cross_entropy(z_val / s, torch.tensor(y_val)).item() for s in (t * 0.98, t,
                                                                              t * 1.02)]
    assert nll[1] < nll[0] and nll[1] < nll[2]

    write_csv(tmp_path / "test.csv", ["x1", "x2", "x3", "x4"], X_test.tolist())
    proc = ok(xent("predict", "--model", "t", "--data", "test.csv", cwd=tmp_path))
    rows = list(csv.reader(proc.stdout.splitlines()))[1:]
    printed = np.array([[float(v) for v in r[1:]] for r in rows])
    z = _forward(tmp_path / "t", scaler.transform(X_test).astype(np.float32))
    expected = torch.softmax(z / t, dim=1).numpy()
    np.testing.assert_allclose(printed, expected, rtol=1e-5, atol=1e-7)

    after = m["metrics"]["calibration"]["after"]
    p32 = printed.astype(np.float32)  # float32 sums: sklearn checks them at float32's precision
    assert after["log_loss"] == pytest.approx(sk_log_loss(y_test, p32, labels=[0, 1, 2]),
                                              rel=1e-4)
    assert after["brier"] == pytest.approx(brier_score_loss(y_test, p32, labels=[0, 1, 2]),
                                           rel=1e-4)
    before = m["metrics"]["calibration"]["before"]
    assert before["log_loss"] == pytest.approx(m["metrics"]["test_log_loss"])


def test_model_json_has_the_new_fields_and_no_nan(tmp_path, monkeypatch):
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "30", "--patience", "3",
                 "--class-weight", "balanced", "--label-smoothing", "0.05", "--out", "f"]) == 0
    m = _strict_json(tmp_path / "f")  # no NaN / Infinity anywhere
    tr = m["training"]
    for key in ("val_size", "patience", "class_weight", "label_smoothing", "class_weights",
                "best_epoch", "kept_epoch", "epochs_run", "stopped_early"):
        assert key in tr, key
    assert (tr["val_size"], tr["patience"], tr["label_smoothing"]) == (0.2, 3, 0.05)
    cal = m["metrics"]["calibration"]
    assert cal["n_bins"] == 15 and cal["temperature"] == m["calibration"]["temperature"] > 0
    for when in ("before", "after"):
        assert set(cal[when]) == {"ece", "brier", "log_loss"}
        assert 0 <= cal[when]["ece"] <= 1 and 0 <= cal[when]["brier"] <= 1


def test_default_recipe_adapts_to_the_data_size():
    from xent.cli import _train

    assert _train.recipe_for("default", 160).name == "default"
    large = _train.recipe_for("default", 80_000)
    assert large.name == "default-large" and large.patience and large.batch_size > 32
    assert _train.recipe_for("default", 80_000, hidden=16).hidden == 16  # options still win
    assert _train.recipe_for("default", 80_000, patience=None).patience is None
    assert _train.recipe_for("tutorial", 80_000).name == "tutorial"


@pytest.mark.slow
def test_large_csv_trains_with_the_large_recipe_and_stops_early(tmp_path):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=12_500, n_features=8, n_informative=6,
                               n_redundant=0, n_classes=3, random_state=3)
    write_csv(tmp_path / "big.csv", [f"f{i}" for i in range(8)] + ["y"],
              [[*map(float, x), int(t)] for x, t in zip(X, y, strict=True)])
    proc = ok(xent("train", "--data", "big.csv", "--target", "y", "--out", "big", "--quiet",
                   cwd=tmp_path))
    m = _strict_json(tmp_path / "big")
    tr = m["training"]
    assert tr["recipe"] == "default-large" and tr["batch_size"] == 256
    assert tr["stopped_early"] and tr["epochs_run"] < 200
    assert m["metrics"]["test_accuracy"] > 0.85
    assert "test accuracy" in proc.stdout


def test_a_class_too_rare_for_a_stratified_validation_split_is_one_line(tmp_path, monkeypatch,
                                                                         capsys):
    from xent.cli import main

    X, y = builtin("binary")
    labels = np.where(y == 1, "b", "a").astype(object)
    labels[0] = "rare"  # index 0 is in the training split (random_state 42) and alone
    write_csv(tmp_path / "rare.csv", ["p", "q", "r", "s", "label"],
              [[*map(float, x), t] for x, t in zip(X, labels, strict=True)])
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "rare.csv", "--target", "label", "--out", "r"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "stratified validation split" in err[0] and "--val-size 0" in err[0]
    assert main(["train", "--data", "rare.csv", "--target", "label", "--val-size", "0",
                 "--epochs", "2", "--out", "r", "--quiet"]) == 0


# --- --loss focal / poly1 (issue 19, item 6) ---------------------------------------------------

def _focal_reference(z, y, task: str, loss: str, option: float):
    """The loss of logits ``z`` (torch, float32 -> float64) against class indices ``y`` from
    the papers' formulas written here in torch float64: multi-class focal
    ``-(1 - p_t)^gamma log p_t`` and poly-1 ``-log p_t + eps (1 - p_t)``; binary focal is
    torchvision's ``sigmoid_focal_loss`` with alpha < 0 (BCE-with-logits times
    ``(1 - p_t)^gamma``), binary poly-1 BCE + eps (1 - p_t). Means over the rows."""
    import torch
    import torch.nn.functional as F

    z = z.double()
    yt = torch.tensor(y)
    if task == "binary":
        logit, target = z[:, 0], yt.double()
        p = torch.sigmoid(logit)
        p_t = p * target + (1 - p) * (1 - target)
        ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    else:
        logp_t = torch.log_softmax(z, 1).gather(1, yt[:, None])[:, 0]
        p_t, ce = logp_t.exp(), -logp_t
    rows = ce * (1 - p_t) ** option if loss == "focal" else ce + option * (1 - p_t)
    return rows.mean().item()


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize(("loss", "flag", "field", "value"), [
    ("focal", "--focal-gamma", "focal_gamma", 3.0),
    ("poly1", "--poly-epsilon", "poly_epsilon", 0.5),
])
def test_loss_focal_and_poly1_train_the_papers_losses(tmp_path, monkeypatch, task, loss, flag,
                                                     field, value):
    """The recorded loss is the paper's loss of the saved network (reference formulas in torch
    float64); model.json records the loss and its option, and no other loss's option."""
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", task, "--loss", loss, flag, str(value), "--val-size", "0",
                 "--epochs", "1", "--out", "f", "--quiet"]) == 0
    m = _strict_json(tmp_path / "f")
    assert m["training"]["loss"] == loss and m["training"][field] == value
    assert not {"focal_gamma", "poly_epsilon"} - {field} & set(m["training"])
    name = {"focal": "focal_loss", "poly1": "poly1_cross_entropy"}[loss]
    assert name in m["training"]["objective"]
    X_train, y_train, X_test, y_test = _scaled_train_split(task)
    for X, y, key in ((X_train, y_train, "train_loss"), (X_test, y_test, "test_loss")):
        expected = _focal_reference(_forward(tmp_path / "f", X), y, task, loss, value)
        assert m["history"][key][0] == pytest.approx(expected, rel=1e-5), key
    # xent predict reads the model (and one without the loss fields, as written before them)
    for k in ("loss", "objective", field):
        del m["training"][k]
    (tmp_path / "f" / "model.json").write_text(json.dumps(m))
    X, _ = builtin(task)
    write_csv(tmp_path / "new.csv", m["features"], X[:5].tolist())
    assert main(["predict", "--model", "f", "--data", "new.csv"]) == 0


def test_loss_default_records_no_focal_or_poly_option(tmp_path, monkeypatch):
    """Cross-entropy's model.json is as before: no focal_gamma / poly_epsilon."""
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "1", "--out", "d", "--quiet"]) == 0
    training = _strict_json(tmp_path / "d")["training"]
    assert training["loss"] == "xent" and "focal_gamma" not in training
    assert "poly_epsilon" not in training


@pytest.mark.parametrize(("argv", "message"), [
    (["--focal-gamma", "1"], "--focal-gamma is an option of --loss focal; this run's loss is "
                             "--loss xent"),
    (["--loss", "focal", "--poly-epsilon", "1"], "--poly-epsilon is an option of --loss poly1"),
    (["--loss", "focal", "--focal-gamma", "-1"], "--focal-gamma: expected a number >= 0"),
    (["--loss", "poly1", "--poly-epsilon", "-2"], "--poly-epsilon: expected a number >= -1"),
    (["--loss", "hinge"], "--loss: invalid choice: 'hinge'"),
])
def test_loss_options_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from xent.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "1", "--out", "d", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("loss", "class_weight", "hint"), [
    ("xent", None, "; try --class-weight balanced)"),
    ("focal", None, "; try --class-weight balanced: the focal loss weights hard rows, not rare "
                    "classes)"),
    ("focal", "balanced", ")"),
    ("poly1", None, "; try --class-weight balanced)"),
])
def test_rare_class_hint_names_the_option_that_addresses_imbalance(loss, class_weight, hint):
    """The balanced-accuracy line (smallest class under 10%) names --class-weight balanced,
    and for a focal run says why the focal loss alone does not address it."""
    from types import SimpleNamespace

    from xent.cli import _report

    result = SimpleNamespace(
        table=SimpleNamespace(y=np.array([0] * 95 + [1] * 5)), loss=loss,
        classifier=SimpleNamespace(classes=["no", "yes"]),
        metrics={"test_balanced_accuracy": 0.625},
        recipe=SimpleNamespace(class_weight=class_weight))
    assert _report._balance_lines(result) == [
        "  balanced   test 0.6250 (class yes: 5.0% of the rows" + hint]
