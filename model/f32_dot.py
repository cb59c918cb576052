"""float32 products in vector registers, written as LLVM IR: the inner loops of the linear
layers' packed kernel (`model/linear.py` `matmul_packed`: `packed_tile`) and of attention's
register tiles (`model/attention.py`: `broadcast_panel`).

LLVM vectorizes numba's dot-product loops along k at the width it prefers, which on AVX-512
CPUs is 256 bits, and every output then ends in a horizontal sum. `broadcast_panel` instead
holds a tile of outputs in `width`-lane vector registers of its own: x is transposed first
(`[K, rows]`, a few rows, so cheap), each step loads `vectors` vectors of x's column k (`width`
rows each) and broadcasts one weight of each of `cols` weight rows to every lane, and one fused
multiply-add per pair adds w[c, k] * x[rows, k] into lane r of accumulator (c, v). The weights
are read in their `[out, in]` rows, one scalar per row and step, so they need no repacking;
each broadcast serves `vectors` vectors of rows, and each x vector `cols` columns.

numba's on-disk cache does not notice edits to this module in the kernels that call it: after
changing it, delete `model/__pycache__/linear*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

F32, I32 = ir.FloatType(), ir.IntType(32)


@intrinsic
def broadcast_panel(typingctx, width, cols, vectors, x_ptr, x_stride, w_ptr, w_stride, k_count,
                    acc_ptr):
    """acc[c, r] = sum over k < k_count of w[c, k] * xt[k, r], for c < cols and r < vectors *
    width, stored at acc_ptr as float32 [cols, vectors * width]. xt[k] starts at x_ptr + k *
    x_stride, weight row c at w_ptr + c * w_stride (byte addresses; xt's rows aligned to 4
    bytes). width, cols and vectors are compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (width, cols, vectors)):
        return None
    lanes, n_cols, n_vecs = width.literal_value, cols.literal_value, vectors.literal_value
    sig = types.none(width, cols, vectors, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, x_ptr, x_stride, w_ptr, w_stride, k_count, acc_ptr = args
        intp = x_ptr.type
        vec = ir.VectorType(F32, lanes)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{lanes}f32")
        zero = ir.Constant(vec, None)
        entry = builder.block
        loop = builder.append_basic_block("f32_panel_loop")
        done = builder.append_basic_block("f32_panel_done")
        builder.cbranch(builder.icmp_signed(">", k_count, ir.Constant(intp, 0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(intp)
        k.add_incoming(ir.Constant(intp, 0), entry)
        accs = [builder.phi(vec) for _ in range(n_cols * n_vecs)]
        for acc in accs:
            acc.add_incoming(zero, entry)
        x_row = builder.add(x_ptr, builder.mul(k, x_stride))
        xs = [builder.load(builder.inttoptr(builder.add(x_row, ir.Constant(intp, 4 * lanes * v)),
                                            vec.as_pointer()), align=4)
              for v in range(n_vecs)]
        w_at = builder.add(w_ptr, builder.mul(k, ir.Constant(intp, 4)))
        sums = []
        for c in range(n_cols):
            at = builder.add(w_at, builder.mul(w_stride, ir.Constant(intp, c)))
            one = builder.load(builder.inttoptr(at, F32.as_pointer()), align=4)
            splat = builder.insert_element(ir.Constant(vec, None), one, ir.Constant(I32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(I32, lanes),
                                                                     [0] * lanes))
            for v in range(n_vecs):
                sums.append(builder.call(fma, [splat, xs[v], accs[c * n_vecs + v]]))
        k_next = builder.add(k, ir.Constant(intp, 1))
        k.add_incoming(k_next, loop)
        for acc, s in zip(accs, sums):
            acc.add_incoming(s, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

        builder.position_at_end(done)
        finals = []
        for s in sums:
            finals.append(builder.phi(vec))
            finals[-1].add_incoming(zero, entry)
            finals[-1].add_incoming(s, loop)
        for n, final in enumerate(finals):  # (c, v) in order: `vectors * width` per column
            at = builder.add(acc_ptr, ir.Constant(intp, 4 * lanes * n))
            builder.store(final, builder.inttoptr(at, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def packed_tile(typingctx, width, rows, blocks, x_ptr, x_stride, w_ptr, w_stride, k_count,
                acc_ptr):
    """acc[r, b * width + j] = sum over k < k_count of x[r, k] * wp[b, k, j], for r < rows,
    b < blocks, j < width, stored at acc_ptr as float32 [rows, blocks * width]. Row r of x starts
    at x_ptr + r * x_stride, packed block b (`quant.pack_float32`: k-major, `width` outputs per
    k) at w_ptr + b * w_stride (byte addresses; 4-byte aligned). Each step loads one vector of
    `width` outputs' weights per block and broadcasts one x per row: rows x blocks fused
    multiply-adds for rows + blocks loads. width, rows and blocks are compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (width, rows, blocks)):
        return None
    lanes, n_rows, n_blocks = width.literal_value, rows.literal_value, blocks.literal_value
    sig = types.none(width, rows, blocks, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, x_ptr, x_stride, w_ptr, w_stride, k_count, acc_ptr = args
        intp = x_ptr.type
        vec = ir.VectorType(F32, lanes)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{lanes}f32")
        zero = ir.Constant(vec, None)
        entry = builder.block
        loop = builder.append_basic_block("f32_packed_loop")
        done = builder.append_basic_block("f32_packed_done")
        builder.cbranch(builder.icmp_signed(">", k_count, ir.Constant(intp, 0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(intp)
        k.add_incoming(ir.Constant(intp, 0), entry)
        accs = [builder.phi(vec) for _ in range(n_rows * n_blocks)]
        for acc in accs:
            acc.add_incoming(zero, entry)
        w_at = builder.add(w_ptr, builder.mul(k, ir.Constant(intp, 4 * lanes)))
        ws = [builder.load(builder.inttoptr(builder.add(w_at, builder.mul(
            w_stride, ir.Constant(intp, b))), vec.as_pointer()), align=4)
              for b in range(n_blocks)]
        x_at = builder.add(x_ptr, builder.mul(k, ir.Constant(intp, 4)))
        sums = []
        for r in range(n_rows):
            at = builder.add(x_at, builder.mul(x_stride, ir.Constant(intp, r)))
            one = builder.load(builder.inttoptr(at, F32.as_pointer()), align=4)
            splat = builder.insert_element(ir.Constant(vec, None), one, ir.Constant(I32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(I32, lanes),
                                                                     [0] * lanes))
            for b in range(n_blocks):
                sums.append(builder.call(fma, [splat, ws[b], accs[r * n_blocks + b]]))
        k_next = builder.add(k, ir.Constant(intp, 1))
        k.add_incoming(k_next, loop)
        for acc, s in zip(accs, sums):
            acc.add_incoming(s, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

        builder.position_at_end(done)
        finals = []
        for s in sums:
            finals.append(builder.phi(vec))
            finals[-1].add_incoming(zero, entry)
            finals[-1].add_incoming(s, loop)
        for n, final in enumerate(finals):  # (r, b) in order: `blocks * width` per row
            at = builder.add(acc_ptr, ir.Constant(intp, 4 * lanes * n))
            builder.store(final, builder.inttoptr(at, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen
