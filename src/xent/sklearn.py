"""A scikit-learn estimator on `xent train`'s networks: `XentClassifier`.

``XentClassifier`` trains the tutorials' networks (NeuralNet1 for two classes: one logit,
sigmoid and binary cross-entropy; NeuralNet2 otherwise: one logit per class, softmax
cross-entropy) with the same training loop as ``xent train`` (`xent.cli._train.fit_network`),
and follows scikit-learn's estimator conventions, so it works in ``Pipeline``,
``GridSearchCV`` and ``cross_val_score``. This module needs scikit-learn; PyTorch is imported
when a model is fitted. ``import xent`` itself still needs only NumPy.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xent.cli._train import Recipe

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted
except ImportError as e:  # pragma: no cover
    raise ImportError("xent.sklearn needs scikit-learn, which is not installed; "
                      "pip install 'xent[cli]'") from e
try:
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover  (scikit-learn < 1.6)
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

__all__ = ["XentClassifier"]

_SEED_LIMIT = 2**31  # seeds drawn from a RandomState (random_state None or a RandomState)

# Checks of scikit-learn's `check_estimator` that this estimator does not pass, and why
# (also in the class docstring and docs/cli.md). Pass it as ``expected_failed_checks``.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@contextlib.contextmanager
def _value_errors() -> Iterator[None]:
    """The command line's one-line errors (`CLIError`) as scikit-learn's ``ValueError``."""
    from xent.cli._errors import CLIError

    try:
        yield
    except CLIError as e:
        raise ValueError(str(e)) from None


def _numeric_frame(X: Any) -> None:
    """Refuse a DataFrame with text columns with a message that names them and the way
    forward (scikit-learn's ``ColumnTransformer`` before the classifier)."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(X, "columns"):
        return
    try:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype
    except ImportError:  # pragma: no cover
        return
    text = [str(c) for c, t in zip(X.columns, dtypes, strict=True)
            if not (is_numeric_dtype(t) or is_bool_dtype(t))]
    if text:
        raise ValueError(f"XentClassifier takes numeric features; the column(s) "
                         f"{', '.join(map(repr, text))} are not numbers: encode them before it "
                         "(sklearn.compose.ColumnTransformer with OneHotEncoder; missing values: "
                         "SimpleImputer), or train with 'xent train', which does so itself")


class XentClassifier(ClassifierMixin, BaseEstimator):
    r"""The tutorials' network classifier (``xent train``) as a scikit-learn estimator.

    Two classes train NeuralNet1 (Linear -> ReLU -> Linear to one logit :math:`z`,
    :math:`P(\text{classes\_}[1]) = \sigma(z)`, binary cross-entropy on the logit); more train
    NeuralNet2 (one logit per class, :math:`P = \mathrm{softmax}(z)`, cross-entropy), both
    with xent's losses through ``xent.torch`` and PyTorch's optimisers, by the same training
    loop as ``xent train``. Every option of ``xent train`` is a parameter; None takes the
    value of ``recipe``, as the command line does.

    Args:
        recipe: 'default' (AdamW lr 0.01, weight decay 0.03, 32 hidden units, 200 epochs of
            batches of 32, 0.2 of the rows held out to keep the best epoch; no validation
            under 50 rows, and 'default-large' from 10,000 rows, as ``xent train`` adapts it),
            'default-large', or 'tutorial' (SGD lr 0.1, 5 hidden units, 100 full-batch epochs,
            BCE on the sigmoid's output): ``xent train --recipe``.
        hidden: hidden units (``--hidden``).
        epochs: passes over the rows (``--epochs``).
        lr: learning rate (``--lr``).
        optimizer: 'sgd', 'adam' or 'adamw' (``--optimizer``).
        weight_decay: the optimiser's weight decay (``--weight-decay``).
        batch_size: rows per step, or 'full' (``--batch-size``).
        val_size: the fraction of the rows held out (stratified) to pick the best epoch, stop
            early and fit the temperature; 0 holds none out (``--val-size``).
        patience: stop after this many epochs without a lower validation loss; 0 never stops
            early (``--patience``).
        class_weight: 'balanced' (each class weighted ``n_rows / (n_classes * its rows)``,
            ``--class-weight balanced``), 'none' or None (no weights), or a dict
            ``{label: weight}`` (labels left out weigh 1), scikit-learn's convention.
        label_smoothing: label smoothing of the loss, in [0, 1) (``--label-smoothing``).
        random_state: an int is the torch seed of the weights and the batch order
            (``--seed``; the same int gives the same model); None or a ``RandomState`` draws
            one.
        loss: 'xent' (cross-entropy by xent.torch), 'torch' (cross-entropy by torch.nn),
            'focal' (``xent.torch.focal_loss``; two classes: ``sigmoid_focal_loss`` without
            alpha, ``class_weight`` being the class balance) or 'poly1'
            (``xent.torch.poly1_cross_entropy``) (``--loss``).
        focal_gamma: the focal loss's gamma >= 0, used with ``loss='focal'``
            (``--focal-gamma``).
        poly_epsilon: the poly-1 loss's epsilon >= -1, used with ``loss='poly1'``
            (``--poly-epsilon``).
        task: 'binary', 'multiclass', or None: binary for two classes, else multiclass
            (``--task``).
        scaler: 'standard' (standardise with the mean and scale of the rows given to ``fit``,
            as ``xent train`` does with its training rows) or 'none' (features used as given,
            e.g. after a scaler of your own in a ``Pipeline``).

    Attributes:
        classes_: the class labels ``(n_classes,)``, sorted; ``predict_proba``'s columns.
        n_features_in_: the number of features seen by ``fit``.
        feature_names_in_: the column names, when ``X`` had them (a DataFrame).
        model_: the trained `xent.cli._model.Classifier` (network, scaler, classes,
            temperature).
        recipe_: the `xent.cli._train.Recipe` it was trained with (the named recipe with the
            parameters over it; 'default' becomes 'default-large' from 10,000 rows on).
        history_: the losses of each epoch: ``epoch_loss`` (the batches' mean), ``train_loss``,
            and ``val_loss`` with a validation split.
        n_iter_: the number of epochs run.
        best_epoch_: the epoch of the lowest validation loss (0 without validation).
        temperature_: the temperature fitted on the validation rows (1 without them);
            ``predict_proba`` is the softmax (sigmoid) of the logits divided by it.

    Shapes: ``X`` is ``(n_samples, n_features)``, finite numbers; ``y`` is ``(n_samples,)``
    labels of any kind scikit-learn classifies (integers, strings), at least two distinct.

    A pandas ``DataFrame`` is accepted as scikit-learn's estimators accept it: its column names
    become ``feature_names_in_`` (and must match at ``predict``); its columns must be numeric
    (text columns are a ``ValueError`` naming them: encode them in a ``ColumnTransformer``
    before the classifier, as scikit-learn's conventions say).

    scikit-learn's ``check_estimator`` passes in full (scikit-learn 1.9.1);
    `EXPECTED_FAILED_CHECKS`, the list of checks it cannot pass, is empty. There is no
    ``sample_weight``, ``partial_fit`` or ``decision_function``.

    Edge cases: a ``y`` with one class, continuous ``y``, NaN or inf in ``X`` or ``y``, sparse
    ``X`` and a wrong number of features are ``ValueError`` (``TypeError`` for sparse), as
    scikit-learn's own estimators raise them. A value that overflows float32 after scaling is a
    ``ValueError`` naming its row and column.

    Example:
        >>> from sklearn.datasets import load_iris
        >>> from xent.sklearn import XentClassifier
        >>> X, y = load_iris(return_X_y=True)
        >>> clf = XentClassifier(epochs=30).fit(X, y)
        >>> clf.classes_
        array([0, 1, 2])
        >>> print(clf.predict_proba(X[:1]).sum().round(6))
        1.0
        >>> bool(clf.score(X, y) > 0.9)
        True
    """

    def __init__(self, recipe: str = "default", *, hidden: int | None = None,
                 epochs: int | None = None, lr: float | None = None,
                 optimizer: str | None = None, weight_decay: float | None = None,
                 batch_size: int | str | None = None, val_size: float | None = None,
                 patience: int | None = None, class_weight: str | dict | None = None,
                 label_smoothing: float | None = None, random_state: Any = 0,
                 loss: str = "xent", focal_gamma: float = 2.0, poly_epsilon: float = 1.0,
                 task: str | None = None, scaler: str = "standard") -> None:
        self.recipe = recipe
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.val_size = val_size
        self.patience = patience
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.random_state = random_state
        self.loss = loss
        self.focal_gamma = focal_gamma
        self.poly_epsilon = poly_epsilon
        self.task = task
        self.scaler = scaler

    # -----------------------------------------------------------------------------------------
    # Parameters

    def _recipe(self, rows: int) -> Recipe:
        """The `xent.cli._train.Recipe` of the parameters for ``rows`` training rows, as
        ``xent train`` makes it from its options (`ValueError` for a bad parameter)."""
        from xent.cli import _train

        if self.recipe not in _train.RECIPES:
            raise ValueError(f"recipe={self.recipe!r}; expected one of {sorted(_train.RECIPES)}")
        options: dict[str, Any] = {}  # the command line's parsed options (None: not given)
        for name, low in (("hidden", 1), ("epochs", 1), ("patience", 0)):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                    kind = "a positive" if low else "a non-negative"
                    raise ValueError(f"{name}={v!r}; expected {kind} integer or None")
                v = int(v)
            options[name] = v
        for name, ok in (("lr", lambda v: v > 0), ("weight_decay", lambda v: v >= 0),
                         ("val_size", lambda v: 0 <= v < 1),
                         ("label_smoothing", lambda v: 0 <= v < 1)):
            v = getattr(self, name)
            if v is not None:
                if not (isinstance(v, numbers.Real) and not isinstance(v, bool)
                        and math.isfinite(v) and ok(v)):
                    kind = {"lr": "a positive finite number",
                            "weight_decay": "a non-negative finite number"}.get(
                                name, "a number in [0, 1)")
                    raise ValueError(f"{name}={v!r}; expected {kind} or None")
                v = float(v)
            options[name] = v
        if self.optimizer not in (None, "sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}; expected 'sgd', 'adam', "
                             "'adamw' or None")
        options["optimizer"] = self.optimizer
        cw = self.class_weight
        if not (cw is None or isinstance(cw, dict) or isinstance(cw, str)
                and cw in ("balanced", "none")):
            raise ValueError(f"class_weight={cw!r}; expected 'balanced', 'none', None or a dict "
                             "{label: weight}")
        options["class_weight"] = None if isinstance(cw, dict) else cw  # dict: see fit
        bs = self.batch_size
        if isinstance(bs, str) and bs == "full":
            bs = 0  # the command line's 'full'
        elif bs is not None:
            if not isinstance(bs, numbers.Integral) or isinstance(bs, bool) or bs < 1:
                raise ValueError(f"batch_size={bs!r}; expected a positive integer, 'full' or "
                                 "None")
            bs = int(bs)
        options["batch_size"] = bs
        if self.loss not in _train.LOSSES:
            raise ValueError(f"loss={self.loss!r}; expected one of {_train.LOSSES}")
        for field, least in (("focal_gamma", 0.0), ("poly_epsilon", -1.0)):
            given: Any = getattr(self, field)
            if not (isinstance(given, numbers.Real) and not isinstance(given, bool)
                    and math.isfinite(given) and float(given) >= least):
                raise ValueError(f"{field}={given!r}; expected a finite number >= {least:g}")
            options[field] = float(given)
        if self.scaler not in ("standard", "none"):
            raise ValueError(f"scaler={self.scaler!r}; expected 'standard' or 'none'")
        if self.task not in (None, "binary", "multiclass"):
            raise ValueError(f"task={self.task!r}; expected 'binary', 'multiclass' or None")
        changes = _train.recipe_changes(types.SimpleNamespace(**options))
        return _train.recipe_for(self.recipe, rows, **changes)

    def _dict_weights(self, classes: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """The weight of each class of ``classes`` from a dict ``class_weight``, else None."""
        if not isinstance(self.class_weight, dict):
            return None
        from sklearn.utils.class_weight import compute_class_weight

        w = np.asarray(compute_class_weight(self.class_weight, classes=classes, y=y),
                       dtype=np.float64)
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError(f"class_weight={self.class_weight!r}; expected finite weights >= 0, "
                             "not all 0")
        return w

    def _seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            return int(rs)
        return int(check_random_state(rs).randint(_SEED_LIMIT))

    # -----------------------------------------------------------------------------------------
    # Fitting and predicting

    def fit(self, X: Any, y: Any) -> XentClassifier:
        """Train a network on ``X`` ``(n_samples, n_features)`` and labels ``y`` ``(n_samples,)``.

        Returns:
            self, with ``classes_``, ``n_features_in_``, ``model_``, ``history_`` and
            ``n_iter_`` set.
        """
        from xent.cli import _data, _model, _train

        _numeric_frame(X)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        recipe = self._recipe(len(y))
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; found 1 "
                             f"class ({classes[0]!r}) in {len(y)} rows")
        task = self.task or ("binary" if len(classes) == 2 else "multiclass")
        if task == "binary" and len(classes) != 2:
            raise ValueError(f"task='binary' needs 2 classes; y has {len(classes)}")
        names = getattr(self, "feature_names_in_", None)
        features = ([str(n) for n in names] if names is not None
                    else [f"x{j}" for j in range(X.shape[1])])
        table = _data.Table(X=X, features=features, source="X")
        with _value_errors():  # the command line's checks and messages, as ValueError
            if self.scaler == "standard":
                from sklearn.preprocessing import StandardScaler

                _data._check_scalable(table)  # a variance that overflows names its column
                fitted = StandardScaler().fit(X)
                mean = np.asarray(fitted.mean_, dtype=np.float64)
                scale = np.asarray(fitted.scale_, dtype=np.float64)
            else:
                mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
            Xs = _data.standardised(table, mean, scale)  # beyond float32: row and column
            fit = _train.fit_network(Xs, y_idx.astype(np.int64), task, recipe, len(classes),
                                     seed=self._seed(), loss=self.loss,
                                     class_weight_values=self._dict_weights(classes, y))
        model = _model.Classifier(task=task, net=fit.net, features=features, target="",
                                  classes=list(classes), mean=mean, scale=scale,
                                  temperature=fit.temperature)
        self.classes_ = classes
        self.model_ = model
        self.recipe_ = recipe
        self.history_ = fit.history
        self.n_iter_ = fit.epochs_run
        self.best_epoch_ = fit.best_epoch
        self.temperature_ = fit.temperature
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order.

        Sigmoid for two classes (``[1 - p, p]``), softmax otherwise, of the logits divided by
        ``temperature_``; each row sums to 1 (to float32 rounding).
        """
        from xent.cli import _data, _predict

        check_is_fitted(self)
        _numeric_frame(X)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        with _value_errors():  # a value beyond float32 once scaled, or a non-finite output
            proba = _predict.checked_proba(self.model_, _data.Table(
                X=X, features=self.model_.features, source="X"))
        return proba.astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, ``(n_samples,)`` labels from ``classes_``."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
