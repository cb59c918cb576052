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
    emit_accumulating_loop,
    emit_splat,
    emit_store_vectors,
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

        def step(k, accs):
            v_at = builder.add(v_ptr, builder.mul(k, v_step))
            vs = [emit_load_floats(builder, builder.add(v_at, builder.mul(v_stride, ir.Constant(
                intp, u))), lanes, element_bytes) for u in range(n_vecs)]
            s_at = builder.add(s_ptr, builder.mul(k, ir.Constant(intp, 4)))
            sums = []
            for i in range(n_rows):
                at = builder.add(s_at, builder.mul(s_stride, ir.Constant(intp, i)))
                one = builder.load(builder.inttoptr(at, F32.as_pointer()), align=4)
                splat = emit_splat(builder, one, vec)
                for u in range(n_vecs):
                    sums.append(builder.call(fma, [splat, vs[u], accs[i * n_vecs + u]]))
            return sums

        zeros = [ir.Constant(vec, None)] * (n_rows * n_vecs)
        finals = emit_accumulating_loop(builder, "f32_tile", k_count, zeros, step)
        for i in range(n_rows):
            row_at = builder.add(acc_ptr, builder.mul(acc_stride, ir.Constant(intp, i)))
            emit_store_vectors(builder, finals[i * n_vecs:(i + 1) * n_vecs], row_at, 4 * lanes)
        return context.get_dummy_value()

    return sig, codegen
