"""Decode attention's scores in vector registers, written as LLVM IR: `dot_rows`, the query-key
half of `model/layers/attention.py`'s register-tile path (the value half is
`f32_dot.broadcast_tile`).

Compiled from numba's loops, each score was a dot product of a runtime length, reloaded its
query head from memory and ended in a horizontal sum inside a loop that spilled its counters:
hundreds of instructions per cached position. `dot_rows` keeps the few query heads that share a
key/value head in registers for a whole run of cached positions, loads each key row once for all
of them, and reduces each score with a fixed tree of shuffles.

numba's on-disk cache does not notice edits to this module in the kernels that call it: after
changing it, delete `model/layers/__pycache__/attention*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.ir_build import declare, emit_accumulating_loop
from nanovllm.model.kernels.shared import emit_load_floats

F32, I32 = ir.FloatType(), ir.IntType(32)


def horizontal_sum(builder: ir.IRBuilder, v: ir.Value, lanes: int) -> ir.Value:
    """The sum of v's lanes: the upper half added onto the lower, until one lane is left."""
    while lanes > 1:
        lanes //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, lanes), list(range(lanes))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, lanes),
                                                      list(range(lanes, 2 * lanes))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(I32, 0))


@intrinsic
def dot_rows(typingctx, width, vectors, heads, k_bytes, q_ptr, k_ptr, k_stride, count, scale,
             s_ptr, s_stride):
    """s[c, j] = scale * (q[c] . k[j]) for c < heads and j < count, each row `vectors * width`
    elements: q's rows float32s contiguous from q_ptr, key row j at k_ptr + j * k_stride, its
    elements float32 (k_bytes 4) or float16 bits (2, `shared.emit_load_floats`), s[c, j] stored at
    s_ptr + c * s_stride + 4 * j (byte addresses). width, vectors, heads and k_bytes are
    compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (width, vectors, heads, k_bytes)):
        return None
    lanes, n_vecs, n_heads = width.literal_value, vectors.literal_value, heads.literal_value
    element_bytes = k_bytes.literal_value
    sig = types.none(width, vectors, heads, k_bytes, types.intp, types.intp, types.intp,
                     types.intp, types.float32, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, _, q_ptr, k_ptr, k_stride, count, scale, s_ptr, s_stride = args
        intp = q_ptr.type
        vec = ir.VectorType(F32, lanes)
        fma = declare(builder, f"llvm.fmuladd.v{lanes}f32", vec, [vec, vec, vec])

        def load(base, byte_offset, size):  # size: bytes of an element
            return emit_load_floats(builder, builder.add(base, ir.Constant(intp, byte_offset)),
                                    lanes, size)

        qs = [[load(q_ptr, 4 * lanes * (c * n_vecs + v), 4) for v in range(n_vecs)]
              for c in range(n_heads)]

        def step(j, accs):  # (no accumulators: each position's scores are stored)
            k_row = builder.add(k_ptr, builder.mul(j, k_stride))
            ks = [load(k_row, element_bytes * lanes * v, element_bytes) for v in range(n_vecs)]
            s_at = builder.add(s_ptr, builder.mul(j, ir.Constant(intp, 4)))
            for c in range(n_heads):
                acc = builder.fmul(qs[c][0], ks[0])
                for v in range(1, n_vecs):
                    acc = builder.call(fma, [qs[c][v], ks[v], acc])
                score = builder.fmul(horizontal_sum(builder, acc, lanes), scale)
                at = builder.add(s_at, builder.mul(s_stride, ir.Constant(intp, c)))
                builder.store(score, builder.inttoptr(at, F32.as_pointer()), align=4)
            return []

        emit_accumulating_loop(builder, "dot_rows", count, [], step)
        return context.get_dummy_value()

    return sig, codegen

