"""xent.logsumexp's SciPy arguments: scale factors ``b`` and ``return_sign`` (issue 19, item 5).

The reference is ``scipy.special.logsumexp`` (fixed cases and hypothesis-generated ones), with
hand math for the tiny terms SciPy and xent both keep (``log1p``) and for the edge cases where
xent documents a different answer (an empty sum's sign; a zero factor beside terms all -inf).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp as scipy_lse

import xent
from xent._validation import bfloat16

INF = np.inf


def _pair(got):
    out, sign = got
    assert isinstance(out, np.ndarray) and isinstance(sign, np.ndarray)
    assert out.shape == sign.shape and out.dtype == sign.dtype
    return out, sign


def _same(got, want, rtol=1e-13, atol=1e-13):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


# (name, x, b, axis): float64, compared with SciPy value and sign, with and without keepdims.
CASES = [
    ("scalar b", [1.0, 2.0, 3.0], 2.0, -1),
    ("negative b", [1.0, 2.0], [1.0, -1.0], -1),
    ("negative sum rows", [[1.0, 2.0], [3.0, 1.0]], [1.0, -1.0], 1),
    ("b broadcast along rows", [[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]], [[2.0], [-0.5]], 1),
    ("b wider than x", [1.0, 2.0], [[1.0, 1.0], [2.0, -2.0], [0.0, 3.0]], -1),
    ("axis 0", [[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]], [[1.0, -2.0, 0.5], [0.25, 1.0, 1.0]], 0),
    ("axis None", [[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]], [[1.0, -2.0, 0.5], [0.25, 1.0, 1.0]],
     None),
    ("axis tuple", np.arange(24.0).reshape(2, 3, 4) / 7, np.linspace(-1, 2, 24).reshape(2, 3, 4),
     (0, 2)),
    ("zero factors", [1.0, 2.0, 3.0], [0.0, 1.0, 0.0], -1),
    ("zero factor on NaN and inf", [np.nan, 1.0, INF], [0.0, 2.0, 0.0], -1),
    ("all factors 0", [1.0, 2.0], [0.0, 0.0], -1),
    ("exact cancellation", [1.0, 1.0], [1.0, -1.0], -1),
    ("tied maxima, one cancelled", [0.0, 0.0, -1.0], [1.0, -1.0, 1.0], -1),
    ("ties", [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], -1),
    ("large logits", [1000.0, 1000.0, 999.0], [1.0, -0.5, 2.0], -1),
    ("very negative logits", [-1000.0, -1001.0], [3.0, -1.0], -1),
    ("+inf with a positive factor", [INF, 1.0], [2.0, 1.0], -1),
    ("+inf with a negative factor", [INF, 0.0], [-1.0, 1.0], -1),
    ("+inf twice, opposite factors", [INF, INF], [-1.0, 1.0], -1),
    ("-inf everywhere", [-INF, -INF], [1.0, -1.0], -1),
    ("-inf beside finite", [-INF, 0.5], [1.0, -3.0], -1),
    ("NaN in x", [np.nan, 1.0], [1.0, 1.0], -1),
    ("NaN in b", [0.0, 1.0], [np.nan, 1.0], -1),
    ("overflowing factor sum", [709.0, 709.0], [1e300, 1e300], -1),
]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize(("name", "x", "b", "axis"), CASES, ids=[c[0] for c in CASES])
def test_matches_scipy(name, x, b, axis, keepdims):
    x = np.asarray(x, np.float64)
    want, want_sign = scipy_lse(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    got, sign = _pair(xent.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True))
    assert got.shape == np.shape(want) and got.dtype == np.float64
    _same(got, want)
    _same(sign, want_sign, 0, 0)
    plain = xent.logsumexp(x, axis=axis, b=b, keepdims=keepdims)
    _same(plain, scipy_lse(x, axis=axis, b=b, keepdims=keepdims))  # NaN where negative


@pytest.mark.parametrize("axis", [-1, 0, None, (0, 1)])
def test_without_b_return_sign_matches_scipy(axis):
    """b=None: sign 1, 0 for a row of -inf, NaN with a NaN; the value is today's."""
    x = np.array([[0.0, -INF, 2.0], [-INF, -INF, -INF], [np.nan, 1.0, 0.0], [INF, 1.0, 0.0]])
    if axis != -1:
        x = x[:2]  # reduced across rows: keep NaN and +inf out of the column sums
    want, want_sign = scipy_lse(x, axis=axis, return_sign=True)
    got, sign = _pair(xent.logsumexp(x, axis=axis, return_sign=True))
    _same(got, want)
    _same(sign, want_sign, 0, 0)
    _same(xent.logsumexp(x, axis=axis), want)


def test_b_none_and_b_ones_agree():
    """b=None is today's function; b of ones gives the same values (to 2 ulp)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)) * 10
    _same(xent.logsumexp(x, b=np.ones_like(x)), xent.logsumexp(x), rtol=4e-16, atol=0)


def test_default_axis_is_last_not_scipy_none():
    x = np.arange(6.0).reshape(2, 3)
    b = np.array([1.0, -1.0, 2.0])
    _same(xent.logsumexp(x, b=b), scipy_lse(x, axis=-1, b=b))
    _same(xent.logsumexp(x, axis=None, b=b), scipy_lse(x, b=b))


def test_scalar_input():
    """A 0-d x (and b): log|b·e^x| = x + log|b|, sign(b); torch's dim 0 / -1 accepted."""
    got, sign = _pair(xent.logsumexp(3.0, b=-2.0, return_sign=True))
    assert got.shape == () and sign == -1
    _same(got, 3.0 + math.log(2.0))
    _same(xent.logsumexp(3.0, axis=0, b=0.5), scipy_lse(3.0, b=0.5))
    assert np.isnan(xent.logsumexp(3.0, b=-2.0))


# --- tiny terms: log1p keeps what log(1 + s) would round away -----------------------------

_GAP = {np.float64: 40.0, np.float32: 20.0}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("b", "expect"), [
    ([1.0, 2.0], lambda g: math.log1p(2 * math.exp(-g))),
    ([1.0, -1.0], lambda g: math.log1p(-math.exp(-g))),
    ([-1.0, 1.0], lambda g: math.log1p(-math.exp(-g))),  # |-(1 - e^-g)|, sign -1
    ([3.0, 0.5], lambda g: math.log(3.0) + math.log1p(math.exp(-g) / 6)),
], ids=["2e-g", "1-e-g", "-(1-e-g)", "3+e-g/2"])
def test_tiny_terms_kept(dtype, b, expect):
    """[0, -g] with factors b: m + log|b_0| + log1p(b_1 e^-g / b_0), hand math in float64; at
    the gap g, 1 + e^-g rounds to 1 in dtype, so log(sum) would lose the tiny term."""
    g = _GAP[dtype]
    assert dtype(1) + dtype(math.exp(-g)) == 1
    x = np.array([0.0, -g], dtype)
    got, sign = _pair(xent.logsumexp(x, b=np.array(b, dtype), return_sign=True))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expect(g), rtol=8 * np.finfo(dtype).eps, atol=0)
    assert sign == np.sign(b[0])
    assert got != 0 or expect(g) == 0


def test_tiny_terms_as_scipy():
    x = np.array([0.0, -40.0, -41.0])
    b = np.array([1.0, -1.0, 2.0])
    _same(xent.logsumexp(x, b=b), scipy_lse(x, b=b), rtol=2e-16, atol=0)
    assert xent.logsumexp(x, b=b) != 0


# --- dtypes ---------------------------------------------------------------------------------

def _dtypes():
    out = [(np.float64, 1e-13), (np.float32, 2e-6), (np.float16, 2e-3)]
    bf = bfloat16()
    if bf is not None:
        out.append((bf, 1.6e-2))
    return out


@pytest.mark.parametrize(("dtype", "rtol"), _dtypes(), ids=lambda v: getattr(v, "name", ""))
def test_dtypes_against_scipy_float64(dtype, rtol):
    """Each dtype against SciPy in float64 on the same (rounded) values; 16-bit floats are
    computed in float32 and rounded once, so the result is within one 16-bit rounding."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(6, 9)) * 3).astype(dtype)
    b = rng.uniform(0.1, 2.0, size=(6, 9)).astype(dtype)
    b[:, ::3] *= -0.2  # negative factors, sums still positive
    want, want_sign = scipy_lse(x.astype(np.float64), axis=1, b=b.astype(np.float64),
                                return_sign=True)
    got, sign = _pair(xent.logsumexp(x, axis=1, b=b, return_sign=True))
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(sign.astype(np.float64), want_sign)


@pytest.mark.parametrize(("x_dtype", "b_dtype", "result"), [
    (np.float32, np.float64, np.float64),  # a float b promotes, as SciPy
    (np.float32, np.float32, np.float32),
    (np.float32, np.int64, np.float32),  # integer and bool factors keep x's dtype
    (np.float32, np.bool_, np.float32),
    (np.int64, np.int64, np.float64),  # integer x: float64, as without b
    (np.float16, np.float16, np.float16),
    (np.float16, np.float32, np.float32),
])
def test_result_dtype(x_dtype, b_dtype, result):
    x = np.array([1, 2, 3], x_dtype)
    b = np.array([1, 0, 1], b_dtype)
    got, sign = _pair(xent.logsumexp(x, b=b, return_sign=True))
    assert got.dtype == result and sign.dtype == result
    _same(got, scipy_lse(np.array([1.0, 3.0])), rtol=1e-3, atol=0)


# --- edge cases where xent documents its own answer ----------------------------------------

@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)])
def test_empty_sum_is_minus_inf_sign_zero(shape):
    """log 0 = -inf with sign 0, as for factors all 0 (SciPy 1.17 gives sign -1 here)."""
    x = np.zeros(shape)
    got, sign = _pair(xent.logsumexp(x, b=np.ones(shape), return_sign=True))
    want = scipy_lse(x, axis=-1) if x.size or shape[-1] else np.full(shape[:-1], -INF)
    _same(got, want)
    assert np.all(got == -INF) and np.all(sign == 0)
    got2, sign2 = _pair(xent.logsumexp(x, return_sign=True))
    assert np.all(got2 == -INF) and np.all(sign2 == 0)


def test_zero_factor_beside_minus_inf_terms():
    """[inf, -inf] with b [0, 1]: the inf term is dropped, the rest is an empty sum: -inf,
    sign 0 (SciPy's direct fallback multiplies 0 by e^inf and returns NaN)."""
    got, sign = _pair(xent.logsumexp([INF, -INF], b=[0.0, 1.0], return_sign=True))
    assert got == -INF and sign == 0
    assert np.isnan(scipy_lse([INF, -INF], b=[0.0, 1.0]))


def test_masked_array_as_scipy_docs():
    """SciPy's documented use: a mask as zero factors (an integer b keeps x's dtype)."""
    a = np.array([np.log(2), 2, np.log(3)])
    mask = np.array([False, True, False])
    _same(xent.logsumexp(a, b=(~mask).astype(int)), np.log(5), rtol=1e-15, atol=0)


# --- errors ---------------------------------------------------------------------------------

def test_b_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"b of shape \(3,\) does not broadcast against x of "
                       r"shape \(2, 2\)"):
        xent.logsumexp(np.zeros((2, 2)), b=np.ones(3))


@pytest.mark.parametrize("b", [np.array([1 + 1j, 2]), np.array(["a", "b"])])
def test_b_of_the_wrong_kind(b):
    with pytest.raises(TypeError, match="b"):
        xent.logsumexp([1.0, 2.0], b=b)


def test_axis_errors_with_b():
    with pytest.raises(np.exceptions.AxisError, match="axis=2"):
        xent.logsumexp(np.zeros((2, 2)), axis=2, b=1.0)
    with pytest.raises(ValueError, match="repeats an axis"):
        xent.logsumexp(np.zeros((2, 2)), axis=(0, 0), b=1.0)


# --- generated cases ------------------------------------------------------------------------

_x_values = st.one_of(st.floats(-60, 60, allow_nan=False, width=64),
                      st.sampled_from([-INF, 0.0, 1.0]))
_b_values = st.one_of(st.floats(-3, 3, allow_nan=False, width=64), st.just(0.0))


@st.composite
def _problems(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    x = draw(hnp.arrays(np.float64, shape, elements=_x_values))
    b_shape = draw(st.sampled_from([shape, shape[-1:], (), tuple(1 for _ in shape)]))
    b = draw(hnp.arrays(np.float64, b_shape, elements=_b_values))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.just(tuple(range(len(shape))))))
    return x, b, axis, draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_generated_against_scipy(problem):
    """Value and sign as SciPy's, within the rounding the sum's cancellation allows: the
    error of log|S| is about eps·n·κ, κ = Σ|b e^x| / |Σ b e^x| (the condition of the sum)."""
    x, b, axis, keepdims = problem
    want, want_sign = scipy_lse(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    got, sign = _pair(xent.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True))
    want, want_sign = np.asarray(want), np.asarray(want_sign)
    assert got.shape == want.shape and got.dtype == np.float64
    xb, bb = np.broadcast_arrays(x, b)
    with np.errstate(all="ignore"):
        # κ from the shifted terms: the scale cancels in the ratio
        m = np.max(np.where(bb == 0, -INF, xb), axis=axis, keepdims=True)
        terms = bb * np.exp(np.where(bb == 0, -INF, xb) - np.where(np.isfinite(m), m, 0))
        abs_sum = np.sum(np.abs(terms), axis=axis, keepdims=keepdims)
        net = np.abs(np.sum(terms, axis=axis, keepdims=keepdims))
        kappa = abs_sum / net
    n = x.size
    well = np.isfinite(kappa) & (kappa * n * 1e-15 < 1e-3)
    # where the sum is well conditioned: the same sign, and the values within that rounding
    np.testing.assert_array_equal(sign[well], want_sign[well])
    tol = 1e-14 * n * np.where(well, kappa, 1) + 1e-14 * np.abs(np.nan_to_num(want))
    fin = well & np.isfinite(want)
    assert np.all(np.abs(got[fin] - want[fin]) <= tol[fin]), (got, want)
    np.testing.assert_array_equal(np.isnan(got[well]), np.isnan(want[well]))
    np.testing.assert_array_equal(got[well & ~np.isfinite(want)],
                                  want[well & ~np.isfinite(want)])
    # a sum that cancels to 0 exactly (κ infinite): -inf and sign 0 in both
    zero = (net == 0) & (abs_sum > 0)
    assert np.all(got[zero & (want == -INF)] == -INF)
    # without return_sign: NaN exactly where the (well conditioned) sum is negative
    plain = np.asarray(xent.logsumexp(x, axis=axis, b=b, keepdims=keepdims))
    np.testing.assert_array_equal(np.isnan(plain[well]), (np.isnan(want) | (want_sign < 0))[well])
