"""A scikit-learn estimator on `xent train`'s networks: `XentClassifier`.

``XentClassifier`` trains the tutorials' networks (NeuralNet1 for two classes: one logit,
sigmoid and binary cross-entropy; NeuralNet2 otherwise: one logit per class, softmax
cross-entropy) with the same training loop as ``xent train`` (`xent.cli._train.fit_network`),
and follows scikit-learn's estimator conventions, so it works in ``Pipeline``,
``GridSearchCV`` and ``cross_val_score``. This module needs scikit-learn; PyTorch is imported
when a model is fitted. ``import xent`` itself still needs only NumPy.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

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
    def validate_data(estimator, *args, **kwargs):  # type: ignore[no-redef]
        return estimator._validate_data(*args, **kwargs)

__all__ = ["XentClassifier"]

_SEED_LIMIT = 2**31  # seeds drawn from a RandomState (random_state None or a RandomState)

# Checks of scikit-learn's `check_estimator` that this estimator does not pass, and why
# (also in the class docstring and docs/cli.md). Pass it as ``expected_failed_checks``.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


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
            batches of 32) or 'tutorial' (SGD lr 0.1, 5 hidden units, 100 full-batch epochs,
            BCE on the sigmoid's output): ``xent train --recipe``.
        hidden: hidden units (``--hidden``).
        epochs: passes over the rows (``--epochs``).
        lr: learning rate (``--lr``).
        optimizer: 'sgd', 'adam' or 'adamw' (``--optimizer``).
        weight_decay: the optimiser's weight decay (``--weight-decay``).
        batch_size: rows per step, or 'full' (``--batch-size``).
        random_state: an int is the torch seed of the weights and the batch order
            (``--seed``; the same int gives the same model); None or a ``RandomState`` draws
            one.
        loss: 'xent' (xent.torch's losses) or 'torch' (torch.nn's own) (``--loss``).
        task: 'binary', 'multiclass', or None: binary for two classes, else multiclass
            (``--task``).
        scaler: 'standard' (standardise with the mean and scale of the rows given to ``fit``,
            as ``xent train`` does with its training rows) or 'none' (features used as given,
            e.g. after a scaler of your own in a ``Pipeline``).

    Attributes:
        classes_: the class labels ``(n_classes,)``, sorted; ``predict_proba``'s columns.
        n_features_in_: the number of features seen by ``fit``.
        feature_names_in_: the column names, when ``X`` had them (a DataFrame).
        model_: the trained `xent.cli._model.Classifier` (network, scaler, classes).
        history_: the mean training loss of each epoch (``history_["epoch_loss"]``).
        n_iter_: the number of epochs run.

    Shapes: ``X`` is ``(n_samples, n_features)``, finite numbers; ``y`` is ``(n_samples,)``
    labels of any kind scikit-learn classifies (integers, strings), at least two distinct.

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
                 batch_size: int | str | None = None, random_state: Any = 0,
                 loss: str = "xent", task: str | None = None,
                 scaler: str = "standard") -> None:
        self.recipe = recipe
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.random_state = random_state
        self.loss = loss
        self.task = task
        self.scaler = scaler

    # -----------------------------------------------------------------------------------------
    # Parameters

    def _recipe(self):
        """The `xent.cli._train.Recipe` of the parameters (`ValueError` for a bad one)."""
        from xent.cli import _train

        if self.recipe not in _train.RECIPES:
            raise ValueError(f"recipe={self.recipe!r}; expected one of {sorted(_train.RECIPES)}")
        changes: dict[str, Any] = {}
        for name in ("hidden", "epochs"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{name}={v!r}; expected a positive integer or None")
                changes[name] = int(v)
        for name, low_open in (("lr", True), ("weight_decay", False)):
            v = getattr(self, name)
            if v is not None:
                ok = (isinstance(v, numbers.Real) and not isinstance(v, bool)
                      and np.isfinite(v) and (v > 0 if low_open else v >= 0))
                if not ok:
                    kind = "a positive" if low_open else "a non-negative"
                    raise ValueError(f"{name}={v!r}; expected {kind} finite number or None")
                changes[name] = float(v)
        if self.optimizer is not None:
            if self.optimizer not in ("sgd", "adam", "adamw"):
                raise ValueError(f"optimizer={self.optimizer!r}; expected 'sgd', 'adam', "
                                 "'adamw' or None")
            changes["optimizer"] = self.optimizer
        bs = self.batch_size
        if bs is not None:
            if isinstance(bs, str) and bs == "full":
                changes["batch_size"] = None
            elif isinstance(bs, numbers.Integral) and not isinstance(bs, bool) and bs >= 1:
                changes["batch_size"] = int(bs)
            else:
                raise ValueError(f"batch_size={bs!r}; expected a positive integer, 'full' or "
                                 "None")
        if self.loss not in ("xent", "torch"):
            raise ValueError(f"loss={self.loss!r}; expected 'xent' or 'torch'")
        if self.scaler not in ("standard", "none"):
            raise ValueError(f"scaler={self.scaler!r}; expected 'standard' or 'none'")
        if self.task not in (None, "binary", "multiclass"):
            raise ValueError(f"task={self.task!r}; expected 'binary', 'multiclass' or None")
        return dataclasses.replace(_train.RECIPES[self.recipe], **changes)

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
        from xent.cli import _model, _train
        from xent.cli._errors import CLIError

        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        recipe = self._recipe()
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; found 1 "
                             f"class ({classes[0]!r}) in {len(y)} rows")
        task = self.task or ("binary" if len(classes) == 2 else "multiclass")
        if task == "binary" and len(classes) != 2:
            raise ValueError(f"task='binary' needs 2 classes; y has {len(classes)}")
        if self.scaler == "standard":
            from sklearn.preprocessing import StandardScaler

            fitted = StandardScaler().fit(X)
            mean = np.asarray(fitted.mean_, dtype=np.float64)
            scale = np.asarray(fitted.scale_, dtype=np.float64)
        else:
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        names = getattr(self, "feature_names_in_", None)
        features = ([str(n) for n in names] if names is not None
                    else [f"x{j}" for j in range(X.shape[1])])
        model = _model.Classifier(task=task, net=None, features=features, target="",
                                  classes=list(classes), mean=mean, scale=scale)
        Xs = self._scaled(model, X)
        try:
            fit = _train.fit_network(Xs, y_idx.astype(np.int64), task, recipe, len(classes),
                                     seed=self._seed(), loss=self.loss)
        except CLIError as e:  # e.g. a diverging run: the command line's one-line message
            raise ValueError(str(e)) from None
        model.net = fit.net
        self.classes_ = classes
        self.model_ = model
        self.history_ = fit.history
        self.n_iter_ = len(fit.history["epoch_loss"])
        return self

    @staticmethod
    def _scaled(model, X: np.ndarray) -> np.ndarray:
        """``model.scaled(X)``, or a `ValueError` naming the first value that overflows."""
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = model.scaled(X)
        bad = ~np.isfinite(Xs)
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"X[{i}, {j}] = {float(X[i, j])!r} is {float(Xs[i, j])} after "
                             "scaling (float32 holds at most 3.4e38); expected values within "
                             "float32's range once standardised")
        return Xs

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order.

        Sigmoid for two classes (``[1 - p, p]``), softmax otherwise; each row sums to 1.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        self._scaled(self.model_, X)  # an overflow is an error, not a NaN probability
        return self.model_.proba(X).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, ``(n_samples,)`` labels from ``classes_``."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
