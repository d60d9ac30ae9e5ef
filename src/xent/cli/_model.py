"""The tutorials' two networks, and saving/loading them without pickle.

A saved model is a directory with ``model.safetensors`` (the weights; safetensors holds only
tensors, so loading it runs no code) and ``model.json`` (architecture, feature names, scaler,
class labels, training settings, metrics, and the SHA-256 of the weights file). The directory is
written as a whole by `_files.write_dir` (a new folder swapped in when complete), so a reader sees
the old model or the new one, never a mix; `read_model` reads both files from one opened
directory, only as regular files of bounded size, with the JSON's nesting bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _files
from ._errors import CLIError

FORMAT = "xent-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
PLOT_FILE = "loss_curves.png"
META_LIMIT = 16 << 20  # bytes of model.json accepted (a real one is a few KiB)
WEIGHTS_LIMIT = 1 << 30  # bytes of the weights file accepted
JSON_DEPTH = 64  # nesting of model.json accepted (a real one nests 3 deep)
SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library's own bound on the header


def build(task: str, input_size: int, hidden_size: int, num_classes: int):
    """A fresh network for ``task``: NeuralNet1 for 'binary', NeuralNet2 for 'multiclass'."""
    from ._nets import NeuralNet1, NeuralNet2

    if task == "binary":
        return NeuralNet1(input_size, hidden_size)
    return NeuralNet2(input_size, hidden_size, num_classes)


def architecture(task: str, input_size: int, hidden_size: int, num_classes: int) -> dict:
    """The JSON description `build` is rebuilt from."""
    return {
        "name": "NeuralNet1" if task == "binary" else "NeuralNet2",
        "layers": "Linear -> ReLU -> Linear",
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": 1 if task == "binary" else num_classes,
        "output": "sigmoid" if task == "binary" else "softmax",
    }


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: as fast for these tiny networks, and it fixes the order of every
    reduction, so that a run is reproducible byte for byte. (``torch.use_deterministic_algorithms``
    is not needed for these CPU ops, and costs a second to import: it loads torch._inductor.)
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Classifier:
    """A trained network with everything needed to predict from raw feature values."""

    task: str
    net: Any  # torch.nn.Module
    features: list[str]
    target: str
    classes: list
    mean: np.ndarray
    scale: np.ndarray
    temperature: float = 1.0  # probabilities are softmax(logits / T): temperature scaling
    encoder: Any = None  # `_columns.Encoder`: the file's columns -> the features (None: as is)

    def scaled(self, X: np.ndarray) -> np.ndarray:
        """Standardise raw features ``(N, D)`` with the stored scaler, as float32 (unchecked:
        `_data.standardised` names a value beyond float32's range)."""
        from ._data import standardise

        return standardise(X, self.mean, self.scale).astype(np.float32)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The network's raw output for raw features: ``(N,)`` for binary, ``(N, C)`` else."""
        import torch

        self.net.eval()
        with torch.no_grad(), one_thread():  # the same numbers in training and in predict
            z = self.net.logits(torch.from_numpy(self.scaled(X))).numpy()
        return z[:, 0] if self.task == "binary" else z

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` in the order of ``classes``: sigmoid or softmax of the
        logits divided by ``temperature`` (fitted on validation rows by `xent train`)."""
        import xent

        z = self.logits(X) / np.float32(self.temperature)
        if self.task == "binary":
            # P(first class) = 1 - sigmoid(z) = sigmoid(-z), without the cancellation near 1.
            return np.stack([xent.sigmoid(-z), xent.sigmoid(z)], axis=1)
        return xent.softmax(z, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The index into ``classes`` of each row's predicted class (``(N,)`` int64)."""
        z = self.logits(X)
        if self.task == "binary":
            return (z > 0).astype(np.int64)  # sigmoid(z) > 0.5
        return np.argmax(z, axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Writing


def make_dir(out: Path) -> None:
    """Check that ``out`` can receive the model files, before training (`_files.prepare`):
    parents created, a killed run's leftovers restored or removed, one line when it cannot be."""
    _files.prepare(out)


def weights_bytes(net) -> bytes:
    """The network's state dict as safetensors bytes (contiguous float32 tensors)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # One metadata key only: safetensors writes a map's keys in no fixed order, and the bytes
    # must be the same for the same seed.
    return save(state, metadata={"format": "pt"})


def json_bytes(meta: dict) -> bytes:
    """``meta`` as indented JSON (finite floats only; keys in insertion order)."""
    return (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading


def _bad(path: Path, what: str) -> CLIError:
    return CLIError(f"{path}: {what}")


def _get(meta: dict, key: str, kind: type | tuple, path: Path, where: str = "") -> Any:
    value = meta.get(key) if isinstance(meta, dict) else None
    name = f"{where}{key}"
    if value is None:
        raise _bad(path, f"field {name!r} is missing; the file is not a complete xent model")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _bad(path, f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _floats(values: Any, n: int, path: Path, name: str, positive: bool = False) -> np.ndarray:
    ok = (isinstance(values, list) and len(values) == n
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > 0 or not positive) for v in values))
    if not ok:
        kind = "positive finite numbers" if positive else "finite numbers"
        raise _bad(path, f"field {name!r} must be a list of {n} {kind}")
    return np.array(values, dtype=np.float64)


@dataclass
class ModelFiles:
    """``model.json`` (parsed and checked for the format) and the weights file's bytes, read
    from one opened directory, so that both come from the same run."""

    meta_path: Path
    meta: dict
    weights_path: Path
    weights: bytes


def _meta_location(model: Path) -> tuple[Path, str]:
    """The model directory and the name of its ``model.json`` for a ``--model`` argument (the
    directory, or the path of the JSON file). A directory that a killed run left aside is
    restored first, or read where it lies (`_files.recover`)."""
    as_file = model.suffix.lower() == ".json" and not model.is_dir()
    folder = _files.recover(model.parent if as_file else model, clean=False)
    if folder is None:
        raise CLIError(f"{_files.short(model)}: model not found; expected a directory written "
                       "by 'xent train'")
    if as_file:
        return folder, model.name
    if not folder.is_dir():
        raise CLIError(f"{_files.short(model)}: not a model.json; expected the directory "
                       "written by 'xent train' (or its model.json)")
    if not os.path.lexists(folder / META_FILE):
        raise CLIError(f"{_files.short(model)}: no {META_FILE}; expected a directory written "
                       "by 'xent train'")
    return folder, META_FILE


def _weights_name(meta: dict, p: Path) -> str:
    winfo = _get(meta, "weights", dict, p)
    wname = _get(winfo, "file", str, p, "weights.")
    if Path(wname).name != wname or wname in ("", ".", ".."):
        raise _bad(p, f"field 'weights.file' must be a file name beside {META_FILE}, "
                      f"found {wname!r}")
    return wname


_READ_ATTEMPTS = 5  # a file missing from a directory being swapped out: read again


def read_model(model: str | Path) -> ModelFiles:
    """Read ``model.json`` and the weights of a model directory (or of its ``model.json``).

    Both files are read from one opened directory: a run that replaces the model meanwhile is
    seen wholly or not at all (the read is retried when the directory was swapped away). Both
    must be regular files (a FIFO, a device or a directory is refused without blocking), of
    at most `META_LIMIT` and `WEIGHTS_LIMIT` bytes, the JSON nested at most `JSON_DEPTH` deep;
    the format and its version are checked here, every other field by `load`.
    """
    model = Path(model)
    gone = f"{_files.short(model)}: the model kept changing while being read"
    for attempt in range(_READ_ATTEMPTS):
        try:
            folder, meta_name = _meta_location(model)
        except CLIError:
            # A reader between a run's two renames finds the set-aside folder, which the run
            # may empty and remove before it is read: look again; a real mistake stays one.
            if attempt == _READ_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * 2**attempt)
            continue
        meta_path = folder / meta_name
        try:
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        except NotADirectoryError:
            raise CLIError(f"{_files.short(folder)}: not a directory") from None
        except OSError as e:
            raise _files.os_error(folder, "cannot open the model directory", e) from None
        try:
            raw = _read_in(dir_fd, meta_name, "a model.json written by 'xent train'",
                           META_LIMIT, meta_path, f"{_files.short(meta_path)}: file not found")
            meta = _files.load_json(raw, meta_path, JSON_DEPTH)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise _bad(meta_path, f"not an xent model (expected \"format\": {FORMAT!r})")
            if meta.get("format_version") != FORMAT_VERSION:
                raise _bad(meta_path, f"format_version {meta.get('format_version')!r} is not "
                                      f"supported (this xent reads {FORMAT_VERSION})")
            wpath = folder / _weights_name(meta, meta_path)
            weights = _read_in(dir_fd, wpath.name, "a safetensors weights file", WEIGHTS_LIMIT,
                               wpath, f"{_files.short(wpath)}: weights file not found (named "
                               f"in {_files.short(meta_path)})")
            return ModelFiles(meta_path, meta, wpath, weights)
        except _Gone as e:
            gone = str(e)  # being swapped away and removed by a run: read the new one
            time.sleep(0.01)
        finally:
            os.close(dir_fd)
    raise CLIError(gone)


class _Gone(Exception):
    """A file named by the model is missing: the directory may be being swapped out."""


def _read_in(dir_fd: int, name: str, what: str, limit: int, label: Path, missing: str) -> bytes:
    try:
        return _files.read_regular(name, what, limit, dir_fd=dir_fd, label=label)
    except FileNotFoundError:
        raise _Gone(missing) from None


def read_meta(model_dir: str | Path) -> tuple[Path, dict]:
    """Parse and check ``model.json`` of a model directory (or the path of the file itself)."""
    files = read_model(model_dir)
    return files.meta_path, files.meta


_SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
                            "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _count(v: Any) -> bool:
    """Whether ``v`` is a JSON integer >= 0 (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_safetensors(data: bytes, path: Path) -> None:
    """Check a safetensors file's layout against its own header, before the library reads it.

    The first 8 bytes are the header's length N (little-endian); the header is JSON mapping
    each tensor to its dtype, shape and ``data_offsets`` ``[begin, end)`` into the bytes after
    the header. N must be at most `SAFETENSORS_HEADER_LIMIT` and fit in the file, each tensor's
    byte count must be its shape's product times its dtype's size, and the tensors must cover
    the rest of the file exactly. Raises `CLIError` naming what does not fit.
    """
    if len(data) < 8:
        raise _bad(path, f"{len(data)} bytes; a safetensors file starts with an 8-byte header "
                         "length: the file is truncated")
    n = int.from_bytes(data[:8], "little")
    if n > SAFETENSORS_HEADER_LIMIT or 8 + n > len(data):
        raise _bad(path, f"the header declares {n} bytes, the file holds {len(data) - 8} after "
                         "the length: truncated or not a safetensors file")
    header = _files.load_json(data[8:8 + n], path, 4)
    if not isinstance(header, dict):
        raise _bad(path, "the safetensors header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        info = info if isinstance(info, dict) else {}
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (info.get("dtype") in _SAFETENSORS_DTYPE_BYTES
                and isinstance(shape, list) and all(_count(v) for v in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_count(v) for v in offsets)):
            raise _bad(path, f"tensor {name!r}: the header's dtype, shape or data_offsets are "
                             "malformed")
        size = math.prod(shape) * _SAFETENSORS_DTYPE_BYTES[info["dtype"]]
        if offsets[1] - offsets[0] != size:
            raise _bad(path, f"tensor {name!r}: {info['dtype']} {tuple(shape)} needs {size} "
                             f"bytes, the header gives it {offsets[1] - offsets[0]}")
        end = max(end, offsets[1])
    if 8 + n + end != len(data):
        raise _bad(path, f"the tensors declare {end} bytes of data, the file holds "
                         f"{len(data) - 8 - n}: truncated or extended")


def _temperature(meta: dict, path: Path) -> float:
    """``calibration.temperature``: a positive finite number; 1 for a model written without it."""
    cal = meta.get("calibration")
    if cal is None:
        return 1.0
    t = cal.get("temperature") if isinstance(cal, dict) else None
    if (not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t)
            or t <= 0):
        raise _bad(path, f"field 'calibration.temperature' must be a positive finite number, "
                         f"found {t!r}")
    return float(t)


def load(model_dir: str | Path | ModelFiles) -> tuple[Classifier, dict]:
    """Load a model directory written by `xent train` (or the files `read_model` read from
    it); never unpickles anything.

    Raises `CLIError` for a missing, truncated, tampered or inconsistent ``model.json`` or
    weights file.
    """
    files = model_dir if isinstance(model_dir, ModelFiles) else read_model(model_dir)
    meta, p = files.meta, files.meta_path
    task = _get(meta, "task", str, p)
    if task not in ("binary", "multiclass"):
        raise _bad(p, f"field 'task' is {task!r}; expected 'binary' or 'multiclass'")
    arch = _get(meta, "architecture", dict, p)
    d = _get(arch, "input_size", int, p, "architecture.")
    h = _get(arch, "hidden_size", int, p, "architecture.")
    k = _get(arch, "output_size", int, p, "architecture.")
    features = _get(meta, "features", list, p)
    target = _get(meta, "target", str, p)
    classes = _get(meta, "classes", list, p)
    if min(d, h, k) < 1:
        raise _bad(p, f"architecture sizes must be positive, found {d}, {h}, {k}")
    if len(features) != d or not all(isinstance(f, str) for f in features):
        raise _bad(p, f"field 'features' must list {d} column names (architecture.input_size)")
    if len(set(features)) != d:
        raise _bad(p, "field 'features' has repeated names")
    if (len(classes) < 2 or len({json.dumps(c) for c in classes}) != len(classes)
            or not all(isinstance(c, str) for c in classes)
            and not all(isinstance(c, int) and not isinstance(c, bool) for c in classes)):
        raise _bad(p, "field 'classes' must list at least 2 distinct labels, all strings or "
                      "all integers")
    expected_k = 1 if task == "binary" else len(classes)
    if k != expected_k or (task == "binary" and len(classes) != 2):
        raise _bad(p, f"{task} model with {len(classes)} classes cannot have {k} outputs")
    scaler = _get(meta, "scaler", dict, p)
    mean = _floats(scaler.get("mean"), d, p, "scaler.mean")
    scale = _floats(scaler.get("scale"), d, p, "scaler.scale", positive=True)

    digest = _get(_get(meta, "weights", dict, p), "sha256", str, p, "weights.")
    wpath, data = files.weights_path, files.weights
    check_safetensors(data, wpath)
    if sha256(data) != digest:
        raise CLIError(f"{wpath}: the weights do not match {p} (SHA-256 differs): the file was "
                       "modified, truncated, or comes from another run")

    try:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors
    except ImportError:  # pragma: no cover
        from ._errors import missing_extra

        raise missing_extra("safetensors") from None
    import torch

    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CLIError(f"{wpath}: not a valid safetensors file ({e})") from None
    out = 1 if task == "binary" else len(classes)
    shapes = {"linear1.weight": (h, d), "linear1.bias": (h,),
              "linear2.weight": (out, h), "linear2.bias": (out,)}
    if set(state) != set(shapes):
        raise CLIError(f"{wpath}: tensors {sorted(state)}; expected {sorted(shapes)}")
    for name, shape in shapes.items():
        t = state[name]
        if tuple(t.shape) != shape or t.dtype != torch.float32:
            raise CLIError(f"{wpath}: tensor {name!r} is {t.dtype} {tuple(t.shape)}; expected "
                           f"torch.float32 {shape}")
        if not torch.isfinite(t).all():
            raise CLIError(f"{wpath}: tensor {name!r} holds nan or inf values")
    net = build(task, d, h, len(classes))
    net.load_state_dict(state)
    net.eval()
    temperature = _temperature(meta, p)
    clf = Classifier(task=task, net=net, features=list(features), target=target,
                     classes=list(classes), mean=mean, scale=scale, temperature=temperature,
                     encoder=encoder(meta, p))
    return clf, meta


def _strings(values: Any, path: Path, name: str, n: int | None = None,
             nullable: bool = False) -> list:
    ok = isinstance(values, list) and (n is None or len(values) == n) and all(
        isinstance(v, str) or nullable and v is None for v in values)
    if not ok:
        size = "" if n is None else f" of {n}"
        raise _bad(path, f"field {name!r} must be a list{size} of strings")
    return list(values)


def encoder(meta: dict, path: Path):
    """The `_columns.Encoder` of ``model.json``'s ``columns`` (None for a model without one:
    its features are numeric columns of the file), checked against ``features``."""
    from ._columns import Encoder

    cols = meta.get("columns")
    if cols is None:
        return None
    if not isinstance(cols, dict):
        raise _bad(path, "field 'columns' must be an object")
    num = _get(cols, "numeric", dict, path, "columns.")
    cat = _get(cols, "categorical", dict, path, "columns.")
    numeric = _strings(num.get("columns"), path, "columns.numeric.columns")
    medians = _floats(num.get("medians"), len(numeric), path, "columns.numeric.medians")
    indicators = _strings(num.get("missing_indicator"), path,
                          "columns.numeric.missing_indicator")
    categorical = _strings(cat.get("columns"), path, "columns.categorical.columns")
    categories = cat.get("categories")
    if not isinstance(categories, list) or len(categories) != len(categorical):
        raise _bad(path, f"field 'columns.categorical.categories' must list "
                         f"{len(categorical)} lists of categories")
    categories = [_strings(c, path, "columns.categorical.categories", nullable=True)
                  for c in categories]
    if not set(indicators) <= set(numeric) or len(set(numeric + categorical)) != len(
            numeric + categorical):
        raise _bad(path, "fields 'columns.numeric' and 'columns.categorical' are inconsistent "
                         "(repeated columns, or an indicator of no numeric column)")
    enc = Encoder(numeric=numeric, medians=[float(v) for v in medians], indicators=indicators,
                  categorical=categorical, categories=categories)
    if enc.names() != meta.get("features"):
        raise _bad(path, "field 'features' does not match the encoding in 'columns'")
    return enc
