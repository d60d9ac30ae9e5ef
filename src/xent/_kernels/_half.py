"""16-bit floats in the Numba kernels: bfloat16 and float16 storage, float32 arithmetic.

Numba has no float16 or bfloat16 type on the CPU, so the host wrappers view a 16-bit array as
``uint16`` (zero-copy) and pass a *kind* flag (:data:`BF16` or :data:`F16`) that the kernels
test at run time, outside the loops: one compiled kernel serves both formats. The K-dim tiles
and BCE convert each 16-bit row (or tile) into a float32 scratch row that stays in the core's
cache, run the float32 kernel on it, and convert the result back into the 16-bit output. The
row kernels (``_rows.py``) instead take *tag views* (:func:`tagged`: uint16 for bfloat16,
int16 for float16) and read and write every element through :func:`load` / :func:`put`, so
their loops convert as they load and round as they store, with no pass of their own. Either
way memory sees a 16-bit read and a 16-bit write per element and the math is the float32
kernel's.

Conversions (each loop vectorises; about 0.1 ns per element from L2, see benchmarks/bench_half.py):

* bfloat16 -> float32 is exact: the bfloat16 bits are the top half of the float32's,
  ``f = uint32(h) << 16``.
* float32 -> bfloat16, round to nearest even:
  ``h = (u + 0x7FFF + ((u >> 16) & 1)) >> 16`` on the float32 bits ``u``; a carry out of the
  mantissa rounds up the exponent, so the largest floats overflow to ±inf as IEEE rounding does.
  A NaN (``u & 0x7FFFFFFF > 0x7F800000``) instead keeps its sign and top payload bits and gets
  the quiet bit (``(u >> 16) | 0x40``): the rounding formula could carry a NaN into ±inf.
* float16 <-> float32: LLVM's ``fpext half`` / ``fptrunc`` (IEEE: exact, and round to nearest
  even with overflow to ±inf, NaN stays NaN), which compile to the F16C instructions
  ``vcvtph2ps`` / ``vcvtps2ph`` on x86 (:func:`_h2f`, :func:`_f2h`).

No fast-math flag is used here: NaN and inf keep their IEEE meaning.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

BF16 = 0  # the kind flag of bfloat16 storage
F16 = 1  # float16
F32 = 2  # (operands only) float32 storage, read as it is

_jit = numba.njit(cache=True)


@intrinsic
def _h2f(typingctx, h):
    """The float16 with bits ``h`` (uint16 or int16) as a float32 (LLVM ``fpext half``)."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _f2h(typingctx, f):
    """The bits (uint16) of float32 ``f`` rounded to float16, to nearest even (``fptrunc``).
    Stored into a float16 tag view (int16), the same 16 bits are kept (a same-width cast)."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@intrinsic
def _bf2f(typingctx, h):
    """The bfloat16 with bits ``h`` (uint16 or int16) as a float32 (exact: the top half of its
    bits)."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None
    sig = types.float32(h)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.bitcast(builder.shl(builder.zext(args[0], i32), i32(16)), ir.FloatType())

    return sig, codegen


@intrinsic
def key16(typingctx, h):
    """The order key of 16-bit float bits ``h`` (uint16 or int16; bfloat16 and float16 alike):
    ``i ^ ((i >> 15) & 0x7FFF)`` on the bits as int16, in 16-bit integer IR (Numba's own integer
    arithmetic widens to 64 bits). Keys order the non-NaN floats as the floats are ordered, and
    the key of a key is the bits again (see ``_rows._key_max``)."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None
    sig = types.int16(h)

    def codegen(context, builder, signature, args):
        i16 = ir.IntType(16)
        i = args[0]
        return builder.xor(i, builder.and_(builder.ashr(i, i16(15)), i16(0x7FFF)))

    return sig, codegen


def bits_to_f32(a, h):
    """The float32 value of 16-bit bits ``h`` in the storage format of tag view ``a``."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(bits_to_f32, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _bits_to_f32_overload(a, h):
    if a.dtype == types.uint16:
        return lambda a, h: _bf2f(h)
    if a.dtype == types.int16:
        return lambda a, h: _h2f(h)
    return None


@intrinsic
def wide(typingctx):
    """Mark the calling function for 512-bit vectors (LLVM ``"prefer-vector-width"="512"``)."""

    def codegen(context, builder, signature, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except Exception:
            pass
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _f2bf(typingctx, f):
    """The bits (uint16) of float32 ``f`` rounded to bfloat16, to nearest even (NaN: quiet NaN of
    its sign and top payload bits). In 32-bit integer IR: Numba's own integer arithmetic
    widens uint32 to 64 bits, which halves the vector width of the loop."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        hi = builder.lshr(u, i32(16))
        rne = builder.lshr(builder.add(builder.add(u, i32(0x7FFF)), builder.and_(hi, i32(1))),
                           i32(16))
        nan = builder.icmp_unsigned(">", builder.and_(u, i32(0x7FFFFFFF)), i32(0x7F800000))
        out = builder.select(nan, builder.or_(hi, i32(0x40)), rne)
        return builder.trunc(out, ir.IntType(16))

    return sig, codegen


@_jit
def to_f32(src, kind, dst):
    """dst_j = the 16-bit float with bits src_j (uint16; ``kind`` BF16 or F16) as float32."""
    n = src.shape[0]
    if kind == BF16:
        d = dst.view(np.uint32)
        for j in range(n):
            d[j] = np.uint32(src[j]) << np.uint32(16)
    else:
        for j in range(n):
            dst[j] = _h2f(src[j])


@_jit
def from_f32(src, kind, dst):
    """dst_j = the bits (uint16) of float32 src_j rounded to nearest even in ``kind``."""
    n = src.shape[0]
    if kind == BF16:
        for j in range(n):
            dst[j] = _f2bf(src[j])
    else:
        for j in range(n):
            dst[j] = _f2h(src[j])


@_jit
def operand_to_f32(s16, s32, kind, dst):
    """dst = an operand row that is 16-bit (``s16``, ``kind`` BF16/F16) or float32 (``s32``,
    ``kind`` F32) as float32; the other array is a dummy."""
    if kind == F32:
        for j in range(dst.shape[0]):
            dst[j] = s32[j]
    else:
        to_f32(s16, kind, dst)


# ---------------------------------------------------------------------------------------------
# Element access generic over storage: the loops of _rows.py read every element through
# ``load`` and write it through ``put``, so one source compiles for float32/float64 rows and
# for 16-bit rows read and rounded on the fly. A 16-bit array reaches the kernels as its *tag
# view* (:func:`tagged`): uint16 for bfloat16 bits, int16 for float16 bits (Numba has no 16-bit
# float type on the CPU), so the storage format is part of the compiled type, not a run-time
# flag inside the loop.
# ---------------------------------------------------------------------------------------------
def load(a, j):
    """a[j] in the compute dtype: the float itself, or the 16-bit float as float32 (exact)."""
    raise NotImplementedError("only callable from Numba-compiled code")


def put(a, j, v):
    """a[j] = v: stored as is, or rounded to nearest even into a 16-bit tag view."""
    raise NotImplementedError("only callable from Numba-compiled code")


def is_tagged(a):
    """Whether ``a`` is a 16-bit tag view (a constant of the compiled code: a property of the
    type)."""
    raise NotImplementedError("only callable from Numba-compiled code")


def compute(a, v):
    """v in the compute dtype of array ``a`` (float32 for 16-bit storage)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(load, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _load_overload(a, j):
    if a.dtype == types.uint16:
        return lambda a, j: _bf2f(a[j])
    if a.dtype == types.int16:
        return lambda a, j: _h2f(a[j])
    if isinstance(a.dtype, types.Float):
        return lambda a, j: a[j]
    return None


@overload(put, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _put_overload(a, j, v):
    if a.dtype == types.uint16:

        def put_bf16(a, j, v):
            a[j] = _f2bf(np.float32(v))

        return put_bf16
    if a.dtype == types.int16:

        def put_f16(a, j, v):
            a[j] = _f2h(np.float32(v))

        return put_f16
    if isinstance(a.dtype, types.Float):

        def put_float(a, j, v):
            a[j] = v

        return put_float
    return None


@overload(is_tagged, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _is_tagged_overload(a):
    tag = a.dtype in (types.uint16, types.int16)
    return lambda a: tag


@overload(compute, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _compute_overload(a, v):
    if a.dtype == types.float64:
        return lambda a, v: np.float64(v)
    if a.dtype in (types.float32, types.uint16, types.int16):
        return lambda a, v: np.float32(v)
    return None


def tagged(a: np.ndarray) -> np.ndarray:
    """The array the row kernels take for ``a`` (no copy): a 16-bit float array's tag view
    (uint16 for bfloat16, int16 for float16), any other array as it is.

    >>> tagged(np.zeros(2, np.float16)).dtype, tagged(np.zeros(2, np.float32)).dtype
    (dtype('int16'), dtype('float32'))
    """
    kind = kind_of(a.dtype)
    if kind is None:
        return a
    return a.view(np.uint16 if kind == BF16 else np.int16)


def kind_of(dtype: np.dtype) -> int | None:
    """BF16 or F16 for a 16-bit float ``dtype``, None for any other dtype.

    >>> kind_of(np.dtype(np.float16)) == F16, kind_of(np.dtype(np.float32))
    (True, None)
    """
    if dtype == np.float16:
        return F16
    if dtype.kind == "V" and dtype.itemsize == 2:
        from .._validation import bfloat16

        if dtype == bfloat16():
            return BF16
    return None


def bits(a: np.ndarray) -> np.ndarray:
    """A 16-bit float array's uint16 view (no copy)."""
    return a.view(np.uint16)


def operand(a: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """(s16, s32, kind) for a float operand broadcastable to ``shape`` (a probability or BCE
    target): its C-contiguous uint16 bits and a dummy when it is 16-bit, else a dummy and a
    float32 C-contiguous array (kind F32). Only a broadcast operand is copied, into its own
    dtype."""
    a = np.asarray(a)
    kind = kind_of(a.dtype)
    dummy16 = np.empty((1,) * len(shape), np.uint16)
    if kind is None:
        b = np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float32)
        return dummy16, b, F32
    b = np.ascontiguousarray(np.broadcast_to(a, shape))
    return bits(b), np.empty((1,) * len(shape), np.float32), kind
