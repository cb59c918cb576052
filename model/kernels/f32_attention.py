"""Prefill attention in float32 (float32 and int8 models): the jobs of `attention.attend_chunk`,
which attends a prompt's chunk (or a longer verify run) to its context in one compiled call,
every head and query at once, with float32 sums: softmax(Q K^T / sqrt(d) + causal mask) V, as
`gpt2_reference.attention`. (The kernel itself is in `model/layers/attention.py`: a request then
runs no code of this module that a trace of its Python calls would see.)

Not numpy's matmul per head: each is an OpenBLAS sgemm, which above its size threshold is split
in fixed halves over the cores, and with anything else running on the machine each waited for
its descheduled half, a dozen times a layer. Here the work is cut into jobs, a key/value head's
block of up to `JOB_ROWS` queries, claimed by numba's threads as they go (`parallel.claim`), in
one parallel region a call; a call with little work (`THREADS_MIN_WORK`) stays on the calling
thread.

Each query row is computed the same way whichever chunk, job or thread it is in (the engine
relies on it: a prompt's tail read back from the prefix cache gives the very logprobs of the
prompt computed whole): each of its scores is a dot product summed in one order, its softmax
runs over exactly the keys it sees, and its output sums the values of a run of keys in order,
where a key out of its sight has probability 0 and adds nothing.

Two ways to compute a job, chosen by the CPU and the head size alone (never by the chunk):
where this CPU runs the 16-lane register kernels (`linear.host_has_panels`) and a head has one
of `TILE_HEAD_DIMS` dimensions, `panel_rows` takes a few query rows at a time, their scores
against each key row in registers (`attention_dot.dot_rows`, as the decode tiles) and their
probabilities times the value rows (`f32_dot.broadcast_tile`); neither needs the keys or values
packed, so a short chunk against a long context costs no more than its products. Elsewhere
`plain_job` takes one query row at a time in numba's loops (also what `NUMBA_DISABLE_JIT=1`
runs).

numba's on-disk cache does not notice edits to this module in `attention.attend_chunk`: after
changing it, delete `model/layers/__pycache__/attention*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nanovllm.model.kernels.attention_dot import dot_rows
from nanovllm.model.kernels.f32_dot import broadcast_tile
from nanovllm.model.kernels.parallel import PARALLEL_MIN_WORK
from nanovllm.model.kernels.shared import KERNEL_MATH, softmax_row_
from nanovllm.model.weights.quant import BLOCK

# A job's queries: few enough that a chunk of a few hundred tokens makes several jobs a head
# for the threads to share.
JOB_ROWS = 64

# Below this many multiply-adds a call runs on the calling thread: a parallel region waits for
# every thread to reach its end, and on a loaded machine one the OS has parked takes
# milliseconds to get there, more than a chunk of a few dozen queries against a few hundred keys
# costs on one core (OpenBLAS keeps each such head's product on one thread too).
THREADS_MIN_WORK = PARALLEL_MIN_WORK << 7

# The register tiles: up to TILE_ROWS query rows against one key after another, their scores
# summed in registers (`attention_dot.dot_rows`); then up to TILE_ROWS rows of probabilities
# times the values, VALUE_VECTORS vectors of the head's dimensions at a time
# (`f32_dot.broadcast_tile`). Heads of 128 dimensions take 4 rows too: each key row, loaded
# once for more queries, outweighs the query vectors the registers cannot hold (measured on
# AVX-512: fewer rows were slower, more no faster).
TILE_ROWS, VALUE_VECTORS = 4, 4
# The head sizes the tiles take: one to eight vectors of BLOCK lanes.
TILE_HEAD_DIMS = (16, 32, 64, 128)


@njit(cache=True, nogil=True)
def causal_work(n, c, n_head, head_dim, window):
    """The multiply-adds of attending the last n of c positions (both products)."""
    if window > 0:
        seen = 0
        for i in range(n):
            seen += min(window, c - n + i + 1)
    else:
        seen = n * (c - n) + n * (n + 1) // 2
    return 2 * seen * n_head * head_dim


def job_kernel(panels: bool):
    """`run_job` with `panels` a constant: numba drops the other way before compiling, so that
    a CPU compiles only the way it runs (each closure is cached apart: its constant is part of
    numba's key)."""
    @njit(cache=True, nogil=True)
    def run_job(q, k, v, out, window, g, block):
        """The queries of block `block` (JOB_ROWS rows) of the query heads of key/value head g,
        by the register tiles (`panel_job`) or one query row at a time (`plain_job`)."""
        r0, r1 = block * JOB_ROWS, min(q.shape[0], (block + 1) * JOB_ROWS)
        if panels:
            panel_job(q, k, v, out, window, g, r0, r1)
        else:
            plain_job(q, k, v, out, window, g, r0, r1)
    return run_job


RUN_PANEL_JOB, RUN_PLAIN_JOB = job_kernel(True), job_kernel(False)


@njit(cache=True, nogil=True, inline="always")
def first_seen(position, window):
    """The first key a query at `position` sees."""
    return max(0, position + 1 - window) if window > 0 else 0


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def plain_job(q, k, v, out, window, g, r0, r1):
    """`run_job` one query row at a time: its scores as dot products, then its softmax, then
    its output as the sum of value rows weighted by their probabilities."""
    n, n_head, d = q.shape
    n_kv, c = k.shape[0], k.shape[1]
    group = n_head // n_kv
    scale = np.float32(1.0 / np.sqrt(d))
    row_scores = np.empty(c, np.float32)
    qs, acc = np.empty(d, np.float32), np.empty(d, np.float32)
    for h in range(g * group, (g + 1) * group):
        for i in range(r0, r1):
            hi = c - n + i + 1  # (the query's own position, plus one)
            lo = first_seen(hi - 1, window)
            for dd in range(d):
                qs[dd] = q[i, h, dd] * scale
            row = row_scores[:hi - lo]
            for j in range(hi - lo):
                dot = np.float32(0.0)
                for dd in range(d):
                    dot += qs[dd] * k[g, lo + j, dd]
                row[j] = dot
            softmax_row_(row)
            acc[:] = 0.0
            for j in range(hi - lo):
                p = row[j]
                for dd in range(d):
                    acc[dd] += p * v[g, lo + j, dd]
            out[i, h] = acc


@njit(cache=True, nogil=True)
def panel_job(q, k, v, out, window, g, r0, r1):
    """`run_job` on the register tiles, for a head of 16, 32, 64 or 128 dimensions (the number
    of vectors a compile-time constant, one branch each)."""
    d = q.shape[2]
    if d == 128:
        panel_heads(TILE_ROWS, 8, q, k, v, out, window, g, r0, r1)
    elif d == 64:
        panel_heads(TILE_ROWS, 4, q, k, v, out, window, g, r0, r1)
    elif d == 32:
        panel_heads(TILE_ROWS, 2, q, k, v, out, window, g, r0, r1)
    elif d == 16:
        panel_heads(TILE_ROWS, 1, q, k, v, out, window, g, r0, r1)
    else:
        plain_job(q, k, v, out, window, g, r0, r1)


@njit(cache=True, nogil=True)
def panel_heads(rows, vectors, q, k, v, out, window, g, r0, r1):
    """Each query head of key/value head g: its rows r0 ... r1 - 1, `rows` at a time, then one
    at a time, against the keys they see (`panel_rows`)."""
    n, n_head, d = q.shape
    n_kv, c = k.shape[0], k.shape[1]
    group = n_head // n_kv
    base = first_seen(c - n + r0, window)  # the job's first key
    scores = np.empty((rows, c - n + r1 - base), np.float32)
    qs = np.empty((rows, d), np.float32)  # (dot_rows reads its query rows side by side)
    for h in range(g * group, (g + 1) * group):
        r = r0
        while r + rows <= r1:
            panel_rows(rows, vectors, q, k, v, out, window, g, h, r, base, scores, qs)
            r += rows
        while r < r1:  # (one row at a time: each tile's size is compiled apart)
            panel_rows(1, vectors, q, k, v, out, window, g, h, r, base, scores, qs)
            r += 1


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def panel_rows(rows, vectors, q, k, v, out, window, g, h, r, base, scores, qs):
    """Query head h's rows r ... r + rows - 1 (rows and vectors compile-time constants): their
    scores against keys lo ... hi - 1, every key one of them sees; their softmax, each over its
    own keys, 0 for the others; their output, the probabilities times the values."""
    n, n_head, d = q.shape
    c = k.shape[1]
    lo, hi = first_seen(c - n + r, window), c - n + r + rows
    for i in range(rows):
        qs[i] = q[r + i, h]
    kv_at = (g * c + lo) * d * 4  # key/value lo of head g (rows d * 4 bytes apart)
    s_stride = scores.shape[1] * 4
    dot_rows(BLOCK, vectors, rows, 4, qs.ctypes.data, k.ctypes.data + kv_at, d * 4, hi - lo,
             np.float32(1.0 / np.sqrt(d)), scores.ctypes.data, s_stride)
    for i in range(rows):
        row = scores[i, :hi - lo]
        own_lo, own_hi = first_seen(c - n + r + i, window) - lo, c - n + r + i + 1 - lo
        softmax_row_(row[own_lo:own_hi])
        row[:own_lo] = 0.0
        row[own_hi:] = 0.0
    value_rows(rows, scores.ctypes.data, s_stride, v.ctypes.data + kv_at, d * 4, hi - lo,
               out.ctypes.data + (r * n_head + h) * d * 4, n_head * d * 4, d)


@njit(cache=True, nogil=True, inline="always")
def value_rows(rows, p_at, p_stride, v_at, v_step, count, out_at, out_stride, d):
    """out rows = p rows (count probabilities each) times count value rows, VALUE_VECTORS
    vectors of the head's dimensions at a time, then one."""
    dd = 0
    while dd + VALUE_VECTORS * BLOCK <= d:
        broadcast_tile(BLOCK, rows, VALUE_VECTORS, 4, p_at, p_stride, v_at + dd * 4, v_step,
                       BLOCK * 4, count, out_at + dd * 4, out_stride)
        dd += VALUE_VECTORS * BLOCK
    while dd < d:
        broadcast_tile(BLOCK, rows, 1, 4, p_at, p_stride, v_at + dd * 4, v_step, BLOCK * 4,
                       count, out_at + dd * 4, out_stride)
        dd += BLOCK

