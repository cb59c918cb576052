"""Llama, Qwen2, Qwen3 and Mistral against transformers: both of our forward passes, the engine's
(`model/architectures/llama.py`) and the plain reference (`model/architectures/llama_reference.py`),
on checkpoints that transformers' own classes wrote (tests/conftest.py's LLAMA_VARIANTS:
grouped-query and multi-head attention, attention biases, tied and untied heads, llama3 rope
scaling, Qwen2's biases, a Mistral window shorter than the sequence, Qwen3's per-head norms and
wider heads), give the same full-sequence logits to 1e-4, GPT-2's bound. Also: bf16 on disk, sharded
files, and SmolLM2-135M's real shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llama_checkpoints import LLAMA_VARIANTS, write_hf_llama

from nanovllm.model.architectures.registry import family_of, load_checkpoint

TOL = 1e-4


def max_diff(model_dir, hf, n: int, path: str, dtype: str = "auto") -> float:
    cfg, weights = load_checkpoint(model_dir, dtype)
    family = family_of(cfg)
    ids = np.random.default_rng(n).integers(0, cfg.vocab_size, n)
    if path == "engine":
        ours = family.forward(weights, cfg, ids, np.arange(n))
    else:
        ours = family.reference.forward(weights, cfg, ids)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert ours.shape == theirs.shape == (n, cfg.vocab_size) and ours.dtype == np.float32
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{model_dir.name} {path} n={n}: max |ours - transformers| = {diff:.3g} "
          f"(max |logit| {np.abs(theirs).max():.3g})")
    return diff


@pytest.mark.parametrize("path", ["engine", "reference"])
@pytest.mark.parametrize("n", [1, 40, 200])  # 200: longer than a causal block (128)
@pytest.mark.parametrize("variant", LLAMA_VARIANTS)
def test_logits_match_transformers(llama_ckpt, hf_llama, variant, n, path):
    model_dir = llama_ckpt(variant)
    assert max_diff(model_dir, hf_llama(model_dir), n, path) <= TOL


def test_the_variants_are_what_they_say(llama_ckpt):
    """The options reach our config (else the parity above would test less than it claims)."""
    configs = {v: load_checkpoint(llama_ckpt(v))[0] for v in LLAMA_VARIANTS}
    assert configs["llama-gqa"].num_kv_heads == 2 and not configs["llama-gqa"].tie_word_embeddings
    assert configs["llama-mha-bias"].o_proj_bias and configs["llama-mha-bias"].num_kv_heads == 4
    assert configs["llama3-tied"].rope_scaling["rope_type"] == "llama3"
    assert configs["llama3-tied"].tie_word_embeddings
    assert configs["qwen2"].attention_bias and not configs["qwen2"].o_proj_bias
    assert configs["mistral-window"].sliding_window == 12
    qwen3 = configs["qwen3"]
    assert qwen3.qk_norm and not qwen3.attention_bias and qwen3.head_dim == 32 != 64 // 4
    assert not any(c.qk_norm for v, c in configs.items() if v != "qwen3")
    assert all(len(c.eos_token_ids) == 2 for c in configs.values())  # generation_config's list


@pytest.mark.parametrize("path", ["engine", "reference"])
@pytest.mark.parametrize("variant", ["llama-gqa", "qwen3"])
def test_bf16_sharded_checkpoint_matches_transformers(tmp_path, hf_llama, path, variant):
    family, overrides = LLAMA_VARIANTS[variant]
    model_dir = write_hf_llama(tmp_path, family, bf16=True, max_shard_size="200KB", **overrides)
    assert (model_dir / "model.safetensors.index.json").exists()
    assert len(list(model_dir.glob("model-*.safetensors"))) > 1
    assert max_diff(model_dir, hf_llama(model_dir), 50, path) <= TOL


def test_smollm2_135m_shapes_match_transformers(tmp_path, hf_llama):
    """SmolLM2-135M's real shapes (30 layers, 9 query heads over 3 key/value heads, tied)."""
    from nanovllm.model.architectures.llama_config import LLAMA_PRESETS

    p = LLAMA_PRESETS["smollm2-135m"]
    model_dir = write_hf_llama(
        tmp_path, "Llama", hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers, num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_kv_heads, vocab_size=p.vocab_size,
        max_position_embeddings=512, rope_theta=p.rope_theta, tie_word_embeddings=True,
        rms_norm_eps=p.rms_norm_eps, initializer_range=0.02)
    cfg, _ = load_checkpoint(model_dir)
    assert cfg.num_params == sum(t.numel() for t in hf_llama(model_dir).parameters())
    assert max_diff(model_dir, hf_llama(model_dir), 300, "engine") <= TOL
