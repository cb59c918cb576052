"""Seeded sampling is reproducible: alone, inside a busy batch, under preemption; seeds differ.

Each sequence draws from its own generator, seeded by (seed, sample index), one uniform per
token; so a seeded request's tokens cannot depend on what else runs with it.
"""

from __future__ import annotations

import pytest
from engine_checks import random_prompts

from nanovllm import SamplingParams

PROMPT = [464, 268, 758, 218, 180, 625]
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=24,
                        ignore_eos=True)


def other_params(i: int) -> SamplingParams:
    """A varied mix of neighbours: other seeds, unseeded, greedy, filters, penalties, n=2."""
    return [SamplingParams(temperature=0.7, seed=i, max_tokens=20),
            SamplingParams(max_tokens=12, logprobs=3),
            SamplingParams(temperature=0.0, max_tokens=8, presence_penalty=1.0),
            SamplingParams(top_k=5, min_p=0.1, max_tokens=30, ignore_eos=True),
            SamplingParams(n=2, seed=i, repetition_penalty=1.3, max_tokens=10),
            SamplingParams(top_p=0.5, logit_bias={7: 5.0}, max_tokens=16, stop=["e"])][i % 6]


def generate(llm, prompts, params):
    return llm.generate(prompts, params, use_tqdm=False)


def test_seeded_request_is_identical_alone_and_in_a_batch_of_32(make_llm):
    alone = generate(make_llm(), [PROMPT], SEEDED)[0].outputs[0].token_ids
    assert len(set(alone)) > 3, "a real sample, not a constant"
    others = random_prompts(seed=5, count=31, low=1, high=50)
    prompts = others[:13] + [PROMPT] + others[13:]
    params = [other_params(i) for i in range(31)]
    params.insert(13, SEEDED)
    busy = make_llm(seed=99)
    assert generate(busy, prompts, params)[13].outputs[0].token_ids == alone
    # And again with preemption and chunked prefill in the way.
    tight = make_llm(block_size=4, num_kv_blocks=40, max_num_batched_tokens=16)
    assert generate(tight, prompts, params)[13].outputs[0].token_ids == alone
    assert tight.engine.get_stats().num_preemptions_total > 0


def test_different_seeds_give_different_samples(make_llm):
    llm = make_llm()
    runs = [generate(llm, [PROMPT], SamplingParams(seed=s, max_tokens=16, ignore_eos=True))
            [0].outputs[0].token_ids for s in (1, 2, 3)]
    assert len({tuple(r) for r in runs}) == 3


def test_same_seed_twice_on_one_engine(make_llm):
    llm = make_llm()
    first, second = (generate(llm, [PROMPT], SEEDED)[0].outputs[0].token_ids for _ in range(2))
    assert first == second


@pytest.mark.parametrize("options", [{}, dict(block_size=4, num_kv_blocks=12)])
def test_n_seeded_samples_differ_and_reproduce(make_llm, options):
    params = SamplingParams(n=4, seed=7, max_tokens=16, ignore_eos=True)
    first = [c.token_ids for c in generate(make_llm(**options), [PROMPT], params)[0].outputs]
    again = [c.token_ids for c in generate(make_llm(seed=5), [PROMPT], params)[0].outputs]
    assert first == again
    assert len({tuple(t) for t in first}) == 4, "the n samples must differ"


def test_unseeded_requests_follow_the_engine_seed(make_llm):
    params = SamplingParams(n=2, max_tokens=16, ignore_eos=True)

    def tokens(seed):
        return [c.token_ids for c in generate(make_llm(seed=seed), [PROMPT], params)[0].outputs]

    assert tokens(0) == tokens(0)
    assert tokens(0) != tokens(1)
