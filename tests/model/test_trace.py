"""`model/architectures/trace.py`, one forward pass layer by layer: its last lens is the model's
output (the reference path exactly, the engine's fast path to rounding), its residual norms are what
transformers reports as hidden states, its attention is reference.attention_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from nanovllm.model import forward
from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.architectures.trace import LENS_TOP_K, trace_forward


@pytest.fixture(scope="module")
def traced(perturbed_model):
    cfg, weights = perturbed_model
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 23)
    return cfg, weights, ids, trace_forward(weights, cfg, ids)


def test_shapes_one_stage_per_layer_plus_the_embeddings(traced):
    cfg, _, ids, trace = traced
    t, s = len(ids), cfg.n_layer + 1
    assert trace.num_stages == s
    assert trace.residual_norm.shape == (s, t) and trace.final_token_prob.shape == (s, t)
    assert trace.attention.shape == (cfg.n_layer, cfg.n_head, t, t)
    assert trace.lens_token_ids.shape == trace.lens_probs.shape == (s, t, LENS_TOP_K)
    np.testing.assert_array_equal(trace.token_ids, ids)


def test_the_last_lens_is_the_models_output(traced):
    cfg, weights, ids, trace = traced
    probs = ref.softmax(ref.forward(weights, cfg, ids))  # [T, V]
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :LENS_TOP_K]
    np.testing.assert_array_equal(trace.lens_token_ids[-1], order)
    np.testing.assert_array_equal(trace.lens_probs[-1], np.take_along_axis(probs, order, -1))
    np.testing.assert_array_equal(trace.final_token_prob[-1], trace.lens_probs[-1, :, 0])
    # The engine's fast path (compiled kernels, another summation order) predicts the same.
    fast = forward(weights, cfg, ids, np.arange(len(ids)))
    np.testing.assert_array_equal(fast.argmax(-1), trace.lens_token_ids[-1, :, 0])


def test_lens_rows_are_sorted_distributions(traced):
    _, _, _, trace = traced
    p = trace.lens_probs
    assert (np.diff(p, axis=-1) <= 0).all() and (p >= 0).all() and (p.sum(-1) <= 1 + 1e-6).all()
    # Stages other than the last disagree with the output somewhere (the lens is not a copy).
    assert (trace.lens_token_ids[0] != trace.lens_token_ids[-1]).any()
    assert ((trace.final_token_prob >= 0) & (trace.final_token_prob <= 1)).all()


def test_attention_is_reference_attention_weights(traced):
    cfg, weights, ids, trace = traced
    np.testing.assert_array_equal(trace.attention, ref.attention_weights(weights, cfg, ids))


def test_residual_norms_match_transformers_hidden_states(traced, perturbed_ckpt):
    """transformers' hidden_states: the embeddings, then after each block (its last one after
    the final layer norm, so the last stage is compared with its own output)."""
    cfg, weights, ids, trace = traced
    hf = GPT2LMHeadModel.from_pretrained(perturbed_ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = hf(torch.from_numpy(ids)[None], output_hidden_states=True).hidden_states
    theirs = np.stack([np.linalg.norm(h[0].numpy(), axis=-1) for h in hidden[:-1]])
    np.testing.assert_allclose(trace.residual_norm[:-1], theirs, rtol=1e-5)


def test_short_prompts_and_a_single_token(tiny_model):
    cfg, weights = tiny_model
    trace = trace_forward(weights, cfg, np.array([7]), top_k=3)
    assert trace.lens_token_ids.shape == (cfg.n_layer + 1, 1, 3)
    assert trace.attention.shape == (cfg.n_layer, cfg.n_head, 1, 1)
    np.testing.assert_allclose(trace.attention, 1)
