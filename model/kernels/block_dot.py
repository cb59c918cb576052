"""Dot products of int8 activations with block-quantized weights in vector registers, written as
LLVM IR: the inner loop of the block kernels (`model/kernels/block_gemm.py`).

The weights are panels of 16 outputs (`model/weights/block_quant.py`): per super-block a header of
scales, then unsigned codes in groups of 4 inputs x 16 outputs (64 bytes; 4-bit codes two
groups to a byte, 6-bit ones so too with a line of their top 2 bits after each sub-block's).
Activations come quantized per super-block (`block_gemm.BlockRows`: int8 codes, a float32
scale, and the int32 sum of each sub-block's codes). One step multiplies 4
activation bytes, broadcast to every lane, by one group: lane j adds output j's 4 products.

Per sub-block the integer sums are finished as the format says (`Layout.kind`), with the
activation sums standing in for the offsets, so that no lane ever subtracts per weight:

    sym:  sum d (u - off) x  = d (sum u x - off sum x)
    asym: sum (d u + m) x    = d sum u x + m sum x
    kmin: sum over sub-blocks j of (d sc_j sum u x - dmin mn_j sum x), the sc_j and mn_j
          products in int32, d and dmin once per super-block
    ksym: d sum over j of sc_j (sum u x - 32 sum x)

and times the activations' scale, into float32 accumulators that stay in registers for the
whole row of weights: a panel of `rows` x `blocks` reads each weight vector once for all its
rows and each activation once for all its blocks.

Instruction sets: "avx512vnni" (64-byte vectors, and 32-byte ones for one row of a K-quant:
see `tile`) and "avxvnni" (32-byte) add unsigned x signed bytes with `vpdpbusd`, the codes
being the unsigned side. "avx2" multiplies with `vpmaddubsw` into int16 pairs and `vpmaddwd`
by ones into int32; a pair can reach 2 x 255 x 127 only with Q8_0's offset codes, so for Q8_0
it flips them back to signed (u ^ 0x80 = q) and multiplies |q| by x with q's sign
(`vpsignb`), at most 2 x 128 x 127, and drops the offset.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nanovllm.model.kernels.int8_dot import vnni_takes_bytes, vnni_takes_words
from nanovllm.model.kernels.ir_build import declare, emit_accumulating_loop, emit_splat
from nanovllm.model.kernels.shared import CACHE_LINE, NON_TEMPORAL, OUTER, emit_prefetch
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.weights.block_quant import (
    GROUP,
    LAYOUTS,
    LINE,
    PANEL,
    Layout,
    float16_fields,
    header_bytes,
    panel_bytes,
)

# ISA -> (vector bytes, rows, blocks) of a panel of the 32-weight types. On AVX2 (16 registers)
# 4 panels' float and integer sums alone fill the registers and the loop spills to the stack;
# 2 ran faster from cache and as fast from memory (AMD Zen 3).
TILES = {"avx512vnni": (64, 4, 2), "avxvnni": (32, 2, 2), "avx2": (32, 2, 2)}
# ISA -> (rows, blocks) for K-quants, which keep two more accumulators a block and output for
# their sub-blocks' scales: on AVX-512 one block against 8 rows, whose codes are unpacked once
# for twice the rows of 4 (measured faster at 16 to 512 rows).
K_TILES = {"avx512vnni": (8, 1), "avxvnni": (2, 1), "avx2": (2, 1)}
# One row (a decode step's product) reads one panel at a time, and a K-quant whose codes are
# packed below a byte in 32-byte vectors, asking for the line ONE_ROW_LEAD bytes past each line
# it reads (non-temporally on AMD's CPUs, into L2 on Intel's: `cpu.KernelPath.read_ahead`): a
# core computing does not otherwise keep enough lines on their way to read at the memory's
# speed. Not a multiple of 4 KB: lines 4 KB apart share an L1 set. (2 threads, on each ISA:
# faster than 2 to 8 panels side by side or no lead; on AMD Zen 5 leads of 2 to 4 KB read
# slower, 6 KB as fast; on Intel Emerald Rapids 3 KB slower, 7 to 15 KB as fast.)
PACKED_K_WIDTH = 32
ONE_ROW_LEAD = 5 * 1024
LEAD_LOCALITY = {"non-temporally": NON_TEMPORAL, "into L2": OUTER}  # by `read_ahead`
ISAS = tuple(TILES)

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
F32 = ir.FloatType()
FUSE = ("contract",)  # a product added into an accumulator may become one fused multiply-add


def tile(isa: str, type_name: str) -> tuple[int, int, int, int]:
    """(vector bytes, rows, blocks) of a panel of `type_name` on `isa`, and the vector bytes of
    its one-row panel."""
    layout = LAYOUTS[type_name]
    k_quant = layout.kind in ("kmin", "ksym")
    width = TILES[isa][0]
    rows, blocks = K_TILES[isa] if k_quant else TILES[isa][1:]
    packed_k = k_quant and layout.bits != 8
    return width, rows, blocks, min(width, PACKED_K_WIDTH) if packed_k else width


def signed_codes(isa: str, layout: Layout) -> bool:
    """Whether `isa` multiplies this layout's codes as signed bytes (Q8_0 on avx2: see the
    module docstring), so that its offset is already taken off."""
    return isa == "avx2" and layout.offset == 128


class Multiply:
    """One ISA's step: acc + (4 bytes of codes) . (4 bytes of x) in each int32 lane."""

    def __init__(self, isa: str, layout: Layout, builder: ir.IRBuilder, width: int):
        self.builder, self.vnni = builder, isa != "avx2"
        self.signed = signed_codes(isa, layout)
        self.bytes = ir.VectorType(I8, width)
        self.words = ir.VectorType(I16, width // 2)
        self.lanes = ir.VectorType(I32, width // 4)
        suffix = "512" if width == 64 else "256"
        if self.vnni:
            self.operand = self.bytes if vnni_takes_bytes() else self.lanes
            self.dot = declare(builder, f"llvm.x86.avx512.vpdpbusd.{suffix}", self.lanes,
                               [self.lanes, self.operand, self.operand])
            self.word_operand = self.words if vnni_takes_words() else self.lanes
            self.word_dot = declare(builder, f"llvm.x86.avx512.vpdpwssd.{suffix}", self.lanes,
                                    [self.lanes, self.word_operand, self.word_operand])
        else:
            self.pairs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", self.words,
                                 [self.bytes, self.bytes])
            self.quads = declare(builder, "llvm.x86.avx2.pmadd.wd", self.lanes,
                                 [self.words, self.words])
            self.sign = declare(builder, "llvm.x86.avx2.psign.b", self.bytes,
                                [self.bytes, self.bytes])

    def prepare_w(self, u):
        """Codes as `add` takes them: where `signed`, (|q|, q) for q = u ^ 0x80 (|-128| is 128
        as an unsigned byte)."""
        if not self.signed:
            return u
        b = self.builder
        q = b.xor(u, ir.Constant(self.bytes, [0x80] * self.bytes.count))
        return b.select(b.icmp_signed("<", q, ir.Constant(self.bytes, None)), b.neg(q), q), q

    def add(self, acc, x, w):
        b = self.builder
        if self.vnni:  # (unsigned codes first)
            return b.call(self.dot, [acc, b.bitcast(w, self.operand),
                                     b.bitcast(x, self.operand)])
        if self.signed:  # |q| times x with q's sign, which x (within +-127) always takes
            magnitude, q = w
            pairs = b.call(self.pairs, [magnitude, b.call(self.sign, [x, q])])
        else:
            pairs = b.call(self.pairs, [w, x])
        ones = ir.Constant(self.words, [1] * self.words.count)
        return b.add(acc, b.call(self.quads, [pairs, ones]))

    def add_small(self, acc, a, c):
        """acc + a * c in each int32 lane, for a within [0, 2^15) and c within int16: one
        `vpdpwssd` (`vpmaddwd` and an add on avx2), which takes each lane as two int16 halves
        and adds their products, a's upper half being 0 (`vpmulld` is two micro-ops on the port
        the byte products need)."""
        b = self.builder
        if self.vnni:
            return b.call(self.word_dot, [acc, b.bitcast(a, self.word_operand),
                                          b.bitcast(c, self.word_operand)])
        return b.add(acc, b.call(self.quads, [b.bitcast(a, self.words),
                                              b.bitcast(c, self.words)]))


@intrinsic
def block_panel(typingctx, isa, type_name, width, rows, blocks, lead, x_ptr, x_stride, dx_ptr,
                dx_stride, xs_ptr, xs_stride, p_ptr, panel_stride, supers, out_ptr, out_stride,
                ahead_ptr, ahead_lines):
    """float32 out[i, 16 b + j] = the dot product of activation row i with output 16 b + j of
    `blocks` panels, over `supers` super-blocks, in vectors of `width` bytes: row i's int8
    codes at x_ptr + i * x_stride, its float32 scales at dx_ptr + i * dx_stride (one per
    super-block), its int32 sub-block sums at xs_ptr + i * xs_stride; panel b at p_ptr + b *
    panel_stride; out[i] at out_ptr + i * out_stride (byte addresses and strides); at each
    super-block s it also asks for ahead_lines cache lines from ahead_ptr + 64 s ahead_lines on
    (into L2: the panels the rows take next, while these are in cache); with `lead` > 0, for
    each line of the panels it reads, the line `lead` bytes past it (a stream's, one row's:
    `ONE_ROW_LEAD`). isa, type_name, width, rows, blocks and lead are compile-time constants."""
    constants = (isa, type_name, width, rows, blocks, lead)
    if not all(isinstance(t, types.Literal) for t in constants):
        return None
    name, kind_name = isa.literal_value, type_name.literal_value
    n_rows, n_blocks = rows.literal_value, blocks.literal_value
    layout = LAYOUTS[kind_name]
    sig = types.none(*constants, *([types.intp] * 13))

    def codegen(context, builder, signature, args):
        (_, _, _, _, _, _, x_ptr, x_stride, dx_ptr, dx_stride, xs_ptr, xs_stride, p_ptr,
         panel_stride, supers, out_ptr, out_stride, ahead_ptr, ahead_lines) = args
        emit = PanelEmitter(builder, name, layout, width.literal_value, n_rows, n_blocks,
                            lead.literal_value, x_ptr.type)
        row_x = [emit.offset(x_ptr, x_stride, i) for i in range(n_rows)]
        row_dx = [emit.offset(dx_ptr, dx_stride, i) for i in range(n_rows)]
        row_xs = [emit.offset(xs_ptr, xs_stride, i) for i in range(n_rows)]
        panels = [emit.offset(p_ptr, panel_stride, b) for b in range(n_blocks)]

        def step(s, accs):
            emit.ahead(ahead_ptr, ahead_lines, s)
            return emit.super_block(s, accs, row_x, row_dx, row_xs, panels)

        zeros = [ir.Constant(emit.floats, None)] * (n_rows * n_blocks * emit.halves)
        finals = emit_accumulating_loop(builder, "block_panel", supers, zeros, step)
        for i in range(n_rows):
            at = emit.offset(out_ptr, out_stride, i)
            for n in range(n_blocks * emit.halves):
                emit.store(finals[i * n_blocks * emit.halves + n], at, n * emit.width)
        return context.get_dummy_value()

    return sig, codegen


class PanelEmitter:
    """The IR of one super-block step of `block_panel`, for one ISA, layout and tile."""

    def __init__(self, builder, isa, layout, width, n_rows, n_blocks, lead, intp):
        self.b, self.layout, self.intp = builder, layout, intp
        self.n_rows, self.n_blocks, self.lead = n_rows, n_blocks, lead
        self.mul = Multiply(isa, layout, builder, width)
        self.width = width                     # bytes of a vector
        self.halves = LINE // self.width       # vectors per group of codes
        self.lanes = self.width // 4           # outputs per vector
        self.floats = ir.VectorType(F32, self.lanes)
        self.offset_off = 0 if signed_codes(isa, layout) else layout.offset
        self.subs = layout.span // layout.sub
        self.sub_bytes = layout.sub * PANEL * layout.bits // 8  # a sub-block's codes in a panel
        # (compiled for this CPU, as numba's cache keys every kernel by the CPU's name)
        self.lead_into = LEAD_LOCALITY[kernel_path().read_ahead]

    # -- addresses and loads
    def offset(self, base, stride, n):
        return self.b.add(base, self.b.mul(stride, ir.Constant(self.intp, n)))

    def at(self, base, nbytes):
        return self.b.add(base, ir.Constant(self.intp, nbytes))

    def load(self, address, vector, align=1):
        return self.b.load(self.b.inttoptr(address, vector.as_pointer()), align=align)

    def store(self, value, base, nbytes):
        self.b.store(value, self.b.inttoptr(self.at(base, nbytes), value.type.as_pointer()),
                     align=4)

    def splat(self, scalar, vector):
        return emit_splat(self.b, scalar, vector)

    def halves_vector(self, header, field, h):
        """Float16 field `field` (0: d, 1: m or dmin) of this vector's outputs, as float32."""
        half = self.load(self.at(header, 2 * (field * PANEL + h * self.lanes)),
                         ir.VectorType(ir.HalfType(), self.lanes), align=2)
        return self.b.fpext(half, self.floats)

    def small_vector(self, header, index, h, signed):
        """Small scale `index` (an IR integer: sub-block j's scale, or subs + j's min) of this
        vector's outputs, after the float16 fields, as int32 lanes."""
        at = self.scaled(header, index, PANEL,
                         2 * PANEL * float16_fields(self.layout) + h * self.lanes)
        raw = self.load(at, ir.VectorType(I8, self.lanes))
        return (self.b.sext if signed else self.b.zext)(raw, self.mul.lanes)

    def scaled(self, base, n, stride, nbytes=0):
        """base + n * stride + nbytes, n an IR integer."""
        return self.at(self.b.add(base, self.b.mul(n, ir.Constant(self.intp, stride))), nbytes)

    def scalar(self, base, nbytes, kind):
        return self.b.load(self.b.inttoptr(self.at(base, nbytes), kind.as_pointer()), align=4)

    def ahead(self, base, lines, s):
        """Asks for `lines` cache lines from base + s * lines lines on, into L2 (none where
        lines is 0)."""
        start = self.scaled(base, self.b.mul(s, lines), CACHE_LINE)

        def line(n, accs):
            emit_prefetch(self.b, self.scaled(start, n, CACHE_LINE), OUTER)
            return accs
        emit_accumulating_loop(self.b, "ahead", lines, [], line)

    def ask_lead(self, start, nbytes):
        """Asks for the lines `lead` bytes past those of bytes start ... start + nbytes - 1
        (none where lead is 0)."""
        if self.lead:
            for n in range(-(-nbytes // CACHE_LINE)):
                emit_prefetch(self.b, self.at(start, self.lead + n * CACHE_LINE), self.lead_into)

    # -- the step
    def codes(self, panel, sub, h):
        """The code vectors of sub-block `sub` (an IR integer) of a panel's super-block (at
        `panel`), for vector h of each group, in input order, as `Multiply.add` takes them."""
        layout, b = self.layout, self.b
        groups = layout.sub // GROUP
        start = self.code_start(panel, sub)
        if layout.bits == 8:
            return [self.mul.prepare_w(self.load(self.at(start, n * LINE + h * self.width),
                                                 self.mul.bytes)) for n in range(groups)]
        lines = [self.load(self.at(start, n * LINE + h * self.width), self.mul.bytes)
                 for n in range(groups // 2)]
        codes = ([b.and_(v, self.bytes_of(0x0F)) for v in lines]
                 + [b.and_(b.lshr(v, self.bytes_of(4)), self.bytes_of(0x0F)) for v in lines])
        if layout.bits == 4:
            return codes
        # 6 bits: group n's top 2 bits are bits 2n, 2n + 1 of the line after the 4-bit ones,
        # moved to bits 4 and 5
        top = self.load(self.at(start, groups // 2 * LINE + h * self.width), self.mul.bytes)
        moved = [b.shl(top, self.bytes_of(4 - 2 * n)) if n < 2 else
                 b.lshr(top, self.bytes_of(2 * n - 4)) if n > 2 else top for n in range(groups)]
        return [b.or_(c, b.and_(m, self.bytes_of(0x30))) for c, m in zip(codes, moved)]

    def code_start(self, panel, sub):
        """Where sub-block `sub`'s codes start in a panel's super-block (at `panel`)."""
        return self.scaled(panel, sub, self.sub_bytes, header_bytes(self.layout))

    def bytes_of(self, value):
        """A byte vector with `value` in every lane."""
        return ir.Constant(self.mul.bytes, [value] * self.width)

    def broadcast_x(self, row_x, s, sub, n):
        """4 bytes of an activation row (group n of sub-block `sub` of super-block s) in every
        lane."""
        layout = self.layout
        base = self.scaled(self.scaled(row_x, s, layout.span), sub, layout.sub)
        word = self.scalar(base, GROUP * n, I32)
        return self.b.bitcast(self.splat(word, self.mul.lanes), self.mul.bytes)

    def super_block(self, s, accs, row_x, row_dx, row_xs, panels):
        """accs (float32, [row][block][half]) after super-block s."""
        layout = self.layout
        headers = [self.scaled(p, s, panel_bytes(layout)) for p in panels]
        for header in headers:
            self.ask_lead(header, header_bytes(layout))
        dx = [self.splat(self.scalar(self.scaled(r, s, 4), 0, F32), self.floats)
              for r in row_dx]
        tiles = [(i, blk, h) for i in range(self.n_rows) for blk in range(self.n_blocks)
                 for h in range(self.halves)]

        def x_sums(sub):
            return [self.scalar(self.scaled(self.scaled(r, s, 4 * self.subs), sub, 4), 0, I32)
                    for r in row_xs]

        if layout.kind not in ("kmin", "ksym"):  # one sub-block
            zero = ir.Constant(self.intp, 0)
            sums, totals = self.integer_sums(headers, row_x, s, zero), x_sums(zero)
            return [self.finish_32(accs[n], sums[n], headers[blk], h, dx[i], totals[i])
                    for n, (i, blk, h) in enumerate(tiles)]
        per = 2 if layout.kind == "kmin" else 1  # int32 parts carried per tile

        def sub_step(sub, parts):
            sums, totals = self.integer_sums(headers, row_x, s, sub), x_sums(sub)
            out = []
            for n, (i, blk, h) in enumerate(tiles):
                out += self.k_sub(parts[per * n:per * (n + 1)], sums[n], headers[blk], sub, h,
                                  totals[i])
            return out

        zeros = [ir.Constant(self.mul.lanes, None)] * (per * len(tiles))
        parts = emit_accumulating_loop(self.b, "sub_blocks", ir.Constant(self.intp, self.subs),
                                       zeros, sub_step)
        return [self.finish_k(accs[n], parts[per * n:per * (n + 1)], headers[blk], h, dx[i])
                for n, (i, blk, h) in enumerate(tiles)]

    def integer_sums(self, headers, row_x, s, sub):
        """int32 sums of codes x activations over one sub-block, [row][block][half]."""
        codes = [[self.codes(p, sub, h) for h in range(self.halves)] for p in headers]
        for p in headers:
            self.ask_lead(self.code_start(p, sub), self.sub_bytes)
        sums = [ir.Constant(self.mul.lanes, None)] * (self.n_rows * self.n_blocks * self.halves)
        for n in range(self.layout.sub // GROUP):
            for i in range(self.n_rows):
                x = self.broadcast_x(row_x[i], s, sub, n)
                for blk in range(self.n_blocks):
                    for h in range(self.halves):
                        at = (i * self.n_blocks + blk) * self.halves + h
                        sums[at] = self.mul.add(sums[at], x, codes[blk][h][n])
        return sums

    def finish_32(self, acc, sums, header, h, dx, x_sum):
        """The 32-weight types: acc + dx (d (sums - off x_sum)) or + dx (d sums) + m dx x_sum."""
        b = self.b
        d = self.halves_vector(header, 0, h)
        if self.layout.kind == "sym":
            if self.offset_off:
                shift = b.mul(x_sum, ir.Constant(I32, self.offset_off))
                sums = b.sub(sums, self.splat(shift, self.mul.lanes))
            return b.fadd(acc, b.fmul(b.sitofp(sums, self.floats), b.fmul(d, dx)), flags=FUSE)
        m = self.halves_vector(header, 1, h)
        x_total = b.fmul(dx, self.splat(b.sitofp(x_sum, F32), self.floats))
        acc = b.fadd(acc, b.fmul(b.sitofp(sums, self.floats), b.fmul(d, dx)), flags=FUSE)
        return b.fadd(acc, b.fmul(m, x_total), flags=FUSE)

    def k_sub(self, parts, sums, header, sub, h, x_sum):
        """A K-quant's int32 parts after sub-block `sub`: [sum of sc_j sums_j, sum of mn_j
        x_sum_j] for kmin; [sum of sc_j (sums_j - 32 x_sum_j)] for ksym."""
        b = self.b
        if self.layout.kind == "ksym":  # (the offset times x_sum in a scalar register)
            sc = self.small_vector(header, sub, h, signed=True)
            shift = self.splat(b.mul(x_sum, ir.Constant(I32, self.offset_off)), self.mul.lanes)
            return [b.add(parts[0], b.mul(b.sub(sums, shift), sc))]
        sc = self.small_vector(header, sub, h, signed=False)
        minimum = b.add(sub, ir.Constant(self.intp, self.subs))
        mn = self.small_vector(header, minimum, h, signed=False)
        x_sums = self.splat(x_sum, self.mul.lanes)  # within int16: 32 codes of at most 127
        return [b.add(parts[0], b.mul(sums, sc)), self.mul.add_small(parts[1], mn, x_sums)]

    def finish_k(self, acc, parts, header, h, dx):
        """acc + dx (d scaled - dmin mins)."""
        b = self.b
        value = b.fmul(self.halves_vector(header, 0, h), b.sitofp(parts[0], self.floats))
        if len(parts) == 2:
            low = b.fmul(self.halves_vector(header, 1, h), b.sitofp(parts[1], self.floats))
            value = b.fsub(value, low)
        return b.fadd(acc, b.fmul(value, dx), flags=FUSE)
