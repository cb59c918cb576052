"""Bidirectional multi-head attention over a batch of whole texts (an encoder's attention).

A step's texts lie one after another in the flat token batch, text i in rows
[starts[i], starts[i + 1]); each token attends to every token of its own text and to nothing
else, so no mask is built and no padding computed. `reference_bert.self_attention` is the
one-text version.

`encoder_attention_` is a compiled kernel: each (text, head) is one job for numba's threads,
which reads its queries, keys and values where the fused QKV projection wrote them and makes
the head's output a block of queries at a time: scores, softmax and the probabilities times the
values, all in cache, in register tiles (`f32_dot.broadcast_tile`). It never builds a
[texts, H, t, t] score tensor, nor the transposed copies numpy's batched matmul needs.
`encoder_attention_numpy` is the same computation in numpy (texts of equal length batched into
one matmul), the one the kernel is tested against and the one run when numba's JIT is off.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange

from nanovllm.model.f32_dot import broadcast_tile
from nanovllm.model.kernels import KERNEL_MATH, claim, exp32_within, on_threads, softmax_

# Below this exponent `kernels.exp32` gives 0 (e**t leaves float32's normal range).
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
    (`kernels.claim`: texts may differ in length)."""
    texts, e = starts.shape[0] - 1, out.shape[1]
    longest, work = 0, 0
    for i in range(texts):
        t = starts[i + 1] - starts[i]
        longest = max(longest, t)
        work += t * t
    taken = np.zeros(1, np.intp)
    if on_threads(work * e):
        for _ in prange(texts * n_head):
            attend_jobs(qkv, bias, n_head, starts, out, taken, longest)
    else:
        attend_jobs(qkv, bias, n_head, starts, out, taken, longest)


# The register tile of both products (`f32_dot.broadcast_tile`): TILE_ROWS keys (or value
# dims) by TILE_VECTORS vectors of TILE_WIDTH queries. Its 4 x 2 sums, two loads and a
# broadcast fit the 16 vector registers of AVX2.
TILE_ROWS, TILE_VECTORS, TILE_WIDTH = 4, 2, 8
TILE_COLS = TILE_VECTORS * TILE_WIDTH  # queries a block


@njit(cache=True, nogil=True, inline="always")
def round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


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
    tiles (`attend_head`)."""
    jobs = (starts.shape[0] - 1) * n_head
    job = claim(taken)
    if job >= jobs:
        return
    head_dim = out.shape[1] // n_head
    keys = np.zeros((round_up(longest, TILE_ROWS), head_dim), np.float32)
    queries_t = np.zeros((head_dim, round_up(longest, TILE_COLS)), np.float32)
    values_t = np.zeros((round_up(head_dim, TILE_ROWS), longest), np.float32)
    scores_t = np.empty((keys.shape[0], TILE_COLS), np.float32)
    sums = np.empty((2, TILE_COLS), np.float32)
    acc = np.empty((TILE_ROWS, TILE_COLS), np.float32)
    while job < jobs:
        text, h = job // n_head, job % n_head
        attend_head(qkv, bias, starts[text], starts[text + 1], h * head_dim, out, keys,
                    queries_t, values_t, scores_t, sums, acc)
        job = claim(taken)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def attend_head(qkv, bias, a, b, col, out, keys, queries_t, values_t, scores_t, sums, acc):
    """The head in columns col ... col + D (of Q, K and V) of the text in rows [a, b).

    Worked transposed, TILE_COLS queries at a time, so that every step runs along queries in
    vectors: the block's scores against every key as scores_t [keys, queries] (register tiles
    of TILE_ROWS keys, stored where they belong), each query's softmax down its column (lane by
    lane: the max and the sum need no reduction across a vector), and out^T = V^T P^T (tiles of
    TILE_ROWS value dims), divided by the sums as it is stored. Queries (scaled, transposed),
    keys and values (transposed) are copied into scratch first, zero-padded to whole tiles; the
    padding's scores and outputs are computed and never read."""
    t, e, head_dim = b - a, out.shape[1], keys.shape[1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    keys[t:] = 0.0
    queries_t[:, t:] = 0.0
    for j in range(t):
        for d in range(head_dim):
            queries_t[d, j] = biased(qkv[a + j, col + d], bias, col + d) * scale
            keys[j, d] = biased(qkv[a + j, e + col + d], bias, e + col + d)
            values_t[d, j] = biased(qkv[a + j, 2 * e + col + d], bias, 2 * e + col + d)
    q_cols, k_rows, v_rows = queries_t.shape[1], keys.shape[0], values_t.shape[0]
    top, total = sums[0], sums[1]
    for i in range(0, t, TILE_COLS):
        for j in range(0, k_rows, TILE_ROWS):
            broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4,
                           keys.ctypes.data + j * head_dim * 4, head_dim * 4,
                           queries_t.ctypes.data + i * 4, q_cols * 4, TILE_WIDTH * 4,
                           head_dim, scores_t.ctypes.data + j * TILE_COLS * 4)
        softmax_columns_(scores_t[:t], top, total)
        for d in range(0, v_rows, TILE_ROWS):
            broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4,
                           values_t.ctypes.data + d * values_t.shape[1] * 4,
                           values_t.shape[1] * 4, scores_t.ctypes.data, TILE_COLS * 4,
                           TILE_WIDTH * 4, t, acc.ctypes.data)
            for c in range(min(TILE_COLS, t - i)):
                o = out[a + i + c]
                for r in range(min(TILE_ROWS, head_dim - d)):
                    o[col + d + r] = acc[r, c] * total[c]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def softmax_columns_(s, top, inv_total):
    """Each column of s ([keys, TILE_COLS]) to e**(s - its max) in place, and inv_total the
    columns' 1 / sums. `exp32_within` on the bounded exponent, 0 where `kernels.exp32` gives 0
    (a select, not a branch), so that the pass vectorizes."""
    top[:] = s[0]
    for j in range(1, s.shape[0]):
        for c in range(TILE_COLS):
            top[c] = max(top[c], s[j, c])
    inv_total[:] = 0.0
    for j in range(s.shape[0]):
        for c in range(TILE_COLS):
            x = s[j, c] - top[c]
            y = exp32_within(max(x, EXP_MIN))
            y = y if x >= EXP_MIN else np.float32(0.0)
            s[j, c] = y
            inv_total[c] += y
    for c in range(TILE_COLS):
        inv_total[c] = np.float32(1.0) / inv_total[c]


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
