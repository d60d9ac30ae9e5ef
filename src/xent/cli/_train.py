"""`xent train`: train the tutorials' networks with xent's losses and PyTorch's optimisers.

One run: split (scikit-learn's ``train_test_split``, ``random_state=42`` as in the tutorials),
standardise (scaler fitted on the training rows; the tutorial recipe fits it on all rows before
the split, as the tutorials do), build NeuralNet1 or NeuralNet2 under ``torch.manual_seed(seed)``,
train with mini-batches drawn by a ``torch.Generator`` seeded with ``seed``, evaluate, and write
the model directory. Training runs on one thread, so the same seed gives the same weights and
numbers, byte for byte.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import _data, _model
from ._errors import CLIError, missing_extra, require

SPLIT_RANDOM_STATE = 42  # the tutorials' train_test_split(..., random_state=42)


@dataclass(frozen=True)
class Recipe:
    """How to train: the network width, the optimiser and the schedule.

    ``batch_size`` None means full batch (the whole training split per step, as the tutorials
    do). ``scaler`` is 'train' (fitted on the training split) or 'all' (fitted on every row
    before the split: the tutorials' leak). ``binary_loss`` is 'logits'
    (``binary_cross_entropy_with_logits`` on the logit) or 'sigmoid' (``binary_cross_entropy``
    on ``sigmoid(logit)``, the tutorial's ``nn.BCELoss`` on NeuralNet1's output).
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


# Chosen from measurements over seeds 0-9 (benchmarks/recipe_seeds.py; docs/cli.md has the
# table and the neighbours tried): AdamW with decoupled weight decay, 32 hidden units, 200 epochs
# of batches of 32. Mean test accuracy 0.87 (binary) and 0.84 (three classes), no seed below
# 0.81, where the tutorials' recipe gives 0.84 and 0.65 with seeds down to 0.43.
DEFAULT = Recipe(name="default", hidden=32, epochs=200, lr=0.01, optimizer="adamw",
                 batch_size=32, weight_decay=0.03, scaler="train", binary_loss="logits")
# The tutorials' exact recipe (000_*.txt): hidden 5, SGD lr 0.1, 100 full-batch epochs.
TUTORIAL = Recipe(name="tutorial", hidden=5, epochs=100, lr=0.1, optimizer="sgd",
                  batch_size=None, weight_decay=0.0, scaler="all", binary_loss="sigmoid")
RECIPES = {"default": DEFAULT, "tutorial": TUTORIAL}


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
    """Split 80/20 (or ``test_size``) with ``random_state=42`` and standardise the features."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    n = len(table.X)
    try:
        i_train, i_test = train_test_split(np.arange(n), test_size=test_size,
                                           random_state=SPLIT_RANDOM_STATE)
    except ValueError as e:
        raise CLIError(f"{table.source}: cannot split {n} rows with --test-size {test_size} "
                       f"({e})") from None
    if len(np.unique(table.y[i_train])) < 2:
        raise CLIError(f"{table.source}: the training split ({len(i_train)} rows) holds a single "
                       "class; expected at least 2 (add rows or lower --test-size)")
    fitted = StandardScaler().fit(table.X if scaler == "all" else table.X[i_train])
    mean = np.asarray(fitted.mean_, dtype=np.float64)
    scale = np.asarray(fitted.scale_, dtype=np.float64)  # 1 for constant columns

    def standardise(X):
        return ((X - mean) / scale).astype(np.float32)

    return Split(standardise(table.X[i_train]), standardise(table.X[i_test]),
                 table.y[i_train], table.y[i_test], mean, scale,
                 table.X[i_train], table.X[i_test])


def loss_module(task: str, recipe: Recipe, backend: str):
    """The criterion: xent's drop-in (``backend='xent'``) or PyTorch's own (``'torch'``).

    Returns ``(criterion, name, apply)`` where ``apply(net, X, y)`` is the loss of a batch.
    """
    if backend == "xent":
        import xent.torch as lib
    else:
        import torch.nn as lib
    import torch

    if task == "multiclass":
        criterion = lib.CrossEntropyLoss()
        return criterion, "cross_entropy", lambda net, X, y: criterion(net.logits(X), y)
    if recipe.binary_loss == "sigmoid":
        criterion = lib.BCELoss()
        return (criterion, "binary_cross_entropy(sigmoid(logit))",
                lambda net, X, y: criterion(torch.sigmoid(net.logits(X)), y))
    criterion = lib.BCEWithLogitsLoss()
    return (criterion, "binary_cross_entropy_with_logits",
            lambda net, X, y: criterion(net.logits(X), y))


@contextlib.contextmanager
def every_batch_through_xent(backend: str):
    """Make xent.torch compute every loss with xent's own functions, however small the batch.

    xent.torch hands small inputs to PyTorch's own op, where the NumPy bridge would cost more
    than the loss; these networks' batches are all that small, and `xent train` exists to
    exercise xent's losses, so the cut-off is 0 while it trains.
    """
    if backend != "xent":
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


def _targets(task: str, y: np.ndarray):
    import torch

    if task == "binary":
        return torch.tensor(y.reshape(-1, 1), dtype=torch.float32)  # BCE wants float (N, 1)
    return torch.tensor(y, dtype=torch.int64)


def train(table: _data.Table, task: str, recipe: Recipe, *, seed: int = 0,
          test_size: float = 0.2, loss: str = "xent", progress: bool = False,
          label: str | None = None) -> Result:
    """Train one network on ``table`` and evaluate it; nothing is written.

    ``task`` is 'binary' (NeuralNet1; the table must have 2 classes) or 'multiclass'
    (NeuralNet2, one output per class). ``loss`` picks xent's criterion or PyTorch's.
    """
    data = split(table, test_size, recipe.scaler)
    fit = fit_network(data.X_train, data.y_train, task, recipe, len(table.classes), seed=seed,
                      loss=loss, eval_sets={"train": (data.X_train, data.y_train),
                                            "test": (data.X_test, data.y_test)},
                      progress=progress, label=label)
    clf = _model.Classifier(task=task, net=fit.net, features=list(table.features),
                            target=table.target or "", classes=list(table.classes),
                            mean=data.mean, scale=data.scale)
    metrics = evaluate(clf, data)
    return Result(task=task, classifier=clf, table=table, split=data, recipe=recipe, seed=seed,
                  loss=loss, objective=fit.objective, test_size=test_size,
                  history=fit.history, metrics=metrics, seconds=time.perf_counter() - fit.t0)


@dataclass
class Fit:
    """A trained network and how the training went (`fit_network`)."""

    net: object  # NeuralNet1 or NeuralNet2
    objective: str
    history: dict  # "epoch_loss" and "<name>_loss" per evaluation set, one value per epoch
    t0: float  # time.perf_counter() when the epochs started


def fit_network(X: np.ndarray, y: np.ndarray, task: str, recipe: Recipe, num_classes: int, *,
                seed: int = 0, loss: str = "xent", eval_sets: dict | None = None,
                progress: bool = False, label: str | None = None) -> Fit:
    """The training loop on arrays: the one `xent train` and `xent.sklearn` both run.

    Args:
        X: scaled features ``(N, D)``, float32.
        y: class indices ``(N,)``, int64 (0 or 1 for 'binary').
        task: 'binary' (NeuralNet1) or 'multiclass' (NeuralNet2 with ``num_classes`` outputs).
        recipe: width, optimiser and schedule (``recipe.scaler`` is the caller's business).
        seed: torch seed of the weight initialisation and of the batch order.
        loss: 'xent' (xent.torch's criterion) or 'torch' (torch.nn's).
        eval_sets: name -> ``(X, y)`` evaluated after every epoch into ``history``.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover
        raise missing_extra("torch") from None

    X_train = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    y_train = _targets(task, y)
    evals = {name: (torch.from_numpy(np.ascontiguousarray(Xe, dtype=np.float32)),
                    _targets(task, ye)) for name, (Xe, ye) in (eval_sets or {}).items()}
    with _model.one_thread(), every_batch_through_xent(loss):
        torch.manual_seed(seed)
        net = _model.build(task, X_train.shape[1], recipe.hidden, num_classes)
        _, objective, batch_loss = loss_module(task, recipe, loss)
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                     "sgd": torch.optim.SGD}[recipe.optimizer]
        opt = optimizer(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        n = len(X_train)
        bs = n if recipe.batch_size is None else min(recipe.batch_size, n)
        history: dict = {"epoch_loss": [], **{f"{name}_loss": [] for name in evals}}
        # Timed from here: the epochs and the evaluation, not the first-use imports before
        # (scikit-learn's split, and torch._dynamo, which PyTorch's optimisers load).
        t0 = time.perf_counter()
        bar = _progress(recipe.epochs, label or task, progress)
        for _epoch in bar:
            net.train()
            # Full batch keeps the rows in order (the tutorial's loop); mini-batches reshuffle.
            order = torch.arange(n) if bs == n else torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                value = batch_loss(net, X_train[idx], y_train[idx])
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += value.item() * len(idx)
            net.eval()
            with torch.no_grad():
                for name, (Xe, ye) in evals.items():
                    history[f"{name}_loss"].append(batch_loss(net, Xe, ye).item())
            history["epoch_loss"].append(total / n)
            if progress:
                shown = {"test_loss": f"{history['test_loss'][-1]:.4f}"} if "test" in evals else {}
                bar.set_postfix(loss=f"{total / n:.4f}", **shown, refresh=False)
        if progress:
            bar.close()
    return Fit(net=net, objective=objective, history=history, t0=t0)


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


def log_loss(clf: _model.Classifier, X: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (log loss) of raw features ``X`` against class indices ``y``.

    Computed by xent from the float64 logits, so that nothing rounds to log(0).
    """
    import xent

    z = clf.logits(X).astype(np.float64)
    if clf.task == "binary":
        return float(xent.binary_cross_entropy_with_logits(z, y.astype(np.float64)))
    return float(xent.cross_entropy(z, y))


def evaluate(clf: _model.Classifier, data: Split) -> dict:
    """Accuracy, log loss and the test confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    labels = np.arange(len(clf.classes))
    pred_train = clf.predict(data.raw_train)
    pred_test = clf.predict(data.raw_test)
    cm = confusion_matrix(data.y_test, pred_test, labels=labels)
    return {
        "train_accuracy": float(np.mean(pred_train == data.y_train)),
        "test_accuracy": float(np.mean(pred_test == data.y_test)),
        "train_log_loss": log_loss(clf, data.raw_train, data.y_train),
        "test_log_loss": log_loss(clf, data.raw_test, data.y_test),
        "train_rows": int(len(data.y_train)),
        "test_rows": int(len(data.y_test)),
        "confusion_matrix": cm.astype(int).tolist(),
    }


def metadata(result: Result, weights_sha256: str) -> dict:
    """Everything `xent predict` needs, and the run's settings and metrics, as JSON data."""
    import torch

    import xent

    clf = result.classifier
    r = result.recipe
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
        "weights": {"file": _model.WEIGHTS_FILE, "format": "safetensors",
                    "sha256": weights_sha256},
        "data": {
            "source": result.table.source,
            "rows": int(len(result.table.X)),
            "test_size": result.test_size,
            "split_random_state": SPLIT_RANDOM_STATE,
        },
        "training": {
            **{k: v for k, v in asdict(r).items() if k != "name"},
            "recipe": r.name,
            "seed": result.seed,
            "loss": result.loss,
            "objective": result.objective,
            "xent_version": xent.__version__,
            "torch_version": torch.__version__,
        },
        "metrics": result.metrics,
        "history": result.history,
    }


def save(result: Result, out: Path) -> dict[str, Path]:
    """Write the weights, the loss-curve PNG and ``model.json`` (last), each atomically."""
    from . import _report

    _model.make_dir(out)
    weights = _model.weights_bytes(result.classifier.net)
    paths = {"weights": out / _model.WEIGHTS_FILE, "plot": out / _model.PLOT_FILE,
             "model": out / _model.META_FILE}
    meta = _model.json_bytes(metadata(result, _model.sha256(weights)))
    try:
        _model.atomic_write(paths["weights"], weights)
        _model.atomic_write(paths["plot"], _report.loss_curves_png(result))
        _model.atomic_write(paths["model"], meta)
    except OSError as e:
        raise CLIError(f"{out}: cannot write the model files ({e.strerror})") from None
    return paths


def resolve_recipe(args) -> Recipe:
    """The named recipe with the options given on the command line put over it."""
    recipe = RECIPES[args.recipe]
    changes = {k: getattr(args, k) for k in ("hidden", "epochs", "lr", "optimizer",
                                              "weight_decay")
               if getattr(args, k) is not None}
    if args.batch_size is not None:
        changes["batch_size"] = None if args.batch_size == 0 else args.batch_size
    return replace(recipe, **changes)


def run(args) -> int:
    """The `xent train` command."""
    from . import _report

    require("torch", "sklearn", "safetensors", "matplotlib", "tqdm")
    recipe = resolve_recipe(args)
    if args.data is None:
        if args.target is not None:
            raise CLIError("--target names a column of --data CSV, but no --data was given")
        tasks = ["binary", "multiclass"] if args.task in (None, "both") else [args.task]
        jobs = [(task, None) for task in tasks]
    else:
        if args.target is None:
            raise CLIError(f"--data {args.data} needs --target COLUMN: the column that holds "
                           "the class labels")
        if args.task == "both":
            raise CLIError("--task both trains the two built-in datasets; with --data the task "
                           "is binary or multiclass (default: from the number of classes)")
        table = _data.read_training_csv(args.data, args.target)
        k = len(table.classes)
        task = args.task or ("binary" if k == 2 else "multiclass")
        if task == "binary" and k != 2:
            raise CLIError(f"{args.data}: --task binary needs 2 classes, column {args.target!r} "
                           f"has {k}")
        jobs = [(task, table)]

    out_root = Path(args.out) if args.out is not None else None
    outs = [Path("runs") / task if out_root is None
            else out_root / task if len(jobs) > 1 else out_root for task, _ in jobs]
    for out in outs:
        _model.make_dir(out)  # before training: a bad --out fails in a second, not a minute
    show_bar = not args.quiet and sys.stderr.isatty()
    for i, ((task, table), out) in enumerate(zip(jobs, outs, strict=True)):
        if table is None:
            table = _data.builtin(task)
        result = train(table, task, recipe, seed=args.seed, test_size=args.test_size,
                       loss=args.loss, progress=show_bar)
        paths = save(result, out)
        text = _report.summary(result, paths, quiet=args.quiet)
        print(("\n" if i and not args.quiet else "") + text, flush=True)
    return 0
