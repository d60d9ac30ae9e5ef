"""Argument checking and normalisation shared by every public function.

Everything here raises *before* any computation, with a message that names the argument, what was
expected and what arrived. Nothing here uses ``assert`` (Python drops asserts under ``-O``).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import numpy as np
from numpy.exceptions import AxisError

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} must be one of {REDUCTIONS}")
    return reduction


def check_label_smoothing(label_smoothing: Any) -> float:
    try:
        if isinstance(label_smoothing, (str, bytes)):  # float("0.1") would accept a string
            raise TypeError
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(
            f"label_smoothing must be a float in [0, 1], got {type(label_smoothing).__name__}"
        ) from None
    # `not (0 <= eps <= 1)` also rejects nan. PyTorch silently treats negative values as 0.
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_real(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite Python float (``positive``: also > 0), else a TypeError/ValueError
    that names ``name``. Booleans and strings are not numbers here."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        ) from None
    if not math.isfinite(v) or (positive and not v > 0):
        what = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_ignore_index(ignore_index: Any) -> int:
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(
            f"ignore_index must be an integer, got {type(ignore_index).__name__} {ignore_index!r}"
        ) from None


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise AxisError(
            f"{name}={axis} is out of bounds for an array of dimension {ndim} "
            f"(valid: {-ndim}..{ndim - 1})"
        )
    return axis % ndim


@functools.cache
def bfloat16() -> np.dtype | None:
    """``ml_dtypes.bfloat16`` as a NumPy dtype, or None where ml_dtypes is not installed.

    ml_dtypes (JAX's NumPy bfloat16; an optional dependency, in the ``fast`` and ``torch``
    extras) is imported on the first call, never by ``import xent``. Its dtype's kind is
    ``'V'``, not ``'f'``, so a bfloat16 array is recognised by equality with this dtype.
    """
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def is_half(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a 16-bit float xent computes in float32: float16 or bfloat16.

    >>> is_half(np.dtype(np.float16)), is_half(np.dtype(np.float32))
    (True, False)
    """
    if dtype == np.float16:
        return True
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype == bfloat16()


def is_float(dtype: np.dtype) -> bool:
    """Whether ``dtype`` holds floats: NumPy's float dtypes and bfloat16."""
    return dtype.kind == "f" or is_half(dtype)


def compute_dtype(dtype: np.dtype, name: str) -> tuple[np.dtype, np.dtype]:
    """Return ``(compute_dtype, result_dtype)`` for an input of ``dtype``.

    float32 and float64 compute in themselves; float16 and bfloat16 (``ml_dtypes.bfloat16``)
    compute in float32 and are returned in their 16-bit dtype, rounded to nearest even (as
    PyTorch's CPU kernels do); integers and bools are promoted to float64, as SciPy does;
    anything else (complex, strings, objects) is a TypeError.
    """
    if dtype == np.float32 or dtype == np.float64:
        return dtype, dtype
    if is_half(dtype):
        return np.dtype(np.float32), dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64), np.dtype(np.float64)
    if dtype.kind == "f":  # longdouble and other exotic floats: float64 is what we compute in
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{name} must hold real numbers (float, bfloat16 or integer), got dtype {dtype}"
    )


def as_float(x: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """``x`` as an ndarray of its compute dtype, and the dtype the result must have."""
    arr = np.asarray(x)
    cdt, rdt = compute_dtype(arr.dtype, name)
    if arr.dtype != cdt:
        arr = arr.astype(cdt)
    return arr, rdt


def as_storage(x: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """``x`` as an ndarray the backends take as it is, and the dtype the result must have.

    As :func:`as_float`, except that a 16-bit float array (float16, bfloat16) is kept in its
    own dtype, not copied to float32: the backends read 16-bit input, compute in float32 and
    write 16-bit output themselves (``docs/ARCHITECTURE.md``, backend contract).

    >>> a, rdt = as_storage(np.zeros(3, np.float16), "x")
    >>> a.dtype, rdt
    (dtype('float16'), dtype('float16'))
    >>> as_storage([1, 2], "x")[0].dtype
    dtype('float64')
    """
    arr = np.asarray(x)
    if is_half(arr.dtype):
        return arr, arr.dtype
    return as_float(arr, name)


def as_result(a: Any, rdt: np.dtype) -> np.ndarray:
    """``a`` as an ndarray of the result dtype ``rdt``.

    Only 16-bit results are cast (from float32, rounded to nearest even): a value beyond
    float16's range becomes ±inf, which is the answer in that dtype, so the cast's overflow
    warning is silenced here.
    """
    if type(a) is np.ndarray and a.dtype == rdt:  # nothing to cast (np.errstate costs µs)
        return a
    with np.errstate(over="ignore"):
        return np.asarray(a).astype(rdt, copy=False)


def as_float_like(x: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A second float operand (target, weight, grad) in the compute dtype of the first."""
    arr = np.asarray(x)
    compute_dtype(arr.dtype, name)  # rejects complex / strings / objects
    return arr.astype(dtype, copy=False)


def as_operand(x: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A second float operand (probability target, BCE target) for a computation in ``dtype``:
    kept as it is when it is a 16-bit float and ``dtype`` is float32 (the backends read it in
    16 bits), else :func:`as_float_like`."""
    arr = np.asarray(x)
    if dtype == np.float32 and is_half(arr.dtype):
        return arr
    return as_float_like(arr, dtype, name)


def check_same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{b_name} must have the shape of {a_name} {a.shape}, got {b.shape}"
        )


def broadcastable_to(arr: np.ndarray, shape: tuple[int, ...], name: str, to: str) -> np.ndarray:
    """``np.broadcast_to`` with an error that names the argument."""
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {arr.shape} cannot be broadcast to the shape of {to} {shape}"
        ) from None


def grad_output_for(
    grad_output: Any, loss_shape: tuple[int, ...], reduction: str, dtype: np.dtype
) -> np.ndarray:
    """The upstream gradient as an array of the loss's shape (1 by default)."""
    if grad_output is None:
        return np.ones(loss_shape, dtype=dtype) if reduction == "none" else np.asarray(1, dtype)
    g = as_float_like(grad_output, dtype, "grad_output")
    if reduction != "none":
        if g.size != 1:
            raise ValueError(
                f"grad_output must be a scalar for reduction={reduction!r}, got shape {g.shape}"
            )
        return g.reshape(())
    if g.shape != loss_shape:
        raise ValueError(
            f"grad_output must have the unreduced loss's shape {loss_shape}, got {g.shape}"
        )
    return g
