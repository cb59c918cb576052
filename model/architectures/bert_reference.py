"""BERT as a handful of pure numpy functions: the encoder to read first, and the oracle.

One text at a time, in the spirit of `model/architectures/gpt2_reference.py`: every token attends to
every token of its text (no causal mask: an encoder reads the whole text at once), learned positions
plus a token type (which segment of a pair a token is in), and each sub-layer's output added to its
input and *then* layer-normed (post-norm, where GPT-2 norms first). The engine's
`model/architectures/bert.py` computes the same numbers on batches of texts; each of its pieces is
tested against the function here that it stands for, and this module against transformers.

It reads the `BertWeights` the engine loads: matrices are `[out, in]` (nn.Linear's layout).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.model.architectures.gpt2_reference import layer_norm, linear, softmax  # noqa: F401 - the trace's too

if TYPE_CHECKING:
    from nanovllm.model.architectures.bert import BertWeights, LayerWeights
    from nanovllm.model.architectures.bert_config import BertConfig


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU, the exact one: x times the standard normal's CDF at x, elementwise."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


def attention_probs(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """How much each query attends to each key, per head: q, k [T, H, D] -> [H, T, T].
    Every token sees every token of its text, before and after it."""
    d = q.shape[-1]
    return softmax(q.transpose(1, 0, 2) @ k.transpose(1, 2, 0) / math.sqrt(d))


def self_attention(x: np.ndarray, layer: LayerWeights, n_head: int) -> np.ndarray:
    """Multi-head bidirectional self-attention of x [T, E] -> [T, E]."""
    t, e = x.shape
    q, k, v = (part.reshape(t, n_head, e // n_head)
               for part in np.split(linear(x, layer.qkv_w, layer.qkv_b), 3, axis=-1))
    heads = (attention_probs(q, k) @ v.transpose(1, 0, 2)).transpose(1, 0, 2)  # [T, H, D]
    return linear(heads.reshape(t, e), layer.o_w, layer.o_b)


def layer(x: np.ndarray, lw: LayerWeights, cfg: BertConfig) -> np.ndarray:
    """One encoder layer (post-norm): attention, then the MLP, each added to x and normed."""
    eps = cfg.layer_norm_eps
    x = layer_norm(x + self_attention(x, lw, cfg.num_attention_heads), lw.attn_norm_g,
                   lw.attn_norm_b, eps)
    h = gelu(linear(x, lw.up_w, lw.up_b))
    return layer_norm(x + linear(h, lw.down_w, lw.down_b), lw.out_norm_g, lw.out_norm_b, eps)


def embed(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray,
          token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """Token + position + token type embeddings, layer-normed: [T] ids -> [T, E]."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1 or not 0 < len(token_ids) <= cfg.max_position_embeddings:
        raise ValueError(f"token_ids must be 1 to {cfg.max_position_embeddings} ids in a 1-D "
                         f"array, got shape {token_ids.shape}")
    types = np.zeros_like(token_ids) if token_type_ids is None else np.asarray(token_type_ids)
    x = w.word[token_ids] + w.position[np.arange(len(token_ids))] + w.token_type[types]
    return layer_norm(x, w.embed_norm_g, w.embed_norm_b, cfg.layer_norm_eps)


def encode(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray,
           token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """The last layer's hidden states [T, E] of one text (what pooling reads)."""
    x = embed(w, cfg, token_ids, token_type_ids)
    for lw in w.layers:
        x = layer(x, lw, cfg)
    return x


def classify(w: BertWeights, cfg: BertConfig, hidden: np.ndarray) -> np.ndarray:
    """A cross-encoder's logits [num_labels] from its text's hidden states [T, E]: the pooler
    (dense + tanh) of the first token ([CLS]), then the classifier."""
    pooled = np.tanh(linear(hidden[:1], w.pooler_w, w.pooler_b))
    return linear(pooled, w.classifier_w, w.classifier_b)[0]


def forward(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
    """The model's output for one text: hidden states [T, E], or a cross-encoder's logits."""
    hidden = encode(w, cfg, token_ids, token_type_ids)
    return classify(w, cfg, hidden) if cfg.is_classifier else hidden


def lm_head(w: BertWeights, cfg: BertConfig, x: np.ndarray) -> np.ndarray:
    """A vocabulary lens for the forward trace (model/architectures/trace.py): hidden states [T, E]
    against the token embedding, [T, vocab] (BERT's masked-LM decoder is tied to it; the transform
    before it is not part of an embedding checkpoint)."""
    return linear(x, w.word)


def layers(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The forward pass one layer at a time: each layer's attention probabilities [H, T, T]
    and the hidden states after it [T, E]."""
    x = embed(w, cfg, token_ids)
    for lw in w.layers:
        t, e = x.shape
        q, k, _ = (part.reshape(t, cfg.num_attention_heads, e // cfg.num_attention_heads)
                   for part in np.split(linear(x, lw.qkv_w, lw.qkv_b), 3, axis=-1))
        x = layer(x, lw, cfg)
        yield attention_probs(q, k), x


def attention_weights(w: BertWeights, cfg: BertConfig, token_ids: np.ndarray) -> np.ndarray:
    """The attention probabilities of every layer and head: [n_layer, n_head, T, T]."""
    return np.stack([probs for probs, _ in layers(w, cfg, token_ids)])
