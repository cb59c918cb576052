"""Bidirectional multi-head attention over a batch of whole texts (an encoder's attention).

A step's texts lie one after another in the flat token batch, text i in rows
[starts[i], starts[i + 1]); each token attends to every token of its own text and to nothing
else, so no mask is built and no padding computed. `bert_reference.self_attention` is the
one-text version.

`encoder_attention_` is a compiled kernel: each (text, head) is one job for numba's threads,
which copies its queries, keys and values out of the fused QKV projection's rows (keys
transposed: the one copy that is not row for row) and makes the head's output a block of
queries at a time: scores with keys along the vector lanes, each row's softmax along them, and
the probabilities times the values with value dims along the lanes, all in cache, in register
tiles (`f32_dot.broadcast_tile`). While it works on one head it asks for the next one's rows,
which lie in more memory than the nearest caches hold. It never builds a [texts, H, t, t]
score tensor.
`encoder_attention_numpy` is the same computation in numpy (texts of equal length batched into
one matmul), the one the kernel is tested against and the one run when numba's JIT is off.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange

from nanovllm.model.kernels.f32_dot import broadcast_tile
from nanovllm.model.kernels.parallel import chunk_counter, claim, on_threads
from nanovllm.model.kernels.shared import (
    KERNEL_MATH,
    exp32_within,
    prefetch_lines,
    round_up,
    softmax_,
)

# Below this exponent `shared.exp32` gives 0 (e**t leaves float32's normal range).
EXP_MIN = np.float32(-87.0)


def encoder_attention(qkv: np.ndarray, n_head: int, starts: np.ndarray,
                      bias: np.ndarray | None = None) -> np.ndarray:
    """qkv: [n, 3E] float32, C-contiguous, the fused projection's output (columns Q | K | V,
    head h of each in columns h * D ... (h + 1) * D); starts: [texts + 1] row offsets; bias:
    [3E], the projection's bias, or None (added as the kernel reads qkv, where a pass of its
    own would read and write all of qkv once more; without one, numba compiles the kernel with
    no addition at all: `biased`). Returns the heads' outputs side by side, [n, E]."""
    if config.DISABLE_JIT:  # as plain Python the kernel's loops would take minutes
        return encoder_attention_numpy(qkv, n_head, starts, bias)
    out = np.empty((qkv.shape[0], qkv.shape[1] // 3), np.float32)
    encoder_attention_(np.ascontiguousarray(qkv), bias, n_head, np.asarray(starts, np.int64), out)
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def encoder_attention_(qkv, bias, n_head, starts, out):
    """out[rows of text i, head h] = softmax(q k^T / sqrt(D)) v over text i's rows, for every
    text and head; the (text, head) jobs are claimed by numba's threads as they finish one
    (`parallel.claim`: texts may differ in length)."""
    texts, e = starts.shape[0] - 1, out.shape[1]
    longest, work = 0, 0
    for i in range(texts):
        t = starts[i + 1] - starts[i]
        longest = max(longest, t)
        work += t * t
    taken = chunk_counter()
    if on_threads(work * e):
        for _ in prange(texts * n_head):
            attend_jobs(qkv, bias, n_head, starts, out, taken, longest)
    else:
        attend_jobs(qkv, bias, n_head, starts, out, taken, longest)


# The register tile of both products (`f32_dot.broadcast_tile`): TILE_ROWS queries by
# TILE_VECTORS vectors of TILE_WIDTH keys (scores) or value dims (outputs). Its 4 x 2 sums, two
# loads and a broadcast fit the 16 vector registers of AVX2.
TILE_ROWS, TILE_VECTORS, TILE_WIDTH = 4, 2, 8
TILE_COLS = TILE_VECTORS * TILE_WIDTH  # keys (or value dims) a tile


@njit(cache=True, nogil=True, inline="always")
def biased(value, bias, i):
    """value + bias[i]; value itself where bias is None (numba compiles a kernel called with
    None without the branch, and without the bias argument's reads)."""
    if bias is None:
        return value
    return value + bias[i]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def attend_jobs(qkv, bias, n_head, starts, out, taken, longest):
    """Claims (text, head) jobs until none are left, with scratch of its own, padded to whole
    tiles: the head's rows copied (`read_head`), then its queries a block at a time
    (`attend_block`). Meanwhile it asks for the rows of the job it claimed next, a share at
    each block (`fetch_share`): a head's rows are a few cache lines in each row of its text,
    in more memory than the caches nearest the core hold, and the copy would wait for each."""
    jobs = (starts.shape[0] - 1) * n_head
    job = claim(taken)
    if job >= jobs:
        return
    head_dim = out.shape[1] // n_head
    queries = np.zeros((round_up(longest, TILE_ROWS), head_dim), np.float32)
    keys_t = np.zeros((head_dim, round_up(longest, TILE_COLS)), np.float32)
    values = np.zeros((longest, round_up(head_dim, TILE_COLS)), np.float32)
    scores = np.zeros((TILE_ROWS, keys_t.shape[1]), np.float32)
    tops, totals = np.empty(TILE_COLS, np.float32), np.empty(TILE_ROWS, np.float32)
    acc = np.empty((TILE_ROWS, TILE_COLS), np.float32)
    while job < jobs:
        text, h = job // n_head, job % n_head
        a, b = starts[text], starts[text + 1]
        read_head(qkv, bias, a, b, h * head_dim, queries, keys_t, values)
        upcoming = claim(taken)
        blocks = round_up(b - a, TILE_ROWS) // TILE_ROWS
        for block in range(blocks):
            if upcoming < jobs:
                fetch_share(qkv, starts, n_head, head_dim, upcoming, block, blocks)
            attend_block(block * TILE_ROWS, b - a, queries, keys_t, values, scores, tops,
                         totals, acc, out[a:b, h * head_dim:(h + 1) * head_dim])
        job = upcoming


@njit(cache=True, nogil=True)
def fetch_share(qkv, starts, n_head, head_dim, job, share, shares):
    """Asks for the cache lines of share `share` of `shares` of a job's rows (`read_head`'s)."""
    text, col, e = job // n_head, job % n_head * head_dim, qkv.shape[1] // 3
    a, t = starts[text], starts[text + 1] - starts[text]
    for j in range(a + share * t // shares, a + (share + 1) * t // shares):
        for part in range(3):
            prefetch_lines(qkv.ctypes.data + (j * 3 * e + part * e + col) * 4, head_dim * 4)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def read_head(qkv, bias, a, b, col, queries, keys_t, values):
    """The head in columns col ... col + D (of Q, K and V) of the text in rows [a, b), biased,
    into scratch: queries [t, D] scaled by 1 / sqrt(D), values [t, D] and keys transposed,
    [D, t]. Row by row, each cache line of qkv read once, whole; through slices, whose loops
    vectorize where ones indexing qkv and the bias at an offset did not."""
    e, head_dim = qkv.shape[1] // 3, queries.shape[1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    q_at, k_at, v_at = col, e + col, 2 * e + col
    q_bias, k_bias = bias_part(bias, q_at, head_dim), bias_part(bias, k_at, head_dim)
    v_bias = bias_part(bias, v_at, head_dim)
    for j in range(b - a):
        row, query, value = qkv[a + j], queries[j], values[j]
        q, k, v = row[q_at:q_at + head_dim], row[k_at:k_at + head_dim], row[v_at:v_at + head_dim]
        for d in range(head_dim):
            query[d] = biased(q[d], q_bias, d) * scale
        for d in range(head_dim):
            value[d] = biased(v[d], v_bias, d)
        for d in range(head_dim):
            keys_t[d, j] = biased(k[d], k_bias, d)


@njit(cache=True, nogil=True, inline="always")
def bias_part(bias, start, n):
    """bias[start:start + n], or None where bias is None."""
    if bias is None:
        return None
    return bias[start:start + n]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def attend_block(i, t, queries, keys_t, values, scores, tops, totals, acc, out):
    """out[i:i + TILE_ROWS] ([t, D] in all) = softmax(queries keys^T) values for the block of
    queries from i, every step in vectors along the rows it reads: the block's scores against
    every key as scores [queries, keys] (register tiles of TILE_COLS keys, stored where they
    belong), each row's softmax along its keys (`softmax_block_`), and scores times values
    (tiles of TILE_COLS value dims), divided by the sums as it is stored. The scratch is padded
    to whole tiles; the padding's outputs are computed and never stored."""
    head_dim, k_cols, v_cols = queries.shape[1], keys_t.shape[1], values.shape[1]
    q_at = queries.ctypes.data + i * head_dim * 4
    for j in range(0, t, TILE_COLS):
        broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4, q_at, head_dim * 4,
                       keys_t.ctypes.data + j * 4, k_cols * 4, TILE_WIDTH * 4, head_dim,
                       scores.ctypes.data + j * 4, k_cols * 4)
    softmax_block_(scores, t, tops, totals)
    for d in range(0, head_dim, TILE_COLS):
        broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4, scores.ctypes.data, k_cols * 4,
                       values.ctypes.data + d * 4, v_cols * 4, TILE_WIDTH * 4, t,
                       acc.ctypes.data, TILE_COLS * 4)
        for r in range(min(TILE_ROWS, t - i)):
            for c in range(min(TILE_COLS, head_dim - d)):
                out[i + r, d + c] = acc[r, c] * totals[r]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def softmax_block_(s, t, tops, inv_totals):
    """Each row of s ([TILE_ROWS, keys in whole tiles], the first t real) to e**(s - its max)
    in place, 0 for the padding, and inv_totals the rows' 1 / sums. The max is taken lane by
    lane over tiles of TILE_COLS keys (tops), then across the lanes: a max along the row would
    be one scalar chain (LLVM vectorizes a max reduction only with no-NaN math). `exp32_within`
    on the bounded exponent, 0 where `shared.exp32` gives 0 (a select, not a branch), so that
    the pass vectorizes."""
    keys = round_up(t, TILE_COLS)
    for r in range(TILE_ROWS):
        for j in range(t, keys):
            s[r, j] = -np.inf
        for c in range(TILE_COLS):
            tops[c] = s[r, c]
        for j in range(TILE_COLS, keys, TILE_COLS):
            for c in range(TILE_COLS):
                tops[c] = max(tops[c], s[r, j + c])
        top = tops[0]
        for c in range(1, TILE_COLS):
            top = max(top, tops[c])
        total = np.float32(0.0)
        for j in range(keys):
            x = s[r, j] - top
            y = exp32_within(max(x, EXP_MIN))
            y = y if x >= EXP_MIN else np.float32(0.0)
            s[r, j] = y
            total += y
        inv_totals[r] = np.float32(1.0) / total


def compile_encoder_attention() -> None:
    """Compiles the kernel now (or loads it from numba's cache on disk; nothing to do with the
    JIT off), for a writable bias and a read-only (memory-mapped) one."""
    read_only = np.zeros(3, np.float32)
    read_only.flags.writeable = False
    for bias in (np.zeros(3, np.float32), read_only):
        encoder_attention(np.zeros((1, 3), np.float32), 1, np.array([0, 1]), bias)


def encoder_attention_numpy(qkv: np.ndarray, n_head: int, starts: np.ndarray,
                            bias: np.ndarray | None = None) -> np.ndarray:
    """`encoder_attention` in numpy: the texts of each run of equal length in one batched
    matmul."""
    if bias is not None:
        qkv = qkv + bias
    n, e = qkv.shape[0], qkv.shape[1] // 3
    q, k, v = (qkv[:, i * e:(i + 1) * e].reshape(n, n_head, e // n_head) for i in range(3))
    out = np.empty(q.shape, np.float32)
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    for first, last in equal_length_runs(starts):
        a, b = int(starts[first]), int(starts[last])
        r, t = last - first, (b - a) // (last - first)
        # [r, H, t, D]: r texts of t tokens each, copied contiguous (numpy's matmul reaches
        # BLAS only for contiguous matrices; a strided one takes its slow generic loop).
        qs, vs = (np.ascontiguousarray(x[a:b].reshape(r, t, *x.shape[1:]).transpose(0, 2, 1, 3))
                  for x in (q, v))
        kt = np.ascontiguousarray(k[a:b].reshape(r, t, *k.shape[1:]).transpose(0, 2, 3, 1))
        qs *= scale
        scores = softmax_(np.matmul(qs, kt))  # [r, H, t, t]
        out[a:b] = np.matmul(scores, vs).transpose(0, 2, 1, 3).reshape(b - a, *q.shape[1:])
    return out.reshape(n, e)


def equal_length_runs(starts: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) text indices of each run of adjacent texts with the same length."""
    lengths = np.diff(starts)
    runs, first = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or lengths[i] != lengths[first]:
            runs.append((first, i))
            first = i
    return runs
