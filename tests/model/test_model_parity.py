"""Parity of the numpy forward pass with transformers' GPT2LMHeadModel.

Both models load the SAME checkpoint directory (ours with `load_gpt2`, transformers with
`from_pretrained` in float32 eval mode) and must give the same full-sequence logits to 1e-4.
The measured max |diff| is printed (see it with `pytest -s`) and recorded as a test property.
Dummy checkpoints have zero biases and unit layer-norm gains, so one variant randomises those
too: otherwise a dropped or mis-wired bias would go unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from nanovllm.model import forward, load_gpt2

TOL = 1e-4


def hf_model(model_dir) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model: GPT2LMHeadModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def max_diff_vs_transformers(model_dir, hf, n: int, seed: int, record_property) -> float:
    cfg, weights = load_gpt2(model_dir)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, n)
    ours = forward(weights, cfg, ids, np.arange(n))
    ref = hf_logits(hf, ids)
    assert ours.shape == ref.shape == (n, cfg.vocab_size)
    assert ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    print(f"\n{model_dir.name} n={n}: max |ours - transformers| = {diff:.3g} "
          f"(max |logit| {np.abs(ref).max():.3g})")
    record_property("max_abs_diff", diff)
    return diff


@pytest.fixture(scope="module")
def tiny_hf(tiny_ckpt):
    return hf_model(tiny_ckpt)


@pytest.fixture(scope="module")
def gpt2_hf(gpt2_ckpt):
    return hf_model(gpt2_ckpt)


@pytest.fixture(scope="module")
def perturbed_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with random biases and layer-norm parameters, and larger weights.

    The embedding (also the LM head) is scaled up so that logits reach real GPT-2's magnitude
    (tens), where float32 rounding in a 1e-4 comparison starts to matter.
    """
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(1)
    tensors = load_file(str(tiny_ckpt / "model.safetensors"))
    for name, t in tensors.items():
        noise = rng.standard_normal(t.shape, dtype=np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensors[name] = 1 + 0.2 * noise
        elif name.endswith(".bias"):
            tensors[name] = 0.1 * noise
        elif name == "wte.weight":
            tensors[name] = 20 * t
        else:
            tensors[name] = 3 * t
    out = tmp_path_factory.mktemp("perturbed")
    (out / "config.json").write_bytes((tiny_ckpt / "config.json").read_bytes())
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize("n", [1, 2, 33, 256])  # 256 = the tiny model's n_positions
def test_tiny_logits_match_transformers(tiny_ckpt, tiny_hf, n, record_property):
    assert max_diff_vs_transformers(tiny_ckpt, tiny_hf, n, seed=n, record_property=record_property) <= TOL


@pytest.mark.parametrize("n", [1, 200])
def test_tiny_with_random_biases_and_layer_norms_matches_transformers(perturbed_ckpt, n,
                                                                       record_property):
    hf = hf_model(perturbed_ckpt)
    assert max_diff_vs_transformers(perturbed_ckpt, hf, n, seed=n, record_property=record_property) <= TOL


@pytest.mark.parametrize("n", [1, 300])
def test_gpt2_124m_shapes_logits_match_transformers(gpt2_ckpt, gpt2_hf, n, record_property):
    assert max_diff_vs_transformers(gpt2_ckpt, gpt2_hf, n, seed=n, record_property=record_property) <= TOL


def test_checkpoint_saved_by_transformers_loads_and_matches(tmp_path, tiny_hf, record_property):
    """A directory written by transformers' own save_pretrained (prefixed keys, 3 shards)."""
    tiny_hf.save_pretrained(tmp_path, max_shard_size="300KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert max_diff_vs_transformers(tmp_path, tiny_hf, 50, seed=3, record_property=record_property) <= TOL


def test_bf16_checkpoint_saved_by_transformers_matches_transformers_fp32(tmp_path, tiny_ckpt,
                                                                           record_property):
    """transformers' bf16 save, read back by both sides as float32, gives the same logits."""
    hf_model(tiny_ckpt).to(torch.bfloat16).save_pretrained(tmp_path)
    hf = hf_model(tmp_path)
    assert next(hf.parameters()).dtype == torch.float32
    assert max_diff_vs_transformers(tmp_path, hf, 40, seed=4, record_property=record_property) <= TOL
