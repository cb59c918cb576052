"""Parity of both forward passes, the engine's and `model/architectures/gpt2_reference.py`'s, with
transformers.

Both sides load the SAME checkpoint directory (ours with `load_gpt2`, transformers'
GPT2LMHeadModel with `from_pretrained` in float32 eval mode) and must give the same
full-sequence logits to 1e-4. The measured max |diff| is printed (see it with `pytest -s`) and
recorded as a test property. A variant with random biases and layer norms (`perturbed_ckpt`)
catches a dropped or mis-wired bias that a dummy checkpoint's zeros would hide.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from nanovllm.model import forward, load_gpt2
from nanovllm.model.architectures import gpt2_reference as ref

TOL = 1e-4

PATHS = {
    "engine": lambda weights, cfg, ids: forward(weights, cfg, ids, np.arange(len(ids))),
    "reference": ref.forward,
}


def hf_model(model_dir) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model: GPT2LMHeadModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def max_diff_vs_transformers(model_dir, hf, n: int, seed: int, record_property,
                             path: str = "engine") -> float:
    cfg, weights = load_gpt2(model_dir)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, n)
    ours = PATHS[path](weights, cfg, ids)
    theirs = hf_logits(hf, ids)
    assert ours.shape == theirs.shape == (n, cfg.vocab_size)
    assert ours.dtype == np.float32
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{model_dir.name} {path} n={n}: max |ours - transformers| = {diff:.3g} "
          f"(max |logit| {np.abs(theirs).max():.3g})")
    record_property("max_abs_diff", diff)
    return diff


@pytest.fixture(scope="module")
def tiny_hf(tiny_ckpt):
    return hf_model(tiny_ckpt)


@pytest.fixture(scope="module")
def gpt2_hf(gpt2_ckpt):
    return hf_model(gpt2_ckpt)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [1, 2, 33, 256])  # 256 = the tiny model's n_positions
def test_tiny_logits_match_transformers(tiny_ckpt, tiny_hf, n, path, record_property):
    assert max_diff_vs_transformers(tiny_ckpt, tiny_hf, n, n, record_property, path) <= TOL


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [1, 200])
def test_tiny_with_random_biases_and_layer_norms_matches_transformers(perturbed_ckpt, n, path,
                                                                       record_property):
    hf = hf_model(perturbed_ckpt)
    assert max_diff_vs_transformers(perturbed_ckpt, hf, n, n, record_property, path) <= TOL


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [1, 300])
def test_gpt2_124m_shapes_logits_match_transformers(gpt2_ckpt, gpt2_hf, n, path, record_property):
    assert max_diff_vs_transformers(gpt2_ckpt, gpt2_hf, n, n, record_property, path) <= TOL


def test_reference_attention_weights_match_transformers(perturbed_ckpt):
    """`gpt2_reference.attention_weights` is what transformers reports as `attentions`."""
    cfg, weights = load_gpt2(perturbed_ckpt)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, 40)
    hf = GPT2LMHeadModel.from_pretrained(perturbed_ckpt, dtype=torch.float32,
                                         attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = np.stack([a[0].numpy() for a in
                           hf(torch.from_numpy(ids)[None], output_attentions=True).attentions])
    ours = ref.attention_weights(weights, cfg, ids)
    assert ours.shape == theirs.shape == (cfg.n_layer, cfg.n_head, 40, 40)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # probabilities: at most 1 each
    assert (np.triu(ours, k=1) == 0).all()
    np.testing.assert_allclose(ours.sum(-1), 1, rtol=1e-5)


def test_checkpoint_saved_by_transformers_loads_and_matches(tmp_path, tiny_hf, record_property):
    """A directory written by transformers' own save_pretrained (prefixed keys, 3 shards)."""
    tiny_hf.save_pretrained(tmp_path, max_shard_size="300KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert max_diff_vs_transformers(tmp_path, tiny_hf, 50, 3, record_property) <= TOL


def test_bf16_checkpoint_saved_by_transformers_matches_transformers_fp32(tmp_path, tiny_ckpt,
                                                                           record_property):
    """transformers' bf16 save, read back by both sides as float32, gives the same logits."""
    hf_model(tiny_ckpt).to(torch.bfloat16).save_pretrained(tmp_path)
    hf = hf_model(tmp_path)
    assert next(hf.parameters()).dtype == torch.float32
    assert max_diff_vs_transformers(tmp_path, hf, 40, 4, record_property) <= TOL
