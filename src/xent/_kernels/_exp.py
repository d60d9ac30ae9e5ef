"""A vectorisable ``exp`` and the small LLVM intrinsics the kernels need.

Numba no longer links Intel's SVML, so ``math.exp`` inside a loop compiles to one scalar libm call
per element and the loop cannot use SIMD. :func:`vexp` is written from operations LLVM can
vectorise (multiply-add, round, integer shift, bit cast), so a loop that calls it compiles to
AVX2/AVX-512 code.

Method (Cody and Waite range reduction, then a polynomial)::

    k = round(x / ln 2)                       (the "add 1.5·2^p and subtract" rounding trick)
    r = x - k·ln2_hi - k·ln2_lo               (|r| <= ln(2)/2; ln2_hi has trailing zero bits,
                                               so k·ln2_hi is exact)
    exp(r) ≈ 1 + r + r²·P(r)                   (float32: Cephes' degree-5 P, i.e. degree 7 overall;
                                               float64: the Taylor series to r^13)
    exp(x) = exp(r) · 2^k1 · 2^k2,  k1 = k >> 1, k2 = k - k1
                                              (2^k1 and 2^k2 are built from their exponent bits;
                                               splitting k keeps both factors normal, so results
                                               that are subnormal or overflow round as IEEE says)

Accuracy (measured against float64/float128 ``numpy.exp``, see ``tests/test_vexp.py``):

* float32: at most 1.01 ulp for x in [-87.3, 88.7] (results that are normal floats; measured
  maximum 1.008 ulp, mean 0.27 ulp over 4.8 million points); subnormal results (x in
  [-103.9, -87.3]) within one subnormal step; exp(x) = 0 for x < -104, +inf for x > 88.73.
* float64: at most 1 ulp for x in [-708.3, 709.78] (measured maximum 0.97 ulp, mean 0.27 ulp);
  0 below -745.2, +inf above 709.79.
* exp(nan) = nan, exp(-inf) = 0, exp(+inf) = +inf, exp(0) = 1 exactly.

The input is clamped to [-104, 89] (float32) or [-746, 710] (float64) first, which is what makes
infinities come out right; NaN passes the clamp (every comparison with NaN is false) and then
propagates through the polynomial. Nothing here is compiled with ``nnan``/``ninf`` fast-math
flags; only ``contract`` (fused multiply-add), which makes the rounding better, not worse.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

_CONTRACT = {"contract"}


# ---------------------------------------------------------------------------------------------
# Intrinsics: bit casts between same-width integers and floats.
# ---------------------------------------------------------------------------------------------
@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32 (no conversion).

    Numba widens int32 arithmetic to int64, so any integer type is accepted and truncated.
    """
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def _i64_as_f64(typingctx, x):
    """Reinterpret the bits of a 64-bit integer as a float64 (no conversion)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(x), codegen


def _by_float_type(name, f32, f64, doc):
    """(fn, fn_array): ``fn(x)``, callable from Numba code only, runs ``f32`` on a float32
    scalar and ``f64`` on a float64 one; ``fn_array(x, out)`` is ``out[i] = fn(x[i])`` over 1-D
    arrays (for the accuracy tests)."""

    def fn(x):
        raise NotImplementedError(f"{name} is only callable from Numba-compiled code")

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc + "; dispatches on the type."

    @overload(fn, jit_options={"fastmath": _CONTRACT})
    def _typed(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None

    @numba.njit(fastmath=_CONTRACT, cache=True)
    def fn_array(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])
        return out

    fn_array.__doc__ = f"Elementwise ``out[i] = {name}(x[i])`` over 1-D arrays."
    return fn, fn_array


# ---------------------------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------------------------
@numba.njit(fastmath=_CONTRACT, cache=True)
def _split32(x):
    """(t, k, r) with x = k·ln 2 + r, |r| <= ln(2)/2, k integral (a float32), and t = k + 1.5·2^23,
    whose low mantissa bits hold k (see :func:`_pow2_of`)."""
    # k = round(x·log2(e)): adding 1.5·2^23 pushes the fraction bits out, subtracting it back
    # leaves the rounded value. Valid for |x·log2 e| < 2^22; the callers' clamps keep it below 151.
    t = x * np.float32(1.44269504088896341) + np.float32(12582912.0)
    kf = t - np.float32(12582912.0)
    r = x - kf * np.float32(0.693359375)  # ln2_hi = 0.693359375: 9 significant bits
    r = r - kf * np.float32(-2.12194440e-4)  # ln2_lo = ln 2 - ln2_hi
    return t, kf, r


@numba.njit(fastmath=_CONTRACT, cache=True)
def _em1_7(r):
    """exp(r) - 1 = r + r²·P(r) on |r| <= ln(2)/2 (Cephes expf's degree-5 P, degree 7 in all)."""
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return p * (r * r) + r


@numba.njit(fastmath=_CONTRACT, cache=True)
def _reduce32(x):
    """(k, exp(r) - 1) with x = k·ln 2 + r, |r| <= ln(2)/2, k integral (a float32)."""
    _, kf, r = _split32(x)
    return kf, _em1_7(r)


@numba.njit(fastmath=_CONTRACT, cache=True)
def _reduce64(x):
    """(k, exp(r) - 1) with x = k·ln 2 + r, |r| <= 0.347, k integral (a float64)."""
    t = x * 1.4426950408889634074 + 6755399441055744.0  # 1.5·2^52
    kf = t - 6755399441055744.0
    r = x - kf * 6.93145751953125e-1  # ln2_hi: 19 significant bits
    r = r - kf * 1.42860682030941723212e-6  # ln2_lo
    # Taylor series of exp(r) - 1 - r, |r| <= 0.347: the r^14/14! remainder is 4e-18 relative.
    p = 1.0 / 6227020800.0  # 1/13!
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return kf, p * (r * r) + r


@numba.njit(fastmath=_CONTRACT, cache=True)
def exp32(x):
    """exp of a float32, vectorisable; <= 1.01 ulp (see the module docstring)."""
    x = np.float32(x)
    if x < np.float32(-104.0):
        x = np.float32(-104.0)
    if x > np.float32(89.0):
        x = np.float32(89.0)
    kf, em1 = _reduce32(x)
    p = em1 + np.float32(1.0)  # exp(r)
    k = np.int32(kf)
    k1 = k >> np.int32(1)
    k2 = k - k1
    s1 = _i32_as_f32((k1 + np.int32(127)) << np.int32(23))
    s2 = _i32_as_f32((k2 + np.int32(127)) << np.int32(23))
    return (p * s1) * s2


@numba.njit(fastmath=_CONTRACT, cache=True)
def exp64(x):
    """exp of a float64, vectorisable; <= 1 ulp (see the module docstring)."""
    x = np.float64(x)
    if x < -746.0:
        x = -746.0
    if x > 710.0:
        x = 710.0
    kf, em1 = _reduce64(x)
    p = em1 + 1.0  # exp(r)
    k = np.int64(kf)
    k1 = k >> np.int64(1)
    k2 = k - k1
    s1 = _i64_as_f64((k1 + np.int64(1023)) << np.int64(52))
    s2 = _i64_as_f64((k2 + np.int64(1023)) << np.int64(52))
    return (p * s1) * s2


# ---------------------------------------------------------------------------------------------
# exp of a row's shifted logits, d = x - max(x) <= 0: what the row kernels evaluate per element
# ---------------------------------------------------------------------------------------------
# Two things are known there that a general exp cannot assume, and each saves instructions in the
# kernels' most expensive loop (about three quarters of a cross-entropy row's arithmetic):
#
# * d <= 0 (or NaN): no overflow, so no clamp at all (the select below -87.5 covers -inf), and a
#   single scale 2^k (k >= -126, a normal float) built from the rounding sum's bits, instead of
#   exp32's two factors from a float-to-integer conversion. Results below exp(-87.5) = 1.0e-38
#   are flushed to 0 (exp32 gives them as subnormals): an absolute difference below 1.1e-38 in a
#   probability, as under flush-to-zero. Results down to 2^-126·0.7 are still exact to one
#   subnormal step; above 2^-126 the value is exp32's, bit for bit (same reduction, polynomial).
# * Where the row is stored in 16 bits (bfloat16: 8 significant bits, float16: 11) its gradient
#   or softmax is rounded to 16 bits and its loss is summed from these terms: a degree-5
#   polynomial (minimax for the relative error on |r| <= ln(2)/2, 1.05e-7) instead of degree 7,
#   at most 2.3 ulp of float32 (measured 2.24, mean 0.67; tests/test_vexp.py), i.e. 2^-21
#   relative, against the 2^-8 (bfloat16) and 2^-11 (float16) of their own rounding.
_NONPOS_MIN = np.float32(-87.5)  # exp(-87.5) = 1.0e-38; below it: 0


@intrinsic
def _pow2_of(typingctx, t):
    """2^k as a float32 from t = k + 1.5·2^23 (:func:`_split32`): the bits (bits(t) + 127) << 23,
    in 32-bit integer IR (t's bits are 0x4B400000 + k, whose high part shifts out); no float to
    integer conversion. Exact for -126 <= k <= 127; other t give some other float."""
    if t != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.add(builder.bitcast(args[0], i32), i32(127))
        return builder.bitcast(builder.shl(bits, i32(23)), ir.FloatType())

    return types.float32(t), codegen


@numba.njit(fastmath=_CONTRACT, cache=True)
def _em1_5(r):
    """exp(r) - 1 = r + r²·P(r) on |r| <= ln(2)/2 with a degree-3 P (minimax for the relative
    error of exp, 1.05e-7; degree 5 in all)."""
    p = np.float32(8.31251e-3)
    p = p * r + np.float32(4.189009e-2)
    p = p * r + np.float32(1.6667115e-1)
    p = p * r + np.float32(4.9999232e-1)
    return p * (r * r) + r


def exp_shifted(a, d):
    """exp(d) for d = x - max(x) <= 0 (or NaN) of a row stored in array ``a``, inside Numba code:
    for float32 rows exp32's value (degree-7 polynomial), for 16-bit storage (tag views: uint16,
    int16) the degree-5 one (<= 2.3 ulp of float32); results below 1.0e-38 flushed to 0 in both.
    float64 rows: :func:`exp64`."""
    raise NotImplementedError("exp_shifted is only callable from Numba-compiled code")


@overload(exp_shifted, jit_options={"fastmath": _CONTRACT})
def _exp_shifted_overload(a, d):
    if a.dtype == types.float64:
        return lambda a, d: exp64(np.float64(d))
    if a.dtype in (types.uint16, types.int16):
        em1 = _em1_5
    elif a.dtype == types.float32:
        em1 = _em1_7
    else:
        return None

    # No clamp is needed: below _NONPOS_MIN (-inf included) the select returns 0 whatever the
    # arithmetic made of d, and above it k >= -126, so 2^k is a normal float; NaN propagates.
    def exp_nonpos(a, d):
        t, _, r = _split32(np.float32(d))
        e = (em1(r) + np.float32(1.0)) * _pow2_of(t)
        return np.float32(0.0) if d < _NONPOS_MIN else e

    return exp_nonpos


@numba.njit(fastmath=_CONTRACT, cache=True)
def exp_shifted_array(x, out, tag):
    """Elementwise ``out[i] = exp_shifted(tag, x[i])`` (``tag``: an array of the storage dtype;
    used by the accuracy tests)."""
    for i in range(x.shape[0]):
        out[i] = exp_shifted(tag, x[i])
    return out


vexp, vexp_array = _by_float_type(
    "vexp", exp32, exp64, "exp(x) for a float32 or float64 scalar inside Numba code")


def _llvm_binary(name, doc):
    """An intrinsic ``f(a, b)`` of two floats of one type compiled to LLVM's ``llvm.<name>``
    (which vectorises, where NumPy's function would be a libm call per element)."""

    @intrinsic
    def f(typingctx, a, b):
        if a != b or not isinstance(a, types.Float):
            return None

        def codegen(context, builder, signature, args):
            lt = args[0].type
            fnty = ir.FunctionType(lt, [lt, lt])
            fn = builder.module.declare_intrinsic("llvm." + name, [lt], fnty)
            return builder.call(fn, args)

        return a(a, b), codegen

    f.__doc__ = doc
    return f


fcopysign = _llvm_binary("copysign", "``copysign(a, b)``: |a| with the sign bit of b.")


# ---------------------------------------------------------------------------------------------
# expm1 and tanh (for logit soft-capping, z <- cap·tanh(z/cap))
# ---------------------------------------------------------------------------------------------
# expm1(x) = 2^k·(exp(r) - 1) + (2^k - 1), with k and r from exp's range reduction and
# exp(r) - 1 = r + r²·P(r) from the same polynomial P, never formed as exp(r) - 1: no
# cancellation near 0 (for |x| < ln(2)/2, k = 0 and expm1(x) = r + r²·P(r) with r = x exactly).
# Only needed here for x >= 0 (tanh of |y|), so 2^k >= 1 and the two terms have the same sign
# except for k = 1 with r < 0, where the sum is still >= exp(-ln2/2)·2 - 1 = 0.41 (no real loss).
@numba.njit(fastmath=_CONTRACT, cache=True)
def expm1_32(x):
    """exp(x) - 1 of a float32 in [0, 20] (the range tanh32 needs), vectorisable."""
    kf, em1 = _reduce32(x)  # exp(r) - 1
    s = _i32_as_f32((np.int32(kf) + np.int32(127)) << np.int32(23))  # 2^k, k in [0, 29]
    return s * em1 + (s - np.float32(1.0))


@numba.njit(fastmath=_CONTRACT, cache=True)
def expm1_64(x):
    """exp(x) - 1 of a float64 in [0, 40] (the range tanh64 needs), vectorisable."""
    kf, em1 = _reduce64(x)  # exp(r) - 1
    s = _i64_as_f64((np.int64(kf) + np.int64(1023)) << np.int64(52))  # 2^k, k in [0, 58]
    return s * em1 + (s - 1.0)


# tanh(y) = sign(y)·u/(u + 2), u = expm1(2|y|): no cancellation anywhere (u >= 0). |y| is
# clamped where tanh rounds to 1 (float32: 1 - tanh(10) = 4e-9 < 2^-25; float64: 1 - tanh(20)
# = 8e-18 < 2^-54), which also maps ±inf to ±1; NaN fails both comparisons and propagates.
# Accuracy (tests/test_vexp.py, against float64 / longdouble numpy.tanh, 3.2 million points over
# [-25, 25] with dense coverage of |y| < 1 down to 1e-30): float32 at most 2.31 ulp measured (mean
# 0.21), float64 at most 2.51 ulp (mean 0.28); the three roundings of u/(u + 2) dominate, near 0 as
# well. tanh(±0) = ±0, tanh(±inf) = ±1, tanh(nan) = nan, subnormals exact.
@numba.njit(fastmath=_CONTRACT, error_model="numpy", cache=True)  # no ZeroDivisionError branch
def tanh32(y):
    """tanh of a float32, vectorisable (see the note above)."""
    a = abs(np.float32(y))
    if a > np.float32(10.0):
        a = np.float32(10.0)
    u = expm1_32(a + a)
    return fcopysign(u / (u + np.float32(2.0)), np.float32(y))


@numba.njit(fastmath=_CONTRACT, error_model="numpy", cache=True)  # no ZeroDivisionError branch
def tanh64(y):
    """tanh of a float64, vectorisable (see the note above)."""
    a = abs(np.float64(y))
    if a > 20.0:
        a = 20.0
    u = expm1_64(a + a)
    return fcopysign(u / (u + 2.0), np.float64(y))


vtanh, vtanh_array = _by_float_type(
    "vtanh", tanh32, tanh64, "tanh(x) for a float32 or float64 scalar inside Numba code")


fmaximum = _llvm_binary(
    "maximum", "IEEE ``maximum(a, b)``: the larger, NaN if either is NaN. A loop reducing with it "
    "vectorises without fast-math flags, and a NaN anywhere propagates.")
