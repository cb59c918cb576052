"""bfloat16 dot products in vector registers, written as LLVM IR: the inner loop of the bfloat16
kernel (`model/kernels/bf16_gemm.py`) on CPUs with AVX512_BF16 (Zen 4 and later, Cooper Lake,
Sapphire Rapids).

`vdpbf16ps` takes a vector of 16 float32 sums and two vectors of 32 bfloat16 each, seen as 16
lanes of two: lane j adds both products of its pair to its sum, in float32. A product of two
bfloat16 (8-bit significands) is exact in float32, so the only roundings are of the sums; the
instruction treats subnormal inputs as zero. Per instruction that is 32 multiply-adds where a
float32 FMA does 16, from half the bytes of weights.

The weights are re-laid out at load time (`quant.pack_bfloat16`): blocks of 16 outputs, each
stored as pairs of consecutive k for all 16 outputs (64 bytes, one vector). Each step of
`bf16_panel` broadcasts one pair of x (two bfloat16, 4 bytes) of each row to every lane and
multiplies it by one pair of each block: lane j gets output j's two products. A panel of
`rows` x `blocks` keeps its sums in registers, so every weight vector loaded serves `rows` rows
and every broadcast `blocks` blocks, and no lane needs a horizontal sum. x must be bfloat16
too: the caller rounds each row once per call and pads k to a whole pair with a zero.

LLVM changed the intrinsic's signature: older versions take the bfloat16 pairs as <16 x i32>,
newer ones as <32 x bfloat>. `dot_takes_bfloat` asks the LLVM in use which, so every numba the
project allows compiles the same kernel. The IR is generated only when a kernel is compiled for
a CPU that has the instruction (`model/platform/cpu.py` `bf16_kernels`).

numba's on-disk cache does not notice edits to this module in the kernels that call it: after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from functools import cache

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.ir_build import (
    declare,
    emit_splat,
    emit_store_rows,
    emit_tile_loop,
    intrinsic_accepts,
)
from nanovllm.model.weights.quant import BLOCK, PAIR

F32, I32 = ir.FloatType(), ir.IntType(32)
DOT = "llvm.x86.avx512bf16.dpbf16ps.512"
PAIR_BYTES = BLOCK * PAIR * 2  # one pair of a block: 16 outputs x 2 bfloat16, one vector


class BFloat16Type(ir.Type):
    """LLVM's `bfloat` (llvmlite has no type for it)."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, BFloat16Type)

    def __hash__(self) -> int:
        return hash(BFloat16Type)


@cache
def dot_takes_bfloat() -> bool:
    """Whether this LLVM's `vdpbf16ps` intrinsic takes its pairs as <32 x bfloat> (newer) rather
    than <16 x i32> (older)."""
    return dot_verifies(ir.VectorType(BFloat16Type(), 2 * BLOCK))


def dot_verifies(pairs: ir.VectorType) -> bool:
    """Whether this LLVM accepts a module calling `vdpbf16ps` with pairs of type `pairs`,
    verified by LLVM itself."""
    sums = ir.VectorType(F32, BLOCK)
    return intrinsic_accepts(DOT, sums, [sums, pairs, pairs])


def pair_type() -> ir.VectorType:
    """The intrinsic's operand type in this LLVM (`dot_takes_bfloat`)."""
    if dot_takes_bfloat():
        return ir.VectorType(BFloat16Type(), 2 * BLOCK)
    return ir.VectorType(I32, BLOCK)


@intrinsic
def bf16_panel(typingctx, rows, blocks, x_ptr, x_stride, p_ptr, block_stride, pairs, acc_ptr,
               acc_stride):
    """float32 sums of `rows` rows of x against `blocks` packed blocks of 16 weight rows
    (`quant.pack_bfloat16`), over `pairs` pairs of k: acc[i, b, j] = sum over k of x[i, k] *
    w[16 b + j, k], stored as float32 [blocks, 16] at acc_ptr + i * acc_stride (a row of an
    output, or of a buffer). x is bfloat16 bits, row i starting at x_ptr + i * x_stride, a pair
    every 4 bytes; block b starts at p_ptr + b * block_stride (byte addresses). rows and blocks
    are compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (rows, blocks)):
        return None
    n_rows, n_blocks = rows.literal_value, blocks.literal_value
    sig = types.none(rows, blocks, types.intp, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, x_ptr, x_stride, p_ptr, block_stride, pairs, acc_ptr, acc_stride = args
        intp = x_ptr.type
        sums_type, lanes = ir.VectorType(F32, BLOCK), ir.VectorType(I32, BLOCK)
        operand = pair_type()
        dot = declare(builder, DOT, sums_type, [sums_type, operand, operand])

        def load_w(p, b):
            at = builder.add(p_ptr, builder.mul(block_stride, ir.Constant(intp, b)))
            at = builder.add(at, builder.mul(p, ir.Constant(intp, PAIR_BYTES)))
            return builder.bitcast(builder.load(builder.inttoptr(at, lanes.as_pointer()),
                                                align=4), operand)

        def broadcast_x(p, i):
            """The pair k = 2 p, 2 p + 1 of row i (one i32), repeated across the vector."""
            at = builder.add(x_ptr, builder.mul(x_stride, ir.Constant(intp, i)))
            at = builder.add(at, builder.mul(p, ir.Constant(intp, 4)))
            word = builder.load(builder.inttoptr(at, I32.as_pointer()), align=4)
            return builder.bitcast(emit_splat(builder, word, lanes), operand)

        def multiply_add(acc, x, w):
            return builder.call(dot, [acc, x, w])

        rows = emit_tile_loop(builder, "bf16_panel", pairs, n_rows, n_blocks,
                              ir.Constant(sums_type, None), load_w, broadcast_x, multiply_add)
        emit_store_rows(builder, rows, acc_ptr, acc_stride, 4 * BLOCK)  # (i, b): 16 float32 each
        return context.get_dummy_value()

    return sig, codegen
