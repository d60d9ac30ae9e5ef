"""Tabular data for the classifiers: the tutorials' built-in datasets and validated CSV files.

Reading a CSV checks every value before any training starts, and every error names the file,
the row (1-based, not counting the header), the line in the file and the column, and says what
was expected and what arrived. Only NumPy and the standard library are needed here, so bad input
is reported before the heavy imports (PyTorch, scikit-learn) happen.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._errors import CLIError

# The tutorials' make_classification calls (000_*.txt, "A Neural Network for ... Classification").
BUILTIN = {
    "binary": dict(n_samples=200, n_features=4, n_informative=2, n_redundant=0, n_classes=2,
                   random_state=42),
    "multiclass": dict(n_samples=300, n_features=4, n_informative=3, n_redundant=0, n_classes=3,
                       random_state=42),
}

_MISSING_LABELS = {"", "nan"}


@dataclass
class Table:
    """Features, labels and where they came from.

    ``X`` is ``(N, D)`` float64, ``y`` the ``(N,)`` int64 index of each row's label in
    ``classes`` (sorted: numerically for integer labels, else as strings); ``y`` is None for
    prediction input, which has no target column.
    """

    X: np.ndarray
    features: list[str]
    source: str
    target: str | None = None
    classes: list[int] | list[str] = field(default_factory=list)
    y: np.ndarray | None = None


def builtin(task: str) -> Table:
    """The tutorials' data for ``task`` ('binary' or 'multiclass'), made as they make it."""
    try:
        from sklearn.datasets import make_classification
    except ImportError:  # pragma: no cover - depends on the installation
        from ._errors import missing_extra

        raise missing_extra("scikit-learn") from None
    args = BUILTIN[task]
    X, y = make_classification(**args)
    desc = ", ".join(f"{k}={v}" for k, v in args.items())
    return Table(
        X=np.asarray(X, dtype=np.float64),
        features=[f"x{i + 1}" for i in range(X.shape[1])],
        source=f"built-in make_classification({desc})",
        target="y",
        classes=[int(c) for c in np.unique(y)],
        y=np.asarray(y, dtype=np.int64),
    )


def _open_rows(path: Path):
    """The header and an iterator of ``(row_number, line_number, fields)`` of a CSV file."""
    if not path.exists():
        raise CLIError(f"{path}: file not found")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, expected a CSV file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except PermissionError:
        raise CLIError(f"{path}: permission denied") from None
    except OSError as e:
        raise CLIError(f"{path}: cannot read the file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise CLIError(
            f"{path}: not UTF-8 text (byte {e.start} is {text_byte(e)}); expected a CSV file"
        ) from None
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # blank lines before the header
    except csv.Error as e:
        raise CLIError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise CLIError(f"{path}: the file is empty; expected a header row of column names")
    header = [h.strip() for h in header]
    for j, name in enumerate(header):
        if not name:
            raise CLIError(f"{path}, line {reader.line_num}: column {j + 1} of the header has "
                           "no name; expected a name for every column")
        if name in header[:j]:
            raise CLIError(f"{path}, line {reader.line_num}: column name {name!r} appears twice "
                           "in the header; expected unique names")

    def rows():
        number = 0
        try:
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue  # blank line
                number += 1
                if len(fields) != len(header):
                    raise CLIError(
                        f"{path}, row {number} (line {reader.line_num}): expected "
                        f"{len(header)} fields as in the header, found {len(fields)}"
                    )
                yield number, reader.line_num, fields
        except csv.Error as e:
            raise CLIError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None

    return header, rows()


def text_byte(e: UnicodeDecodeError) -> str:
    """The offending byte of a decoding error, as ``0xNN``."""
    return f"0x{e.object[e.start]:02x}"


def _number(path: Path, row: int, line: int, column: str, raw: str) -> float:
    s = raw.strip()
    where = f"{path}, row {row} (line {line}), column {column!r}"
    if not s:
        raise CLIError(f"{where}: missing value; expected a finite number")
    try:
        v = float(s)
    except ValueError:
        raise CLIError(f"{where}: expected a number, found {raw!r}") from None
    if not math.isfinite(v):
        raise CLIError(f"{where}: expected a finite number, found {raw!r}")
    return v


def _classes(labels: list[str]) -> tuple[list[int] | list[str], np.ndarray]:
    """Sorted distinct labels (as ints when every label is an integer) and each row's index.

    >>> _classes(["dog", "cat", "dog"])
    (['cat', 'dog'], array([1, 0, 1]))
    >>> _classes(["10", "2", "7", "2"])  # integers sort as numbers
    ([2, 7, 10], array([2, 0, 1, 0]))
    """
    try:
        as_int = [int(s) for s in labels]
    except ValueError:
        as_int = None
    keys: list = as_int if as_int is not None else labels
    classes = sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[k] for k in keys], dtype=np.int64)


def read_training_csv(path: str | Path, target: str) -> Table:
    """Read a CSV with a header: numeric feature columns and the ``target`` column of labels.

    Raises `CLIError` naming the file, row and column for a missing target column, a
    non-numeric, missing, nan or infinite feature value, a missing label, fewer than two
    rows or a single class.
    """
    path = Path(path)
    header, rows = _open_rows(path)
    if target not in header:
        raise CLIError(f"{path}: no target column {target!r}; the columns are "
                       f"{', '.join(map(repr, header))}")
    t = header.index(target)
    features = [h for j, h in enumerate(header) if j != t]
    if not features:
        raise CLIError(f"{path}: only the target column {target!r}; expected at least one "
                       "numeric feature column beside it")
    X, labels = [], []
    for row, line, fields in rows:
        label = fields[t].strip()
        if label.lower() in _MISSING_LABELS:
            raise CLIError(f"{path}, row {row} (line {line}), column {target!r}: missing class "
                           f"label (found {fields[t]!r})")
        labels.append(label)
        X.append([_number(path, row, line, header[j], f)
                  for j, f in enumerate(fields) if j != t])
    if len(X) < 2:
        raise CLIError(f"{path}: {len(X)} data row(s); expected at least 2 to train and test on")
    classes, y = _classes(labels)
    if len(classes) < 2:
        raise CLIError(f"{path}: column {target!r} holds a single class ({classes[0]!r}) in all "
                       f"{len(X)} rows; expected at least 2 classes")
    if len(classes) > len(X) / 2:
        raise CLIError(f"{path}: column {target!r} has {len(classes)} distinct values in "
                       f"{len(X)} rows; expected class labels, each on several rows "
                       "(is it a continuous target?)")
    return Table(X=np.array(X, dtype=np.float64), features=features, source=str(path),
                 target=target, classes=classes, y=y)


def read_prediction_csv(path: str | Path, features: list[str], target: str | None) -> Table:
    """Read the rows to predict: exactly the model's feature columns, in any order.

    The model's target column may be present too (it is ignored); any other column, or a
    missing feature column, is an error that names the columns.
    """
    path = Path(path)
    header, rows = _open_rows(path)
    missing = [f for f in features if f not in header]
    extra = [h for h in header if h not in features and h != target]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        raise CLIError(f"{path}: the columns do not match the model's ({'; '.join(parts)}); "
                       f"expected the features {', '.join(map(repr, features))}")
    cols = [header.index(f) for f in features]
    X = [[_number(path, row, line, header[j], fields[j]) for j in cols]
         for row, line, fields in rows]
    if not X:
        raise CLIError(f"{path}: a header but no data rows; expected at least one row to predict")
    return Table(X=np.array(X, dtype=np.float64), features=list(features), source=str(path))
