"""The kernels' vectorisable exp (``xent._kernels._exp``): accuracy in ulp against a wider exp.

Truth is ``numpy.exp`` in float64 for float32 inputs and in ``numpy.longdouble`` (80-bit x87 on
x86-64) for float64 inputs, so the reference error is far below the tolerance. Skipped without
Numba.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

pytest.importorskip("numba")

from xent._kernels._exp import vexp_array  # noqa: E402

F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 2^-126
F64_TINY = float(np.finfo(np.float64).tiny)


def vexp(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    return vexp_array(x, np.empty_like(x))


def ulp_error(got: np.ndarray, truth: np.ndarray, dtype) -> np.ndarray:
    """|got - truth| in units of the spacing of ``dtype`` at truth (truth in a wider type)."""
    spacing = np.spacing(truth.astype(dtype)).astype(truth.dtype)
    return np.abs(got.astype(truth.dtype) - truth) / spacing


def float32_grid() -> np.ndarray:
    """Every float32 in [-1, 1] at a stride, and a dense grid over the range that matters."""
    rng = np.random.default_rng(0)
    dense = np.linspace(-103.9, 88.72, 2_000_001, dtype=np.float32)
    rand = rng.uniform(-103.9, 88.72, 1_000_000).astype(np.float32)
    small = np.arange(-(2**20), 2**20, dtype=np.int32) * np.float32(2**-20)
    around_halfway = (np.arange(-150, 129) + 0.5).astype(np.float32) * np.float32(np.log(2))
    grid = np.concatenate([dense, rand, small, around_halfway]).astype(np.float32)
    return grid  # (int32 * float32 promotes to float64: cast back, or this tests exp64)


def test_float32_exp_is_within_1_01_ulp_where_the_result_is_normal():
    x = float32_grid()
    assert x.dtype == np.float32
    truth = np.exp(x.astype(np.float64))
    got = vexp(x)
    normal = (truth >= F32_TINY) & (truth <= float(np.finfo(np.float32).max))
    err = ulp_error(got[normal], truth[normal], np.float32)
    assert normal.sum() > 3_000_000
    # Measured: max 1.008 ulp (x = 26.7286), mean 0.27 ulp over 4.8 million normal results.
    assert err.max() <= 1.01, f"max error {err.max():.4f} ulp at x={x[normal][err.argmax()]!r}"
    assert err.mean() < 0.35


def test_float32_exp_subnormal_results_are_within_one_subnormal_step():
    x = np.linspace(-103.9, -87.34, 200_001, dtype=np.float32)
    truth = np.exp(x.astype(np.float64))
    got = vexp(x).astype(np.float64)
    step = 2.0**-149  # spacing of float32 subnormals
    assert np.abs(got - truth).max() <= step


@pytest.mark.parametrize(
    ("x", "want"),
    [
        (-np.inf, 0.0),
        (-1e30, 0.0),
        (-104.0, 0.0),
        (-200.0, 0.0),
        (0.0, 1.0),
        (-0.0, 1.0),
        (88.73, np.inf),
        (89.0, np.inf),
        (1e30, np.inf),
        (np.inf, np.inf),
    ],
)
def test_float32_exp_special_values(x, want):
    got = vexp(np.array([x] * 17, dtype=np.float32))  # 17: a vector body and a scalar tail
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.float32(want))


def test_float32_exp_of_the_largest_finite_result_and_overflow_boundary():
    lo = np.float32(88.72283)  # exp < FLT_MAX
    hi = np.nextafter(np.float32(88.72284), np.float32(np.inf))  # exp > FLT_MAX
    got = vexp(np.array([lo, hi], dtype=np.float32))
    assert np.isfinite(got[0]) and got[0] > np.float32(3.4e38)
    assert np.isposinf(got[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_propagates_nan_in_every_lane(dtype):
    x = np.linspace(-5, 5, 37).astype(dtype)
    x[::5] = np.nan
    got = vexp(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    ok = ~np.isnan(x)
    np.testing.assert_allclose(got[ok], np.exp(x[ok]), rtol=4 * np.finfo(dtype).eps)


@pytest.mark.skipif(
    np.finfo(np.longdouble).nmant < 63, reason="needs 80-bit long double for a float64 truth"
)
def test_float64_exp_is_within_one_ulp_where_the_result_is_normal():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.linspace(-708.3, 709.78, 1_000_001),
            rng.uniform(-708.3, 709.78, 500_000),
            rng.uniform(-1, 1, 200_000),
        ]
    )
    truth = np.exp(x.astype(np.longdouble))
    got = vexp(x)
    normal = (truth >= F64_TINY) & (truth <= np.finfo(np.float64).max)
    err = ulp_error(got[normal], truth[normal], np.float64)
    assert err.max() <= 1.0, (
        f"max error {float(err.max()):.3f} ulp at x={x[normal][err.argmax()]!r}"
    )


def test_float64_exp_special_values_and_subnormals():
    x = np.array([-np.inf, -746.0, -1000.0, 0.0, 709.8, 710.0, np.inf])
    np.testing.assert_array_equal(vexp(x), [0.0, 0.0, 0.0, 1.0, np.inf, np.inf, np.inf])
    sub = np.linspace(-745.0, -708.5, 10_001)
    truth = np.exp(sub.astype(np.longdouble))
    assert np.abs(vexp(sub).astype(np.longdouble) - truth).max() <= np.longdouble(2.0**-1074)


# exp_shifted: exp(d) of d = x - max(x) <= 0, what the row kernels evaluate per element, in the
# precision of the row's storage (float32 rows; 16-bit rows, given as their tag views).
STORAGE = {"float32": np.float32, "bfloat16 rows": np.uint16, "float16 rows": np.int16}


def exp_shifted(d: np.ndarray, storage) -> np.ndarray:
    from xent._kernels._exp import exp_shifted_array

    d = np.ascontiguousarray(d, dtype=np.float32)
    return exp_shifted_array(d, np.empty_like(d), np.empty(1, storage))


def nonpositive_grid() -> np.ndarray:
    x = float32_grid()
    x = -np.abs(x)
    tiny = -np.geomspace(1e-30, 1.0, 200_000).astype(np.float32)
    return np.concatenate([x, tiny, np.float32([0.0, -0.0])])


@pytest.mark.parametrize("storage", list(STORAGE))
def test_exp_shifted_accuracy_where_the_result_is_normal(storage):
    d = nonpositive_grid()
    truth = np.exp(d.astype(np.float64))
    got = exp_shifted(d, STORAGE[storage])
    normal = truth >= F32_TINY
    assert normal.sum() > 3_000_000
    err = ulp_error(got[normal], truth[normal], np.float32)
    if storage == "float32":
        # the float32 rows' exp is vexp's value, bit for bit, wherever that is a normal float
        np.testing.assert_array_equal(got[normal], vexp(d)[normal])
        assert err.max() <= 1.01
    else:
        # degree 5: measured max 2.24 ulp of float32 (mean 0.67), 2^-21 relative, far below the
        # 16-bit formats' own rounding (bfloat16 2^-9, float16 2^-12)
        assert err.max() <= 2.3, f"max error {err.max():.3f} ulp at d={d[normal][err.argmax()]!r}"
        assert err.mean() < 0.75
    assert np.all(got[d == 0] == 1.0)


@pytest.mark.parametrize("storage", list(STORAGE))
def test_exp_shifted_flushes_only_results_below_1e_38(storage):
    d = np.linspace(-110.0, -87.0, 400_001, dtype=np.float32)
    truth = np.exp(d.astype(np.float64))
    got = exp_shifted(d, STORAGE[storage]).astype(np.float64)
    flushed = got == 0
    # flushed exactly below exp(-87.5) = 1.0e-38; subnormal results above it within one step
    assert truth[flushed].max() < 1.0e-38 and np.all(d[flushed] < -87.5)
    assert np.all(got[d >= -87.5] > 0)
    assert np.abs(got - truth)[~flushed].max() <= 2.0**-149 + 3e-7 * truth[~flushed].max()
    assert np.abs(got - truth).max() < 1.1e-38


@pytest.mark.parametrize("storage", list(STORAGE))
def test_exp_shifted_special_values_in_every_lane(storage):
    d = np.array([0.0, -0.0, -np.inf, np.nan, -1e30, -3.4e38, -87.5, -1.0] * 3, np.float32)
    got = exp_shifted(d, STORAGE[storage])  # 24 values: a vector body and a scalar tail
    want = np.array([1.0, 1.0, 0.0, np.nan, 0.0, 0.0, np.exp(-87.5), np.exp(-1.0)] * 3)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(d))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 assembly check")
def test_a_loop_calling_vexp_compiles_to_packed_simd():
    """The reason vexp exists: math.exp in a loop is a scalar libm call per element."""
    import numba

    from xent._kernels._exp import vexp as vexp_scalar

    @numba.njit(fastmath={"contract"})  # not cached: inspect_asm needs a fresh compile
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = vexp_scalar(x[i])

    x = np.zeros(64, np.float32)
    loop(x, np.empty_like(x))
    _assert_packed_simd(loop.inspect_asm(loop.signatures[0]), "vexp")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 assembly check")
@pytest.mark.parametrize("storage", list(STORAGE))
def test_a_row_loop_calling_exp_shifted_compiles_to_packed_simd(storage):
    """The row kernels' exp loop reads its storage (16-bit rows converted as they load) and
    stays SIMD code, with no call for the exp."""
    import numba

    from xent._kernels._exp import exp_shifted as exp_scalar
    from xent._kernels._half import load

    @numba.njit(fastmath={"contract"})  # not cached: inspect_asm needs a fresh compile
    def loop(r, out, m):
        for i in range(r.shape[0]):
            out[i] = exp_scalar(r, load(r, i) - m)

    r = np.zeros(64, STORAGE[storage])
    loop(r, np.empty(64, np.float32), np.float32(1.0))
    _assert_packed_simd(loop.inspect_asm(loop.signatures[0]), "exp_shifted")


def _assert_packed_simd(asm: str, what: str) -> None:
    """The loop's assembly has packed float instructions on ymm/zmm registers and no call for
    the exp (skips on a CPU without AVX2/FMA, where LLVM uses SSE only)."""
    packed = [ln for ln in asm.splitlines() if "ps" in ln and ("ymm" in ln or "zmm" in ln)]
    if not packed and "xmm" in asm and "vfmadd" not in asm:
        pytest.skip("this CPU has no AVX2/FMA: LLVM uses SSE only")
    assert packed, f"the loop over {what} was not vectorised"
    calls = [ln for ln in asm.splitlines() if ln.strip().startswith("call") and "exp" in ln]
    assert not calls, f"exp is still a function call: {calls[:3]}"


# ---------------------------------------------------------------------------------------------
# tanh (soft-capping of logits in the option kernels, xent._kernels._options)
# ---------------------------------------------------------------------------------------------
def vtanh(x: np.ndarray) -> np.ndarray:
    from xent._kernels._exp import vtanh_array

    x = np.ascontiguousarray(x)
    return vtanh_array(x, np.empty_like(x))


def tanh_grid(dtype) -> np.ndarray:
    """The range where tanh is not ±1 (and beyond), dense near 0, and tiny magnitudes."""
    rng = np.random.default_rng(2)
    parts = [
        np.linspace(-25, 25, 1_000_001),
        rng.uniform(-1, 1, 500_000),
        rng.standard_normal(300_000) * 1e-3,
        np.geomspace(1e-30, 30, 100_000),
        -np.geomspace(1e-30, 30, 100_000),
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize(
    ("dtype", "wide", "bound"),
    [(np.float32, np.float64, 2.4), (np.float64, np.longdouble, 2.6)],
)
def test_tanh_is_within_a_few_ulp(dtype, wide, bound):
    if wide is np.longdouble and np.finfo(np.longdouble).nmant < 63:
        pytest.skip("needs 80-bit long double for a float64 truth")
    x = tanh_grid(dtype)
    truth = np.tanh(x.astype(wide))
    got = vtanh(x)
    spacing = np.spacing(np.abs(truth).astype(dtype)).astype(wide)
    err = np.abs(got.astype(wide) - truth) / spacing
    # Measured: float32 max 2.31 ulp (mean 0.21), float64 max 2.51 ulp (mean 0.28).
    assert err.max() <= bound, f"max error {float(err.max()):.3f} ulp at x={x[err.argmax()]!r}"
    assert err.mean() < 0.35
    np.testing.assert_array_equal(np.sign(got), np.sign(x))  # odd, and tanh(±0) = ±0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_special_values(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 40.0, -40.0, 1e30, tiny, -tiny] * 2, dtype)
    got = vtanh(x)  # 20 values: a vector body and a scalar tail
    want = np.array([0.0, -0.0, 1.0, -1.0, np.nan, 1.0, -1.0, 1.0, tiny, -tiny] * 2, dtype)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got[:2]), [False, True])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 assembly check")
def test_a_loop_calling_vtanh_compiles_to_packed_simd():
    import numba

    from xent._kernels._exp import vtanh as vtanh_scalar

    @numba.njit(fastmath={"contract"})  # not cached: inspect_asm needs a fresh compile
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = vtanh_scalar(x[i])

    x = np.zeros(64, np.float32)
    loop(x, np.empty_like(x))
    asm = loop.inspect_asm(loop.signatures[0])
    packed = [ln for ln in asm.splitlines() if "divps" in ln and ("ymm" in ln or "zmm" in ln)]
    if "ymm" not in asm and "zmm" not in asm:
        pytest.skip("this CPU has no AVX: LLVM uses SSE only")
    assert packed, "the loop over vtanh was not vectorised"
