"""The walk over a packed matmul's output by register tiles, shared by the float32 kernel
(`linear.matmul_packed`) and the bfloat16 one (`bf16_gemm.matmul_bf16`).

A tile function `tile(rows, blocks, x, wp, out, r, b, acc, bias, accumulate)` multiplies rows
r:r + rows of x by the packed weights' blocks b:b + blocks of 16 outputs, its sums through acc
into out (`store_tile`, which adds the bias and, with `accumulate`, what out held: a linear
layer's bias and residual in the pass that stores its output); rows and blocks are
compile-time constants, so numba compiles it once per shape. The walk hands it, within a chunk
of blocks: panels of `blocks` blocks (of `one_row_blocks` for a single row of x), each against
every row of x `rows` at a time, then 4, 2 and 1; then the blocks left over one at a time.

The walk takes the tile function as an argument: numba compiles a caller once per tile function
it passes (a constant of its own type), and the calls are as direct as a named function's. Both
walks are inlined into their callers (`inline="always"`), so that they are compiled and cached
with the kernel that calls them.

numba's on-disk cache does not notice edits to this module in the kernels that use it: after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nanovllm.model.weights.quant import BLOCK


@njit(cache=True, nogil=True, inline="always")
def tile_blocks(tile, rows, blocks, one_row_blocks, x, wp, out, start, end, bias, accumulate):
    """out[:, blocks start:end]: panels of `blocks` blocks by every row of x (`tile_rows`), or
    of `one_row_blocks` blocks for a single row; then one block at a time."""
    acc = np.empty(rows * max(blocks, one_row_blocks) * BLOCK, np.float32)
    b = start
    if x.shape[0] == 1:
        while b + one_row_blocks <= end:
            # (row np.intp(0), not a literal 0: another signature, compiled a second time)
            tile(1, one_row_blocks, x, wp, out, np.intp(0), b, acc, bias, accumulate)
            b += one_row_blocks
    else:
        while b + blocks <= end:
            tile_rows(tile, rows, blocks, x, wp, out, b, acc, bias, accumulate)
            b += blocks
    while b < end:
        tile_rows(tile, rows, 1, x, wp, out, b, acc, bias, accumulate)
        b += 1


@njit(cache=True, nogil=True, inline="always")
def tile_rows(tile, rows, blocks, x, wp, out, b, acc, bias, accumulate):
    """out[:, blocks b:b + blocks], `rows` rows at a time, then 4, 2 and 1."""
    m = x.shape[0]
    r = np.intp(0)  # (a literal 0 would compile the first tile a second time)
    while r + rows <= m:
        tile(rows, blocks, x, wp, out, r, b, acc, bias, accumulate)
        r += rows
    if r + 4 <= m:
        tile(4, blocks, x, wp, out, r, b, acc, bias, accumulate)
        r += 4
    if r + 2 <= m:
        tile(2, blocks, x, wp, out, r, b, acc, bias, accumulate)
        r += 2
    if r < m:
        tile(1, blocks, x, wp, out, r, b, acc, bias, accumulate)


@njit(cache=True, nogil=True, inline="always")
def store_tile(acc, out, rows, blocks, r, b, bias, accumulate):
    """out[r:r + rows, the outputs of blocks b:b + blocks that exist] = acc, float32 [rows,
    blocks * BLOCK], plus bias ([N], or empty: none), added into out with `accumulate` (in the
    order numpy's `out += bias; residual += out` adds them, so the sums are the same)."""
    store_sums(acc, blocks * BLOCK, out, rows, r, b * BLOCK, bias, accumulate)


@njit(cache=True, nogil=True, inline="always")
def store_sums(acc, width, out, rows, r, first, bias, accumulate):
    """out[r:r + rows, first:first + width] (the columns that exist) = acc, float32
    [rows, width], as `store_tile`. Each case is a loop of its own over a row's slices, which
    LLVM vectorizes (one `shared.finish` an element, its branches inside the loop, did not: a
    batch's LM head stores millions of outputs a step)."""
    cols = min(width, out.shape[1] - first)
    with_bias = bias.shape[0] > 0
    b = bias[first:] if with_bias else bias
    for i in range(rows):
        a, o = acc[i * width:], out[r + i, first:]
        if accumulate and with_bias:  # (the bias first, then the residual: numpy's order)
            for j in range(cols):
                o[j] = o[j] + (a[j] + b[j])
        elif accumulate:
            for j in range(cols):
                o[j] = o[j] + a[j]
        elif with_bias:
            for j in range(cols):
                o[j] = a[j] + b[j]
        else:
            for j in range(cols):
                o[j] = a[j]
