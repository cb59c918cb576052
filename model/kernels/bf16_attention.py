"""Prefill attention's two products in bfloat16 (`vdpbf16ps`), for models whose weights run on
the avx512bf16 kernel: a `BF16Context` holds a context's keys and values, and gives the scores
(Q K^T) and the output (P V) of `attention.causal_attention`'s blocks of queries.

A layer attends this way when its projection's weights are packed for that kernel
(`quant.attends_in_bf16`): a bfloat16 model on a CPU with AVX512_BF16, where the loader packs
them at start-up (`linear.host_packs_bfloat16`); float32 and int8 models, and bfloat16 ones
elsewhere, keep attention's float32 products, as do contexts shorter than
`attention.BF16_MIN_CONTEXT` keys, where packing and the threads' wake-up cost more than the
products save. The inputs are rounded to bfloat16 (to nearest, ties to even:
`bf16_gemm.round_bits`): the queries (already scaled by 1/sqrt(head_dim)) and keys for the
scores, the softmax's probabilities and the values for the output. Each product of two bfloat16
is exact in float32 and the sums are float32, so the only new error is those roundings, a
relative 2**-9 at most per element, as for the linear layers' activations: docs/performance.md
measures what it does to a model's logits.

The products are the linear layers' register panels (`bf16_dot.bf16_panel`, walked by
`tiling.tile_blocks`), once per key/value head, with the context packed once per call the way
the loader packs a weight matrix (`quant.pack_bfloat16`): the keys as the outputs of the scores,
the value dimensions as those of the output, the positions as its pairs. A block of queries
reads the keys from a whole block of 16 on (`BF16Context.start`): the softmax's mask gives the
extra ones probability 0. The heads' panels are shared out among numba's threads as they claim
them (`parallel.claim`). `reference_scores` and `reference_values` are the plain versions: numpy
on the same rounded values, summed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.bf16_dot import bf16_panel
from nanovllm.model.kernels.bf16_gemm import (
    ONE_ROW_BLOCKS,
    TILE_BLOCKS,
    TILE_ROWS,
    round_bits,
    round_vector,
)
from nanovllm.model.kernels.parallel import chunk_counter, claim, on_threads, split_chunks
from nanovllm.model.kernels.shared import NO_BIAS
from nanovllm.model.kernels.tiling import tile_blocks
from nanovllm.model.weights.quant import BLOCK, PAIR, round_to_bfloat16


@dataclass(slots=True)
class BF16Context:
    """A context's keys and values k, v [c, Hkv, D] rounded to bfloat16 and packed (compiled
    only): keys [Hkv, key blocks, pairs of D, BLOCK, PAIR], values [Hkv, blocks of D, pairs of
    c, BLOCK, PAIR], zero beyond c and D."""
    keys: np.ndarray
    values: np.ndarray
    head_dim: int

    @classmethod
    def pack(cls, k: np.ndarray, v: np.ndarray) -> BF16Context:
        c, n_kv, head_dim = k.shape
        keys = np.empty((n_kv, blocks_of(c), pairs_of(head_dim), BLOCK, PAIR), np.uint16)
        values = np.empty((n_kv, blocks_of(head_dim), blocks_of(c) * BLOCK // PAIR, BLOCK, PAIR),
                          np.uint16)
        pack_context(k, v, pair_words(keys), pair_words(values))
        return cls(keys, values, head_dim)

    @staticmethod
    def start(first: int) -> int:
        """Where a block of queries whose earliest visible key is `first` reads keys from."""
        return first - first % BLOCK

    def scores(self, q: np.ndarray, start: int, end: int) -> np.ndarray:
        """q [Hkv, M, D] (each key/value head's query rows) against keys start:end (start a
        `start`) -> [Hkv, M, end - start] float32, q rounded to bfloat16."""
        qb = np.empty((q.shape[0], q.shape[1], self.keys.shape[2] * PAIR), np.uint16)
        round_heads(q, qb, on_threads(q.size))
        out = np.empty((q.shape[0], q.shape[1], end - start), np.float32)
        heads_matmul(qb, self.keys[:, start // BLOCK:blocks_of(end)], out)
        return out

    def values_times(self, pb: np.ndarray, start: int) -> np.ndarray:
        """pb [Hkv, M, 2 * pairs] (`round_probabilities`: probabilities of positions start:start
        + 2 * pairs as bfloat16 bits, start a `start`) times those positions' values -> [Hkv,
        M, D] float32."""
        pairs = pb.shape[2] // PAIR
        out = np.empty((pb.shape[0], pb.shape[1], self.head_dim), np.float32)
        heads_matmul(pb, self.values[:, :, start // PAIR:start // PAIR + pairs], out)
        return out


def round_probabilities(p: np.ndarray) -> np.ndarray:
    """p [Hkv, M, n] float32 as `BF16Context.values_times` takes them: bfloat16 bits [Hkv, M,
    n rounded up to a pair], zero beyond n."""
    pb = np.empty((*p.shape[:-1], pairs_of(p.shape[-1]) * PAIR), np.uint16)
    round_heads(np.ascontiguousarray(p), pb, on_threads(p.size))
    return pb


def reference_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """What `BF16Context.scores` computes for q [Hkv, M, D] and keys k [n, Hkv, D], in plain
    numpy (float64 sums of the rounded values)."""
    qr, kr = (round_to_bfloat16(a).astype(np.float64) for a in (q, k))
    return (qr @ kr.transpose(1, 2, 0)).astype(np.float32)


def reference_values(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """What `BF16Context.values_times` computes for `round_probabilities(p)` ([Hkv, M, n]) and
    values v [n, Hkv, D], in plain numpy (float64 sums of the rounded values)."""
    pr, vr = (round_to_bfloat16(a).astype(np.float64) for a in (p, v))
    return (pr @ vr.transpose(1, 0, 2)).astype(np.float32)


def blocks_of(n: int) -> int:
    return -(-n // BLOCK)


@njit(cache=True, nogil=True, inline="always")
def pairs_of(n):
    """Pairs that hold n values (also called from `pack_head`)."""
    return (n + PAIR - 1) // PAIR


# --------------------------------------------------------------------------- rounding, packing


@njit(cache=True, nogil=True)
def pack_context(k, v, keys, values):
    """`BF16Context.pack`, keys and values seen as uint32 words, a pair each (`pair_words`), on
    the calling thread (the threads' wake-up cost more than packing a few heads)."""
    for g in range(k.shape[1]):
        pack_head(k, v, keys[g], values[g], g)


def pair_words(packed: np.ndarray) -> np.ndarray:
    """A packed array [..., PAIR] of bfloat16 bits as one uint32 word a pair [...]."""
    return packed.view(np.uint32).reshape(packed.shape[:-1])


@njit(cache=True, nogil=True, inline="always")
def word(lo, hi):
    """Two float32 as the bfloat16 pair (lo first in memory) of one uint32 word."""
    return np.uint32(round_bits(lo)) | (np.uint32(round_bits(hi)) << np.uint32(16))


@njit(cache=True, nogil=True)
def pack_head(k, v, keys, values, g):
    """Head g of k and v packed into the words keys [key blocks, pairs of D, BLOCK] (a key is an
    output) and values [blocks of D, pairs of c, BLOCK] (a position is a k), zero beyond.
    Compiled on its own (not inlined): inside a parallel kernel numba makes each of its zeroing
    slices a parallel loop of its own, one wake-up of the threads per position."""
    c, head_dim = k.shape[0], k.shape[2]
    half, zero = head_dim // PAIR, np.float32(0.0)
    for t in range(c):  # a key's pairs of dimensions, in its lane j of its block
        block, j, row = keys[t // BLOCK], t % BLOCK, k[t, g]
        for p in range(half):
            block[p, j] = word(row[PAIR * p], row[PAIR * p + 1])
        if head_dim % PAIR:
            block[half, j] = word(row[head_dim - 1], zero)
    for t in range(c, keys.shape[0] * BLOCK):
        keys[t // BLOCK, :, t % BLOCK] = 0
    values[:, pairs_of(c):] = 0
    for p in range(pairs_of(c)):  # a pair of positions, in every block of dimensions
        first, second = v[PAIR * p, g], v[min(PAIR * p + 1, c - 1), g]
        last = PAIR * p + 1 == c  # (an odd context's last position pairs with a zero)
        for b in range(values.shape[0]):
            lanes = values[b, p]
            for j in range(min(BLOCK, head_dim - b * BLOCK)):
                d = b * BLOCK + j
                lanes[j] = word(first[d], zero if last else second[d])
            lanes[head_dim - b * BLOCK:] = 0


@njit(cache=True, nogil=True, parallel=True)
def round_heads(x, out, threads):
    """out[g, r, :K] = x[g, r] rounded to bfloat16 bits, zero beyond: x float32 [H, M, K]
    (a view or not), out uint16 [H, M, >= K]; rows on all threads with `threads`."""
    rows = x.shape[0] * x.shape[1]
    if threads:
        for job in prange(rows):
            round_vector(x[job // x.shape[1], job % x.shape[1]],
                         out[job // x.shape[1], job % x.shape[1]])
    else:
        for job in range(rows):
            round_vector(x[job // x.shape[1], job % x.shape[1]],
                         out[job // x.shape[1], job % x.shape[1]])


# --------------------------------------------------------------------------- products


@njit(cache=True, nogil=True, parallel=True)
def heads_matmul(xb, wp, out):
    """out[g] = xb[g] @ w_g.T for each head g (`bf16_gemm.matmul_bf16` per head, with no bias):
    xb uint16 [heads, M, 2 * pairs], wp [heads, blocks, pairs, BLOCK, PAIR] (a view: each
    head's blocks evenly spaced), out float32 [heads, M, N] C-contiguous. A job is one head's
    chunk of blocks, claimed by the threads as they go."""
    n_heads, n_blocks = wp.shape[0], wp.shape[1]
    step, chunks = split_chunks(n_blocks, TILE_BLOCKS)
    jobs = n_heads * chunks
    if not on_threads(xb.shape[1] * xb.shape[2] * n_blocks * BLOCK * n_heads):
        for job in range(jobs):
            head_blocks(xb, wp, out, job // chunks, job % chunks * step, step)
        return
    taken = chunk_counter()
    for _ in prange(jobs):  # each thread claims jobs while any are left (`claim`)
        job = claim(taken)
        while job < jobs:
            head_blocks(xb, wp, out, job // chunks, job % chunks * step, step)
            job = claim(taken)


@njit(cache=True, nogil=True)
def head_blocks(xb, wp, out, g, start, step):
    """out[g][:, blocks start:start + step] by `product_at` tiles (`tiling.tile_blocks`)."""
    tile_blocks(product_at, TILE_ROWS, TILE_BLOCKS, ONE_ROW_BLOCKS, xb[g], wp[g], out[g], start,
                min(wp.shape[1], start + step), NO_BIAS, False)


@njit(cache=True, nogil=True)
def product_at(rows, blocks, xb, wp, out, r, b, acc, bias, accumulate):
    """`bf16_gemm.bf16_at` with no bias or residual, on wp's own strides: a whole tile's sums
    go straight into out's rows (the scores' dot products are short, head_dim, and a copy
    through acc cost about as much as they did), an edge tile's through acc."""
    pairs, first = wp.shape[1], b * BLOCK
    cols = min(blocks * BLOCK, out.shape[1] - first)
    x_at, w_at = xb.ctypes.data + r * xb.strides[0], wp.ctypes.data + b * wp.strides[0]
    if cols == blocks * BLOCK:
        bf16_panel(rows, blocks, x_at, xb.strides[0], w_at, wp.strides[0], pairs,
                   out.ctypes.data + r * out.strides[0] + first * 4, out.strides[0])
        return
    bf16_panel(rows, blocks, x_at, xb.strides[0], w_at, wp.strides[0], pairs, acc.ctypes.data,
               blocks * BLOCK * 4)
    for i in range(rows):
        row, at = out[r + i], i * blocks * BLOCK
        for j in range(cols):
            row[first + j] = acc[at + j]


def compile_bf16_attention() -> None:
    """Compiles (or loads from numba's cache) the packing, the rounding (on one thread and on
    all) and the products."""
    x = np.zeros((1, 1, 1), np.float32)
    context = BF16Context.pack(x, x)
    context.values_times(round_probabilities(context.scores(x, 0, 1)), 0)
    strided = np.zeros((2, 3, 1), np.float32)[:, :1]  # (k and v: views of the projection)
    BF16Context.pack(strided, strided)
    # A prompt's queries as a view ([H, n, D] of the [n, H, D] projection), against keys read
    # from a later block (a view of the packed keys) once there are two key/value heads.
    k = np.zeros((2 * BLOCK, 2, 2), np.float32)
    BF16Context.pack(k, k).scores(np.zeros((2, 2, 2), np.float32).transpose(1, 0, 2), BLOCK,
                                  2 * BLOCK)
    for threads in (False, True):
        round_heads(x, np.empty((1, 1, PAIR), np.uint16), threads)
        round_heads(strided, np.empty((2, 1, PAIR), np.uint16), threads)
