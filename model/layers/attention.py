"""Causal multi-head attention, over the current tokens or over a paged KV cache.

The paged cache is one pair of arrays per layer, `[num_slots, num_kv_heads, head_dim]`, where a slot is
`block_id * block_size + offset`, float32 or (to halve its memory and what decodes read) float16.
A step's new keys and values are written to their slots first; then every sequence reads its
whole context back through its slots. Decode rows, one query each, are attended by a small
compiled kernel that reads the cache through each row's block table up to the row's own
context length, as vLLM's does: a decode is one such row, and so is each row of a decode with
the proposals it verifies (at most `MAX_DECODE_RUN` rows), row i of a run from position p
seeing p + i + 1 positions, the run's later rows already in the cache but out of its sight.
A prompt's chunk, or a longer verify run, gathers its context with numpy and attends causally:
a prompt's rows are attended the same way whether its start came from the prefix cache or
not. Where the CPU's registers hold them, decode rows take a register-tile version of the
kernel (`decode_tiles_`, `model/kernels/attention_dot.py`; `host_decode_tiles`, `tiles_serve`).

Grouped-query attention (Llama, Mistral, Qwen2): the cache holds `num_kv_heads` heads and query
head h reads key/value head h // (n_head // num_kv_heads), as transformers' `repeat_kv` lays them
out; GPT-2 is the case num_kv_heads == n_head. A sliding `window` (Mistral) lets a query see only
the last `window` positions, itself included; 0 means no window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
from numba import config, get_num_threads, njit, prange
from numba.extending import overload

from nanovllm.model.kernels.attention_dot import dot_rows, dot_rows_transposed
from nanovllm.model.kernels.bf16_attention import BF16Context, round_probabilities
from nanovllm.model.kernels.f32_attention import (
    JOB_ROWS,
    PATH_LANES,
    THREADS_MIN_WORK,
    TILES,
    causal_work,
    run_job,
    transpose_head_,
)
from nanovllm.model.kernels.f32_dot import broadcast_tile
from nanovllm.model.kernels.parallel import chunk_counter, claim, on_threads
from nanovllm.model.kernels.shared import (
    KERNEL_MATH,
    as_kernel_array,
    from_float32,
    prefetch_lines,
    prefetch_lines_l2,
    round_up,
    softmax_row_,
    to_float32,
)
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import host_has_panels
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.weights.quant import BLOCK


@dataclass(slots=True)
class AttentionBatch:
    """Where each sequence of a step sits in the flat token batch and in the KV cache.

    Decode rows come first and are attended together, each as one query with its own block
    table and causal context length: a decode with the proposals it verifies, at most
    MAX_DECODE_RUN rows, is that many decode rows, row i of a run from position p seeing
    p + i + 1 positions. Prefill chunks (and longer verify runs) follow, each a contiguous run
    of rows.
    """
    slot_mapping: np.ndarray           # [num_tokens] cache slot of each new token
    num_decodes: int                   # rows [0, num_decodes) are decode rows
    block_size: int                    # cache slots per block
    decode_block_tables: np.ndarray    # [num_decodes, max_blocks] each row's sequence's blocks
    decode_context_lens: np.ndarray    # [num_decodes] tokens each row attends to, itself included
    prefills: list[tuple[int, int, np.ndarray | None]]  # (first row, end row, context slots);
    # slots None: the chunk is its sequence's whole context, attended without reading the cache
    # numba's threads for the decode kernel, asked once a step rather than once a layer: the
    # call into numba's runtime is slow after the weights have streamed through the caches.
    threads: int = field(default_factory=get_num_threads)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def causal_softmax_(scores, seen_by_first, window=0):
    """Softmax of scores ([H, n, c]) in place under the causal mask: query i sees keys
    [0, seen_by_first + i) (only the last `window` of them if window > 0) and gives the rest
    probability 0. Masking here, row by row, does what adding a -inf triangle did, without
    building it or exponentiating the masked part."""
    n_head, n = scores.shape[0], scores.shape[1]
    if on_threads(scores.size):
        for job in prange(n_head * n):
            causal_softmax_row_(scores[job // n, job % n], seen_by_first + job % n, window)
    else:
        for job in range(n_head * n):
            causal_softmax_row_(scores[job // n, job % n], seen_by_first + job % n, window)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def causal_softmax_row_(row, seen, window):
    """A query's scores: softmax of the `seen` keys it can see (the last `window` of them if
    window > 0), 0 for the rest."""
    first = max(0, seen - window) if window > 0 else 0
    row[:first] = 0.0
    softmax_row_(row[first:seen])
    row[seen:] = 0.0


# A decode's run of at most this many rows (itself and its proposals) is attended by the decode
# kernel, row by row, reading its context through the block table once per row; a longer run
# is attended like a prefill chunk, its context gathered once and attended in one call
# (`causal_attention`), which costs less once the rows re-reading the context outweigh the
# gather's fixed cost per sequence.
MAX_DECODE_RUN = 5

# A bfloat16 prefill is attended in blocks of queries, each against only the keys it can see:
# this skips most of the masked upper triangle.
CAUSAL_BLOCK = 128

# A prefill chunk over fewer keys than this attends in float32 even in a bfloat16 model: there,
# packing the context for the bfloat16 products and waking numba's threads for each of their
# steps cost more than they save against the float32 kernel (`attend_chunk`), which runs on the
# calling thread at these sizes (a served prompt of 32 tokens is one).
BF16_MIN_CONTEXT = 128


def attends_in_bf16_over(bf16: bool, context: int) -> bool:
    """Whether a prefill chunk over `context` keys takes the bfloat16 products: a layer that
    attends in bfloat16 (`quant.attends_in_bf16`), over at least BF16_MIN_CONTEXT keys."""
    return bf16 and context >= BF16_MIN_CONTEXT


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0,
                     bf16: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """q: [n, H, D] are the last n positions of a context k, v: [c, Hkv, D] (H a multiple of
    Hkv). Returns [n, H, D]. In float32, one compiled call attends every head and query
    (`attend_chunk`, on numba's threads when there is enough work). With `bf16`
    (compiled only: `quant.attends_in_bf16`) both products take bfloat16 inputs, the context
    packed for them once (`BF16Context`), a block of CAUSAL_BLOCK queries at a time. Into
    `out` ([n, H, D] float32, C-contiguous) if given, else a new array."""
    n, c = q.shape[0], k.shape[0]
    if not bf16:
        q = np.ascontiguousarray(q)
        out = np.empty_like(q) if out is None else out
        attend_chunk(q, keys_transposed(k), heads_first(v), out, window, THREADS_MIN_WORK,
                     host_tile_lanes())
        return out
    context = BF16Context.pack(k, v)
    parts = []
    for start in range(0, n, CAUSAL_BLOCK):
        end = min(start + CAUSAL_BLOCK, n)
        seen = c - n + end  # keys visible to the block's last query
        first = max(0, c - n + start + 1 - window) if window else 0  # ... and to its first
        parts.append(attend_block(q[start:end], first, seen, window, context))
    if out is None:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    out[:] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out


def heads_first(a: np.ndarray) -> np.ndarray:
    """Keys or values [c, Hkv, D] -> [Hkv, c, D] C-contiguous, one head's rows after each other:
    as they come, a head's rows lie Hkv * D * 4 bytes apart (4 KiB for 8 heads of 128), so that
    all of them fall in the same few cache sets and evict each other."""
    return np.ascontiguousarray(a.transpose(1, 0, 2))


@njit(cache=True, nogil=True, parallel=True)
def keys_transposed(k):
    """Keys [c, Hkv, D] -> [Hkv, D, c rounded up to whole vectors], 0 past c: each head's keys
    along the rows, as `attend_chunk` takes them (`f32_attention.transpose_head_`); on numba's
    threads, a key/value head each, with enough keys."""
    c, n_kv, d = k.shape
    kt = np.empty((n_kv, d, round_up(c, BLOCK)), np.float32)
    if on_threads(k.size):
        for g in prange(n_kv):
            transpose_head_(k, kt, g)
    else:
        for g in range(n_kv):
            transpose_head_(k, kt, g)
    return kt


def attend_block(q: np.ndarray, first: int, seen: int, window: int,
                 context: BF16Context) -> np.ndarray:
    """causal_attention of the queries q [n, H, D] at positions seen - n ... seen - 1 over the
    keys first:seen of the `context` (from the whole block of 16 `first` is in)."""
    first = context.start(first)
    n, n_head, c = q.shape[0], q.shape[1], seen - first
    n_kv = context.keys.shape[0]
    scale = 1.0 / float(np.sqrt(q.shape[-1]))
    # The query heads that share a key head are stacked as rows of one matmul: [Hkv, G*n, D].
    grouped = (q * scale).transpose(1, 0, 2).reshape(n_kv, n_head // n_kv * n, q.shape[-1])
    scores = context.scores(grouped, first, seen)
    causal_softmax_(scores.reshape(n_head, n, c), c - n + 1, window)  # query i: c - n + i
    out = context.values_times(round_probabilities(scores), first)
    return out.reshape(n_head, n, -1).transpose(1, 0, 2)


def attend_chunk(q, kt, v, out, window, threads_min_work, lanes):
    """out [n, H, D] = causal attention of q [n, H, D], the last n positions of a context whose
    keys are kt [Hkv, D, c rounded up] (`keys_transposed`) and values v [Hkv, c, D]
    (`heads_first`; H a multiple of Hkv; query head h reads key/value head h // (H // Hkv)),
    with a sliding `window` if > 0. All four C-contiguous float32. With at
    least `threads_min_work` multiply-adds (`f32_attention.causal_work`; the engine passes
    THREADS_MIN_WORK), the jobs (`f32_attention.run_job`) are shared out among numba's
    threads; with the register tiles' `lanes` (`host_tile_lanes`: this CPU's; 0 for the plain
    loops), heads of `TILE_HEAD_DIMS` take the tiles.
    The later blocks of queries, which see more keys, are handed out first. Each way is a
    kernel of its own (`CHUNK_KERNELS`): start-up compiles the one this CPU runs."""
    CHUNK_KERNELS[lanes](q, kt, v, out, window, threads_min_work)


@cache  # (the CPU does not change while the process runs)
def host_tile_lanes() -> int:
    """The lanes of the register tiles prefill attention takes on this CPU's path
    (`f32_attention.PATH_LANES`); 0, the plain loops, elsewhere and under NUMBA_DISABLE_JIT."""
    return 0 if config.DISABLE_JIT else PATH_LANES.get(kernel_path().name, 0)


def chunk_kernel(lanes: int):
    """`attend_chunk` compiled with the tiles' `lanes` a constant (as `decode_kernel`)."""
    @njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
    def attend(q, kt, v, out, window, threads_min_work):
        threads = causal_work(q.shape[0], v.shape[1], q.shape[1], q.shape[2],
                              window) >= threads_min_work
        n, n_kv = q.shape[0], v.shape[0]
        blocks = (n + JOB_ROWS - 1) // JOB_ROWS
        jobs = n_kv * blocks
        if not threads:
            for job in range(jobs):
                run_job(lanes, q, kt, v, out, window, job % n_kv, blocks - 1 - job // n_kv)
            return
        taken = chunk_counter()
        for _ in prange(jobs):  # each thread claims jobs while any are left (`claim`)
            job = claim(taken)
            while job < jobs:
                run_job(lanes, q, kt, v, out, window, job % n_kv, blocks - 1 - job // n_kv)
                job = claim(taken)
    return attend


CHUNK_KERNELS = {lanes: chunk_kernel(lanes) for lanes in (0, *TILES)}


# Decode attention is a compiled loop: numpy can only read a paged cache through a gathered
# copy of every context, and that copy cost more than the attention itself.
# Sequences are shared out among numba's threads when there is enough work, each thread claiming
# the next as it finishes one (contexts differ in length), on the pool the decode GEMMs run on
# too (`model/layers/linear.py`); it releases the GIL, so the server's event loop keeps streaming
# meanwhile.


# How many positions ahead decode attention asks for the K/V lines it will read, into L2
# (`prefetch_lines_l2`): enough lines on their way to read a cold cache near the memory's speed.
PREFETCH_AHEAD = 8


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, block_size, out,
                           window=0, threads=1, tiles=False):
    """One query per row (a decode, or a row of a short run: `AttentionBatch`), attending to its
    context read straight through its block table.

    q, out: [B, H, D]; k_cache, v_cache: [num_slots, Hkv, D] float32, or a float16 cache's bits
    (`shared.as_kernel_array`); block_tables: [B, max_blocks]; context_lens: [B]; with
    window > 0 only the last `window` positions are read. Each K/V byte is read once. q should
    be C-contiguous (a strided q makes the dot products slow).
    Like any compiled kernel it does not check bounds: the tables must cover each context.

    Contexts with little work in all (`on_threads`) are read on the calling thread: starting a
    parallel region costs more than they do. With more, and fewer sequences than `threads`
    (numba's, for the caller to say: the kernel asking could not be cached), e.g. one long
    context, each sequence's key/value heads are shared out among them. With `tiles`
    (compiled only), the caches `tiles_serve` names take the register-tile path
    (`decode_tiles_`), split among threads the same way; the others `decode_one_`, which reads
    row after row. Each way is a kernel of its own (`DECODE_KERNELS`), so that start-up
    compiles only the one this model's cache takes.
    """
    tiles = tiles and tiles_serve(k_cache, q.shape[1], q.shape[2])
    DECODE_KERNELS[tiles](q, k_cache, v_cache, block_tables, context_lens, block_size, out,
                          window, threads)


def decode_kernel(tiles: bool):
    """`paged_decode_attention` compiled with `tiles` a constant: numba drops the other way
    before compiling (each closure is cached apart: its constant is part of numba's key)."""
    @njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
    def paged_decode(q, k_cache, v_cache, block_tables, context_lens, block_size, out, window,
                     threads):
        num_seqs, n_kv = q.shape[0], k_cache.shape[1]
        work = 0
        for b in range(num_seqs):  # (not context_lens.sum(): a parallel kernel shares it)
            work += context_lens[b] * q.shape[1] * q.shape[2]
        if not on_threads(work):  # a few short contexts: on the calling thread
            first = np.intp(0)  # (a literal 0 would compile the sequence's kernel again)
            for b in range(num_seqs):
                if tiles:
                    decode_tiles_(q[b], k_cache, v_cache, block_tables[b], context_lens[b],
                                  block_size, out[b], window, first, n_kv)
                else:
                    decode_one_(q[b], k_cache, v_cache, block_tables[b], context_lens[b],
                                block_size, out[b], window, first, n_kv)
            return
        parts = max(1, min(n_kv, threads // num_seqs))  # of each sequence's key/value heads
        jobs = num_seqs * parts  # a job: one sequence's part of its key/value heads
        taken = chunk_counter()
        for _ in prange(jobs):  # each thread claims jobs while any are left (`claim`)
            job = claim(taken)
            while job < jobs:
                b, part = job // parts, job % parts
                g0, g1 = part * n_kv // parts, (part + 1) * n_kv // parts
                if tiles:
                    decode_tiles_(q[b], k_cache, v_cache, block_tables[b], context_lens[b],
                                  block_size, out[b], window, g0, g1)
                else:
                    decode_one_(q[b], k_cache, v_cache, block_tables[b], context_lens[b],
                                block_size, out[b], window, g0, g1)
                job = claim(taken)
    return paged_decode


DECODE_KERNELS = {False: decode_kernel(False), True: decode_kernel(True)}


def tiles_serve(k_cache: np.ndarray, n_head: int, head_dim: int) -> bool:
    """Whether `tiles` takes this cache: heads of TILE_HEAD_DIMS where the scores take
    TILE_WIDTH positions at a time (AVX-512: `tile_scores`); elsewhere heads of 64 in float32 or
    grouped (several query heads a key/value head, whose tile reads each row once for all of
    them), and not heads of 128, whose query and key vectors alone fill AVX2's registers."""
    if head_dim not in TILE_HEAD_DIMS:
        return False
    return host_has_panels() or (head_dim == 64 and (k_cache.itemsize == 4
                                                      or n_head != k_cache.shape[1]))


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def decode_one_(q, k_cache, v_cache, block_table, n, block_size, out, window, g0, g1):
    """paged_decode_attention for one sequence: q, out [H, D], its block table and length; the
    query heads of key/value heads g0 ... g1 - 1 (out's other rows are left as they are).
    `decode_heads_` for the cache's query heads a key/value head, one of them (GPT-2) as a
    constant: its loops then read key/value head h for query head h, with no table between."""
    group = q.shape[0] // k_cache.shape[1]  # query heads per key/value head
    if group == 1:
        decode_heads_(q, k_cache, v_cache, block_table, n, block_size, out, window, g0, g1, 1)
    else:
        decode_heads_(q, k_cache, v_cache, block_table, n, block_size, out, window, g0, g1,
                      group)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, inline="always")
def decode_heads_(q, k_cache, v_cache, block_table, n, block_size, out, window, g0, g1, group):
    """decode_one_ with `group` query heads a key/value head. The slots are looked up once, and
    so is each query head's key/value head (h // group): no division per position and head,
    and no table lookup per position in each pass. One flat loop over the query heads: with
    group 1 it reads key/value head h itself."""
    n_head, head_dim = q.shape
    h0, h1 = g0 * group, g1 * group
    scale = np.float32(1.0 / np.sqrt(head_dim))
    first = max(0, n - window) if window > 0 else 0
    slots = np.empty(n - first, np.int64)
    for t in range(first, n):
        slots[t - first] = block_table[t // block_size] * block_size + t % block_size
    probs = np.empty((h1 - h0, n - first), np.float32)  # row h - h0: query head h
    kv_of = np.empty(h1 - h0, np.int64)  # row h - h0: query head h's key/value head
    for h in range(h0, h1):
        kv_of[h - h0] = h // group
    # The rows (slots) come in a table's order, so the CPU cannot see them coming: each pass
    # asks for the K (V) lines of the position PREFETCH_AHEAD on while it works on this one.
    m = slots.shape[0]
    row, part = k_cache.strides[0], k_cache.strides[1] * (g1 - g0)
    k_at = k_cache.ctypes.data + g0 * k_cache.strides[1]
    v_at = v_cache.ctypes.data + g0 * v_cache.strides[1]
    for i in range(min(PREFETCH_AHEAD, m)):
        prefetch_lines_l2(k_at + slots[i] * row, part)
    for i in range(m):  # scores, position by position: a slot's K is [Hkv, D]
        slot = slots[i]  # (read once: the compiler cannot tell that stores to probs miss it)
        ahead = i + PREFETCH_AHEAD
        if ahead < m:
            prefetch_lines_l2(k_at + slots[ahead] * row, part)
        elif ahead - m < m:  # the first rows of V, for the second pass
            prefetch_lines_l2(v_at + slots[ahead - m] * row, part)
        for h in range(h0, h1):
            g, dot = h if group == 1 else kv_of[h - h0], np.float32(0.0)
            for d in range(head_dim):
                dot += q[h, d] * to_float32(k_cache[slot, g, d])
            probs[h - h0, i] = dot * scale
    for h in range(h0, h1):
        softmax_row_(probs[h - h0])
        out[h] = 0.0
    for i in range(m):
        slot = slots[i]
        if i + PREFETCH_AHEAD < m:
            prefetch_lines_l2(v_at + slots[i + PREFETCH_AHEAD] * row, part)
        for h in range(h0, h1):
            g, p = h if group == 1 else kv_of[h - h0], probs[h - h0, i]
            for d in range(head_dim):
                out[h, d] += p * to_float32(v_cache[slot, g, d])


# The register-tile path: heads of 64 dimensions (GPT-2, most Llama presets) or 128 (Qwen3,
# Mistral), as 4 or 8 vectors of TILE_WIDTH float32 lanes; up to `tile_heads` query heads of one
# key/value head at a time, so that their accumulators (heads x vectors) and a cached row's
# vectors stay in AVX-512's 32 registers.
TILE_WIDTH = 16
TILE_HEAD_DIMS = (64, 128)


@njit(cache=True, nogil=True, inline="always")
def tile_heads(head_dim):
    """Query heads a tile of heads of `head_dim` (one of TILE_HEAD_DIMS) takes at a time."""
    return 3 if head_dim == 64 else 2


def host_decode_tiles(n_head: int, n_kv: int) -> bool:
    """Whether decode attention takes the register tiles here (compiled only: they are LLVM IR).
    A tile's sums (`tile_heads` heads of 4 or 8 vectors) fit AVX-512's 32 registers
    (`linear.host_has_panels`); AVX2's 16 hold one head of 64's, so there they serve models whose
    key/value heads each serve one query head (GPT-2): grouped-query models spilled their tiles
    there and read a cold cache more slowly than the plain loop. `tiles_serve` says which
    caches and head widths."""
    return not config.DISABLE_JIT and (n_head == n_kv or host_has_panels())


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def decode_tiles_(q, k_cache, v_cache, block_table, n, block_size, out, window, g0, g1):
    """decode_one_ (key/value heads g0 ... g1 - 1) for a cache of heads of TILE_HEAD_DIMS
    (float32, or float16 bits widened as they are loaded), run by run of consecutive slots (a
    block, or the part of it in the window): the scores of up to `tile_heads` query heads
    against a run's keys (`tile_scores`), then their probabilities times the run's values
    (`f32_dot.broadcast_tile`), the heads' sums held in registers over the run. The next run's
    rows (their part in g0 ... g1 - 1) are prefetched head by head as this run's heads are used:
    its block is elsewhere in the cache, where the hardware's prefetcher does not look, and
    asked for all at once its lines held the core up until they came."""
    n_head, head_dim = q.shape
    n_kv = k_cache.shape[1]
    group = n_head // n_kv
    h0, h1 = g0 * group, g1 * group
    vectors, most = head_dim // TILE_WIDTH, tile_heads(head_dim)
    scale = np.float32(1.0 / np.sqrt(head_dim))
    first = max(0, n - window) if window > 0 else 0
    m = n - first
    qs = np.empty((h1 - h0, head_dim), np.float32)  # row h - h0: query head h (q may be strided)
    for h in range(h1 - h0):  # (qs[:] = q[h0:h1] compiled numba's shape-mismatch error message)
        for d in range(head_dim):
            qs[h, d] = q[h0 + h, d]
    probs = np.empty((h1 - h0, m), np.float32)
    acc = np.empty(most * head_dim, np.float32)
    size = k_cache.itemsize
    row_bytes = n_kv * head_dim * size  # from one slot to the next
    for values in (False, True):
        if values:
            for h in range(h1 - h0):
                softmax_row_(probs[h])
            out[h0:h1] = 0.0
        cache = v_cache if values else k_cache
        t = first
        while t < n:
            run = min(block_size - t % block_size, n - t)
            slot = block_table[t // block_size] * block_size + t % block_size
            upcoming, after = cache, t + run  # the next run: the values' first after the keys'
            if after >= n:
                upcoming, after = v_cache, first
            ahead = 0 if values and t + run >= n else min(block_size - after % block_size,
                                                           n - after)
            nxt = block_table[after // block_size] * block_size + after % block_size
            for g in range(g0, g1):
                soon = upcoming.ctypes.data + (nxt * n_kv + g) * head_dim * size
                for r in range(ahead):  # its rows of head g, while this run's are used
                    prefetch_lines(soon + r * row_bytes, head_dim * size)
                at = cache.ctypes.data + (slot * n_kv + g) * head_dim * size
                h = g * group
                while h < (g + 1) * group:
                    heads = min(most, (g + 1) * group - h)
                    p_at = probs.ctypes.data + ((h - h0) * m + t - first) * 4
                    if values:
                        tile_values(heads, vectors, cache, at, row_bytes, run, p_at, m * 4, acc)
                        for c in range(heads):
                            for d in range(head_dim):
                                out[h + c, d] += acc[c * head_dim + d]
                    else:
                        tile_scores(heads, vectors, cache,
                                    qs.ctypes.data + (h - h0) * head_dim * 4, at, row_bytes, run,
                                    scale, p_at, m * 4)
                    h += heads
            t += run


def tile_scores(heads, vectors, cache, q_at, k_at, k_stride, count, scale, s_at, s_stride):
    """s[c, j] = scale * (q[c] . k[j]) for 1 to `tile_heads` heads (the count a compile-time
    constant, one branch each) of `vectors` vectors, keys in `cache` (an `as_kernel_array`: its
    element type is the IR's). Where the 16-lane kernels run (`linear.host_has_panels`), each
    head's scores TILE_WIDTH positions at a time (`dot_rows_transposed`), the rest as the other
    CPUs do all of them, each position's scores summed on its own (`dot_rows`). Compiled
    only."""
    raise NotImplementedError("the register tiles are LLVM IR: compiled only")


@overload(tile_scores, inline="always")
def _tile_scores(heads, vectors, cache, q_at, k_at, k_stride, count, scale, s_at, s_stride):
    size = cache.dtype.bitwidth // 8  # 4 (float32) or 2 (float16 bits): a constant of the IR
    transposed = host_has_panels()  # (a constant of the compiled code: this CPU's)

    def impl(heads, vectors, cache, q_at, k_at, k_stride, count, scale, s_at, s_stride):
        if transposed and count >= TILE_WIDTH:  # whole groups of TILE_WIDTH positions
            groups = count // TILE_WIDTH
            for c in range(heads):
                q_c, s_c = q_at + c * vectors * TILE_WIDTH * 4, s_at + c * s_stride
                if vectors == 4:
                    dot_rows_transposed(TILE_WIDTH, 4, size, q_c, k_at, k_stride, groups, scale,
                                        s_c)
                else:
                    dot_rows_transposed(TILE_WIDTH, 8, size, q_c, k_at, k_stride, groups, scale,
                                        s_c)
            done = groups * TILE_WIDTH
            k_at, s_at, count = k_at + done * k_stride, s_at + 4 * done, count - done
        if vectors == 4 and heads == 3:
            dot_rows(TILE_WIDTH, 4, 3, size, q_at, k_at, k_stride, count, scale, s_at, s_stride)
        elif vectors == 4 and heads == 2:
            dot_rows(TILE_WIDTH, 4, 2, size, q_at, k_at, k_stride, count, scale, s_at, s_stride)
        elif vectors == 4:
            dot_rows(TILE_WIDTH, 4, 1, size, q_at, k_at, k_stride, count, scale, s_at, s_stride)
        elif heads == 2:
            dot_rows(TILE_WIDTH, 8, 2, size, q_at, k_at, k_stride, count, scale, s_at, s_stride)
        else:
            dot_rows(TILE_WIDTH, 8, 1, size, q_at, k_at, k_stride, count, scale, s_at, s_stride)
    return impl


def tile_values(heads, vectors, cache, v_at, v_stride, count, p_at, p_stride, acc):
    """acc[c] = sum over j < count of p[c, j] * v[j] for 1 to `tile_heads` heads of `vectors`
    vectors, v in `cache` (as tile_scores). Compiled only."""
    raise NotImplementedError("the register tiles are LLVM IR: compiled only")


@overload(tile_values, inline="always")
def _tile_values(heads, vectors, cache, v_at, v_stride, count, p_at, p_stride, acc):
    size = cache.dtype.bitwidth // 8

    def impl(heads, vectors, cache, v_at, v_stride, count, p_at, p_stride, acc):
        a, step = acc.ctypes.data, size * TILE_WIDTH  # from one vector of a row to the next
        row = vectors * TILE_WIDTH * 4  # acc's rows, one after another
        if vectors == 4 and heads == 3:
            broadcast_tile(TILE_WIDTH, 3, 4, size, p_at, p_stride, v_at, v_stride, step, count,
                           a, row)
        elif vectors == 4 and heads == 2:
            broadcast_tile(TILE_WIDTH, 2, 4, size, p_at, p_stride, v_at, v_stride, step, count,
                           a, row)
        elif vectors == 4:
            broadcast_tile(TILE_WIDTH, 1, 4, size, p_at, p_stride, v_at, v_stride, step, count,
                           a, row)
        elif heads == 2:
            broadcast_tile(TILE_WIDTH, 2, 8, size, p_at, p_stride, v_at, v_stride, step, count,
                           a, row)
        else:
            broadcast_tile(TILE_WIDTH, 1, 8, size, p_at, p_stride, v_at, v_stride, step, count,
                           a, row)
    return impl


@njit(cache=True, nogil=True)
def write_slots(cache, slots, x):
    """cache[slots] = x, x: [n, H, D] float32, C-contiguous (or the loop does not vectorize); the
    cache as `shared.as_kernel_array` gives it (numpy's cast to float16 is much slower). Like
    the decode kernel it does not check bounds: the runner's slots are in the pool."""
    for i in range(slots.shape[0]):
        row, new = cache[slots[i]], x[i]
        for h in range(new.shape[0]):
            for d in range(new.shape[1]):
                row[h, d] = from_float32(new[h, d], cache)


def compile_attention_kernel(needs: KernelNeeds) -> None:
    """Compiles the attention kernels now (or loads them from numba's cache on disk), for the
    argument types the runner passes: decode attention's and prefill attention's."""
    needs.log("attention", "float16-cache" if needs.float16_cache else "float32")
    compile_decode_attention(needs)
    compile_prefill_attention(needs)


def compile_decode_attention(needs: KernelNeeds) -> None:
    """For a float32 cache (and a float16 one if `needs` has it), the way `paged_attention`
    takes it for `needs.heads` on this CPU, and the cache writes."""
    n_head, n_kv, head_dim = needs.heads
    q, kv = np.zeros((1, n_head, head_dim), np.float32), np.zeros((1, n_kv, head_dim), np.float32)
    caches = (kv, as_kernel_array(kv.astype(np.float16))) if needs.float16_cache else (kv,)
    for kv_cache in caches:
        paged_decode_attention(q, kv_cache, kv_cache, np.zeros((1, 1), np.int64),
                               np.ones(1, np.int64), 1, q.copy(), 0, 1,
                               host_decode_tiles(n_head, n_kv))
        write_slots(kv_cache, np.zeros(1, np.int64), kv)


def compile_prefill_attention(needs: KernelNeeds) -> None:
    """The float32 prefill kernel this CPU runs (on arrays laid out as `causal_attention`
    passes them), and with bfloat16 weights the causal softmax of `attend_block`."""
    q = np.zeros((1, 1, 1), np.float32)
    attend_chunk(q, keys_transposed(q), q, q.copy(), 0, THREADS_MIN_WORK, host_tile_lanes())
    keys_transposed(np.zeros((1, 2, 1), np.float32)[:, :1])  # (and of a fused projection's view)
    if needs.bf16_packed:
        causal_softmax_(q, 1, 0)


def gather(cache: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """cache[slots] as float32 (np.take: faster than fancy indexing here)."""
    return np.take(cache, slots, axis=0).astype(np.float32, copy=False)


def whole_sequences(starts: np.ndarray) -> AttentionBatch:
    """A step of whole sequences side by side, sequence i in rows [starts[i], starts[i+1]),
    each attending causally to itself and kept nowhere: with no KV cache, `paged_attention`
    writes nothing (a decoder's pooling step)."""
    return AttentionBatch(np.empty(0, np.int64), 0, 1, np.zeros((0, 1), np.int32),
                          np.zeros(0, np.int32),
                          [(int(a), int(b), None) for a, b in zip(starts[:-1], starts[1:])])


def paged_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                    kv_cache: tuple[np.ndarray, np.ndarray] | None, batch: AttentionBatch,
                    window: int = 0, bf16: bool = False) -> np.ndarray:
    """q [n, H, D], k, v [n, Hkv, D] of the step's tokens -> [n, H, D]; writes k, v to the cache
    first (without a cache, a batch of `whole_sequences` only). With a window, a prefill chunk
    gathers only the context its queries can see. Decode rows take the register tiles
    (`paged_decode_attention`) where they fit this CPU (`host_decode_tiles`); prefill chunks
    take bfloat16 products with `bf16` over contexts of BF16_MIN_CONTEXT keys or more
    (`causal_attention`, `attends_in_bf16_over`)."""
    if kv_cache is None:
        out = np.empty_like(q)
        for start, end, _ in batch.prefills:
            causal_attention(q[start:end], k[start:end], v[start:end], window,
                             attends_in_bf16_over(bf16, end - start), out[start:end])
        return out
    k_cache, v_cache = kv_cache
    k_bits, v_bits = as_kernel_array(k_cache), as_kernel_array(v_cache)
    write_slots(k_bits, batch.slot_mapping, np.ascontiguousarray(k))
    write_slots(v_bits, batch.slot_mapping, np.ascontiguousarray(v))
    out = np.empty_like(q)
    if batch.num_decodes:  # (q is a strided view of the fused projection: copy it)
        paged_decode_attention(np.ascontiguousarray(q[:batch.num_decodes]), k_bits, v_bits,
                               batch.decode_block_tables,
                               batch.decode_context_lens, batch.block_size,
                               out[:batch.num_decodes], window, batch.threads,
                               host_decode_tiles(q.shape[1], k.shape[1]))
    for start, end, slots in batch.prefills:
        if slots is None:
            causal_attention(q[start:end], k[start:end], v[start:end], window,
                             attends_in_bf16_over(bf16, end - start), out[start:end])
        else:
            if window:  # the chunk's first query sees window positions, itself the last
                slots = slots[max(0, len(slots) - (end - start) - window + 1):]
            causal_attention(q[start:end], gather(k_cache, slots), gather(v_cache, slots),
                             window, attends_in_bf16_over(bf16, len(slots)), out[start:end])
    return out
