"""GPT-2 hyper-parameters: the config.json fields we use, and the five published presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from nanovllm.model.architectures.hf_config import build, given, read_config


@dataclass(frozen=True, slots=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.layer_norm_epsilon, int | float) or self.layer_norm_epsilon <= 0:
            raise ValueError(f"layer_norm_epsilon must be a positive number, "
                             f"got {self.layer_norm_epsilon!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def architecture(self) -> str:  # config.json's, as LlamaConfig has it
        return "GPT2LMHeadModel"

    @property
    def tie_word_embeddings(self) -> bool:  # the LM head is the token embedding, always
        return True

    @property
    def num_kv_heads(self) -> int:  # the KV cache's heads: all of them (no grouped queries)
        return self.n_head

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.eos_token_id,)

    @property
    def num_params(self) -> int:
        E, L = self.n_embd, self.n_layer
        per_layer = 12 * E * E + 13 * E  # c_attn, c_proj, c_fc, mlp c_proj, 2 layer norms
        return (self.vocab_size + self.n_positions) * E + L * per_layer + 2 * E

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> GPT2Config:
        """Reads a Hugging Face GPT-2 config, refusing the variants this model does not implement."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{source}: model_type {d['model_type']!r} is not 'gpt2'")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{source}: activation_function {act!r} is not supported (gelu_new only)")
        n_inner = d.get("n_inner")
        if n_inner not in (None, 4 * d.get("n_embd", 768)):
            raise ValueError(f"{source}: n_inner={n_inner} is not supported (only 4 * n_embd)")
        for key, want in (("scale_attn_by_inverse_layer_idx", False),
                          ("reorder_and_upcast_attn", False), ("scale_attn_weights", True)):
            if d.get(key, want) != want:
                raise ValueError(f"{source}: {key}={d[key]!r} is not supported (expected {want!r})")
        return build(cls, given(d, cls.__dataclass_fields__), source)

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        return cls.from_dict(read_config(path), source=str(path))

    def to_hf_dict(self) -> dict:
        """The config.json a Hugging Face GPT-2 checkpoint carries."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "n_ctx": self.n_positions,
            "n_inner": None,
            "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            **asdict(self),
        }


PRESETS: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
    "distilgpt2": GPT2Config(n_layer=6),
}
