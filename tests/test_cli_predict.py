"""End-to-end tests of `xent predict` (in a subprocess, as a user runs it): the model round trip,
and models that were tampered with, truncated or do not match their files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error

TIMEOUT = 300


def xent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m xent ARGS`` in ``cwd`` with the standard streams captured."""
    return subprocess.run([sys.executable, "-m", "xent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def write_features(path: Path, names: list[str], X: np.ndarray) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows([[repr(float(v)) for v in row] for row in X])  # repr: exact round trip
    return path


def read_predictions(text: str) -> tuple[list[str], list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    return header, [r[0] for r in body], np.array([[np.float32(v) for v in r[1:]] for r in body])


# The short runs the models below come from: (epochs, seed) per task.
RUNS = {"binary": (10, 0), "multiclass": (15, 5)}


def _train_cli(root: Path, task: str) -> Path:
    epochs, seed = RUNS[task]
    ok(xent("train", "--task", task, "--epochs", str(epochs), "--seed", str(seed), "--out", task,
            "--quiet", cwd=root))
    return root / task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A binary model trained by the command line (short run)."""
    return _train_cli(tmp_path_factory.mktemp("model"), "binary")


@pytest.fixture(scope="module")
def multiclass_dir(tmp_path_factory) -> Path:
    """A three-class model trained by the command line (short run)."""
    return _train_cli(tmp_path_factory.mktemp("model"), "multiclass")


@pytest.fixture
def copy(model_dir, tmp_path) -> Path:
    """A private copy of the trained model, to tamper with."""
    return Path(shutil.copytree(model_dir, tmp_path / "m"))


@pytest.fixture
def rows_csv(model_dir, tmp_path) -> Path:
    from sklearn.datasets import make_classification

    X, _ = make_classification(n_samples=200, n_features=4, n_informative=2, n_redundant=0,
                               n_classes=2, random_state=42)
    return write_features(tmp_path / "rows.csv", ["x1", "x2", "x3", "x4"], X[:25])


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_round_trip_gives_the_in_memory_probabilities(tmp_path, task, request):
    """Train in a subprocess, train the same run here in memory (same seed: same weights),
    predict in a subprocess: the printed probabilities are the in-memory ones, exactly, and an
    independent forward pass from the safetensors file agrees."""
    import torch
    from safetensors.torch import load_file
    from sklearn.metrics import log_loss

    from xent.cli import _data, _train

    model = request.getfixturevalue("model_dir" if task == "binary" else "multiclass_dir")
    epochs, seed = RUNS[task]
    recipe = dataclasses.replace(_train.RECIPES["default"], epochs=epochs)
    result = _train.train(_data.builtin(task), task, recipe, seed=seed)
    X_test, y_test = result.split.raw_test, result.split.y_test
    write_features(tmp_path / "test.csv", ["x1", "x2", "x3", "x4"], X_test)
    header, labels, printed = read_predictions(
        ok(xent("predict", "--model", str(model), "--data", "test.csv", cwd=tmp_path)).stdout)
    k = 2 if task == "binary" else 3
    assert header == ["predicted", *(f"prob_{c}" for c in range(k))]

    in_memory = result.classifier.proba(X_test)
    assert in_memory.dtype == np.float32
    np.testing.assert_array_equal(printed, in_memory)
    assert [int(s) for s in labels] == list(result.classifier.predict(X_test))

    # Independent forward pass: the tutorial's layers written out with plain torch ops.
    meta = json.loads((model / "model.json").read_text())
    w = load_file(model / "model.safetensors")
    x = torch.tensor((X_test - meta["scaler"]["mean"]) / meta["scaler"]["scale"],
                     dtype=torch.float32)
    z = torch.relu(x @ w["linear1.weight"].T + w["linear1.bias"]) @ w["linear2.weight"].T \
        + w["linear2.bias"]
    z = z / torch.tensor(meta["calibration"]["temperature"], dtype=torch.float32)  # T-scaling
    if task == "binary":
        p1 = torch.sigmoid(z[:, 0]).numpy()
        expected = np.stack([1 - p1, p1], axis=1)
    else:
        expected = torch.softmax(z, dim=1).numpy()
    np.testing.assert_allclose(printed, expected, rtol=2e-6, atol=1e-7)

    # The metrics recorded at training time are those of the printed probabilities.
    metrics = meta["metrics"]
    p = printed.astype(np.float64)
    p /= p.sum(axis=1, keepdims=True)  # float32 rows sum to 1 within rounding; log_loss checks
    assert metrics["calibration"]["after"]["log_loss"] == pytest.approx(
        log_loss(y_test, p, labels=list(range(k))), rel=1e-5)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(np.array(labels, int) == y_test))


def test_predict_writes_the_output_file_and_accepts_any_column_order(model_dir, rows_csv,
                                                                      tmp_path):
    to_stdout = ok(xent("predict", "--model", str(model_dir), "--data", str(rows_csv),
                        cwd=tmp_path)).stdout
    # The same rows with the columns in another order and the target column added.
    src = list(csv.reader(rows_csv.open()))
    order = [2, 0, 3, 1]
    with (tmp_path / "shuffled.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(src[0][j] for j in order), "y"])
        w.writerows([[*(r[j] for j in order), "1"] for r in src[1:]])
    proc = ok(xent("predict", "--model", str(model_dir / "model.json"), "--data",
                   "shuffled.csv", "--output", "out.csv", cwd=tmp_path))
    assert proc.stdout == "" and "wrote 25 predictions" in proc.stderr
    assert (tmp_path / "out.csv").read_text() == to_stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_flipped_byte_in_the_weights_is_caught(copy, rows_csv, tmp_path):
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # a bit of the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "model.safetensors", "do not match", "SHA-256")


def test_truncated_weights_are_caught(copy, rows_csv, tmp_path):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "model.safetensors", "truncated")


def test_truncated_model_json_is_caught(copy, rows_csv, tmp_path):
    text = (copy / "model.json").read_bytes()
    (copy / "model.json").write_bytes(text[: len(text) // 3])
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "model.json", "not valid JSON", "truncated")


def test_missing_weights_file_is_caught(copy, rows_csv, tmp_path):
    (copy / "model.safetensors").unlink()
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "model.safetensors", "not found")


def _edit_json(path: Path, edit) -> None:
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))


def test_architecture_that_does_not_match_the_weights_is_caught(copy, rows_csv, tmp_path):
    _edit_json(copy, lambda m: m["architecture"].update(hidden_size=7))
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "linear1.weight", "expected torch.float32 (7, 4)")


def test_class_list_that_does_not_match_the_outputs_is_caught(copy, rows_csv, tmp_path):
    _edit_json(copy, lambda m: m.update(classes=[0, 1, 2]))
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "binary model with 3 classes cannot have 1 outputs")


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(copy, rows_csv, tmp_path):
    """Even with its hash recorded, a pickle is not loaded: safetensors holds tensors only."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Payload())
    (copy / "model.safetensors").write_bytes(data)
    _edit_json(copy, lambda m: m["weights"].update(sha256=hashlib.sha256(data).hexdigest()))
    one_line_error(xent("predict", "--model", str(copy), "--data", str(rows_csv), cwd=tmp_path),
                   "not a safetensors file")
    assert not marker.exists()


def test_not_an_xent_model(tmp_path, rows_csv):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.json").write_text('{"hello": 1}')
    one_line_error(xent("predict", "--model", "other", "--data", str(rows_csv), cwd=tmp_path),
                   "not an xent model")
    one_line_error(xent("predict", "--model", "nowhere", "--data", str(rows_csv), cwd=tmp_path),
                   "nowhere", "model not found")


def test_predict_csv_with_other_columns_than_the_model(model_dir, tmp_path):
    """An extra column is ignored with a note on stderr (tests/test_cli_faults.py has --keep);
    a missing feature column is an error naming it."""
    X = np.zeros((3, 4))
    write_features(tmp_path / "plain.csv", ["x1", "x2", "x3", "x4"], X)
    write_features(tmp_path / "extra.csv", ["x1", "x2", "x3", "x4", "colour"],
                   np.c_[X, np.ones(3)])
    proc = ok(xent("predict", "--model", str(model_dir), "--data", "extra.csv", cwd=tmp_path))
    assert proc.stdout == ok(xent("predict", "--model", str(model_dir), "--data", "plain.csv",
                                  cwd=tmp_path)).stdout
    assert proc.stderr.startswith("xent: note: extra.csv: ignoring the column(s) 'colour'")
    quiet = ok(xent("predict", "--model", str(model_dir), "--data", "extra.csv", "--quiet",
                    cwd=tmp_path))
    assert quiet.stderr == ""
    write_features(tmp_path / "missing.csv", ["x1", "x2", "x4"], X[:, :3])
    one_line_error(xent("predict", "--model", str(model_dir), "--data", "missing.csv",
                        cwd=tmp_path), "missing.csv", "'x3' are missing")


def test_predict_csv_with_a_bad_value(model_dir, tmp_path):
    (tmp_path / "bad.csv").write_text("x1,x2,x3,x4\n1,2,3,4\n1,2,inf,4\n")
    one_line_error(xent("predict", "--model", str(model_dir), "--data", "bad.csv",
                        cwd=tmp_path), "bad.csv, row 2 (line 3), column 'x3'", "'inf'")
    assert not os.path.exists(tmp_path / "out.csv")


def test_predict_csv_that_does_not_exist(model_dir, tmp_path):
    one_line_error(xent("predict", "--model", str(model_dir), "--data", "nope.csv",
                        cwd=tmp_path), "nope.csv: file not found")
