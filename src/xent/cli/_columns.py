"""What each column of a CSV is for, and the encoding of the feature columns.

Roles (`decide_roles`), decided from the whole file before the split (they are the file's
structure, not fitted parameters):

- **numeric**: a column pandas reads as numbers (booleans as 0/1);
- **categorical**: a text column, or one named by ``--categorical``;
- **identifier** (left out): the file's unnamed leading index column, a text column whose values
  are all distinct, a column named by ``--ignore``, a numeric column equal to its row number
  (0, 1, 2, ... or 1, 2, 3, ...) or named like an identifier (``id``, ``PassengerId``,
  ``row_id``, ...; ``--keep-feature`` keeps it);
- **constant** (left out): at most one distinct value besides missing ones.

The encoding (`Encoder`) is scikit-learn's ``ColumnTransformer``: numeric columns through
``SimpleImputer(strategy="median", add_indicator=True)`` then ``StandardScaler``, categorical
columns through ``OneHotEncoder(handle_unknown="ignore")`` (a missing cell is a category of its
own). It is fitted on the training rows only (`fit_encoder`); its fitted parameters (the
medians, which columns get a missing-indicator, the categories, the scaler's means and scales)
are plain lists stored in ``model.json``, and `Encoder.transform` applies them with NumPy, the
same formulas (tests/test_cli_columns.py checks it against the fitted ``ColumnTransformer``).
Nothing is pickled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import CLIError

# Names of columns that hold identifiers rather than measurements (case-insensitive whole
# names, or an ``id`` suffix/prefix: ``row_id``, ``id.1``, ``PassengerId``, ``PatientID``).
_ID_NAMES = re.compile(
    r"^(id|ids|index|idx|row|rowid|rownum|rownames|row\.names|rowname|record|key|uuid|guid"
    r"|serial)$|[_.\- ]id$|^id[_.\- ]", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z](Id|ID)$")
MISSING = None  # the missing category, as stored in model.json (JSON null)


def id_like_name(name: str) -> bool:
    """Whether a column's name says that it holds identifiers.

    >>> [id_like_name(s) for s in ("id", "PassengerId", "row_id", "acid", "Valid", "ID", "x1")]
    [True, True, True, False, False, True, False]
    """
    return bool(_ID_NAMES.search(name) or _CAMEL_ID.search(name))


@dataclass
class Role:
    """One column of the file: its role and what was done with it (one line of the report)."""

    column: str
    role: str  # numeric, categorical, identifier, constant, target
    done: str = ""


def _row_number(values: np.ndarray) -> bool:
    """Whether numeric ``values`` are 0, 1, 2, ... or 1, 2, 3, ... (a row number)."""
    n = len(values)
    if n < 2 or np.isnan(values).any():
        return False
    return bool(np.array_equal(values, np.arange(n)) or np.array_equal(values, np.arange(1, n + 1)))


def decide_roles(frame, *, target: str, unnamed_index: str | None = None,
                 ignore=(), categorical=(), keep_feature=()) -> tuple[list[str], list[str],
                                                                     list[Role]]:
    """The numeric and the categorical feature columns of ``frame``, and every column's role.

    ``frame`` is the file as read (pandas ``DataFrame``; text columns hold strings and NaN);
    ``unnamed_index`` the name given to an unnamed leading column (the file's index column).
    """
    import pandas as pd

    names = [str(c) for c in frame.columns]
    for option, given in (("--ignore", ignore), ("--categorical", categorical),
                          ("--keep-feature", keep_feature)):
        for c in given:
            if c not in names:
                raise CLIError(f"{option} {c!r}: no such column; the columns are "
                               f"{', '.join(map(repr, names))}")
            if c == target:
                raise CLIError(f"{option} {c!r} is the target column")
    both = set(ignore) & (set(categorical) | set(keep_feature))
    if both:
        c = sorted(both)[0]
        raise CLIError(f"column {c!r} is given to --ignore and to --categorical/--keep-feature")
    numeric: list[str] = []
    cats: list[str] = []
    roles: list[Role] = []
    for c in names:
        if c == target:
            roles.append(Role(c, "target", "class labels"))
            continue
        col = frame[c]
        if c == unnamed_index:
            roles.append(Role(c, "identifier", "left out: the file's unnamed index column"))
            continue
        if c in ignore:
            roles.append(Role(c, "identifier", "left out (--ignore)"))
            continue
        distinct = col.nunique(dropna=True)
        missing = int(col.isna().sum())
        if distinct <= 1:
            what = "every value missing" if distinct == 0 else (
                f"a single value {_show(col.dropna().iloc[0])}"
                + (f" and {missing} missing" if missing else ""))
            roles.append(Role(c, "constant", f"left out: {what}"))
            continue
        is_number = pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(
            col.dtype)
        if c in categorical or not is_number:
            if (not is_number and c not in categorical and c not in keep_feature
                    and distinct == len(col) - missing and distinct > 2):
                roles.append(Role(c, "identifier", f"left out: text, all {distinct} values "
                                  f"distinct (--keep-feature {c} to use it)"))
                continue
            cats.append(c)
            roles.append(Role(c, "categorical", ""))  # filled in by `describe`
            continue
        if c not in keep_feature:
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
            if _row_number(values):
                roles.append(Role(c, "identifier", f"left out: equals the row number "
                                  f"(--keep-feature {c} to use it)"))
                continue
            if id_like_name(c):
                roles.append(Role(c, "identifier", f"left out: named like an identifier "
                                  f"(--keep-feature {c} to use it)"))
                continue
        numeric.append(c)
        roles.append(Role(c, "numeric", ""))
    return numeric, cats, roles


def _show(v: Any) -> str:
    """A value for a message: strings quoted, numbers as numbers.

    >>> _show("a"), _show(2.0), _show(np.int64(3))
    ("'a'", '2', '3')
    """
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return f"{float(v):g}"


@dataclass
class Encoder:
    """The fitted encoding of the feature columns, as plain data (``model.json``'s ``columns``).

    ``transform`` gives the network's input *before* the scaler: the numeric columns with
    missing cells filled with ``medians``, then a 0/1 missing-indicator column for each of
    ``indicators`` (the numeric columns that had missing cells in the training rows, as
    ``SimpleImputer(add_indicator=True)`` does), then one 0/1 column per category of each
    categorical column (``categories``, sorted, the missing category last; a value not among
    them is encoded as none of them). ``mean`` and ``scale`` are the scaler of those columns
    (one-hot columns: 0 and 1, left as they are).
    """

    numeric: list[str]
    medians: list[float] | None  # None: a model of xent 0.1, which refuses missing cells
    indicators: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    categories: list[list[str | None]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The file's columns the encoding reads."""
        return [*self.numeric, *self.categorical]

    def names(self) -> list[str]:
        """The names of the encoded columns (the network's inputs), in order.

        >>> Encoder(["a", "b"], [0.0, 1.0], ["b"], ["c"], [["x", None]]).names()
        ['a', 'b', 'b (missing)', 'c=x', 'c (missing)']
        """
        return [*self.numeric, *(f"{c} (missing)" for c in self.indicators),
                *(f"{c}={v}" if v is not MISSING else f"{c} (missing)"
                  for c, cats in zip(self.categorical, self.categories, strict=True)
                  for v in cats)]

    def transform(self, frame, unknown: dict[str, list] | None = None) -> np.ndarray:
        """The encoded ``(N, D)`` float64 matrix of ``frame``'s rows (unscaled).

        ``frame`` holds the numeric columns as float64 (NaN for missing) and the categorical
        columns as strings (NaN for missing). ``unknown``, when given, receives the values of
        each categorical column that are not among its categories (in row order).
        """
        n = len(frame)
        d = len(self.numeric) + len(self.indicators) + sum(map(len, self.categories))
        out = np.empty((n, d), dtype=np.float64)
        for j, c in enumerate(self.numeric):
            v = numeric_values(frame[c])
            if self.medians is not None:
                v = np.where(np.isnan(v), self.medians[j], v)
            out[:, j] = v
        j = len(self.numeric)
        for c in self.indicators:
            out[:, j] = np.isnan(numeric_values(frame[c]))
            j += 1
        for c, cats in zip(self.categorical, self.categories, strict=True):
            codes = category_codes(frame[c], cats)
            block = out[:, j:j + len(cats)]
            block[:] = 0.0
            known = codes >= 0
            block[np.flatnonzero(known), codes[known]] = 1.0
            if unknown is not None and not known.all():
                unknown[c] = list(text_values(frame[c])[~known])
            j += len(cats)
        return out

    def to_json(self) -> dict:
        return {"numeric": {"columns": self.numeric, "medians": self.medians,
                            "missing_indicator": self.indicators},
                "categorical": {"columns": self.categorical, "categories": self.categories,
                                "handle_unknown": "ignore"}}


def numeric_values(col) -> np.ndarray:
    """A numeric column as float64, NaN for missing (booleans as 0 and 1)."""
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def text_values(col) -> np.ndarray:
    """A categorical column as an object array of strings, None for missing."""
    values = col.astype(object).to_numpy()
    missing = col.isna().to_numpy()
    out = np.array([None if m else str(v) for v, m in zip(values, missing, strict=True)],
                   dtype=object)
    return out


def category_codes(col, categories: list) -> np.ndarray:
    """The index of each value of ``col`` in ``categories`` (None: the missing category); -1
    for a value not among them."""
    index = {v: i for i, v in enumerate(categories)}
    return np.array([index.get(v, -1) for v in text_values(col)], dtype=np.int64)


def fit_encoder(frame, numeric: list[str], categorical: list[str]) -> tuple[Encoder,
                                                                             np.ndarray,
                                                                             np.ndarray]:
    """Fit scikit-learn's ``ColumnTransformer`` on ``frame`` (the training rows) and return its
    parameters: the `Encoder`, and the scaler's ``mean`` and ``scale`` of the encoded columns.
    """
    ct = column_transformer(numeric, categorical)
    data = frame[[*numeric, *categorical]].assign(
        **{c: numeric_values(frame[c]) for c in numeric if frame[c].dtype == bool},
        **{c: text_values(frame[c]) for c in categorical})
    ct.fit(data)
    medians: list[float] = []
    indicators: list[str] = []
    mean = np.zeros(0)
    scale = np.ones(0)
    if numeric:
        pipe = ct.named_transformers_["num"]
        imputer, scaler = pipe.named_steps["impute"], pipe.named_steps["scale"]
        medians = [float(v) for v in imputer.statistics_]
        if imputer.indicator_ is not None:
            indicators = [numeric[int(i)] for i in imputer.indicator_.features_]
        mean = np.asarray(scaler.mean_, dtype=np.float64)
        scale = np.asarray(scaler.scale_, dtype=np.float64)
    categories: list[list[str | None]] = []
    if categorical:
        ohe = ct.named_transformers_["cat"]
        for cats in ohe.categories_:
            categories.append([None if _is_missing(v) else str(v) for v in cats])
    k = sum(map(len, categories))
    enc = Encoder(numeric=list(numeric), medians=medians, indicators=indicators,
                  categorical=list(categorical), categories=categories)
    return enc, np.concatenate([mean, np.zeros(k)]), np.concatenate([scale, np.ones(k)])


def column_transformer(numeric: list[str], categorical: list[str]):
    """The unfitted ``ColumnTransformer`` that `fit_encoder` fits (also the tests' reference)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if numeric:
        parts.append(("num", Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True,
                                     keep_empty_features=True)),
            ("scale", StandardScaler())]), numeric))
    if categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                           dtype=np.float64), categorical))
    return ColumnTransformer(parts, remainder="drop")


def _is_missing(v: Any) -> bool:
    return v is None or isinstance(v, float) and np.isnan(v)


def describe(roles: list[Role], enc: Encoder, frame_train) -> None:
    """Fill in what was done with each feature column (the report's table), from the fitted
    encoding; ``frame_train`` gives the count of missing cells in the training rows."""
    med = dict(zip(enc.numeric, enc.medians or [], strict=False))
    cats = dict(zip(enc.categorical, enc.categories, strict=True))
    for r in roles:
        if r.role == "numeric":
            done = "scaled"
            if r.column in enc.indicators:
                k = int(frame_train[r.column].isna().sum())
                done += (f"; {k} missing (training rows): the median {med[r.column]:.6g} "
                         "filled in, indicator column added")
            else:
                done += f" (a missing cell: the median {med[r.column]:.6g})"
            r.done = done
        elif r.role == "categorical":
            c = cats[r.column]
            known = [v for v in c if v is not MISSING]
            r.done = (f"one-hot, {len(known)} categories"
                      + ("; missing cells are a category" if len(known) < len(c) else ""))
