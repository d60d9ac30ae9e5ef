"""Tabular data for the classifiers: the tutorials' built-in datasets and validated CSV files.

Reading a CSV checks every value before any training starts, and every error names the file,
the row (1-based, not counting the header), the line in the file and the column, and says what
was expected and what arrived. The file must be a regular file of at most `CSV_LIMIT` bytes (a
FIFO or ``/dev/zero`` is refused, not read); its delimiter (comma, semicolon or tab) is detected
by `csv.Sniffer` unless given. Only NumPy and the standard library are needed here, so bad input
is reported before the heavy imports (PyTorch, scikit-learn) happen.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _files
from ._errors import CLIError

# The tutorials' make_classification calls (000_*.txt, "A Neural Network for ... Classification").
BUILTIN = {
    "binary": dict(n_samples=200, n_features=4, n_informative=2, n_redundant=0, n_classes=2,
                   random_state=42),
    "multiclass": dict(n_samples=300, n_features=4, n_informative=3, n_redundant=0, n_classes=3,
                       random_state=42),
}

_MISSING_LABELS = {"", "nan"}
CSV_LIMIT = 4 << 30  # bytes of a CSV file accepted (the rows are held in memory as floats)
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Table:
    """Features, labels and where they came from.

    ``X`` is ``(N, D)`` float64, ``y`` the ``(N,)`` int64 index of each row's label in
    ``classes`` (sorted: numerically for integer labels, else as strings); ``y`` is None for
    prediction input, which has no target column. ``lines`` ``(N,)`` is the line of the file
    each row was read from (None for built-in data), ``kept`` the raw text of the columns
    `read_prediction_csv` was asked to keep, one list per column.
    """

    X: np.ndarray
    features: list[str]
    source: str
    target: str | None = None
    classes: list[int] | list[str] = field(default_factory=list)
    y: np.ndarray | None = None
    lines: np.ndarray | None = None
    kept: dict[str, list[str]] = field(default_factory=dict)

    def where(self, i: int) -> str:
        """Row ``i`` (0-based) for a message: the file, the 1-based row and the line.

        >>> Table(np.zeros((2, 1)), ["a"], "d.csv", lines=np.array([2, 4])).where(1)
        'd.csv, row 2 (line 4)'
        """
        line = f" (line {int(self.lines[i])})" if self.lines is not None else ""
        return f"{self.source}, row {i + 1}{line}"


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


def parse_delimiter(s: str) -> str:
    r"""The delimiter a ``--delimiter`` value names: ``,`` ``;`` or a tab (``tab``, ``\t``).

    >>> [parse_delimiter(s) for s in (",", ";", "tab", "\\t", "\t", "semicolon")]
    [',', ';', '\t', '\t', '\t', ';']
    """
    names = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    d = names.get(s.strip().lower(), s) if s not in DELIMITERS else s
    if d not in DELIMITERS:
        raise ValueError(f"expected one of ',', ';', 'tab' (or '\\t'), found {s!r}")
    return d


def detect_delimiter(text: str) -> str:
    r"""Comma, semicolon or tab: what `csv.Sniffer` finds in the first 64 KiB, else comma.

    >>> detect_delimiter("a;b;species\n1,5;2;setosa\n")
    ';'
    >>> detect_delimiter("a\tb\tc\n1\t2\t3\n"), detect_delimiter("a,b\n1,2\n")
    ('\t', ',')
    >>> detect_delimiter("label\ncat\n")  # one column: nothing to detect
    ','
    """
    sample = text[:65536]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[:sample.rindex("\n") + 1]  # whole lines only
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        return ","


def _open_rows(path: Path, delimiter: str | None = None):
    """The header, an iterator of ``(row_number, line_number, fields)`` of a CSV file, and the
    delimiter used (``delimiter``, or the one detected)."""
    data = _files.read_regular(path, "a CSV file", CSV_LIMIT)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CLIError(
            f"{path}: not UTF-8 text (byte {e.start} is {text_byte(e)}); expected a CSV file"
        ) from None
    if delimiter is None:
        delimiter = detect_delimiter(text)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
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

    return header, rows(), delimiter


def _read_as(delimiter: str) -> str:
    """How a file was split, for a message about its columns."""
    return (f"read with the {DELIMITERS[delimiter]} as delimiter; give --delimiter if the file "
            "uses another")


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


def _check_scalable(table: Table) -> None:
    """Raise `CLIError` when standardising a column would overflow float64.

    The scaler divides by the standard deviation, computed from squares: a column holding
    1e300 has an infinite variance. The message names the column and its value of largest
    magnitude.
    """
    X = table.X
    with np.errstate(over="ignore", invalid="ignore"):
        mean = X.mean(axis=0)
        var = ((X - mean) ** 2).mean(axis=0)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
    if len(bad):
        j = int(bad[0])
        i = int(np.argmax(np.abs(X[:, j])))
        value = float(X[i, j])
        raise CLIError(f"{table.where(i)}, column {table.features[j]!r}: the value {value!r} is "
                       "too large to standardise (the column's variance overflows float64); "
                       "expected values of magnitude below about 1e150")


def standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The scaler's formula, ``(X - mean) / scale``, in float64, unchecked (overflow gives inf).

    >>> standardise(np.array([[1.0, 4.0]]), np.array([0.0, 2.0]), np.array([2.0, 1.0]))
    array([[0.5, 2. ]])
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.asarray(X, dtype=np.float64) - mean) / scale


def standardised(table: Table, mean: np.ndarray, scale: np.ndarray,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """``(X - mean) / scale`` as float32 (the networks' input), for ``table.X`` or its ``rows``.

    Args:
        table: the data; ``X`` is ``(N, D)``.
        mean, scale: the scaler, ``(D,)`` each.
        rows: indices into ``table`` (default: all rows), so that messages name the file's row.

    Returns:
        ``(len(rows), D)`` float32.

    Raises:
        CLIError: a value whose standardised form is beyond float32's range (about 3.4e38),
            naming the file, row, line and column.

    >>> t = Table(np.array([[1.0, 2.0], [3.0, 1e300]]), ["a", "b"], "d.csv",
    ...           lines=np.array([2, 3]))
    >>> standardised(t, np.array([2.0, 0.0]), np.array([1.0, 1.0]), rows=np.array([0]))
    array([[-1.,  2.]], dtype=float32)
    >>> standardised(t, np.array([2.0, 0.0]), np.array([1.0, 1.0]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xent.cli._errors.CLIError: d.csv, row 2 (line 3), column 'b': the value 1e+300 standardises...
    """
    index = np.arange(len(table.X)) if rows is None else np.asarray(rows)
    X = table.X[index]
    Z = standardise(X, mean, scale)
    bad = ~(np.abs(Z) <= _FLOAT32_MAX)  # also true for nan
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        value = float(X[i, j])
        raise CLIError(f"{table.where(int(index[i]))}, column {table.features[j]!r}: the value "
                       f"{value!r} standardises to {Z[i, j]:.3g} (scaler mean {mean[j]:.6g}, "
                       f"scale {scale[j]:.6g}), beyond float32's range; expected values within "
                       "the range of the training data's scale")
    return Z.astype(np.float32)


def read_training_csv(path: str | Path, target: str, delimiter: str | None = None) -> Table:
    """Read a CSV with a header: numeric feature columns and the ``target`` column of labels.

    ``delimiter`` is ``,``, ``;`` or a tab; None detects it (`detect_delimiter`). Raises
    `CLIError` naming the file, row and column for a missing target column, a non-numeric,
    missing, nan or infinite feature value, a value too large to standardise, a missing label,
    fewer than two rows or a single class.
    """
    path = Path(path)
    header, rows, delimiter = _open_rows(path, delimiter)
    if target not in header:
        raise CLIError(f"{path}: no target column {target!r}; the columns are "
                       f"{', '.join(map(repr, header))} ({_read_as(delimiter)})")
    t = header.index(target)
    features = [h for j, h in enumerate(header) if j != t]
    if not features:
        raise CLIError(f"{path}: only the target column {target!r}; expected at least one "
                       "numeric feature column beside it")
    X, labels, lines = [], [], []
    for row, line, fields in rows:
        lines.append(line)
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
    table = Table(X=np.array(X, dtype=np.float64), features=features, source=str(path),
                  target=target, classes=classes, y=y, lines=np.array(lines, dtype=np.int64))
    _check_scalable(table)
    return table


def read_prediction_csv(path: str | Path, features: list[str], target: str | None, *,
                        delimiter: str | None = None, keep: list[str] | tuple = (),
                        note=None) -> Table:
    """Read the rows to predict: the model's feature columns, in any order.

    ``keep`` names columns whose raw text is copied into ``Table.kept`` (for the output). Other
    columns than the features, the model's ``target`` and ``keep`` are ignored, and
    ``note(message)`` is called once to say so; a missing feature or ``keep`` column is an error
    that names the columns. ``delimiter`` as in `read_training_csv`.
    """
    path = Path(path)
    header, rows, delimiter = _open_rows(path, delimiter)
    missing = [f for f in features if f not in header]
    if missing:
        raise CLIError(f"{path}: the model's feature column(s) {', '.join(map(repr, missing))} "
                       f"are missing; expected the features {', '.join(map(repr, features))}; "
                       f"the file has {', '.join(map(repr, header))} ({_read_as(delimiter)})")
    absent = [k for k in keep if k not in header]
    if absent:
        raise CLIError(f"{path}: no column {', '.join(map(repr, absent))} to --keep; the "
                       f"columns are {', '.join(map(repr, header))}")
    extra = [h for h in header if h not in features and h != target and h not in keep]
    if extra and note is not None:
        note(f"{path}: ignoring the column(s) {', '.join(map(repr, extra))}, which are not "
             "features of the model (--keep COLUMN copies a column into the output)")
    cols = [header.index(f) for f in features]
    kept_cols = [header.index(k) for k in keep]
    X, lines = [], []
    kept: list[list[str]] = [[] for _ in keep]
    for row, line, fields in rows:
        X.append([_number(path, row, line, header[j], fields[j]) for j in cols])
        lines.append(line)
        for values, j in zip(kept, kept_cols, strict=True):
            values.append(fields[j])
    if not X:
        raise CLIError(f"{path}: a header but no data rows; expected at least one row to predict")
    return Table(X=np.array(X, dtype=np.float64), features=list(features), source=str(path),
                 lines=np.array(lines, dtype=np.int64),
                 kept=dict(zip(keep, kept, strict=True)))
