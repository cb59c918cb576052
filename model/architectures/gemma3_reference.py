"""Gemma 3 as a handful of pure numpy functions: the path to read first, and the oracle.

Read it beside `model/architectures/llama_reference.py`, whose pieces it reuses (`rms_norm`,
`rotate`, grouped-query `attention` with a window); `gemma3_config.py` lists what differs. The
loader stores every norm's gain as 1 + weight (Gemma's RMSNorm multiplies by that), so `rms_norm`
here is Llama's. One sequence, no KV cache, no compiled kernels, nothing in place;
`model/architectures/gemma3.py` computes the same numbers with the engine's kernels, and this
module is tested against transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.model.architectures.gpt2_reference import gelu, linear, softmax  # noqa: F401 - the trace's too
from nanovllm.model.architectures.llama_reference import attention_probs, rms_norm, rotate
from nanovllm.model.layers.rotary import inv_frequencies

if TYPE_CHECKING:
    from nanovllm.model.architectures.gemma3 import Gemma3Weights, LayerWeights
    from nanovllm.model.architectures.gemma3_config import Gemma3Config


def qkv_heads(x: np.ndarray, layer: LayerWeights, cfg: Gemma3Config, i: int):
    """Queries [T, H, D] (scaled by query_pre_attn_scalar ** -0.5 over head_dim ** -0.5, which
    `attention_probs` applies), keys [T, Hkv, D], both normalized per head then rotated with
    layer i's base, and values [T, Hkv, D], of x [T, E]."""
    h, kv, d, t = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim, len(x)
    q, k, v = np.split(linear(x, layer.qkv_w), [h * d, (h + kv) * d], axis=-1)
    q, k, v = q.reshape(t, h, d), k.reshape(t, kv, d), v.reshape(t, kv, d)
    q, k = rms_norm(q, layer.q_norm, cfg.rms_norm_eps), rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
    if cfg.window(i):
        inv_freq = inv_frequencies(d, cfg.rope_local_base_freq, None)
    else:
        inv_freq = inv_frequencies(d, cfg.rope_theta, cfg.rope_scaling)
    positions = np.arange(t)
    q = rotate(q, positions, inv_freq) * np.float32(math.sqrt(d / cfg.query_pre_attn_scalar))
    return q, rotate(k, positions, inv_freq), v


def geglu(x: np.ndarray, layer: LayerWeights) -> np.ndarray:
    """x [T, E] -> gelu(gate) * up [T, I] -> [T, E] (GELU's tanh approximation)."""
    gate, up = np.split(linear(x, layer.gate_up_w), 2, axis=-1)
    return linear(gelu(gate) * up, layer.down_w)


def block(x: np.ndarray, layer: LayerWeights, cfg: Gemma3Config, i: int) -> np.ndarray:
    """One layer: x + norm(attention(norm(x))), then + norm(geglu(norm(x)))."""
    eps = cfg.rms_norm_eps
    q, k, v = qkv_heads(rms_norm(x, layer.input_norm, eps), layer, cfg, i)
    v = np.repeat(v, q.shape[1] // v.shape[1], axis=1)
    heads = (attention_probs(q, k, cfg.window(i)) @ v.transpose(1, 0, 2)).transpose(1, 0, 2)
    x = x + rms_norm(linear(heads.reshape(len(x), -1), layer.o_w), layer.post_attn_norm, eps)
    return x + rms_norm(geglu(rms_norm(x, layer.pre_mlp_norm, eps), layer), layer.post_mlp_norm,
                        eps)


def embed(weights: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray) -> np.ndarray:
    """The token embedding times sqrt(hidden_size)."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or not 0 < len(token_ids) <= cfg.n_positions:
        raise ValueError(f"token_ids must be 1 to {cfg.n_positions} ids in a 1-D array, "
                         f"got shape {token_ids.shape}")
    return weights.embed[token_ids] * np.float32(cfg.embed_scale)


def lm_head(weights: Gemma3Weights, cfg: Gemma3Config, x: np.ndarray) -> np.ndarray:
    """The final norm, the LM head (the embedding), then cap * tanh(logits / cap) if the
    config caps them."""
    logits = linear(rms_norm(x, weights.norm, cfg.rms_norm_eps), weights.lm_head)
    cap = cfg.final_logit_softcapping
    return logits if cap is None else np.float32(cap) * np.tanh(logits / np.float32(cap))


def layers(weights: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each layer, its attention probabilities [H, T, T] and the residual stream after it."""
    x = embed(weights, cfg, token_ids)
    for i, layer in enumerate(weights.layers):
        q, k, _ = qkv_heads(rms_norm(x, layer.input_norm, cfg.rms_norm_eps), layer, cfg, i)
        x = block(x, layer, cfg, i)
        yield attention_probs(q, k, cfg.window(i)), x


def forward(weights: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray) -> np.ndarray:
    """The logits [T, vocab] of the next token after each prefix of token_ids [T]."""
    x = embed(weights, cfg, token_ids)
    for i, layer in enumerate(weights.layers):
        x = block(x, layer, cfg, i)
    return lm_head(weights, cfg, x)


def attention_weights(weights: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray
                      ) -> np.ndarray:
    """The attention probabilities of every layer and query head: [n_layer, n_head, T, T]."""
    return np.stack([probs for probs, _ in layers(weights, cfg, token_ids)])
