"""Integer dot products in vector registers, written as LLVM IR: the inner loop of the W8A8
kernels (`model/int8_gemm.py`).

numba emits no int8 x int8 dot-product instruction by itself, so `dot_tile` writes the loop in
LLVM IR, calling the instructions by their LLVM intrinsic names. It computes a tile of
`rows` x `cols` int32 dot products at once, of int8 rows of x against int8 rows of w, one vector
of `width` bytes of each per step: every x vector loaded serves `cols` outputs, every w vector
`rows` of them, and the tile's sums stay in registers until the end.

The instruction sets ("ISAs") and how each multiplies int8 by int8:

- "avx512vnni" (64-byte vectors) and "avxvnni" (32-byte: AVX-VNNI, or AVX512-VNNI with VL):
  `vpdpbusd` adds four products of unsigned x signed bytes straight into each int32 lane. It
  wants one operand unsigned, so x goes in offset by 128 (`x ^ 0x80`); the caller subtracts
  128 * sum(w) per output (`OFFSET`).
- "avx512bw" (64 bytes) and "avx2" (32 bytes): `vpmaddubsw` multiplies unsigned by signed bytes
  and adds pairs into int16 lanes, saturating. Offset x (up to 255) by w (up to 127) could
  saturate a pair, so these use the sign trick: |w| times x with w's sign, at most 2 * 127 * 127
  per pair, below 2**15; `vpmaddwd` by ones then adds the pairs into int32 lanes.

Each ISA's IR is generated only when a kernel is compiled for it: the caller picks one this CPU
has (`model/cpu.py`). `k_end` bytes of each row are covered (a multiple of `width`); the caller
adds the rest.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# ISA -> (vector bytes, tile rows, tile columns). The tiles keep accumulators and operands
# within the register file: 32 vector registers with AVX-512, 16 with AVX2 / AVX-VNNI.
TILES = {"avx512vnni": (64, 4, 4), "avxvnni": (32, 4, 2),
         "avx512bw": (64, 4, 3), "avx2": (32, 4, 2)}
# What the caller subtracts per output, times sum(w): the offset x carries into the product.
OFFSET = {"avx512vnni": 128, "avxvnni": 128, "avx512bw": 0, "avx2": 0}
ISAS = tuple(TILES)

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _function(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Type]):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


class _Multiply:
    """One ISA's step: prepare the loaded x and w vectors, then add x . w into an accumulator."""

    def __init__(self, isa: str, builder: ir.IRBuilder):
        width = TILES[isa][0]
        self.isa, self.builder = isa, builder
        self.bytes = ir.VectorType(I8, width)
        self.words = ir.VectorType(I16, width // 2)
        self.lanes = ir.VectorType(I32, width // 4)
        self.zero_bytes = ir.Constant(self.bytes, None)
        suffix = "512" if width == 64 else "256"
        if OFFSET[isa]:
            self.dot = _function(builder, f"llvm.x86.avx512.vpdpbusd.{suffix}", self.lanes,
                                 [self.lanes, self.bytes, self.bytes])
        elif width == 64:
            self.pairs = _function(builder, "llvm.x86.avx512.pmaddubs.w.512", self.words,
                                   [self.bytes, self.bytes])
            self.quads = _function(builder, "llvm.x86.avx512.pmaddw.d.512", self.lanes,
                                   [self.words, self.words])
        else:
            self.pairs = _function(builder, "llvm.x86.avx2.pmadd.ub.sw", self.words,
                                   [self.bytes, self.bytes])
            self.quads = _function(builder, "llvm.x86.avx2.pmadd.wd", self.lanes,
                                   [self.words, self.words])

    def prepare_x(self, x):
        """vpdpbusd: x + 128 as unsigned bytes (flipping the top bit adds 128 modulo 256)."""
        if OFFSET[self.isa]:
            return self.builder.xor(x, ir.Constant(self.bytes, [0x80] * self.bytes.count))
        return x

    def prepare_w(self, w):
        """The sign trick: (w, |w|, w < 0)."""
        if OFFSET[self.isa]:
            return w
        b = self.builder
        negative = b.icmp_signed("<", w, self.zero_bytes)
        return w, b.select(negative, b.neg(w), w), negative

    def add(self, acc, x, w):
        b = self.builder
        if OFFSET[self.isa]:
            return b.call(self.dot, [acc, x, w])
        _, magnitude, negative = w
        signed_x = b.select(negative, b.neg(x), x)  # x * sign(w); where w = 0, |w| is 0 anyway
        pairs = b.call(self.pairs, [magnitude, signed_x])  # unsigned |w| x signed x
        ones = ir.Constant(self.words, [1] * self.words.count)
        return b.add(acc, b.call(self.quads, [pairs, ones]))


@intrinsic
def dot_tile(typingctx, isa, rows, cols, x_ptr, x_stride, w_ptr, w_stride, k_end):
    """(rows * cols) int32 sums, row-major: sum over k < k_end of x[i, k] * w[j, k] (plus
    OFFSET[isa] * w[j, k]), where x[i] starts at x_ptr + i * x_stride, w[j] at w_ptr + j *
    w_stride (byte addresses of int8 rows). isa, rows and cols are compile-time constants."""
    if not all(isinstance(t, types.Literal) for t in (isa, rows, cols)):
        return None
    name, n_rows, n_cols = isa.literal_value, rows.literal_value, cols.literal_value
    if name not in TILES:
        raise ValueError(f"no int8 dot product for ISA {name!r}")
    width = TILES[name][0]
    sig = types.UniTuple(types.int32, n_rows * n_cols)(
        isa, rows, cols, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _, _, _, x_ptr, x_stride, w_ptr, w_stride, k_end = args
        mul = _Multiply(name, builder)
        intp = x_ptr.type
        zero = ir.Constant(mul.lanes, None)
        entry = builder.block
        loop = builder.append_basic_block("int8_dot_loop")
        done = builder.append_basic_block("int8_dot_done")
        builder.cbranch(builder.icmp_signed(">", k_end, ir.Constant(intp, 0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(intp)
        k.add_incoming(ir.Constant(intp, 0), entry)
        accs = [builder.phi(mul.lanes) for _ in range(n_rows * n_cols)]
        for acc in accs:
            acc.add_incoming(zero, entry)

        def load(base, stride, i):
            address = builder.add(builder.add(base, builder.mul(stride, ir.Constant(intp, i))), k)
            return builder.load(builder.inttoptr(address, mul.bytes.as_pointer()), align=1)

        xs = [mul.prepare_x(load(x_ptr, x_stride, i)) for i in range(n_rows)]
        ws = [mul.prepare_w(load(w_ptr, w_stride, j)) for j in range(n_cols)]
        sums = [mul.add(accs[i * n_cols + j], xs[i], ws[j])
                for i in range(n_rows) for j in range(n_cols)]
        k_next = builder.add(k, ir.Constant(intp, width))
        k.add_incoming(k_next, loop)
        for acc, s in zip(accs, sums):
            acc.add_incoming(s, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, k_end), loop, done)

        builder.position_at_end(done)
        reduce = _function(builder, f"llvm.vector.reduce.add.v{mul.lanes.count}i32", I32,
                           [mul.lanes])
        out = []
        for s in sums:
            final = builder.phi(mul.lanes)
            final.add_incoming(zero, entry)
            final.add_incoming(s, loop)
            out.append(final)
        return context.make_tuple(builder, signature.return_type,
                                  [builder.call(reduce, [v]) for v in out])

    return sig, codegen
