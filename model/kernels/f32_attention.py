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

The keys come transposed (`attention.keys_transposed`: [Hkv, D, keys], the keys along the
rows), so that both products have their sums down the columns of a register tile: the scores
are the query rows times the transposed keys, the keys along the vector lanes, each score one
chain of multiply-adds over the head's dimensions, with no sum across a register's lanes.

Two ways to compute a job, chosen by the CPU and the head size alone (never by the chunk):
where this CPU has register tiles (`TILES`: vectors of 16 lanes on AVX-512, of 8 on AVX2;
`attention.host_tile_lanes`) and a head has one of `TILE_HEAD_DIMS` dimensions, `panel_rows`
takes a few query rows at a time, their scores and their probabilities times the value rows in
register tiles (`f32_dot.broadcast_tile`). Elsewhere `plain_job` takes one query row at a time
in numba's loops (also what `NUMBA_DISABLE_JIT=1` runs).

numba's on-disk cache does not notice edits to this module in `attention.attend_chunk` and
`attention.keys_transposed`: after changing it, delete
`model/layers/__pycache__/attention*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from nanovllm.model.kernels.f32_dot import broadcast_tile
from nanovllm.model.kernels.parallel import PARALLEL_MIN_WORK
from nanovllm.model.kernels.shared import KERNEL_MATH, round_up, softmax_row_
from nanovllm.model.weights.quant import BLOCK

# A job's queries: few enough that a chunk of a few hundred tokens makes several jobs a head
# for the threads to share.
JOB_ROWS = 64

# Below this many multiply-adds a call runs on the calling thread: a parallel region waits for
# every thread to reach its end, and on a loaded machine one the OS has parked takes
# milliseconds to get there, more than a chunk of a few dozen queries against a few hundred keys
# costs on one core (OpenBLAS keeps each such head's product on one thread too).
THREADS_MIN_WORK = PARALLEL_MIN_WORK << 7

# The register tiles (`f32_dot.broadcast_tile`), by the lanes of their vectors: (rows, vectors),
# up to `rows` query rows times the keys, `vectors` vectors of keys at a time; then up to `rows`
# rows of probabilities times the values, `vectors` vectors of the head's dimensions at a time.
# AVX-512's 32 registers hold 4 x 4 sums of 16 lanes; AVX2's 16 hold 4 x 3 of 8, with the three
# vectors loaded and a broadcast (4 x 3 ran faster than 4 x 2, 6 x 2 and 2 x 4 on AMD Zen 3).
TILES = {16: (4, 4), 8: (4, 3)}
# The tiles' lanes on each of the kernels' CPU paths (`platform.cpu.kernel_path`); others run
# the plain loops.
PATH_LANES = {"avx512": 16, "avx2": 8}
# The head sizes the tiles take: whole vectors of either width.
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


def tile_shape(lanes):
    """(rows, vectors) of the tiles of `lanes`; in compiled code a constant, `lanes` being one."""
    return TILES[lanes]


@overload(tile_shape)
def _tile_shape(lanes):
    if not isinstance(lanes, types.Literal):
        return None
    shape = TILES.get(lanes.literal_value, (0, 0))  # (0: the plain loops, which take none)
    return lambda lanes: shape


@njit(cache=True, nogil=True, inline="always")
def run_job(lanes, q, kt, v, out, window, g, block):
    """The queries of block `block` (JOB_ROWS rows) of the query heads of key/value head g, on
    the tiles of `lanes` (`panel_heads`) or one query row at a time (`plain_job`). `lanes` is a
    constant of the caller's (`attention.chunk_kernel`): numba drops the other ways before
    compiling, so that a CPU compiles only the way it runs."""
    r0, r1 = block * JOB_ROWS, min(q.shape[0], (block + 1) * JOB_ROWS)
    if lanes and q.shape[2] in TILE_HEAD_DIMS:
        rows, vectors = tile_shape(lanes)
        panel_heads(lanes, rows, vectors, q, kt, v, out, window, g, r0, r1)
    else:
        plain_job(q, kt, v, out, window, g, r0, r1)


@njit(cache=True, nogil=True, inline="always")
def first_seen(position, window):
    """The first key a query at `position` sees."""
    return max(0, position + 1 - window) if window > 0 else 0


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def plain_job(q, kt, v, out, window, g, r0, r1):
    """`run_job` one query row at a time: its scores (one dimension after another, each adding
    its products with a row of the transposed keys), then its softmax, then its output as the
    sum of value rows weighted by their probabilities."""
    n, n_head, d = q.shape
    n_kv, c = v.shape[0], v.shape[1]
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
            row[:] = 0.0
            for dd in range(d):
                keys = kt[g, dd, lo:hi]
                for j in range(hi - lo):
                    row[j] += qs[dd] * keys[j]
            softmax_row_(row)
            acc[:] = 0.0
            for j in range(hi - lo):
                p = row[j]
                for dd in range(d):
                    acc[dd] += p * v[g, lo + j, dd]
            out[i, h] = acc


@njit(cache=True, nogil=True)
def panel_heads(lanes, rows, vectors, q, kt, v, out, window, g, r0, r1):
    """Each query head of key/value head g: its rows r0 ... r1 - 1, `rows` at a time, then one
    at a time, against the keys they see (`panel_rows`; lanes, rows and vectors compile-time
    constants, `TILES`). The scores' columns start at the job's first key rounded down to a
    whole BLOCK of keys (`base`: the transposed keys' padding, a whole number of vectors)."""
    n, n_head, d = q.shape
    n_kv, c = v.shape[0], v.shape[1]
    group = n_head // n_kv
    base = first_seen(c - n + r0, window) // BLOCK * BLOCK
    scores = np.empty((rows, round_up(c - n + r1, BLOCK) - base), np.float32)
    qs = np.empty((rows, d), np.float32)  # (broadcast_tile reads its query rows side by side)
    for h in range(g * group, (g + 1) * group):
        r = r0
        while r + rows <= r1:
            panel_rows(lanes, rows, vectors, q, kt, v, out, window, g, h, r, base, scores, qs)
            r += rows
        while r < r1:  # (one row at a time: each tile's size is compiled apart)
            panel_rows(lanes, 1, vectors, q, kt, v, out, window, g, h, r, base, scores, qs)
            r += 1


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def panel_rows(lanes, rows, vectors, q, kt, v, out, window, g, h, r, base, scores, qs):
    """Query head h's rows r ... r + rows - 1 (lanes, rows and vectors constants): their
    scores against keys lo ... hi - 1, every key one of them sees (computed from lo's vector of
    keys on: whole vectors); their softmax, each over its own keys, 0 for the others; their
    output, the probabilities times the values."""
    n, n_head, d = q.shape
    c = v.shape[1]
    lo, hi = first_seen(c - n + r, window), c - n + r + rows
    scale = np.float32(1.0 / np.sqrt(d))
    for i in range(rows):
        for dd in range(d):
            qs[i, dd] = q[r + i, h, dd] * scale
    key_scores(lanes, rows, vectors, qs, kt, g, lo // BLOCK * BLOCK, hi, scores, base)
    s_stride, at = scores.shape[1] * 4, lo - base  # (the column of key lo)
    for i in range(rows):
        row = scores[i, at:at + hi - lo]
        own_lo, own_hi = first_seen(c - n + r + i, window) - lo, c - n + r + i + 1 - lo
        softmax_row_(row[own_lo:own_hi])
        row[:own_lo] = 0.0
        row[own_hi:] = 0.0
    value_rows(lanes, rows, vectors, scores.ctypes.data + at * 4, s_stride,
               v.ctypes.data + (g * c + lo) * d * 4, d * 4, hi - lo,
               out.ctypes.data + (r * n_head + h) * d * 4, n_head * d * 4, d)


@njit(cache=True, nogil=True, inline="always")
def key_scores(lanes, rows, vectors, qs, kt, g, k0, k1, scores, base):
    """scores[:rows, j - base] = qs rows . key j for keys k0 ... k1 - 1 (k0 a whole vector's
    first key; up to k1's vector's last, which the transposed keys' padding holds), the keys of
    head g `vectors` vectors of `lanes` at a time, then one."""
    d, keys = kt.shape[1], kt.shape[2]
    kt_at, s_at = kt.ctypes.data + g * d * keys * 4, scores.ctypes.data - base * 4
    s_stride = scores.shape[1] * 4
    j = k0
    while j + vectors * lanes <= k1:
        broadcast_tile(lanes, rows, vectors, 4, qs.ctypes.data, d * 4, kt_at + j * 4,
                       keys * 4, lanes * 4, d, s_at + j * 4, s_stride)
        j += vectors * lanes
    while j < k1:
        broadcast_tile(lanes, rows, 1, 4, qs.ctypes.data, d * 4, kt_at + j * 4, keys * 4,
                       lanes * 4, d, s_at + j * 4, s_stride)
        j += lanes


@njit(cache=True, nogil=True, inline="always")
def value_rows(lanes, rows, vectors, p_at, p_stride, v_at, v_step, count, out_at, out_stride,
               d):
    """out rows = p rows (count probabilities each) times count value rows, `vectors` vectors
    of `lanes` of the head's dimensions at a time, then one."""
    dd = 0
    while dd + vectors * lanes <= d:
        broadcast_tile(lanes, rows, vectors, 4, p_at, p_stride, v_at + dd * 4, v_step,
                       lanes * 4, count, out_at + dd * 4, out_stride)
        dd += vectors * lanes
    while dd < d:
        broadcast_tile(lanes, rows, 1, 4, p_at, p_stride, v_at + dd * 4, v_step, lanes * 4,
                       count, out_at + dd * 4, out_stride)
        dd += lanes


@njit(cache=True, nogil=True, inline="always")
def transpose_head_(k, kt, g):
    """kt[g] = key/value head g of k [c, Hkv, D] transposed, [D, keys], the keys past c (to
    a whole vector) 0 (`attention.keys_transposed`); a block of BLOCK keys at a time, so that
    each line of kt is written whole."""
    c, d = k.shape[0], k.shape[2]
    for j0 in range(0, c, BLOCK):
        j1 = min(c, j0 + BLOCK)
        for dd in range(d):
            for j in range(j0, j1):
                kt[g, dd, j] = k[j, g, dd]
    kt[g, :, c:] = 0.0
