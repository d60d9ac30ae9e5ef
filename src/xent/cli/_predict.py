"""`xent predict`: class probabilities and predicted labels for the rows of a CSV file."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from . import _data, _model
from ._errors import CLIError, require


def _float_text(v: np.floating) -> str:
    """The shortest text that reads back as exactly this value (NumPy's ``str`` of a scalar)."""
    return str(v)


def predictions_csv(clf: _model.Classifier, X: np.ndarray) -> str:
    """CSV text: ``predicted`` (the label) and ``prob_<label>`` per class, one line per row."""
    proba = clf.proba(X)
    pred = clf.predict(X)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["predicted", *(f"prob_{c}" for c in clf.classes)])
    for i in range(len(X)):
        w.writerow([clf.classes[pred[i]], *(_float_text(p) for p in proba[i])])
    return buf.getvalue()


def run(args) -> int:
    """The `xent predict` command."""
    require("torch", "safetensors")
    _, meta = _model.read_meta(args.model)  # cheap checks first: no torch import for a bad path
    features, target = meta.get("features"), meta.get("target")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise CLIError(f"{args.model}: field 'features' must be a list of column names")
    table = _data.read_prediction_csv(args.data, features, target if isinstance(target, str)
                                      else None)
    clf, _ = _model.load(args.model)
    text = predictions_csv(clf, table.X)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    out = Path(args.output)
    if out.is_dir():
        raise CLIError(f"{out}: is a directory; expected a file name for --output")
    if not out.parent.is_dir():
        raise CLIError(f"{out.parent}: directory not found (for --output {out})")
    try:
        _model.atomic_write(out, text.encode("utf-8"))
    except OSError as e:
        raise CLIError(f"{out}: cannot write ({e.strerror})") from None
    if not args.quiet:
        print(f"wrote {len(table.X)} predictions ({len(clf.classes)} classes: "
              f"{', '.join(map(str, clf.classes))}) to {out}", file=sys.stderr)
    return 0
