"""GPT-2's forward pass as the engine runs it: float32 numpy, compiled kernels, a paged KV cache.

`model/architectures/gpt2_reference.py` is the same model as a few pure functions, the one to read
first; this module computes the same numbers faster, and its kernels are tested against that one.
For speed it writes in place where no one else holds the array: `gelu` overwrites its input, `embed`
adds the positions into its fresh gather, `forward` adds each block's output to the residual stream,
and with a KV cache `self_attention` writes every new token's keys and values into it (see
`paged_attention`). Everything else returns a new array and leaves its arguments alone.

Weight matrices are stored `[out, in]` (a linear layer is `linear(x, w, b)` = `x @ w.T + b`, see
`model/layers/linear.py`); the loader transposes Hugging Face's Conv1D `[in, out]` once. The LM head
is the token embedding itself, `[vocab, n_embd]`, already in that layout. Every activation stays
float32: Python float constants are "weak" scalars in NumPy 2, so they never promote an array to
float64. The matrices (and the embedding) may be stored as int8 or bfloat16
(`model/weights/quant.py`); `linear` and `embedding_rows` widen them as they read them.

Attention reads keys and values either straight from the current tokens (a plain full-sequence
pass) or from a paged KV cache described by an `AttentionBatch` (see `model/layers/attention.py`).
This file only composes layers: layer norm (`model/layers/norms.py`), GELU
(`model/layers/activations.py`), the linear layers (`model/layers/linear.py`) and attention are
short numba loops in modules of their own, compiled at engine start (`compile_kernels`); the rest is
numpy. Layer norm and GELU are told which weight their output feeds (`feeds=`), so that an int8
layer gets its input already quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.model.layers.activations import compile_gelu, gelu
from nanovllm.model.layers.attention import (
    AttentionBatch,
    attends_in_bf16_over,
    causal_attention,
    compile_attention_kernel,
    paged_attention,
)
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import compile_linear_kernel, embedding_rows, linear
from nanovllm.model.layers.norms import compile_layer_norm, layer_norm
from nanovllm.model.weights.quant import Weight, attends_in_bf16


@dataclass(slots=True)
class BlockWeights:
    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    attn_w: Weight           # c_attn: [3E, E], rows are Q | K | V
    attn_b: np.ndarray
    attn_proj_w: Weight      # [E, E]
    attn_proj_b: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    fc_w: Weight             # [4E, E]
    fc_b: np.ndarray
    fc_proj_w: Weight        # [E, 4E]
    fc_proj_b: np.ndarray


@dataclass(slots=True)
class GPT2Weights:
    wte: Weight              # [V, E] token embedding, tied to the LM head
    wpe: np.ndarray          # [P, E]
    blocks: list[BlockWeights]
    ln_f_g: np.ndarray
    ln_f_b: np.ndarray
    # None: `wte`, as GPT-2 ties them. The pooling runner sets the identity here, so that the
    # "logits" are the final hidden states.
    lm_head: Weight | None = None

    def head(self) -> Weight:
        return self.wte if self.lm_head is None else self.lm_head

    def matrices(self) -> list[Weight]:
        """Every matrix a decode step multiplies by: four per block, and the LM head."""
        return [self.head()] + [m for b in self.blocks
                             for m in (b.attn_w, b.attn_proj_w, b.fc_w, b.fc_proj_w)]


def compile_kernels(needs: KernelNeeds) -> None:
    """Compiles the numba kernels `needs` says the model runs now (or loads them from numba's
    cache on disk), so that the first request does not wait a second or two for them."""
    compile_attention_kernel(needs)
    compile_linear_kernel(needs)
    compile_layer_norm(needs)
    compile_gelu(needs)


def mlp(x: np.ndarray, blk: BlockWeights, residual: np.ndarray | None = None) -> np.ndarray:
    """x [n, E] -> [n, E] (`gpt2_reference.mlp`); GELU overwrites the fresh hidden layer. With
    `residual` [n, E], the output is added into it (in place) and it is returned."""
    h = linear(x, blk.fc_w, blk.fc_b)
    return linear(gelu(h, feeds=blk.fc_proj_w), blk.fc_proj_w, blk.fc_proj_b, residual)


def self_attention(x: np.ndarray, blk: BlockWeights, n_head: int,
                   kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """x [n, E] -> [n, E] (`gpt2_reference.self_attention`). With a `kv_cache`, first WRITES the new
    tokens' keys and values into their slots of it, then attends as `batch` says. With
    `residual` [n, E], the output is added into it (in place) and it is returned."""
    n, e = x.shape
    qkv = linear(x, blk.attn_w, blk.attn_b)
    # Column slices of the fused projection, viewed as [tokens, heads, head_dim]: no copies.
    q, k, v = (qkv[:, i * e:(i + 1) * e].reshape(n, n_head, e // n_head) for i in range(3))
    bf16 = attends_in_bf16(blk.attn_w)
    if kv_cache is None and batch is None:  # one whole sequence
        heads = causal_attention(q, k, v, bf16=attends_in_bf16_over(bf16, n))
    else:
        heads = paged_attention(q, k, v, kv_cache, batch, bf16=bf16)
    return linear(heads.reshape(n, e), blk.attn_proj_w, blk.attn_proj_b, residual)


def embed(w: GPT2Weights, token_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token plus position embeddings: a new array (the positions are added into the gather)."""
    x = embedding_rows(w.wte, token_ids)
    x += w.wpe[positions]
    return x


def lm_head(x: np.ndarray, w: GPT2Weights, eps: float) -> np.ndarray:
    head = w.head()
    return linear(layer_norm(x, w.ln_f_g, w.ln_f_b, eps, feeds=head), head)


def forward(w: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Logits for `token_ids` at `positions` (`gpt2_reference.forward` for one whole sequence).

    Without `kv_caches` the tokens are one sequence attended causally (the plain full pass),
    or with a `batch` of `attention.whole_sequences` several, each attending to itself.
    With them, each token's K/V is written to its cache slot (the caches are updated in place)
    and attention follows `batch`.
    `logit_rows` picks the rows that need logits: the LM head is the largest matmul of a step.
    """
    eps = cfg.layer_norm_epsilon
    x = embed(w, token_ids, positions)
    for i, blk in enumerate(w.blocks):
        cache = kv_caches[i] if kv_caches is not None else None
        # Each sub-layer adds its output into x, the residual stream, in place.
        x = self_attention(layer_norm(x, blk.ln_1_g, blk.ln_1_b, eps, feeds=blk.attn_w), blk,
                           cfg.n_head, cache, batch, residual=x)
        x = mlp(layer_norm(x, blk.ln_2_g, blk.ln_2_b, eps, feeds=blk.fc_w), blk, residual=x)
    if logit_rows is not None:
        x = x[logit_rows]
    return lm_head(x, w, eps)
