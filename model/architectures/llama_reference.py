"""The Llama family as a handful of pure numpy functions: the path to read first, and the oracle.

Read it beside `model/architectures/gpt2_reference.py` (GPT-2): the block has the same shape,
pre-norm attention then a pre-norm MLP, each added to the residual stream. Four things change:

1. `rms_norm` replaces layer norm: no mean subtracted, no bias; divide by the root mean square.
2. `rotate` replaces the learned position embedding: queries and keys are turned by an angle
   proportional to their position, so attention scores depend on relative distance.
3. `swiglu` replaces GELU's MLP: two projections, one gated by silu of the other.
4. `attention` is grouped-query: several query heads share one key/value head, so the KV cache
   holds num_kv_heads heads, not num_attention_heads.

Plus config flags for the relatives: Qwen2 adds q/k/v biases, Mistral a sliding window, and
Qwen3 an RMSNorm on each query and key head before the rotation (`qkv_heads`).
One sequence, no KV cache, no compiled kernels, nothing in place; the engine's
`model/architectures/llama.py` computes the same numbers faster and each of its kernels is tested
against the function here it stands for, and this module against transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.model.architectures.gpt2_reference import linear, softmax
from nanovllm.model.layers.rotary import inv_frequencies

if TYPE_CHECKING:
    from nanovllm.model.architectures.llama import LayerWeights, LlamaWeights
    from nanovllm.model.architectures.llama_config import LlamaConfig


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """Each row of x [T, E] divided by its root mean square, then scaled by g [E]."""
    return g * (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps))


def rotate(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotary embedding of x [T, H, D]: dimensions i and i + D/2 form a pair, turned by the
    angle position * inv_freq[i] (transformers' `rotate_half` layout)."""
    angles = positions.astype(np.float32)[:, None] * inv_freq    # [T, D/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # [T, 1, D/2]
    a, b = np.split(x, 2, axis=-1)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, gate_w: np.ndarray, up_w: np.ndarray, down_w: np.ndarray) -> np.ndarray:
    """x [T, E] -> [T, I] twice -> silu(gate) * up -> [T, E]."""
    return linear(silu(linear(x, gate_w)) * linear(x, up_w), down_w)


def attention_probs(q: np.ndarray, k: np.ndarray, window: int = 0) -> np.ndarray:
    """q [T, H, D], k [T, Hkv, D] -> [H, T, T]. Query head h uses key head h // (H / Hkv).
    Query t sees keys 0..t, only the last `window` of them if window > 0."""
    t, n_head, d = q.shape
    k = np.repeat(k, n_head // k.shape[1], axis=1)  # [T, H, D]: each key head for its group
    scores = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) / math.sqrt(d)  # [H, T, T]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    hidden = (j > i) | ((i - j >= window) if window else False)
    return softmax(np.where(hidden, -np.inf, scores))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0) -> np.ndarray:
    """Grouped-query causal attention: q [T, H, D], k, v [T, Hkv, D] -> [T, H, D]."""
    v = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    return (attention_probs(q, k, window) @ v.transpose(1, 0, 2)).transpose(1, 0, 2)


def qkv_heads(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig, positions: np.ndarray):
    """Rotated queries [T, H, D] and keys [T, Hkv, D], and values [T, Hkv, D], of x [T, E]
    (Qwen3: each query and key head RMS-normalized first)."""
    h, kv, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    t = len(x)
    qkv = linear(x, layer.qkv_w, layer.qkv_b)
    q, k, v = np.split(qkv, [h * d, (h + kv) * d], axis=-1)
    q, k, v = q.reshape(t, h, d), k.reshape(t, kv, d), v.reshape(t, kv, d)
    if cfg.qk_norm:
        q, k = rms_norm(q, layer.q_norm, cfg.rms_norm_eps), rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
    inv_freq = inv_frequencies(d, cfg.rope_theta, cfg.rope_scaling)
    return rotate(q, positions, inv_freq), rotate(k, positions, inv_freq), v


def block(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig) -> np.ndarray:
    """One Llama block: x + attention(rms_norm(x)), then + swiglu(rms_norm(x))."""
    eps, positions = cfg.rms_norm_eps, np.arange(len(x))
    heads = attention(*qkv_heads(rms_norm(x, layer.input_norm, eps), layer, cfg, positions),
                      window=cfg.sliding_window)
    x = x + linear(heads.reshape(len(x), -1), layer.o_w, layer.o_b)
    gate_w, up_w = np.split(layer.gate_up_w, 2)
    return x + swiglu(rms_norm(x, layer.post_norm, eps), gate_w, up_w, layer.down_w)


def embed(weights: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray) -> np.ndarray:
    """The token embedding only: positions enter through the rotation, inside attention."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or not 0 < len(token_ids) <= cfg.n_positions:
        raise ValueError(f"token_ids must be 1 to {cfg.n_positions} ids in a 1-D array, "
                         f"got shape {token_ids.shape}")
    return weights.embed[token_ids]


def lm_head(weights: LlamaWeights, cfg: LlamaConfig, x: np.ndarray) -> np.ndarray:
    """The residual stream x [T, E] to logits [T, vocab]: the final RMS norm, then the LM head
    (the token embedding when the checkpoint ties them)."""
    return linear(rms_norm(x, weights.norm, cfg.rms_norm_eps), weights.lm_head)


def layers(weights: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The forward pass one block at a time: yields, for each layer, the attention
    probabilities of its query heads [H, T, T] and the residual stream after it [T, E]
    (query heads of one group read the same keys, with their own queries)."""
    x = embed(weights, cfg, token_ids)
    for layer in weights.layers:
        q, k, _ = qkv_heads(rms_norm(x, layer.input_norm, cfg.rms_norm_eps), layer, cfg,
                            np.arange(len(x)))
        x = block(x, layer, cfg)
        yield attention_probs(q, k, cfg.sliding_window), x


def forward(weights: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray) -> np.ndarray:
    """The logits [T, vocab] of the next token after each prefix of token_ids [T]."""
    x = embed(weights, cfg, token_ids)
    for layer in weights.layers:
        x = block(x, layer, cfg)
    return lm_head(weights, cfg, x)


def attention_weights(weights: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray) -> np.ndarray:
    """The attention probabilities of every layer and query head: [n_layer, n_head, T, T]."""
    return np.stack([probs for probs, _ in layers(weights, cfg, token_ids)])
