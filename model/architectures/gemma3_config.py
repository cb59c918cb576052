"""Hyper-parameters of Gemma 3's text models (Gemma3ForCausalLM: gemma-3-270m, gemma-3-1b).

Gemma 3 is a Llama-shaped decoder (RMSNorm, rotary positions, grouped-query attention, a gated
MLP) with these differences, each a field here or a constant of the model:

- layers of two kinds (`layer_types`): most attend to the last `sliding_window` positions only,
  every sixth to all of them; each kind has its own rotary base (`rope_local_base_freq` for the
  sliding layers, `rope_theta` and `rope_scaling` for the global ones);
- attention scores are scaled by `query_pre_attn_scalar` ** -0.5, not head_dim ** -0.5, and each
  query and key head is RMS-normalized before the rotation (Qwen3's q_norm, k_norm);
- the MLP is GeGLU: GELU's tanh approximation (`gelu_pytorch_tanh`) of the gate times up;
- four norms a layer: before and after attention, before and after the MLP; every RMSNorm
  multiplies by (1 + weight);
- the embedding is scaled by sqrt(hidden_size), and the logits may be soft-capped
  (`final_logit_softcapping`: cap * tanh(logits / cap)). The LM head is the embedding.

`from_dict` reads config.json as the hub ships it (`rope_theta`, `rope_local_base_freq`,
`sliding_window_pattern` or `layer_types`) and as transformers 5 writes it (`rope_parameters`
per layer kind), and refuses what the model does not run, naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from nanovllm.model.architectures.hf_config import (
    build,
    check_rope_scaling,
    given,
    read_config,
    rope_scaling,
    token_ids,
)

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True, slots=True)
class Gemma3Config:
    vocab_size: int = 262144
    hidden_size: int = 640
    intermediate_size: int = 2048
    num_hidden_layers: int = 18
    num_attention_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 256
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0        # the global layers'
    rope_scaling: dict | None = None     # ... and their scaling (linear on the larger models)
    rope_local_base_freq: float = 10000.0  # the sliding layers'
    sliding_window: int = 512
    layer_types: tuple[str, ...] = ()    # SLIDING or FULL per layer; (): every sixth is FULL
    query_pre_attn_scalar: float = 256
    final_logit_softcapping: float | None = None
    bos_token_id: int | None = 2
    eos_token_ids: tuple[int, ...] = field(default=(1,))
    tie_word_embeddings: bool = True
    architecture: str = "Gemma3ForCausalLM"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_kv_heads", "head_dim", "max_position_embeddings",
                     "sliding_window"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary pairs)")
        if self.layer_types and (len(self.layer_types) != self.num_hidden_layers
                                 or not set(self.layer_types) <= {SLIDING, FULL}):
            raise ValueError(f"layer_types must give {SLIDING!r} or {FULL!r} for each of the "
                             f"{self.num_hidden_layers} layers, got {list(self.layer_types)}")
        for name in ("rms_norm_eps", "rope_theta", "rope_local_base_freq",
                     "query_pre_attn_scalar"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        cap = self.final_logit_softcapping
        if cap is not None and (not isinstance(cap, int | float) or cap <= 0):
            raise ValueError(f"final_logit_softcapping must be a positive number or null, "
                             f"got {cap!r}")
        if not self.eos_token_ids:
            raise ValueError("eos_token_id is missing (in config.json and generation_config.json)")
        check_rope_scaling(self.rope_scaling)

    # The names the engine reads of any model's config (GPT2Config's).
    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_embd = property(lambda self: self.hidden_size)
    n_positions = property(lambda self: self.max_position_embeddings)
    eos_token_id = property(lambda self: self.eos_token_ids[0])

    def layer_type(self, layer: int) -> str:
        """SLIDING or FULL: `layer_types`' entry, or every sixth layer FULL without them."""
        if self.layer_types:
            return self.layer_types[layer]
        return FULL if (layer + 1) % 6 == 0 else SLIDING

    def window(self, layer: int) -> int:
        """The positions layer `layer` attends to (0: all of them)."""
        return self.sliding_window if self.layer_type(layer) == SLIDING else 0

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    @property
    def num_params(self) -> int:
        e, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_kv_heads * d
        per_layer = e * (q + 2 * kv) + q * e + 3 * e * i + 4 * e + 2 * d
        return self.vocab_size * e + self.num_hidden_layers * per_layer + e

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> Gemma3Config:
        """Reads a Hugging Face Gemma 3 text config, refusing what we do not run."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        for key, allowed in (("hidden_activation", ("gelu_pytorch_tanh", None)),
                             ("attn_logit_softcapping", (None,)),
                             ("use_bidirectional_attention", (None, False)),
                             ("attention_bias", (None, False))):
            if d.get(key) not in allowed:
                raise ValueError(f"{source}: {key}={d[key]!r} is not supported")
        rope = d.get("rope_parameters") or {}  # transformers 5: per layer kind
        full, local = rope.get(FULL) or {}, rope.get(SLIDING) or {}
        scaling = rope_scaling(d.get("rope_scaling")
                               or {k: v for k, v in full.items() if k != "rope_theta"})
        fields = dict(
            rope_theta=full.get("rope_theta", d.get("rope_theta", 1000000.0)),
            rope_local_base_freq=local.get("rope_theta", d.get("rope_local_base_freq", 10000.0)),
            rope_scaling=scaling,
            num_kv_heads=d.get("num_key_value_heads") or d.get("num_attention_heads", 4),
            layer_types=tuple(d.get("layer_types") or _pattern(d)),
            eos_token_ids=token_ids(d.get("eos_token_id"), "eos_token_id"),
            bos_token_id=d.get("bos_token_id"),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
            final_logit_softcapping=d.get("final_logit_softcapping"))
        fields |= given(d, ("vocab_size", "hidden_size", "intermediate_size",
                            "num_hidden_layers", "num_attention_heads", "head_dim",
                            "max_position_embeddings", "rms_norm_eps", "sliding_window",
                            "query_pre_attn_scalar"))
        return build(cls, fields, source)

    @classmethod
    def from_json(cls, path: str | Path) -> Gemma3Config:
        """config.json, with generation_config.json's eos_token_id (an id or a list) if it has
        one (Gemma's lists <end_of_turn> beside <eos>)."""
        return cls.from_dict(read_config(path, generation_eos=True), source=str(path))

    def to_hf_dict(self) -> dict:
        """The config.json a Hugging Face Gemma 3 text checkpoint carries (hub style)."""
        return {"architectures": [self.architecture], "model_type": "gemma3_text",
                "hidden_activation": "gelu_pytorch_tanh", "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "max_position_embeddings": self.max_position_embeddings,
                "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
                "rope_scaling": self.rope_scaling,
                "rope_local_base_freq": self.rope_local_base_freq,
                "sliding_window": self.sliding_window,
                "layer_types": [self.layer_type(i) for i in range(self.num_hidden_layers)],
                "query_pre_attn_scalar": self.query_pre_attn_scalar,
                "final_logit_softcapping": self.final_logit_softcapping,
                "attn_logit_softcapping": None, "attention_bias": False,
                "tie_word_embeddings": self.tie_word_embeddings,
                "bos_token_id": self.bos_token_id, "pad_token_id": 0,
                "eos_token_id": (self.eos_token_ids[0] if len(self.eos_token_ids) == 1
                                 else list(self.eos_token_ids))}


def _pattern(d: dict) -> list[str]:
    """Old configs' `sliding_window_pattern` (every n-th layer global; 6 if absent)."""
    n = d.get("sliding_window_pattern") or 6
    return [FULL if (i + 1) % n == 0 else SLIDING for i in range(d.get("num_hidden_layers", 18))]


# Real shapes of the Gemma 3 text models, for `--load-format dummy` and benchmarks.
GEMMA3_PRESETS: dict[str, Gemma3Config] = {
    "gemma-3-270m": Gemma3Config(),
    "gemma-3-1b": Gemma3Config(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26),
}
