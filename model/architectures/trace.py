"""Inside one forward pass: what each layer of the reference path did to a prompt.

For every layer, the trace keeps the size of the residual stream, each head's attention, and
the "logit lens": the residual stream read out through the model's own final norm and LM
head, as if the model stopped there. Row 0 is the embeddings alone, row l + 1 the stream after
layer l, so the last row is exactly the model's output and a learner watches the prediction at
each position form layer by layer. Everything is computed by the architecture's reference
module (`gpt2_reference.py` for GPT-2, `llama_reference.py` for the Llama family: each has `embed`,
`layers`, `lm_head` and `softmax`) and returned as plain numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.model.architectures import gpt2_reference

if TYPE_CHECKING:
    from nanovllm.model.architectures.gpt2 import GPT2Weights
    from nanovllm.model.architectures.gpt2_config import GPT2Config

LENS_TOP_K = 5  # tokens the lens lists at each layer and position


@dataclass(slots=True)
class ForwardTrace:
    """A prompt of T tokens through a model of L layers, H heads (S = L + 1 stages: the
    embeddings, then after each layer)."""

    token_ids: np.ndarray      # [T] the prompt
    residual_norm: np.ndarray  # [S, T] L2 norm of the residual stream at each stage
    attention: np.ndarray      # [L, H, T, T] attention probabilities (of every query head)
    lens_token_ids: np.ndarray  # [S, T, k] the lens's top tokens, most likely first
    lens_probs: np.ndarray     # [S, T, k] their probabilities
    final_token_prob: np.ndarray  # [S, T] probability each stage gives the model's final top token

    @property
    def num_stages(self) -> int:
        return len(self.residual_norm)


def trace_forward(weights: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray,
                  top_k: int = LENS_TOP_K, ref: ModuleType = gpt2_reference) -> ForwardTrace:
    """The forward pass of `token_ids` [T], layer by layer, through the reference module `ref`
    of the weights' architecture (a whole pass without a KV cache, and S x T x vocab logits for
    the lens: the caller keeps T short)."""
    token_ids = np.asarray(token_ids)
    streams = [ref.embed(weights, cfg, token_ids)]  # [T, E] each
    attention = []
    for probs, x in ref.layers(weights, cfg, token_ids):
        attention.append(probs)
        streams.append(x)
    lens = [ref.softmax(ref.lm_head(weights, cfg, x)) for x in streams]  # [T, V] each
    final_top = lens[-1].argmax(axis=-1)                                            # [T]
    top = np.stack([_top_k(p, top_k) for p in lens])                                # [S, T, k]
    positions = np.arange(len(token_ids))
    return ForwardTrace(
        token_ids=token_ids,
        residual_norm=np.stack([np.linalg.norm(x, axis=-1) for x in streams]),
        attention=np.stack(attention),
        lens_token_ids=top,
        lens_probs=np.stack([np.take_along_axis(p, t, axis=-1) for p, t in zip(lens, top)]),
        final_token_prob=np.stack([p[positions, final_top] for p in lens]))


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """The ids of each row's k largest probabilities, largest first."""
    k = min(k, probs.shape[-1])
    part = np.argpartition(-probs, k - 1, axis=-1)[:, :k]           # [T, k] unordered
    order = np.lexsort((part, -np.take_along_axis(probs, part, axis=-1)), axis=-1)
    return np.take_along_axis(part, order, axis=-1)
