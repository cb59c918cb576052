"""The pieces every compiled kernel shares: fast-math flags, e**x in float32, float16 bits and
a row softmax. When a kernel runs on numba's threads is `parallel.py`'s.

- `KERNEL_MATH`: the fast-math flags the kernels compile with.
- `NO_BIAS`, `as_bias`, `finish`: the bias (and residual) a linear layer's kernel adds as it
  stores its output. `read_only`: the one array type kernels take for a weight, so that a
  checkpoint's memory-mapped array and a computed one share one compiled signature.
- `exp32`: numba calls libm's scalar expf, which does not vectorize (no SVML here) and made a
  compiled GELU slower than numpy's. This one is a handful of multiply-adds and integer
  operations that vectorize, within 2 float32 ulps of exp (tested).
- `as_kernel_array`, `to_float32`, `from_float32`: float16 values inside the kernels. A float16
  KV cache halves what decode attention reads from memory, but numba has no float16 type, so
  kernels see such a cache as its uint16 bit patterns: `to_float32` widens an element as it is
  read and `from_float32` rounds a value as it is written, each a few integer instructions that
  vectorize (numpy's float32 -> float16 cast does not, and cost most of what the smaller cache
  saves). Values beyond float16's range are stored as +-65504, its largest. Where the CPU has
  F16C, `to_float32` is its one widening instruction instead. Kernels written in LLVM IR widen
  whole vectors of such bits as they load them (`emit_load_floats`).
- `softmax_`: a row softmax for attention and for the sampler's probabilities.
- `prefetch_lines`, `prefetch_lines_l2`: ask the CPU for some memory a little before a kernel
  reads it (LLVM's prefetch: the core goes on while the lines come), where the hardware's own
  prefetcher does not see the pattern coming, e.g. a KV cache's rows read through a block
  table.

numba's on-disk cache does not notice edits to this module in the kernels that use it
(`model/layers/attention.py`, `model/architectures/gpt2.py`, `model/layers/linear.py`, the W8A8
kernels through `emit_prefetch`, `f32_dot` and `attention_dot` through `emit_load_floats`): after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import logging

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from nanovllm.model.kernels.parallel import on_threads
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.platform.memory import CACHE_LINE

# Reassociation lets reductions (dot products, sums) vectorize; no-NaN/no-Inf assumptions are
# not allowed.
KERNEL_MATH = {"reassoc", "contract", "arcp", "nsz"}

# "No bias", and the one array type the kernels take for a bias (read-only, so that a
# checkpoint's memory-mapped bias and a computed one share one compiled signature).
NO_BIAS = np.zeros(0, np.float32)
NO_BIAS.flags.writeable = False


def as_bias(bias: np.ndarray | None) -> np.ndarray:
    """bias ([N] float32, contiguous) as a read-only view, or `NO_BIAS`."""
    return NO_BIAS if bias is None else read_only(bias)


def read_only(a: np.ndarray) -> np.ndarray:
    """`a`, or a read-only view of it: numba compiles a kernel once per argument type, and
    writable and read-only arrays are two types, so weights are passed read-only always."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


@njit(cache=True, nogil=True, inline="always")
def round_up(n, multiple):
    """n rounded up to a multiple of `multiple`."""
    return (n + multiple - 1) // multiple * multiple


@njit(cache=True, nogil=True, inline="always")
def finish(out, t, c, value, bias, accumulate):
    """out[t, c] = value + bias[c] (if there is a bias: `as_bias`), or added into out[t, c]
    with `accumulate`: how a linear layer's kernel stores an output, its bias and residual."""
    if bias.shape[0]:
        value = value + bias[c]
    if accumulate:
        value = out[t, c] + value
    out[t, c] = value

LOG2_E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)  # ln 2 in two parts: n * LN2_HI is exact for |n| < 2**9,
LN2_LO = np.float32(1.428606765330187e-06)  # so the reduced argument keeps float32 precision

# No reassociation here, whatever the callers allow: it could fold the two parts of ln 2 into
# one. (A called function keeps its flags when LLVM inlines it; numba's own inline="always"
# would compile it with the caller's, so exp32 does not ask for that.)
EXP_MATH = {"contract", "arcp", "nsz"}


@njit(fastmath=EXP_MATH, cache=True, nogil=True)
def exp32(t):
    """e**t as 2**n * e**r, |r| <= ln(2)/2, with e**r as its Taylor polynomial of degree 7 (whose
    error is below float32's rounding). Outside [-87, 88], where 2**n would leave float32's normal
    range: 0 below, inf above (e**88 is 1.7e38; float32 ends at 3.4e38)."""
    if t > np.float32(88.0):
        return np.float32(np.inf)
    if t < np.float32(-87.0):
        return np.float32(0.0)
    return exp32_within(t)


@njit(fastmath=EXP_MATH, cache=True, nogil=True)
def exp32_within(t):
    """`exp32` for t in [-87, 89] (the caller bounds it), with no branch, so that a loop calling
    it vectorizes (a loop through `exp32` needed a pass of its own for the exponentials). From
    t = 88.4 on, 2**n is 2**128, whose bits are infinity's: the result is inf, as exp32's."""
    n = np.floor(t * LOG2_E + np.float32(0.5))
    r = (t - n * LN2_HI) - n * LN2_LO
    p = np.float32(1 / 5040)
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):
        p = p * r + np.float32(c)
    return p * np.uint32((np.int32(n) + 127) << 23).view(np.float32)


def as_kernel_array(a: np.ndarray) -> np.ndarray:
    """What a kernel can read: a float16 array as its bit patterns, anything else as it is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


# Compiled, numba uses the overloads below; run as plain Python (NUMBA_DISABLE_JIT=1, to step
# through a kernel in a debugger) these bodies do the same on numpy scalars.
def to_float32(x):
    """An element of `as_kernel_array(a)` as float32."""
    return float16_bits_to_float32(x) if isinstance(x, np.uint16) else x


@overload(to_float32, inline="always")
def _to_float32(x):
    if x == types.uint16:
        if "f16c" in kernel_path().features:  # one instruction, which loops vectorize
            return lambda x: widen_half_(x)
        return lambda x: float16_bits_to_float32(x)
    return lambda x: x


@intrinsic
def widen_half_(typingctx, x):
    """float16 bits (a uint16) as float32 by LLVM's own conversion, exact; compiled only where
    the CPU has F16C (elsewhere LLVM would call a runtime function numba's JIT does not link)."""
    if x != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


def from_float32(x, cache):
    """float32 `x` as an element of `cache`, an `as_kernel_array(a)`."""
    return float32_to_float16_bits(x) if cache.dtype == np.uint16 else x


@overload(from_float32, inline="always")
def _from_float32(x, cache):
    if cache.dtype == types.uint16:
        if "f16c" in kernel_path().features:  # one instruction, which loops vectorize
            return lambda x, cache: narrow_half_(saturated(x))
        return lambda x, cache: float32_to_float16_bits(x)
    return lambda x, cache: x


@njit(cache=True, nogil=True, inline="always")
def saturated(x):
    """x within +-65504, float16's largest (NaN stays NaN): what `float32_to_float16_bits`
    saturates, so that rounding it to float16 gives the same bits."""
    top = np.float32(65504.0)
    return top if x > top else -top if x < -top else x


@intrinsic
def narrow_half_(typingctx, x):
    """float32 as the bits (a uint16) of the float16 LLVM's own conversion rounds it to (to
    nearest, ties to even; infinity beyond float16's range); compiled only where the CPU has
    F16C, as `widen_half_`."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def prefetch_lines(address, nbytes):
    """Asks for the cache lines of bytes address ... address + nbytes - 1 (for reading, into
    every level), and returns at once. As plain Python: nothing to do."""


@overload(prefetch_lines, inline="always")
def _prefetch_lines(address, nbytes):
    def impl(address, nbytes):
        lines_from(address & -CACHE_LINE, address + nbytes, KEEP)
    return impl


def prefetch_lines_l2(address, nbytes):
    """`prefetch_lines` into the outer levels only (L2 and out, not L1), for a stream read from
    memory some way ahead: a request into L1 holds one of the core's few L1 miss buffers until
    its line arrives, which capped how many lines could be on their way (decode attention read
    a cold KV cache at a third of the memory's speed). As plain Python: nothing to do."""


@overload(prefetch_lines_l2, inline="always")
def _prefetch_lines_l2(address, nbytes):
    def impl(address, nbytes):
        lines_from(address & -CACHE_LINE, address + nbytes, OUTER)
    return impl


@njit(cache=True, nogil=True)
def lines_from(line, end, locality):
    """Prefetches the lines from `line` (a line's address) on while they start before `end`,
    into the levels `locality` says. A while loop (a function of its own: inlined into the
    caller's IR it tripped numba's scope check): `range` with a step compiled to a division and
    its checks, which cost decode attention more than its prefetches themselves."""
    while line < end:
        if locality == KEEP:
            prefetch_(line)
        else:
            prefetch_l2_(line)
        line += CACHE_LINE


@intrinsic
def prefetch_(typingctx, address):
    """`llvm.prefetch` of the byte at `address` (an integer): read, keep in all cache levels."""
    def codegen(context, builder, signature, args):
        emit_prefetch(builder, args[0])
        return context.get_dummy_value()
    return types.none(types.intp), codegen


@intrinsic
def prefetch_l2_(typingctx, address):
    """`prefetch_` into the outer cache levels (`OUTER`)."""
    def codegen(context, builder, signature, args):
        emit_prefetch(builder, args[0], OUTER)
        return context.get_dummy_value()
    return types.none(types.intp), codegen


# `llvm.prefetch`'s locality: 3 keeps the line in every cache level (x86 `prefetcht0`); 1 brings
# it into L2 and out, not L1 (`prefetcht2`); 0 marks it non-temporal (`prefetchnta`), for data
# read once, so that it displaces little of what the caches hold.
KEEP, OUTER, NON_TEMPORAL = 3, 1, 0


def emit_prefetch(builder: ir.IRBuilder, address: ir.Value, locality: int = KEEP) -> None:
    """`prefetch_` in IR, for kernels written in LLVM IR: address an integer (a byte's)."""
    byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
        "llvm.prefetch.p0i8")
    # (read = 0, the locality, 1 = data)
    builder.call(fn, [builder.inttoptr(address, byte_ptr), ir.Constant(i32, 0),
                      ir.Constant(i32, locality), ir.Constant(i32, 1)])


HALF_TO_FLOAT = 2.0 ** 112  # what float16 bits moved into float32's fields are multiplied by


# Its own function without fast-math flags: numba calls it and LLVM inlines it with its flags
# kept, so the kernel's reassociation cannot move the 2**112 onto products (into subnormals).
@njit(cache=True, nogil=True)
def float16_bits_to_float32(x):
    """Finite float16 bits as the float32 of the same value, exactly (numpy's astype(float32)).
    Exponent 31 is not special-cased: the test for it cost all the speed the float16 cache
    gains, and `float32_to_float16_bits` never writes infinity."""
    # Sign to bit 31, exponent and mantissa to the top of float32's fields: that reads as the
    # value times 2**-112 (float32's exponent bias is 112 more than float16's), subnormals too,
    # and the multiply restores it exactly.
    x = np.uint32(x)  # (numpy, unlike numba, would shift a uint16 without widening it)
    bits = np.uint32(((x & 0x8000) << 16) | ((x & 0x7FFF) << 13))
    return bits.view(np.float32) * np.float32(HALF_TO_FLOAT)


def emit_load_floats(builder: ir.IRBuilder, address: ir.Value, lanes: int, element_bytes: int):
    """In IR: `lanes` float32s from the byte address `address` (an integer), whose elements are
    float32 (element_bytes 4) or float16 bits (2), widened exactly, finite values as
    `float16_bits_to_float32` gives them. Widening is one instruction where the CPU has F16C
    (`vcvtph2ps`); elsewhere LLVM would call a runtime function numba's JIT does not link, so
    there the bits are moved into place as float16_bits_to_float32 moves them."""
    vec = ir.VectorType(ir.FloatType(), lanes)
    if element_bytes == 4:
        return builder.load(builder.inttoptr(address, vec.as_pointer()), align=4)
    bits = builder.load(builder.inttoptr(address, ir.VectorType(ir.IntType(16), lanes)
                                         .as_pointer()), align=2)
    if "f16c" in kernel_path().features:
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), lanes)), vec)
    wide = ir.VectorType(ir.IntType(32), lanes)
    x = builder.zext(bits, wide)
    sign = builder.shl(builder.and_(x, ir.Constant(wide, 0x8000)), ir.Constant(wide, 16))
    rest = builder.shl(builder.and_(x, ir.Constant(wide, 0x7FFF)), ir.Constant(wide, 13))
    return builder.fmul(builder.bitcast(builder.or_(sign, rest), vec),
                        ir.Constant(vec, [HALF_TO_FLOAT] * lanes))


@njit(cache=True, nogil=True, inline="always")
def float32_to_float16_bits(x):
    """The float16 nearest to float32 `x` (ties to even), as bits: numpy's x.astype(float16),
    except that beyond float16's range it saturates at +-65504 instead of giving infinity, so
    that the decode kernel and numpy read a cached value alike. NaN stays NaN."""
    f = np.float32(x).view(np.uint32)
    sign = f & 0x80000000
    f = np.uint32(f ^ sign)  # |x| (numba widens integer results to 64 bits: narrow it back)
    if f >= 0x477FF000:  # 65520 or more, which rounds to infinity: the largest float16
        bits = 0x7E00 if f > 0x7F800000 else 0x7BFF
    elif f < 0x38800000:  # below float16's smallest normal, 2**-14: subnormal or zero
        # Adding 0.5 puts the float16 subnormal's bits at the bottom of the mantissa, and the
        # addition rounds them to even.
        bits = np.float32(f.view(np.float32) + np.float32(0.5)).view(np.uint32) - 0x3F000000
    else:  # re-bias the exponent (127 -> 15), round the 13 dropped bits to even, drop them
        bits = (f - 0x38000000 + 0xFFF + ((f >> 13) & 1)) >> 13
    return np.uint16((bits & 0x7FFF) | (sign >> 16))


def softmax_(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place (scores: C-contiguous float32)."""
    if not scores.flags.c_contiguous:  # reshape would copy, and the softmax would be lost
        raise ValueError("softmax_ needs a C-contiguous array")
    softmax_rows_(scores.reshape(-1, scores.shape[-1]))
    return scores


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def softmax_rows_(x):
    """Softmax of each row of x ([n, c]) in place (the sampler's probabilities), rows shared out
    among numba's threads (`on_threads`): numpy made five passes over the scores, with its exp
    the slowest."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            softmax_row_(x[i])
    else:
        for i in range(x.shape[0]):
            softmax_row_(x[i])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def softmax_row_(row):
    """Softmax of one row in place: softmax_rows_'s, causal_softmax_'s and decode attention's
    (per head)."""
    top = row_max(row)
    total = np.float32(0.0)
    for j in range(row.shape[0]):
        row[j] = exp32(row[j] - top)
        total += row[j]
    row *= np.float32(1.0) / total


@njit(cache=True, nogil=True)
def row_max(row):
    """The largest element of a float32 row, in eight chains of comparisons: one chain (numba's
    `row.max()`) waits on each comparison before the next, and without no-NaN math (not in
    KERNEL_MATH) it does not vectorize, so eight chains keep more comparisons in flight. The
    largest is the same in any order (a NaN anywhere still makes the softmax's row NaN,
    through its sum)."""
    n = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
    j = 0
    while j + 8 <= n:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        m4 = max(m4, row[j + 4])
        m5 = max(m5, row[j + 5])
        m6 = max(m6, row[j + 6])
        m7 = max(m7, row[j + 7])
        j += 8
    top = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for i in range(j, n):
        top = max(top, row[i])
    return top


def first_that_compiles(kernels: list[str], compile_one, what: str) -> str:
    """The first of `kernels` (best first; the last, "portable", is plain numba) that
    `compile_one` compiles here. Those that do not (an LLVM that refuses an instruction's
    intrinsic, an OS that refuses AMX's tiles: neither must stop a server) are passed over with
    one warning line naming `what`."""
    failed: list[str] = []
    reason = ""
    for kernel in kernels:
        try:
            compile_one(kernel)
        except Exception as exc:  # numba's or LLVM's refusal, whatever its type
            if kernel == kernels[-1]:
                raise
            failed.append(kernel)
            reason = reason or next(iter(str(exc).strip().splitlines()), type(exc).__name__)
            continue
        if failed:
            logging.getLogger("nanovllm").warning(
                "%s: the %s kernel(s) do not compile or run here (%s); running %s "
                "instead", what, ", ".join(failed), reason[:200], kernel)
        return kernel
    raise ValueError(f"no {what} kernel to compile")
