"""softmax, log_softmax, logsumexp, sigmoid, log_sigmoid, and their vector-Jacobian products.

Each derivative sits next to the function it differentiates. The max shift that makes softmax
stable is a constant for the gradient: softmax(x) = softmax(x - max(x)) exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _buffers, _dispatch
from ._backend_numpy import (
    _QUIET,
    _sigmoid_neg,
    _softplus_neg,
    logsumexp_rows,
    logsumexp_signed_rows,
)
from ._validation import (
    as_float,
    as_float_like,
    as_result,
    as_storage,
    check_same_shape,
    is_half,
    normalize_axis,
)


def _cast(x: Any, dtype: Any) -> Any:
    """``x`` cast to ``dtype`` (PyTorch's ``dtype=``: the input is cast before the operation, the
    result has that dtype), or ``x`` itself for ``dtype=None``. Only float dtypes: the result
    of softmax is never an integer (TypeError otherwise); bfloat16 (``ml_dtypes``) is a float."""
    if dtype is None:
        return x
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy float dtype or None, got {dtype!r}") from None
    if not (dt.kind == "f" and dt.itemsize <= 8) and not is_half(dt):
        raise TypeError(
            f"dtype must be float16, bfloat16, float32 or float64 (or None), got {dt}"
        )
    return np.asarray(x).astype(dt, copy=False)


def _wide(x: Any, name: str, keep_half: bool) -> tuple[np.ndarray, np.dtype]:
    """``x`` as an ndarray of its compute dtype, and the dtype of the result: as
    :func:`as_storage` (``keep_half``: a 16-bit float stays as it is, the backends read it) or
    :func:`as_float`, except that a float wider than float64 (``np.longdouble``) is computed in
    itself, so that the result keeps the input's float dtype (the NumPy backend runs it)."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        return arr, arr.dtype
    return as_storage(arr, name) if keep_half else as_float(arr, name)


def _rowwise(op: str, x: Any, axis: int) -> np.ndarray:
    """Run a row kernel (softmax / log_softmax) along ``axis`` of ``x``; a 16-bit ``x`` goes to
    the backend as it is (computed in float32, the output written in 16 bits)."""
    arr, rdt = _wide(x, "x", True)
    if arr.ndim == 0:  # a scalar is a 1-element distribution, as in torch
        normalize_axis(axis, 1)  # torch accepts dim 0 or -1 for a 0-d input
        return as_result(_rowwise(op, arr.reshape(1), 0).reshape(()), rdt)
    return _along(op, (arr,), normalize_axis(axis, arr.ndim), rdt)


def _along(op: str, arrays: tuple[np.ndarray, ...], ax: int, rdt: np.dtype) -> np.ndarray:
    """The backend's ``op(*rows, out)`` along axis ``ax`` of ``arrays`` (one shape, one storage
    dtype: the input, or the upstream gradient and the forward's output), as rows ``(M, C)``
    or, for an inner axis, the ``(A, C, B)`` layout (:func:`_inner_axis`); the result in
    ``rdt``."""
    arr = arrays[0]
    last = ax == arr.ndim - 1  # the common case: no axis moves (np.moveaxis costs ~2.5 µs)
    if not last:
        out = _inner_axis(op, arrays, ax)
        if out is not None:
            return out if out.dtype == rdt else as_result(out, rdt)
    moved = arrays if last else tuple(np.moveaxis(a, ax, -1) for a in arrays)
    shape = moved[0].shape
    C = shape[-1]
    M = arr.size // C if C else math.prod(shape[:-1])  # reshape(-1, 0) is ambiguous
    rows = [np.ascontiguousarray(a).reshape(M, C) for a in moved]
    out = _buffers.empty_like(rows[0])
    if out.size:
        backend = _dispatch.backend_for(op, M, C, arr.dtype)
        getattr(backend, op)(*rows, out)
    out = out.reshape(shape)
    if not last:
        out = np.ascontiguousarray(np.moveaxis(out, -1, ax))
    return out if out.dtype == rdt else as_result(out, rdt)


def _inner_axis(op: str, arrays: tuple[np.ndarray, ...], ax: int) -> np.ndarray | None:
    """``op`` along an axis that is not last, by a kernel on the (A, C, B) views, or None.

    None (the caller moves the axis last instead) where `_dispatch.kdim_kernel` says so.
    """
    arr = arrays[0]
    A, C, B = math.prod(arr.shape[:ax]), arr.shape[ax], math.prod(arr.shape[ax + 1 :])
    fn = _dispatch.kdim_kernel(op, A, C, B, arr.dtype)
    if fn is None:
        return None
    out = _buffers.empty(arr.shape, arr.dtype)
    fn(*(np.ascontiguousarray(a).reshape(A, C, B) for a in arrays), out.reshape(A, C, B))
    return out


def _vjp(op: str, grad_output: Any, output: Any, axis: int) -> np.ndarray:
    """The backend's ``op`` (``softmax_backward``, ``log_softmax_backward``) of the upstream
    gradient and the forward's output along ``axis``. Both reach the backend in one storage
    dtype: 16-bit as they are where both have that dtype, else the output's compute dtype."""
    y, rdt = _wide(output, "output", True)
    g = np.asarray(grad_output)
    if is_half(y.dtype) and g.dtype != y.dtype:
        y = y.astype(np.float32)
    if g.dtype != y.dtype:
        g = as_float_like(g, y.dtype, "grad_output")
    check_same_shape(y, g, "output", "grad_output")
    if y.ndim == 0:
        return np.zeros((), rdt)
    return _along(op, (g, y), normalize_axis(axis, y.ndim), rdt)


def softmax(x: Any, axis: int = -1, *, dtype: Any = None) -> np.ndarray:
    r"""Softmax along ``axis``: probabilities that sum to 1.

    .. math:: \mathrm{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},\quad m = \max_j x_j

    Args:
        x: array-like of any shape ``(..., C, ...)``; integers are promoted to float64.
        axis: the axis that is normalised (``dim`` in PyTorch).
        dtype: None, or a float dtype ``x`` is cast to before the operation; the result then
            has that dtype (``torch.softmax``'s ``dtype=``).

    Returns:
        An array of ``x``'s shape and float dtype (float16 and ``ml_dtypes.bfloat16`` are
        computed in float32 and rounded to nearest even once).

    Edge cases: never overflows for finite input; a row that is all ``-inf`` or holds ``+inf``
    gives nan, as ``torch.softmax`` does; an empty array gives an empty array.

    Example:
        >>> import xent
        >>> print(xent.softmax([2.0, 1.0, 0.1]).round(4))
        [0.659  0.2424 0.0986]
        >>> print(xent.softmax([1000.0, 1.0]))  # the naive formula gives [nan, 0.]
        [1. 0.]

    Reference: ``torch.softmax``; ``scipy.special.softmax``.
    """
    return _rowwise("softmax", _cast(x, dtype), axis)


def softmax_backward(grad_output: Any, output: Any, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`softmax`, from its output ``y``.

    .. math:: \frac{\partial L}{\partial x} = y \odot (g - \langle g, y\rangle_{axis})

    Args:
        grad_output: ``g``, dL/dy, the shape of ``output``.
        output: ``y = softmax(x, axis)``.
        axis: the axis softmax normalised.

    Returns:
        dL/dx, the shape and dtype of ``output``.

    Example:
        >>> import xent
        >>> y = xent.softmax([2.0, 1.0, 0.1])
        >>> print(xent.softmax_backward([1.0, 0.0, 0.0], y).round(4))
        [ 0.2247 -0.1598 -0.065 ]
    """
    return _vjp("softmax_backward", grad_output, output, axis)


def log_softmax(x: Any, axis: int = -1, *, dtype: Any = None) -> np.ndarray:
    r"""Log of the softmax along ``axis``, computed without forming the softmax.

    .. math:: \mathrm{log\_softmax}(x)_i = (x_i - m) - \log\bigl(1 + \sum_{j \ne j^*}
              e^{x_j - m}\bigr),\quad m = x_{j^*} = \max_j x_j

    The log-sum is ``log1p`` of the terms other than the max's own 1, so terms below the
    float's resolution still count (as SciPy's ``logsumexp`` computes it).

    Args:
        x: array-like of any shape; integers are promoted to float64.
        axis: the axis that is normalised.
        dtype: None, or a float dtype ``x`` is cast to before the operation; the result then
            has that dtype (``torch.log_softmax``'s ``dtype=``).

    Returns:
        An array of ``x``'s shape and float dtype.

    Edge cases: finite wherever the result is finite (``np.log(softmax(x))`` is ``-inf`` as soon
    as a probability underflows); all ``-inf`` or any ``+inf`` in a row gives nan, as in torch.

    Example:
        >>> import xent
        >>> print(xent.log_softmax([1000.0, 1.0]))
        [   0. -999.]
        >>> print(xent.log_softmax([0.0, -40.0])[0])  # -log1p(e^-40); log(1 + e^-40) is 0
        -4.248354255291589e-18

    Reference: ``torch.log_softmax``; ``scipy.special.log_softmax``.
    """
    return _rowwise("log_softmax", _cast(x, dtype), axis)


def log_softmax_backward(grad_output: Any, output: Any, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`log_softmax`, from its output ``z``: dL/dx, the shape
    and dtype of ``z``, for ``grad_output`` ``g`` = dL/dz (arguments as
    :func:`softmax_backward`'s).

    .. math:: \frac{\partial L}{\partial x} = g - e^{z} \sum_{axis} g

    Example:
        >>> import numpy as np, xent
        >>> z = xent.log_softmax([2.0, 1.0, 0.1])
        >>> print(xent.log_softmax_backward([-1.0, 0.0, 0.0], z).round(4))  # softmax - onehot
        [-0.341   0.2424  0.0986]
    """
    return _vjp("log_softmax_backward", grad_output, output, axis)


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """``axis`` (an int, a sequence of ints, or None for all) as sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = [normalize_axis(a, ndim) for a in axis]
        if len(set(axes)) != len(axes):
            raise ValueError(
                f"axis={tuple(axis)} repeats an axis (of an array of dimension {ndim})"
            )
        return tuple(sorted(axes))
    return (normalize_axis(axis, ndim),)


def logsumexp(x: Any, axis: Any = -1, keepdims: bool = False, *, b: Any = None,
              return_sign: bool = False) -> Any:
    r"""``log(sum(b * exp(x)))`` over ``axis`` without overflow, underflow or lost tiny terms.

    .. math:: \mathrm{lse}(x) = m + \log\bigl(1 + \sum_{j \ne j^*} e^{x_j - m}\bigr),
              \quad m = x_{j^*} = \max_j x_j

    ``log1p`` of the terms other than the max's own 1 (as SciPy since gh-18295), so
    ``logsumexp([0, -40])`` is ``log1p(e^-40)`` = 4.25e-18, where ``log(1 + e^-40)`` is 0.
    With scale factors ``b`` (SciPy's ``b``), ``log|Σ_j b_j e^{x_j}|
    = m + log|b_{j*}| + log|1 + s|``, ``s = Σ_{j≠j*} b_j e^{x_j - m} / b_{j*}``, the max taken
    over the terms whose factor is not 0.

    Args:
        x: array-like of any shape; integers are promoted to float64.
        axis: the reduced axis, a tuple of axes (reduced together, as ``torch.logsumexp``'s
            ``dim=(0, 1)``), or None for all of them (as SciPy; torch needs ``dim``). The
            default is the last axis, as torch (SciPy's default is None).
        keepdims: keep the reduced axes with length 1.
        b: scale factors, broadcast against ``x`` (the result has the broadcast shape's
            kept axes); they may be negative (a difference of exponentials) or 0 (the term
            is left out, even where ``x`` is NaN or inf). A float ``b`` is promoted with
            ``x``'s dtype (float32 ``x``, float64 ``b``: float64, as SciPy); an integer or
            bool ``b`` keeps ``x``'s dtype.
        return_sign: return ``(log|sum|, sign)``, the sign +1, 0 or -1 (NaN with a NaN).
            Without it, a negative sum gives NaN (as SciPy).

    Returns:
        ``x``'s shape without the reduced axes (or with them as 1), ``x``'s float dtype; with
        ``return_sign`` a pair of such arrays.

    Edge cases: as ``torch.logsumexp`` (and SciPy), an infinite maximum is not subtracted, so
    a row of ``-inf`` gives ``-inf`` and a row holding ``+inf`` gives ``+inf`` (NaN with a
    NaN); an empty reduction, or one whose factors are all 0, gives ``-inf`` (the log of an
    empty sum) with sign 0 (SciPy 1.17 gives sign -1 for the empty one, 0 for zero factors;
    a zero factor next to terms all ``-inf`` leaves ``-inf`` here, NaN in SciPy, whose
    direct fallback multiplies 0 by the dropped ``exp(inf)``); a sum that cancels to 0 gives
    ``-inf``, sign 0; a 0-d ``x`` is its own result. 16-bit floats are computed in float32
    and rounded once.

    Example:
        >>> import xent
        >>> print(xent.logsumexp([1000.0, 1000.0]).round(4))
        1000.6931
        >>> print(xent.logsumexp([0.0, -40.0]))
        4.248354255291589e-18
        >>> print(xent.logsumexp([[0.0, 1.0], [2.0, 3.0]], axis=(0, 1)).round(4))
        3.4402
        >>> print(xent.logsumexp([1.0, 2.0], b=[1.0, -1.0]))  # log(e - e^2) < 0: NaN
        nan
        >>> value, sign = xent.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
        >>> print(value.round(4), sign)  # log(e^2 - e), and the sum is negative
        1.5413 -1.0
        >>> print(xent.logsumexp([0.0, -40.0], b=[-1.0, 1.0], return_sign=True)[0])
        -4.248354255291589e-18

    Reference: ``torch.logsumexp``; ``scipy.special.logsumexp``.
    """
    arr, rdt = _wide(x, "x", False)
    bw = None
    if b is not None:
        arr, bw, rdt = _scale_factors(arr, rdt, b)
    if arr.ndim == 0:  # a 1-element sum; torch accepts dim 0 or -1 for a 0-d input
        _axes(axis, 1)
        out_shape: tuple[int, ...] = ()
        kept: list[int] = []
        axes: tuple[int, ...] = (0,)
        arr = arr.reshape(1)
        bw = None if bw is None else bw.reshape(1)
    else:
        axes = _axes(axis, arr.ndim)
        kept = [a for a in range(arr.ndim) if a not in axes]
        out_shape = tuple((1 if a in axes else n for a, n in enumerate(arr.shape)) if keepdims
                          else (arr.shape[a] for a in kept))
    M = math.prod(arr.shape[a] for a in kept)
    K = math.prod(arr.shape[a] for a in axes)

    def as_rows(a: np.ndarray) -> np.ndarray:
        # Rows (M, K): the kept axes first, the reduced ones flattened last (a copy unless
        # they already are the trailing axes).
        return np.ascontiguousarray(a.transpose(kept + list(axes))).reshape(M, K)

    rows = as_rows(arr)
    sign = None
    if K == 0:
        out = np.full(M, -np.inf, arr.dtype)
        sign = np.zeros(M, arr.dtype)
    elif bw is None:
        out = logsumexp_rows(rows)
        if return_sign:  # a sum of exponentials is > 0, 0 when all are -inf, NaN with a NaN
            sign = np.where(out == -np.inf, 0, np.where(np.isnan(out), np.nan, 1)).astype(
                arr.dtype)
    else:
        out, sign = logsumexp_signed_rows(rows, as_rows(bw))
        if not return_sign:
            out[sign < 0] = np.nan  # the log of a negative sum
    result = as_result(out.reshape(out_shape), rdt)
    if not return_sign:
        return result
    return result, as_result(sign.reshape(out_shape), rdt)


def _scale_factors(arr: np.ndarray, rdt: np.dtype, b: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """``x`` and the scale factors ``b`` of :func:`logsumexp` broadcast together, in one
    compute dtype, and the result's dtype: a float ``b`` promotes (as SciPy), an integer or
    bool one keeps ``x``'s dtype; a 16-bit result is computed in float32."""
    barr = np.asarray(b)
    if barr.dtype.kind == "f" or is_half(barr.dtype):
        bcomp, brdt = _wide(barr, "b", False)
        rdt = np.result_type(rdt, brdt)
        cdt = np.result_type(arr.dtype, bcomp.dtype)
    else:
        as_float_like(barr, arr.dtype, "b")  # rejects complex, strings, objects
        bcomp, cdt = barr, arr.dtype
    try:
        xa, ba = np.broadcast_arrays(arr, bcomp)
    except ValueError:
        raise ValueError(f"b of shape {barr.shape} does not broadcast against x of shape "
                         f"{arr.shape}; expected shapes that broadcast together (as SciPy's "
                         "logsumexp)") from None
    return xa.astype(cdt, copy=False), ba.astype(cdt, copy=False), rdt


def sigmoid(x: Any) -> np.ndarray:
    r"""The logistic function, elementwise, without overflow.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}} = \frac{e^{x}}{1 + e^{x}}

    The first form is used for ``x >= 0`` and the second for ``x < 0``, so ``exp`` only ever
    sees non-positive arguments: tiny results are exact (``sigmoid(-100)`` in float32 is
    3.7e-44, where ``1 / (1 + exp(100))`` is 0).

    Args:
        x: array-like of any shape; integers are promoted to float64.

    Returns:
        ``x``'s shape and float dtype, values in [0, 1].

    Example:
        >>> import xent
        >>> print(xent.sigmoid([2.0, 1.0, 0.1]).round(4))
        [0.8808 0.7311 0.525 ]
        >>> print(xent.sigmoid([-1000.0, 1000.0]))
        [0. 1.]

    Reference: ``torch.sigmoid``; ``scipy.special.expit``.
    """
    arr, rdt = _wide(x, "x", False)
    with np.errstate(**_QUIET):
        out = _sigmoid_neg(-arr)
    return as_result(np.asarray(out), rdt)


def sigmoid_backward(grad_output: Any, output: Any) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`sigmoid`, from its output ``y``.

    .. math:: \frac{\partial L}{\partial x} = g \odot y \odot (1 - y)

    Example:
        >>> import xent
        >>> y = xent.sigmoid([0.0, 2.0])
        >>> print(xent.sigmoid_backward([1.0, 1.0], y).round(4))
        [0.25  0.105]
    """
    y, rdt = _wide(output, "output", False)
    g = as_float_like(grad_output, y.dtype, "grad_output")
    check_same_shape(y, g, "output", "grad_output")
    return as_result(np.asarray(g * y * (1 - y)), rdt)


def log_sigmoid(x: Any) -> np.ndarray:
    r"""``log(sigmoid(x))``, elementwise, without overflow or log(0).

    .. math:: \log\sigma(x) = -\mathrm{softplus}(-x) = \min(x, 0) - \log(1 + e^{-|x|})

    Args:
        x: array-like of any shape; integers are promoted to float64.

    Returns:
        ``x``'s shape and float dtype, values ≤ 0.

    Example:
        >>> import xent
        >>> print(xent.log_sigmoid([-1000.0, 0.0, 1000.0]).round(4).tolist())
        [-1000.0, -0.6931, 0.0]

    Reference: ``torch.nn.functional.logsigmoid``; ``scipy.special.log_expit``.
    """
    arr, rdt = _wide(x, "x", False)
    with np.errstate(**_QUIET):
        out = -_softplus_neg(arr)
    return as_result(np.asarray(out), rdt)


def log_sigmoid_backward(grad_output: Any, x: Any) -> np.ndarray:
    r"""Vector-Jacobian product of :func:`log_sigmoid`, from its *input* ``x``.

    .. math:: \frac{\partial L}{\partial x} = g \odot (1 - \sigma(x)) = g \odot \sigma(-x)

    Example:
        >>> import xent
        >>> print(xent.log_sigmoid_backward([1.0, 1.0], [0.0, -1000.0]).round(4))
        [0.5 1. ]
    """
    arr, rdt = _wide(x, "x", False)
    g = as_float_like(grad_output, arr.dtype, "grad_output")
    check_same_shape(arr, g, "x", "grad_output")
    with np.errstate(**_QUIET):
        out = g * _sigmoid_neg(arr)
    return as_result(np.asarray(out), rdt)
