"""Block-quantized products on AMX tiles (Intel's Xeons since Sapphire Rapids), for a batch's or
a prefill's rows: `amx_linear`, which `block_gemm.block_linear` runs for AMX_MIN_ROWS rows and
more where the CPU has AMX (its "amx" kernel; fewer rows stay on the VNNI kernel).

Here the products are in bfloat16, not int8. Each panel of weights (`block_quant`: 16 outputs)
is dequantized once for all the rows, w = W * (u - offset) + M in float32 rounded to bfloat16,
into B tiles (a tile's row p: the 16 outputs' inputs 2p and 2p + 1); the rows are rounded to
bfloat16 once a call. Then `tdpbf16ps` multiplies 16 rows by a panel 32 inputs at a time,
adding into float32 sums that stay in their tile across the whole row. In int8 (`tdpbssd`, on
the codes and the activations' int8 codes, as the VNNI kernel does) each sub-block's sums
carry their own scales, so they would leave the tile and be scaled in vector code every 32
inputs, which costs more than the tile products themselves. The error is the activations' and
the weights' rounding to bfloat16 (2^-9 of each, relative), smaller than the int8
activations' quantization; the tests bound it.

A call multiplies 2 tiles of rows by 2 panels where it can, each loaded tile used twice: the
operands come from L2, whose bandwidth otherwise bounds the products. A tile product needs the
process's permission (`request_tiles`, asked before the kernel first compiles) and each
thread's tile shapes (`load_tile_config`, at the start of each thread's share).
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from nanovllm.model.kernels.bf16_dot import BFloat16Type
from nanovllm.model.kernels.bf16_gemm import round_rows_parallel
from nanovllm.model.kernels.ir_build import declare, emit_accumulating_loop, intrinsic_accepts
from nanovllm.model.kernels.parallel import chunk_counter, claim, split_chunks
from nanovllm.model.kernels.tiling import store_sums
from nanovllm.model.platform.memory import line_aligned
from nanovllm.model.weights.block_quant import (
    GROUP,
    LAYOUTS,
    LINE,
    PANEL,
    Layout,
    float16_fields,
    header_bytes,
)

# Rows from which a product runs on tiles: below (16 rows, on Emerald Rapids), dequantizing
# each panel to bfloat16 costs more than the VNNI kernel's whole product.
AMX_MIN_ROWS = 32
TILE_ROWS = 16  # rows of activations a tile product takes (and outputs: a panel's)
CHUNK = 32  # inputs a tile product takes: 16 rows of 32 bfloat16, 64 bytes a row
# A call multiplies up to 2 tiles of rows by up to 2 panels, each loaded tile used twice: the
# operands come from L2, whose bandwidth bounds a product that loads both of its own.
SUMS, ROWS, PANELS = (0, 1, 2, 3), (4, 5), (6, 7)  # the tiles
# Linux's request for a process's AMX state (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)).
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


@cache  # (a permission of the process, asked once)
def request_tiles() -> None:
    """Asks Linux to let this process use AMX tiles. Raises OSError where it refuses: a tile
    instruction would then kill the process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        raise OSError(ctypes.get_errno(), "Linux refused this process AMX's tile state")


# --------------------------------------------------------------------------- LLVM IR

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
FLOATS, INTS = ir.VectorType(F32, PANEL), ir.VectorType(I32, PANEL)
LINE_BYTES = ir.VectorType(I8, LINE)
ADDRESS = I8.as_pointer()


def at(builder, address, offset):
    """address + offset bytes (offset a Python int or an i64 value)."""
    return builder.add(address, offset if isinstance(offset, ir.Value) else
                       ir.Constant(I64, offset))


def load(builder, address, of):
    return builder.load(builder.inttoptr(address, of.as_pointer()), align=4)


def store(builder, value, address):
    builder.store(value, builder.inttoptr(address, value.type.as_pointer()), align=4)


def call(builder, name, *args):
    """The AMX instruction `name` (an LLVM x86 intrinsic returning nothing) on args."""
    fn = declare(builder, f"llvm.x86.{name}", ir.VoidType(), [a.type for a in args])
    builder.call(fn, list(args))


def tile(n):
    return ir.Constant(I8, n)


@intrinsic
def load_tile_config(typingctx, config):
    """`ldtilecfg`: this thread's tiles shaped as the 64 bytes at address `config` say."""
    def codegen(context, builder, signature, args):
        call(builder, "ldtilecfg", builder.inttoptr(args[0], ADDRESS))
        return context.get_dummy_value()
    return types.void(types.intp), codegen


@intrinsic
def release_tiles(typingctx):
    """`tilerelease`: this thread's tiles back to their initial state."""
    def codegen(context, builder, signature, args):
        call(builder, "tilerelease")
        return context.get_dummy_value()
    return types.void(), codegen


@njit(cache=True, nogil=True, inline="always")
def tile_config():
    """The 64-byte tile configuration (palette 1): every tile 16 rows of 64 bytes (float32
    sums, or bfloat16 pairs)."""
    config = np.zeros(64, np.uint8)
    config[0] = 1
    for t in range(8):
        config[16 + 2 * t] = LINE
        config[48 + t] = TILE_ROWS
    return config


CONVERT = "llvm.x86.avx512bf16.cvtne2ps2bf16.512"


@cache
def converted_type() -> ir.VectorType:
    """What `vcvtne2ps2bf16`'s intrinsic returns in this LLVM: <32 x bfloat> (newer) or
    <32 x i16> (older)."""
    floats = [FLOATS, FLOATS]
    for lanes in (BFloat16Type(), ir.IntType(16)):
        if intrinsic_accepts(CONVERT, ir.VectorType(lanes, 2 * PANEL), floats):
            return ir.VectorType(lanes, 2 * PANEL)
    raise ValueError(f"this LLVM takes no {CONVERT}")


def to_bfloat16_pairs(builder, low, high):
    """Two float32 vectors of 16 rounded to bfloat16 (to nearest, ties to even:
    `vcvtne2ps2bf16`), low's then high's, as 16 i32 lanes of two each."""
    fn = declare(builder, CONVERT, converted_type(), [FLOATS, FLOATS])
    return builder.bitcast(builder.call(fn, [high, low]), ir.VectorType(I32, PANEL))


def dequantize_super_block(layout: Layout):
    """An intrinsic writing one panel's super-block of `layout` (at address `block`) as
    bfloat16 B tiles at `into`: w = W * (u - offset) + M (one fused multiply-add) for each
    output's code u, with W the output's scale for its sub-block (d, or d times the
    sub-block's scale) and M the min's term ("asym": m; "kmin": -dmin times the sub-block's
    min). Row p of a tile holds the 16 outputs' inputs 2p and 2p + 1 (`block_gemm.lane_codes`
    gives each output's codes)."""
    bits, sub, span, offset = layout.bits, layout.sub, layout.span, layout.offset
    halves, header, subs = float16_fields(layout), header_bytes(layout), span // sub
    per_sub = sub // GROUP  # groups of a sub-block
    with_min = layout.kind in ("asym", "kmin")

    @intrinsic
    def dequantize(typingctx, block, into):
        def codegen(context, builder, signature, args):
            block, into = args
            half = ir.VectorType(ir.HalfType(), PANEL)
            d, second = (builder.fpext(load(builder, at(builder, block, 2 * PANEL * f), half),
                                       FLOATS) for f in (0, halves - 1))

            def small(n):  # byte n of every output's small scales
                v = load(builder, at(builder, block, 2 * PANEL * halves + PANEL * n),
                         ir.VectorType(I8, PANEL))
                return builder.sitofp(builder.sext(v, INTS) if layout.kind == "ksym"
                                      else builder.zext(v, INTS), FLOATS)

            def line(n):
                return load(builder, at(builder, block, header + n * LINE), LINE_BYTES)

            def splat(v):
                return ir.Constant(LINE_BYTES, [v] * LINE)

            fma = declare(builder, "llvm.fma.v16f32", FLOATS, [FLOATS] * 3)
            quarter = [[j // GROUP + PANEL // GROUP * h for j in range(PANEL)] for h in range(4)]
            evens = ir.Constant(ir.VectorType(I32, PANEL), list(range(0, 2 * PANEL, 2)))
            odds = ir.Constant(ir.VectorType(I32, PANEL), list(range(1, 2 * PANEL, 2)))
            for n in range(subs):
                if layout.kind in ("sym", "asym"):
                    scale, term = d, second
                else:
                    scale = builder.fmul(d, small(n))
                    term = builder.fneg(builder.fmul(second, small(subs + n)))
                # w = scale * u + bias, the offset folded into the bias: exact where the
                # offset's term is (scale times a small integer), one rounding after
                offset_term = builder.fmul(scale, ir.Constant(FLOATS, [float(offset)] * PANEL))
                bias = (builder.fsub(term, offset_term) if with_min else builder.fneg(offset_term))
                # each output's scale for its 4 lanes of a quarter line
                scales = [builder.shuffle_vector(scale, scale, ir.Constant(
                    ir.VectorType(I32, PANEL), q)) for q in quarter]
                terms = [builder.shuffle_vector(bias, bias, ir.Constant(
                    ir.VectorType(I32, PANEL), q)) for q in quarter]
                base = n * per_sub * bits // 8  # (in lines)
                for inner in range(per_sub):
                    g = n * per_sub + inner
                    if bits == 8:
                        v = line(g)
                    else:  # two groups a line: the sub-block's first half low, second high
                        high, position = divmod(inner, per_sub // 2)
                        v = builder.and_(builder.lshr(line(base + position), splat(4 * high)),
                                         splat(0x0F))
                    if bits == 6:  # then a line of every group's top 2 bits
                        top = builder.lshr(line(base + per_sub // 2), splat(2 * inner))
                        v = builder.or_(v, builder.shl(builder.and_(top, splat(3)), splat(4)))
                    weights = []
                    for h in range(4):
                        c = builder.shuffle_vector(v, v, ir.Constant(
                            ir.VectorType(I32, PANEL), list(range(PANEL * h, PANEL * (h + 1)))))
                        u = builder.sitofp(builder.zext(c, INTS), FLOATS)
                        weights.append(builder.call(fma, [u, scales[h], terms[h]]))
                    # [output][4 inputs] in bfloat16 pairs: the even pairs are row 2g, the odd
                    # 2g + 1
                    pairs = [to_bfloat16_pairs(builder, weights[h], weights[h + 1])
                             for h in (0, 2)]
                    whole = builder.shuffle_vector(pairs[0], pairs[1], ir.Constant(
                        ir.VectorType(I32, 2 * PANEL), list(range(2 * PANEL))))
                    row = 2 * g
                    store(builder, builder.shuffle_vector(whole, whole, evens),
                          at(builder, into, row * LINE))
                    store(builder, builder.shuffle_vector(whole, whole, odds),
                          at(builder, into, (row + 1) * LINE))
            return context.get_dummy_value()
        return types.void(types.intp, types.intp), codegen
    return dequantize


def tile_product(n_row_tiles: int, n_panels: int):
    """An intrinsic: `n_row_tiles` tiles of 16 rows of bfloat16 activations (row i from
    address a + i * a_stride) times `n_panels` panels of bfloat16 weights
    (`dequantize_super_block`'s tiles, panel p's from address weights[p], `panel_bytes` apart),
    over `n_chunks` chunks of 32 inputs; the float32 [16, 16] sums of row tile r and panel p
    stored at out + 1024 (r * n_panels + p)."""
    @intrinsic
    def product(typingctx, a, a_stride, weights, panel_bytes, n_chunks, out):
        def codegen(context, builder, signature, args):
            a, a_stride, weights, panel_bytes, n_chunks, out = args
            row_bytes = ir.Constant(I64, 4 * PANEL)
            pairs = [(r, p) for r in range(n_row_tiles) for p in range(n_panels)]

            def address(base, *terms):
                return builder.inttoptr(at(builder, base, reduce_sum(builder, terms)), ADDRESS)

            def step(chunk, accs):
                for r in range(n_row_tiles):
                    call(builder, "tileloadd64", tile(ROWS[r]), address(
                        a, builder.mul(a_stride, ir.Constant(I64, TILE_ROWS * r)),
                        builder.mul(chunk, ir.Constant(I64, 2 * CHUNK))), a_stride)
                for p in range(n_panels):
                    call(builder, "tileloadd64", tile(PANELS[p]), address(
                        weights, builder.mul(panel_bytes, ir.Constant(I64, p)),
                        builder.mul(chunk, ir.Constant(I64, TILE_ROWS * LINE))), row_bytes)
                for n, (r, p) in enumerate(pairs):
                    call(builder, "tdpbf16ps", tile(SUMS[n]), tile(ROWS[r]), tile(PANELS[p]))
                return []

            for n in range(len(pairs)):
                call(builder, "tilezero", tile(SUMS[n]))
            emit_accumulating_loop(builder, "chunks", n_chunks, [], step)
            for n in range(len(pairs)):
                call(builder, "tilestored64", tile(SUMS[n]), builder.inttoptr(
                    at(builder, out, n * TILE_ROWS * 4 * PANEL), ADDRESS), row_bytes)
            return context.get_dummy_value()
        return types.void(*[types.intp] * 6), codegen
    return product


def reduce_sum(builder, terms):
    """The sum of i64 values."""
    total = terms[0]
    for term in terms[1:]:
        total = builder.add(total, term)
    return total


PRODUCT_1x1, PRODUCT_1x2 = tile_product(1, 1), tile_product(1, 2)
PRODUCT_2x1, PRODUCT_2x2 = tile_product(2, 1), tile_product(2, 2)


# --------------------------------------------------------------------------- the kernel


def entry_point(type_name: str):
    """A compiled function `linear(x, packed, bias, accumulate, out)` for weights of
    `type_name`, its layout's numbers constants (so each type compiles to its own loops)."""
    layout = LAYOUTS[type_name]
    span = layout.span
    dequantize_one = dequantize_super_block(layout)

    @njit(cache=True, nogil=True, inline="always")
    def dequantize_pair(packed, p, last, into):
        """Panels p and p + 1 (those before `last`) dequantized into into[0], into[1]."""
        for q in range(min(2, last - p)):
            for s in range(packed.shape[1]):
                dequantize_one(packed[p + q, s].ctypes.data,
                               into[q, s * span * 2 * PANEL:].ctypes.data)

    @njit(cache=True, nogil=True, parallel=True)
    def linear(x, packed, bias, accumulate, out):
        """out = x times the packed panels: the rows in bfloat16, padded to whole tiles, the
        panels in chunks the threads claim (`kernels.claim`), each dequantized once for all
        the rows."""
        m, padded = x.shape[0], -(-x.shape[0] // TILE_ROWS) * TILE_ROWS
        k = x.shape[1]
        # Rows a chunk longer than k: a tile's 16 rows 2k bytes apart would share a few of
        # L1's sets (k a multiple of 1024) and evict each other between loads.
        a = line_aligned(padded * (k + CHUNK) * 2).view(np.uint16).reshape((padded, k + CHUNK))
        a[m:] = 0  # (rows past m)
        round_rows_parallel(x, a[:m, :k])
        n_panels = packed.shape[0]
        # Chunks of whole pairs of panels: a chunk of one panel would load each row tile for
        # one product (a matrix of 1,024 outputs is 64 panels, cut into 64 chunks by one).
        step, chunks = split_chunks(n_panels, 2)
        taken = chunk_counter()
        for _ in prange(chunks):
            chunk = claim(taken)
            if chunk >= chunks:
                continue
            config = tile_config()
            load_tile_config(config.ctypes.data)
            # Two pairs of panels' weights: the products read a pair dequantized while the pair
            # before was multiplied (a tile load of bytes just stored waits for the stores).
            weights = line_aligned(4 * k * 2 * PANEL).reshape((2, 2, k * 2 * PANEL))
            sums = line_aligned(4 * TILE_ROWS * PANEL * 4).view(np.float32).reshape(
                (4, TILE_ROWS * PANEL))
            while chunk < chunks:
                first, last = chunk * step, min(n_panels, (chunk + 1) * step)
                dequantize_pair(packed, first, last, weights[0])
                for p in range(first, last, 2):
                    pair = min(2, last - p)
                    ready = weights[(p - first) // 2 % 2]
                    if p + 2 < last:
                        dequantize_pair(packed, p + 2, last, weights[1 - (p - first) // 2 % 2])
                    for t in range(0, padded, 2 * TILE_ROWS):
                        two_rows = t + TILE_ROWS < padded
                        args = (a[t].ctypes.data, a.strides[0], ready.ctypes.data, ready.shape[1],
                                k // CHUNK, sums.ctypes.data)
                        if two_rows and pair == 2:
                            PRODUCT_2x2(*args)
                        elif two_rows:
                            PRODUCT_2x1(*args)
                        elif pair == 2:
                            PRODUCT_1x2(*args)
                        else:
                            PRODUCT_1x1(*args)
                        for r in range(2 if two_rows else 1):
                            for q in range(pair):
                                store_sums(sums[r * pair + q], PANEL, out,
                                           min(TILE_ROWS, m - t - r * TILE_ROWS),
                                           t + r * TILE_ROWS, (p + q) * PANEL, bias, accumulate)
                chunk = claim(taken)
            release_tiles()
    return linear


LINEARS = {type_name: entry_point(type_name) for type_name in LAYOUTS}


def amx_linear(x: np.ndarray, w, bias: np.ndarray, accumulate: bool, out: np.ndarray) -> None:
    """out [M, N] = x [M, K] float32 (C-contiguous) times the block-quantized w [N, K]
    (`block_quant.BlockWeight`) plus bias (`shared.as_bias`), or added into out with
    `accumulate`."""
    request_tiles()
    LINEARS[w.type_name](x, w.packed, bias, accumulate, out)
