"""`xent examples` (run as a user runs it): every worked example of the tutorials, xent beside
PyTorch, all agreeing; the values are checked against what the tutorials printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def run(code: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.fixture(scope="module")
def output() -> str:
    proc = run(["-m", "xent", "examples"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # in particular: no RuntimeWarning from the naive formula
    return proc.stdout


def value_of(output: str, name: str, occurrence: int = 0) -> str:
    """The rest of the ``occurrence``-th line named ``name``: xent's value comes first."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().startswith(name + "  ")]
    return lines[occurrence][len(name):].strip()


def test_every_value_agrees_with_pytorch(output):
    assert "✗" not in output
    assert re.search(r"All \d+ values agree\.", output)
    assert output.count("✓") >= 27


# What the tutorials printed (000_*.txt, 001_*.txt), rounded to the digits shown here.
@pytest.mark.parametrize("name, occurrence, printed", [
    ("softmax(x)", 0, "[0.6590 0.2424 0.0986]"),
    ("sigmoid(x)", 0, "[0.8808 0.7311 0.5250]"),
    ("-log p[0], p = [0.4, 0.1, 0.3, 0.2]", 0, "0.916291"),
    ("-log p[0], p = [0.9, 0.05, 0.03, 0.02]", 0, "0.105361"),
    ("sigmoid(logits)", 0, "[0.8808 0.2689 0.6225]"),
    ("BCE(sigmoid(logits), y)", 0, "0.304756"),
    ("softmax(logits)", 0, "[0.5745 0.2114 0.0859 0.1282]"),
    ("cross_entropy", 0, "0.658979"),
    ("good: p = [0.7, 0.2, 0.1]", 0, "0.356675"),
    ("bad: p = [0.1, 0.3, 0.6]", 0, "2.302585"),
    ("loss good: [2.0, 1.0, 0.1]", 0, "0.417030"),
    ("loss bad: [0.5, 2.0, 0.3]", 0, "1.840616"),
    ("prediction good", 0, "[0]"),
    ("prediction bad", 0, "[1]"),
    ("loss good", 0, "0.2834"),  # batch example
    ("loss bad", 0, "1.6418"),
    ("predictions good", 0, "[2, 0, 1]"),
    ("predictions bad", 0, "[0, 2, 0]"),
    ("loss good", 1, "0.3018"),  # fruit example
    ("loss bad", 1, "1.6242"),
    ("predictions good", 1, "[2, 0, 1]"),
    ("predictions bad", 1, "[0, 2, 1]"),
    ("exp(x)/sum(exp(x))", 0, "nan"),  # the naive formula on [1000, 1]
    ("softmax(x)", 1, "[1.0000 0.0000]"),
])
def test_values_are_the_tutorials(output, name, occurrence, printed):
    rest = value_of(output, name, occurrence)
    if printed == "nan":
        assert "nan" in rest.split("]")[0]
        return
    # xent's value: a bracketed vector or a scalar, compared at the digits the tutorial shows.
    shown = rest[: rest.index("]") + 1] if rest.startswith("[") else rest.split()[0]
    got = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", shown)]
    want = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", printed)]
    decimals = len(printed.split(".")[1].split()[0].rstrip("]")) if "." in printed else 0
    assert [round(v, decimals) for v in got] == want, f"{name}: {shown}, tutorial: {printed}"


def test_without_pytorch_xent_alone():
    """Where PyTorch is not installed, the examples are xent's values alone."""
    code = ("import sys; sys.modules['torch'] = None; from xent.cli import main; "
            "sys.exit(main(['examples']))")
    proc = run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch is not installed" in proc.stdout
    assert "✓" not in proc.stdout and "0.658979" in proc.stdout
