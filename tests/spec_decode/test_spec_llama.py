"""Speculative decoding on the Llama family (GPT-2's test_spec_engine.py on tiny grouped-query
Llama, Qwen2 and Mistral-window checkpoints): greedy output token for token what it is without
speculation, with n-gram lookup and with a draft (the same checkpoint, and itself in int8),
with 4-token blocks and a pool small enough to preempt. Mistral's window (12) is shorter than
the prompts plus the output, so verification chunks cross it."""

from __future__ import annotations

import pytest
from test_spec_engine import GREEDY_CASES, NGRAM, REPEATS, draft_config, outputs

from nanovllm import LLM

VARIANTS = ["llama-gqa", "qwen2", "mistral-window"]
SPECS = {
    "ngram": lambda ckpt: NGRAM,
    "draft": draft_config,
    "draft-int8": lambda ckpt: draft_config(ckpt, quantization="int8"),
}
CASES = ["plain", "n=2", "penalties", "stop"]
SMALL = dict(block_size=4, num_kv_blocks=24, max_num_batched_tokens=16)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", SPECS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_output_is_unchanged(llama_ckpt, variant, method, case):
    model_dir = str(llama_ckpt(variant))
    params = GREEDY_CASES[case]
    llm = LLM(model_dir, speculative_config=SPECS[method](model_dir), **SMALL)
    assert outputs(llm, REPEATS, params) == outputs(LLM(model_dir, **SMALL), REPEATS, params)
    stats = llm.engine.spec_stats
    # A random model's own tokens rarely repeat the prompt's, under penalties never: n-gram
    # lookup proposes on the plain case (prompt continuations), a draft always.
    assert stats.num_drafts > 0 or (method == "ngram" and case != "plain")
    if method == "draft" and case == "plain":  # the target as its own draft: all accepted
        assert stats.num_accepted_tokens == stats.num_draft_tokens
    assert llm.engine.block_manager.num_free_blocks == llm.engine.num_kv_blocks
