"""The compiled decode-attention kernel against plain numpy attention over gathered contexts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import config

from nanovllm.model.kernels.shared import as_kernel_array
from nanovllm.model.layers.attention import (
    TILE_HEAD_DIMS,
    paged_decode_attention,
    tiles_serve,
    write_slots,
)
from nanovllm.model.layers.linear import host_has_panels


def reference(q, k_cache, v_cache, tables, lens, block_size):
    """Gather each context through its block table, then softmax(q k^T / sqrt(d)) v in float64."""
    out = np.empty(q.shape, np.float64)
    for b, n in enumerate(lens):
        slots = tables[b, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
        k, v = k_cache[slots].astype(np.float64), v_cache[slots].astype(np.float64)
        scores = np.einsum("hd,thd->ht", q[b], k) / np.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[b] = np.einsum("ht,thd->hd", probs, v)
    return out


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=9),
       block_size=st.sampled_from([1, 4, 16]), seed=st.integers(0, 2**32 - 1),
       cache_dtype=st.sampled_from([np.float32, np.float16]))
def test_kernel_matches_numpy_attention_over_shuffled_block_tables(lens, block_size, seed,
                                                                   cache_dtype):
    rng = np.random.default_rng(seed)
    n_head, head_dim = 3, 8
    blocks_per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks_per_seq) + 3
    free = list(rng.permutation(num_blocks))  # shuffled: no table is contiguous by luck
    tables = np.zeros((len(lens), max(blocks_per_seq)), np.int64)
    for b, count in enumerate(blocks_per_seq):
        tables[b, :count] = [free.pop() for _ in range(count)]
    k_cache, v_cache = ((4 * rng.standard_normal((num_blocks * block_size, n_head, head_dim),
                                                 dtype=np.float32)).astype(cache_dtype)
                        for _ in range(2))
    # q as the model passes it: a strided column slice of the fused qkv projection
    qkv = rng.standard_normal((len(lens), 3 * n_head * head_dim), dtype=np.float32)
    q = qkv[:, :n_head * head_dim].reshape(len(lens), n_head, head_dim)
    out = np.full(q.shape, np.nan, np.float32)
    paged_decode_attention(q, as_kernel_array(k_cache), as_kernel_array(v_cache), tables,
                           np.array(lens), block_size, out)
    # float16 caches too: the kernel reads their values exactly, so the tolerance is the same
    np.testing.assert_allclose(out, reference(q, k_cache, v_cache, tables, lens, block_size),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_write_slots_stores_rows_like_numpy(cache_dtype):
    """New keys arrive as a strided view of the fused projection; the runner makes them
    contiguous. Each lands in its slot, rounded to the cache's type, and nothing else changes."""
    rng = np.random.default_rng(1)
    cache = rng.standard_normal((40, 3, 8)).astype(cache_dtype)
    expected = cache.copy()
    qkv = 100 * rng.standard_normal((5, 3 * 24), dtype=np.float32)
    new = qkv[:, 24:48].reshape(5, 3, 8)
    slots = np.array([7, 0, 39, 12, 13])
    write_slots(as_kernel_array(cache), slots, np.ascontiguousarray(new))
    expected[slots] = new
    assert np.array_equal(cache, expected)


def test_kernel_keeps_large_scores_finite():
    """Scores far beyond exp's float32 range still give a proper weighted average of V."""
    q = np.full((1, 1, 4), 100.0, np.float32)
    k_cache = np.array([[[100.0] * 4], [[-100.0] * 4], [[99.0] * 4]], np.float32)
    v_cache = np.array([[[1.0] * 4], [[2.0] * 4], [[3.0] * 4]], np.float32)
    out = np.empty_like(q)
    paged_decode_attention(q, k_cache, v_cache, np.array([[0, 1, 2]]), np.array([3]), 1, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 1.0, atol=1e-6)  # the first key dominates by e^-200


def test_kernel_releases_the_gil_so_other_threads_run_meanwhile():
    """The server's event loop shares the process with the engine thread: a kernel holding the GIL
    would freeze streaming for its whole run. One long call (every position reads the same four
    cached blocks) runs in a thread, and this thread watches its output fill in sequence by
    sequence. Holding the GIL, the kernel could only be seen before it starts or after it ends."""
    block_size, n_head, head_dim, context = 16, 4, 64, 256_000  # a multiple of 4 blocks
    rng = np.random.default_rng(0)
    k_cache, v_cache = (rng.standard_normal((4 * block_size, n_head, head_dim), dtype=np.float32)
                        for _ in range(2))
    tables = np.tile(np.arange(4), (4, context // (4 * block_size)))
    q = rng.standard_normal((4, n_head, head_dim), dtype=np.float32)
    out = np.full_like(q, np.nan)
    paged_decode_attention(q[:1], k_cache, v_cache, tables[:1], np.array([1]), block_size,
                           np.empty_like(q[:1]))  # compile first
    worker = threading.Thread(target=paged_decode_attention,
                              args=(q, k_cache, v_cache, tables, np.full(4, context), block_size,
                                    out))
    worker.start()
    seen_midway = False
    while worker.is_alive():
        seen_midway |= bool(np.isfinite(out[0]).all() and np.isnan(out[-1]).all())
    worker.join()
    assert seen_midway, "never saw the first sequence done while the last had not started"
    assert np.isfinite(out).all()


@pytest.mark.parametrize("tiles", [False, pytest.param(True, marks=pytest.mark.skipif(
    config.DISABLE_JIT, reason="the register tiles are LLVM IR: compiled only"))])
@pytest.mark.parametrize("lens, n_head, n_kv", [([300], 12, 12), ([1], 4, 4), ([400, 40], 6, 3),
                                                ([400], 9, 3)])
@pytest.mark.parametrize("window", [0, 20])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_heads_shared_among_threads_give_the_bits_of_one_thread(lens, n_head, n_kv, window,
                                                                tiles, cache_dtype):
    """Fewer sequences than threads (batch 1) with work enough for them (`on_threads`; the
    one-token context stays on the calling thread): each sequence's key/value heads are split
    among them, every head's arithmetic unchanged, so the output is bit for bit the unsplit one;
    up to 8 threads, also more than the heads there are. The same on the register tiles (64-wide
    heads), whose unsplit output `test_llama_kernels` checks against the reference, and in a
    float16 cache."""
    rng = np.random.default_rng(len(lens) + n_head)
    block_size, head_dim = 16, 64
    counts = [-(-n // block_size) for n in lens]
    blocks = sum(counts)
    free = list(rng.permutation(blocks))
    tables = np.zeros((len(lens), max(counts)), np.int64)
    for b, count in enumerate(counts):
        tables[b, :count] = [free.pop() for _ in range(count)]
    k_cache, v_cache = (as_kernel_array(rng.standard_normal(
        (blocks * block_size, n_kv, head_dim), dtype=np.float32).astype(cache_dtype))
                        for _ in range(2))
    q = rng.standard_normal((len(lens), n_head, head_dim), dtype=np.float32)
    outputs = []
    for threads in (1, 2, 3, 8):
        out = np.full(q.shape, np.nan, np.float32)
        paged_decode_attention(q, k_cache, v_cache, tables, np.array(lens), block_size, out,
                               window, threads, tiles)
        outputs.append(out)
    assert not np.isnan(outputs[0]).any()
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


@pytest.mark.parametrize("cache_dtype, n_head, n_kv, head_dim", [
    (np.float32, 4, 4, 64), (np.float32, 6, 2, 64), (np.float16, 6, 2, 64), (np.float16, 4, 4, 64),
    (np.float16, 4, 2, 128), (np.float32, 4, 4, 128), (np.float16, 4, 4, 96)])
def test_caches_the_register_tiles_do_not_serve_take_the_plain_loop(cache_dtype, n_head, n_kv,
                                                                    head_dim):
    """The register tiles take float32 caches and grouped float16 ones of heads of 64; where
    the scores take 16 positions at a time (AVX-512), also GPT-2's float16 cache of one query
    head a key/value head, and heads of 128. Any other cache is read by the plain loop whatever
    `tiles` says: the same bits as tiles=False, and the reference's values."""
    k = np.zeros((1, n_kv, head_dim), cache_dtype)
    tiled = head_dim in TILE_HEAD_DIMS and (
        host_has_panels() or (head_dim == 64 and (cache_dtype == np.float32 or n_head != n_kv)))
    assert tiles_serve(as_kernel_array(k), n_head, head_dim) == tiled
    if tiled:
        return
    rng = np.random.default_rng(1)
    lens, block_size = [37, 5, 16], 16
    tables = np.arange(9).reshape(3, 3)[:, ::-1].copy()
    k_cache, v_cache = (rng.standard_normal((9 * block_size, n_kv, head_dim),
                                            dtype=np.float32).astype(cache_dtype) for _ in range(2))
    q = rng.standard_normal((3, n_head, head_dim), dtype=np.float32)
    outs = []
    for tiles in (False, True):
        out = np.full(q.shape, np.nan, np.float32)
        paged_decode_attention(q, as_kernel_array(k_cache), as_kernel_array(v_cache), tables,
                               np.array(lens), block_size, out, 0, 1, tiles)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    group = n_head // n_kv  # query head h reads key/value head h // group
    expected = reference(q, np.repeat(k_cache, group, axis=1), np.repeat(v_cache, group, axis=1),
                         tables, lens, block_size)
    np.testing.assert_allclose(outs[0], expected, atol=2e-5, rtol=1e-5)
