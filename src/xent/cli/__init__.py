"""The ``xent`` command line: ``xent train``, ``xent predict``, ``xent examples`` and
``xent explain``.

``main(argv)`` returns the exit status: 0 on success, 2 for bad input (one line on stderr,
``xent: error: ...``, never a traceback), 130 when interrupted. The heavy imports (PyTorch,
scikit-learn, matplotlib) happen inside the commands, after the arguments are checked.
See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

from ._errors import CLIError

__all__ = ["main"]

_PROG = "xent"


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line (``xent: error: ...``) instead of usage + message."""

    def error(self, message: str):  # noqa: D102
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {s!r}")
    return v


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {s!r}") from None


def _batch_size(s: str) -> int:
    if s.strip().lower() == "full":
        return 0
    try:
        return _positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', found {s!r}") from None


def _float(s: str, low: float, high: float, what: str, low_open: bool = True,
           high_open: bool = True) -> float:
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and (
        v < high if high_open else v <= high)
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {what}, found {s!r}")
    return v


def _positive_float(s: str) -> float:
    return _float(s, 0.0, math.inf, "a positive number")


def _nonnegative_float(s: str) -> float:
    return _float(s, 0.0, math.inf, "a number >= 0", low_open=False)


def _unit_float(s: str) -> float:
    return _float(s, 0.0, 1.0, "a number from 0 to 1", low_open=False, high_open=False)


def _fraction(s: str) -> float:
    return _float(s, 0.0, 1.0, "a fraction strictly between 0 and 1")


def _fraction_or_zero(s: str) -> float:
    return _float(s, 0.0, 1.0, "0 or a fraction strictly between 0 and 1", low_open=False)


def _label_smoothing(s: str) -> float:
    return _float(s, 0.0, 1.0, "a number in [0, 1)", low_open=False)


def _poly_epsilon(s: str) -> float:
    return _float(s, -1.0, math.inf, "a number >= -1", low_open=False)


def _nonnegative_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, found {s!r}")
    return v


def _delimiter(s: str) -> str:
    from ._data import parse_delimiter

    try:
        return parse_delimiter(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _na_values(s: str) -> list[str]:
    return [v.strip() for v in s.split(",")] if "," in s else [s]


def _decimal(s: str) -> str:
    if s not in (".", ","):
        raise argparse.ArgumentTypeError(f"expected '.' or ',', found {s!r}")
    return s


def _reading_options(p: argparse.ArgumentParser, predict: bool = False) -> None:
    """--decimal, --encoding and --na-values (train and predict)."""
    default = ("default: as the model's training file was read" if predict else None)
    p.add_argument("--decimal", type=_decimal, metavar="C",
                   help="the decimal mark of numbers: '.' or ',' (a decimal comma, usually with "
                   f"--delimiter ';'); {default or 'default: .'}")
    p.add_argument("--encoding", metavar="NAME",
                   help="the file's text encoding, e.g. latin-1 or cp1252; "
                   f"{default or 'default: utf-8 (a byte-order mark is skipped)'}")
    p.add_argument("--na-values", type=_na_values, action="append", metavar="V[,V...]",
                   help="more cell values that mean 'missing', besides the usual markers "
                   "(empty, NA, N/A, n/a, NaN, nan, NAN, null, NULL, None, ?, #N/A); "
                   f"repeatable{'; ' + default if default else ''}")


_DELIMITER_HELP = ("the CSV delimiter: ',', ';' or 'tab' (also '\\t'); default: detected from "
                   "the file (comma, semicolon or tab)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all the commands."""
    p = _Parser(prog=_PROG, description="Train and use the tutorials' classifiers with xent's "
                "losses, and print the tutorials' worked examples.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    t = sub.add_parser(
        "train", help="train the tutorials' networks (the main job)",
        description="Train NeuralNet1 (binary: sigmoid + binary cross-entropy) and/or NeuralNet2 "
        "(multi-class: softmax cross-entropy) with xent's losses through xent.torch, on the "
        "tutorials' built-in data or on a CSV file; write model.safetensors (the weights), "
        "model.json, loss_curves.png and reliability.png to --out.")
    t.add_argument("--task", choices=["binary", "multiclass", "both"], default=None,
                   help="built-in data: which network to train (default: both); with --data: "
                   "binary or multiclass (default: binary for 2 classes, else multiclass)")
    t.add_argument("--data", metavar="CSV", help="train on this CSV file (a header row; "
                   "numeric and text columns, missing cells allowed, and the --target column)")
    t.add_argument("--delimiter", type=_delimiter, metavar="D", help=_DELIMITER_HELP)
    _reading_options(t)
    t.add_argument("--target", metavar="COLUMN",
                   help="the --data column that holds the class labels (strings, integers or "
                   "booleans, kept as spelled); rows whose label is missing are dropped and "
                   "counted (--drop-unlabeled, the default)")
    t.add_argument("--drop-unlabeled", action="store_true", default=True,
                   help="drop the rows whose label is missing (the default; there is no other "
                   "choice: a missing label is never a class)")
    t.add_argument("--ignore", action="append", metavar="COLUMN",
                   help="leave this column out of the features (an identifier, a leak); "
                   "repeatable")
    t.add_argument("--categorical", action="append", metavar="COLUMN",
                   help="one-hot encode this column even if its values are numbers (codes); "
                   "text columns are categorical anyway; repeatable")
    t.add_argument("--keep-feature", action="append", metavar="COLUMN",
                   help="use this column as a feature although it looks like an identifier "
                   "(equal to the row number, named like id, or text with every value "
                   "distinct); repeatable")
    t.add_argument("--recipe", choices=["default", "default-large", "tutorial"],
                   default="default",
                   help="default: AdamW (lr 0.01, weight decay 0.03), 32 hidden units, 200 epochs "
                   "of batches of 32, 0.2 of the training rows held out for validation (the "
                   "temperature is fitted on them; the last epoch's weights are kept); from "
                   "10000 training rows on it is default-large: "
                   "128 hidden units, AdamW lr 0.003, weight decay 0.01, batches of 256, 0.1 "
                   "held out, early stopping after 10 epochs without improvement. tutorial: "
                   "the tutorials' exact recipe (SGD lr 0.1, 100 full-batch epochs, 5 hidden "
                   "units, scaler fitted on all rows, no validation). Options below override "
                   "the recipe.")
    t.add_argument("--hidden", type=_positive_int, metavar="N", help="hidden units")
    t.add_argument("--epochs", type=_positive_int, metavar="N", help="passes over the "
                   "training rows")
    t.add_argument("--lr", type=_positive_float, metavar="RATE", help="learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"],
                   help="PyTorch optimiser (adamw: Adam with decoupled weight decay)")
    t.add_argument("--weight-decay", type=_nonnegative_float, metavar="W",
                   help="the optimiser's weight decay")
    t.add_argument("--batch-size", type=_batch_size, metavar="N",
                   help="rows per step, or 'full' for the whole training split")
    t.add_argument("--test-size", type=_fraction, default=0.2, metavar="F",
                   help="fraction of rows held out for testing (default: 0.2; the split uses "
                   "random_state 42, as the tutorials do)")
    t.add_argument("--val-size", type=_fraction_or_zero, metavar="F",
                   help="fraction of the training rows held out (stratified) for early stopping "
                   "and the temperature; 0: none (default: from the recipe)")
    t.add_argument("--patience", type=_nonnegative_int, metavar="N",
                   help="stop after N epochs without a lower validation loss and keep the best "
                   "epoch's weights; 0: never stop early (the last epoch's weights are kept)")
    t.add_argument("--class-weight", choices=["balanced", "none"],
                   help="balanced: weight each class by n_rows / (n_classes * its rows), as "
                   "scikit-learn's compute_class_weight (default: none)")
    t.add_argument("--label-smoothing", type=_label_smoothing, metavar="EPS",
                   help="label smoothing of the loss, in [0, 1) (default 0); for the binary "
                   "net the target y (1 - EPS) + EPS / 2")
    t.add_argument("--seed", type=_int, default=0, help="torch seed for the weight "
                   "initialisation and the batch order (default: 0)")
    t.add_argument("--loss", choices=["xent", "torch", "focal", "poly1"], default="xent",
                   help="xent: cross-entropy by xent.torch (default); torch: cross-entropy by "
                   "torch.nn, to compare; focal: focal loss (Lin et al. 2017; binary: "
                   "sigmoid_focal_loss without alpha, --class-weight balances the classes); "
                   "poly1: poly-1 cross-entropy (Leng et al. 2022); focal and poly1 by xent.torch")
    t.add_argument("--focal-gamma", type=_nonnegative_float, metavar="G",
                   help="--loss focal: the focusing exponent gamma of (1 - p_t)^gamma, >= 0 "
                   "(default 2; 0 is cross-entropy)")
    t.add_argument("--poly-epsilon", type=_poly_epsilon, metavar="E",
                   help="--loss poly1: epsilon of cross-entropy + epsilon (1 - p_t), >= -1 "
                   "(default 1; 0 is cross-entropy)")
    t.add_argument("--out", metavar="DIR", help="output directory (default: runs/<task>; with "
                   "two tasks, DIR/binary and DIR/multiclass)")
    t.add_argument("--quiet", action="store_true", help="no progress bar; one line per network")

    pr = sub.add_parser(
        "predict", help="class probabilities and labels for the rows of a CSV",
        description="Predict with a model written by 'xent train': prints CSV with the "
        "predicted label and one probability column per class (sigmoid or softmax).")
    pr.add_argument("--model", required=True, metavar="DIR",
                    help="the directory 'xent train' wrote (or its model.json)")
    pr.add_argument("--data", required=True, metavar="CSV",
                    help="rows to predict: the model's feature columns (any order; other "
                    "columns, such as the target, are ignored with a note)")
    pr.add_argument("--delimiter", type=_delimiter, metavar="D", help=_DELIMITER_HELP)
    _reading_options(pr, predict=True)
    pr.add_argument("--keep", action="append", metavar="COLUMN",
                    help="copy this column of --data (an ID, say) into the output, before the "
                    "predictions; repeatable, in the order given. Other columns than the "
                    "model's features are ignored, with a note")
    pr.add_argument("--output", metavar="CSV", help="write here instead of standard output "
                    "(replaced atomically; refused if it is --data or a model file)")
    pr.add_argument("--quiet", action="store_true", help="no message on standard error")

    sub.add_parser("examples", help="the tutorials' worked examples, xent beside PyTorch",
                   description="Every worked example in the tutorials computed by xent and, "
                   "where PyTorch is installed, by PyTorch, with a mark where they agree.")

    sub.add_parser(
        "warmup", help="compile every kernel variant now (Numba), with a progress bar",
        description="Compile xent's Numba kernels ahead of their first use: every variant a "
        "training or evaluation call meets (each storage dtype, rows and K-dimensional layouts, "
        "index and probability targets, with and without the gradient). The first call of a "
        "kernel otherwise compiles it inside that call (9 to 16 s on a 2-core VM); compiled "
        "code is cached on disk (Numba's __pycache__ beside the kernels, or NUMBA_CACHE_DIR), "
        "which every later process loads.")

    ex = sub.add_parser(
        "explain", help="softmax cross-entropy (or sigmoid + BCE) of your numbers, step by step",
        description="Print every step of the stable softmax cross-entropy of one row of logits "
        "(the max shift, the exponentials and their sum, the softmax, the log-sum-exp, the loss "
        "lse - z[t], the gradient softmax - one-hot), each computed by xent, beside the "
        "tutorials' naive NumPy formula. --binary: sigmoid and binary cross-entropy, one label "
        "per logit.")
    ex.add_argument("logits", nargs="*", metavar="Z", help="the logits (finite numbers; "
                    "before or after the options)")
    ex.add_argument("--target", nargs="+", metavar="T", help="the true class index (0 to C-1); "
                    "with --binary, one label 0 or 1 per logit")
    ex.add_argument("--binary", action="store_true", help="sigmoid and binary cross-entropy "
                    "instead of softmax cross-entropy")
    ex.add_argument("--label-smoothing", type=_unit_float, metavar="EPS",
                    help="also show the loss and gradient with label smoothing EPS in [0, 1]")
    ex.add_argument("--weight", nargs="+", metavar="W", help="also show them with weights: one "
                    "per class (one per logit with --binary)")
    ex.add_argument("--focal", type=_nonnegative_float, metavar="GAMMA",
                    help="also show how the focal loss's factor (1 - p_t)^GAMMA rescales the "
                    "loss and gradient of a few examples, beside cross-entropy")
    ex.add_argument("--sparsemax", action="store_true",
                    help="also show sparsemax of the logits step by step: the sorted logits, "
                    "the threshold tau, the support, and its probabilities (exact zeros) beside "
                    "softmax's; without --target, only that")
    # Negative numbers in any float spelling (-1e3, -.5, -inf) are logits, not options (argparse
    # only knows -1 and -1.5); explain checks and refuses what is not a finite number.
    ex._negative_number_matcher = re.compile(r"^-(?:\d|\.\d|inf|nan)", re.IGNORECASE)
    return p


def _warmup() -> int:
    from xent import _warmup

    try:
        n = _warmup.warmup(progress=True)
    except ImportError as e:
        raise CLIError(str(e)) from None
    print(f"compiled or loaded {n} kernel variants")
    return 0


def _version() -> str:
    from xent import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _check_environment()
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help and --version exit 0 through argparse
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            raise CLIError("missing command; expected one of train, predict, examples, explain, "
                           "warmup (see 'xent --help')")
        if args.command == "train":
            from . import _train

            return _train.run(args)
        if args.command == "predict":
            from . import _predict

            return _predict.run(args)
        if args.command == "explain":
            from . import _explain

            return _explain.run(args)
        if args.command == "warmup":
            return _warmup()
        from . import _examples

        return _examples.run(args)
    except CLIError as e:
        _fail(str(e))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`xent predict ... | head`): not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # A path or system error that no check before it named (the checks name most): still
        # one line, with the file and the system's reason, never a traceback.
        from ._files import os_error

        _fail(str(os_error(e.filename or "xent", "cannot use the file", e)))
        return 2


def _check_environment() -> None:
    """An invalid ``XENT_BACKEND`` or ``XENT_CACHE_LIMIT`` is bad input: one line, exit 2."""
    from xent import _buffers, _dispatch

    errors = [*_dispatch.ENV_ERRORS, *_buffers.ENV_ERRORS]
    if errors:
        raise CLIError("; ".join(errors))


def _fail(message: str) -> None:
    print(f"{_PROG}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
