"""Beam search on GPT-2 124M's shapes equals transformers', token for token (slow: a 124M
checkpoint). transformers' own GPT2LMHeadModel, with its own random initialisation, is saved
by the test and read by both sides; our beams of width 4 must equal `generate(num_beams=4,
num_return_sequences=4, do_sample=False)`, best first, cum logprobs within 1e-4."""

from __future__ import annotations

import pytest
import torch
from beam_checks import RefBeam, assert_same_beams, hf_beams
from engine_checks import random_prompts
from transformers import GPT2Config, GPT2LMHeadModel

from nanovllm import LLM
from nanovllm.model.checkpoint.dummy import cache_root
from nanovllm.model.checkpoint.tokenizer_files import write_tokenizer
from nanovllm.values.beam_search_params import BeamSearchParams

WIDTH, TOKENS = 4, 12


@pytest.mark.slow
def test_beams_match_transformers_on_gpt2_124m_shapes(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.save_pretrained(tmp_path)
    write_tokenizer(tmp_path, hf.config.vocab_size, hf.config.n_positions,
                    cache_root() / "tokenizers")
    prompts = random_prompts(seed=5, count=2, low=5, high=40, vocab=50000)
    llm = LLM(str(tmp_path), num_kv_blocks=64)
    outputs = llm.beam_search(prompts, BeamSearchParams(WIDTH, TOKENS))
    for prompt, out in zip(prompts, outputs):
        ours = [RefBeam(s.tokens[len(prompt):], s.cum_logprob, s.score) for s in out.sequences]
        assert_same_beams(ours, hf_beams(hf, prompt, WIDTH, TOKENS),
                          f"124M shapes, prompt of {len(prompt)}")
