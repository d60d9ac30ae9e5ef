"""The CSV files people have (issue 20): categories, missing values, identifier columns, missing
labels, export quirks, and the encoding `xent predict` rebuilds from model.json.

Every file is made here. Expected values come from the files' own contents (written by hand
or by pandas' ``to_csv``) and from scikit-learn's ``ColumnTransformer`` built here, never
from a run of the code under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error
from xent.cli import _columns, _data
from xent.cli._errors import CLIError

pd = pytest.importorskip("pandas")


def xent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def animals(n: int = 60, seed: int = 0):
    """A small table with every kind of column: numeric with missing cells, text categories
    with missing cells, a text ID, a numeric row number, an 'id'-named column, a constant."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["cat", "dog"], n)
    weight = np.where(kind == "cat", 4.0, 20.0) + rng.normal(0, 2, n)
    colour = rng.choice(["black", "white", "ginger"], n).astype(object)
    colour[3] = None
    weight[5] = np.nan
    return pd.DataFrame({
        "name": [f"pet{i}" for i in range(n)],
        "row": np.arange(1, n + 1),
        "owner_id": rng.permutation(n) + 1000,
        "weight": weight,
        "colour": colour,
        "legs": 4,
        "kind": kind,
    })


def roles(table) -> dict[str, str]:
    return {r.column: r.role for r in table.roles}


def test_roles_are_decided_and_identifiers_left_out(tmp_path):
    df = animals()
    df.to_csv(tmp_path / "a.csv", index=False)
    t = _data.read_training_csv(tmp_path / "a.csv", "kind")
    assert roles(t) == {"name": "identifier", "row": "identifier", "owner_id": "identifier",
                        "weight": "numeric", "colour": "categorical", "legs": "constant",
                        "kind": "target"}
    assert t.numeric == ["weight"] and t.categorical == ["colour"]
    assert t.classes == ["cat", "dog"] and t.n_rows == len(df)
    done = {r.column: r.done for r in t.roles}
    assert "--keep-feature row" in done["row"] and "row number" in done["row"]
    assert "--keep-feature owner_id" in done["owner_id"]
    assert "all 60 values distinct" in done["name"]
    # the user decides: keep the ID, ignore a feature, one-hot a numeric column
    t = _data.read_training_csv(tmp_path / "a.csv", "kind", keep_feature=("owner_id",),
                                ignore=("weight",), categorical=("legs",))
    assert roles(t)["owner_id"] == "numeric" and roles(t)["weight"] == "identifier"
    assert roles(t)["legs"] == "constant"  # one value: still nothing to learn from


@pytest.mark.parametrize("marker", list(_data.NA_MARKERS))
def test_every_missing_value_marker_is_missing_and_never_a_class(tmp_path, marker):
    text = ("x,label\n1.5,a\n" + f"{marker},b\n" + "2.5,a\n3.5,b\n"
            + f"4.5,{marker}\n" + "5.5,a\n6.5,b\n")
    (tmp_path / "d.csv").write_text(text)
    t = _data.read_training_csv(tmp_path / "d.csv", "label")
    assert t.classes == ["a", "b"]  # the marker is not a class
    assert t.unlabeled == 1 and t.n_rows == 6
    assert list(t.rows) == [0, 1, 2, 3, 5, 6]  # file rows kept (0-based)
    x = t.frame["x"].to_numpy(dtype=float, na_value=np.nan)
    np.testing.assert_array_equal(np.isnan(x), [False, True, False, False, False, False])


def test_na_values_adds_markers(tmp_path):
    (tmp_path / "d.csv").write_text("x,label\n1,a\n-999,b\n2,a\n3,b\n4,a\n")
    t = _data.read_training_csv(tmp_path / "d.csv", "label",
                                options=_data.CsvOptions(na_values=("-999",)))
    assert np.isnan(t.frame["x"].to_numpy(dtype=float)).tolist() == [False, True, False,
                                                                      False, False]


def test_labels_keep_their_spelling(tmp_path):
    (tmp_path / "b.csv").write_text("x,ok\n5,True\n2,False\n3,True\n4,False\n1,NA\n")
    assert _data.read_training_csv(tmp_path / "b.csv", "ok").classes == ["False", "True"]
    (tmp_path / "i.csv").write_text("x,c\n3,10\n2,2\n1,10\n4,2\n")
    assert _data.read_training_csv(tmp_path / "i.csv", "c").classes == [2, 10]


def test_export_quirks_read_as_the_clean_file(tmp_path):
    """pandas' index column, a trailing delimiter, a decimal comma with ';', Latin-1 bytes."""
    df = pd.DataFrame({"size": [1.25, 2.5, 3.75, 4.0, 5.5, 6.25],
                       "town": ["Zürich", "Genève", "Zürich", "Genève", "Zürich", "Genève"],
                       "label": ["a", "b", "a", "b", "a", "b"]})
    df.to_csv(tmp_path / "clean.csv", index=False)
    df.to_csv(tmp_path / "index.csv")  # an unnamed first column 0..5
    clean = (tmp_path / "clean.csv").read_text()
    (tmp_path / "trailing.csv").write_text("".join(line + ",\n" for line in clean.splitlines()))
    df.to_csv(tmp_path / "comma.csv", sep=";", decimal=",", index=False)
    df.to_csv(tmp_path / "latin1.csv", index=False, encoding="latin-1")
    assert "1,25" in (tmp_path / "comma.csv").read_text()
    reference = _data.read_training_csv(tmp_path / "clean.csv", "label")
    for name, options in (("index.csv", _data.CsvOptions()),
                          ("trailing.csv", _data.CsvOptions()),
                          ("comma.csv", _data.CsvOptions(decimal=",")),
                          ("latin1.csv", _data.CsvOptions(encoding="latin-1"))):
        t = _data.read_training_csv(tmp_path / name, "label", options=options)
        pd.testing.assert_frame_equal(t.frame, reference.frame, check_dtype=False)
        assert t.classes == ["a", "b"], name
    t = _data.read_training_csv(tmp_path / "index.csv", "label")
    assert roles(t)["(unnamed column 1)"] == "identifier"
    with pytest.raises(CLIError, match=r"latin1.csv, line 2: not UTF-8 .*--encoding"):
        _data.read_training_csv(tmp_path / "latin1.csv", "label")
    with pytest.raises(CLIError, match=r"row 1 \(line 2\), column 'size'.*--decimal"):
        _data.read_training_csv(tmp_path / "comma.csv", "label")


def test_the_encoding_is_scikit_learns_column_transformer(tmp_path):
    """The parameters stored in model.json, applied with NumPy, give what a ColumnTransformer
    fitted on the same training rows gives, on new rows with missing cells and an unseen
    category."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = animals(80, seed=1)
    train, new = df.iloc[:60], df.iloc[60:].copy()
    new.loc[new.index[0], "colour"] = "purple"
    new.loc[new.index[1], "weight"] = np.nan
    enc, mean, scale = _columns.fit_encoder(train, ["weight"], ["colour"])
    unknown: dict = {}
    ours = (enc.transform(new, unknown) - mean) / scale
    assert unknown == {"colour": ["purple"]}
    ct = ColumnTransformer([
        ("n", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                            StandardScaler()), ["weight"]),
        ("c", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["colour"])])
    as_object = lambda f: f.assign(colour=f["colour"].astype(object).where(  # noqa: E731
        f["colour"].notna(), np.nan))
    ct.fit(as_object(train))
    np.testing.assert_allclose(ours, ct.transform(as_object(new)), rtol=1e-12, atol=1e-12)
    assert enc.medians == [float(np.nanmedian(train["weight"]))]
    assert enc.indicators == ["weight"]
    assert enc.categories == [["black", "ginger", "white", None]]
    json.dumps(enc.to_json(), allow_nan=False)  # plain JSON


@pytest.mark.parametrize("text, fragments", [
    ("x,label\n1,a\n2,b\n3\n4,b\n", ["row 3 (line 4)", "expected 2 fields", "found 1"]),
    ("x,label\n1,a\n2,b,c\n3,a\n", ["row 2 (line 3)", "expected 2 fields", "found 3"]),
    ("x,label\n1,a\n2,b\nthree,a\n4,b\n5,a\n",
     ["row 3 (line 4), column 'x'", "expected a number", "'three'", "--na-values three",
      "--categorical x"]),
    ("x,label\n1,a\n2,b\ninf,a\n4,b\n", ["row 3 (line 4), column 'x'", "finite", "'inf'"]),
    ("x,label\n1,a\n2,b\n", ["--ignore 'y'", "no such column"]),
])
def test_what_is_still_an_error_names_the_row_and_line(tmp_path, text, fragments):
    (tmp_path / "d.csv").write_text(text)
    ignore = ("y",) if "--ignore 'y'" in fragments else ()
    with pytest.raises(CLIError) as e:
        _data.read_training_csv(tmp_path / "d.csv", "label", ignore=ignore)
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


@pytest.mark.slow
def test_train_and_predict_on_a_messy_file(tmp_path):
    """The file as it comes: categories, missing cells, IDs, missing labels; predict on raw rows
    with missing cells, an unseen category, an ID kept; a missing column is one line."""
    df = animals(120, seed=2)
    df.loc[7, "kind"] = "NA"
    df.iloc[:100].to_csv(tmp_path / "pets.csv", index=False)
    proc = ok(xent("train", "--data", "pets.csv", "--target", "kind", "--epochs", "20",
                   "--out", "m", cwd=tmp_path))
    out = proc.stdout
    assert "1 row(s) with a missing label in 'kind' dropped" in out
    assert re.search(r"colour +categorical +one-hot, 3 categories; missing cells are a category",
                     out)
    assert "left out: equals the row number" in out
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["data"]["unlabeled_rows_dropped"] == 1
    assert meta["columns"]["numeric"]["columns"] == ["weight"]
    assert meta["columns"]["categorical"]["columns"] == ["colour"]
    assert meta["features"] == ["weight", "weight (missing)", "colour=black", "colour=ginger",
                                "colour=white", "colour (missing)"]
    new = df.iloc[100:].drop(columns=["kind"]).copy()
    new.loc[new.index[0], "colour"] = "purple"
    new.loc[new.index[1], "weight"] = np.nan
    new.to_csv(tmp_path / "new.csv", index=False)
    proc = ok(xent("predict", "--model", "m", "--data", "new.csv", "--keep", "name",
                   cwd=tmp_path))
    assert "1 row(s) hold a category the training rows did not have ('purple')" in proc.stderr
    got = pd.read_csv(__import__("io").StringIO(proc.stdout))
    assert list(got.columns) == ["name", "predicted", "prob_cat", "prob_dog"]
    assert list(got["name"]) == list(new["name"]) and len(got) == 20
    np.testing.assert_allclose(got[["prob_cat", "prob_dog"]].sum(axis=1), 1, atol=1e-6)
    new.drop(columns=["colour"]).to_csv(tmp_path / "lacking.csv", index=False)
    one_line_error(xent("predict", "--model", "m", "--data", "lacking.csv", cwd=tmp_path),
                   "lacking.csv", "'colour'", "missing")


def test_a_rare_class_shows_balanced_accuracy_and_names_class_weight(tmp_path):
    """Smallest class under 10% of the rows: the report gives the balanced accuracy (the mean
    of the per-class recalls of the test confusion matrix) and names --class-weight balanced."""
    from dataclasses import replace

    from xent.cli import _report, _train

    rng = np.random.default_rng(0)
    n = 300
    y = np.where(rng.random(n) < 0.06, "rare", "common")
    x = rng.normal(size=n) + (y == "rare") * 1.5
    pd.DataFrame({"x": x, "z": rng.normal(size=n), "label": y}).to_csv(tmp_path / "r.csv",
                                                                        index=False)
    table = _data.read_training_csv(tmp_path / "r.csv", "label")
    recipe = replace(_train.recipe_for("default", 240), epochs=5)
    result = _train.train(table, "binary", recipe)
    cm = np.array(result.metrics["confusion_matrix"])
    expected = np.mean(np.diag(cm) / cm.sum(axis=1))
    lines = _report._balance_lines(result)
    assert len(lines) == 1 and f"{expected:.4f}" in lines[0]
    assert "--class-weight balanced" in lines[0] and "rare" in lines[0]
    balanced = _train.train(table, "binary", replace(recipe, class_weight="balanced"))
    assert "--class-weight" not in _report._balance_lines(balanced)[0]
    common = _data.read_training_csv(tmp_path / "r.csv", "label")
    common.y[:] = np.arange(len(common.y)) % 2  # balanced classes: no line
    assert _report._balance_lines(_train.train(common, "binary", recipe)) == []
