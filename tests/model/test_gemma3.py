"""Gemma 3 (Gemma3ForCausalLM) equals transformers' logits on a tiny random checkpoint that
transformers writes: the engine's forward pass and the plain reference, a sequence longer than
the sliding window so that the window matters; and its dummy preset has gemma-3-270m's shapes."""

from __future__ import annotations

import numpy as np
import pytest
from gemma_checkpoints import write_hf_gemma3

from nanovllm.model.architectures import gemma3_reference
from nanovllm.model.architectures.registry import family_of, load_checkpoint

TOL = 2e-4


@pytest.fixture(scope="module")
def gemma_ckpt(tmp_path_factory):
    return write_hf_gemma3(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def hf_logits(gemma_ckpt):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(gemma_ckpt, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(0, 1000, 40)
    with torch.no_grad():
        return ids, hf(torch.tensor(ids[None])).logits[0].numpy()


def test_forward_and_reference_match_transformers(gemma_ckpt, hf_logits):
    ids, theirs = hf_logits
    cfg, weights = load_checkpoint(gemma_ckpt)
    assert cfg.window(0) == 8 and cfg.window(1) == 0 and len(ids) > 4 * cfg.sliding_window
    ours = family_of(cfg).forward(weights, cfg, ids, np.arange(len(ids)))
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    np.testing.assert_allclose(gemma3_reference.forward(weights, cfg, ids), theirs, atol=TOL,
                               rtol=0)


def test_the_window_changes_the_logits(gemma_ckpt, hf_logits):
    """Without the window the late positions' logits differ: the test above sees it."""
    from dataclasses import replace

    ids, theirs = hf_logits
    cfg, weights = load_checkpoint(gemma_ckpt)
    wide = replace(cfg, sliding_window=64)
    assert np.abs(gemma3_reference.forward(weights, wide, ids) - theirs)[20:].max() > 1e-2


def test_dummy_preset_has_the_270m_shapes(tmp_path):
    """The preset's config.json makes, in transformers (on the meta device), the model whose
    parameters are the tensors our loader expects, and the published parameter count."""
    import torch
    import transformers

    from nanovllm.model.architectures.families import GEMMA3
    from nanovllm.model.architectures.gemma3_config import GEMMA3_PRESETS

    cfg = GEMMA3_PRESETS["gemma-3-270m"]
    d = cfg.to_hf_dict()
    d.pop("architectures")
    hf_config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(hf_config)
    theirs = {name.removeprefix("model."): tuple(p.shape) for name, p in model.named_parameters()
              if name != "lm_head.weight"}
    assert theirs == GEMMA3.shapes(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params
    assert round(cfg.num_params / 1e6) == 268  # gemma-3-270m's count
