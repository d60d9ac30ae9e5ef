"""The one place that decides which backend runs a call: NumPy or the Numba kernels.

Users force a backend with the environment variable ``XENT_BACKEND`` (``auto``, ``numpy`` or
``numba``, read at import), with :func:`set_backend`, or for a block of code with
:func:`use_backend`::

    >>> import xent
    >>> with xent.use_backend("numpy"):
    ...     print(xent.get_backend())
    numpy

``auto`` (the default) uses a kernel when Numba is installed and the call is large enough for the
kernel to win (thresholds below, from ``benchmarks/bench_kernels.py``); ``numba`` uses a kernel
for every call that has one, whatever its size; ``numpy`` never imports Numba.

The kernels run on Numba's thread pool for large calls (``NUMBA_NUM_THREADS`` sets its size); the
first kernel call on a machine compiles it (seconds) and caches the machine code on disk
(``NUMBA_CACHE_DIR``), later processes load it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from . import _backend_numpy
from ._thresholds import (
    AUTO_MIN_COLS_BY_OP,
    AUTO_MIN_ELEMENTS,
    AUTO_MIN_ELEMENTS_BY_OP,
    SINGLE_THREAD_ELEMENTS,
)
from ._validation import is_half

BACKENDS = ("auto", "numpy", "numba")



def _check(name: object) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return str(name)


def _env_backend() -> str:
    """``XENT_BACKEND``, or 'auto' when it names no backend (recorded in `ENV_ERRORS`, which the
    command line reports as one line; the backends differ in speed, not in results)."""
    value = os.environ.get("XENT_BACKEND", "auto") or "auto"
    if value in BACKENDS:
        return value
    ENV_ERRORS.append(f"environment variable XENT_BACKEND={value!r}: expected one of "
                      f"{', '.join(BACKENDS)}")
    return "auto"


ENV_ERRORS: list[str] = []  # invalid environment settings met at import (see `_env_backend`)
_current: contextvars.ContextVar[str] = contextvars.ContextVar(
    "xent_backend", default=_env_backend()  # noqa: B039
)
_kernels: ModuleType | None = None
_kernels_error: BaseException | None = None


def set_backend(name: str) -> None:
    """Choose the backend for every later call in this context: 'auto', 'numpy' or 'numba'."""
    _current.set(_check(name))


def get_backend() -> str:
    """The backend now in force: 'auto', 'numpy' or 'numba'."""
    return _current.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block with another backend, restoring the previous one afterwards."""
    token = _current.set(_check(name))
    try:
        yield
    finally:
        _current.reset(token)


def _load_kernels() -> ModuleType | None:
    """Import ``xent._kernels`` (and so Numba) on first need; None if it cannot be imported."""
    global _kernels, _kernels_error
    if _kernels is None and _kernels_error is None:
        try:
            _kernels = importlib.import_module("xent._kernels")
        except ImportError as exc:  # Numba missing: the NumPy path is always correct
            _kernels_error = exc
    return _kernels


def backend_for(op: str, rows: int, cols: int, dtype: np.dtype) -> ModuleType:
    """The module whose ``op`` function runs a call on ``rows × cols`` values of ``dtype``.

    ``dtype`` is the storage of the input: float32, float64, or a 16-bit float (float16,
    bfloat16), which both backends read as it is and compute in float32; other dtypes run on
    NumPy.
    """
    name = _current.get()
    if name == "numpy" or (dtype != np.float32 and dtype != np.float64 and not is_half(dtype)):
        return _backend_numpy
    if name == "auto" and (rows * cols < AUTO_MIN_ELEMENTS_BY_OP.get(op, AUTO_MIN_ELEMENTS) or (
            rows * cols < SINGLE_THREAD_ELEMENTS and op in AUTO_MIN_COLS_BY_OP
            and cols < AUTO_MIN_COLS_BY_OP[op][is_half(dtype)])):
        return _backend_numpy
    kernels = _load_kernels()
    if kernels is None:
        if name == "numba":
            raise ImportError(
                "backend 'numba' was requested but the kernels cannot be imported "
                f"({_kernels_error}); install the 'fast' extra: pip install 'xent[fast]'"
            )
        return _backend_numpy
    if not hasattr(kernels, op):
        return _backend_numpy
    return kernels


def kdim_kernel(op: str, A: int, C: int, B: int, dtype: np.dtype) -> Any:
    """The layout decision, made here only: the kernel ``op + '_kdim'`` that runs ``op`` along
    the class axis of an ``(A, C, B)`` view (the axis not last, B positions after it), or None,
    and the caller moves the class axis last and runs the row function ``op`` instead.

    The ``(A, C, B)`` kernels run where more than one position follows the axis (with B = 1 the
    rows are already contiguous) and `backend_for` picks the kernels at this size (A·B·C
    elements, as for the rows); NumPy has no such kernels.
    """
    if B <= 1:
        return None
    name = op + "_kdim"
    return getattr(backend_for(name, A * B, C, dtype), name, None)
