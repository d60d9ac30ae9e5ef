#!/usr/bin/env python3
"""One self-installing entry point: ``python3 tasks.py {train,test,bench,examples} [args]``.

On first use (and whenever ``pyproject.toml`` or ``requirements/constraints.txt`` change) it
creates ``.venv`` beside this file and installs the package with the extras the task needs,
pinned by ``requirements/constraints.txt`` (torch's version; which build pip installs depends
on the index: README). It needs only Python 3.11+ and the package registry. Afterwards each
task runs inside that environment.

    python3 tasks.py train [xent train options]   # the main job: train the tutorial classifiers
    python3 tasks.py test [pytest options]        # ruff, mypy, then the whole test suite (CI)
    python3 tasks.py test-fast [pytest options]   # the tests not marked slow (under a minute)
    python3 tasks.py bench [benchmark options]    # kernel benchmark (installs JAX too)
    python3 tasks.py examples                     # the tutorials' worked examples
    python3 tasks.py warmup                       # compile every kernel variant ahead
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
EXTRAS = {
    "train": "all",
    "examples": "all",
    "test": "dev",
    "test-fast": "dev",
    "bench": "dev,bench",
    "bench-linear": "dev",
    "warmup": "all",
    "shell": "dev",
}


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _stamp_value(extras: str) -> str:
    h = hashlib.sha256()
    for f in (ROOT / "pyproject.toml", CONSTRAINTS):
        h.update(f.read_bytes())
    return f"{extras}:{h.hexdigest()}"


def ensure_env(extras: str) -> Path:
    """Create .venv and install ``.[extras]`` unless the stamp says it is current."""
    stamp = VENV / ".xent-setup-stamp"
    wanted = _stamp_value(extras)
    if stamp.exists() and wanted in stamp.read_text().splitlines():
        return _python()
    if not _python().exists():
        print(f"[tasks] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pins = CONSTRAINTS.relative_to(ROOT)
    print(f"[tasks] installing xent[{extras}] (pinned by {pins})", flush=True)
    cmd = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q",
           "-c", str(CONSTRAINTS), "-e", f"{ROOT}[{extras}]"]
    subprocess.run(cmd, check=True)
    old = stamp.read_text().splitlines() if stamp.exists() else []
    stamp.write_text("\n".join([*old, wanted]) + "\n")
    return _python()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__.strip())
        if argv:
            print(f"\ntasks.py: unknown task {argv[0]!r}; expected one of "
                  f"{', '.join(EXTRAS)}", file=sys.stderr)
        return 2
    task, rest = argv[0], argv[1:]
    py = str(ensure_env(EXTRAS[task]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if task == "test":
        # The style the project keeps is checked, not hoped for: lint and types before tests.
        lint = [py, "-m", "ruff", "check", "src", "tests", "benchmarks", "tasks.py"]
        for check in (lint, [py, "-m", "mypy"]):
            print(f"[tasks] {' '.join(check[2:])}", flush=True)
            code = subprocess.run(check, cwd=ROOT, env=env).returncode
            if code:
                return code
        cmd = [py, "-m", "pytest", *rest]
    elif task == "test-fast":
        # (the OpInfo file is all slow; ignoring it also skips importing PyTorch's op_db)
        cmd = [py, "-m", "pytest", "-m", "not slow", "--ignore=tests/test_opinfo.py", *rest]
    elif task == "train":
        cmd = [py, "-m", "xent", "train", *rest]
    elif task == "examples":
        cmd = [py, "-m", "xent", "examples", *rest]
    elif task == "warmup":
        cmd = [py, "-m", "xent", "warmup", *rest]
    elif task == "bench":
        cmd = [py, str(ROOT / "benchmarks" / "bench_kernels.py"), *rest]
    elif task == "bench-linear":
        cmd = [py, str(ROOT / "benchmarks" / "bench_linear.py"), *rest]
    else:
        cmd = [py, *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
