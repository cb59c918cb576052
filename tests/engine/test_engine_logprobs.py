"""Sample and prompt logprobs equal transformers' log-softmax, with vLLM's ranks and shape.

For each generated token the engine returns a dict holding the sampled token and the top-k
tokens (k or k + 1 entries), each with its logprob of the raw logits, its rank (1 = most
likely) and its text. Prompt logprobs have one entry per prompt token, the first None. The
reference is one transformers forward pass over prompt + output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_checks import hf_logprobs, random_prompts

from nanovllm import SamplingParams

TOL = 1e-3
TOP_K = 5


def check_position(entry: dict, ref: np.ndarray, chosen: int, k: int, tokenizer) -> None:
    """One position's logprob dict against the reference log-softmax row `ref`."""
    assert chosen in entry
    assert len(entry) == (k if entry[chosen].rank <= k else k + 1)
    ranked = np.sort(ref)[::-1]
    for token, lp in entry.items():
        assert abs(lp.logprob - ref[token]) < TOL, f"token {token}"
        # The rank-th best reference logprob is this token's (up to ties within tolerance).
        assert abs(ranked[lp.rank - 1] - ref[token]) < TOL, f"token {token} rank {lp.rank}"
        assert lp.decoded_token == tokenizer.decode_token(token)
    top = sorted((lp.rank for t, lp in entry.items() if t != chosen or lp.rank <= k))
    assert top == list(range(1, k + 1)), "top-k ranks are 1..k"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_and_prompt_logprobs_match_transformers(make_llm, hf_tiny, temperature):
    llm = make_llm(block_size=4, num_kv_blocks=40, max_num_batched_tokens=16)
    prompts = random_prompts(seed=3, count=8, low=1, high=40)
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=12, logprobs=TOP_K,
                             prompt_logprobs=3, ignore_eos=True) for i in range(len(prompts))]
    tok = llm.engine.tokenizer
    for prompt, out in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = out.outputs[0]
        ref = hf_logprobs(hf_tiny, prompt + completion.token_ids)
        assert len(completion.logprobs) == len(completion.token_ids) == 12
        for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
            check_position(entry, ref[len(prompt) - 1 + i], token, TOP_K, tok)
            if temperature == 0.0:
                assert entry[token].rank == 1
        total = sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs))
        assert math.isclose(completion.cumulative_logprob, total, abs_tol=1e-6)
        assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
        for pos in range(1, len(prompt)):
            check_position(out.prompt_logprobs[pos], ref[pos - 1], prompt[pos], 3, tok)


def test_sampled_tokens_are_not_always_the_top_token(make_llm):
    """At temperature 1 the logprob ranks of sampled tokens vary (so the rank test means something)."""
    llm = make_llm()
    out = llm.generate([[1, 2, 3]], SamplingParams(seed=0, max_tokens=30, logprobs=1,
                                                   ignore_eos=True), use_tqdm=False)[0]
    ranks = [e[t].rank for t, e in zip(out.outputs[0].token_ids, out.outputs[0].logprobs)]
    assert max(ranks) > 1


def test_logprobs_zero_returns_only_the_sampled_token(make_llm):
    llm = make_llm()
    out = llm.generate([[5, 6, 7]], SamplingParams(seed=1, max_tokens=5, logprobs=0,
                                                   prompt_logprobs=0), use_tqdm=False)[0]
    completion = out.outputs[0]
    assert [list(e) for e in completion.logprobs] == [[t] for t in completion.token_ids]
    assert out.prompt_logprobs[0] is None
    assert [list(e) for e in out.prompt_logprobs[1:]] == [[6], [7]]


def test_no_logprobs_unless_asked(make_llm):
    out = make_llm().generate([[5, 6, 7]], SamplingParams(max_tokens=3), use_tqdm=False)[0]
    assert out.outputs[0].logprobs is None and out.prompt_logprobs is None
    assert out.outputs[0].cumulative_logprob is None


def test_prompt_logprobs_with_n_and_prefix_cache(make_llm, hf_tiny):
    """A cached prompt prefix still gets full prompt logprobs, and n > 1 shares them."""
    llm = make_llm(block_size=4)
    prompt = random_prompts(seed=9, count=1, low=30, high=30)[0]
    llm.generate([prompt], SamplingParams(max_tokens=2), use_tqdm=False)  # warms the cache
    out = llm.generate([prompt], SamplingParams(n=3, seed=0, max_tokens=2, prompt_logprobs=2),
                       use_tqdm=False)[0]
    ref = hf_logprobs(hf_tiny, prompt)
    assert out.prompt_logprobs[0] is None
    for pos in range(1, len(prompt)):
        check_position(out.prompt_logprobs[pos], ref[pos - 1], prompt[pos], 2, llm.engine.tokenizer)
