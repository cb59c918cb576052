"""The Llama family through the whole engine equals transformers: greedy tokens and logprobs.

For every LLAMA_VARIANTS checkpoint (tests/conftest.py), token-id prompts of 1..60 tokens run
together on a paged KV cache of 4-token blocks under settings that force preemption and
chunked prefill (GPT-2's test_engine_greedy_parity.py), with the KV cache holding only the
key/value heads. Each continuation must equal transformers' greedy one for that prompt alone;
Mistral's window (12) is shorter than most prompts and every generation, so decode and chunked
prefill both cross it. Logprobs are within GPT-2's bound (test_engine_logprobs.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import hf_greedy, hf_logprobs
from llama_checkpoints import LLAMA_VARIANTS

from nanovllm import LLM, SamplingParams

NUM_TOKENS = 16
PROMPTS = [np.random.default_rng(n).integers(0, 1000, n).tolist()
           for n in np.linspace(1, 60, 12).astype(int)]
LOGPROB_TOL = 1e-3


@pytest.fixture(scope="module")
def references(llama_ckpt, hf_llama):
    return {v: [hf_greedy(hf_llama(llama_ckpt(v)), p, NUM_TOKENS) for p in PROMPTS]
            for v in LLAMA_VARIANTS}


@pytest.mark.parametrize("options", [
    dict(num_kv_blocks=40, max_num_batched_tokens=16),
    dict(num_kv_blocks=20, enable_prefix_caching=False, max_num_batched_tokens=7),
    dict(num_kv_blocks=400, max_num_seqs=5, max_num_batched_tokens=23, kv_cache_dtype="float16"),
], ids=["chunked-prefill-preemption", "tiny-pool-odd-budget", "roomy-fp16-kv"])
@pytest.mark.parametrize("variant", LLAMA_VARIANTS)
def test_batched_greedy_matches_transformers(llama_ckpt, references, variant, options):
    llm = LLM(str(llama_ckpt(variant)), block_size=4, **options)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out, ref in zip(PROMPTS, outputs, references[variant]):
        assert out.outputs[0].token_ids == ref, f"prompt of {len(prompt)} tokens"
    stats = llm.engine.get_stats()
    if options["num_kv_blocks"] <= 40:
        assert stats.num_preemptions_total > 0, "the pool was meant to force preemption"
    assert stats.num_free_blocks == stats.num_total_blocks


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window"])
def test_logprobs_match_transformers(llama_ckpt, hf_llama, variant):
    llm = LLM(str(llama_ckpt(variant)), block_size=4, num_kv_blocks=200)
    prompts = PROMPTS[-4:]
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=12, logprobs=3,
                            prompt_logprobs=2, ignore_eos=True)
    for prompt, out in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = out.outputs[0]
        ref = hf_logprobs(hf_llama(llama_ckpt(variant)), prompt + completion.token_ids)
        for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
            assert abs(entry[token].logprob - ref[len(prompt) - 1 + i][token]) < LOGPROB_TOL
        for pos in range(1, len(prompt)):
            entry = out.prompt_logprobs[pos]
            assert abs(entry[prompt[pos]].logprob - ref[pos - 1][prompt[pos]]) < LOGPROB_TOL


def test_kv_cache_holds_key_value_heads_only(llama_ckpt):
    llm = LLM(str(llama_ckpt("llama-gqa")), block_size=4, num_kv_blocks=10)
    k, v = llm.engine.runner.kv_cache.layers[0]
    assert k.shape == v.shape == (40, 2, 16)  # 2 key/value heads for 4 query heads
