"""Integer dot products in vector registers, written as LLVM IR: the inner loop of the W8A8
kernels (`model/kernels/int8_gemm.py`).

numba emits no int8 x int8 dot-product instruction by itself, so `dot_panel` writes the loop in
LLVM IR, calling the instructions by their LLVM intrinsic names. The weights are re-laid out at
load time (`quant.pack_int8`): blocks of 16 output columns, each stored as groups of 4 k for
all 16 columns (64 bytes). That is the shape the instructions below consume: 4 bytes of x
broadcast to every lane times one group gives, in lane j, column j's four products. A panel of
`rows` x `blocks` keeps its accumulators in registers: every weight vector loaded serves `rows`
rows of x, every x broadcast `blocks` blocks, and no lane ever needs a horizontal sum.

The instruction sets ("ISAs") and how each multiplies int8 by int8:

- "avx512vnni" (64-byte vectors) and "avxvnni" (32-byte: AVX-VNNI, or AVX512-VNNI with VL):
  `vpdpbusd` adds four products of unsigned x signed bytes straight into each int32 lane. It
  wants one operand unsigned, so x goes in offset by 128 (`x ^ 0x80`); the caller subtracts
  128 * sum(w) per output (`OFFSET`).
- "avx512bw" (64 bytes) and "avx2" (32 bytes): `vpmaddubsw` multiplies unsigned by signed bytes
  and adds pairs into int16 lanes, saturating. Offset x (up to 255) by w (up to 127) could
  saturate a pair, so these use the sign trick, at most 2 * 127 * 127 per pair, below 2**15;
  `vpmaddwd` by ones then adds the pairs into int32 lanes. "avx2" multiplies |x| by w with x's
  sign (`vpsignb`, as llama.cpp's q8_0 does): |x| is made once per row and step, and each
  weight vector costs one instruction more than its products. "avx512bw", which has no
  `vpsignb`, multiplies |w| by x with w's sign.

Each ISA's IR is generated only when a kernel is compiled for it: the caller picks one this CPU
has (`model/platform/cpu.py`). LLVM changed `vpdpbusd`'s signature: older versions take the
multiplied bytes as vectors of int32 lanes, newer ones as vectors of bytes. `vnni_takes_bytes` asks
the LLVM in use which, so every numba the project allows compiles the same kernel.
"""

from __future__ import annotations

from functools import cache

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.ir_build import (
    declare,
    emit_splat,
    emit_store_vectors,
    emit_tile_loop,
    intrinsic_accepts,
)
from nanovllm.model.kernels.shared import NON_TEMPORAL, emit_prefetch
from nanovllm.model.weights.quant import BLOCK_BYTES

# ISA -> (vector bytes, rows, blocks of a panel, blocks of a one-row panel). The panels keep
# accumulators and weights within the register file (32 vector registers with AVX-512, 16
# with AVX2 / AVX-VNNI), with enough independent sums to hide the instructions' latency; a
# single row (batch-1 decode) takes more blocks at once, for as many sums and memory streams.
# AVX2's 2 x 2 panel holds 8 sums and 4 weight vectors: each x broadcast and its |x| serve
# four products, each weight vector two rows, so fewer instructions go to anything but products.
# Its one-row panel uses each weight vector once, so 4 blocks' 8 sums still fit.
# numba caches the kernels by int8_gemm.py's source: after changing a tile, touch that file.
TILES = {"avx512vnni": (64, 4, 4, 8), "avxvnni": (32, 4, 1, 4),
         "avx512bw": (64, 4, 2, 4), "avx2": (32, 2, 2, 4)}
# Bytes ahead of each weight stream a panel asks for, non-temporally (`shared.emit_prefetch`).
# A step reads each weight from memory once. On the AVX2 CPU we measured (Zen 1) the hardware's
# prefetcher alone left a single row's panels waiting on memory between their multiplies, and
# weights fetched to stay in every cache level pushed the rest of the step (activations, the KV
# cache, the interpreter's own data) out to memory; non-temporal lines pass through without
# that. 0 on the AVX-512 paths: on the Xeon we measured, the one-row chain already streamed at
# the memory's speed, and non-temporal prefetches slowed it.
WEIGHT_PREFETCH = {"avx512vnni": 0, "avxvnni": 0, "avx512bw": 0, "avx2": 512}
# What the caller subtracts per output, times sum(w): the offset x carries into the product.
OFFSET = {"avx512vnni": 128, "avxvnni": 128, "avx512bw": 0, "avx2": 0}
ISAS = tuple(TILES)

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


@cache
def vnni_takes_bytes() -> bool:
    """Whether this LLVM's `vpdpbusd` intrinsics take the multiplied bytes as byte vectors
    (<64 x i8>) rather than as int32 lanes (<16 x i32>, older LLVMs): a module calling it the
    first way, verified by LLVM itself."""
    lanes, data = ir.VectorType(I32, 16), ir.VectorType(I8, 64)
    return intrinsic_accepts("llvm.x86.avx512.vpdpbusd.512", lanes, [lanes, data, data])


@cache
def vnni_takes_words() -> bool:
    """The same of `vpdpwssd` (int16 products): int16 vectors (<32 x i16>, newer LLVMs) rather
    than int32 lanes."""
    lanes, words = ir.VectorType(I32, 16), ir.VectorType(I16, 32)
    return intrinsic_accepts("llvm.x86.avx512.vpdpwssd.512", lanes, [lanes, words, words])


class Multiply:
    """One ISA's step: prepare the loaded x and w vectors, then add x . w into an accumulator."""

    def __init__(self, isa: str, builder: ir.IRBuilder):
        width = TILES[isa][0]
        self.isa, self.builder = isa, builder
        self.bytes = ir.VectorType(I8, width)
        self.words = ir.VectorType(I16, width // 2)
        self.lanes = ir.VectorType(I32, width // 4)
        self.zero_bytes = ir.Constant(self.bytes, None)
        # Where `vpsignb` exists (AVX2; AVX-512 has none), x's sign goes on w and |x| is made
        # once per row; avx512bw puts w's sign on x (the VNNI kernels need no sign trick).
        self.sign_on_w = isa == "avx2"
        suffix = "512" if width == 64 else "256"
        if OFFSET[isa]:
            self.dot_operand = self.bytes if vnni_takes_bytes() else self.lanes
            self.dot = declare(builder, f"llvm.x86.avx512.vpdpbusd.{suffix}", self.lanes,
                               [self.lanes, self.dot_operand, self.dot_operand])
        elif width == 64:
            self.pairs = declare(builder, "llvm.x86.avx512.pmaddubs.w.512", self.words,
                                 [self.bytes, self.bytes])
            self.quads = declare(builder, "llvm.x86.avx512.pmaddw.d.512", self.lanes,
                                 [self.words, self.words])
        else:
            self.pairs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", self.words,
                                 [self.bytes, self.bytes])
            self.quads = declare(builder, "llvm.x86.avx2.pmadd.wd", self.lanes,
                                 [self.words, self.words])
            self.sign = declare(builder, "llvm.x86.avx2.psign.b", self.bytes,
                                [self.bytes, self.bytes])

    def prepare_word(self, word):
        """vpdpbusd: 4 bytes of x (an i32) + 128 each, as unsigned bytes (flipping the top bit
        adds 128 modulo 256)."""
        if OFFSET[self.isa]:
            return self.builder.xor(word, ir.Constant(I32, 0x80808080))
        return word

    def prepare_x(self, x):
        """x broadcast to every lane (bytes); with `sign_on_w`: (x, |x|)."""
        if self.sign_on_w:
            b = self.builder
            return x, b.select(b.icmp_signed("<", x, self.zero_bytes), b.neg(x), x)
        return x

    def prepare_w(self, w):
        """The sign trick without `sign_on_w` (avx512bw): (|w|, w < 0)."""
        if OFFSET[self.isa] or self.sign_on_w:
            return w
        b = self.builder
        negative = b.icmp_signed("<", w, self.zero_bytes)
        return b.select(negative, b.neg(w), w), negative

    def add(self, acc, x, w):
        b = self.builder
        if OFFSET[self.isa]:  # (a bitcast to int32 lanes is a no-op for the instruction)
            return b.call(self.dot, [acc, b.bitcast(x, self.dot_operand),
                                     b.bitcast(w, self.dot_operand)])
        if self.sign_on_w:
            x, magnitude = x
            signed = b.call(self.sign, [w, x])  # w * sign(x), 0 where x = 0 (|x| is 0 there)
        else:
            magnitude, negative = w
            signed = b.select(negative, b.neg(x), x)  # x * sign(w); where w = 0, |w| is 0
        pairs = b.call(self.pairs, [magnitude, signed])  # unsigned magnitude x signed bytes
        ones = ir.Constant(self.words, [1] * self.words.count)
        return b.add(acc, b.call(self.quads, [pairs, ones]))


@intrinsic
def dot_panel(typingctx, isa, rows, blocks, x_ptr, x_stride, p_ptr, block_stride, groups,
              acc_ptr, scaled, wsums_ptr, ws_ptr, xs_ptr, out_ptr, out_stride, bias_ptr,
              has_bias, accumulate):
    """int32 sums of `rows` rows of x against `blocks` packed blocks of 16 weight rows
    (`quant.pack_int8`), over `groups` groups of 4 k: acc[i, b, j] = sum over k of x[i, k] *
    w[16 b + j, k] (plus OFFSET[isa] * w[16 b + j, k]), stored at acc_ptr as int32
    [rows, blocks, 16]. x[i] starts at x_ptr + i * x_stride, block b at p_ptr + b *
    block_stride (byte addresses). isa, rows and blocks are compile-time constants.

    If `scaled`, the sums are instead finished here, in vector registers, and stored as float32
    out[i, c] = float32(acc[i, c] - OFFSET[isa] * wsums[c]) * xs[i] * ws[c] for the 16 `blocks`
    columns c (out[i] at out_ptr + i * out_stride; wsums int32, ws and xs float32, from the
    panel's first column and row), what the caller would do with acc: a scalar loop over
    them cost more than the dot products (the caller keeps it for the edge of the matrix).
    Then, if `has_bias`, plus bias[c] (float32 at bias_ptr, from the panel's first column);
    if `accumulate`, added into out[i, c] rather than stored over it (a residual stream):
    the bias add and the residual add cost a pass over the output each when done apart.

    Each step broadcasts 4 bytes of each x row to every lane and multiplies them by one group of
    a block: 16 output columns x 4 k (64 bytes, one or two vectors). Every lane adds up its
    own column, so no horizontal sum is needed, and each block is read as one sequential
    stream."""
    if not all(isinstance(t, types.Literal) for t in (isa, rows, blocks)):
        return None
    name, n_rows, n_blocks = isa.literal_value, rows.literal_value, blocks.literal_value
    if name not in TILES:
        raise ValueError(f"no int8 dot product for ISA {name!r}")
    width = TILES[name][0]
    halves = BLOCK_BYTES // width  # vectors per block and group
    sig = types.none(isa, rows, blocks, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.intp, types.boolean, types.intp, types.intp, types.intp,
                     types.intp, types.intp, types.intp, types.boolean, types.boolean)

    def codegen(context, builder, signature, args):
        (_, _, _, x_ptr, x_stride, p_ptr, block_stride, groups, acc_ptr, scaled, wsums_ptr,
         ws_ptr, xs_ptr, out_ptr, out_stride, bias_ptr, has_bias, accumulate) = args
        mul = Multiply(name, builder)
        intp = x_ptr.type
        quads = ir.VectorType(I32, width // 4)
        ahead = WEIGHT_PREFETCH[name]

        def address(base, offset):
            return builder.add(base, ir.Constant(intp, offset))

        def broadcast_x(g, i):
            """4 bytes of x row i (k = 4 g .. 4 g + 3), repeated across the vector."""
            at = builder.add(address(x_ptr, 0), builder.mul(x_stride, ir.Constant(intp, i)))
            at = builder.add(at, builder.mul(g, ir.Constant(intp, 4)))
            word = mul.prepare_word(builder.load(builder.inttoptr(at, I32.as_pointer()),
                                                 align=1))
            return mul.prepare_x(builder.bitcast(emit_splat(builder, word, quads), mul.bytes))

        def load_w(g, b, h):
            at = builder.add(p_ptr, builder.mul(block_stride, ir.Constant(intp, b)))
            at = builder.add(at, builder.mul(g, ir.Constant(intp, BLOCK_BYTES)))
            if ahead and h == 0:  # (a step reads one 64-byte line of each block)
                emit_prefetch(builder, address(at, ahead), NON_TEMPORAL)
            at = address(at, h * width)
            return mul.prepare_w(builder.load(builder.inttoptr(at, mul.bytes.as_pointer()),
                                              align=1))

        def load_vector(g, u):  # block b's half h
            return load_w(g, *divmod(u, halves))

        rows = emit_tile_loop(builder, "int8_panel", groups, n_rows, n_blocks * halves,
                              ir.Constant(mul.lanes, None), load_vector, broadcast_x, mul.add)
        finals = [vector for row in rows for vector in row]
        with builder.if_else(context.cast(builder, scaled, types.boolean, types.boolean)) \
                as (finish, keep):
            with finish:
                _scale(builder, finals, mul.lanes, n_rows, n_blocks * halves, OFFSET[name],
                       wsums_ptr, ws_ptr, xs_ptr, out_ptr, out_stride, bias_ptr, has_bias,
                       accumulate)
            with keep:  # (i, b, h): 16 int32 per row and block
                emit_store_vectors(builder, finals, acc_ptr, width)
        return context.get_dummy_value()

    return sig, codegen


def _scale(builder, finals, lanes, n_rows, n_vectors, offset, wsums_ptr, ws_ptr, xs_ptr,
           out_ptr, out_stride, bias_ptr, has_bias, accumulate):
    """`dot_panel`'s epilogue: finals (vectors of int32 sums, row by row) less offset * wsums,
    converted to float32 and scaled by the row's xs, then by the column's ws (in that order,
    as the scalar loop does), plus the bias, added into or stored to out. One copy of the
    stores per (has_bias, accumulate), so that each adds exactly what the flags say."""
    floats = ir.VectorType(ir.FloatType(), lanes.count)
    step = lanes.count * 4  # bytes of one vector of int32 or float32

    def at(base, offset, vector=floats):
        return builder.inttoptr(builder.add(base, ir.Constant(base.type, offset)),
                                vector.as_pointer())

    def load(base, n, vector):
        return builder.load(at(base, n * step, vector), align=4)

    ws = [load(ws_ptr, n, floats) for n in range(n_vectors)]
    shares = [builder.mul(load(wsums_ptr, n, lanes), ir.Constant(lanes, [offset] * lanes.count))
              for n in range(n_vectors)] if offset else None
    values = []  # [row][vector]: float32 s * xs * ws
    rows = []
    for i in range(n_rows):
        x_scale = builder.load(at(xs_ptr, 4 * i, ir.FloatType()), align=4)
        x_scales = emit_splat(builder, x_scale, floats)
        rows.append(builder.add(out_ptr, builder.mul(out_stride, ir.Constant(out_stride.type, i))))
        row = []
        for n in range(n_vectors):
            total = finals[i * n_vectors + n]
            if offset:
                total = builder.sub(total, shares[n])
            row.append(builder.fmul(builder.fmul(builder.sitofp(total, floats), x_scales), ws[n]))
        values.append(row)

    def store(with_bias, add_into):
        biases = [load(bias_ptr, n, floats) for n in range(n_vectors)] if with_bias else None
        for i, row in enumerate(values):
            for n, value in enumerate(row):
                if with_bias:
                    value = builder.fadd(value, biases[n])
                if add_into:  # out + (value + bias): the order of `out += (x @ w.T + b)`
                    value = builder.fadd(load(rows[i], n, floats), value)
                builder.store(value, at(rows[i], n * step), align=4)

    with builder.if_else(has_bias) as (biased, plain):
        for with_bias, branch in ((True, biased), (False, plain)):
            with branch:
                with builder.if_else(accumulate) as (into, over):
                    with into:
                        store(with_bias, True)
                    with over:
                        store(with_bias, False)
