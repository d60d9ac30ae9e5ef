"""Bad input raises a clear exception, naming the argument, what was expected and what arrived,
before any computation (issue 2, item 5); no NumPy warning from finite input; Python lists in,
ndarrays out; no one-hot matrix for class-index targets.

Exception types: ValueError for bad values, shapes, reductions and label smoothing; IndexError for
a class index out of range (as torch); numpy.exceptions.AxisError for a bad axis; TypeError for a
wrong dtype. Where the type is debatable the test accepts (TypeError, ValueError) but still
matches the message's content.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tracemalloc
import warnings

import numpy as np
import pytest

import xent

LOSSES = ["cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits"]
X = np.array([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3], [0.0, 0.0, 1.0], [1.0, -1.0, 0.0]])  # (4, 3)
T = np.array([0, 1, 2, 1])


# ---------------------------------------------------------------------------------------------
# Class-index targets out of range


@pytest.mark.parametrize("fn_name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("bad", [3, -1, 1000, -101])
def test_target_out_of_range_raises_index_error_naming_the_target(fn_name, bad):
    target = T.copy()
    target[2] = bad
    with pytest.raises(IndexError, match=rf"target {bad}\b.*out of bounds.*3 classes"):
        getattr(xent, fn_name)(X, target)


def test_target_out_of_range_in_spatial_and_unbatched_inputs():
    x = np.zeros((2, 3, 4))
    t = np.zeros((2, 4), dtype=np.int64)
    t[1, 3] = 7
    with pytest.raises(IndexError, match=r"target 7\b.*3 classes"):
        xent.cross_entropy(x, t)
    with pytest.raises(IndexError, match=r"target 3\b.*3 classes"):
        xent.cross_entropy(np.zeros(3), 3)


def test_target_equal_to_a_non_default_ignore_index_is_not_an_error():
    target = np.array([0, 1, -1, 1])
    loss = xent.cross_entropy(X, target, ignore_index=-1)
    assert np.isfinite(loss)
    with pytest.raises(IndexError, match=r"target -1\b.*ignore_index=5"):
        xent.cross_entropy(X, target, ignore_index=5)


def test_unsigned_target_out_of_int64_range_raises_index_error():
    target = np.array([0, 1, 2, np.iinfo(np.uint64).max], dtype=np.uint64)
    with pytest.raises(IndexError, match=r"target 18446744073709551615\b"):
        xent.cross_entropy(X, target)


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("fn_name", ["cross_entropy", "nll_loss"])
def test_batch_size_mismatch_raises_value_error(fn_name):
    with pytest.raises(ValueError, match=r"batch_size \(4\).*batch_size \(3\)"):
        getattr(xent, fn_name)(X, T[:3])


@pytest.mark.parametrize("fn_name", ["cross_entropy", "nll_loss"])
def test_trailing_dimensions_mismatch_raises_value_error(fn_name):
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"target.*\(2, 4\).*\(2, 5\)"):
        getattr(xent, fn_name)(x, np.zeros((2, 5), dtype=np.int64))


@pytest.mark.parametrize("fn_name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("wshape", [(2,), (4,), (3, 1), ()])
def test_weight_of_wrong_length_raises_value_error(fn_name, wshape):
    with pytest.raises(ValueError, match=rf"weight.*\(3,\).*{re.escape(repr(wshape))}"):
        getattr(xent, fn_name)(X, T, np.ones(wshape))


def test_float_target_of_another_shape_raises():
    """A float target that is not the input's shape is neither probabilities nor indices."""
    with pytest.raises((TypeError, ValueError), match=r"target.*float64.*\(4,\)"):
        xent.cross_entropy(X, T.astype(np.float64))
    with pytest.raises((TypeError, ValueError), match=r"target.*float32.*\(4, 2\)"):
        xent.cross_entropy(X, np.zeros((4, 2), dtype=np.float32))
    with pytest.raises((TypeError, ValueError), match=r"target.*float64"):
        xent.nll_loss(X, T.astype(np.float64))


def test_integer_target_of_the_input_shape_raises():
    with pytest.raises((TypeError, ValueError), match=r"target.*int64"):
        xent.cross_entropy(X, np.zeros((4, 3), dtype=np.int64))


def test_nll_loss_rejects_probability_targets():
    """torch.nn.functional.nll_loss takes class indices only."""
    with pytest.raises((TypeError, ValueError), match=r"nll_loss.*float|target.*float"):
        xent.nll_loss(X, np.full((4, 3), 1 / 3))


@pytest.mark.parametrize("fn_name", ["cross_entropy", "nll_loss"])
def test_zero_dimensional_input_raises(fn_name):
    with pytest.raises(ValueError, match=r"input.*0-d"):
        getattr(xent, fn_name)(np.float64(1.0), 0)


@pytest.mark.parametrize("fn_name", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
def test_binary_target_of_another_shape_raises_value_error(fn_name):
    p = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"target size.*\(3,\).*input size.*\(2, 3\)"):
        getattr(xent, fn_name)(p, np.full(3, 0.5))


@pytest.mark.parametrize("fn_name", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
def test_binary_weight_not_broadcastable_raises_value_error(fn_name):
    p = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"weight.*\(2,\).*\(2, 3\)"):
        getattr(xent, fn_name)(p, p, np.ones(2))


def test_pos_weight_of_wrong_length_raises_value_error():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"pos_weight.*\(3,\).*\(2, 3, 4\)"):
        xent.binary_cross_entropy_with_logits(x, x, pos_weight=np.ones(3))


@pytest.mark.parametrize("fn_name", LOSSES)
def test_grad_output_of_the_wrong_shape_raises_value_error(fn_name):
    fn = getattr(xent, fn_name)
    x, t = (X, T) if fn_name in ("cross_entropy", "nll_loss") else (np.full((4, 3), 0.5),) * 2
    with pytest.raises(ValueError, match=r"grad_output.*\(5,\)"):
        fn(x, t, reduction="none", return_grad=True, grad_output=np.ones(5))
    with pytest.raises(ValueError, match=r"grad_output.*scalar.*\(2,\)"):
        fn(x, t, reduction="mean", return_grad=True, grad_output=np.ones(2))


# ---------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("ignore_index", [1, 0, -1, 5])
def test_ignore_index_with_probability_targets_raises_value_error(ignore_index):
    """Deliberate difference: torch raises only for ignore_index >= 0 and silently ignores a
    negative one with probability targets; xent raises for any value but the default."""
    with pytest.raises(ValueError, match=rf"ignore_index={ignore_index}\b.*probabilit"):
        xent.cross_entropy(X, np.full((4, 3), 1 / 3), ignore_index=ignore_index)


@pytest.mark.parametrize("eps", [-0.1, 1.1, 2.0, float("nan"), -1e-9])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_label_smoothing_outside_0_1_raises_value_error(eps, kind):
    """Deliberate difference for negative values: torch silently treats them as 0."""
    target = T if kind == "index" else np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=rf"label_smoothing.*\[0, 1\].*{eps}"):
        xent.cross_entropy(X, target, label_smoothing=eps)


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_label_smoothing_bounds_are_allowed(eps):
    assert np.isfinite(xent.cross_entropy(X, T, label_smoothing=eps))


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, "elementwise_mean"])
@pytest.mark.parametrize("fn_name", LOSSES)
def test_unknown_reduction_raises_value_error(fn_name, reduction):
    fn = getattr(xent, fn_name)
    x, t = (X, T) if fn_name in ("cross_entropy", "nll_loss") else (np.full((4, 3), 0.5),) * 2
    with pytest.raises(ValueError, match=rf"reduction={reduction!r}.*'none', 'mean', 'sum'"):
        fn(x, t, reduction=reduction)


@pytest.mark.parametrize("ignore_index", [1.5, "1", None])
def test_non_integer_ignore_index_raises_type_error(ignore_index):
    with pytest.raises(TypeError, match=r"ignore_index.*integer"):
        xent.cross_entropy(X, T, ignore_index=ignore_index)


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy: probabilities in [0, 1]


@pytest.mark.parametrize("bad", [1.5, -0.25, np.nan, np.inf])
def test_binary_cross_entropy_input_outside_0_1_raises_value_error(bad):
    p = np.array([0.5, bad, 0.25])
    with pytest.raises(ValueError, match=rf"input.*\[0, 1\].*{bad}"):
        xent.binary_cross_entropy(p, np.array([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("bad", [1.5, -0.5, np.nan])
def test_binary_cross_entropy_target_outside_0_1_raises_value_error(bad):
    with pytest.raises(ValueError, match=rf"target.*\[0, 1\].*{bad}"):
        xent.binary_cross_entropy(np.array([0.5, 0.5]), np.array([1.0, bad]))


# ---------------------------------------------------------------------------------------------
# Axes and dtypes


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_axis_out_of_range_raises_axis_error_naming_it(name):
    with pytest.raises(np.exceptions.AxisError, match=r"axis=3.*dimension 2"):
        getattr(xent, name)(np.zeros((2, 3)), axis=3)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "sigmoid", "log_sigmoid"])
@pytest.mark.parametrize(
    "bad", [np.array([1 + 2j, 3j]), np.array(["a", "b"])], ids=["complex", "str"]
)
def test_non_real_input_raises_type_error(name, bad):
    with pytest.raises(TypeError, match=rf"x.*{bad.dtype}"):
        getattr(xent, name)(bad)


@pytest.mark.parametrize("fn_name", LOSSES)
def test_complex_loss_input_raises_type_error(fn_name):
    x = np.full((4, 3), 0.5 + 0j)
    t = T if fn_name in ("cross_entropy", "nll_loss") else np.full((4, 3), 0.5)
    with pytest.raises(TypeError, match=r"input.*complex128"):
        getattr(xent, fn_name)(x, t)


def test_complex_weight_raises_type_error():
    with pytest.raises(TypeError, match=r"weight.*complex128"):
        xent.cross_entropy(X, T, np.ones(3, dtype=complex))


# ---------------------------------------------------------------------------------------------
# Raised before any computation, and never by `assert`


def test_a_bad_target_leaves_an_inplace_buffer_untouched():
    """Validation runs before the kernel: with inplace=True the logits would otherwise already
    have been overwritten by the gradient."""
    x = X.copy()
    target = np.array([0, 1, 9, 1])
    with pytest.raises(IndexError):
        xent.cross_entropy(x, target, return_grad=True, inplace=True)
    np.testing.assert_array_equal(x, X)


def test_validation_survives_python_dash_O():
    """Checks are `raise`, not `assert`: they still fire with assertions disabled."""
    code = textwrap.dedent(
        """
        import numpy as np, xent
        X = np.zeros((4, 3)); T = np.array([0, 1, 2, 1])
        cases = [
            lambda: xent.cross_entropy(X, np.array([0, 1, 3, 1])),
            lambda: xent.cross_entropy(X, T[:3]),
            lambda: xent.cross_entropy(X, T, np.ones(2)),
            lambda: xent.cross_entropy(X, T, label_smoothing=2.0),
            lambda: xent.cross_entropy(X, T, reduction="avg"),
            lambda: xent.cross_entropy(X, np.full((4, 3), 0.3), ignore_index=1),
            lambda: xent.binary_cross_entropy(np.array([1.5]), np.array([1.0])),
            lambda: xent.binary_cross_entropy_with_logits(X, X, pos_weight=np.ones(2)),
            lambda: xent.softmax(X, axis=2),
        ]
        for i, case in enumerate(cases):
            try:
                case()
            except (ValueError, IndexError, TypeError):
                continue
            raise SystemExit(f"case {i} did not raise under -O")
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------
# Python lists in, ndarrays out


def test_every_public_function_takes_lists_and_returns_ndarrays():
    x = [[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]]
    p = [[0.9, 0.1, 0.5], [0.2, 0.7, 0.5]]
    y = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    outputs = {
        "softmax": xent.softmax(x),
        "log_softmax": xent.log_softmax(x),
        "logsumexp": xent.logsumexp(x),
        "sigmoid": xent.sigmoid(x),
        "log_sigmoid": xent.log_sigmoid(x),
        "softmax_backward": xent.softmax_backward(y, p),
        "log_softmax_backward": xent.log_softmax_backward(y, x),
        "sigmoid_backward": xent.sigmoid_backward(y, p),
        "log_sigmoid_backward": xent.log_sigmoid_backward(y, x),
        "cross_entropy": xent.cross_entropy(x, [0, 1]),
        "cross_entropy probs": xent.cross_entropy(x, p),
        "nll_loss": xent.nll_loss(x, [0, 2]),
        "binary_cross_entropy": xent.binary_cross_entropy(p, y),
        "binary_cross_entropy_with_logits": xent.binary_cross_entropy_with_logits(x, y),
    }
    for name, out in outputs.items():
        assert isinstance(out, np.ndarray), (name, type(out))
        assert out.dtype == np.float64, (name, out.dtype)
    for name in LOSSES:
        fn = getattr(xent, name)
        args = (x, [0, 1]) if name in ("cross_entropy", "nll_loss") else (p, y)
        for reduction in ("mean", "sum"):
            loss, grad = fn(*args, reduction=reduction, return_grad=True)
            assert isinstance(loss, np.ndarray) and loss.shape == (), (name, reduction)
            assert isinstance(grad, np.ndarray) and grad.shape == (2, 3), (name, reduction)


# ---------------------------------------------------------------------------------------------
# No NumPy warning from finite input


def _finite_extremes(dtype):
    fi = np.finfo(dtype)
    vals = [fi.max, -fi.max, fi.tiny, -fi.tiny, fi.smallest_subnormal, 0.0, 1e4, -1e4, 88.0, 710.0]
    return np.array(vals, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda d: d.__name__)
def test_no_numpy_warning_from_finite_inputs(backend, dtype):
    v = _finite_extremes(dtype)
    rng = np.random.default_rng(0)
    x = np.stack([v, v[::-1], rng.permutation(v), np.full_like(v, v[0]), np.full_like(v, v[1])])
    C = x.shape[1]
    t = np.array([0, 1, 2, 3, 4])
    p_rows = np.abs(np.sin(x.astype(np.float64))).astype(dtype)  # targets in [0, 1]
    probs = np.stack([np.linspace(0, 1, C)] * 5).astype(dtype)
    w = np.linspace(0.5, 2.0, C).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            for axis in (0, 1):
                xent.softmax(x, axis=axis)
                xent.log_softmax(x, axis=axis)
                xent.logsumexp(x, axis=axis)
            s = xent.sigmoid(x)
            xent.log_sigmoid(x)
            xent.sigmoid_backward(x, s)
            xent.log_sigmoid_backward(np.ones_like(x), x)
            for ls in (0.0, 0.3):
                for reduction in ("none", "mean", "sum"):
                    xent.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls,
                                       return_grad=True)
                    xent.cross_entropy(x, p_rows, w, reduction=reduction, label_smoothing=ls,
                                       return_grad=True)
            for reduction in ("none", "mean", "sum"):
                xent.nll_loss(x, t, w, reduction=reduction, return_grad=True)
                xent.binary_cross_entropy_with_logits(
                    x, probs, w, reduction=reduction, pos_weight=w, return_grad=True
                )
                xent.binary_cross_entropy(
                    probs, p_rows, w, reduction=reduction, return_grad=True
                )


def test_results_at_finite_extremes_are_finite_where_the_math_is(backend):
    """The loss of a finite input is finite unless the true value overflows."""
    x = np.array([[1e300, -1e300, 0.0], [-1e300, 1e300, 5.0], [1e4, 1e4, 1e4]])
    t = np.array([0, 1, 2])
    loss, grad = xent.cross_entropy(x, t, reduction="none", return_grad=True)
    np.testing.assert_array_equal(loss, [0.0, 0.0, np.log(3)])
    assert np.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# No one-hot matrix for class-index targets


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_index_targets_build_no_one_hot_matrix(backend, label_smoothing):
    """Peak memory of the forward and backward with (N, C) float32 logits and index targets.

    The pass needs one (N, C) float32 buffer (the exponentials, which become the gradient): 1x
    the logits' bytes. A one-hot (N, C) matrix on top of it would need at least another 1x
    (float32) or 2x (float64), so a peak under 1.5x the logits means none was built. NumPy
    reports its allocations to tracemalloc.
    """
    rng = np.random.default_rng(0)
    N, C = 32, 20_000
    x = rng.standard_normal((N, C)).astype(np.float32)
    t = rng.integers(0, C, size=N)
    xent.cross_entropy(x[:2], t[:2], label_smoothing=label_smoothing, return_grad=True)  # warm up
    budget = 1.5 * x.nbytes
    fwd = _peak_bytes(lambda: xent.cross_entropy(x, t, label_smoothing=label_smoothing))
    assert fwd < budget, f"forward peak {fwd / x.nbytes:.2f}x the logits' bytes"
    both = _peak_bytes(
        lambda: xent.cross_entropy(x, t, label_smoothing=label_smoothing, return_grad=True)
    )
    assert both < budget, f"forward+backward peak {both / x.nbytes:.2f}x the logits' bytes"
