"""docs/cli.md's examples run as tests (Sybil parses the document).

- ```` ```python ```` blocks run: those starting with ``>>>`` as doctests, the others as code
  (in the document's directory: they write the files the sessions use).
- ```` ```console ```` blocks are command-line sessions: each ``$ COMMAND`` line runs in
  ``bash`` in one fresh directory shared by the whole document (so the sessions build on each
  other, as a reader's would), with ``xent`` on the ``PATH``; its standard output and error
  together must equal the lines below it, up to the next ``$`` line, under the rule docs/cli.md
  states (`normalise`): the seconds of a report's ``time`` line may differ, trailing blanks
  and blank lines at the end are ignored, and a line ``...`` stands for any lines.
- ```` ```text ```` blocks are not run (progress bars, benchmark tables, fault cases that need a
  FIFO or a hostile file: tests/test_cli_faults.py runs those).

A session that trains or predicts (``xent train``, ``xent predict``, ``xent examples``), and
Python that fits an ``XentClassifier``, is marked ``slow``. Before an example, the earlier code
blocks run (they write the files and import the names it uses), and before a slow session the
earlier slow sessions too (the models it reads), whichever tests are selected.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil")

from sybil import Sybil  # noqa: E402
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
SLOW_COMMANDS = re.compile(r"\bxent (train|predict|examples)\b(?!.*--help)")
_TIME = re.compile(r"^(  time +)\d+\.\d+ s")


def normalise(lines: list[str]) -> list[str]:
    """The rule of docs/cli.md: the seconds of a ``time`` line are not compared; trailing
    blanks and trailing empty lines are dropped.

    >>> normalise(["  time       2.47 s (training and evaluation)  ", ""])
    ['  time       N s (training and evaluation)']
    """
    out = [_TIME.sub(r"\1N s", line.rstrip()) for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` fits ``expected``, where a line ``...`` stands for any lines.

    >>> matches(["a", "...", "d"], ["a", "b", "c", "d"]), matches(["a"], ["a", "b"])
    (True, False)
    """
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def sessions(text: str) -> list[tuple[str, list[str]]]:
    """The ``(command, expected output lines)`` of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


class ConsoleParser(CodeBlockParser):
    """```console blocks: run each command, compare its output (`normalise`, `matches`)."""

    language = "console"

    def evaluate(self, example) -> str | None:
        cwd = example.namespace["__cwd__"]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
        for command, expected in sessions(example.parsed):
            proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
            got = normalise(proc.stdout.splitlines())
            want = normalise(expected)
            if not matches(want, got):
                return (f"$ {command}\n--- docs/cli.md says:\n" + "\n".join(want)
                        + "\n--- the program printed:\n" + "\n".join(got))
        return None


def _examples():
    doc = Sybil(parsers=[PythonCodeBlockParser(doctest_optionflags=_flags()),
                         ConsoleParser()]).parse(DOC)
    return doc, list(doc.examples())


def _flags() -> int:
    import doctest

    return doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _kind(example) -> str:
    """ConsoleParser (a session), PythonEvaluator (a code block) or DocTestEvaluator."""
    evaluator = example.region.evaluator
    return type(getattr(evaluator, "__self__", evaluator)).__name__


def _slow(example) -> bool:
    """A session that trains or predicts, or Python that fits an XentClassifier."""
    if _kind(example) == "ConsoleParser":
        return bool(SLOW_COMMANDS.search(example.parsed))
    return ".fit(" in str(example.parsed) and "XentClassifier" in str(example.parsed)


def _is_code(example) -> bool:
    """A python block that is not a doctest: it writes files the sessions use."""
    return _kind(example) == "PythonEvaluator"


DOCUMENT, EXAMPLES = _examples() if DOC.exists() else (None, [])
_done: set[int] = set()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs_cli")
    DOCUMENT.namespace["__cwd__"] = str(path)
    old = os.getcwd()
    os.chdir(path)  # the python code blocks write their files here
    try:
        yield path
    finally:
        os.chdir(old)


def _run(i: int) -> None:
    if i in _done:
        return
    _done.add(i)
    EXAMPLES[i].evaluate()  # raises SybilFailure, with the difference, when it does not fit


@pytest.mark.parametrize("i", [
    pytest.param(i, marks=[pytest.mark.slow] if _slow(e) else [], id=f"line{e.line}")
    for i, e in enumerate(EXAMPLES)])
def test_docs_cli_example(workdir, i):
    for j in range(i):  # what it needs: the earlier code blocks (files, names) and, for a
        # slow session, the earlier slow sessions (the models they train)
        if _is_code(EXAMPLES[j]) or (_slow(EXAMPLES[i]) and _kind(EXAMPLES[i]) == "ConsoleParser"
                                     and _slow(EXAMPLES[j])):
            _run(j)
    _run(i)


def test_docs_cli_has_examples_of_each_kind():
    kinds = {_kind(e) for e in EXAMPLES}
    assert kinds == {"ConsoleParser", "PythonEvaluator", "DocTestEvaluator"}, kinds


def regenerate(path: Path = DOC) -> None:
    """Rewrite the output of every console session of docs/cli.md from the program (run in a
    fresh directory, code blocks included); a session whose output already fits is kept as
    written (its ``...`` lines too). ``python tests/test_docs_cli.py --write``."""
    import tempfile

    text = path.read_text()
    doc, examples = _examples()
    out, pos = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        doc.namespace["__cwd__"] = tmp
        old = os.getcwd()
        os.chdir(tmp)
        try:
            for e in examples:
                if _kind(e) != "ConsoleParser":
                    try:
                        e.evaluate()
                    except Exception as failure:  # reported; the doctest is fixed by hand
                        print(f"line {e.line}: {failure}", file=sys.stderr)
                    continue
                env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                       f"{os.environ['PATH']}", "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
                block = []
                for command, expected in sessions(e.parsed):
                    proc = subprocess.run(["bash", "-c", command], cwd=tmp, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    got = [line.rstrip() for line in proc.stdout.splitlines()]
                    keep = matches(normalise(expected), normalise(got))
                    block += [f"$ {command}", *(expected if keep else got)]
                start = text.index(e.parsed, pos)
                out.append(text[pos:start])
                new = "\n".join(block).rstrip("\n") + "\n"
                out.append(new)
                pos = start + len(e.parsed)
        finally:
            os.chdir(old)
    out.append(text[pos:])
    path.write_text("".join(out))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        regenerate()
    else:
        raise SystemExit("usage: python tests/test_docs_cli.py --write")
