"""Loads a Hugging Face Llama, Mistral, Qwen2 or Qwen3 checkpoint directory into `LlamaWeights`,
checking every tensor against the config before anything runs.

Single-file or sharded safetensors (the shard reading is GPT-2's, `loader.read_tensors`), F32,
F16 or BF16 on disk. Keys with or without the `model.` prefix; the old `rotary_emb.inv_freq`
buffers are ignored (they are recomputed from the config). `generation_config.json`'s
`eos_token_id`, an id or a list, replaces config.json's: every id in it ends a sequence.

q/k/v are fused into one matrix and gate/up into another (rows in that order), then stored as
`dtype` / `quantization` ask (`model/weights/quant.py`); norms (Qwen3's per-head q_norm and k_norm
too) and biases stay float32.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nanovllm.model.architectures.llama import LayerWeights, LlamaWeights
from nanovllm.model.architectures.llama_config import LlamaConfig
from nanovllm.model.checkpoint.loader import check_shapes, read_tensors
from nanovllm.model.checkpoint.safetensors_io import CheckpointError, release_pages
from nanovllm.model.weights.precision import check_precision
from nanovllm.model.weights.quant import convert_matrix
from nanovllm.model.weights.stacked import join_rows

ROTARY_BUFFER = re.compile(r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor of a model of this config, by its un-prefixed HF name."""
    e, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_kv_heads * d
    shapes = {"embed_tokens.weight": (cfg.vocab_size, e), "norm.weight": (e,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, e)
    for n in range(cfg.num_hidden_layers):
        p = f"layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
            p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
            p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q),
            p + "mlp.gate_proj.weight": (i, e), p + "mlp.up_proj.weight": (i, e),
            p + "mlp.down_proj.weight": (e, i)})
        if cfg.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if cfg.o_proj_bias:
            shapes[p + "self_attn.o_proj.bias"] = (e,)
        if cfg.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
    return shapes


def read_config(model_dir: Path) -> LlamaConfig:
    """config.json, with generation_config.json's eos_token_id (an id or a list) if it has one."""
    try:
        return LlamaConfig.from_json(model_dir / "config.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def load_llama(model_dir: str | Path, dtype: str = "auto",
               quantization: str | None = None) -> tuple[LlamaConfig, LlamaWeights]:
    check_precision(dtype, quantization)
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    tensors, source = read_tensors(model_dir, prefix="model.",
                                   skip=lambda name: ROTARY_BUFFER.fullmatch(name) is not None)
    check_tensors(cfg, tensors, source, model_dir / "config.json")
    return cfg, build_weights(cfg, tensors, dtype, quantization)


def check_tensors(cfg: LlamaConfig, tensors: dict, source: dict, config_path: Path) -> None:
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # a tied copy some checkpoints still carry
    check_shapes(tensors, expected_shapes(cfg), source, config_path, cfg.architecture)


def build_weights(cfg: LlamaConfig, tensors: dict[str, np.ndarray], dtype: str = "auto",
                  quantization: str | None = None) -> LlamaWeights:
    """Arranges checked, un-prefixed HF tensors into `LlamaWeights` (see the module's doc)."""
    check_precision(dtype, quantization)

    def matrix(*parts: np.ndarray):
        fused = join_rows(parts)  # (a GGUF file's block weights too: `model/weights/stacked.py`)
        converted = convert_matrix(fused, dtype, quantization)
        for part in parts:
            if part is not converted:
                release_pages(part)  # read once; only the new copy stays resident
        return converted

    def bias(*names: str) -> np.ndarray | None:
        if names[0] not in tensors:
            return None
        return np.concatenate([tensors[n] for n in names]).astype(np.float32)

    layers = []
    for n in range(cfg.num_hidden_layers):
        p = f"layers.{n}."
        attn, mlp = p + "self_attn.", p + "mlp."
        layers.append(LayerWeights(
            input_norm=tensors[p + "input_layernorm.weight"],
            qkv_w=matrix(*(tensors[f"{attn}{x}_proj.weight"] for x in "qkv")),
            qkv_b=bias(*(f"{attn}{x}_proj.bias" for x in "qkv")),
            o_w=matrix(tensors[attn + "o_proj.weight"]),
            o_b=bias(attn + "o_proj.bias"),
            post_norm=tensors[p + "post_attention_layernorm.weight"],
            gate_up_w=matrix(tensors[mlp + "gate_proj.weight"], tensors[mlp + "up_proj.weight"]),
            down_w=matrix(tensors[mlp + "down_proj.weight"]),
            q_norm=tensors.get(attn + "q_norm.weight"),
            k_norm=tensors.get(attn + "k_norm.weight")))
    embed = matrix(tensors["embed_tokens.weight"])
    lm_head = embed if cfg.tie_word_embeddings else matrix(tensors["lm_head.weight"])
    return LlamaWeights(embed=embed, layers=layers, norm=tensors["norm.weight"], lm_head=lm_head)
