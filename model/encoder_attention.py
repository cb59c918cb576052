"""Bidirectional multi-head attention over a batch of whole texts (an encoder's attention).

A step's texts lie one after another in the flat token batch, text i in rows
[starts[i], starts[i + 1]); each token attends to every token of its own text and to nothing
else, so no mask is built and no padding computed. `reference_bert.self_attention` is the
one-text version.

`encoder_attention_` is a compiled kernel: each (text, head) is one job for numba's threads,
which reads its queries, keys and values where the fused QKV projection wrote them (strided
views, no copies), and makes one query row at a time: its scores against the head's keys, their
softmax and the probabilities times the values, all in cache. It never builds a [texts, H, t, t]
score tensor, nor the transposed copies numpy's batched matmul needs. `encoder_attention_numpy`
is the same computation in numpy (texts of equal length batched into one matmul), the one the
kernel is tested against and the one run when numba's JIT is off.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange

from nanovllm.model.f32_dot import broadcast_tile
from nanovllm.model.kernels import KERNEL_MATH, claim, exp32_within, on_threads, softmax_

# Below this exponent `kernels.exp32` gives 0 (e**t leaves float32's normal range).
EXP_MIN = np.float32(-87.0)


def encoder_attention(qkv: np.ndarray, n_head: int, starts: np.ndarray) -> np.ndarray:
    """qkv: [n, 3E] float32, C-contiguous, the fused projection's output (columns Q | K | V,
    head h of each in columns h * D ... (h + 1) * D); starts: [texts + 1] row offsets.
    Returns the heads' outputs side by side, [n, E]."""
    if config.DISABLE_JIT:  # as plain Python the kernel's loops would take minutes
        return encoder_attention_numpy(qkv, n_head, starts)
    out = np.empty((qkv.shape[0], qkv.shape[1] // 3), np.float32)
    encoder_attention_(np.ascontiguousarray(qkv), n_head, np.asarray(starts, np.int64), out)
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def encoder_attention_(qkv, n_head, starts, out):
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
            attend_jobs(qkv, n_head, starts, out, taken, longest)
    else:
        attend_jobs(qkv, n_head, starts, out, taken, longest)


# The register tile of both products (`f32_dot.broadcast_tile`): TILE_ROWS rows of queries or
# probabilities by TILE_VECTORS vectors of TILE_WIDTH lanes (keys, or a head's values). Its
# 4 x 2 sums, two loads and a broadcast fit the 16 vector registers of AVX2.
TILE_ROWS, TILE_VECTORS, TILE_WIDTH = 4, 2, 8
TILE_COLS = TILE_VECTORS * TILE_WIDTH


@njit(cache=True, nogil=True, inline="always")
def round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def attend_jobs(qkv, n_head, starts, out, taken, longest):
    """Claims (text, head) jobs until none are left, with scratch of its own, padded to whole
    tiles (`attend_head`)."""
    jobs = (starts.shape[0] - 1) * n_head
    job = claim(taken)
    if job >= jobs:
        return
    head_dim = out.shape[1] // n_head
    queries = np.zeros((round_up(longest, TILE_ROWS), head_dim), np.float32)
    keys_t = np.zeros((head_dim, round_up(longest, TILE_COLS)), np.float32)
    values = np.zeros((longest, round_up(head_dim, TILE_COLS)), np.float32)
    probs = np.empty((TILE_ROWS, keys_t.shape[1]), np.float32)
    tops = np.empty((TILE_ROWS, TILE_COLS), np.float32)
    acc = np.empty((TILE_ROWS, TILE_COLS), np.float32)
    while job < jobs:
        text, h = job // n_head, job % n_head
        attend_head(qkv, starts[text], starts[text + 1], h * head_dim, out, queries, keys_t,
                    values, probs, tops, acc)
        job = claim(taken)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def attend_head(qkv, a, b, col, out, queries, keys_t, values, probs, tops, acc):
    """The head in columns col ... col + D (of Q, K and V) of the text in rows [a, b).

    Its queries (scaled), keys (transposed: [D, t]) and values are copied into scratch first,
    zero-padded to whole tiles. Then TILE_ROWS queries at a time: their scores against every
    key (`score_rows`), their exponentials (`exp_row_`), and those times the values, a tile of
    TILE_COLS value columns at a time, divided by each row's sum as they are stored. The
    padding's scores and outputs are computed and never read."""
    t, e, head_dim = b - a, out.shape[1], queries.shape[1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    queries[t:] = 0.0
    keys_t[:, t:] = 0.0
    for j in range(t):
        for d in range(head_dim):
            queries[j, d] = qkv[a + j, col + d] * scale
            keys_t[d, j] = qkv[a + j, e + col + d]
            values[j, d] = qkv[a + j, 2 * e + col + d]
    for i in range(0, t, TILE_ROWS):
        score_rows(queries, keys_t, i, probs, tops, acc)
        rows = min(TILE_ROWS, t - i)
        for r in range(rows):
            tops[r, 0] = np.float32(1.0) / exp_row_(probs[r, :t], tops[r])
        for d in range(0, values.shape[1], TILE_COLS):
            broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4, probs.ctypes.data,
                           probs.shape[1] * 4, values.ctypes.data + d * 4, values.shape[1] * 4,
                           TILE_WIDTH * 4, t, acc.ctypes.data)
            for r in range(rows):
                inv_total, o = tops[r, 0], out[a + i + r]
                for c in range(min(TILE_COLS, head_dim - d)):
                    o[col + d + c] = acc[r, c] * inv_total


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def score_rows(queries, keys_t, i, probs, tops, acc):
    """probs[r] = queries[i + r] . keys_t (every key column) for r < TILE_ROWS, and tops[r] the
    largest of them lane by lane (an elementwise max, which vectorizes where a max over a row
    does not)."""
    head_dim, cols = queries.shape[1], keys_t.shape[1]
    tops[:] = -np.inf
    for j in range(0, cols, TILE_COLS):
        broadcast_tile(TILE_WIDTH, TILE_ROWS, TILE_VECTORS, 4,
                       queries.ctypes.data + i * head_dim * 4, head_dim * 4,
                       keys_t.ctypes.data + j * 4, cols * 4, TILE_WIDTH * 4, head_dim,
                       acc.ctypes.data)
        for r in range(TILE_ROWS):
            for c in range(TILE_COLS):
                x = acc[r, c]
                probs[r, j + c] = x
                tops[r, c] = x if x > tops[r, c] else tops[r, c]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def exp_row_(row, tops):
    """row = e**(row - max(row)) in place, returning the sum; max(row) is the largest of tops
    (lane maxima of row and of the zero-padded keys' scores past it: at least max(row), so no
    exponent rises past 0). `exp32_within` on the bounded exponent, 0 where `kernels.exp32`
    gives 0 (a select, not a branch): one vectorized pass."""
    top = tops[0]
    for c in range(1, tops.shape[0]):
        top = max(top, tops[c])
    total = np.float32(0.0)
    for j in range(row.shape[0]):
        x = row[j] - top
        y = exp32_within(max(x, EXP_MIN))
        y = y if x >= EXP_MIN else np.float32(0.0)
        row[j] = y
        total += y
    return total


def compile_encoder_attention() -> None:
    """Compiles the kernel now (or loads it from numba's cache on disk; nothing to do with the
    JIT off)."""
    encoder_attention(np.zeros((1, 3), np.float32), 1, np.array([0, 1]))


def encoder_attention_numpy(qkv: np.ndarray, n_head: int, starts: np.ndarray) -> np.ndarray:
    """`encoder_attention` in numpy: the texts of each run of equal length in one batched
    matmul."""
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
