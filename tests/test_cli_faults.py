"""The fault cases of issue 11, each run the way it happens: a real ``kill -9`` during an
overwrite, a real FIFO, a real link to ``/dev/zero``, a 5000-character path, a file-size limit
that makes the disk "full", hostile model files, huge values. Every command runs in a
subprocess with a timeout, so a hang fails the test instead of hanging the suite.

The outcome each test requires: a complete, loadable model where there was one, and otherwise
one line ``xent: error: ...`` with exit status 2 (`helpers.one_line_error`), never a traceback,
a hang, or exit 0 with a non-finite number.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import dead_pid, one_line_error, run_xent

TIMEOUT = 120  # seconds before a command counts as hung (imports take ~5 s on a busy machine)
HANG = 20  # the bound, for commands that fail before the heavy imports


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def train(cwd: Path, out: str, *more: str, **kwargs) -> subprocess.CompletedProcess:
    """A short run on the tutorials' binary data."""
    return run_xent("train", "--task", "binary", "--epochs", "3", "--quiet", "--out", out,
                    *more, cwd=cwd, timeout=TIMEOUT, **kwargs)


def features(n: int = 20, seed: int = 3) -> np.ndarray:
    from sklearn.datasets import make_classification

    X, _ = make_classification(n_samples=n, n_features=4, n_informative=2, n_redundant=0,
                               n_classes=2, random_state=seed)
    return X


def write_rows(path: Path, header: list[str], rows, delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def labelled_csv(path: Path, delimiter: str = ",", n: int = 60) -> Path:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=3, n_informative=2, n_redundant=0,
                               n_classes=2, random_state=0)
    return write_rows(path, ["a", "b", "c", "species"],
                      [[*map(repr, map(float, x)), ["setosa", "virginica"][t]]
                       for x, t in zip(X, y, strict=True)], delimiter)


def leftovers(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent)
                  if ".tmp-" in n or ".old-" in n or ".probe-" in n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A binary model written by the command line, to copy and damage."""
    root = tmp_path_factory.mktemp("trained")
    ok(train(root, "m"))
    return root / "m"


@pytest.fixture
def model(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "m"))


@pytest.fixture
def rows(tmp_path) -> Path:
    return write_rows(tmp_path / "rows.csv", ["x1", "x2", "x3", "x4"],
                      [list(map(repr, map(float, r))) for r in features()])


def predict(cwd: Path, model: Path, data: Path, *more: str,
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return run_xent("predict", "--model", str(model), "--data", str(data), *more, cwd=cwd,
                    timeout=timeout)


# ---------------------------------------------------------------------------------------------
# It loses data


def _kill_when(proc: subprocess.Popen, delay: float, watch: Path | None = None) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds from now or, with ``watch``, ``delay`` seconds after a
    ``.tmp-`` folder first appears in ``watch`` (the run started writing its files). Returns
    whether it was killed (False: it exited first)."""
    if watch is not None:
        while proc.poll() is None and not any(".tmp-" in n for n in os.listdir(watch)):
            time.sleep(0.001)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.slow
def test_kill_9_at_random_moments_during_an_overwrite_never_loses_the_model(tmp_path):
    """16 runs overwriting a model, each killed with SIGKILL at a random moment: 8 after a
    delay drawn uniformly over a whole run (imports, training, plots, writing), 8 a random
    0-40 ms after the run's new folder appears (while its files are written, flushed and
    swapped in). After each kill the model loads and predicts through the path `xent predict`
    takes (which restores a folder set aside by the kill); the next run's clean-up then leaves
    no leftovers."""
    from xent.cli import _files, _model

    X = features(50)
    out = tmp_path / "m"
    ok(train(tmp_path, "m"))
    names = sorted(os.listdir(out))
    start = time.perf_counter()
    ok(train(tmp_path, "m", "--seed", "1"))
    duration = time.perf_counter() - start
    previous = (out / "model.json").read_bytes()
    rng = random.Random(20261201)
    outcomes: collections.Counter = collections.Counter()
    for trial in range(16):
        during_save = trial % 2 == 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "xent", "train", "--task", "binary", "--epochs", "3",
             "--quiet", "--out", "m", "--seed", str(trial + 2)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if during_save:
            killed = _kill_when(proc, rng.uniform(0.0, 0.04), watch=tmp_path)
        else:
            killed = _kill_when(proc, rng.uniform(0.0, duration))
        left = sorted({n.split(".")[2].split("-")[0] for n in leftovers(tmp_path)})
        clf, _ = _model.load(out)  # what `xent predict --model m` does first
        proba = clf.proba(X)
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-6)
        assert sorted(os.listdir(out)) == names, f"trial {trial}: {os.listdir(out)}"
        _files.prepare(out)  # what the next `xent train --out m` does first
        assert leftovers(tmp_path) == [], f"trial {trial}"
        now = (out / "model.json").read_bytes()
        _model.load(out)
        state = "exited before the kill" if not killed else \
            "old model" if now == previous else "new model"
        outcomes[("while writing" if during_save else "whole run", state,
                  f"leftovers {left}")] += 1
        previous = now
    report = "; ".join(f"{k[0]}, {k[1]}, {k[2]}: {v}" for k, v in sorted(outcomes.items()))
    print(f"\nkill -9 trials: 16 (a run takes {duration:.1f} s), 0 failures; {report}")


def test_a_reader_during_swaps_always_loads_a_whole_model(trained, tmp_path):
    """In-process: a thread swaps two different models into m over and over while the main
    thread loads m as `xent predict` does. Every load succeeds and gives one of the two
    models: a mix (one's model.json, the other's weights) would fail the SHA-256 check."""
    import threading

    from xent.cli import _files, _model

    clf, meta = _model.load(trained)
    one = {n: (trained / n).read_bytes() for n in os.listdir(trained)}
    with __import__("torch").no_grad():
        for p in clf.net.parameters():
            p.add_(0.25)
    weights = _model.weights_bytes(clf.net)
    other = dict(one, **{_model.WEIGHTS_FILE: weights, _model.META_FILE: _model.json_bytes(
        {**meta, "weights": {**meta["weights"], "sha256": _model.sha256(weights)}})})
    out = tmp_path / "m"
    shutil.copytree(trained, out)
    X = features(10)
    _model.load(out).__getitem__(0).proba(X)  # the imports, before the clock starts
    done, enough = threading.Event(), threading.Event()
    swaps = 0

    def writer():
        nonlocal swaps
        try:
            while not enough.is_set() and swaps < 5000:
                files = other if swaps % 2 == 0 else one
                _files.write_dir(out, lambda f, files=files: [
                    _files.write_file(f / n, b) for n, b in files.items()])
                swaps += 1
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: collections.Counter = collections.Counter()
    try:
        while not done.is_set():
            clf_now, meta_now = _model.load(out)
            assert np.isfinite(clf_now.proba(X)).all()
            seen[meta_now["weights"]["sha256"]] += 1
            if sum(seen.values()) >= 200:
                enough.set()
    finally:
        enough.set()
        thread.join()
    assert set(seen) <= {meta["weights"]["sha256"], _model.sha256(weights)}
    assert len(seen) == 2 and swaps >= 10, (seen, swaps)  # both models seen, many swaps
    assert leftovers(tmp_path) == []


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(model, tmp_path):
    pid = dead_pid()
    for kind in ("tmp", "old"):
        junk = tmp_path / f".m.{kind}-{pid}-abcd1234"
        junk.mkdir()
        (junk / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".m.tmp-{os.getpid()}-0123abcd"  # a run in progress: left alone
    alive.mkdir()
    ok(train(tmp_path, "m", "--seed", "4"))
    assert leftovers(tmp_path) == [alive.name]


def test_a_kill_between_the_two_renames_is_recovered_by_predict(model, rows, tmp_path):
    """The state a kill leaves between 'rename the old folder aside' and 'rename the new one
    into place': no m, the old folder aside, the new one complete. `xent predict` restores the
    old folder and predicts with it; the next run removes the rest."""
    from xent.cli import _data, _model, _predict

    clf, meta = _model.load(model)
    before = _predict.predictions_csv(clf, _data.read_prediction_csv(rows, meta["features"],
                                                                     None))
    pid = dead_pid()
    shutil.copytree(model, tmp_path / f".m.tmp-{pid}-0000beef")
    os.rename(model, tmp_path / f".m.old-{pid}-0000beef")
    assert ok(predict(tmp_path, model, rows)).stdout == before
    assert (model / "model.json").is_file()
    assert leftovers(tmp_path) == [f".m.tmp-{pid}-0000beef"]  # removed by the next run


def test_an_interrupted_save_leaves_the_previous_model_whole(model, tmp_path, monkeypatch):
    """In-process: Ctrl-C while the new folder is written; the old model stays, byte for byte
    and loadable, and the half-written folder is removed."""
    from xent.cli import _files, _model, main

    before = {n: (model / n).read_bytes() for n in os.listdir(model)}
    real = _files.write_file

    def interrupted(path, data):
        if Path(path).name == _model.META_FILE:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_files, "write_file", interrupted)
    assert main(["train", "--task", "binary", "--epochs", "2", "--seed", "1", "--quiet",
                 "--out", "m"]) == 130
    assert {n: (model / n).read_bytes() for n in os.listdir(model)} == before
    assert leftovers(tmp_path) == []
    _model.load(model)


def test_disk_full_while_writing_keeps_the_previous_model(model, tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes fail with EFBIG, as ENOSPC on a full disk)
    stops the write of the plots: one line, the old model whole."""
    before = (model / "model.json").read_bytes()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    one_line_error(train(tmp_path, "m", "--seed", "6", preexec_fn=limit), "m",
                   "cannot write", "File too large")
    assert (model / "model.json").read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["same path", "other spelling", "symlink", "hard link"])
def test_predict_refuses_to_overwrite_its_input(model, rows, tmp_path, how):
    before = rows.read_bytes()
    target = {"same path": rows,
              "other spelling": tmp_path / "." / ".." / tmp_path.name / "rows.csv",
              "symlink": tmp_path / "link.csv", "hard link": tmp_path / "hard.csv"}[how]
    if how == "symlink":
        target.symlink_to(rows)
    if how == "hard link":
        os.link(rows, target)
    one_line_error(predict(tmp_path, model, rows, "--output", str(target)),
                   "--output", "same file as", "rows.csv")
    assert rows.read_bytes() == before


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_predict_refuses_to_overwrite_the_model(model, rows, tmp_path, name):
    before = (model / name).read_bytes()
    one_line_error(predict(tmp_path, model, rows, "--output", str(model / name)),
                   "same file as", name)
    assert (model / name).read_bytes() == before


def test_predict_replaces_its_output_atomically_and_follows_a_symlink(model, rows, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    (tmp_path / "out.csv").symlink_to(real)
    ok(predict(tmp_path, model, rows, "--output", "out.csv", "--quiet"))
    assert (tmp_path / "out.csv").is_symlink()
    assert real.read_text().startswith("predicted,prob_0,prob_1\n")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# It fails with tracebacks


@pytest.mark.parametrize("value", ["1e300", "-1e300", "1.7e308"])
def test_a_huge_feature_value_in_training_is_an_error_naming_row_and_column(tmp_path, value):
    path = labelled_csv(tmp_path / "data.csv")
    lines = path.read_text().splitlines()
    fields = lines[7].split(",")
    fields[1] = value
    lines[7] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    one_line_error(run_xent("train", "--data", "data.csv", "--target", "species", "--epochs",
                            "2", cwd=tmp_path, timeout=TIMEOUT),
                   "data.csv, row 7 (line 8), column 'b'", "too large to standardise")
    assert not (tmp_path / "runs").exists()


def test_a_diverging_run_is_one_line(tmp_path):
    """The issue's command (helper B's check in the training loop): one line naming the
    epoch and suggesting a smaller --lr, never a JSON traceback."""
    one_line_error(run_xent("train", "--task", "binary", "--lr", "1e6", "--optimizer", "sgd",
                            "--epochs", "20", "--out", "d", cwd=tmp_path, timeout=TIMEOUT),
                   "epoch", "--lr")


def test_deeply_nested_model_json(model, rows, tmp_path):
    (model / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(predict(tmp_path, model, rows), "model.json", "nested 100000 levels")


def test_model_json_too_large(model, rows, tmp_path):
    meta = json.loads((model / "model.json").read_text())
    meta["padding"] = "x" * (17 << 20)
    (model / "model.json").write_text(json.dumps(meta))
    one_line_error(predict(tmp_path, model, rows), "model.json", "more than the 16777216")


@pytest.mark.parametrize("option", ["--model", "--data", "--output"])
def test_a_5000_character_path_is_one_line(trained, rows, tmp_path, option):
    long = "d" * 5000
    args = {"--model": [long, str(rows)], "--data": [str(trained), long],
            "--output": [str(trained), str(rows)]}[option]
    more = ["--output", str(tmp_path / long / "p.csv")] if option == "--output" else []
    line = one_line_error(predict(tmp_path, Path(args[0]), Path(args[1]), *more))
    assert len(line) < 600, line  # the path is shortened in the message


def test_a_5000_character_out_is_one_line(tmp_path):
    line = one_line_error(train(tmp_path, "o" * 5000), "5000 characters")
    assert len(line) < 600


@pytest.mark.parametrize("out, fragment", [
    ("/dev/null", "not a directory"),
    ("/proc/xent-out/m", "cannot create"),
    ("/proc/xent-out", "not writable"),  # /proc: read-only even for root
    ("file.txt/m", "not a directory"),
    (".", "directory name"),
])
def test_unusable_out(tmp_path, out, fragment):
    (tmp_path / "file.txt").write_text("a file")
    one_line_error(train(tmp_path, out), fragment)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_out_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(train(tmp_path, "ro/m"), "ro", "not writable")
    finally:
        ro.chmod(0o755)


def test_out_that_is_a_symlink_replaces_the_directory_it_points_to(trained, tmp_path):
    from xent.cli import _files

    shutil.copytree(trained, tmp_path / "run1")
    (tmp_path / "latest").symlink_to("run1")
    _files.write_dir(tmp_path / "latest", lambda f: [
        _files.write_file(f / n, (trained / n).read_bytes()) for n in os.listdir(trained)])
    assert (tmp_path / "latest").is_symlink() and (tmp_path / "run1" / "model.json").is_file()
    assert leftovers(tmp_path) == []


def test_out_that_holds_other_files_is_not_replaced(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    one_line_error(train(tmp_path, "project"), "other files than an xent model")
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"


def test_predict_output_that_cannot_be_written(model, rows, tmp_path):
    one_line_error(predict(tmp_path, model, rows, "--output", "/proc/xent.csv"), "/proc",
                   "cannot write")
    one_line_error(predict(tmp_path, model, rows, "--output", "nodir/p.csv"), "nodir",
                   "directory not found")
    ok(predict(tmp_path, model, rows, "--output", "/dev/null", "--quiet"))


# ---------------------------------------------------------------------------------------------
# It hangs, or gives wrong answers quietly


def test_weights_file_that_is_a_fifo(model, rows, tmp_path):
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    one_line_error(predict(tmp_path, model, rows, timeout=HANG), "model.safetensors", "FIFO")


def test_model_json_that_is_a_fifo(model, rows, tmp_path):
    (model / "model.json").unlink()
    os.mkfifo(model / "model.json")
    one_line_error(predict(tmp_path, model, rows, timeout=HANG), "model.json", "FIFO")


@pytest.mark.parametrize("name", ["model.safetensors", "model.json"])
def test_model_file_that_links_to_dev_zero(model, rows, tmp_path, name):
    (model / name).unlink()
    (model / name).symlink_to("/dev/zero")
    one_line_error(predict(tmp_path, model, rows, timeout=HANG), name, "character device")


def test_weights_file_that_is_a_directory(model, rows, tmp_path):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    one_line_error(predict(tmp_path, model, rows, timeout=HANG), "model.safetensors", "directory")


@pytest.mark.parametrize("command", ["train", "predict"])
@pytest.mark.parametrize("kind", ["/dev/zero", "link to /dev/zero", "fifo", "directory"])
def test_data_that_is_not_a_regular_file(trained, tmp_path, command, kind):
    path = tmp_path / "data.csv"
    if kind == "/dev/zero":
        path = Path("/dev/zero")
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    words = {"fifo": "FIFO", "directory": "directory"}.get(kind, "character device")
    if command == "train":
        proc = run_xent("train", "--data", str(path), "--target", "y", cwd=tmp_path,
                        timeout=HANG)
    else:
        proc = predict(tmp_path, trained, path, timeout=HANG)
    one_line_error(proc, str(path.name), words)


def test_safetensors_header_that_does_not_fit_the_file(model, rows, tmp_path):
    """A header length larger than the file, and tensors declaring more data than there is,
    are caught from the header, before the library reads anything."""
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    one_line_error(predict(tmp_path, model, rows), "model.safetensors",
                   "header declares 1000000000000 bytes")
    n = int.from_bytes(data[:8], "little")
    path.write_bytes(data[:8 + n] + data[8 + n:-4])
    one_line_error(predict(tmp_path, model, rows), "model.safetensors", "truncated")


@pytest.mark.parametrize("value", ["1e300", "-1e300", "1e39", "1.7e308"])
def test_predict_with_a_huge_value_is_an_error_naming_the_row(model, tmp_path, value):
    X = [list(map(repr, map(float, r))) for r in features(5)]
    X[3][2] = value
    data = write_rows(tmp_path / "big.csv", ["x1", "x2", "x3", "x4"], X)
    one_line_error(predict(tmp_path, model, data), "big.csv, row 4 (line 5)", "'x3'",
                   "float32")


@pytest.mark.parametrize("value", ["1e20", "1e30", "1e36", "1e37", "3e38"])
def test_predict_never_prints_a_non_finite_probability(model, tmp_path, value):
    """Values that standardise within float32 but may overflow inside the network: either
    finite probabilities and exit 0, or one line naming the row and exit 2."""
    X = [list(map(repr, map(float, r))) for r in features(5)]
    X[2] = [value, value, "-" + value, value]
    data = write_rows(tmp_path / "big.csv", ["x1", "x2", "x3", "x4"], X)
    proc = predict(tmp_path, model, data)
    if proc.returncode == 0:
        body = list(csv.reader(io.StringIO(proc.stdout)))[1:]
        assert np.isfinite(np.array([r[1:] for r in body], dtype=np.float64)).all()
    else:
        one_line_error(proc, "big.csv, row 3 (line 4)")


# ---------------------------------------------------------------------------------------------
# Users' habits


@pytest.mark.parametrize("delimiter, option", [
    (";", None), ("\t", None), (",", None), (";", ";"), ("\t", "tab"), ("\t", "\\t"),
    (",", ",")])
def test_semicolon_and_tab_files_read_as_comma_files(tmp_path, delimiter, option):
    """In-process (fast): each delimiter, detected or given, reads the same table."""
    from xent.cli import _data

    reference = _data.read_training_csv(labelled_csv(tmp_path / "c.csv"), "species", ",")
    given = _data.parse_delimiter(option) if option else None
    table = _data.read_training_csv(labelled_csv(tmp_path / "d.csv", delimiter), "species",
                                    given)
    assert table.features == ["a", "b", "c"] and table.classes == ["setosa", "virginica"]
    np.testing.assert_array_equal(table.frame.to_numpy(float), reference.frame.to_numpy(float))
    np.testing.assert_array_equal(table.y, reference.y)


def test_semicolon_file_trains_and_tab_file_predicts(tmp_path):
    labelled_csv(tmp_path / "semi.csv", ";")
    labelled_csv(tmp_path / "tabs.csv", "\t")
    ok(run_xent("train", "--data", "semi.csv", "--target", "species", "--epochs", "2",
                "--quiet", "--out", "m", cwd=tmp_path, timeout=TIMEOUT))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["features"] == ["a", "b", "c"] and meta["classes"] == ["setosa", "virginica"]
    proc = ok(run_xent("predict", "--model", "m", "--data", "tabs.csv", "--delimiter", "tab",
                       cwd=tmp_path, timeout=TIMEOUT))
    assert proc.stdout.splitlines()[0] == "predicted,prob_setosa,prob_virginica"
    assert len(proc.stdout.splitlines()) == 61


def test_a_wrong_delimiter_says_how_the_file_was_read(tmp_path):
    labelled_csv(tmp_path / "data.csv", ";")
    one_line_error(run_xent("train", "--data", "data.csv", "--target", "species",
                            "--delimiter", ",", cwd=tmp_path, timeout=TIMEOUT),
                   "no target column 'species'", "comma as delimiter", "--delimiter")
    one_line_error(run_xent("train", "--data", "data.csv", "--target", "species",
                            "--delimiter", "|", cwd=tmp_path, timeout=TIMEOUT),
                   "--delimiter", "expected one of")


def test_predict_keeps_id_columns_and_ignores_other_columns_with_a_note(model, tmp_path):
    X = features(4)
    data = write_rows(tmp_path / "ids.csv", ["colour", "x3", "id", "x1", "x2", "x4", "batch"],
                      [["red", repr(float(r[2])), f"id{i}", repr(float(r[0])),
                        repr(float(r[1])), repr(float(r[3])), "b7"] for i, r in enumerate(X)])
    plain = write_rows(tmp_path / "plain.csv", ["x1", "x2", "x3", "x4"],
                       [list(map(repr, map(float, r))) for r in X])
    expected = ok(predict(tmp_path, model, plain)).stdout.splitlines()
    proc = ok(predict(tmp_path, model, data, "--keep", "id", "--keep", "batch"))
    lines = proc.stdout.splitlines()
    assert lines[0] == "id,batch," + expected[0]
    assert lines[1:] == [f"id{i},b7,{e}" for i, e in enumerate(expected[1:])]
    assert proc.stderr.startswith("xent: note: ") and "'colour'" in proc.stderr
    assert "'batch'" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    one_line_error(predict(tmp_path, model, data, "--keep", "nope"), "no column 'nope'")
    one_line_error(predict(tmp_path, model, data, "--keep", "id", "--keep", "id"), "twice")


def test_fifty_classes_report_the_most_frequent_confusions(tmp_path):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=1000, n_features=6, n_informative=6, n_redundant=0,
                               n_classes=50, n_clusters_per_class=1, random_state=0)
    write_rows(tmp_path / "many.csv", ["f1", "f2", "f3", "f4", "f5", "f6", "label"],
               [[*map(repr, map(float, x)), f"class{t:02d}"] for x, t in zip(X, y, strict=True)])
    proc = ok(run_xent("train", "--data", "many.csv", "--target", "label", "--epochs", "2",
                       "--out", "m", cwd=tmp_path, timeout=TIMEOUT))
    widths = [len(line) for line in proc.stdout.splitlines()
              if not line.strip().startswith(("files", "m/"))]  # the paths of the files
    assert max(widths) <= 110, proc.stdout
    assert "most frequent" in proc.stdout and "class" in proc.stdout and " -> " in proc.stdout
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    cm = np.array(meta["metrics"]["confusion_matrix"])
    assert cm.shape == (50, 50) and cm.sum() == meta["metrics"]["test_rows"]
    # The pairs printed are the largest off-diagonal cells of the stored matrix.
    off = cm.copy()
    np.fill_diagonal(off, 0)
    top = sorted(off.ravel().tolist(), reverse=True)[:3]
    pairs = [re.fullmatch(r"\s+class\d\d -> class\d\d\s+(\d+)", line)
             for line in proc.stdout.splitlines()]
    printed = [int(m.group(1)) for m in pairs if m][:3]
    assert printed == top


def test_plots_name_the_data_file():
    from types import SimpleNamespace

    from xent.cli import _data, _report

    csv_run = SimpleNamespace(table=SimpleNamespace(source="some/dir/fruit.csv"))
    assert _report.data_name(csv_run) == "data: fruit.csv"
    builtin = SimpleNamespace(table=_data.builtin("binary"))
    assert _report.data_name(builtin) == "data: built-in make_classification"
