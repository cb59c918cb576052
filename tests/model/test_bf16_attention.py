"""Prefill attention in bfloat16 (`model/kernels/bf16_attention.py`): its two products against their
plain references, the whole blocked causal attention against the float32 reference within
bfloat16's rounding (grouped queries, windows, more queries than CAUSAL_BLOCK, a cached context
longer than the queries, through the paged cache too), and which layers take it: bfloat16
models where the avx512bf16 kernel runs, never float32 or int8 ones. The float32 path these
fall back to is tested everywhere (test_kernels_vs_reference.py, test_llama_kernels.py, and
here with bf16 off); the model's logits in test_quant_accuracy.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanovllm.model import load_gpt2
from nanovllm.model.architectures import llama_reference as ref
from nanovllm.model.kernels.bf16_attention import (
    BF16Context,
    reference_scores,
    reference_values,
    round_probabilities,
)
from nanovllm.model.layers.attention import (
    BF16_MIN_CONTEXT,
    CAUSAL_BLOCK,
    AttentionBatch,
    causal_attention,
    paged_attention,
)
from nanovllm.model.layers.linear import host_packs_bfloat16
from nanovllm.model.weights.quant import attends_in_bf16
from nanovllm.model_loading import pack_for_kernels
from tests.model.test_bf16_gemm import runnable_kernel
from tests.model.test_kernels_vs_reference import (
    U,
    assert_within,
    causal_probabilities,
    f32,
    sum_error,
)

B = 2.0 ** -9  # bfloat16's unit roundoff: rounding to it moves a value by at most this relative


@pytest.mark.parametrize("heads, m, c, d, start", [
    (2, 15, 33, 16, 0), (12, 128, 512, 64, 0), (1, 1, 1, 1, 0), (3, 7, 37, 5, 16),
    (2, 9, 100, 6, 32), (2, 129, 48, 64, 48 - 16), (1, 3, 17, 128, 16)])
def test_context_products_match_their_references(heads, m, c, d, start):
    """Scores and values of keys start:c (start a whole block of 16 on), with every edge: rows
    past a panel, c and d not whole blocks or pairs, an odd context."""
    runnable_kernel()
    q, k, v = f32(heads, m, d, seed=1), f32(c, heads, d, seed=2), f32(c, heads, d, seed=3)
    p = np.random.default_rng(4).random((heads, m, c - start), dtype=np.float32)
    context = BF16Context.pack(k, v)
    for kernel, expected, terms in (
            (context.scores(q, start, c), reference_scores(q, k[start:]),
             np.abs(q) @ np.abs(k[start:]).transpose(1, 2, 0)),
            (context.values_times(round_probabilities(p), start), reference_values(p, v[start:]),
             p @ np.abs(v[start:]).transpose(1, 0, 2))):
        # the same rounded products, summed in float32 against float64
        assert_within(kernel, expected, sum_error(max(c, d)) * terms)


def bf16_attention_bound(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                         window: int = 0) -> np.ndarray:
    """How far bfloat16-input attention may be from float32's (`test_kernels_vs_reference.
    attention_bound`'s reasoning): q and k rounded move a score by 2B of sum |q||k| (and its
    float32 sum), which moves its row's probabilities by expm1 of twice that at most; rounding
    the probabilities and the values adds 2B; then float32's own errors."""
    q, k, v, probs = causal_probabilities(q, k, v, window)
    c, d = k.shape[1], q.shape[2]
    magnitude = (np.abs(q) @ np.abs(k).transpose(0, 2, 1)) / math.sqrt(d)
    score_error = (2 * B + B * B + sum_error(d)) * np.where(probs > 0, magnitude, 0).max(-1)
    relative = np.expm1(2 * score_error) + 2 * B + B * B + 8 * U + 2 * sum_error(c)
    return (relative[..., None] * (probs @ np.abs(v))).transpose(1, 0, 2)


def repeat_kv(a: np.ndarray, n_head: int) -> np.ndarray:
    return np.repeat(a, n_head // a.shape[1], axis=1)


@pytest.mark.parametrize("window", [0, 1, 5, 40])
@pytest.mark.parametrize("n, c", [(1, 1), (1, 300), (5, 5), (CAUSAL_BLOCK + 1, CAUSAL_BLOCK + 1),
                                  (300, 300), (200, 777)])  # (c > n: a chunk of a longer prompt)
@pytest.mark.parametrize("n_head, n_kv, d", [(6, 2, 16), (3, 3, 64)])
def test_bf16_causal_attention_matches_float32_reference(n, c, window, n_head, n_kv, d):
    """The last n positions of a c-token context, grouped (6 query heads over 2 key/value
    heads) and not, within bfloat16's rounding of the float64 reference; and not the float32
    path's result (the bfloat16 products did run)."""
    runnable_kernel()
    q, k, v = f32(c, n_head, d, seed=9), f32(c, n_kv, d, seed=10), f32(c, n_kv, d, seed=11)
    expected = ref.attention(q, k, v, window)[c - n:]
    bf16 = causal_attention(q[c - n:], k, v, window, bf16=True)
    bound = bf16_attention_bound(q[c - n:], repeat_kv(k, n_head), repeat_kv(v, n_head), window)
    assert_within(bf16, expected, bound)
    if c > 1:
        assert not np.array_equal(bf16, causal_attention(q[c - n:], k, v, window))


@pytest.mark.parametrize("cached", [0, 20])
def test_a_short_context_attends_in_float32_and_a_longer_in_bf16(cached):
    """A prefill chunk over fewer than BF16_MIN_CONTEXT keys (cached ones included) takes the
    float32 products, bit for bit; one over BF16_MIN_CONTEXT keys the bfloat16 ones."""
    runnable_kernel()
    n_head, d, block_size = 3, 64, 16
    for keys, bf16_ran in ((BF16_MIN_CONTEXT - 1, False), (BF16_MIN_CONTEXT, True)):
        new = keys - cached
        slots = np.arange(keys)
        k_cache, v_cache = (f32(16 * block_size, n_head, d, seed=s) for s in (1, 2))
        q, k, v = (f32(new, n_head, d, seed=s) for s in (3, 4, 5))
        batch = AttentionBatch(slots[cached:], 0, block_size, np.zeros((0, 1), np.int32),
                               np.zeros(0, np.int32), [(0, new, slots if cached else None)])
        out = paged_attention(q, k, v, (k_cache.copy(), v_cache.copy()), batch, bf16=True)
        float32 = paged_attention(q, k, v, (k_cache.copy(), v_cache.copy()), batch)
        assert np.array_equal(out, float32) != bf16_ran


@pytest.mark.parametrize("window", [0, 7])
def test_bf16_prefill_through_the_paged_cache(window):
    """A prefill chunk whose context is gathered from the cache (40 cached positions, then 150
    new ones) and one attended whole, side by side in one step."""
    runnable_kernel()
    n_head, n_kv, d, block_size = 4, 2, 64, 16
    cached, new, whole = 40, 150, 30
    slots = np.random.default_rng(5).permutation(16 * block_size)[:cached + new]
    k_cache, v_cache = (np.zeros((16 * block_size, n_kv, d), np.float32) for _ in range(2))
    k_all, v_all = f32(cached + new, n_kv, d, seed=6), f32(cached + new, n_kv, d, seed=7)
    k_cache[slots[:cached]], v_cache[slots[:cached]] = k_all[:cached], v_all[:cached]
    q = f32(new + whole, n_head, d, seed=8)
    k, v = np.concatenate([k_all[cached:], f32(whole, n_kv, d, seed=9)]), np.concatenate(
        [v_all[cached:], f32(whole, n_kv, d, seed=10)])
    batch = AttentionBatch(slots[cached:], 0, block_size, np.zeros((0, 1), np.int32),
                           np.zeros(0, np.int32), [(0, new, slots), (new, new + whole, None)])
    out = paged_attention(q, k, v, (k_cache, v_cache), batch, window, bf16=True)
    for rows, (kk, vv) in ((slice(0, new), (k_all, v_all)),
                           (slice(new, new + whole), (k[new:], v[new:]))):
        qq = q[rows]
        full_q = np.concatenate([np.zeros((len(kk) - len(qq), n_head, d), np.float32), qq])
        expected = ref.attention(full_q, kk, vv, window)[len(kk) - len(qq):]
        bound = bf16_attention_bound(qq, repeat_kv(kk, n_head), repeat_kv(vv, n_head), window)
        assert_within(out[rows], expected, bound)


def test_only_bfloat16_models_on_the_kernel_attend_in_bfloat16(tiny_ckpt):
    """Chosen by the weights the loader packed: bfloat16 ones for the avx512bf16 kernel where
    this CPU runs it; float32 and int8 models keep float32 products everywhere."""
    _, bf16 = load_gpt2(tiny_ckpt, dtype="bfloat16")
    assert attends_in_bf16(pack_for_kernels(bf16, "bfloat16").blocks[0].attn_w) == (
        host_packs_bfloat16())
    _, f32_weights = load_gpt2(tiny_ckpt)
    assert not attends_in_bf16(pack_for_kernels(f32_weights, "auto").blocks[0].attn_w)
    _, int8 = load_gpt2(tiny_ckpt, quantization="int8")
    assert not attends_in_bf16(int8.blocks[0].attn_w)
