"""Linear layers, `x @ w.T + b`, with weights `[out, in]` (PyTorch's nn.Linear layout), or packed.

A decode step multiplies a few rows by every weight matrix, so it is bound by reading the
weights from memory. BLAS is slow there: its GEMM repacks the whole matrix for a handful of
rows. Up to `KERNEL_MAX_ROWS` rows, small compiled kernels read every weight once, on all
cores; larger batches (prefill) go to BLAS. `gpt2_reference.linear` is the plain version. Kernels:

- `matmul_nt`, on every CPU path: each output a dot product of a contiguous weight row with
  each input row, vectorized along k by LLVM (at the width it prefers: 256 bits on AVX-512
  CPUs too), each ending in a horizontal sum.
- `matmul_packed`, on the AVX-512 path, where the engine's loader stores float32 matrices packed
  once (`quant.PackedF32Weight`: blocks of 16 outputs, k-major inside a block, replacing the
  `[out, in]` matrix; `host_packs_float32`): each step loads 16 outputs' weights as one vector
  per block and broadcasts one x per row, a tile of 8 rows x 3 blocks held in 16-lane registers
  (`model/kernels/f32_dot.py` `broadcast_tile`); x is read in its own rows. It takes every row count
  up to `PACKED_MAX_ROWS`; above, BLAS multiplies the matrix unpacked a chunk of rows at a time.

Weights may also be bfloat16 (`model/weights/quant.py`). Where the CPU has AVX512_BF16 the loader
packs them (`quant.PackedBF16Weight`, `host_packs_bfloat16`) and up to `BF16_MAX_ROWS` rows
`bf16_gemm.bf16_matmul` multiplies them by x rounded to bfloat16, with `vdpbf16ps`. Elsewhere
`matmul_nt` is the same source as for float32, reading each weight through `widen` (identity
for float32, so that path is unchanged). Above the kernels' rows bfloat16 weights are widened
`BLAS_CHUNK` rows at a time and handed to BLAS: a GEMM does enough work per weight that
widening them once costs little. int8 weights go to the W8A8 kernels at every batch size
(`model/kernels/int8_gemm.py`): int8 activations times int8 weights, on the kernel this CPU runs
best (`host_int8_kernel`); block-quantized weights (GGML's formats,
`model/weights/block_quant.py`) to theirs at every batch size too (`model/kernels/block_gemm.py`,
`host_block_kernel`). A stacked matrix (`model/weights/stacked.py`: members stored in different
formats) is multiplied part by part, each into its slice of the output.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
from numba import config, njit, prange

from nanovllm.model.kernels.bf16_attention import compile_bf16_attention
from nanovllm.model.kernels.bf16_gemm import (
    BF16Rows,
    bf16_matmul,
    compile_bf16_kernel,
    widen_packed_rows,
)
from nanovllm.model.kernels.block_gemm import block_linear, compile_block_kernel, take_lanes
from nanovllm.model.kernels.block_gemm import (
    first_compiling_kernel as first_compiling_block_kernel,
)
from nanovllm.model.kernels.f32_dot import broadcast_tile
from nanovllm.model.kernels.int8_gemm import Int8Rows, first_compiling_kernel, int8_linear
from nanovllm.model.kernels.parallel import chunk_counter, claim, split_chunks
from nanovllm.model.kernels.shared import KERNEL_MATH, NO_BIAS, as_bias, read_only
from nanovllm.model.kernels.tiling import store_tile, tile_blocks
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.platform.cpu import block_kernels, int8_kernels, kernel_path
from nanovllm.model.weights.adapted import AdaptedWeight
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.model.weights.quant import (
    BLOCK,
    BF16Weight,
    Int8Weight,
    PackedBF16Weight,
    PackedF32Weight,
    Weight,
    gather_rows,
    kernel_array,
    widen,
)
from nanovllm.model.weights.stacked import StackedWeight

logger = logging.getLogger("nanovllm")

# The most rows at which the kernel still beat BLAS on GPT-2 124M's shapes (a measured cut-over:
# re-measure it on a new CPU).
KERNEL_MAX_ROWS = 64
# The CPU paths that run the 16-lane register kernels (`model/kernels/f32_dot.py`): `matmul_packed`
# and attention's register tiles.
PANEL_PATHS = ("avx512",)
# The most rows `matmul_packed` takes on packed float32 weights at once (a measured cut-over: it
# beat BLAS on GPT-2's and SmolLM2's shapes at 512 rows, not at 2048).
PACKED_MAX_ROWS = 512
# Above PACKED_MAX_ROWS, a matrix with at least this many inputs still goes to `matmul_packed`,
# PACKED_MAX_ROWS rows at a time (a measured cut-over: the kernel's cost per tile besides its
# multiply-adds is paid once per input run, so long runs hide it; BLAS also needs the matrix
# unpacked first). Shorter ones go to BLAS.
PACKED_CHUNK_MIN_K = 1536
# The most rows `bf16_gemm.bf16_matmul` takes on packed bfloat16 weights: it beat widening them
# for BLAS at every row count measured on GPT-2's shapes, up to this one (the instruction's
# peak is twice float32's FMA, which BLAS runs on).
BF16_MAX_ROWS = 4096
# The bfloat16 kernels (`cpu.BF16_KERNELS`): the instruction's, and widening to float32.
AVX512BF16, WIDEN = "avx512bf16", "widen"
# Rows of a packed or bfloat16 matrix made float32 rows at a time for BLAS: every matrix of a
# block at once, the LM head in a few parts.
BLAS_CHUNK = 8192


def linear(x: np.ndarray | Int8Rows | BF16Rows, w: Weight, b: np.ndarray | None = None,
           residual: np.ndarray | None = None) -> np.ndarray:
    """x: [M, in], w: [out, in] (float32, int8 or bfloat16), b: [out] -> [M, out] float32. For
    int8 weights x may come quantized already (`Int8Rows`, see `takes_int8`), for packed
    bfloat16 ones rounded already (`BF16Rows`, see `takes_bf16_rows`).
    With `residual` ([M, out] float32, C-contiguous) the result is added into it in place and
    it is returned (the W8A8 and the packed kernels add the bias and the residual as they
    store their sums; elsewhere numpy adds them after). An `AdaptedWeight` multiplies by its
    base, then adds its per-row update (x comes as float32: `takes_int8` and `takes_bf16_rows`
    are false for it, so the layer feeding it does not pre-round its rows)."""
    if isinstance(w, AdaptedWeight):
        out = linear(x, w.base, b, residual)
        w.update(x, out)
        return out
    if isinstance(w, Int8Weight):
        return int8_linear(x, w, host_int8_kernel(), b, residual)
    if isinstance(w, BlockWeight):
        return block_linear(x, w, host_block_kernel(), b, residual)
    if isinstance(w, PackedF32Weight | PackedBF16Weight) and packed_kernel_takes(x, w):
        return packed_kernel_linear(x, w, b, residual)
    if isinstance(w, StackedWeight):
        out = np.concatenate([linear(x, part) for part in w.parts], axis=1)
    elif isinstance(w, PackedF32Weight):
        out = packed_linear(x, w)
    elif isinstance(w, PackedBF16Weight):
        out = widened_matmul(x, w)
    elif x.shape[0] <= KERNEL_MAX_ROWS:
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
        matmul_nt(np.ascontiguousarray(x), read_only(kernel_array(w)), out)  # (one signature)
    elif isinstance(w, np.ndarray):
        out = x @ w.T
    else:
        out = widened_matmul(x, w)
    if b is not None:
        out += b
    if residual is not None:
        residual += out
        return residual
    return out


def embedding_rows(table: Weight, ids: np.ndarray) -> np.ndarray:
    """table[ids] as a new float32 array: the token embedding's lookup, a table in any weight
    format. A block-quantized one (a GGUF file's) is read a row's lane of its panel at a time
    (`block_gemm.take_lanes`): a step looks up a row or a few, and unpacking their whole
    panels, as the format's own `take` does, costs more than the rows."""
    if isinstance(table, BlockWeight):
        return take_lanes(table, ids)
    return gather_rows(table, ids)


def takes_int8(w: Weight) -> bool:
    """Whether `linear` on w multiplies int8 activations (and so takes them pre-quantized:
    `int8_gemm.Int8Rows`)."""
    return isinstance(w, Int8Weight)


def takes_bf16_rows(w: Weight, rows: int) -> bool:
    """Whether `linear` on w multiplies `rows` rows rounded to bfloat16 on the avx512bf16 kernel
    (and so takes them rounded already: `bf16_gemm.BF16Rows`)."""
    return (isinstance(w, PackedBF16Weight) and not config.DISABLE_JIT
            and rows <= BF16_MAX_ROWS)


@cache  # (the CPU does not change while the process runs)
def host_int8_kernel() -> str:
    """The W8A8 kernel for this process's CPU: the best it has (`cpu.KernelPath.int8`) that
    compiles here, compiled (`int8_gemm.first_compiling_kernel`)."""
    return first_compiling_kernel(int8_kernels(kernel_path().features))


@cache
def host_block_kernel() -> str:
    """The kernel for block-quantized weights on this process's CPU (`cpu.KernelPath.block`)
    that compiles here, compiled (`block_gemm.first_compiling_kernel`)."""
    return first_compiling_block_kernel(block_kernels(kernel_path().features))


@cache
def host_bf16_kernel() -> str:
    """The bfloat16 kernel for this process's CPU (`cpu.KernelPath.bf16`), compiled with the
    prefill attention that uses it (`bf16_attention`): "avx512bf16" where the CPU has the
    instruction and they compile here, else "widen" (with one warning line if they did not
    compile: bfloat16 weights must never stop a server)."""
    if config.DISABLE_JIT or kernel_path().bf16 == WIDEN:
        return WIDEN
    try:
        compile_bf16_kernel()
        compile_bf16_attention()
    except Exception as exc:  # numba's or LLVM's refusal, whatever its type
        reason = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        logger.warning("bfloat16 dot products: the avx512bf16 kernel does not compile with this "
                       "numba and LLVM (%s); widening to float32 instead", reason[:200])
        return WIDEN
    return AVX512BF16


@cache
def host_packs_bfloat16() -> bool:
    """Whether the loaders store bfloat16 matrices packed (`quant.PackedBF16Weight`) for
    `bf16_gemm.bf16_matmul`: where this process runs the avx512bf16 kernel."""
    return host_bf16_kernel() == AVX512BF16


@cache
def host_has_panels() -> bool:
    """Whether this process runs the 16-lane register kernels (compiled, on a path that has
    them)."""
    return not config.DISABLE_JIT and kernel_path().name in PANEL_PATHS


@cache
def host_packs_float32() -> bool:
    """Whether the loaders store float32 matrices packed (`quant.PackedF32Weight`) for
    `matmul_packed`: where the 16-lane register kernels run (`host_has_panels`)."""
    return host_has_panels()


def packed_kernel_takes(x: np.ndarray, w: PackedF32Weight | PackedBF16Weight) -> bool:
    """Whether `packed_kernel_linear` multiplies x by w (compiled kernels only): float32 up to
    PACKED_MAX_ROWS rows, or more for matrices of at least PACKED_CHUNK_MIN_K inputs; bfloat16
    up to BF16_MAX_ROWS rows. Above, the weights are unpacked or widened for BLAS."""
    rows = x.shape[0]
    if config.DISABLE_JIT:
        return False
    if isinstance(w, PackedBF16Weight):
        return takes_bf16_rows(w, rows)
    return rows <= PACKED_MAX_ROWS or w.shape[1] >= PACKED_CHUNK_MIN_K


def packed_kernel_linear(x: np.ndarray, w: PackedF32Weight | PackedBF16Weight,
                         b: np.ndarray | None, residual: np.ndarray | None) -> np.ndarray:
    """`linear` on the packed kernels, which add the bias and the residual as they store:
    `bf16_matmul` (x rounded to bfloat16), or `matmul_packed` PACKED_MAX_ROWS rows at a time."""
    if isinstance(w, PackedBF16Weight):
        return bf16_matmul(x, w, b, residual)
    x, bias = np.ascontiguousarray(x), as_bias(b)
    out = np.empty((x.shape[0], w.shape[0]), np.float32) if residual is None else residual
    for start in range(0, x.shape[0], PACKED_MAX_ROWS):
        end = min(x.shape[0], start + PACKED_MAX_ROWS)
        matmul_packed(x[start:end], w.packed, out[start:end], bias, residual is not None)
    return out


def packed_linear(x: np.ndarray, w: PackedF32Weight) -> np.ndarray:
    """x @ w.T on the matrix unpacked to `[out, in]` rows, BLAS `BLAS_CHUNK` outputs at a time
    (where `packed_kernel_takes` says the kernel does not take x)."""
    if w.shape[0] <= BLAS_CHUNK:  # one GEMM's result is the output: no copy into one
        return x @ w.rows().T
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    for start in range(0, w.shape[0], BLAS_CHUNK):
        end = min(w.shape[0], start + BLAS_CHUNK)
        out[:, start:end] = x @ w.rows(start, end).T
    return out


def widened_matmul(x: np.ndarray, w: BF16Weight | PackedBF16Weight) -> np.ndarray:
    """x @ w.T through BLAS, on w widened to float32 `BLAS_CHUNK` rows at a time (one GEMM per
    chunk: BLAS ran several narrow ones much slower than one wide one)."""
    rows = np.empty((min(BLAS_CHUNK, w.shape[0]), w.shape[1]), np.float32)
    if w.shape[0] <= BLAS_CHUNK:
        widen_chunk(w, 0, rows)
        return x @ rows.T
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    for start in range(0, w.shape[0], BLAS_CHUNK):
        end = min(start + BLAS_CHUNK, w.shape[0])
        widen_chunk(w, start, rows[:end - start])
        out[:, start:end] = x @ rows[:end - start].T
    return out


def widen_chunk(w: BF16Weight | PackedBF16Weight, start: int, rows: np.ndarray) -> None:
    """rows = w's rows from `start` (as many as rows has), as float32."""
    if isinstance(w, PackedBF16Weight):
        widen_packed_rows(w.packed, start, rows)
    else:
        widen_rows(w.bits, start, rows)


@njit(cache=True, nogil=True, parallel=True)
def widen_rows(w, start, out):
    """out[i] = widen(w[start + i]) for as many rows as w has left (at most out's)."""
    for i in prange(min(out.shape[0], w.shape[0] - start)):
        for k in range(w.shape[1]):
            out[i, k] = widen(w[start + i, k])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def matmul_nt(x, w, out):
    """out = x @ widen(w).T, by chunks of output columns in parallel. All arrays C-contiguous."""
    n = w.shape[0]
    step, chunks = split_chunks(n, 3)  # columns go in threes
    taken = chunk_counter()
    for _ in prange(chunks):  # each thread claims chunks while any are left (`claim`)
        chunk = claim(taken)
        while chunk < chunks:
            dot_columns(x, w, out, chunk * step, min(n, (chunk + 1) * step))
            chunk = claim(taken)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def dot_columns(x, w, out, start, end):
    """out[:, start:end] = x @ w[start:end].T.

    Four rows of x by three rows of w at a time: each weight read from memory serves four rows,
    and the twelve sums stay in registers (each becomes a vector accumulator once the loop over
    the shared dimension is vectorized). Twelve accumulators, three weights and one input fill
    AVX2's sixteen vector registers: a larger tile spills to the stack on every iteration.
    Leftover rows and columns are single dot products.
    """
    m_rows, k_dim = x.shape
    col = start
    while col + 3 <= end:
        row = 0
        while row + 4 <= m_rows:
            s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
            s20 = s21 = s22 = s30 = s31 = s32 = np.float32(0.0)
            for k in range(k_dim):
                w0, w1, w2 = widen(w[col, k]), widen(w[col + 1, k]), widen(w[col + 2, k])
                x0 = x[row, k]
                s00 += x0 * w0
                s01 += x0 * w1
                s02 += x0 * w2
                x1 = x[row + 1, k]
                s10 += x1 * w0
                s11 += x1 * w1
                s12 += x1 * w2
                x2 = x[row + 2, k]
                s20 += x2 * w0
                s21 += x2 * w1
                s22 += x2 * w2
                x3 = x[row + 3, k]
                s30 += x3 * w0
                s31 += x3 * w1
                s32 += x3 * w2
            out[row, col:col + 3] = s00, s01, s02
            out[row + 1, col:col + 3] = s10, s11, s12
            out[row + 2, col:col + 3] = s20, s21, s22
            out[row + 3, col:col + 3] = s30, s31, s32
            row += 4
        dot_each(x, w, out, row, m_rows, col, col + 3)  # rows left over
        col += 3
    dot_each(x, w, out, 0, m_rows, col, end)  # columns left over


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, inline="always")
def dot_each(x, w, out, row_start, row_end, col_start, col_end):
    """out[r, c] = x[r] . w[c] over the given ranges, one dot product at a time."""
    for r in range(row_start, row_end):
        for c in range(col_start, col_end):
            s = np.float32(0.0)
            for k in range(x.shape[1]):
                s += x[r, k] * widen(w[c, k])
            out[r, c] = s


# The packed kernel's register tile: rows of x by blocks of PACK_WIDTH outputs (accumulators
# rows x blocks, plus one weight vector a block and a broadcast x, within AVX-512's 32). The
# block is the packed layout's (`quant.pack_float32`), defined there.
PACK_WIDTH = BLOCK
TILE_ROWS = 8
TILE_BLOCKS = 3


@njit(cache=True, nogil=True, parallel=True)
def matmul_packed(x, wp, out, bias, accumulate):
    """out = x @ w.T + bias (added into out with `accumulate`: `tiling.store_tile`), w packed as
    wp [blocks, K, PACK_WIDTH] (`quant.pack_float32`), bias [N] or empty (`shared.as_bias`),
    by chunks of TILE_BLOCKS blocks in parallel. x and wp C-contiguous; out [M, N] with N <=
    blocks * PACK_WIDTH."""
    n_blocks = wp.shape[0]
    step, chunks = split_chunks(n_blocks, TILE_BLOCKS)
    taken = chunk_counter()
    for _ in prange(chunks):  # each thread claims chunks while any are left (`claim`)
        chunk = claim(taken)
        while chunk < chunks:
            packed_blocks(x, wp, out, chunk * step, min(n_blocks, (chunk + 1) * step), bias,
                          accumulate)
            chunk = claim(taken)


@njit(cache=True, nogil=True)
def packed_blocks(x, wp, out, start, end, bias, accumulate):
    """out[:, blocks start:end] by `packed_at` tiles (`tiling.tile_blocks`; a single row takes
    the same panel of blocks as more)."""
    tile_blocks(packed_at, TILE_ROWS, TILE_BLOCKS, TILE_BLOCKS, x, wp, out, start, end, bias,
                accumulate)


@njit(cache=True, nogil=True)
def packed_at(rows, blocks, x, wp, out, r, b, acc, bias, accumulate):
    """out[r:r + rows, the outputs of blocks b:b + blocks that exist] through acc."""
    k_dim = x.shape[1]
    broadcast_tile(PACK_WIDTH, rows, blocks, 4, x.ctypes.data + r * k_dim * 4, k_dim * 4,
                   wp.ctypes.data + b * k_dim * PACK_WIDTH * 4, PACK_WIDTH * 4,
                   k_dim * PACK_WIDTH * 4, k_dim, acc.ctypes.data, blocks * PACK_WIDTH * 4)
    store_tile(acc, out, rows, blocks, r, b, bias, accumulate)


def compile_linear_kernel(needs: KernelNeeds) -> None:
    """Compiles the kernels now (or loads them from numba's cache on disk), for float32 weights
    (read-only, as `linear` passes them), and as `needs` says, widened bfloat16 ones and the
    W8A8 kernel of this CPU (the packed bfloat16 kernel is compiled where weights are packed
    for it, `host_bf16_kernel`)."""
    needs.log("linear")
    x = np.zeros((1, 1), np.float32)
    matmul_nt(x, read_only(x.copy()), np.empty((1, 1), np.float32))
    if host_packs_float32():
        matmul_packed(x, np.zeros((1, 1, PACK_WIDTH), np.float32), np.empty((1, 1), np.float32),
                      NO_BIAS, False)
    if needs.bf16_widened:
        needs.log("linear", "bfloat16 (widened)")
        matmul_nt(x, read_only(np.zeros((1, 1), np.uint16)), np.empty((1, 1), np.float32))
        widen_rows(np.zeros((1, 1), np.uint16), 0, np.empty((1, 1), np.float32))
    if needs.int8:
        needs.log("linear", f"int8 ({kernel_path().int8})")
        host_int8_kernel()
    if needs.block_types:
        needs.log("linear", "/".join(needs.block_types))
        compile_block_kernel(host_block_kernel(), needs.block_types)
