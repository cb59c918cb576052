"""The Llama family's forward pass as the engine runs it: Llama 2/3, SmolLM2, TinyLlama, Mistral
and Qwen2, one model whose config says which (`model/architectures/llama_config.py`); Qwen3 reuses
it with its own attention (`model/architectures/qwen3.py`).

`model/architectures/llama_reference.py` is the same model as a few pure functions, the one to read
first; this module computes the same numbers with the engine's kernels, shared with GPT-2
(`linear`, the paged attention of `model/layers/attention.py`), plus the three this family adds,
each in the module of its kind and tested against its reference: `norms.rms_norm` (and
`add_rms_norm_`, the residual add fused into it), `activations.silu_mul` (SwiGLU) and
`rotary.rotate_`. This file only composes them.

Hugging Face stores Llama's linear layers as nn.Linear, already `[out, in]`. The loader fuses
q/k/v into one matrix (rows Q | K | V, K and V with `num_kv_heads` heads each) and
gate/up into another, so a step makes one matmul of each. The LM head is the embedding itself
when the config ties them (SmolLM2, Llama 3.2, Qwen2.5), `lm_head.weight` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nanovllm.model.architectures.llama_config import LlamaConfig
from nanovllm.model.layers.activations import compile_silu_mul, silu_mul
from nanovllm.model.layers.attention import (
    AttentionBatch,
    attends_in_bf16_over,
    causal_attention,
    compile_attention_kernel,
    paged_attention,
)
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import compile_linear_kernel, embedding_rows, linear
from nanovllm.model.layers.norms import add_rms_norm_, compile_rms_norm, rms_norm
from nanovllm.model.layers.rotary import compile_rotary, cos_sin, inv_frequencies, rotate_
from nanovllm.model.weights.quant import Weight, attends_in_bf16


@dataclass(slots=True)
class LayerWeights:
    input_norm: np.ndarray        # [E] RMSNorm gain before attention
    qkv_w: Weight                 # [(H + 2 Hkv) D, E]: rows Q | K | V
    qkv_b: np.ndarray | None      # Qwen2's q/k/v biases
    o_w: Weight                   # [E, H D]
    o_b: np.ndarray | None        # Llama (or Qwen3) with attention_bias only
    post_norm: np.ndarray         # [E] RMSNorm gain before the MLP
    gate_up_w: Weight             # [2 I, E]: rows gate | up
    down_w: Weight                # [E, I]
    q_norm: np.ndarray | None = None  # [D] Qwen3's RMSNorm gain of every query head
    k_norm: np.ndarray | None = None  # [D] ... and of every key head


@dataclass(slots=True)
class LlamaWeights:
    embed: Weight                 # [V, E]
    layers: list[LayerWeights]
    norm: np.ndarray              # [E] final RMSNorm gain
    lm_head: Weight               # [V, E]: `embed` itself when tied

    def matrices(self) -> list[Weight]:
        """Every matrix a decode step multiplies by (the embedding is only looked up)."""
        return [self.lm_head] + [m for layer in self.layers
                                 for m in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w)]


def compile_kernels(needs: KernelNeeds) -> None:
    """Compiles this family's kernels now (or loads them from numba's disk cache), for the
    argument types the forward pass gives them with the weights `needs` describes."""
    compile_attention_kernel(needs)
    compile_linear_kernel(needs)
    needs.log("RMSNorm, SiLU and rotary")
    compile_rms_norm()
    compile_silu_mul()
    compile_rotary()


def mlp(x: np.ndarray, layer: LayerWeights) -> np.ndarray:
    """x [n, E] -> [n, E]: gate and up in one matmul, silu(gate) * up, down."""
    return linear(silu_mul(linear(x, layer.gate_up_w)), layer.down_w)


def qkv_heads(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig) -> tuple[np.ndarray, ...]:
    """x [n, E] -> the fused projection qkv [n, (H + 2 Hkv) D] and, as views of its column
    slices (no copies), queries [n, H, D], keys and values [n, Hkv, D]."""
    n = x.shape[0]
    h, kv, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = linear(x, layer.qkv_w, layer.qkv_b)
    return (qkv, qkv[:, :h * d].reshape(n, h, d), qkv[:, h * d:(h + kv) * d].reshape(n, kv, d),
            qkv[:, (h + kv) * d:].reshape(n, kv, d))


def attend(qkv: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: LayerWeights,
           cfg: LlamaConfig, cos: np.ndarray, sin: np.ndarray,
           kv_cache: tuple[np.ndarray, np.ndarray] | None,
           batch: AttentionBatch | None) -> np.ndarray:
    """`qkv_heads`' output -> [n, E]: queries and keys rotated by their positions (in place),
    attention, the output projection. With a `kv_cache`, the rotated keys (and the values) are
    what the cache keeps."""
    n, h, d = q.shape
    # Queries and keys are adjacent columns: one kernel call turns both, heads [0, h + kv).
    rotate_(qkv[:, :(h + k.shape[1]) * d].reshape(n, h + k.shape[1], d), cos, sin)
    bf16 = attends_in_bf16(layer.qkv_w)
    if kv_cache is None and batch is None:  # one whole sequence
        heads = causal_attention(q, k, v, cfg.sliding_window,
                                 attends_in_bf16_over(bf16, n))
    else:
        heads = paged_attention(q, k, v, kv_cache, batch, cfg.sliding_window, bf16)
    return linear(heads.reshape(n, h * d), layer.o_w, layer.o_b)


def self_attention(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig, cos: np.ndarray,
                   sin: np.ndarray, kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None) -> np.ndarray:
    """x [n, E] -> [n, E]: the projection, then `attend`."""
    return attend(*qkv_heads(x, layer, cfg), layer, cfg, cos, sin, kv_cache, batch)


def forward(w: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None,
            attention: Callable = self_attention) -> np.ndarray:
    """Logits for `token_ids` at `positions`: GPT-2's `forward` contract
    (`model/architectures/gpt2.py`), and `llama_reference.forward` for one whole sequence.
    `attention` is this family's `self_attention` or a relative's with the same arguments
    (`model/architectures/qwen3.py`)."""
    eps = cfg.rms_norm_eps
    cos, sin = cos_sin(inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
                       positions)
    x = embedding_rows(w.embed, token_ids)
    h = rms_norm(x, w.layers[0].input_norm, eps)
    for i, layer in enumerate(w.layers):
        cache = kv_caches[i] if kv_caches is not None else None
        # Each residual add is fused with the norm that reads its result next.
        h = add_rms_norm_(x, attention(h, layer, cfg, cos, sin, cache, batch),
                          layer.post_norm, eps)
        if i + 1 < len(w.layers):
            h = add_rms_norm_(x, mlp(h, layer), w.layers[i + 1].input_norm, eps)
        else:  # (the final norm reads only the rows whose logits are wanted)
            x += mlp(h, layer)
    if logit_rows is not None:
        x = x[logit_rows]
    return linear(rms_norm(np.ascontiguousarray(x), w.norm, eps), w.lm_head)
