"""Float32 discipline: no activation is silently promoted to float64 on the way through.

float64 would double memory traffic in every matmul and drift from the float32 reference. The
building blocks are checked directly, and then every intermediate of a full forward pass and of a
paged step is recorded by wrapping the module-level functions `forward` calls.
"""

from __future__ import annotations

import numpy as np
import pytest

import nanovllm.model.architectures.gpt2
import nanovllm.model.layers.attention
from nanovllm.model import AttentionBatch, forward
from nanovllm.model.kernels.shared import softmax_
from nanovllm.model.layers.activations import gelu
from nanovllm.model.layers.attention import (
    causal_attention,
    causal_softmax_,
    paged_decode_attention,
)
from nanovllm.model.layers.norms import layer_norm


def f32(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_layer_norm_stays_float32_and_normalises():
    x = 3 + 5 * f32(7, 64)
    out = layer_norm(x, np.ones(64, np.float32), np.zeros(64, np.float32), 1e-5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1, atol=1e-3)


def test_gelu_stays_float32_and_matches_the_tanh_formula():
    x = 4 * f32(8, 1000)
    x[0, :9] = [-1e30, -1e4, -100, -0.0, 0.0, 1e-30, 100, 1e4, 1e30]  # beyond exp's range too
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)
    with np.errstate(over="ignore"):
        # 0.5 x (1 + tanh(u)) as x / (1 + e^-2u): the same function, but 1 + tanh(u) cancels to
        # nothing in the far negative tail, even in float64
        expected = x64 / (1 + np.exp(-2 * u))
    np.testing.assert_allclose(expected[np.abs(x) < 4], (0.5 * x64 * (1 + np.tanh(u)))[np.abs(x) < 4],
                               rtol=1e-9, atol=1e-15)
    out = gelu(x.copy())
    assert out.dtype == np.float32
    # (float32 rounding of u itself, |u| up to ~40 in the tail, is what the tolerance allows for)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-30)


def test_softmax_matches_float64_and_gives_masked_entries_exactly_zero():
    scores = 30 * f32(2, 7, 300)
    scores[:, :, 200:] = -np.inf  # as the causal mask leaves them
    expected = np.exp(scores.astype(np.float64) - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    out = softmax_(scores)
    assert out is scores
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-12)
    assert (out[:, :, 200:] == 0).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        softmax_(f32(4, 6)[:, ::2])


def test_causal_softmax_masks_each_query_at_its_position():
    scores = 30 * f32(2, 5, 9)  # 5 queries, the last 5 of a 9-key context
    masked = scores.astype(np.float64) + np.triu(np.full((5, 9), -np.inf), k=9 - 5 + 1)
    expected = np.exp(masked - masked.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    causal_softmax_(scores, 9 - 5 + 1)
    np.testing.assert_allclose(scores, expected, rtol=2e-6, atol=1e-12)
    assert (scores[np.isinf(masked)] == 0).all()


def test_softmax_and_attention_stay_float32():
    assert softmax_(f32(3, 5)).dtype == np.float32
    q, k, v = f32(6, 4, 16, seed=1), f32(9, 4, 16, seed=2), f32(9, 4, 16, seed=3)
    assert causal_attention(q, k, v).dtype == np.float32
    out = np.empty_like(q[:2])  # two decodes reading the 9 slots through block tables of 3 x 3
    paged_decode_attention(q[:2], k, v, np.array([[0, 1, 2], [2, 0, 1]]), np.array([9, 5]), 3, out)
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.fixture
def recorded_dtypes(monkeypatch):
    """Wraps the functions forward() goes through; returns {function name: set of dtypes}."""
    seen: dict[str, set] = {}

    def wrap(module, name):
        original = getattr(module, name)

        def recorder(*args, **kwargs):
            out = original(*args, **kwargs)
            seen.setdefault(name, set()).add(out.dtype)
            return out

        monkeypatch.setattr(module, name, recorder)

    for name in ("layer_norm", "gelu", "mlp", "self_attention", "lm_head",
                 "causal_attention", "paged_attention"):
        wrap(nanovllm.model.architectures.gpt2, name)
    wrap(nanovllm.model.layers.attention, "causal_attention")  # (its softmax is in place, on float32 scores)
    return seen


def test_full_pass_keeps_every_activation_float32(tiny_model, recorded_dtypes):
    cfg, weights = tiny_model
    logits = forward(weights, cfg, np.arange(20), np.arange(20))
    assert logits.dtype == np.float32
    assert {"layer_norm", "gelu", "mlp", "self_attention", "lm_head",
            "causal_attention"} <= set(recorded_dtypes)
    assert all(dtypes == {np.dtype(np.float32)} for dtypes in recorded_dtypes.values()), recorded_dtypes


def test_paged_step_keeps_every_activation_float32(tiny_model, recorded_dtypes):
    cfg, weights = tiny_model
    caches = [(np.zeros((16, cfg.n_head, cfg.head_dim), np.float32),
               np.zeros((16, cfg.n_head, cfg.head_dim), np.float32)) for _ in range(cfg.n_layer)]
    # one sequence: prefill positions 0..4 into slots 8..12, then decode position 5 into slot 13
    # (block size 4: slots 8..13 are block 2 and the start of block 3)
    prefill = AttentionBatch(np.arange(8, 13), 0, 4, np.zeros((0, 0), np.int64),
                             np.zeros(0, np.int64), [(0, 5, np.arange(8, 13))])
    forward(weights, cfg, np.arange(5), np.arange(5), caches, prefill)
    decode = AttentionBatch(np.array([13]), 1, 4, np.array([[2, 3]]), np.array([6]), [])
    logits = forward(weights, cfg, np.array([5]), np.array([5]), caches, decode)
    assert logits.dtype == np.float32
    assert all(k.dtype == v.dtype == np.float32 for k, v in caches)
    assert {"paged_attention", "causal_attention"} <= set(recorded_dtypes)
    assert all(dtypes == {np.dtype(np.float32)} for dtypes in recorded_dtypes.values()), recorded_dtypes


def test_int32_token_ids_and_positions_give_the_same_float32_logits(tiny_model):
    cfg, weights = tiny_model
    ids = np.array([1, 500, 1023, 7])
    a = forward(weights, cfg, ids, np.arange(4))
    b = forward(weights, cfg, ids.astype(np.int32), np.arange(4, dtype=np.int32))
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
