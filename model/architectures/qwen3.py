"""Qwen3's forward pass: the Llama family's (`model/architectures/llama.py`) with one change in
attention.

Qwen3 is Qwen2 without the q/k/v biases, plus an RMSNorm on every query head and every key head
(gains `q_norm` and `k_norm`, [head_dim], one for all heads) after the projection and before the
rotation; its head_dim comes from the config (128 on Qwen3-0.6B, whose hidden size is 1024 for
16 heads). The weights are `LlamaWeights` with those two gains filled in (the Llama loader reads
them), and `llama_reference.qkv_heads` is the plain version.
"""

from __future__ import annotations

import numpy as np

from nanovllm.model.architectures import llama
from nanovllm.model.architectures.llama import LayerWeights, LlamaWeights
from nanovllm.model.architectures.llama_config import LlamaConfig
from nanovllm.model.layers.attention import AttentionBatch
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.norms import rms_norm_qk_


def compile_kernels(needs: KernelNeeds) -> None:
    """The Llama family's kernels, the per-head RMSNorm among them."""
    llama.compile_kernels(needs)


def self_attention(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig, cos: np.ndarray,
                   sin: np.ndarray, kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None) -> np.ndarray:
    """x [n, E] -> [n, E]: Llama's attention, each query and key head normalized (in place, in
    the fused projection) before the rotation."""
    qkv, q, k, v = llama.qkv_heads(x, layer, cfg)
    rms_norm_qk_(qkv, q.shape[1], k.shape[1], layer.q_norm, layer.k_norm, cfg.rms_norm_eps)
    return llama.attend(qkv, q, k, v, layer, cfg, cos, sin, kv_cache, batch)


def forward(w: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Logits for `token_ids` at `positions` (`llama.forward`'s contract)."""
    return llama.forward(w, cfg, token_ids, positions, kv_caches, batch, logit_rows,
                         attention=self_attention)
