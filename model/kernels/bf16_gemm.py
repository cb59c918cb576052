"""bfloat16 x bfloat16: a linear layer on packed bfloat16 weights, `bf16_matmul(x, w)`, on CPUs
with AVX512_BF16 (`model/kernels/bf16_dot.py` has the instruction).

The weights are `PackedBF16Weight`s (`quant.pack_bfloat16`). Each call rounds the rows of x to
bfloat16 once (to nearest, ties to even: `round_rows`), zero-padded to a whole pair of k, and
then every output is a float32 sum of exact products of bfloat16 numbers. Rounding x costs
accuracy (a relative error of at most 2**-9 per element, as the weights' own rounding):
docs/performance.md measures what it does to a model's logits.

Register panels of rows x blocks (`TILE_*`), their blocks in chunks the threads claim as they go
(`parallel.claim`, as `linear.matmul_packed`): each panel's weights are read from memory once
while every row of x passes over them. `reference` is the plain version: numpy on the same
rounded x and the weights' float32 values, summed in float64.

Above the rows the caller gives this kernel, and where the CPU lacks the instruction, bfloat16
weights are widened to float32 (`widen_packed_rows` for packed ones) and multiplied by BLAS
(`model/layers/linear.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.bf16_dot import PAIR_BYTES, bf16_panel
from nanovllm.model.kernels.parallel import chunk_counter, claim, on_threads, split_chunks
from nanovllm.model.kernels.shared import as_bias
from nanovllm.model.kernels.tiling import store_tile, tile_blocks
from nanovllm.model.weights.quant import (
    BLOCK,
    PAIR,
    PackedBF16Weight,
    bf16_bits_to_float32,
    bf16_to_float32,
    round_to_bfloat16,
)

# The register panel: rows of x by blocks of 16 outputs (rows x blocks sums, one weight vector a
# block and a broadcast x, within AVX-512's 32 registers); a single row (batch-1 decode) takes
# more blocks at once, for as many independent sums and memory streams.
TILE_ROWS, TILE_BLOCKS, ONE_ROW_BLOCKS = 8, 3, 8


@dataclass(slots=True)
class BF16Rows:
    """Activations already rounded to bfloat16 (`round_rows`), for `bf16_matmul` to take as they
    are. A kernel that makes the float32 rows (a layer norm, GELU) can round each while it is in
    cache (`round_vector`), instead of writing it out for a pass of its own to read back."""
    bits: np.ndarray  # uint16 [M, 2 * pairs], zeros past K
    width: int        # K

    @classmethod
    def empty(cls, rows: int, width: int, pairs: int) -> BF16Rows:
        return cls(np.empty((rows, PAIR * pairs), np.uint16), width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape[0], self.width


def bf16_matmul(x: np.ndarray | BF16Rows, w: PackedBF16Weight, bias: np.ndarray | None = None,
                residual: np.ndarray | None = None) -> np.ndarray:
    """round_to_bfloat16(x) @ dequantize(w).T + bias: x [M, K] float32 (or already rounded,
    `BF16Rows`) -> [M, N] float32, on the avx512bf16 kernel (compiled only). With `residual`
    ([M, N] float32, C-contiguous) the result is added into it in place, and it is returned: the
    bias and the residual are added as the kernel stores its sums, not in passes of their own."""
    xb = x.bits if isinstance(x, BF16Rows) else round_activations(x, w.packed.shape[1])
    if residual is not None:
        matmul_bf16(xb, w.packed, residual, as_bias(bias), True)
        return residual
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    matmul_bf16(xb, w.packed, out, as_bias(bias), False)
    return out


def round_activations(x: np.ndarray, pairs: int) -> np.ndarray:
    """x [M, K] as bfloat16 bits [M, 2 * pairs], zero past K (on all threads when there are
    enough rows, `parallel.on_threads`)."""
    xb = np.empty((x.shape[0], PAIR * pairs), np.uint16)
    x = np.ascontiguousarray(x, np.float32)
    if on_threads(x.size):
        round_rows_parallel(x, xb)
    else:
        round_rows(x, xb)
    return xb


def reference(x: np.ndarray, w: PackedBF16Weight, bias: np.ndarray | None = None,
              residual: np.ndarray | None = None) -> np.ndarray:
    """What `bf16_matmul` computes, in plain numpy: x rounded to bfloat16 times the weights'
    float32 values, each product exact and summed in float64; then the bias and the residual
    added in float32 (a new array: the residual is left as it was)."""
    xr = round_to_bfloat16(x).astype(np.float64)
    out = (xr @ bf16_to_float32(w.rows()).astype(np.float64).T).astype(np.float32)
    if bias is not None:
        out += bias
    return out if residual is None else residual + out


# --------------------------------------------------------------------------- activations


@njit(cache=True, nogil=True, inline="always")
def round_bits(v):
    """float32 v as the bits of the nearest bfloat16 (ties to even; `quant.bfloat16_bits`); a
    NaN stays a NaN, quiet (rounding its bits could carry them into infinity's)."""
    b = np.float32(v).view(np.uint32)
    if np.uint32(b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(np.uint32(b >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16(np.uint32(b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
                     >> np.uint32(16))


@njit(cache=True, nogil=True)
def round_vector(row, out):
    """out[:len(row)] = round_bits(row), zero beyond: one row of `round_rows`, and of the
    kernels that make BF16Rows or round attention's inputs (not inlined by numba: its
    inline="always" once dropped a caller's writes)."""
    for i in range(row.shape[0]):
        out[i] = round_bits(row[i])
    for i in range(row.shape[0], out.shape[0]):
        out[i] = 0


@njit(cache=True, nogil=True)
def round_rows(x, out):
    """out[t, :K] = round_bits(x[t]), zero beyond: x float32 [M, K], out uint16 [M, >= K]."""
    for t in range(x.shape[0]):
        round_vector(x[t], out[t])


@njit(cache=True, nogil=True, parallel=True)
def round_rows_parallel(x, out):
    """`round_rows` on all threads."""
    for t in prange(x.shape[0]):
        round_vector(x[t], out[t])


# --------------------------------------------------------------------------- products


@njit(cache=True, nogil=True, parallel=True)
def matmul_bf16(xb, wp, out, bias, accumulate):
    """out = xb @ w.T + bias (added into out with `accumulate`: `tiling.store_tile`), xb
    bfloat16 bits [M, 2 * pairs], w packed as wp [blocks, pairs, BLOCK, PAIR]
    (`quant.pack_bfloat16`), bias [N] or empty (`shared.as_bias`), by chunks of whole panels
    of blocks in parallel. xb and wp C-contiguous; out [M, N] with N <= blocks * BLOCK."""
    n_blocks = wp.shape[0]
    per_panel = ONE_ROW_BLOCKS if xb.shape[0] == 1 else TILE_BLOCKS
    step, chunks = split_chunks(n_blocks, per_panel)
    taken = chunk_counter()
    for _ in prange(chunks):  # each thread claims chunks while any are left (`claim`)
        chunk = claim(taken)
        while chunk < chunks:
            bf16_blocks(xb, wp, out, chunk * step, min(n_blocks, (chunk + 1) * step), bias,
                        accumulate)
            chunk = claim(taken)


@njit(cache=True, nogil=True)
def bf16_blocks(xb, wp, out, start, end, bias, accumulate):
    """out[:, blocks start:end] by `bf16_at` tiles (`tiling.tile_blocks`)."""
    tile_blocks(bf16_at, TILE_ROWS, TILE_BLOCKS, ONE_ROW_BLOCKS, xb, wp, out, start, end, bias,
                accumulate)


@njit(cache=True, nogil=True)
def bf16_at(rows, blocks, xb, wp, out, r, b, acc, bias, accumulate):
    """out[r:r + rows, the outputs of blocks b:b + blocks that exist] through acc."""
    pairs = wp.shape[1]
    bf16_panel(rows, blocks, xb.ctypes.data + r * pairs * 4, pairs * 4,
               wp.ctypes.data + b * pairs * PAIR_BYTES, pairs * PAIR_BYTES, pairs,
               acc.ctypes.data, blocks * BLOCK * 4)
    store_tile(acc, out, rows, blocks, r, b, bias, accumulate)


# --------------------------------------------------------------------------- widened


@njit(cache=True, nogil=True, parallel=True)
def widen_packed_rows(wp, start, out):
    """out[i] = the float32 values of row start + i of the packed weights wp (`quant.
    pack_bfloat16`), for out's rows (the caller keeps them within the matrix) and its K
    columns: what BLAS multiplies above the kernel's rows."""
    for i in prange(out.shape[0]):
        block, j = divmod(start + i, BLOCK)
        for k in range(out.shape[1]):
            out[i, k] = bf16_bits_to_float32(wp[block, k // PAIR, j, k % PAIR])


def compile_bf16_kernel() -> None:
    """Compiles (or loads from numba's cache) the activations' rounding (one row, and the
    threads' for a prefill's many), the kernel, and the widening for BLAS above its rows."""
    w = PackedBF16Weight.from_bits(np.zeros((1, 1), np.uint16))
    bf16_matmul(np.zeros((1, 1), np.float32), w)
    round_rows_parallel(np.zeros((1, 1), np.float32), np.empty((1, 2), np.uint16))
    widen_packed_rows(w.packed, 0, np.empty((1, 1), np.float32))
