"""Prefill attention's two products in float32 on the packed float32 kernel's register panels
(`f32_dot.broadcast_tile`, as `linear.matmul_packed` runs them), for float32 and int8 models
where this CPU has the panels (`linear.host_has_panels`): an `F32Context` holds a context's keys
and values, packed once per call as the loader packs a weight matrix (`quant.pack_float32`),
and gives the scores (Q K^T) and the output (P V) of `attention.causal_attention`'s blocks of
queries, as `bf16_attention.BF16Context` does with bfloat16 products. Each key/value head's
panels are claimed by numba's threads as they go (`heads_product`, as `bf16_attention.heads_matmul`), where
OpenBLAS's per-head sgemms were split in fixed halves between threads and waited for a
descheduled one. No rounding: the sums are float32, in another order than BLAS's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nanovllm.model.bf16_attention import blocks_of
from nanovllm.model.f32_dot import broadcast_tile
from nanovllm.model.kernels import NO_BIAS, claim, on_threads, split_chunks
from nanovllm.model.quant import BLOCK
from nanovllm.model.tiling import tile_blocks

# The panel of `linear.matmul_packed` (its TILE_ROWS x TILE_BLOCKS; linear imports attention's
# modules, so they are named here too and tested equal).
TILE_ROWS, TILE_BLOCKS = 8, 3


@dataclass(slots=True)
class F32Context:
    """A context's keys and values k, v [c, Hkv, D] packed (compiled only): keys [Hkv, key
    blocks, D, BLOCK], values [Hkv, blocks of D, c, BLOCK], zero beyond c and D."""
    keys: np.ndarray
    values: np.ndarray
    head_dim: int

    @classmethod
    def pack(cls, k: np.ndarray, v: np.ndarray) -> F32Context:
        c, n_kv, head_dim = k.shape
        keys = np.zeros((n_kv, blocks_of(c), head_dim, BLOCK), np.float32)
        values = np.zeros((n_kv, blocks_of(head_dim), c, BLOCK), np.float32)
        pack_context(k, v, keys, values, on_threads(k.size + v.size))
        return cls(keys, values, head_dim)

    @staticmethod
    def start(first: int) -> int:
        """Where a block of queries whose earliest visible key is `first` reads keys from."""
        return first - first % BLOCK

    def scores(self, q: np.ndarray, start: int, end: int) -> np.ndarray:
        """q [Hkv, M, D] against keys start:end (start a `start`) -> [Hkv, M, end - start]."""
        out = np.empty((q.shape[0], q.shape[1], end - start), np.float32)
        heads_product(np.ascontiguousarray(q),
                     self.keys[:, start // BLOCK:blocks_of(end)], out)
        return out

    def values_times(self, p: np.ndarray, start: int) -> np.ndarray:
        """p [Hkv, M, n] (probabilities of positions start:start + n) times those positions'
        values -> [Hkv, M, D]."""
        out = np.empty((p.shape[0], p.shape[1], self.head_dim), np.float32)
        heads_product(np.ascontiguousarray(p),
                     self.values[:, :, start:start + p.shape[2]], out)
        return out


@njit(cache=True, nogil=True, parallel=True)
def pack_context(k, v, keys, values, threads):
    """`F32Context.pack` into zeroed keys and values: each key/value head on its own thread
    with `threads`."""
    if threads:
        for g in prange(k.shape[1]):
            pack_head(k, v, keys[g], values[g], g)
    else:
        for g in range(k.shape[1]):
            pack_head(k, v, keys[g], values[g], g)


@njit(cache=True, nogil=True, inline="always")
def pack_head(k, v, keys, values, g):
    """Head g: key t in lane t % BLOCK of its block (a key is an output), value dimension d in
    lane d % BLOCK of its block (a position is a k)."""
    c, head_dim = k.shape[0], k.shape[2]
    for t in range(c):
        block, j = keys[t // BLOCK], t % BLOCK
        for d in range(head_dim):
            block[d, j] = k[t, g, d]
        for d in range(head_dim):
            values[d // BLOCK, t, d % BLOCK] = v[t, g, d]


@njit(cache=True, nogil=True, parallel=True)
def heads_product(x, wp, out):
    """out[g] = x[g] @ w_g.T for each head g, w_g packed as wp[g] [blocks, K, BLOCK] (a view:
    each head's blocks evenly spaced), out [heads, M, N] C-contiguous: `bf16_attention`'s
    `heads_matmul` on these panels, jobs (a head's chunk of blocks) claimed as the threads go.
    (The chunk function passed as an argument instead cost a slow dispatch per call.)"""
    n_heads, n_blocks = wp.shape[0], wp.shape[1]
    step, chunks = split_chunks(n_blocks, TILE_BLOCKS)
    jobs = n_heads * chunks
    if not on_threads(x.shape[1] * x.shape[2] * n_blocks * BLOCK * n_heads):
        for job in range(jobs):
            start = job % chunks * step
            head_chunk(x, wp, out, job // chunks, start, min(n_blocks, start + step))
        return
    taken = np.zeros(1, np.intp)
    for _ in prange(jobs):  # each thread claims jobs while any are left (`claim`)
        job = claim(taken)
        while job < jobs:
            start = job % chunks * step
            head_chunk(x, wp, out, job // chunks, start, min(n_blocks, start + step))
            job = claim(taken)


@njit(cache=True, nogil=True)
def head_chunk(x, wp, out, g, start, end):
    """out[g][:, blocks start:end] by `product_at` panels (`tiling.tile_blocks`)."""
    tile_blocks(product_at, TILE_ROWS, TILE_BLOCKS, TILE_BLOCKS, x[g], wp[g], out[g], start,
                end, NO_BIAS, False)


@njit(cache=True, nogil=True)
def product_at(rows, blocks, x, wp, out, r, b, acc, bias, accumulate):
    """`linear.packed_at` on wp's own strides (k is wp.shape[1]), no bias or residual: a whole
    tile's sums straight into out's rows, an edge tile's through acc."""
    first = b * BLOCK
    cols = min(blocks * BLOCK, out.shape[1] - first)
    x_at, w_at = x.ctypes.data + r * x.strides[0], wp.ctypes.data + b * wp.strides[0]
    if cols == blocks * BLOCK:
        broadcast_tile(BLOCK, rows, blocks, 4, x_at, x.strides[0], w_at, wp.strides[1],
                       wp.strides[0], wp.shape[1], out.ctypes.data + r * out.strides[0]
                       + first * 4, out.strides[0])
        return
    broadcast_tile(BLOCK, rows, blocks, 4, x_at, x.strides[0], w_at, wp.strides[1],
                   wp.strides[0], wp.shape[1], acc.ctypes.data, blocks * BLOCK * 4)
    for i in range(rows):
        row, at = out[r + i], i * blocks * BLOCK
        for j in range(cols):
            row[first + j] = acc[at + j]


def compile_f32_attention() -> None:
    """Compiles (or loads from numba's cache) the packing and both products, on one thread and
    on all, for the layouts a step passes: a context gathered (contiguous) or a view of the
    step's fused projection (strided), and keys and values read whole or from a later block."""
    q = np.zeros((2, 3, 2), np.float32)
    for k in (np.zeros((40, 2, 2), np.float32), np.zeros((40, 2, 4), np.float32)[:, :, :2]):
        context = F32Context.pack(k, k)
        for start in (0, BLOCK):
            context.values_times(context.scores(q, start, 40), start)
        for threads in (False, True):
            pack_context(k, k, context.keys, context.values, threads)
