#!/usr/bin/env python3
"""Reading a numeric CSV for `xent train`: seconds and peak memory, pandas against the reader
it replaced (issue 20).

Writes a CSV of random numbers (20 feature columns, 12 significant digits, a 3-class label
column) of about ``--mb`` megabytes, then reads it in a fresh process each way and reports the
wall time, the peak resident memory (``ru_maxrss``) and how much it grew from after the imports
to the end, over the file's size:

- ``pandas``: `xent.cli._data.read_training_csv` as `xent train` calls it, then the encoding
  fitted on 80% of the rows (what the run holds before training);
- ``csv module`` (before issue 20): the hand-written reader of xent 0.1, taken from git
  (``git show REV:src/xent/cli/_data.py``, default REV ``791fef7``), which held Python floats.

    python benchmarks/bench_read_csv.py --mb 200
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_csv(path: Path, mb: int, digits: int = 12) -> None:
    rng = np.random.default_rng(0)
    row_bytes = 20 * 19 + 2
    n = mb * (1 << 20) // row_bytes
    with path.open("w") as f:
        f.write(",".join([f"x{i}" for i in range(20)] + ["label"]) + "\n")
        for start in range(0, n, 100_000):
            block = rng.normal(size=(min(100_000, n - start), 20))
            labels = rng.integers(0, 3, len(block))
            lines = [",".join(f"{v:.{digits}g}" for v in row) + f",c{t}"
                     for row, t in zip(block, labels, strict=True)]
            f.write("\n".join(lines) + "\n")


NEW = """
import time, resource, numpy as np
from xent.cli import _data, _columns
import sklearn.compose, sklearn.impute, sklearn.preprocessing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
t = _data.read_training_csv({path!r}, "label")
fit = np.arange(int(0.8 * t.n_rows))
enc, mean, scale = _columns.fit_encoder(t.frame.iloc[fit], t.numeric, t.categorical)
X = enc.transform(t.frame)
print(time.perf_counter() - t0, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

ONLY = NEW.replace("fit = np.arange", "fit = None and np.arange").split("enc, mean")[0] + """
print(time.perf_counter() - t0, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

OLD = """
import sys, time, resource, types, importlib.util
spec = importlib.util.spec_from_file_location("xent.cli._old_data", {old!r},
                                              submodule_search_locations=None)
mod = importlib.util.module_from_spec(spec)
sys.modules["xent.cli._old_data"] = mod
spec.loader.exec_module(mod)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
t = mod.read_training_csv({path!r}, "label")
print(time.perf_counter() - t0, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--digits", type=int, default=12, help="significant digits of the numbers")
    p.add_argument("--rev", default="791fef7", help="the git revision of the old reader")
    args = p.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "numbers.csv"
        make_csv(path, args.mb, args.digits)
        size = path.stat().st_size
        old = Path(tmp) / "_old_data.py"
        old_text = subprocess.run(["git", "show", f"{args.rev}:src/xent/cli/_data.py"],
                                  cwd=ROOT, capture_output=True, text=True, check=True).stdout
        old.write_text(old_text)
        print(f"# {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"a {size / 2**20:.0f} MiB CSV of 20 numeric columns ({args.digits} significant "
              "digits) and a label")
        print("| reader | seconds | peak memory | of which after the imports | that / file size |")
        print("|---|---|---|---|---|")
        for name, code in (("pandas (xent train now): reading", ONLY),
                           ("pandas (xent train now): reading and the encoding", NEW),
                           ("csv module (before): reading", OLD)):
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(code).format(
                path=str(path), old=str(old))], capture_output=True, text=True, check=True)
            seconds, before_kib, peak_kib = out.stdout.split()
            peak, grown = int(peak_kib) * 1024, (int(peak_kib) - int(before_kib)) * 1024
            print(f"| {name} | {float(seconds):.1f} | {peak / 2**20:.0f} MiB | "
                  f"{grown / 2**20:.0f} MiB | {grown / size:.2f} |", flush=True)


if __name__ == "__main__":
    main()
