"""`xent train`: train the tutorials' networks with xent's losses and PyTorch's optimisers.

One run: split (scikit-learn's ``train_test_split``, ``random_state=42`` as in the tutorials),
standardise (scaler fitted on the training rows; the tutorial recipe fits it on all rows before
the split, as the tutorials do), hold a stratified validation split out of the training rows
(``val_size``), build NeuralNet1 or NeuralNet2 under ``torch.manual_seed(seed)``, train with
mini-batches drawn by a ``torch.Generator`` seeded with ``seed``, stop early when the
validation loss has not improved for ``patience`` epochs and restore the best epoch's weights,
fit a temperature on the validation rows (Guo et al., 2017), evaluate, and write the model
directory. Training runs on one thread, so the same seed gives the same weights and numbers,
byte for byte.

The function-level API (`train` on a table, `fit_network` on arrays, `recipe_for`) is what
`xent train` runs and what `xent.sklearn` calls; no argparse object reaches it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import _data, _model
from ._errors import CLIError, missing_extra, require

SPLIT_RANDOM_STATE = 42  # the tutorials' train_test_split(..., random_state=42)
CALIBRATION_BINS = 15  # Guo et al. (2017): ECE over 15 equal-width confidence bins
LARGE_ROWS = 10_000  # training rows from which the default recipe is `default-large`


@dataclass(frozen=True)
class Recipe:
    """How to train: the network width, the optimiser, the schedule and the loss's options.

    ``batch_size`` None means full batch (the whole training split per step, as the tutorials
    do). ``scaler`` is 'train' (fitted on the training split) or 'all' (fitted on every row
    before the split: the tutorials' leak). ``binary_loss`` is 'logits'
    (``binary_cross_entropy_with_logits`` on the logit) or 'sigmoid' (``binary_cross_entropy``
    on ``sigmoid(logit)``, the tutorial's ``nn.BCELoss`` on NeuralNet1's output).

    ``val_size`` is the fraction of the training rows held out (stratified) for validation; 0
    holds none out (no early stopping, no temperature). With a validation split the weights of
    the epoch with the lowest validation loss are the ones kept, and ``patience`` (None: never)
    stops the run after that many epochs without a lower one. ``class_weight`` 'balanced'
    weights each class by ``n_rows / (n_classes * rows_of_class)`` (scikit-learn's
    ``compute_class_weight``); ``label_smoothing`` is PyTorch's ``label_smoothing`` (for the
    binary net: the target ``y (1 - eps) + eps / 2``, the same loss as two-class
    cross-entropy with that smoothing). ``focal_gamma`` is the focal loss's gamma (used by the
    loss 'focal' only), ``poly_epsilon`` the poly-1 loss's epsilon (the loss 'poly1' only); see
    `loss_module`.
    """

    name: str
    hidden: int
    epochs: int
    lr: float
    optimizer: str
    batch_size: int | None
    weight_decay: float
    scaler: str
    binary_loss: str
    val_size: float = 0.0
    patience: int | None = None
    class_weight: str | None = None
    label_smoothing: float = 0.0
    selection: str = "val_loss"  # the best epoch: lowest 'val_loss', or 'calibrated' (after T)
    focal_gamma: float = 2.0  # Lin et al. (2017)'s gamma, torchvision's default
    poly_epsilon: float = 1.0  # Leng et al. (2022)'s Poly-1 epsilon


# Chosen from measurements over seeds 0-9 (benchmarks/recipe_seeds.py; docs/cli.md has the
# table and the neighbours tried): AdamW with decoupled weight decay, 32 hidden units, 200 epochs
# of batches of 32. 0.2 of the training rows are held out for the temperature; no early
# stopping: on the tutorials' small data the epoch of the lowest validation loss (about 10 binary,
# 30 three classes, on 32 and 48 validation rows) gives a lower test accuracy (0.808 mean, seeds
# down to 0.783, three classes) than the last epoch, whose overconfidence the temperature fixes.
DEFAULT = Recipe(name="default", hidden=32, epochs=200, lr=0.01, optimizer="adamw",
                 batch_size=32, weight_decay=0.03, scaler="train", binary_loss="logits",
                 val_size=0.2, patience=None)
MIN_VAL_ROWS = 50  # fewer training rows: the default recipe holds no validation rows out
# From LARGE_ROWS training rows on (benchmarks/bench_scale.py): wider, larger batches, a
# smaller step, and early stopping after 10 epochs without a better validation loss
# (scikit-learn's MLPClassifier(early_stopping=True) holds out 0.1 and waits 10 too).
DEFAULT_LARGE = Recipe(name="default-large", hidden=128, epochs=200, lr=0.003,
                       optimizer="adamw", batch_size=256, weight_decay=0.01, scaler="train",
                       binary_loss="logits", val_size=0.1, patience=10)
# The tutorials' exact recipe (000_*.txt): hidden 5, SGD lr 0.1, 100 full-batch epochs.
TUTORIAL = Recipe(name="tutorial", hidden=5, epochs=100, lr=0.1, optimizer="sgd",
                  batch_size=None, weight_decay=0.0, scaler="all", binary_loss="sigmoid")
RECIPES = {"default": DEFAULT, "default-large": DEFAULT_LARGE, "tutorial": TUTORIAL}
# `--loss`: the objective and who computes it ('xent' and 'torch' are cross-entropy, by
# xent.torch or by torch.nn; 'focal' and 'poly1' by xent.torch), and the Recipe field of each
# loss's own option.
LOSSES = ("xent", "torch", "focal", "poly1")
LOSS_OPTIONS = {"focal_gamma": "focal", "poly_epsilon": "poly1"}


def recipe_for(name: str, train_rows: int, **changes) -> Recipe:
    """The recipe ``name`` for a training split of ``train_rows`` rows, with ``changes`` over it.

    'default' adapts to the data: from `LARGE_ROWS` training rows on it is `DEFAULT_LARGE`;
    under `MIN_VAL_ROWS` it holds no validation rows out (``val_size`` 0).
    ``changes`` are Recipe fields (the command line's options), each applied as given (so
    ``patience=None`` turns early stopping off); leave out what the recipe should decide.
    """
    base = RECIPES[name]
    if name == "default" and train_rows >= LARGE_ROWS:
        base = DEFAULT_LARGE
    elif name == "default" and train_rows < MIN_VAL_ROWS:
        base = replace(base, val_size=0.0)
    return replace(base, **changes)


def train_rows(n: int, test_size: float) -> int:
    """The rows `split` leaves for training out of ``n`` (scikit-learn rounds the test rows up)."""
    return n - math.ceil(test_size * n)


@dataclass
class Split:
    """The standardised train and test rows of one table, and the scaler that made them."""

    X_train: np.ndarray  # float32, scaled
    X_test: np.ndarray
    y_train: np.ndarray  # int64 class indices
    y_test: np.ndarray
    mean: np.ndarray  # float64 scaler parameters: x_scaled = (x - mean) / scale
    scale: np.ndarray
    raw_train: np.ndarray  # float64 unscaled features, for reporting/tests
    raw_test: np.ndarray


def split(table: _data.Table, test_size: float, scaler: str) -> Split:
    """Split 80/20 (or ``test_size``) with ``random_state=42`` and standardise the features.

    For a CSV (``table.frame``) the encoding (`_columns.fit_encoder`: scikit-learn's
    ``ColumnTransformer`` of median imputation with missing-indicators, the standard scaler and
    one-hot categories) is fitted on the training rows (on every row for ``scaler='all'``) and
    sets ``table.X``, ``table.features`` and ``table.encoder``.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    n, y = table.n_rows, table.y
    if y is None:
        raise CLIError(f"{table.source}: no class labels to train on (expected a target column)")
    try:
        i_train, i_test = train_test_split(np.arange(n), test_size=test_size,
                                           random_state=SPLIT_RANDOM_STATE)
    except ValueError as e:
        raise CLIError(f"{table.source}: cannot split {n} rows with --test-size {test_size} "
                       f"({e})") from None
    if len(np.unique(y[i_train])) < 2:
        raise CLIError(f"{table.source}: the training split ({len(i_train)} rows) holds a single "
                       "class; expected at least 2 (add rows or lower --test-size)")
    if table.frame is not None:
        from . import _columns

        fit_rows = np.arange(n) if scaler == "all" else i_train
        fitted_on = table.frame.iloc[fit_rows]
        enc, mean, scale = _columns.fit_encoder(fitted_on, table.numeric, table.categorical)
        _columns.describe(table.roles, enc, fitted_on)
        table.encoder = enc
        table.X = enc.transform(table.frame)
        table.features = enc.names()
    else:
        fitted = StandardScaler().fit(table.X if scaler == "all" else table.X[i_train])
        mean = np.asarray(fitted.mean_, dtype=np.float64)
        scale = np.asarray(fitted.scale_, dtype=np.float64)  # 1 for constant columns

    # The one scaling formula, with the overflow check naming the file's row and column.
    return Split(_data.standardised(table, mean, scale, rows=i_train),
                 _data.standardised(table, mean, scale, rows=i_test),
                 y[i_train], y[i_test], mean, scale,
                 table.X[i_train], table.X[i_test])


class Diverged(CLIError):
    """Training met a non-finite loss: nothing is kept (the learning rate is too large)."""


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """'balanced' class weights ``n / (num_classes * count_c)`` of class indices ``y``
    (scikit-learn's ``compute_class_weight``), float64 ``(num_classes,)``."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    if len(present) < num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise CLIError(f"--class-weight balanced: class index(es) {missing} have no training "
                       "rows; expected every class in the training split")
    return np.asarray(compute_class_weight("balanced", classes=np.arange(num_classes), y=y),
                      dtype=np.float64)


def check_loss(loss: str, given: dict | None = None) -> None:
    """`CLIError` for a ``loss`` not in `LOSSES`, or for an option of another loss among the
    Recipe fields ``given`` (``--focal-gamma`` without ``--loss focal``)."""
    if loss not in LOSSES:
        raise CLIError(f"--loss {loss!r}; expected one of {', '.join(LOSSES)}")
    for field, owner in LOSS_OPTIONS.items():
        if (given or {}).get(field) is not None and loss != owner:
            raise CLIError(f"--{field.replace('_', '-')} is an option of --loss {owner}; "
                           f"this run's loss is --loss {loss}")


def loss_module(task: str, recipe: Recipe, backend: str, weights: np.ndarray | None = None):
    """The criterion of ``backend`` (a `LOSSES` name): cross-entropy by xent.torch ('xent') or
    by torch.nn.functional ('torch'); the focal loss ('focal') or the poly-1 cross-entropy
    ('poly1'), by xent.torch.

    ``weights`` are per-class weights (``recipe.class_weight``), and ``recipe.label_smoothing``
    is applied. Returns ``(name, apply)`` where ``apply(net, X, y)`` is the loss of a batch:
    multi-class ``cross_entropy(logits, y, weight, label_smoothing)`` (the weighted mean is
    divided by the sum of the rows' weights, as PyTorch's), or ``focal_loss(..., gamma)`` or
    ``poly1_cross_entropy(..., epsilon)`` with the same conventions; binary the BCE of the logit
    (or of its sigmoid) against ``y (1 - eps) + eps / 2`` with the per-row weight ``w[y]`` (a
    mean over the rows; balanced weights average 1 over the training rows, so it is the same
    scale). Binary focal is ``sigmoid_focal_loss(logit, y (1 - eps) + eps / 2, alpha=-1,
    gamma)`` times ``w[y]``, averaged over the rows: no alpha of its own (torchvision's 0.25
    down-weights the positives, the rare class of most binary tables), ``--class-weight
    balanced`` being the alpha-balancing, ``alpha_t ∝ w[y]``. Binary poly-1 is
    ``poly1_cross_entropy`` of the two logits ``[0, z]`` (``sigmoid(z) = softmax([0, z])_1``, so
    it is BCE + epsilon (1 - p_t)), per row times ``w[y]``, averaged over the rows. Focal and
    poly-1 work on the logit in every recipe (the tutorial recipe's BCE of the sigmoid is a
    cross-entropy choice).
    """
    import importlib

    import torch

    F: Any = importlib.import_module("torch.nn.functional" if backend == "torch"
                                     else "xent.torch")
    eps = recipe.label_smoothing
    gamma, poly = recipe.focal_gamma, recipe.poly_epsilon
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    options = {"focal": [f"gamma {gamma:g}"] + (["alpha none"] if task == "binary" else []),
               "poly1": [f"epsilon {poly:g}"]}.get(backend, [])
    options += ([f"class weights {', '.join(f'{v:.4g}' for v in weights)}"]
                if weights is not None else [])
    options += [f"label smoothing {eps:g}"] if eps else []
    suffix = f" ({'; '.join(options)})" if options else ""

    def target(y):
        return y * (1 - eps) + eps / 2 if eps else y

    def row_weights(y):
        return None if w is None else w[y.long()]

    def cross_entropy(net, X, y):
        return F.cross_entropy(net.logits(X), y, weight=w, label_smoothing=eps)

    def bce_of_sigmoid(net, X, y):
        return F.binary_cross_entropy(torch.sigmoid(net.logits(X)), target(y),
                                      weight=row_weights(y))

    def bce_with_logits(net, X, y):
        return F.binary_cross_entropy_with_logits(net.logits(X), target(y),
                                                  weight=row_weights(y))

    def focal(net, X, y):
        return F.focal_loss(net.logits(X), y, weight=w, gamma=gamma, label_smoothing=eps)

    def poly1(net, X, y):
        return F.poly1_cross_entropy(net.logits(X), y, weight=w, label_smoothing=eps,
                                     epsilon=poly)

    def sigmoid_focal(net, X, y):
        rows = F.sigmoid_focal_loss(net.logits(X), target(y), alpha=-1.0, gamma=gamma,
                                    reduction="none")
        rw = row_weights(y)
        return (rows if rw is None else rows * rw).mean()

    def poly1_of_two_logits(net, X, y):
        z = net.logits(X)
        return F.poly1_cross_entropy(torch.cat([torch.zeros_like(z), z], dim=1),
                                     y[:, 0].long(), weight=w, reduction="none",
                                     label_smoothing=eps, epsilon=poly).mean()

    if backend == "focal":
        return ("focal_loss" + suffix, focal) if task == "multiclass" else (
            "sigmoid_focal_loss" + suffix, sigmoid_focal)
    if backend == "poly1":
        return ("poly1_cross_entropy" + suffix, poly1) if task == "multiclass" else (
            "poly1_cross_entropy of [0, z]" + suffix, poly1_of_two_logits)
    if task == "multiclass":
        return "cross_entropy" + suffix, cross_entropy
    if recipe.binary_loss == "sigmoid":
        return "binary_cross_entropy(sigmoid(logit))" + suffix, bce_of_sigmoid
    return "binary_cross_entropy_with_logits" + suffix, bce_with_logits


@contextlib.contextmanager
def every_batch_through_xent(backend: str):
    """Make xent.torch compute every loss with xent's own functions, however small the batch.

    xent.torch hands small inputs to PyTorch's own op, where the NumPy bridge would cost more
    than the loss; these networks' batches are all that small, and `xent train` exists to
    exercise xent's losses, so the cut-off is 0 while it trains.
    """
    if backend == "torch":
        yield
        return
    import xent.torch

    with xent.torch.min_elements(0):
        yield


@dataclass
class Result:
    """What one training run produced."""

    task: str
    classifier: _model.Classifier
    table: _data.Table
    split: Split
    recipe: Recipe
    seed: int
    loss: str
    objective: str
    test_size: float
    history: dict
    metrics: dict
    seconds: float
    fit: Fit | None = None


def _targets(task: str, y: np.ndarray):
    import torch

    if task == "binary":
        return torch.tensor(y.reshape(-1, 1), dtype=torch.float32)  # BCE wants float (N, 1)
    return torch.tensor(y, dtype=torch.int64)


def train(table: _data.Table, task: str, recipe: Recipe, *, seed: int = 0,
          test_size: float = 0.2, loss: str = "xent", progress: bool = False,
          label: str | None = None) -> Result:
    """Train one network on ``table`` and evaluate it on the test rows; nothing is written.

    ``task`` is 'binary' (NeuralNet1; the table must have 2 classes) or 'multiclass'
    (NeuralNet2, one output per class). ``loss`` picks the criterion (`loss_module`). The
    validation split, early stopping, class weights, label smoothing and the temperature follow
    ``recipe`` (see `fit_network`). Raises `Diverged` (a `CLIError`) at a non-finite loss.
    """
    data = split(table, test_size, recipe.scaler)
    fit = fit_network(data.X_train, data.y_train, task, recipe, len(table.classes), seed=seed,
                      loss=loss, eval_sets={"test": (data.X_test, data.y_test)},
                      progress=progress, label=label)
    clf = _model.Classifier(task=task, net=fit.net, features=list(table.features),
                            target=table.target or "", classes=list(table.classes),
                            mean=data.mean, scale=data.scale, temperature=fit.temperature,
                            encoder=table.encoder)
    metrics = evaluate(clf, data, fit)
    return Result(task=task, classifier=clf, table=table, split=data, recipe=recipe, seed=seed,
                  loss=loss, objective=fit.objective, test_size=test_size,
                  history=fit.history, metrics=metrics, seconds=time.perf_counter() - fit.t0,
                  fit=fit)


@dataclass
class Fit:
    """A trained network and how the training went (`fit_network`)."""

    net: object  # NeuralNet1 or NeuralNet2
    objective: str
    history: dict  # "epoch_loss", "train_loss", "val_loss" and "<name>_loss", one per epoch
    t0: float  # time.perf_counter() when the epochs started
    best_epoch: int = 0  # 1-based: the epoch of the lowest validation loss (0: no validation)
    kept_epoch: int = 0  # the epoch whose weights `net` holds: best_epoch with early stopping
    epochs_run: int = 0
    stopped_early: bool = False
    temperature: float = 1.0  # fitted on the validation rows; 1 without them
    fit_rows: int = 0  # rows the optimiser saw
    val_rows: int = 0
    class_weights: list | None = None


def validation_split(y: np.ndarray, val_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)`` into the training rows: a stratified split with
    ``random_state=42`` (scikit-learn's ``train_test_split``), or every row and none for 0."""
    n = len(y)
    if not val_size:
        return np.arange(n), np.arange(0)
    from sklearn.model_selection import train_test_split

    try:
        i_fit, i_val = train_test_split(np.arange(n), test_size=val_size,
                                        random_state=SPLIT_RANDOM_STATE, stratify=y)
    except ValueError as e:
        raise CLIError(f"--val-size {val_size:g}: cannot hold out a stratified validation "
                       f"split of {n} training rows ({e}); expected every class to have 2 or "
                       "more training rows and the split to hold one of each: add rows, change "
                       "--val-size, or give --val-size 0 (no validation split)") from None
    return np.sort(i_fit), np.sort(i_val)


def _state(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def fit_network(X: np.ndarray, y: np.ndarray, task: str, recipe: Recipe, num_classes: int, *,
                seed: int = 0, loss: str = "xent", eval_sets: dict | None = None,
                progress: bool = False, label: str | None = None,
                class_weight_values: np.ndarray | None = None) -> Fit:
    """The training loop on arrays: the one `xent train` and `xent.sklearn` both run.

    Holds ``recipe.val_size`` of the rows out (stratified, `validation_split`), trains on the
    rest, records the losses after every epoch, keeps the weights of the epoch with the lowest
    validation loss (stopping after ``recipe.patience`` epochs without a lower one), and fits
    the temperature on the validation rows (`xent.metrics.fit_temperature`).

    Args:
        X: scaled features ``(N, D)``, float32.
        y: class indices ``(N,)``, int64 (0 or 1 for 'binary').
        task: 'binary' (NeuralNet1) or 'multiclass' (NeuralNet2 with ``num_classes`` outputs).
        recipe: width, optimiser, schedule and loss options (``recipe.scaler`` is the
            caller's business).
        seed: torch seed of the weight initialisation and of the batch order.
        loss: a `LOSSES` name: 'xent' (cross-entropy by xent.torch), 'torch' (by torch.nn),
            'focal' or 'poly1' (by xent.torch; options ``recipe.focal_gamma``,
            ``recipe.poly_epsilon``), see `loss_module`.
        eval_sets: name -> ``(X, y)`` also evaluated after every epoch into ``history``
            (names other than 'train' and 'val').
        class_weight_values: ``(num_classes,)`` weights given by the caller (scikit-learn's dict
            ``class_weight``), used instead of ``recipe.class_weight``.

    Raises:
        Diverged: a batch's loss or an epoch's evaluation was not finite (nothing is kept).
    """
    try:
        import torch
    except ImportError:  # pragma: no cover
        raise missing_extra("torch") from None
    from xent.metrics import fit_temperature

    i_fit, i_val = validation_split(y, recipe.val_size)
    X = np.ascontiguousarray(X, dtype=np.float32)
    weights = (np.asarray(class_weight_values, dtype=np.float64)
               if class_weight_values is not None
               else class_weights(y[i_fit], num_classes) if recipe.class_weight == "balanced"
               else None)
    sets = {"train": (X[i_fit], y[i_fit])}
    if len(i_val):
        sets["val"] = (X[i_val], y[i_val])
    sets.update(eval_sets or {})
    evals = {name: (torch.from_numpy(np.ascontiguousarray(Xe, dtype=np.float32)),
                    _targets(task, ye)) for name, (Xe, ye) in sets.items()}
    X_train, y_train = evals["train"]
    with _model.one_thread(), every_batch_through_xent(loss):
        torch.manual_seed(seed)
        net = _model.build(task, X_train.shape[1], recipe.hidden, num_classes)
        objective, batch_loss = loss_module(task, recipe, loss, weights)
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                     "sgd": torch.optim.SGD}[recipe.optimizer]
        opt = optimizer(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        n = len(X_train)
        bs = n if recipe.batch_size is None else min(recipe.batch_size, n)
        history: dict = {"epoch_loss": [], **{f"{name}_loss": [] for name in evals}}
        best_loss, best_epoch, best_state, stopped = math.inf, 0, None, False
        # Timed from here: the epochs and the evaluation, not the first-use imports before
        # (scikit-learn's split, and torch._dynamo, which PyTorch's optimisers load).
        t0 = time.perf_counter()
        bar = _progress(recipe.epochs, label or task, progress)
        epoch = 0
        for i in bar:
            epoch = i + 1
            net.train()
            # Full batch keeps the rows in order (the tutorial's loop); mini-batches reshuffle.
            order = torch.arange(n) if bs == n else torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                value = batch_loss(net, X_train[idx], y_train[idx])
                v = value.item()
                if not math.isfinite(v):
                    _diverged(bar, progress, recipe, epoch, f"the loss of a batch is {v}")
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += v * len(idx)
            net.eval()
            with torch.no_grad():
                for name, (Xe, ye) in evals.items():
                    v = batch_loss(net, Xe, ye).item()
                    if not math.isfinite(v):  # the last step made the weights non-finite
                        _diverged(bar, progress, recipe, epoch, f"the {name} loss is {v}")
                    history[f"{name}_loss"].append(v)
            history["epoch_loss"].append(total / n)
            if progress:
                shown = {k: f"{history[f'{k}_loss'][-1]:.4f}" for k in ("val", "test")
                         if k in evals}
                bar.set_postfix(loss=f"{total / n:.4f}", **shown, refresh=False)
            if "val" in evals:
                score = history["val_loss"][-1]
                if recipe.selection == "calibrated":
                    score = _calibrated_loss(net, evals["val"][0], y[i_val], task)
                    history.setdefault("val_calibrated_loss", []).append(score)
                if score < best_loss:
                    best_loss, best_epoch, best_state = score, epoch, _state(net)
                elif recipe.patience is not None and epoch - best_epoch >= recipe.patience:
                    stopped = True
                    break
        if progress:
            bar.close()
        if recipe.patience is not None and best_state is not None:
            net.load_state_dict(best_state)  # early stopping: the best epoch's weights
        kept_epoch = best_epoch if recipe.patience is not None and best_state else epoch
        temperature = 1.0
        if "val" in evals:
            with torch.no_grad():
                z = net.logits(evals["val"][0]).numpy().astype(np.float64)
            temperature = fit_temperature(z[:, 0] if task == "binary" else z, y[i_val])
    return Fit(net=net, objective=objective, history=history, t0=t0, best_epoch=best_epoch,
               kept_epoch=kept_epoch,
               epochs_run=epoch, stopped_early=stopped, temperature=temperature,
               fit_rows=len(i_fit), val_rows=len(i_val),
               class_weights=None if weights is None else [float(v) for v in weights])


def _calibrated_loss(net, X, y: np.ndarray, task: str) -> float:
    """The validation log loss after the temperature fitted on the same rows: what the model's
    probabilities would score if this epoch were kept (``Recipe.selection='calibrated'``)."""
    import torch

    import xent
    from xent.metrics import fit_temperature

    with torch.no_grad():
        z = net.logits(X).numpy().astype(np.float64)
    if task == "binary":
        t = fit_temperature(z[:, 0], y)
        return float(xent.binary_cross_entropy_with_logits(z[:, 0] / t, y.astype(np.float64)))
    t = fit_temperature(z, y)
    return float(xent.cross_entropy(z / t, y))


def _diverged(bar, progress: bool, recipe: Recipe, epoch: int, what: str):
    if progress:
        bar.close()
    raise Diverged(f"training diverged in epoch {epoch}: {what}; nothing was written. Try a "
                   f"smaller --lr (this run: {recipe.optimizer} lr {recipe.lr:g})")


def _progress(epochs: int, label: str, show: bool):
    """An epoch iterator: a tqdm bar on stderr when ``show``, else a plain range."""
    if not show:
        return range(epochs)
    import os

    from tqdm.auto import tqdm

    # Some pseudo-terminals report a size of 0 x 0, where tqdm draws nothing: assume 100 x 24.
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        columns, lines = 0, 0
    return tqdm(range(epochs), desc=label, unit="epoch", file=sys.stderr, leave=True,
                dynamic_ncols=columns > 0, ncols=None if columns > 0 else 100,
                nrows=None if lines > 0 else 24)


def log_loss(clf: _model.Classifier, X: np.ndarray, y: np.ndarray,
             temperature: float = 1.0) -> float:
    """Mean cross-entropy (log loss) of raw features ``X`` against class indices ``y``, of the
    logits divided by ``temperature``.

    Computed by xent from the float64 logits, so that nothing rounds to log(0).
    """
    import xent

    z = clf.logits(X).astype(np.float64) / temperature
    if clf.task == "binary":
        return float(xent.binary_cross_entropy_with_logits(z, y.astype(np.float64)))
    return float(xent.cross_entropy(z, y))


def calibration(clf: _model.Classifier, X: np.ndarray, y: np.ndarray,
                temperature: float) -> dict:
    """ECE (15 bins), Brier score and log loss of raw features ``X``, at ``temperature``."""
    from xent import metrics

    proba = replace(clf, temperature=temperature).proba(X)
    return {"ece": metrics.expected_calibration_error(y, proba, CALIBRATION_BINS),
            "brier": metrics.brier_score(y, proba),
            "log_loss": log_loss(clf, X, y, temperature)}


def evaluate(clf: _model.Classifier, data: Split, fit: Fit | None = None) -> dict:
    """Accuracy, log loss, the test confusion matrix (rows: true class, columns: predicted),
    and the test rows' calibration before and after the temperature."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    labels = np.arange(len(clf.classes))
    pred_train = clf.predict(data.raw_train)
    pred_test = clf.predict(data.raw_test)
    cm = confusion_matrix(data.y_test, pred_test, labels=labels)
    out = {
        "train_accuracy": float(np.mean(pred_train == data.y_train)),
        "test_accuracy": float(np.mean(pred_test == data.y_test)),
        "test_balanced_accuracy": float(balanced_accuracy_score(data.y_test, pred_test)),
        "train_log_loss": log_loss(clf, data.raw_train, data.y_train),
        "test_log_loss": log_loss(clf, data.raw_test, data.y_test),
        "train_rows": int(len(data.y_train)),
        "test_rows": int(len(data.y_test)),
        "confusion_matrix": cm.astype(int).tolist(),
    }
    if fit is not None:
        out["fit_rows"], out["val_rows"] = fit.fit_rows, fit.val_rows
        out["best_epoch"], out["kept_epoch"] = fit.best_epoch, fit.kept_epoch
        out["epochs_run"] = fit.epochs_run
        out["stopped_early"] = fit.stopped_early
        if fit.val_rows:
            out["best_val_loss"] = fit.history["val_loss"][fit.best_epoch - 1]
    out["calibration"] = {
        "n_bins": CALIBRATION_BINS,
        "temperature": clf.temperature,
        "before": calibration(clf, data.raw_test, data.y_test, 1.0),
        "after": calibration(clf, data.raw_test, data.y_test, clf.temperature),
    }
    return out


def metadata(result: Result, weights_sha256: str) -> dict:
    """Everything `xent predict` needs, and the run's settings and metrics, as JSON data."""
    import torch

    import xent

    clf = result.classifier
    r = result.recipe
    fit = result.fit
    return {
        "format": _model.FORMAT,
        "format_version": _model.FORMAT_VERSION,
        "task": result.task,
        "architecture": _model.architecture(result.task, len(clf.features), r.hidden,
                                            len(clf.classes)),
        "features": clf.features,
        "target": clf.target,
        "classes": clf.classes,
        "scaler": {
            "kind": "standard",
            "fitted_on": "all rows before the split" if r.scaler == "all" else "training rows",
            "mean": [float(v) for v in clf.mean],
            "scale": [float(v) for v in clf.scale],
        },
        "calibration": {
            "temperature": float(clf.temperature),
            "fitted_on": (f"validation rows ({fit.val_rows})" if fit and fit.val_rows
                          else None),
            "method": "temperature scaling (Guo et al. 2017): probabilities are "
                      "softmax(logits / temperature), sigmoid(logit / temperature)",
        },
        "weights": {"file": _model.WEIGHTS_FILE, "format": "safetensors",
                    "sha256": weights_sha256},
        **({"columns": columns_json(result.table)} if result.table.encoder is not None
           else {}),
        "data": {
            "source": result.table.source,
            "rows": int(result.table.n_rows),
            "unlabeled_rows_dropped": int(result.table.unlabeled),
            "test_size": result.test_size,
            "split_random_state": SPLIT_RANDOM_STATE,
        },
        "training": {
            # a loss's own option only where that loss ran (a file without them: cross-entropy)
            **{k: v for k, v in asdict(r).items()
               if k != "name" and LOSS_OPTIONS.get(k, result.loss) == result.loss},
            "recipe": r.name,
            "seed": result.seed,
            "loss": result.loss,
            "objective": result.objective,
            "class_weights": None if fit is None else fit.class_weights,
            "best_epoch": None if fit is None else fit.best_epoch,
            "kept_epoch": None if fit is None else fit.kept_epoch,
            "epochs_run": None if fit is None else fit.epochs_run,
            "stopped_early": None if fit is None else fit.stopped_early,
            "xent_version": xent.__version__,
            "torch_version": torch.__version__,
        },
        "metrics": result.metrics,
        "history": result.history,
    }


def columns_json(table: _data.Table) -> dict:
    """``model.json``'s ``columns``: how the file was read, each column's role, and the fitted
    encoding `xent predict` applies (`_columns.Encoder`)."""
    read = table.file.options.to_json() if table.file is not None else {}
    read["delimiter"] = table.file.delimiter if table.file is not None else None
    return {
        "read": read,
        "roles": [{"column": r.column, "role": r.role, "done": r.done} for r in table.roles],
        **table.encoder.to_json(),
        "encoding": "scikit-learn ColumnTransformer fitted on the training rows: numeric "
                    "columns SimpleImputer(strategy='median', add_indicator=True) then "
                    "StandardScaler (the scaler below), categorical columns "
                    "OneHotEncoder(handle_unknown='ignore'), a missing cell a category",
    }


def save(result: Result, out: Path) -> dict[str, Path]:
    """Write the run's folder: weights, ``model.json`` and the plots, swapped in as a whole.

    The files are made in memory, written into a new folder beside ``out`` and the folder
    replaces ``out`` when every file is on disk (`_files.write_dir`): a run killed at any moment
    leaves the previous model whole. Returns the final path of each file, by role. A new file
    of the run is one more entry in ``files`` (role: (name, bytes)).
    """
    from . import _files, _report

    weights = _model.weights_bytes(result.classifier.net)
    files = {
        "weights": (_model.WEIGHTS_FILE, weights),
        "plot": (_model.PLOT_FILE, _report.loss_curves_png(result)),
        "reliability": (_report.RELIABILITY_FILE, _report.reliability_png(result)),
        "model": (_model.META_FILE,
                  _model.json_bytes(metadata(result, _model.sha256(weights)))),
    }

    def write(folder: Path) -> None:
        for name, data in files.values():
            _files.write_file(folder / name, data)

    _files.write_dir(out, write)
    return {role: out / name for role, (name, _) in files.items()}


def recipe_changes(args) -> dict:
    """The Recipe fields set by the options given on the command line (only those)."""
    changes = {k: getattr(args, k) for k in ("hidden", "epochs", "lr", "optimizer",
                                              "weight_decay", "val_size", "label_smoothing",
                                              *LOSS_OPTIONS)
               if getattr(args, k, None) is not None}
    if args.batch_size is not None:
        changes["batch_size"] = None if args.batch_size == 0 else args.batch_size
    if getattr(args, "patience", None) is not None:  # 0 on the command line: never stop early
        changes["patience"] = args.patience or None
    if getattr(args, "class_weight", None) is not None:
        changes["class_weight"] = None if args.class_weight == "none" else args.class_weight
    return changes


def resolve_recipe(args, rows: int = 0) -> Recipe:
    """The named recipe for a table of ``rows`` rows with the command line's options over it."""
    return recipe_for(args.recipe, train_rows(rows, args.test_size), **recipe_changes(args))


def run(args) -> int:
    """The `xent train` command."""
    from . import _report

    require("torch", "sklearn", "safetensors", "matplotlib", "tqdm")
    resolve_recipe(args)  # an option that no recipe takes fails before any data is read
    check_loss(args.loss, recipe_changes(args))
    if args.data is None:
        if args.target is not None:
            raise CLIError("--target names a column of --data CSV, but no --data was given")
        tasks = ["binary", "multiclass"] if args.task in (None, "both") else [args.task]
        jobs: list[tuple[str, _data.Table | None]] = [(task, None) for task in tasks]
    else:
        if args.target is None:
            raise CLIError(f"--data {args.data} needs --target COLUMN: the column that holds "
                           "the class labels")
        if args.task == "both":
            raise CLIError("--task both trains the two built-in datasets; with --data the task "
                           "is binary or multiclass (default: from the number of classes)")
        table = _data.read_training_csv(
            args.data, args.target, options=csv_options(args),
            ignore=tuple(getattr(args, "ignore", None) or ()),
            categorical=tuple(getattr(args, "categorical", None) or ()),
            keep_feature=tuple(getattr(args, "keep_feature", None) or ()))
        k = len(table.classes)
        task = args.task or ("binary" if k == 2 else "multiclass")
        if task == "binary" and k != 2:
            raise CLIError(f"{args.data}: --task binary needs 2 classes, column {args.target!r} "
                           f"has {k}")
        jobs = [(task, table)]

    out_root = Path(args.out) if args.out is not None else None
    outs = [Path("runs") / task if out_root is None
            else out_root / task if len(jobs) > 1 else out_root for task, _ in jobs]
    created = _new_dirs(outs)
    for out in outs:
        _model.make_dir(out)  # before training: a bad --out fails in a second, not a minute
    show_bar = not args.quiet and sys.stderr.isatty()
    saved = 0
    try:
        for i, ((task, given), out) in enumerate(zip(jobs, outs, strict=True)):
            table = _data.builtin(task) if given is None else given
            recipe = resolve_recipe(args, table.n_rows)
            result = train(table, task, recipe, seed=args.seed, test_size=args.test_size,
                           loss=args.loss, progress=show_bar)
            paths = save(result, out)
            saved += 1
            text = _report.summary(result, paths, quiet=args.quiet)
            print(("\n" if i and not args.quiet else "") + text, flush=True)
    except (CLIError, KeyboardInterrupt):
        if not saved:
            _remove_empty(created)  # "nothing was written": no empty folder left either
        raise
    return 0


def csv_options(args) -> _data.CsvOptions:
    """The reading options of the command line (`_data.CsvOptions`)."""
    na = [v for item in (getattr(args, "na_values", None) or []) for v in item]
    return _data.CsvOptions(delimiter=getattr(args, "delimiter", None),
                            decimal=getattr(args, "decimal", None) or ".",
                            encoding=getattr(args, "encoding", None) or "utf-8",
                            na_values=tuple(na))


def _new_dirs(outs: list[Path]) -> list[Path]:
    """The directories ``outs`` and their parents that do not exist yet, deepest first."""
    new: list[Path] = []
    for out in outs:
        p = Path(out).absolute()
        try:
            while not p.exists() and p != p.parent:
                new.append(p)
                p = p.parent
        except OSError:  # a name too long, say: `make_dir` says so, with the path as given
            continue
    return sorted(set(new), key=lambda q: len(q.parts), reverse=True)


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories of ``dirs`` that are empty (deepest first); leave the rest."""
    import os

    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
