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
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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

CSV_LIMIT = 4 << 30  # bytes of a CSV file accepted
# Cells that mean "missing" (R, pandas, UCI, spreadsheets); --na-values adds more.
NA_MARKERS = ("", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "null", "NULL", "None", "?", "#N/A")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Table:
    """Features, labels and where they came from.

    ``X`` is ``(N, D)`` float64, the network's input before the scaler; ``y`` the ``(N,)``
    int64 index of each row's label in ``classes`` (sorted: numerically for integer labels,
    else as strings); ``y`` is None for prediction input, which has no target column. For a
    CSV, ``frame`` holds the feature columns as read (pandas) and ``X`` is None until the
    encoding is fitted on the training rows (`_train.split`); ``roles`` says what each column
    is for. ``rows`` ``(N,)`` is the 0-based data row of the file each row comes from (rows
    without a label are dropped), ``file`` the file (to name a row's line in a message);
    ``lines`` gives the lines directly (None for built-in data), ``kept`` the raw text of the
    columns `read_prediction_csv` was asked to keep, one list per column.
    """

    X: np.ndarray | None
    features: list[str]
    source: str
    target: str | None = None
    classes: list[int] | list[str] = field(default_factory=list)
    y: np.ndarray | None = None
    lines: np.ndarray | None = None
    kept: dict[str, list[str]] = field(default_factory=dict)
    frame: Any = None
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    roles: list = field(default_factory=list)
    rows: np.ndarray | None = None
    file: CsvFile | None = None
    unlabeled: int = 0
    encoder: Any = None

    @property
    def n_rows(self) -> int:
        """The number of rows."""
        if self.y is not None:
            return len(self.y)
        return len(self.X) if self.X is not None else len(self.frame)

    def where(self, i: int) -> str:
        """Row ``i`` (0-based) for a message: the file, the 1-based row and the line.

        >>> Table(np.zeros((2, 1)), ["a"], "d.csv", lines=np.array([2, 4])).where(1)
        'd.csv, row 2 (line 4)'
        """
        row = int(self.rows[i]) if self.rows is not None else i
        if self.lines is not None:
            return f"{self.source}, row {row + 1} (line {int(self.lines[i])})"
        if self.file is not None:
            return self.file.where(row)
        return f"{self.source}, row {row + 1}"


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


@dataclass(frozen=True)
class CsvOptions:
    """How to read a CSV: ``delimiter`` (None: detected), the ``decimal`` mark, the text
    ``encoding`` and missing-value markers added to `NA_MARKERS`."""

    delimiter: str | None = None
    decimal: str = "."
    encoding: str = "utf-8"
    na_values: tuple[str, ...] = ()

    def markers(self) -> list[str]:
        return sorted({*NA_MARKERS, *self.na_values})

    def to_json(self) -> dict:
        return {"delimiter": self.delimiter, "decimal": self.decimal,
                "encoding": self.encoding, "na_values": list(self.na_values)}


@dataclass
class CsvFile:
    """A CSV file as read: its path, how it was read, and its header. `scan` finds the line
    of a row (only for messages: it reads the file again with the ``csv`` module)."""

    path: Path
    options: CsvOptions
    delimiter: str
    header: list[str]

    def _records(self):
        """``(row, line, fields)`` of each data row: row 0-based, line 1-based, pandas'
        rule for blank lines (empty or whitespace-only lines are skipped)."""
        enc = _python_encoding(self.options.encoding)
        with open(self.path, encoding=enc, errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            header_seen = False
            row = 0
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if not header_seen:
                    header_seen = True
                    continue
                yield row, reader.line_num, fields
                row += 1

    def lines(self, rows) -> dict[int, tuple[int, int]]:
        """``{row: (line, number of fields)}`` for the 0-based data ``rows``."""
        wanted = set(int(r) for r in rows)
        found: dict[int, tuple[int, int]] = {}
        if not wanted:
            return found
        last = max(wanted)
        try:
            for row, line, fields in self._records():
                if row in wanted:
                    found[row] = (line, len(fields))
                if row >= last:
                    break
        except (OSError, csv.Error):
            pass  # only for messages: a row without its line is still named
        return found

    def row_of_line(self, line: int) -> int | None:
        """The 0-based data row that ends on (or spans) ``line``, or None."""
        try:
            for row, end, _ in self._records():
                if end >= line:
                    return row
        except (OSError, csv.Error):
            pass
        return None

    def where(self, row: int) -> str:
        """``file, row R (line L)`` for the 0-based data row ``row``."""
        line = self.lines([row]).get(row)
        return f"{self.path}, row {row + 1}" + (f" (line {line[0]})" if line else "")


def _python_encoding(name: str) -> str:
    """The codec to read ``name`` text with: UTF-8 drops a byte-order mark, as Excel writes."""
    import codecs

    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise CLIError(f"--encoding {name!r}: not an encoding Python knows; expected e.g. "
                       "utf-8, latin-1, cp1252") from None
    return "utf-8-sig" if codec == "utf-8" else codec


def _decode_error(f, path: Path, encoding: str) -> CLIError:
    """The message for text that is not ``encoding``: the byte, its offset and line."""
    import codecs

    if _python_encoding(encoding) == "utf-8-sig":
        encoding = "UTF-8"

    f.seek(0)
    dec = codecs.getincrementaldecoder(_python_encoding(encoding))()
    offset, line = 0, 1
    while True:
        chunk = f.read(1 << 20)
        try:
            dec.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            bad = e.object[e.start] if e.start < len(e.object) else 0
            line += e.object[:e.start].count(b"\n")
            return CLIError(f"{path}, line {line}: not {encoding} text (byte {offset + e.start} "
                            f"is 0x{bad:02x}); give --encoding (e.g. latin-1 or cp1252) if the "
                            f"file uses another")
        if not chunk:
            break
        offset += len(chunk)
        line += chunk.count(b"\n")
    return CLIError(f"{path}: not {encoding} text; give --encoding (e.g. latin-1)")


def _read_header(f, path: Path, options: CsvOptions) -> tuple[str, list[str], bool]:
    """The delimiter, the header's fields (stripped) and whether the data lines end with a
    delimiter that the header has not (a trailing delimiter), from the start of the file."""
    import codecs

    raw = f.read(65536)
    while raw and b"\n" not in raw and len(raw) < (16 << 20):
        more = f.read(1 << 20)
        if not more:
            break
        raw += more
    dec = codecs.getincrementaldecoder(_python_encoding(options.encoding))()
    try:
        text = dec.decode(raw, final=False)
    except UnicodeDecodeError:
        raise _decode_error(f, path, options.encoding) from None
    delimiter = options.delimiter or detect_delimiter(text)
    lines = text.splitlines(keepends=True)
    if len(raw) == 65536 and len(lines) > 1:
        lines = lines[:-1]  # whole lines only
    reader = csv.reader(lines, delimiter=delimiter)
    header = None
    data_lines: list[list[str]] = []
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if header is None:
                header = fields
            else:
                data_lines.append(fields)
    except csv.Error as e:
        raise CLIError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise CLIError(f"{path}: the file is empty; expected a header row of column names")
    trailing = bool(data_lines) and all(len(r) == len(header) + 1 and not r[-1].strip()
                                        for r in data_lines)
    return delimiter, [h.strip() for h in header], trailing


def read_csv(path: str | Path, options: CsvOptions, text_columns=()):
    """Read a CSV file with pandas: ``(frame, file, unnamed_index)``.

    The file must be a regular file of at most `CSV_LIMIT` bytes. Missing-value markers
    (`NA_MARKERS` and ``options.na_values``) become NaN; ``text_columns`` are read as text
    (their spelling kept). An unnamed first column is the file's index column (pandas'
    ``to_csv``, R's ``write.csv``): its name becomes ``(unnamed column 1)``, returned as
    ``unnamed_index``. An unnamed last column that is empty on every row (a delimiter at the end
    of every line) is dropped. Raises `CLIError` for a header with an unnamed or repeated
    column, a row with more or fewer fields than the header (naming its row and line), text that
    is not in ``options.encoding``.
    """
    import warnings

    import pandas as pd

    path = Path(path)
    with _files.open_regular(path, "a CSV file", CSV_LIMIT) as f:
        delimiter, header, trailing = _read_header(f, path, options)
        unnamed_index = None
        names = list(header)
        drop_last = False
        for j, name in enumerate(header):
            if name:
                if name in header[:j]:
                    raise CLIError(f"{path}: column name {name!r} appears twice in the header; "
                                   "expected unique names")
                continue
            if j == 0 and len(header) > 1:
                unnamed_index = names[0] = "(unnamed column 1)"
            elif j == len(header) - 1 and j > 0:
                names[j] = f"(unnamed column {j + 1})"
                drop_last = True
            else:
                raise CLIError(f"{path}: column {j + 1} of the header has no name; expected a "
                               "name for every column")
        file = CsvFile(path, options, delimiter, header)
        f.seek(0)
        dtype = {c: str for c in text_columns if c in names}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                frame = pd.read_csv(
                    f, sep=delimiter, header=0, names=names, index_col=False, dtype=dtype,
                    keep_default_na=False, na_values=options.markers(),
                    decimal=options.decimal, encoding=_python_encoding(options.encoding),
                    skip_blank_lines=True, engine="c")
        except UnicodeDecodeError:
            raise _decode_error(f, path, options.encoding) from None
        except pd.errors.EmptyDataError:
            raise CLIError(f"{path}: the file is empty; expected a header row of column "
                           "names") from None
        except pd.errors.ParserError as e:
            raise _parser_error(file, str(e)) from None
        except (ValueError, TypeError) as e:
            raise CLIError(f"{path}: cannot be read as CSV ({' '.join(str(e).split())})") \
                from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught) and not trailing:
        rows = file.lines(range(len(frame)))
        bad = next((r for r, (_, k) in sorted(rows.items()) if k > len(header)), None)
        where = file.where(bad) if bad is not None else str(path)
        found = f", found {rows[bad][1]}" if bad is not None else ""
        raise CLIError(f"{where}: expected {len(header)} fields as in the header{found}")
    if len(names) > 1 and not drop_last:
        # A row with fewer fields than the header reads as missing cells at its end: look for
        # such rows among those whose last cell is missing.
        last = frame[names[-1]].isna().to_numpy()
        if last.any():
            for row, (line, k) in sorted(file.lines(np.flatnonzero(last)).items()):
                if k < len(header):
                    raise CLIError(f"{path}, row {row + 1} (line {line}): expected "
                                   f"{len(header)} fields as in the header, found {k}")
    if drop_last:
        if frame[names[-1]].notna().any():
            j = len(names)
            raise CLIError(f"{path}: column {j} of the header has no name; expected a name "
                           "for every column")
        frame = frame.drop(columns=[names[-1]])
    return frame, file, unnamed_index


def _parser_error(file: CsvFile, message: str) -> CLIError:
    """pandas' tokenizer error as a message naming the row and line."""
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if m:
        expected, line, found = (int(v) for v in m.groups())
        row = file.row_of_line(line)
        where = (f"{file.path}, row {row + 1} (line {line})" if row is not None
                 else f"{file.path}, line {line}")
        return CLIError(f"{where}: expected {expected} fields as in the header, found {found}")
    return CLIError(f"{file.path}: malformed CSV ({' '.join(message.split())})")

def _read_as(delimiter: str) -> str:
    """How a file was split, for a message about its columns."""
    return (f"read with the {DELIMITERS[delimiter]} as delimiter; give --delimiter if the file "
            "uses another")


def text_byte(e: UnicodeDecodeError) -> str:
    """The offending byte of a decoding error, as ``0xNN``."""
    return f"0x{e.object[e.start]:02x}"


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


def _numeric_dtype(col) -> bool:
    """Whether pandas read a column as numbers (or booleans)."""
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col.dtype))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _check_text_column(frame, file: CsvFile, c: str, expected_numbers: bool) -> None:
    """Refuse a text column that holds numbers with a few words among them (a typo, or a
    missing-value marker not in the list), or numbers written with a decimal comma.

    ``expected_numbers``: the column must be numeric (prediction input for a numeric column of
    the model): any value that is not a number is refused.
    """
    col = frame[c]
    present = col.dropna()
    if not len(present):
        return
    values = present.astype(str).str.strip()
    uniq = values.unique()
    numbers = {v for v in uniq if _is_number(v)}
    share = values.isin(numbers).mean() if numbers else 0.0
    decimal_comma = [v for v in uniq if v not in numbers and "," in v
                     and _is_number(v.replace(",", "."))]
    if decimal_comma and file.options.decimal != ",":
        i = int(np.flatnonzero(values.isin(decimal_comma).to_numpy())[0])
        row = int(present.index[i])
        raise CLIError(f"{file.where(row)}, column {c!r}: expected a number, found "
                       f"{values.iloc[i]!r}, a decimal comma; give --decimal , (and "
                       "--delimiter ';' if the fields are separated by semicolons)")
    if expected_numbers or (numbers and share > 0.5):
        bad = ~values.isin(numbers).to_numpy()
        i = int(np.flatnonzero(bad)[0])
        row = int(present.index[i])
        hint = ("" if expected_numbers else
                f" (the column's other values are numbers: --na-values {values.iloc[i]} if it "
                f"marks a missing value, --categorical {c} if the column is categorical, "
                f"--ignore {c} if it is an identifier)")
        raise CLIError(f"{file.where(row)}, column {c!r}: expected a number, found "
                       f"{present.iloc[i]!r}{hint}")


def _check_finite(frame, file: CsvFile, columns: list[str]) -> None:
    """Refuse an infinite value in a numeric column, naming its row."""
    for c in columns:
        v = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.isinf(v)
        if inf.any():
            i = int(np.flatnonzero(inf)[0])
            row = int(frame.index[i])
            raise CLIError(f"{file.where(row)}, column {c!r}: expected a finite number, found "
                           f"{'inf' if v[i] > 0 else '-inf'!r}")


def _check_scalable_columns(table: Table) -> None:
    """Raise `CLIError` when standardising a numeric column would overflow float64 (its
    variance is infinite), naming the value of largest magnitude, its row and column."""
    for c in table.numeric:
        v = table.frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = np.nanmean(v) if (~np.isnan(v)).any() else 0.0
            var = np.nanmean((v - mean) ** 2) if (~np.isnan(v)).any() else 0.0
        if not (np.isfinite(mean) and np.isfinite(var)):
            i = int(np.nanargmax(np.abs(v)))
            raise CLIError(f"{table.where(i)}, column {c!r}: the value {float(v[i])!r} is too "
                           "large to standardise (the column's variance overflows float64); "
                           "expected values of magnitude below about 1e150")


def read_training_csv(path: str | Path, target: str, delimiter: str | None = None, *,
                      options: CsvOptions | None = None, ignore=(), categorical=(),
                      keep_feature=()) -> Table:
    """Read a CSV with a header: feature columns and the ``target`` column of labels.

    The roles of the columns are decided here (`_columns.decide_roles`: numeric, categorical,
    identifier, constant); rows whose label is missing are dropped and counted
    (``Table.unlabeled``). Raises `CLIError` naming the file, row and column for a missing
    target column, a text value among numbers, an infinite value, a value too large to
    standardise, fewer than two labelled rows or a single class.
    """
    from . import _columns

    options = options or CsvOptions(delimiter=delimiter)
    if delimiter is not None and options.delimiter is None:
        options = replace(options, delimiter=delimiter)
    path = Path(path)
    frame, file, unnamed = read_csv(path, options, text_columns=[target, *categorical])
    header = [str(c) for c in frame.columns]
    if target not in header:
        raise CLIError(f"{path}: no target column {target!r}; the columns are "
                       f"{', '.join(map(repr, header))} ({_read_as(file.delimiter)})")
    if len(header) == 1:
        raise CLIError(f"{path}: only the target column {target!r}; expected at least one "
                       "feature column beside it")
    labels = frame[target]
    stripped = labels.str.strip()
    labelled = (labels.notna() & (stripped != "")).to_numpy()
    n_file = len(frame)
    for c in header:
        if c in (target, unnamed) or c in ignore or c in categorical:
            continue
        col = frame[c]
        if not _numeric_dtype(col):
            _check_text_column(frame, file, c, expected_numbers=False)
        else:
            _check_finite(frame, file, [c])
    numeric, cats, roles = _columns.decide_roles(
        frame, target=target, unnamed_index=unnamed, ignore=ignore, categorical=categorical,
        keep_feature=keep_feature)
    rows = np.flatnonzero(labelled)
    if len(rows) < n_file:
        frame = frame.iloc[rows]
    if len(rows) < 2:
        raise CLIError(f"{path}: {len(rows)} data row(s) with a label; expected at least 2 to "
                       "train and test on")
    if not numeric and not cats:
        raise CLIError(f"{path}: no feature column left; "
                       + "; ".join(f"{r.column!r}: {r.role}, {r.done}" for r in roles
                                   if r.role != "target"))
    classes, y = _classes(stripped.to_numpy(dtype=object)[rows].tolist())
    if len(classes) < 2:
        raise CLIError(f"{path}: column {target!r} holds a single class ({classes[0]!r}) in all "
                       f"{len(rows)} rows; expected at least 2 classes")
    if len(classes) > len(rows) / 2:
        raise CLIError(f"{path}: column {target!r} has {len(classes)} distinct values in "
                       f"{len(rows)} rows; expected class labels, each on several rows "
                       "(is it a continuous target?)")
    features = frame[[*numeric, *cats]].reset_index(drop=True)
    table = Table(X=None, features=[*numeric, *cats], source=str(path), target=target,
                  classes=classes, y=y, frame=features, numeric=numeric, categorical=cats,
                  roles=roles, rows=rows, file=file, unlabeled=n_file - len(rows))
    _check_scalable_columns(table)
    return table


def read_prediction_csv(path: str | Path, features: list[str], target: str | None, *,
                        delimiter: str | None = None, keep: list[str] | tuple = (),
                        note=None, encoder=None, options: CsvOptions | None = None) -> Table:
    """Read the rows to predict: the columns the model reads, in any order, and encode them.

    ``encoder`` is the model's `_columns.Encoder` (None: ``features`` are numeric columns, as
    written by xent 0.1, without missing cells). ``keep`` names columns whose raw text is
    copied into ``Table.kept`` (for the output). Other columns than the model's, its
    ``target`` and ``keep`` are ignored, and ``note(message)`` is called once to say so; a
    missing column is an error that names the columns. Values of a categorical column that the
    training rows did not have are encoded as none of the known categories, counted in a note.
    """
    from . import _columns

    if encoder is None:
        encoder = _columns.Encoder(numeric=list(features), medians=None)
    options = options or CsvOptions(delimiter=delimiter)
    if delimiter is not None:
        options = replace(options, delimiter=delimiter)
    path = Path(path)
    frame, file, unnamed = read_csv(path, options,
                                    text_columns=[*encoder.categorical, *keep])
    header = [str(c) for c in frame.columns]
    needed = encoder.columns
    missing = [f for f in needed if f not in header]
    if missing:
        raise CLIError(f"{path}: the model's column(s) {', '.join(map(repr, missing))} "
                       f"are missing; expected the columns {', '.join(map(repr, needed))}; "
                       f"the file has {', '.join(map(repr, header))} "
                       f"({_read_as(file.delimiter)})")
    absent = [k for k in keep if k not in header]
    if absent:
        raise CLIError(f"{path}: no column {', '.join(map(repr, absent))} to --keep; the "
                       f"columns are {', '.join(map(repr, header))}")
    extra = [h for h in header if h not in needed and h != target and h not in keep
             and h != unnamed]
    if extra and note is not None:
        note(f"{path}: ignoring the column(s) {', '.join(map(repr, extra))}, which are not "
             "features of the model (--keep COLUMN copies a column into the output)")
    if not len(frame):
        raise CLIError(f"{path}: a header but no data rows; expected at least one row to predict")
    for c in encoder.numeric:
        col = frame[c]
        if not _numeric_dtype(col):
            _check_text_column(frame, file, c, expected_numbers=True)
        _check_finite(frame, file, [c])
        if encoder.medians is None and col.isna().any():
            i = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise CLIError(f"{file.where(i)}, column {c!r}: missing value; expected a finite "
                           "number (this model, written by an older xent, has no medians to "
                           "fill it with)")
    unknown: dict[str, list] = {}
    X = encoder.transform(frame, unknown)
    if unknown and note is not None:
        for c, values in unknown.items():
            shown = ", ".join("missing" if v is None else repr(v)
                              for v in list(dict.fromkeys(values))[:5])
            note(f"{path}: column {c!r}: {len(values)} row(s) hold a category the training "
                 f"rows did not have ({shown}); encoded as none of the known categories")
    kept = {k: ["" if v is None else str(v) for v in _columns.text_values(frame[k])]
            for k in keep}
    return Table(X=X, features=encoder.names(), source=str(path), file=file, kept=kept,
                 encoder=encoder)
