"""float32 products in vector registers, written as LLVM IR: the inner loop of the linear
layers' packed kernel (`model/layers/linear.py` `matmul_packed`) and of attention's register tiles
(`model/layers/attention.py` `tile_values`), whose value rows may be a float16 cache's bits, widened
to float32 as they are loaded (`shared.emit_load_floats`).

LLVM vectorizes numba's dot-product loops along k at the width it prefers, which on AVX-512
CPUs is 256 bits, and every output then ends in a horizontal sum. `broadcast_tile` instead
holds a tile of outputs in `width`-lane vector registers of its own: each step k broadcasts one
scalar of each of a few rows to every lane and loads a few vectors, and one fused multiply-add
per pair adds s[i, k] * v[k, lanes] into accumulator (i, j). No horizontal sum, and each load
serves several multiply-adds. The linear layers broadcast x and load 16 outputs' packed weights
(`quant.pack_float32`); attention broadcasts a head's probabilities and loads the value rows.

numba's on-disk cache does not notice edits to this module in the kernels that call it: after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.ir_build import (
    declare,
    emit_splat,
    emit_store_rows,
    emit_tile_loop,
)
from nanovllm.model.kernels.shared import emit_load_floats

F32 = ir.FloatType()


@intrinsic
def broadcast_tile(typingctx, width, scalars, vectors, v_bytes, s_ptr, s_stride, v_ptr, v_step,
                   v_stride, k_count, acc_ptr, acc_stride):
    """acc[i, j] = sum over k < k_count of s[i, k] * v[k, j], for i < scalars and j < vectors *
    width, stored as float32s, row i of acc from acc_ptr + i * acc_stride. Row i of s starts at s_ptr +
    i * s_stride (its elements 4 bytes apart); at step k, vector u (v[k, u * width:(u + 1) *
    width]) starts at v_ptr + k * v_step + u * v_stride (byte addresses, aligned to an element),
    its elements float32 (v_bytes 4) or float16 bits (2, `shared.emit_load_floats`). Each
    step makes scalars x vectors fused multiply-adds for scalars + vectors loads. width,
    scalars, vectors and v_bytes are compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (width, scalars, vectors, v_bytes)):
        return None
    lanes, n_rows, n_vecs = width.literal_value, scalars.literal_value, vectors.literal_value
    element_bytes = v_bytes.literal_value
    sig = types.none(width, scalars, vectors, v_bytes, types.intp, types.intp, types.intp,
                     types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, _, s_ptr, s_stride, v_ptr, v_step, v_stride, k_count, acc_ptr, acc_stride = args
        intp = s_ptr.type
        vec = ir.VectorType(F32, lanes)
        fma = declare(builder, f"llvm.fmuladd.v{lanes}f32", vec, [vec, vec, vec])

        def load_vector(k, u):
            at = builder.add(builder.add(v_ptr, builder.mul(k, v_step)),
                             builder.mul(v_stride, ir.Constant(intp, u)))
            return emit_load_floats(builder, at, lanes, element_bytes)

        def broadcast_row(k, i):
            at = builder.add(builder.add(s_ptr, builder.mul(k, ir.Constant(intp, 4))),
                             builder.mul(s_stride, ir.Constant(intp, i)))
            return emit_splat(builder, builder.load(builder.inttoptr(at, F32.as_pointer()),
                                                    align=4), vec)

        def multiply_add(acc, x, v):
            return builder.call(fma, [x, v, acc])

        rows = emit_tile_loop(builder, "f32_tile", k_count, n_rows, n_vecs, ir.Constant(vec, None),
                              load_vector, broadcast_row, multiply_add)
        emit_store_rows(builder, rows, acc_ptr, acc_stride, 4 * lanes)
        return context.get_dummy_value()

    return sig, codegen
