"""Decode attention's scores in vector registers, written as LLVM IR: `dot_rows`, the query-key
half of `model/layers/attention.py`'s register-tile path (the value half is
`f32_dot.broadcast_tile`).

Compiled from numba's loops, each score was a dot product of a runtime length, reloaded its
query head from memory and ended in a horizontal sum inside a loop that spilled its counters:
hundreds of instructions per cached position. `dot_rows` keeps the few query heads that share a
key/value head in registers for a whole run of cached positions, loads each key row once for all
of them, and reduces each score with a fixed tree of shuffles. `dot_rows_transposed` takes one
head against as many positions as a vector has lanes, and reduces their partial sums together:
each level of the tree halves the vectors, so a score costs about one addition and two shuffles
instead of a whole tree of its own.

numba's on-disk cache does not notice edits to this module in the kernels that call it: after
changing it, delete `model/layers/__pycache__/attention*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.ir_build import declare, emit_accumulating_loop, emit_splat
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


def transposed_sum(builder: ir.IRBuilder, vs: list[ir.Value], lanes: int) -> ir.Value:
    """`lanes` vectors -> one whose lane j is the sum of vs[j]'s lanes. Each level pairs the
    vectors: in every run of 2h lanes, the new vector's first h lanes add x's two halves of the
    run and its last h add y's, so that each level halves the vectors and the partial sums' width;
    the last vector holds one sum a position, put in order by a final shuffle."""
    sums = [[j] * lanes for j in range(len(vs))]  # the position each lane of each vector sums
    half = lanes // 2
    while half:
        low, high = halves_mask(lanes, half, 0), halves_mask(lanes, half, half)
        vs = [builder.fadd(builder.shuffle_vector(x, y, low), builder.shuffle_vector(x, y, high))
              for x, y in zip(vs[::2], vs[1::2])]
        sums = [[p for base in range(0, lanes, 2 * half)
                 for p in [a[base]] * half + [b[base]] * half]
                for a, b in zip(sums[::2], sums[1::2])]
        half //= 2
    order = [sums[0].index(j) for j in range(lanes)]
    return builder.shuffle_vector(vs[0], vs[0], ir.Constant(ir.VectorType(I32, lanes), order))


def halves_mask(lanes: int, half: int, at: int) -> ir.Constant:
    """The shuffle of two vectors x, y taking, in each run of 2 * half lanes, half lanes of x
    from `at` on, then half lanes of y from `at` on."""
    picks = [i for base in range(0, lanes, 2 * half)
             for i in [*range(base + at, base + at + half),
                       *range(lanes + base + at, lanes + base + at + half)]]
    return ir.Constant(ir.VectorType(I32, lanes), picks)


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


@intrinsic
def dot_rows_transposed(typingctx, width, vectors, k_bytes, q_ptr, k_ptr, k_stride, groups, scale,
                        s_ptr):
    """s[j] = scale * (q . k[j]) for j < groups * width, as `dot_rows` for one head, `width`
    positions at a time: their `width` partial sums reduced together (`transposed_sum`) and
    stored as one vector, s[j] at s_ptr + 4 * j. width, vectors and k_bytes are compile-time
    constants; width vectors of sums and q's vectors must fit the registers (AVX-512's)."""
    if not all(isinstance(t, types.Literal) for t in (width, vectors, k_bytes)):
        return None
    lanes, n_vecs, element_bytes = width.literal_value, vectors.literal_value, k_bytes.literal_value
    sig = types.none(width, vectors, k_bytes, types.intp, types.intp, types.intp, types.intp,
                     types.float32, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, q_ptr, k_ptr, k_stride, groups, scale, s_ptr = args
        intp = q_ptr.type
        vec = ir.VectorType(F32, lanes)
        fma = declare(builder, f"llvm.fmuladd.v{lanes}f32", vec, [vec, vec, vec])
        qs = [emit_load_floats(builder, builder.add(q_ptr, ir.Constant(intp, 4 * lanes * v)),
                               lanes, 4) for v in range(n_vecs)]
        scales = emit_splat(builder, scale, vec)

        def step(g, accs):  # (no accumulators: each group's scores are stored)
            first = builder.add(k_ptr, builder.mul(g, builder.mul(k_stride,
                                                                  ir.Constant(intp, lanes))))
            sums = []
            for j in range(lanes):
                row = builder.add(first, builder.mul(k_stride, ir.Constant(intp, j)))
                ks = [emit_load_floats(builder, builder.add(row, ir.Constant(intp, offset)),
                                       lanes, element_bytes)
                      for offset in range(0, n_vecs * lanes * element_bytes, lanes * element_bytes)]
                acc = builder.fmul(qs[0], ks[0])
                for v in range(1, n_vecs):
                    acc = builder.call(fma, [qs[v], ks[v], acc])
                sums.append(acc)
            scores = builder.fmul(transposed_sum(builder, sums, lanes), scales)
            at = builder.add(s_ptr, builder.mul(g, ir.Constant(intp, 4 * lanes)))
            builder.store(scores, builder.inttoptr(at, vec.as_pointer()), align=4)
            return []

        emit_accumulating_loop(builder, "dot_rows_transposed", groups, [], step)
        return context.get_dummy_value()

    return sig, codegen
