"""Greedy generation through the whole engine equals transformers' greedy generation.

Twenty token-id prompts of 1..60 tokens run together on a paged KV cache with 4-token blocks,
under settings that force the hard paths: a KV pool too small for everyone (preemption and
recomputation), a tiny token budget (chunked prefill), and a tiny sequence cap. Each prompt's
continuation must match, token for token, what transformers generates for that prompt alone.
`min_tokens == max_tokens` on our side and `min_new_tokens == max_new_tokens` on theirs both
keep EOS out, so the two sides follow the same rule.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import hf_greedy

from nanovllm import SamplingParams

NUM_TOKENS = 16
PROMPTS = [np.random.default_rng(n).integers(0, 1024, n).tolist()
           for n in np.linspace(1, 60, 20).astype(int)]


@pytest.fixture(scope="module")
def references(hf_tiny) -> list[list[int]]:
    return [hf_greedy(hf_tiny, p, NUM_TOKENS) for p in PROMPTS]


@pytest.mark.parametrize("options, expect_preemption", [
    (dict(num_kv_blocks=40), True),
    (dict(num_kv_blocks=40, max_num_batched_tokens=16), True),
    (dict(num_kv_blocks=40, max_num_seqs=3), False),
    (dict(num_kv_blocks=20, enable_prefix_caching=False, max_num_batched_tokens=7), True),
    (dict(num_kv_blocks=400, max_num_seqs=5, max_num_batched_tokens=23), False),
], ids=["small-pool", "chunked-prefill", "max-num-seqs-3", "no-prefix-cache-odd-budget", "roomy"])
def test_batched_greedy_matches_transformers(make_llm, references, options, expect_preemption):
    llm = make_llm(block_size=4, **options)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out, ref in zip(PROMPTS, outputs, references):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == ref, f"prompt of {len(prompt)} tokens"
        assert out.outputs[0].finish_reason == "length"
    stats = llm.engine.get_stats()
    if expect_preemption:
        assert stats.num_preemptions_total > 0, "the pool was meant to force preemption"
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.generation_tokens_total == NUM_TOKENS * len(PROMPTS)
