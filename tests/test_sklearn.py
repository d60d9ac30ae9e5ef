"""`xent.sklearn.XentClassifier`: scikit-learn's own estimator checks, the estimator in
Pipeline / GridSearchCV / cross_val_score, accuracy beside scikit-learn's MLPClassifier, string
labels, reproducibility, and the same training as `xent train`.

The epochs are kept small through the parameters, so that the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from xent.sklearn import EXPECTED_FAILED_CHECKS, XentClassifier

IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


# ---------------------------------------------------------------------------------------------
# scikit-learn's estimator checks


@parametrize_with_checks([XentClassifier(epochs=5)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------
# Accuracy, beside scikit-learn's MLPClassifier


def _split(X, y):
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def test_iris_accuracy_beside_mlpclassifier(iris):
    X_tr, X_te, y_tr, y_te = _split(*iris)
    ours = XentClassifier(epochs=60).fit(X_tr, y_tr).score(X_te, y_te)
    mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=2000, random_state=0))
    theirs = mlp.fit(X_tr, y_tr).score(X_te, y_te)
    assert theirs > 0.9  # the reference itself learns the data
    assert ours >= theirs - 0.05, (ours, theirs)


def test_breast_cancer_binary_beside_mlpclassifier():
    X_tr, X_te, y_tr, y_te = _split(*load_breast_cancer(return_X_y=True))
    clf = XentClassifier(epochs=20).fit(X_tr, y_tr)
    assert clf.model_.task == "binary"  # NeuralNet1: one logit, sigmoid
    mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=2000, random_state=0))
    theirs = mlp.fit(X_tr, y_tr).score(X_te, y_te)
    assert clf.score(X_te, y_te) >= theirs - 0.03, (clf.score(X_te, y_te), theirs)


# ---------------------------------------------------------------------------------------------
# Labels and probabilities


def test_string_labels_and_column_order(iris):
    X, y = iris
    # Labels whose sorted order differs from the integer codes: classes_ is sorted.
    names = np.array(["zebra", "apple", "mango"])[y]
    clf = XentClassifier(epochs=30).fit(X, names)
    np.testing.assert_array_equal(clf.classes_, ["apple", "mango", "zebra"])
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    pred = clf.predict(X)
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    # The "zebra" column holds the probability of the rows labelled "zebra" (iris class 0,
    # setosa, which is linearly separable): high there, low elsewhere.
    zebra = proba[:, list(clf.classes_).index("zebra")]
    assert zebra[names == "zebra"].mean() > 0.9 and zebra[names != "zebra"].mean() < 0.1
    assert clf.score(X, names) > 0.9


def test_binary_string_labels_sigmoid_columns():
    X, y = load_breast_cancer(return_X_y=True)
    labels = np.array(["malignant", "benign"])[y]
    clf = XentClassifier(epochs=10).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, ["benign", "malignant"])
    proba = clf.predict_proba(X)
    # Column 1 is the sigmoid of the network's logit over the fitted temperature, column 0 its
    # complement.
    z = clf.model_.logits(X).astype(np.float64) / clf.temperature_
    assert clf.temperature_ > 0 and clf.temperature_ != 1.0  # fitted on the validation rows
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert clf.score(X, labels) > 0.9


def test_task_multiclass_on_two_classes():
    X, y = load_breast_cancer(return_X_y=True)
    clf = XentClassifier(epochs=5, task="multiclass").fit(X, y)
    assert clf.model_.task == "multiclass"
    assert clf.model_.net.linear2.out_features == 2  # NeuralNet2, softmax over 2 logits


# ---------------------------------------------------------------------------------------------
# Pipeline, GridSearchCV, cross_val_score


def test_pipeline_with_own_scaler_equals_builtin_scaler(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), XentClassifier(epochs=15, scaler="none")).fit(X, y)
    alone = XentClassifier(epochs=15).fit(X, y)
    # The same StandardScaler arithmetic either way: the same network, the same probabilities.
    np.testing.assert_array_equal(pipe.predict_proba(X), alone.predict_proba(X))
    assert pipe.score(X, y) > 0.9


def test_gridsearchcv(iris):
    X, y = iris
    grid = GridSearchCV(XentClassifier(epochs=10), {"hidden": [2, 16], "lr": [0.01, 0.05]},
                        cv=3).fit(X, y)
    assert set(grid.best_params_) == {"hidden", "lr"}
    assert len(grid.cv_results_["mean_test_score"]) == 4
    assert grid.best_estimator_.hidden == grid.best_params_["hidden"]
    assert grid.best_score_ > 0.8
    assert grid.score(X, y) > 0.85


@pytest.mark.slow
def test_cross_val_score_beside_mlpclassifier(iris):
    X, y = iris
    ours = cross_val_score(XentClassifier(epochs=20), X, y, cv=5)
    theirs = cross_val_score(make_pipeline(StandardScaler(), MLPClassifier(
        max_iter=2000, random_state=0)), X, y, cv=5)
    assert ours.shape == (5,)
    assert ours.mean() >= theirs.mean() - 0.05, (ours, theirs)


# ---------------------------------------------------------------------------------------------
# Parameters, clone, reproducibility


def test_parameters_are_the_command_lines_options():
    params = XentClassifier().get_params()
    assert set(params) >= {"recipe", "hidden", "epochs", "lr", "optimizer", "weight_decay",
                           "batch_size", "random_state", "loss", "task", "scaler"}


def test_clone_and_set_params_round_trip():
    est = XentClassifier(hidden=8, lr=0.05, batch_size="full", optimizer="sgd", random_state=7)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    copy.set_params(hidden=3, epochs=4)
    assert copy.hidden == 3 and copy.epochs == 4 and est.hidden == 8
    assert XentClassifier(**copy.get_params()).get_params() == copy.get_params()


def test_same_random_state_same_predictions(iris):
    X, y = iris
    a = XentClassifier(epochs=8, random_state=5).fit(X, y).predict_proba(X)
    b = XentClassifier(epochs=8, random_state=5).fit(X, y).predict_proba(X)
    c = XentClassifier(epochs=8, random_state=6).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = XentClassifier(epochs=8, random_state=np.random.RandomState(0)).fit(X, y)
    assert d.predict_proba(X).shape == (150, 3)


@pytest.mark.parametrize("options", [
    {},
    {"class_weight": "balanced", "label_smoothing": 0.1, "patience": 2, "val_size": 0.25},
    {"val_size": 0.0, "batch_size": None, "optimizer": "sgd", "lr": 0.1},
])
def test_same_training_as_xent_train(options):
    """The estimator runs `xent train`'s loop: on the same rows, recipe and seed it learns the
    same weights, byte for byte, the same validation split, best epoch and temperature."""
    from xent.cli import _data, _model, _train

    params = {k: ("full" if k == "batch_size" and v is None else v) for k, v in options.items()}
    patience = params.pop("patience", None)
    for task in ("binary", "multiclass"):
        table = _data.builtin(task)
        recipe = dataclasses.replace(_train.DEFAULT, epochs=6, **options)
        cli = _train.train(table, task, recipe, seed=3)
        est = XentClassifier(epochs=6, random_state=3, **params,
                             **({"patience": patience} if patience else {}))
        est.fit(cli.split.raw_train, cli.split.y_train)
        assert est.recipe_ == recipe
        assert _model.weights_bytes(est.model_.net) == _model.weights_bytes(cli.classifier.net)
        np.testing.assert_array_equal(est.model_.mean, cli.classifier.mean)
        for key in cli.history:
            if key != "test_loss":
                np.testing.assert_array_equal(est.history_[key], cli.history[key])
        assert est.temperature_ == cli.classifier.temperature
        assert est.best_epoch_ == cli.fit.best_epoch and est.n_iter_ == cli.fit.epochs_run


def test_class_weight_dict_equals_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    X, y = load_breast_cancer(return_X_y=True)
    keep = np.r_[np.flatnonzero(y == 0)[:60], np.flatnonzero(y == 1)]  # 60 against 357
    X, labels = X[keep], np.array(["malignant", "benign"])[y[keep]]
    w = compute_class_weight("balanced", classes=np.unique(labels), y=labels)
    by_dict = XentClassifier(epochs=5, val_size=0, class_weight=dict(
        zip(np.unique(labels), w, strict=True))).fit(X, labels)
    balanced = XentClassifier(epochs=5, val_size=0, class_weight="balanced").fit(X, labels)
    plain = XentClassifier(epochs=5, val_size=0).fit(X, labels)
    np.testing.assert_array_equal(by_dict.predict_proba(X), balanced.predict_proba(X))
    assert not np.array_equal(plain.predict_proba(X), balanced.predict_proba(X))
    # The weights go with the labels: the rare class gains probability.
    rare = list(balanced.classes_).index("malignant")
    assert (balanced.predict_proba(X)[:, rare].mean() > plain.predict_proba(X)[:, rare].mean())


def test_early_stopping_and_validation(iris):
    X, y = iris
    clf = XentClassifier(epochs=300, patience=3, lr=0.05).fit(X, y)
    assert clf.n_iter_ < 300 and clf.n_iter_ - clf.best_epoch_ == 3  # stopped 3 after the best
    assert len(clf.history_["val_loss"]) == clf.n_iter_
    assert clf.history_["val_loss"][clf.best_epoch_ - 1] == min(clf.history_["val_loss"])
    none = XentClassifier(epochs=4, val_size=0).fit(X, y)
    assert none.best_epoch_ == 0 and none.temperature_ == 1.0 and "val_loss" not in none.history_


def test_default_recipe_adapts_to_the_data_size():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10_000, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=10_000) > 0).astype(int)
    clf = XentClassifier(epochs=1).fit(X, y)
    assert clf.recipe_.name == "default-large"  # as `xent train` from 10,000 training rows
    assert clf.model_.net.linear1.out_features == clf.recipe_.hidden == 128
    assert XentClassifier(epochs=1).fit(X[:500], y[:500]).recipe_.name == "default"


def test_loss_torch_agrees_with_xent(iris):
    X, y = iris
    a = XentClassifier(epochs=5, loss="xent").fit(X, y).predict_proba(X)
    b = XentClassifier(epochs=5, loss="torch").fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_tutorial_recipe(iris):
    X, y = iris
    clf = XentClassifier(recipe="tutorial", epochs=50).fit(X, y)
    assert clf.model_.net.linear1.out_features == 5  # the tutorials' 5 hidden units
    assert clf.n_iter_ == 50


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("params, message", [
    ({"hidden": 0}, "hidden=0; expected a positive integer"),
    ({"epochs": 2.5}, "epochs=2.5; expected a positive integer"),
    ({"lr": -1.0}, "lr=-1.0; expected a positive finite number"),
    ({"lr": float("nan")}, "lr=nan"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1; expected a non-negative"),
    ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
    ({"batch_size": "half"}, "batch_size='half'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"loss": "mse"}, "loss='mse'"),
    ({"scaler": "minmax"}, "scaler='minmax'"),
    ({"task": "regression"}, "task='regression'"),
    ({"recipe": "fast"}, "recipe='fast'"),
    ({"val_size": 1.0}, "val_size=1.0; expected a number in"),
    ({"patience": -1}, "patience=-1; expected a non-negative integer"),
    ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
    ({"class_weight": "auto"}, "class_weight='auto'"),
    ({"class_weight": {0: 1.0, 1: -2.0}}, "expected finite weights >= 0"),
])
def test_bad_parameters_fail_in_fit(iris, params, message):
    X, y = iris
    est = XentClassifier(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        est.fit(X, y)


def test_one_class_and_binary_task_on_three(iris):
    X, y = iris
    with pytest.raises(ValueError, match="at least 2 classes in y; found 1 class"):
        XentClassifier(epochs=1).fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="task='binary' needs 2 classes; y has 3"):
        XentClassifier(epochs=1, task="binary").fit(X, y)


def test_overflowing_values_name_row_and_column(iris):
    X, y = iris
    X = X.copy()
    X[4, 2] = 1e300  # finite in float64; with scaler 'none' it is inf in float32
    with pytest.raises(ValueError, match=r"X, row 5, column 'x2': the value 1e\+300 "
                                         "standardises to 1e\\+300 .*beyond float32's range"):
        XentClassifier(epochs=1, scaler="none").fit(X, y)
    # With the scaler, the column's variance overflows float64 first.
    with pytest.raises(ValueError, match=r"X, row 5, column 'x2': the value 1e\+300 is too "
                                         "large to standardise"):
        XentClassifier(epochs=1).fit(X, y)
    clf = XentClassifier(epochs=1).fit(iris[0], y)
    with pytest.raises(ValueError, match=r"X, row 1, column 'x1'"):
        clf.predict_proba(np.array([[1.0, 1e300, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"X, row 2, column 'x0'"):
        clf.predict(np.array([[1.0, 1.0, 1.0, 1.0], [-1e300, 1.0, 1.0, 1.0]]))


def test_diverging_run_is_a_value_error(iris):
    X, y = iris
    with pytest.raises(ValueError, match=r"training diverged in epoch \d+: .* is nan"):
        XentClassifier(epochs=3, lr=1e12, optimizer="sgd", batch_size="full").fit(X, y)


def test_import_xent_needs_only_numpy():
    code = ("import sys, xent; bad = [m for m in ('sklearn', 'torch', 'xent.sklearn') "
            "if m in sys.modules]; sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_dataframes_as_scikit_learn_estimators_take_them():
    """feature_names_in_, string labels, names checked at predict; text columns refused with a
    message naming them; the ColumnTransformer pipeline of docs/cli.md on categories and NaN."""
    pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = load_iris(as_frame=True)
    X = data.data
    y = data.target.map(dict(enumerate(data.target_names)))
    clf = XentClassifier(epochs=5).fit(X, y)
    assert list(clf.feature_names_in_) == list(X.columns)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(clf.predict(X.iloc[:5])) <= set(clf.classes_)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(X.rename(columns={X.columns[0]: "other"}))
    with pytest.raises(ValueError, match=r"'colour'.*ColumnTransformer"):
        XentClassifier(epochs=5).fit(X.assign(colour="red"), y)
    messy = X.assign(colour=np.where(np.arange(len(X)) % 3, "red", "blue"))
    messy.iloc[::7, 0] = np.nan
    pipe = make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                  StandardScaler()), list(X.columns)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"])]),
        XentClassifier(epochs=30, scaler="none"))
    assert pipe.fit(messy, y).score(messy, y) > 0.8


# loss='focal' / 'poly1' (issue 19, item 6)

@pytest.mark.parametrize(("loss", "option"), [("focal", {"focal_gamma": 1.5}),
                                              ("poly1", {"poly_epsilon": 2.0})])
def test_focal_and_poly1_are_xent_trains(loss, option):
    """loss='focal' / 'poly1' with their option train the same weights as `xent train --loss
    focal --focal-gamma 1.5` / `--loss poly1 --poly-epsilon 2`, byte for byte."""
    from xent.cli import _data, _model, _train

    for task in ("binary", "multiclass"):
        table = _data.builtin(task)
        recipe = dataclasses.replace(_train.DEFAULT, epochs=3, **option)
        cli = _train.train(table, task, recipe, seed=3, loss=loss)
        est = XentClassifier(epochs=3, random_state=3, loss=loss, **option)
        est.fit(cli.split.raw_train, cli.split.y_train)
        assert est.recipe_ == recipe
        assert _model.weights_bytes(est.model_.net) == _model.weights_bytes(cli.classifier.net)
        assert est.get_params()[next(iter(option))] == next(iter(option.values()))


@pytest.mark.parametrize("params, message", [
    ({"loss": "focal", "focal_gamma": -1.0}, "focal_gamma=-1.0; expected a finite number >= 0"),
    ({"loss": "focal", "focal_gamma": float("inf")}, "focal_gamma=inf"),
    ({"loss": "poly1", "poly_epsilon": -1.5}, "poly_epsilon=-1.5; expected a finite number >= -1"),
    ({"loss": "poly1", "poly_epsilon": "1"}, "poly_epsilon='1'"),
])
def test_bad_focal_and_poly_parameters_fail_in_fit(iris, params, message):
    X, y = iris
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        XentClassifier(**params).fit(X, y)
