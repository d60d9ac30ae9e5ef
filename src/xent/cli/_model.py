"""The tutorials' two networks, and saving/loading them without pickle.

A saved model is a directory with ``model.safetensors`` (the weights; safetensors holds only
tensors, so loading it runs no code) and ``model.json`` (architecture, feature names, scaler,
class labels, training settings, metrics, and the SHA-256 of the weights file). Every file is
written to a temporary file in the same directory and moved into place with `os.replace`, and
``model.json`` is written last: a run interrupted at any point leaves either the previous,
complete file or the new one, and a weights file that does not belong to its ``model.json`` is
caught by the hash when loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import CLIError

FORMAT = "xent-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
PLOT_FILE = "loss_curves.png"


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

    def scaled(self, X: np.ndarray) -> np.ndarray:
        """Standardise raw features ``(N, D)`` with the stored scaler, as float32."""
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The network's raw output for raw features: ``(N,)`` for binary, ``(N, C)`` else."""
        import torch

        self.net.eval()
        with torch.no_grad(), one_thread():  # the same numbers in training and in predict
            z = self.net.logits(torch.from_numpy(self.scaled(X))).numpy()
        return z[:, 0] if self.task == "binary" else z

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` in the order of ``classes`` (sigmoid or softmax)."""
        import xent

        z = self.logits(X)
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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is
    renamed over ``path`` (`os.replace` is atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_dir(out: Path) -> None:
    """Create the output directory, or explain in one line why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CLIError(f"{out}: exists and is not a directory; expected a directory for the "
                       "model files") from None
    except OSError as e:
        raise CLIError(f"{out}: cannot create the output directory ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"{out}: the output directory is not writable")


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


def read_meta(model_dir: str | Path) -> tuple[Path, dict]:
    """Parse and check ``model.json`` of a model directory (or the path of the file itself)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE if model_dir.is_dir() else model_dir
    if not model_dir.exists():
        raise CLIError(f"{model_dir}: model not found; expected a directory written by "
                       "'xent train'")
    if meta_path.is_file() and meta_path.suffix.lower() != ".json":
        raise CLIError(f"{model_dir}: not a model.json; expected the directory written by "
                       "'xent train' (or its model.json)")
    if not meta_path.is_file():
        raise CLIError(f"{model_dir}: no {META_FILE}; expected a directory written by "
                       "'xent train'")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(meta_path, "not UTF-8 text; the file is corrupted") from None
    except json.JSONDecodeError as e:
        raise _bad(meta_path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                              "the file is truncated or corrupted") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(meta_path, f"not an xent model (expected \"format\": {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _bad(meta_path, f"format_version {meta.get('format_version')!r} is not supported "
                              f"(this xent reads {FORMAT_VERSION})")
    return meta_path, meta


def load(model_dir: str | Path) -> tuple[Classifier, dict]:
    """Load a model directory written by `xent train`; never unpickles anything.

    Raises `CLIError` for a missing, truncated, tampered or inconsistent ``model.json`` or
    weights file.
    """
    meta_path, meta = read_meta(model_dir)
    p = meta_path
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

    winfo = _get(meta, "weights", dict, p)
    wname = _get(winfo, "file", str, p, "weights.")
    digest = _get(winfo, "sha256", str, p, "weights.")
    if Path(wname).name != wname:
        raise _bad(p, f"field 'weights.file' must be a file name beside {META_FILE}, "
                      f"found {wname!r}")
    wpath = p.parent / wname
    try:
        data = wpath.read_bytes()
    except FileNotFoundError:
        raise CLIError(f"{wpath}: weights file not found (named in {p})") from None
    except OSError as e:
        raise CLIError(f"{wpath}: cannot read the weights file ({e.strerror})") from None
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
    clf = Classifier(task=task, net=net, features=list(features), target=target,
                     classes=list(classes), mean=mean, scale=scale)
    return clf, meta
