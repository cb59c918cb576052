"""Hyper-parameters of the Llama family: Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2 and Qwen3.

Llama, Mistral and Qwen2 differ from each other only in two config fields, so one config (and
one model, `model/architectures/llama.py`) serves them, as vLLM's llama.py does: `attention_bias`
(Qwen2's q/k/v biases) and `sliding_window` (Mistral's). Qwen3 is Qwen2 without the biases, with an
RMSNorm on each query and key head (`qk_norm`) and a `head_dim` of its own: the same config,
its own composition file (`model/architectures/qwen3.py`). From GPT-2 they differ in four ways, each
a field here: RMSNorm (`rms_norm_eps`), rotary positions (`rope_theta`, `rope_scaling`), a SwiGLU
MLP (`intermediate_size`) and grouped-query attention (`num_kv_heads`, config.json's
`num_key_value_heads`).

`from_dict` reads config.json as the hub ships it (`rope_theta` + `rope_scaling`) and as
transformers 5 writes it (`rope_parameters`), and refuses what the model does not implement
(a rope scaling type, an activation) with the field named. The engine reads the same few
GPT-2-named properties of any config: n_layer, n_head, n_embd, n_positions, head_dim,
num_kv_heads, vocab_size, eos_token_id, num_params.
"""

from __future__ import annotations

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

LLAMA_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                       "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    architecture: str = "LlamaForCausalLM"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_kv_heads: int = 32
    head_size: int = 0                  # config.json's head_dim; 0: hidden_size // heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None    # {"rope_type": "llama3" | "linear", "factor": ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False        # Qwen2: q/k/v projections have biases
    sliding_window: int = 0             # Mistral: attend to the last this many positions; 0: all
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = field(default=(2,))  # every one ends a sequence

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_kv_heads={self.num_kv_heads}")
        if not self.head_size and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (rotary pairs)")
        if not self.eos_token_ids:
            raise ValueError("eos_token_id is missing (in config.json and generation_config.json)")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        check_rope_scaling(self.rope_scaling)
        factors = (self.rope_scaling or {}).get("factors")
        if factors is not None and len(factors) != self.head_dim // 2:
            raise ValueError(f"rope_scaling freq_factors: {len(factors)} factors, but a head "
                             f"of {self.head_dim} has {self.head_dim // 2} rotary pairs")

    # The names the engine reads of any model's config (GPT2Config's).
    @property
    def n_layer(self) -> int:
        return self.num_hidden_layers

    @property
    def n_head(self) -> int:
        return self.num_attention_heads

    @property
    def n_embd(self) -> int:
        return self.hidden_size

    @property
    def n_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_attention_heads

    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]

    @property
    def o_proj_bias(self) -> bool:
        """Llama's (and Qwen3's) attention_bias covers o_proj too; Qwen2's biases are q/k/v
        only."""
        return self.attention_bias and self.architecture in ("LlamaForCausalLM",
                                                             "Qwen3ForCausalLM")

    @property
    def qk_norm(self) -> bool:
        """Qwen3: each query and key head is RMS-normalized (gains q_norm, k_norm [head_dim])
        before the rotation."""
        return self.architecture == "Qwen3ForCausalLM"

    @property
    def model_type(self) -> str:
        return LLAMA_ARCHITECTURES[self.architecture]

    @property
    def num_params(self) -> int:
        e, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_kv_heads * d
        attn = (e * (q + 2 * kv) + q * e + (q + 2 * kv if self.attention_bias else 0)
                + (e if self.o_proj_bias else 0))
        per_layer = attn + 3 * e * i + 2 * e + (2 * d if self.qk_norm else 0)
        head = 0 if self.tie_word_embeddings else self.vocab_size * e
        return self.vocab_size * e + self.num_hidden_layers * per_layer + e + head

    def text_multiply_adds(self, length: int) -> int:
        """Multiply-adds of one text of `length` tokens through the layers (the LM head not
        counted): the linear layers (Q, K, V, output, MLP gate, up and down) and attention's two
        products over the keys each query sees (causal: length * (length + 1) / 2 pairs).
        Embeddings, norms, activations and rotary are not counted."""
        e, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        linear = length * (e * (q + 2 * kv) + q * e + 3 * e * i)
        return self.num_hidden_layers * (linear + length * (length + 1) * q)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> LlamaConfig:
        """Reads a Hugging Face config of a Llama-family model, refusing what we do not run."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        arch = (d.get("architectures") or ["LlamaForCausalLM"])[0]
        if arch not in LLAMA_ARCHITECTURES:
            raise ValueError(f"{source}: architecture {arch!r} is not one of "
                             f"{', '.join(LLAMA_ARCHITECTURES)}")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: hidden_act {act!r} is not supported (silu only)")
        if d.get("mlp_bias"):
            raise ValueError(f"{source}: mlp_bias=true is not supported")
        rope = dict(d.get("rope_parameters") or {})  # transformers 5 keeps rope_theta in here
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        scaling = rope_scaling(d.get("rope_scaling") or rope)
        fields = dict(
            architecture=arch, rope_theta=theta, rope_scaling=scaling,
            attention_bias=arch == "Qwen2ForCausalLM" or bool(d.get("attention_bias")),
            sliding_window=_sliding_window(d, arch),
            head_size=d.get("head_dim") or 0,
            eos_token_ids=token_ids(d.get("eos_token_id"), "eos_token_id"),
            bos_token_id=d.get("bos_token_id"),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        )
        fields |= given(d, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "max_position_embeddings", "rms_norm_eps"))
        fields["num_kv_heads"] = d.get("num_key_value_heads") or fields.get(
            "num_attention_heads", cls.__dataclass_fields__["num_attention_heads"].default)
        return build(cls, fields, source)

    @classmethod
    def from_json(cls, path: str | Path) -> LlamaConfig:
        """config.json, with the eos_token_id (an id or a list) of the generation_config.json
        beside it if that has one: it is what ends generation in transformers and vLLM."""
        return cls.from_dict(read_config(path, generation_eos=True), source=str(path))

    def to_hf_dict(self) -> dict:
        """The config.json a Hugging Face checkpoint of this architecture carries (hub style)."""
        d = {"architectures": [self.architecture], "model_type": self.model_type,
             "hidden_act": "silu", "vocab_size": self.vocab_size,
             "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
             "num_hidden_layers": self.num_hidden_layers,
             "num_attention_heads": self.num_attention_heads,
             "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
             "max_position_embeddings": self.max_position_embeddings,
             "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
             "rope_scaling": self.rope_scaling, "tie_word_embeddings": self.tie_word_embeddings,
             "bos_token_id": self.bos_token_id,
             "eos_token_id": (self.eos_token_ids[0] if len(self.eos_token_ids) == 1
                              else list(self.eos_token_ids))}
        if self.architecture in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
            d["attention_bias"] = self.attention_bias
        if self.architecture == "MistralForCausalLM":
            d["sliding_window"] = self.sliding_window or None
        if self.architecture in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
            d.update(use_sliding_window=bool(self.sliding_window),
                     sliding_window=self.sliding_window or None)
        return d


def _sliding_window(d: dict, arch: str) -> int:
    """Mistral's window (null on v0.2+: none); Qwen2's and Qwen3's only with use_sliding_window,
    which their released models leave off (and per-layer windows, max_window_layers, are
    refused)."""
    window = d.get("sliding_window")
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        if not d.get("use_sliding_window"):
            return 0
        if d.get("max_window_layers", d.get("num_hidden_layers")) < d.get("num_hidden_layers", 0):
            raise ValueError(f"{arch} with max_window_layers below num_hidden_layers (a window on "
                             "some layers only) is not supported")
    elif arch != "MistralForCausalLM":
        return 0
    if window is None:
        return 0
    if type(window) is not int or window < 1:
        raise ValueError(f"sliding_window must be a positive integer or null, got {window!r}")
    return window


# Real shapes of the models people run on a CPU, for `--load-format dummy` and benchmarks.
LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_kv_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
        eos_token_ids=(2,)),
    "smollm2-360m": LlamaConfig(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_kv_heads=5, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
        eos_token_ids=(2,)),
    "tinyllama": LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_kv_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_ids=(2,)),
    "llama-3.2-1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_kv_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_ids=(128001, 128008, 128009)),
    "qwen2.5-0.5b": LlamaConfig(
        architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_kv_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=True,
        bos_token_id=151643, eos_token_ids=(151645, 151643)),
    "qwen3-0.6b": LlamaConfig(
        architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_kv_heads=8,
        head_size=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_ids=(151645, 151643)),
    # Qwen3's shapes, served for embeddings with --runner pooling (last-token pooling).
    "qwen3-embedding-0.6b": LlamaConfig(
        architecture="Qwen3ForCausalLM", vocab_size=151669, hidden_size=1024,
        intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_kv_heads=8,
        head_size=128, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_ids=(151643,)),
    "qwen3-1.7b": LlamaConfig(
        architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=2048,
        intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, num_kv_heads=8,
        head_size=128, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_ids=(151645, 151643)),
    "mistral-7b": LlamaConfig(
        architecture="MistralForCausalLM", vocab_size=32000, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_kv_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
        sliding_window=4096, bos_token_id=1, eos_token_ids=(2,)),
}
