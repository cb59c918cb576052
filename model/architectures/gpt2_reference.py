"""GPT-2 as a handful of pure numpy functions: the path to read first, and the oracle.

This is the whole model in the spirit of picoGPT: one sequence, full causal attention over it,
no KV cache, no paging, no compiled kernels, nothing computed in place. The engine's
`model/architectures/gpt2.py` computes the same thing faster (compiled loops, in-place updates, a
paged KV cache); each of its kernels is tested against the function here that it stands for, and
this module against Hugging Face transformers.

It reads the `GPT2Weights` the engine loads: weight matrices are `[out, in]`, so a linear layer
is `x @ w.T + b`, and the LM head is the token embedding. Every array stays float32, like the
engine: Python float constants are "weak" scalars in NumPy 2 and never promote to float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (types only: this module needs nothing but numpy to run)
    from nanovllm.model.architectures.gpt2 import BlockWeights, GPT2Weights
    from nanovllm.model.architectures.gpt2_config import GPT2Config


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Each row of x [T, E] to zero mean and unit variance, then scaled by g [E], shifted by b [E]."""
    mean = x.mean(axis=-1, keepdims=True)                  # [T, 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)   # [T, 1]
    return (x - mean) / np.sqrt(var + eps) * g + b


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU, the tanh approximation (transformers' `gelu_new`), elementwise."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row's -inf entries get probability 0."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # minus the max: exp cannot overflow
    return e / e.sum(axis=-1, keepdims=True)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x [T, in] times w [out, in] (PyTorch's layout) plus b [out] -> [T, out]."""
    y = x @ w.T
    return y if b is None else y + b


def attention_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """How much each query attends to each key, per head: q, k [T, H, D] -> [H, T, T].

    Query t sees keys 0..t only (causal): the scores above the diagonal become -inf, which
    softmax turns into probability 0.
    """
    t, _, d = q.shape
    scores = q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) / math.sqrt(d)  # [H, T, T]
    future = np.triu(np.ones((t, t), dtype=bool), k=1)                      # [T, T] True above
    return softmax(np.where(future, -np.inf, scores))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention of each head: q, k, v [T, H, D] -> [T, H, D]."""
    out = attention_probs(q, k) @ v.transpose(1, 0, 2)  # [H, T, T] @ [H, T, D] -> [H, T, D]
    return out.transpose(1, 0, 2)


def qkv_heads(x: np.ndarray, blk: BlockWeights, n_head: int) -> tuple[np.ndarray, ...]:
    """The queries, keys and values of x [T, E], each split into heads: 3 x [T, H, E/H]."""
    t, e = x.shape
    qkv = linear(x, blk.attn_w, blk.attn_b)  # [T, 3E]: Q | K | V side by side
    return tuple(part.reshape(t, n_head, e // n_head) for part in np.split(qkv, 3, axis=-1))


def self_attention(x: np.ndarray, blk: BlockWeights, n_head: int) -> np.ndarray:
    """Multi-head causal self-attention of x [T, E] -> [T, E]."""
    heads = attention(*qkv_heads(x, blk, n_head))  # [T, H, D]
    return linear(heads.reshape(x.shape), blk.attn_proj_w, blk.attn_proj_b)


def mlp(x: np.ndarray, blk: BlockWeights) -> np.ndarray:
    """x [T, E] -> [T, 4E] -> GELU -> [T, E]."""
    return linear(gelu(linear(x, blk.fc_w, blk.fc_b)), blk.fc_proj_w, blk.fc_proj_b)


def block(x: np.ndarray, blk: BlockWeights, cfg: GPT2Config) -> np.ndarray:
    """One transformer block (pre-norm): attention, then the MLP, each added to x [T, E]."""
    eps = cfg.layer_norm_epsilon
    x = x + self_attention(layer_norm(x, blk.ln_1_g, blk.ln_1_b, eps), blk, cfg.n_head)
    return x + mlp(layer_norm(x, blk.ln_2_g, blk.ln_2_b, eps), blk)


def embed(weights: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray) -> np.ndarray:
    """Token embedding plus the embedding of each position 0..T-1: [T] ids -> [T, E]."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or not 0 < len(token_ids) <= cfg.n_positions:
        raise ValueError(f"token_ids must be 1 to {cfg.n_positions} ids in a 1-D array, "
                         f"got shape {token_ids.shape}")
    return weights.wte[token_ids] + weights.wpe[np.arange(len(token_ids))]


def forward(weights: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray) -> np.ndarray:
    """The logits [T, vocab] of the next token after each prefix of token_ids [T]."""
    x = embed(weights, cfg, token_ids)  # [T, E]
    for blk in weights.blocks:
        x = block(x, blk, cfg)
    return lm_head(weights, cfg, x)


def lm_head(weights: GPT2Weights, cfg: GPT2Config, x: np.ndarray) -> np.ndarray:
    """The residual stream x [T, E] to logits [T, vocab]: the final layer norm, then the LM
    head, which is the token embedding."""
    x = layer_norm(x, weights.ln_f_g, weights.ln_f_b, cfg.layer_norm_epsilon)
    return linear(x, weights.wte)


def layers(weights: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The forward pass one block at a time: yields, for each layer, its attention
    probabilities [H, T, T] and the residual stream after it [T, E] (the blocks' `x`)."""
    x = embed(weights, cfg, token_ids)
    for blk in weights.blocks:
        q, k, _ = qkv_heads(layer_norm(x, blk.ln_1_g, blk.ln_1_b, cfg.layer_norm_epsilon),
                            blk, cfg.n_head)
        x = block(x, blk, cfg)
        yield attention_probs(q, k), x


def attention_weights(weights: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray) -> np.ndarray:
    """The attention probabilities of every layer and head: [n_layer, n_head, T, T].

    Entry [l, h, i, j] is how much token i attends to token j in head h of layer l (0 for j > i;
    each row sums to 1). The forward pass again, keeping what each layer's softmax gave.
    """
    return np.stack([probs for probs, _ in layers(weights, cfg, token_ids)])
