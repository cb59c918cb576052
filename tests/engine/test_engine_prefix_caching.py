"""Prefix caching: a prompt that shares full KV blocks with an earlier one reuses them.

The second request must report the reused tokens (RequestOutput.num_cached_tokens, the
engine's prefix_cache_hits), compute only the rest (engine.last_step.num_prefill_tokens),
and produce exactly what an engine without prefix caching produces. The n samples of one
request share their prompt blocks too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from engine_checks import check_engine_invariants, random_prompts, run_engine

from nanovllm import RequestOutput, SamplingParams

BLOCK = 4
PREFIX = random_prompts(seed=11, count=1, low=32, high=32)[0]   # 8 full blocks
FIRST = PREFIX + [7, 8, 9, 10, 11, 12]
SECOND = PREFIX + [500, 501, 502]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2)


@dataclass
class Run:
    outputs: list[RequestOutput]     # one per step, the last one finished
    prefill_tokens: int              # tokens computed by the first step

    @property
    def final(self) -> RequestOutput:
        return self.outputs[-1]


def generate_one(engine, request_id, prompt, params=GREEDY) -> Run:
    engine.add_request(request_id, prompt, params)
    outputs = engine.step()
    prefill_tokens = engine.last_step.num_prefill_tokens
    outputs += [o for outs in run_engine(engine).values() for o in outs]
    return Run(outputs, prefill_tokens)


def test_shared_prefix_is_reused_and_gives_the_same_output(make_engine):
    cached = make_engine(block_size=BLOCK)
    uncached = make_engine(block_size=BLOCK, enable_prefix_caching=False)
    first = generate_one(cached, "a", FIRST)
    assert first.outputs[0].num_cached_tokens == 0 and first.prefill_tokens == len(FIRST)
    hits_before = cached.get_stats().prefix_cache_hits

    second = generate_one(cached, "b", SECOND)
    assert second.outputs[0].num_cached_tokens == len(PREFIX)
    assert cached.get_stats().prefix_cache_hits - hits_before == len(PREFIX)
    assert second.prefill_tokens == len(SECOND) - len(PREFIX)

    reference = generate_one(uncached, "b", SECOND)
    assert reference.outputs[0].num_cached_tokens == 0
    assert reference.prefill_tokens == len(SECOND)
    assert uncached.get_stats().prefix_cache_hits == 0
    assert second.final.outputs[0].token_ids == reference.final.outputs[0].token_ids
    for ours, ref in zip(second.final.outputs[0].logprobs, reference.final.outputs[0].logprobs):
        assert ours.keys() == ref.keys()
        assert all(abs(ours[t].logprob - ref[t].logprob) < 1e-5 for t in ours)


def test_final_output_reports_cached_tokens(make_engine):
    engine = make_engine(block_size=BLOCK)
    generate_one(engine, "a", FIRST)
    second = generate_one(engine, "b", SECOND)
    assert second.final.finished
    assert second.final.num_cached_tokens == len(PREFIX)


def test_identical_prompt_recomputes_only_its_last_token(make_engine):
    """A fully cached prompt still computes its last token, whose logits it samples from."""
    engine = make_engine(block_size=BLOCK)
    generate_one(engine, "a", PREFIX)
    again = generate_one(engine, "b", PREFIX)
    assert again.outputs[0].num_cached_tokens == len(PREFIX) - BLOCK
    assert again.prefill_tokens == BLOCK


def test_freed_blocks_stay_cached_until_needed(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=20)
    generate_one(engine, "a", FIRST)
    assert engine.get_stats().num_free_blocks == 20
    second = generate_one(engine, "b", SECOND)
    assert second.outputs[0].num_cached_tokens == len(PREFIX)
    # Unrelated prompts fill the pool: the prefix gets evicted, and nothing breaks.
    for i, p in enumerate(random_prompts(seed=12, count=6, low=40, high=60)):
        generate_one(engine, f"x{i}", p)
    third = generate_one(engine, "c", SECOND)
    assert third.outputs[0].num_cached_tokens < len(PREFIX)
    assert third.final.outputs[0].token_ids == second.final.outputs[0].token_ids


def test_n_samples_share_prompt_blocks(make_engine):
    engine = make_engine(block_size=BLOCK)
    engine.add_request("n", PREFIX, SamplingParams(n=3, seed=5, max_tokens=6, ignore_eos=True))
    seqs = engine.requests["n"].seqs
    shared_seen = False
    while engine.has_unfinished_requests():
        engine.step()
        check_engine_invariants(engine)
        holding = [s for s in seqs if s.block_table]
        if len(holding) == 3:
            first_block = engine.block_manager.blocks[holding[0].block_table[0]]
            shared_seen |= ({s.block_table[0] for s in holding} == {first_block.block_id}
                            and first_block.ref_count == 3)
    assert shared_seen, "the 3 samples never shared their first prompt block"
    stats = engine.get_stats()
    assert stats.prefix_cache_hits >= 2 * (len(PREFIX) - BLOCK)
    assert stats.num_free_blocks == stats.num_total_blocks


def test_many_requests_with_common_prefixes_match_uncached_engine(make_engine):
    rng = np.random.default_rng(4)
    stems = random_prompts(seed=13, count=3, low=8, high=24)
    prompts = [stems[i % 3] + rng.integers(0, 1000, int(rng.integers(1, 10))).tolist()
               for i in range(12)]
    results = []
    for caching in (True, False):
        engine = make_engine(block_size=BLOCK, num_kv_blocks=30, max_num_batched_tokens=24,
                             enable_prefix_caching=caching)
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, SamplingParams(temperature=0.0, max_tokens=10,
                                                         ignore_eos=True))
        history = run_engine(engine)
        results.append([history[str(i)][-1].outputs[0].token_ids for i in range(len(prompts))])
        assert (engine.get_stats().prefix_cache_hits > 0) == caching
    assert results[0] == results[1]
