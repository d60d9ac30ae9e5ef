"""`xent predict`: class probabilities and predicted labels for the rows of a CSV file."""

from __future__ import annotations

import csv
import io
import os
import stat
import sys
from pathlib import Path

import numpy as np

from . import _data, _files, _model
from ._errors import CLIError, require


def _float_text(v: np.floating) -> str:
    """The shortest text that reads back as exactly this value (NumPy's ``str`` of a scalar)."""
    return str(v)


def checked_proba(clf: _model.Classifier, table: _data.Table) -> np.ndarray:
    """The class probabilities ``(N, C)`` of the table's rows, every one finite.

    The values are first standardised with the model's scaler (`_data.standardised` names a
    value beyond float32's range); a row whose probabilities still come out nan or infinite
    (its hidden units overflow) is a `CLIError` naming the row, never a printed nan.
    """
    _data.standardised(table, clf.mean, clf.scale)
    with np.errstate(all="ignore"):
        proba = clf.proba(table.X)
    bad = ~np.isfinite(proba).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CLIError(f"{table.where(i)}: the network's output for this row is not finite "
                       f"(probabilities {proba[i].tolist()}); its values are far outside the "
                       "training data's range; no predictions written")
    return proba


def predictions_csv(clf: _model.Classifier, table: _data.Table) -> str:
    """CSV text: the kept columns, ``predicted`` (the label) and ``prob_<label>`` per class."""
    proba = checked_proba(clf, table)
    pred = clf.predict(table.X)
    columns = ["predicted", *(f"prob_{c}" for c in clf.classes)]
    clash = [k for k in table.kept if k in columns]
    if clash:
        raise CLIError(f"--keep {clash[0]!r}: the output has a column of that name already "
                       f"({', '.join(columns)})")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*table.kept, *columns])
    kept = list(table.kept.values())
    for i in range(len(table.X)):
        w.writerow([*(values[i] for values in kept), clf.classes[pred[i]],
                    *(_float_text(p) for p in proba[i])])
    return buf.getvalue()


def _check_output(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``--output`` that is one of the command's inputs (through links too), a
    directory, or in a directory that does not exist."""
    for path in inputs:
        if _files.same_file(out, path):
            raise CLIError(f"--output {_files.short(out)} is the same file as "
                           f"{_files.short(path)}, an input of this command; it would be "
                           "overwritten; choose another file")
    try:
        if out.is_dir():
            raise CLIError(f"{_files.short(out)}: is a directory; expected a file name for "
                           "--output")
        if not Path(os.path.realpath(out)).parent.is_dir():
            raise CLIError(f"{_files.short(out.parent)}: directory not found (for --output "
                           f"{_files.short(out)})")
    except OSError as e:
        raise _files.os_error(out, "cannot use for --output", e) from None


def _write_output(out: Path, data: bytes) -> None:
    """Replace the file ``out`` atomically; write straight into what cannot be replaced (a
    character device such as /dev/null, a FIFO)."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _files.os_error(out, "cannot write", e) from None
    try:
        if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            with open(out, "wb") as f:
                f.write(data)
        else:
            _files.atomic_write(out, data)
    except OSError as e:
        raise _files.os_error(out, "cannot write", e) from None


def read_options(meta: dict, args) -> _data.CsvOptions:
    """How to read the rows: the options given, else those the model's training file was read
    with (decimal mark, encoding, missing-value markers; the delimiter is detected again)."""
    read = meta.get("columns", {}).get("read", {}) if isinstance(meta.get("columns"),
                                                                  dict) else {}
    read = read if isinstance(read, dict) else {}

    def stored(key: str, default):
        v = read.get(key)
        return v if isinstance(v, type(default)) else default

    given = getattr(args, "na_values", None)
    na = None if given is None else [v for item in given for v in item]
    return _data.CsvOptions(
        delimiter=getattr(args, "delimiter", None),
        decimal=getattr(args, "decimal", None) or stored("decimal", "."),
        encoding=getattr(args, "encoding", None) or stored("encoding", "utf-8"),
        na_values=tuple(na) if na is not None else tuple(
            v for v in stored("na_values", []) if isinstance(v, str)))


def run(args) -> int:
    """The `xent predict` command."""
    require("torch", "safetensors")
    files = _model.read_model(args.model)  # cheap checks first: no torch import for a bad path
    features, target = files.meta.get("features"), files.meta.get("target")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise CLIError(f"{files.meta_path}: field 'features' must be a list of column names")
    keep = list(getattr(args, "keep", None) or [])
    twice = [k for i, k in enumerate(keep) if k in keep[:i]]
    if twice:
        raise CLIError(f"--keep {twice[0]!r} is given twice")
    out = Path(args.output) if args.output is not None else None
    if out is not None:
        _check_output(out, [Path(args.data), files.meta_path, files.weights_path])

    def note(message: str) -> None:
        if not args.quiet:
            print(f"xent: note: {message}", file=sys.stderr, flush=True)

    encoder = _model.encoder(files.meta, files.meta_path)
    table = _data.read_prediction_csv(args.data, features,
                                      target if isinstance(target, str) else None,
                                      keep=keep, note=note, encoder=encoder,
                                      options=read_options(files.meta, args))
    clf, _ = _model.load(files)
    text = predictions_csv(clf, table)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    _write_output(out, text.encode("utf-8"))
    if not args.quiet:
        print(f"wrote {len(table.X)} predictions ({len(clf.classes)} classes: "
              f"{', '.join(map(str, clf.classes))}) to {out}", file=sys.stderr)
    return 0
