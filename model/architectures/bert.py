"""BERT-family encoders as the engine runs them: many whole texts a step, bidirectional.

`model/architectures/bert_reference.py` is the same model as a few pure functions, one text at a
time, the one to read first (and `model/architectures/bert_config.py` says how an encoder differs
from the decoders). This module composes the engine's layers: `linear`, layer norm
(`norms.layer_norm`, GPT-2's), the exact GELU (`activations.gelu_erf_`) and attention over whole
texts (`encoder_attention`, which reads the fused projection's output as it is). There is no KV
cache: an encoder reads each text once, all of it in one step, and keeps nothing afterwards.

The loader fuses query/key/value into one matrix (rows Q | K | V), so a layer makes one matmul
for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.model.architectures.bert_config import BertConfig
from nanovllm.model.layers.activations import compile_gelu_erf, gelu_erf_
from nanovllm.model.layers.encoder_attention import compile_encoder_attention, encoder_attention
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import compile_linear_kernel, embedding_rows, linear
from nanovllm.model.layers.norms import add_layer_norm, compile_layer_norm, layer_norm
from nanovllm.model.weights.quant import Weight


@dataclass(slots=True)
class LayerWeights:
    qkv_w: Weight                 # [3E, E]: rows Q | K | V
    qkv_b: np.ndarray             # [3E]
    o_w: Weight                   # [E, E]
    o_b: np.ndarray
    attn_norm_g: np.ndarray       # [E] layer norm after attention's residual add
    attn_norm_b: np.ndarray
    up_w: Weight                  # [I, E]
    up_b: np.ndarray
    down_w: Weight                # [E, I]
    down_b: np.ndarray
    out_norm_g: np.ndarray        # [E] layer norm after the MLP's residual add
    out_norm_b: np.ndarray


@dataclass(slots=True)
class BertWeights:
    word: np.ndarray              # [V, E] (float32: only ever gathered from)
    position: np.ndarray          # [P, E]
    token_type: np.ndarray        # [types, E]
    embed_norm_g: np.ndarray      # [E]
    embed_norm_b: np.ndarray
    layers: list[LayerWeights]
    # The pooler (dense + tanh on [CLS]) and classifier of a cross-encoder; a BertModel's
    # checkpoint may carry a pooler, which embedding never reads.
    pooler_w: Weight | None = None
    pooler_b: np.ndarray | None = None
    classifier_w: Weight | None = None  # [num_labels, E]
    classifier_b: np.ndarray | None = None


def compile_kernels(needs: KernelNeeds) -> None:
    """Compiles the kernels the encoder calls with the weights `needs` describes now (or loads
    them from numba's disk cache)."""
    compile_linear_kernel(needs)
    compile_layer_norm(needs, add=True)
    needs.log("exact GELU and encoder attention")
    compile_gelu_erf()
    compile_encoder_attention()


def self_attention(x: np.ndarray, lw: LayerWeights, n_head: int,
                   starts: np.ndarray) -> np.ndarray:
    """x [n, E] -> attention(x) without the output projection's bias (`layer` adds it with
    the residual). The QKV bias is added as attention reads the projection."""
    qkv = linear(x, lw.qkv_w)
    return linear(encoder_attention(qkv, n_head, starts, lw.qkv_b), lw.o_w)


def layer(x: np.ndarray, lw: LayerWeights, cfg: BertConfig, starts: np.ndarray) -> np.ndarray:
    """One post-norm encoder layer (`bert_reference.layer`): x [n, E] -> a new [n, E]. Each
    bias is added in the pass that next reads the layer's output (attention, GELU, the residual
    add before each norm) rather than in one of its own."""
    eps = cfg.layer_norm_eps
    x = add_layer_norm(self_attention(x, lw, cfg.num_attention_heads, starts), lw.o_b, x,
                       lw.attn_norm_g, lw.attn_norm_b, eps)
    h = gelu_erf_(linear(x, lw.up_w), lw.up_b)
    return add_layer_norm(linear(h, lw.down_w), lw.down_b, x, lw.out_norm_g, lw.out_norm_b,
                          eps)


def embed(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray, positions: np.ndarray,
          token_type_ids: np.ndarray) -> np.ndarray:
    x = embedding_rows(w.word, token_ids)
    x += w.position[positions]
    x += w.token_type[token_type_ids]
    return layer_norm(x, w.embed_norm_g, w.embed_norm_b, cfg.layer_norm_eps)


def encode(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray, positions: np.ndarray,
           token_type_ids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The last layer's hidden states [n, E] of a batch of whole texts laid end to end: text i
    is rows [starts[i], starts[i + 1]) of token_ids, positions and token_type_ids ([n] each)."""
    x = embed(w, cfg, token_ids, positions, token_type_ids)
    for lw in w.layers:
        x = layer(x, lw, cfg, starts)
    return x


def classify(w: BertWeights, hidden: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """A cross-encoder's logits [texts, num_labels] (`bert_reference.classify`): the pooler on
    each text's first token, then the classifier."""
    pooled = np.tanh(linear(np.ascontiguousarray(hidden[starts[:-1]]), w.pooler_w, w.pooler_b))
    return linear(pooled, w.classifier_w, w.classifier_b)
