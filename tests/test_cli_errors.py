"""Bad input to any command: one line ``xent: error: ...`` on stderr that says what is wrong and
where (file, row, column), exit status 2, never a traceback. Run as a user runs the commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line_error

GOOD = "a,b,label\n1.5,2,cat\n3,4,dog\n5,6,cat\n7,8,dog\n9,10,cat\n"


def xent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m xent ARGS`` in ``cwd`` with the standard streams captured."""
    return subprocess.run([sys.executable, "-m", "xent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# (CSV text, --target, the fragments the message must hold)
BAD_CSV = {
    "non-numeric": (GOOD.replace("5,6,cat", "5,six,cat"), "label",
                    ["data.csv, row 3 (line 4), column 'b'", "expected a number", "'six'"]),
    "decimal comma": (GOOD.replace("1.5,", '"1,5",').replace("3,4", '"3,25",4'), "label",
                      ["data.csv, row 1 (line 2), column 'a'", "decimal comma", "--decimal"]),
    "inf": (GOOD.replace("9,10", "9,-inf"), "label",
            ["data.csv, row 5 (line 6), column 'b'", "finite number", "'-inf'"]),
    "every label missing": ("a,b,label\n1,2,NA\n3,4,\n", "label",
                            ["data.csv", "0 data row(s) with a label"]),
    "long row": (GOOD.replace("7,8,dog", "7,8,dog,x"), "label",
                 ["data.csv, row 4 (line 5)", "expected 3 fields", "found 4"]),
    "unnamed middle column": ("a,,label\n1,2,x\n3,4,y\n", "label",
                              ["data.csv", "column 2 of the header has no name"]),
    "single class": (GOOD.replace("dog", "cat"), "label",
                     ["data.csv", "column 'label'", "single class", "'cat'"]),
    "missing target column": (GOOD, "species",
                              ["data.csv", "no target column 'species'", "'a', 'b', 'label'"]),
    "ragged row": (GOOD.replace("7,8,dog", "7,dog"), "label",
                   ["data.csv, row 4 (line 5)", "expected 3 fields", "found 2"]),
    "empty file": ("", "label", ["data.csv", "empty"]),
    "header only": ("a,b,label\n", "label", ["data.csv", "0 data row"]),
    "duplicate column": ("a,a,label\n1,2,x\n", "label", ["data.csv", "'a' appears twice"]),
    "no features": ("label\ncat\ndog\ncat\ndog\n", "label", ["data.csv", "feature column"]),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_training_csv(tmp_path, case):
    text, target, fragments = BAD_CSV[case]
    (tmp_path / "data.csv").write_text(text)
    one_line_error(xent("train", "--data", "data.csv", "--target", target, cwd=tmp_path),
                   *fragments)
    assert not (tmp_path / "runs").exists()


def test_not_utf8(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"a,b,label\n1,2,\xff\xfe\n")
    one_line_error(xent("train", "--data", "data.csv", "--target", "label", cwd=tmp_path),
                   "data.csv", "not UTF-8")


def test_missing_file(tmp_path):
    one_line_error(xent("train", "--data", "nope.csv", "--target", "y", cwd=tmp_path),
                   "nope.csv", "file not found")
    one_line_error(xent("predict", "--model", "m", "--data", "nope.csv", cwd=tmp_path),
                   "m: model not found")


@pytest.mark.parametrize("args, fragments", [
    (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["predict", "--model", "m", "--data", "d.csv", "--fast"], ["unrecognized arguments: --fast"]),
    (["train", "--epochs", "ten"], ["--epochs", "positive integer", "'ten'"]),
    (["train", "--epochs", "0"], ["--epochs", "positive integer", "'0'"]),
    (["train", "--lr", "-1"], ["--lr", "positive number"]),
    (["train", "--lr", "nan"], ["--lr", "positive number"]),
    (["train", "--test-size", "1.5"], ["--test-size", "between 0 and 1"]),
    (["train", "--task", "regression"], ["--task", "invalid choice: 'regression'"]),
    (["train", "--optimizer", "rmsprop"], ["--optimizer", "invalid choice"]),
    (["train", "--batch-size", "-3"], ["--batch-size", "positive integer or 'full'"]),
    (["train", "--data", "d.csv"], ["--target"]),
    (["train", "--target", "y"], ["--target", "no --data"]),
    (["predict", "--data", "d.csv"], ["required", "--model"]),
    (["fit"], ["invalid choice: 'fit'"]),
    (["train", "--delimiter", "|"], ["--delimiter", "expected one of ',', ';', 'tab'", "'|'"]),
    (["predict", "--model", "m", "--data", "d.csv", "--delimiter", "pipe"],
     ["--delimiter", "'pipe'"]),
    (["predict", "--model", "m", "--data", "d.csv", "--keep"], ["--keep", "expected one"]),
    ([], ["missing command"]),
])
def test_bad_options(tmp_path, args, fragments):
    one_line_error(xent(*args, cwd=tmp_path), *fragments)


def test_task_that_does_not_fit_the_data(tmp_path):
    text = "a,label\n" + "".join(f"{i % 5},{'xyz'[i % 3]}\n" for i in range(12))
    (tmp_path / "data.csv").write_text(text)
    one_line_error(xent("train", "--data", "data.csv", "--target", "label", "--task", "binary",
                        cwd=tmp_path), "--task binary needs 2 classes", "has 3")
    one_line_error(xent("train", "--data", "data.csv", "--target", "label", "--task", "both",
                        cwd=tmp_path), "--task both")


def test_output_directory_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    one_line_error(xent("train", "--task", "binary", "--epochs", "1", "--out", "taken",
                        cwd=tmp_path), "taken", "not a directory")


def test_help_is_not_an_error(tmp_path):
    for args in (["--help"], ["train", "--help"], ["predict", "--help"]):
        proc = xent(*args, cwd=tmp_path)
        assert proc.returncode == 0 and "usage: xent" in proc.stdout


@pytest.mark.parametrize("variable, value", [("XENT_BACKEND", "fast"),
                                             ("XENT_CACHE_LIMIT", "lots")])
@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["examples"],
                                     ["explain", "1", "2", "--target", "0"],
                                     ["predict", "--model", "m", "--data", "d.csv"]])
def test_invalid_environment_is_one_line_in_every_command(tmp_path, variable, value, command):
    import os

    proc = subprocess.run([sys.executable, "-m", "xent", *command], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, variable: value})
    one_line_error(proc, f"environment variable {variable}", repr(value))
    assert not (tmp_path / "runs").exists()


def test_train_help_lists_every_file_it_writes(tmp_path):
    out = xent("train", "--help", cwd=tmp_path).stdout
    for name in ("model.safetensors", "model.json", "loss_curves.png", "reliability.png"):
        assert name in " ".join(out.split()), name


def test_a_diverged_run_leaves_no_new_folder(tmp_path):
    one_line_error(xent("train", "--task", "binary", "--lr", "1e6", "--optimizer", "sgd",
                        "--out", "new/deeper/model", cwd=tmp_path),
                   "diverged", "nothing was written")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    one_line_error(xent("train", "--task", "binary", "--lr", "1e6", "--optimizer", "sgd",
                        "--out", "kept/model", cwd=tmp_path), "diverged")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any(
        (tmp_path / "kept").iterdir())


def test_tasks_py_names_an_unknown_task():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "tasks.py"), "trian"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown task 'trian'" in proc.stderr and "train" in proc.stderr
