"""Gemma 3's forward pass as the engine runs it (Gemma3ForCausalLM: gemma-3-270m, gemma-3-1b).

`model/architectures/gemma3_reference.py` is the same model as a few pure functions, the one to
read first, and `gemma3_config.py` says how Gemma differs from Llama. This file composes the
Llama family's layers: `linear`, `norms.rms_norm` (and `add_rms_norm_`, the residual add fused
into the norm that reads it next; the loader stores each gain as 1 + weight), the per-head
`rms_norm_qk_` on queries and keys, `rotary.rotate_` with the rotation of each layer's kind,
GPT-2's tanh `gelu` for the GeGLU gate, and the paged attention of `model/layers/attention.py`,
whose `window` masks the sliding layers, in the decode kernel and in prefill chunks alike.
Attention there scales scores by head_dim ** -0.5: the queries are scaled once more by
sqrt(head_dim / query_pre_attn_scalar) (1 on the released models, where the two are equal).

Every layer keeps its whole context in the KV cache, the sliding ones too: they read only the
last `sliding_window` positions of it, but their blocks are not given back early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nanovllm.model.architectures.gemma3_config import Gemma3Config
from nanovllm.model.architectures.llama import compile_kernels as llama_kernels
from nanovllm.model.layers.activations import compile_gelu, gelu
from nanovllm.model.layers.attention import (
    AttentionBatch,
    attends_in_bf16_over,
    causal_attention,
    paged_attention,
)
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import embedding_rows, linear
from nanovllm.model.layers.norms import add_rms_norm_, rms_norm, rms_norm_qk_
from nanovllm.model.layers.rotary import cos_sin, inv_frequencies, rotate_
from nanovllm.model.weights.quant import (
    BF16Weight,
    PackedBF16Weight,
    Weight,
    attends_in_bf16,
    round_to_bfloat16,
)


@dataclass(slots=True)
class LayerWeights:
    input_norm: np.ndarray        # [E] 1 + the gain of each RMSNorm: before attention,
    post_attn_norm: np.ndarray    # after it,
    pre_mlp_norm: np.ndarray      # before the MLP
    post_mlp_norm: np.ndarray     # and after it
    qkv_w: Weight                 # [(H + 2 Hkv) D, E]: rows Q | K | V
    q_norm: np.ndarray            # [D] 1 + the RMSNorm gain of every query head
    k_norm: np.ndarray            # [D] ... and of every key head
    o_w: Weight                   # [E, H D]
    gate_up_w: Weight             # [2 I, E]: rows gate | up
    down_w: Weight                # [E, I]


@dataclass(slots=True)
class Gemma3Weights:
    embed: Weight                 # [V, E]
    layers: list[LayerWeights]
    norm: np.ndarray              # [E] 1 + the final RMSNorm's gain
    lm_head: Weight               # [V, E]: `embed` itself

    def matrices(self) -> list[Weight]:
        """Every matrix a decode step multiplies by (the embedding is only looked up)."""
        return [self.lm_head] + [m for layer in self.layers
                                 for m in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w)]


def compile_kernels(needs: KernelNeeds) -> None:
    """The Llama family's kernels and GPT-2's GELU, as `needs` says."""
    llama_kernels(needs)
    compile_gelu(needs)


def geglu(x: np.ndarray, layer: LayerWeights) -> np.ndarray:
    """x [n, E] -> [n, E]: gate and up in one matmul, gelu(gate) * up, down."""
    h = linear(x, layer.gate_up_w)
    gate = gelu(np.ascontiguousarray(h[:, :h.shape[1] // 2]))
    gate *= h[:, h.shape[1] // 2:]
    return linear(gate, layer.down_w)


def self_attention(x: np.ndarray, layer: LayerWeights, cfg: Gemma3Config, window: int,
                   cos: np.ndarray, sin: np.ndarray,
                   kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None) -> np.ndarray:
    """x [n, E] -> [n, E]: the fused projection; queries and keys normalized per head and
    rotated (in place, in it); attention over the last `window` positions (0: all); the output
    projection."""
    n = x.shape[0]
    h, kv, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = linear(x, layer.qkv_w)
    q, k = qkv[:, :h * d].reshape(n, h, d), qkv[:, h * d:(h + kv) * d].reshape(n, kv, d)
    v = qkv[:, (h + kv) * d:].reshape(n, kv, d)
    rms_norm_qk_(qkv, h, kv, layer.q_norm, layer.k_norm, cfg.rms_norm_eps)
    rotate_(qkv[:, :(h + kv) * d].reshape(n, h + kv, d), cos, sin)
    if cfg.query_pre_attn_scalar != d:
        q *= np.float32(math.sqrt(d / cfg.query_pre_attn_scalar))
    bf16 = attends_in_bf16(layer.qkv_w)
    if kv_cache is None and batch is None:  # one whole sequence
        heads = causal_attention(q, k, v, window, attends_in_bf16_over(bf16, n))
    else:
        heads = paged_attention(q, k, v, kv_cache, batch, window, bf16)
    return linear(heads.reshape(n, h * d), layer.o_w)


def embed(w: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray) -> np.ndarray:
    """The embedding rows times sqrt(hidden_size), rounded as the embedding is stored
    (transformers multiplies in the embedding's dtype)."""
    scale = np.float32(cfg.embed_scale)
    if isinstance(w.embed, BF16Weight | PackedBF16Weight):
        scale = round_to_bfloat16(np.array([scale], np.float32))[0]
    x = embedding_rows(w.embed, token_ids)
    x *= scale
    return x


def forward(w: Gemma3Weights, cfg: Gemma3Config, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Logits for `token_ids` at `positions`: GPT-2's `forward` contract
    (`model/architectures/gpt2.py`), and `gemma3_reference.forward` for one whole sequence."""
    eps, d = cfg.rms_norm_eps, cfg.head_dim
    rotations = {0: cos_sin(inv_frequencies(d, cfg.rope_theta, cfg.rope_scaling), positions),
                 cfg.sliding_window: cos_sin(inv_frequencies(d, cfg.rope_local_base_freq, None),
                                             positions)}
    x = embed(w, cfg, token_ids)
    h = rms_norm(x, w.layers[0].input_norm, eps)
    for i, layer in enumerate(w.layers):
        cache = kv_caches[i] if kv_caches is not None else None
        window = cfg.window(i)
        out = self_attention(h, layer, cfg, window, *rotations[window], cache, batch)
        # Each residual add is fused with the norm that reads its result next.
        h = add_rms_norm_(x, rms_norm(out, layer.post_attn_norm, eps), layer.pre_mlp_norm, eps)
        out = rms_norm(geglu(h, layer), layer.post_mlp_norm, eps)
        if i + 1 < len(w.layers):
            h = add_rms_norm_(x, out, w.layers[i + 1].input_norm, eps)
        else:  # (the final norm reads only the rows whose logits are wanted)
            x += out
    if logit_rows is not None:
        x = x[logit_rows]
    logits = linear(rms_norm(np.ascontiguousarray(x), w.norm, eps), w.lm_head)
    cap = cfg.final_logit_softcapping
    if cap is not None:
        logits = np.tanh(logits / np.float32(cap)) * np.float32(cap)
    return logits
