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
    assert out.count("confusion matrix") == 2 and out.count("log loss") == 2
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    for task, rows, n_test, k in (("binary", 200, 40, 2), ("multiclass", 300, 60, 3)):
        run = tmp_path / "runs" / task
        names = sorted(p.name for p in run.iterdir())
        assert names == ["loss_curves.png", "model.json", "model.safetensors"]  # no temp files
        assert (run / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
        for name in ("model.json", "model.safetensors", "loss_curves.png"):
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
    import torch.nn.functional as F

    import xent
    from xent.cli import main

    calls = {"cross_entropy": 0, "binary_cross_entropy_with_logits": 0}
    for name in calls:
        original = getattr(xent, name)

        def counted(*a, _name=name, _original=original, **k):
            calls[_name] += 1
            return _original(*a, **k)

        monkeypatch.setattr(xent, name, counted)

    def forbidden(*a, **k):
        raise AssertionError("torch.nn.functional's loss ran instead of xent's")

    monkeypatch.setattr(F, "cross_entropy", forbidden)
    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", forbidden)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "2", "--quiet", "--out", "r"]) == 0
    # 2 epochs x (5 or 8 batches of 32, then the train and test losses) + 2 for the metrics.
    assert calls == {"binary_cross_entropy_with_logits": 2 * (5 + 2) + 2,
                     "cross_entropy": 2 * (8 + 2) + 2}


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


def test_an_interrupted_save_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    """In-process: interrupt the write of model.json; the old file stays complete, no temp
    files stay behind, and loading the directory fails with a one-line reason, not garbage."""
    from xent.cli import _model, main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "binary", "--epochs", "2", "--quiet", "--out", "m"]) == 0
    before = (tmp_path / "m" / "model.json").read_bytes()

    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst).endswith("model.json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    assert main(["train", "--task", "binary", "--epochs", "3", "--seed", "1", "--quiet",
                 "--out", "m"]) == 130
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "m" / "model.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "loss_curves.png", "model.json", "model.safetensors"]
    # The new weights landed before the interruption: the old model.json's hash rejects them.
    from xent.cli._errors import CLIError

    with pytest.raises(CLIError, match="do not match"):
        _model.load(tmp_path / "m")
