"""The Llama family's kernels against `model/architectures/llama_reference.py` (llm.c's rule), with
the error bounds of test_kernels_vs_reference.py: RMSNorm (per head too, for Qwen3), SwiGLU's gate,
rotary positions, and the grouped-query attention (causal and paged decode) with and without a
sliding window."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config
from test_kernels_vs_reference import (
    MANY_CONTEXTS,
    U,
    assert_within,
    attention_bound,
    f32,
    shuffled_block_tables,
    sum_error,
)

from nanovllm.model.architectures import llama_reference as ref
from nanovllm.model.kernels.parallel import PARALLEL_MIN_WORK
from nanovllm.model.kernels.shared import as_kernel_array
from nanovllm.model.layers.activations import silu_mul
from nanovllm.model.layers.attention import (
    CAUSAL_BLOCK,
    TILE_HEAD_DIMS,
    causal_attention,
    paged_decode_attention,
)
from nanovllm.model.layers.norms import add_rms_norm_, rms_norm, rms_norm_qk_
from nanovllm.model.layers.rotary import cos_sin, inv_frequencies, rotate_


# Sizes on both sides of PARALLEL_MIN_WORK: the calling thread's loop and the parallel one.
@pytest.mark.parametrize("rows, e", [(1, 1), (1, 576), (64, 576), (130, 2049)])
def test_rms_norm_matches_reference(rows, e):
    x, g = f32(rows, e, seed=1, scale=3), 1 + f32(e, seed=2, scale=0.3)
    expected = ref.rms_norm(x, g, 1e-5)
    # the mean square's sum, halved by the square root; then a few roundings per element
    bound = (sum_error(e) + 8 * U) * np.abs(expected.astype(np.float64))
    assert_within(rms_norm(x, g, 1e-5), expected, bound)
    read_only = g.copy()
    read_only.flags.writeable = False  # memory-mapped weights: the kernel's other signature
    np.testing.assert_array_equal(rms_norm(x, read_only, 1e-5), rms_norm(x, g, 1e-5))


@pytest.mark.parametrize("rows, e", [(1, 1), (64, 576), (130, 2049)])
def test_add_rms_norm_adds_in_place_and_normalizes_like_the_two_steps(rows, e):
    """The fused residual add: x becomes x + delta, the same bits as numpy's add, and the result
    is rms_norm of it, bit for bit (the same row kernel), within the reference's bound."""
    x, delta = f32(rows, e, seed=1, scale=3), f32(rows, e, seed=7, scale=2)
    g = 1 + f32(e, seed=2, scale=0.3)
    added = x + delta
    out = add_rms_norm_(x, delta, g, 1e-5)
    np.testing.assert_array_equal(x, added)
    np.testing.assert_array_equal(out, rms_norm(added, g, 1e-5))
    expected = ref.rms_norm(added, g, 1e-5)
    bound = (sum_error(e) + 8 * U) * np.abs(expected.astype(np.float64))
    assert_within(out, expected, bound)


# On the calling thread, and (the last two) on numba's.
@pytest.mark.parametrize("rows, i", [(1, 1), (3, 1536), (PARALLEL_MIN_WORK // 97 + 1, 97),
                                     (90, 1537)])
def test_silu_mul_matches_reference(rows, i):
    h = f32(rows, 2 * i, seed=3, scale=4)
    h[0, :min(4, i)] = [-100.0, -0.0, 30.0, 88.5][:min(4, i)]
    gate, up = h[:, :i], h[:, i:]
    with np.errstate(over="ignore"):  # e**100: silu(-100) is 0, as it should be
        expected = ref.silu(gate) * up
    # exp32 within 2 ulps, then a division and a product: relative, a few u each
    bound = 12 * U * np.abs(expected.astype(np.float64))
    assert_within(silu_mul(h), expected.astype(np.float32), bound)


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 64}])
# On the calling thread, and parallel (n * 3 heads * 64 >= PARALLEL_MIN_WORK).
@pytest.mark.parametrize("n", [1, PARALLEL_MIN_WORK // (3 * 64) + 1])
def test_rotate_matches_reference_in_place_on_strided_views(scaling, n):
    """On column slices of a fused projection (the forward pass's views), at far positions."""
    heads, d = 3, 64
    qkv = f32(n, 2 * heads * d, seed=4)
    positions = np.resize([131071, 0, 1, 2, 7, 100, 1000, 8191, 30000], n)
    inv_freq = inv_frequencies(d, 500000.0, scaling)
    view = qkv[:, heads * d:].reshape(n, heads, d)
    expected = ref.rotate(view.copy(), positions, inv_freq)
    before = qkv[:, :heads * d].copy()
    out = rotate_(view, *cos_sin(inv_freq, positions))
    assert np.shares_memory(out, qkv)
    np.testing.assert_array_equal(qkv[:, :heads * d], before)  # its neighbour untouched
    assert_within(view, expected, 8 * U * (np.abs(view) + np.abs(expected)).astype(np.float64) + 1e-7)


# On the calling thread, and parallel (n * 9 heads * 128 >= PARALLEL_MIN_WORK).
@pytest.mark.parametrize("n", [1, 7, PARALLEL_MIN_WORK // (9 * 128) + 1])
def test_rms_norm_qk_matches_reference_in_place_in_the_fused_projection(n):
    """Qwen3's q_norm / k_norm: each query head, then each key head, of the fused projection
    normalized in place with one gain for all query heads and another for all key heads; the
    values untouched."""
    q_heads, k_heads, d = 5, 2, 128
    qkv = f32(n, (q_heads + 2 * k_heads) * d, seed=5, scale=3)
    q_gain, k_gain = 1 + f32(d, seed=6, scale=0.3), 1 + f32(d, seed=7, scale=0.3)
    q = qkv[:, :q_heads * d].reshape(n, q_heads, d)
    k = qkv[:, q_heads * d:(q_heads + k_heads) * d].reshape(n, k_heads, d)
    expected = [ref.rms_norm(q.copy(), q_gain, 1e-6), ref.rms_norm(k.copy(), k_gain, 1e-6)]
    values = qkv[:, (q_heads + k_heads) * d:].copy()
    assert rms_norm_qk_(qkv, q_heads, k_heads, q_gain, k_gain, 1e-6) is qkv
    np.testing.assert_array_equal(qkv[:, (q_heads + k_heads) * d:], values)
    for heads, want in zip((q, k), expected):
        bound = (sum_error(d) + 8 * U) * np.abs(want.astype(np.float64))
        assert_within(heads, want, bound)


def test_llama3_scaling_keeps_short_wavelengths_and_stretches_long_ones():
    plain = inv_frequencies(64, 500000.0, None)
    scaled = inv_frequencies(64, 500000.0, {"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192})
    wavelen = 2 * np.pi / plain
    assert np.array_equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 8, rtol=1e-6)
    middle = (wavelen >= 2048) & (wavelen <= 8192)
    assert middle.any() and (scaled[middle] < plain[middle]).all()
    assert (scaled[middle] > plain[middle] / 8).all()


def repeat_kv(k: np.ndarray, n_head: int) -> np.ndarray:
    return np.repeat(k, n_head // k.shape[1], axis=1)


@pytest.mark.parametrize("window", [0, 1, 5, 40])
@pytest.mark.parametrize("n, c", [(1, 1), (1, 300), (5, 5), (CAUSAL_BLOCK + 1, CAUSAL_BLOCK + 1),
                                  (300, 300), (200, 777)])
def test_grouped_causal_attention_matches_reference(n, c, window):
    """6 query heads over 2 key/value heads, the last n positions of a c-token context."""
    q, k, v = f32(c, 6, 16, seed=9), f32(c, 2, 16, seed=10), f32(c, 2, 16, seed=11)
    expected = ref.attention(q, k, v, window)[c - n:]
    bound = attention_bound(q[c - n:], repeat_kv(k, 6), repeat_kv(v, 6), window)
    assert_within(causal_attention(q[c - n:], k, v, window), expected, bound)


@pytest.mark.parametrize("window", [0, 1, 7, 100])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lens", [[1], [1000], [17, 1, 300, 64], MANY_CONTEXTS])
def test_grouped_paged_decode_attention_matches_reference(lens, cache_dtype, window):
    """Each decode is the last row of the reference's attention over its context, read through
    a shuffled block table; positions before the window are poisoned with NaN: never read."""
    block_size, n_head, n_kv, head_dim = 16, 6, 2, 8
    num_blocks, tables = shuffled_block_tables(lens, block_size)
    k_cache, v_cache = (f32(num_blocks * block_size, n_kv, head_dim, seed=s, scale=2)
                        .astype(cache_dtype) for s in (12, 13))
    queries = [f32(n, n_head, head_dim, seed=20 + i) for i, n in enumerate(lens)]
    slots = [tables[i, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
             for i, n in enumerate(lens)]
    k_seen, v_seen = [k_cache[s].astype(np.float32) for s in slots], [v_cache[s].astype(np.float32)
                                                                     for s in slots]
    if window:
        for s, n in zip(slots, lens):
            k_cache[s[:max(0, n - window)]] = np.nan
            v_cache[s[:max(0, n - window)]] = np.nan
    out = np.full((len(lens), n_head, head_dim), np.nan, np.float32)
    paged_decode_attention(np.stack([q[-1] for q in queries]), as_kernel_array(k_cache),
                           as_kernel_array(v_cache), tables, np.array(lens), block_size, out,
                           window)
    for i, (q, k, v) in enumerate(zip(queries, k_seen, v_seen)):
        expected = ref.attention(q, k, v, window)[-1:]
        bound = attention_bound(q[-1:], repeat_kv(k, n_head), repeat_kv(v, n_head), window)
        assert_within(out[i:i + 1], expected, bound)


@pytest.mark.skipif(config.DISABLE_JIT, reason="the register tiles are LLVM IR: compiled only")
@pytest.mark.parametrize("window", [0, 7])
# Runs of slots shorter than 16 positions, of 16 (summed together on AVX-512), and of 48 (three
# times 16, then the rest one by one).
@pytest.mark.parametrize("block_size", [16, 5, 1, 48])
# Query heads per key/value head: 1 (GPT-2), 3 (SmolLM2), 4 (Llama 3.2), 7 (Qwen2.5), 8
# (TinyLlama): chunks of `tile_heads`, 2 and 1 heads.
@pytest.mark.parametrize("n_head, n_kv", [(2, 2), (9, 3), (8, 2), (14, 2), (8, 1)])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("head_dim", TILE_HEAD_DIMS)
def test_paged_decode_register_tiles_match_reference(n_head, n_kv, block_size, window,
                                                      cache_dtype, head_dim):
    """`tiles` on every CPU that compiles them (their width is LLVM's to split): the scores and
    weighted values of each run of slots against the reference, on shuffled block tables;
    positions before the window are NaN, never read. A float16 cache's keys and values are
    widened as they are loaded, against the reference on the same float16 values."""
    lens = MANY_CONTEXTS[:9] + [1, 300]
    num_blocks, tables = shuffled_block_tables(lens, block_size)
    k_cache, v_cache = (f32(num_blocks * block_size, n_kv, head_dim, seed=s, scale=2)
                        .astype(cache_dtype) for s in (12, 13))
    queries = [f32(n, n_head, head_dim, seed=20 + i) for i, n in enumerate(lens)]
    slots = [tables[i, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
             for i, n in enumerate(lens)]
    k_seen = [k_cache[s].astype(np.float32) for s in slots]
    v_seen = [v_cache[s].astype(np.float32) for s in slots]
    for s, n in zip(slots, lens):
        if window:
            k_cache[s[:max(0, n - window)]] = np.nan
            v_cache[s[:max(0, n - window)]] = np.nan
    qkv = f32(len(lens), 2 * n_head * head_dim, seed=3)  # q as a strided view, as the model has it
    q = qkv[:, :n_head * head_dim].reshape(len(lens), n_head, head_dim)
    q[:] = np.stack([q[-1] for q in queries])
    out = np.full(q.shape, np.nan, np.float32)
    paged_decode_attention(q, as_kernel_array(k_cache), as_kernel_array(v_cache), tables,
                           np.array(lens), block_size, out, window, 1, True)
    for i, (qs, k, v) in enumerate(zip(queries, k_seen, v_seen)):
        expected = ref.attention(qs, k, v, window)[-1:]
        bound = attention_bound(qs[-1:], repeat_kv(k, n_head), repeat_kv(v, n_head), window)
        assert_within(out[i:i + 1], expected, bound)


def test_register_tiles_leave_other_head_widths_to_the_plain_loop():
    """Heads of widths not in TILE_HEAD_DIMS run decode_one_ whatever `tiles` says, in a
    float32 or a float16 cache: the same bits either way."""
    lens, block_size = [17, 40], 16
    num_blocks, tables = shuffled_block_tables(lens, block_size)
    for dtype, head_dim in [(np.float16, 32), (np.float32, 32), (np.float32, 96)]:
        k_cache, v_cache = (as_kernel_array(f32(num_blocks * block_size, 2, head_dim, seed=s)
                                            .astype(dtype)) for s in (4, 5))
        q = f32(len(lens), 6, head_dim, seed=6)
        plain, tiled = np.empty_like(q), np.empty_like(q)
        for tiles, out in ((False, plain), (True, tiled)):
            paged_decode_attention(q, k_cache, v_cache, tables, np.array(lens), block_size, out,
                                   0, 1, tiles)
        np.testing.assert_array_equal(tiled, plain)
