"""Gemma 3 through the whole engine equals transformers: greedy tokens and logprobs.

A tiny Gemma3ForCausalLM (tests/gemma_checkpoints.py: sliding layers with a window of 8 around
a global one) runs token-id prompts of 1..60 tokens together on a paged KV cache of 4-token
blocks, under settings that force preemption and chunked prefill, with prefix caching on and
off, as test_llama_greedy_parity.py does for the Llama family: each continuation must equal
transformers' greedy one for that prompt alone, decode and chunked prefill both crossing the
window. Prompts that share a long prefix are served from the prefix cache with the same tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import hf_greedy, hf_logprobs
from gemma_checkpoints import write_hf_gemma3

from nanovllm import LLM, SamplingParams

NUM_TOKENS = 16
PROMPTS = [np.random.default_rng(n).integers(0, 1000, n).tolist()
           for n in np.linspace(1, 60, 12).astype(int)]
LOGPROB_TOL = 1e-3


@pytest.fixture(scope="module")
def gemma_ckpt(tmp_path_factory):
    return write_hf_gemma3(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def hf(gemma_ckpt):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_ckpt, dtype=torch.float32).eval()


@pytest.mark.parametrize("options", [
    dict(num_kv_blocks=40, max_num_batched_tokens=16),
    dict(num_kv_blocks=400, max_num_seqs=5, max_num_batched_tokens=23, kv_cache_dtype="float16",
         enable_prefix_caching=False),
], ids=["chunked-prefill-preemption", "roomy-fp16-kv"])
def test_batched_greedy_matches_transformers(gemma_ckpt, hf, options):
    llm = LLM(str(gemma_ckpt), block_size=4, **options)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outputs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, NUM_TOKENS), \
            f"prompt of {len(prompt)} tokens"
    stats = llm.engine.get_stats()
    if options["num_kv_blocks"] <= 40:
        assert stats.num_preemptions_total > 0, "the pool was meant to force preemption"
    assert stats.num_free_blocks == stats.num_total_blocks


def test_prefix_cache_hits_give_transformers_tokens(gemma_ckpt, hf):
    """Three prompts sharing a 40-token prefix (five windows), one after another: the later
    ones start from the cached blocks and still continue as transformers does."""
    shared = np.random.default_rng(7).integers(0, 1000, 40).tolist()
    prompts = [shared + [5 + i, 9 * i + 1] for i in range(3)]
    llm = LLM(str(gemma_ckpt), block_size=4, num_kv_blocks=100)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS)
    for prompt in prompts:
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, NUM_TOKENS)
    assert llm.engine.get_stats().prefix_cache_hits > 0


def test_logprobs_match_transformers(gemma_ckpt, hf):
    llm = LLM(str(gemma_ckpt), block_size=4, num_kv_blocks=200)
    prompts = PROMPTS[-3:]
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=12, logprobs=3,
                            prompt_logprobs=2, ignore_eos=True)
    for prompt, out in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = out.outputs[0]
        ref = hf_logprobs(hf, prompt + completion.token_ids)
        for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
            assert abs(entry[token].logprob - ref[len(prompt) - 1 + i][token]) < LOGPROB_TOL
        for pos in range(1, len(prompt)):
            entry = out.prompt_logprobs[pos]
            assert abs(entry[prompt[pos]].logprob - ref[pos - 1][prompt[pos]]) < LOGPROB_TOL
