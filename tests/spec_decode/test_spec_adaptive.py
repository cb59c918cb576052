"""Speculation that never costs, in the engine: the draft's KV filled lazily (nothing for a
sequence that does not speculate, the missing part in chunks of the step's budget once it
starts), and k chosen per step from timed steps (0 where nothing pays) — greedy output
unchanged throughout."""

from __future__ import annotations

import numpy as np
from test_spec_engine import GREEDY_CASES, REPEATS, draft_config, outputs

from nanovllm import EngineConfig, LLMEngine, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]],
         watch=None) -> dict[str, list[int]]:
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        if watch:
            watch(engine)
    return done


def test_a_sequence_that_does_not_speculate_costs_the_draft_nothing(make_engine, tiny_ckpt):
    """Three sequences with speculation off from three on: the draft never runs."""
    engine = make_engine(speculative_config=draft_config(tiny_ckpt, disable_by_batch_size=3))
    _run(engine, {str(i): (p, GREEDY) for i, p in enumerate(REPEATS)})
    speculator = engine.runner.speculator
    assert not speculator.draft_passes.measured and not speculator.draft_valid
    assert not speculator.draft.tables  # nor its memory
    assert engine.spec_stats.num_drafts == 0


def test_the_draft_takes_a_share_of_the_kv_budget_not_the_pool(tiny_ckpt):
    """Speculating at any batch size, the target keeps all but DRAFT_KV_SHARE of the budget:
    its blocks are not halved by a draft of its own size."""
    from nanovllm.engine_setup import DRAFT_KV_SHARE
    budget = dict(kv_cache_memory_bytes=8 << 20)
    off = LLMEngine(EngineConfig(str(tiny_ckpt), **budget))
    on = LLMEngine(EngineConfig(str(tiny_ckpt), speculative_config=draft_config(
        tiny_ckpt, disable_by_batch_size=None), **budget))
    assert on.num_kv_blocks == int(off.num_kv_blocks * (1 - DRAFT_KV_SHARE))
    assert on.runner.speculator.draft.kv_cache.num_blocks == int(
        off.num_kv_blocks * DRAFT_KV_SHARE)


def test_a_draft_that_speculates_below_a_batch_size_keeps_only_that_many_sequences(tiny_ckpt):
    """With disable_by_batch_size d, at most d - 1 sequences speculate: the draft's cache holds
    that many full contexts (when below DRAFT_KV_SHARE), the target keeps the rest. So a batch
    that fits the whole budget without speculation fits it with speculation configured: no
    preemption, the same output."""
    block, tokens = 16, 64  # 32 prompt + 32 new: 4 blocks a sequence, 256 for 64 of them
    off_only = LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=1, block_size=block))
    per_block = off_only.runner.kv_cache.nbytes
    budget = dict(kv_cache_memory_bytes=280 * per_block, block_size=block)
    off = LLMEngine(EngineConfig(str(tiny_ckpt), **budget))
    on = LLMEngine(EngineConfig(str(tiny_ckpt), speculative_config=draft_config(
        tiny_ckpt, disable_by_batch_size=2), **budget))
    one_context = -(-(on.max_model_len + 3) // block)  # k = 3 lookahead slots past it
    assert on.runner.speculator.draft.kv_cache.num_blocks == one_context
    assert on.num_kv_blocks == off.num_kv_blocks - one_context >= 64 * tokens // block
    params = SamplingParams(temperature=0, max_tokens=tokens // 2, ignore_eos=True)
    requests = {str(i): (list(range(i, i + tokens // 2)), params) for i in range(64)}
    assert _run(on, requests) == _run(off, requests)
    assert on.get_stats().num_preemptions_total == 0 and on.spec_stats.num_drafts == 0


def test_the_draft_catches_up_in_chunks_once_a_sequence_speculates(make_engine, tiny_ckpt):
    """A long prompt decodes beside a short one (no speculation: two run); once the short one
    finishes, the long one speculates, and the draft first computes its missing KV in chunks of
    at most the step's budget, proposing nothing until it has caught up. Greedy output is that
    of decoding without speculation."""
    budget = 8
    spec = draft_config(tiny_ckpt, disable_by_batch_size=2)
    engine = make_engine(speculative_config=spec, max_num_batched_tokens=budget, block_size=4)
    long = REPEATS[0] * 4
    requests = {"long": (long, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)),
                "short": (REPEATS[1], SamplingParams(temperature=0, max_tokens=4,
                                                     ignore_eos=True))}
    seen = []  # (positions the draft holds for "long", tokens proposed in the step)

    def watch(e):
        seqs = [s for r in e.requests.values() for s in r.seqs if r.request_id == "long"]
        if seqs:
            seen.append((e.runner.speculator.draft_valid.get(seqs[0].seq_id, 0),
                         e.last_step.num_proposed))
    on = _run(engine, requests, watch)
    off = _run(make_engine(), requests)
    assert on == off
    valid = [v for v, _ in seen]
    assert all(b - a <= budget for a, b in zip(valid, valid[1:]))
    first = next(i for i, (_, proposed) in enumerate(seen) if proposed)
    assert valid[first - 1] > 0 and sum(v > 0 for v in valid[:first]) >= 2  # chunks, no proposals
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks


def test_no_k_pays_for_a_draft_as_costly_as_the_target(make_llm, tiny_ckpt):
    """The target as its own draft: a draft pass costs a target pass, so no k can pay and the
    adaptive rule never proposes (nor runs the draft); output is unchanged."""
    spec = {k: v for k, v in draft_config(tiny_ckpt).items() if k != "adaptive"}
    llm = make_llm(speculative_config=spec)
    params = GREEDY_CASES["plain"]
    assert outputs(llm, REPEATS, params) == outputs(make_llm(), REPEATS, params)
    speculator = llm.engine.runner.speculator
    assert speculator.chosen[0] > 0 and sum(speculator.chosen[1:]) == 0
    assert not speculator.draft_passes.measured


def test_adaptive_k_keeps_greedy_output(make_llm, tiny_ckpt):
    """Adaptive n-gram lookup and an int8 draft: whatever k each step chooses, greedy output
    is token for token that of decoding without speculation."""
    for spec in ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
                  "prompt_lookup_min": 1, "disable_by_batch_size": None},
                 {"model": str(tiny_ckpt), "quantization": "int8", "num_speculative_tokens": 3,
                  "disable_by_batch_size": None}):
        for case in ("plain", "penalties", "stop"):
            params = GREEDY_CASES[case]
            assert outputs(make_llm(speculative_config=spec), REPEATS, params) == outputs(
                make_llm(), REPEATS, params)


def test_seeded_samples_repeat_with_adaptive_k(make_llm, tiny_ckpt):
    """A seeded sampled request's k follows its own acceptance and the draft's bytes, never
    timings: the same samples every run."""
    spec = {"model": str(tiny_ckpt), "quantization": "int8", "num_speculative_tokens": 3}
    params = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True, seed=7, n=2)
    runs = [outputs(make_llm(speculative_config=spec), REPEATS[:1], params) for _ in range(2)]
    assert runs[0] == runs[1]


def test_engine_with_lazy_draft_under_pressure(tiny_ckpt):
    """A small pool and budget with preemption: speculation starts and stops, the draft's KV is
    dropped with a preempted sequence's blocks and caught up again; output unchanged and every
    block free at the end."""
    small = dict(num_kv_blocks=14, block_size=4, max_num_batched_tokens=12, max_num_seqs=4)
    on = LLMEngine(EngineConfig(str(tiny_ckpt), speculative_config=draft_config(
        tiny_ckpt, disable_by_batch_size=3), **small))
    off = LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=256))
    requests = {str(i): (p * 2, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
                for i, (p, m) in enumerate(zip(REPEATS * 2, (16, 4, 9, 12, 3, 7)))}
    assert _run(on, requests) == _run(off, requests)
    assert on.block_manager.num_free_blocks == on.num_kv_blocks
    on.step()  # the runner hears of the last finished sequences with the next step
    draft = on.runner.speculator.draft
    assert not draft.tables and len(draft.free_blocks) == draft.kv_cache.num_blocks
    assert on.spec_stats.num_drafts > 0


def test_the_engine_times_whole_steps_and_keeps_plain_decoding_reachable(make_engine):
    """Adaptive n-gram lookup on a prompt that repeats: the engine times its decode steps (those
    that speculated and plain ones, for the probes), by batch size and k; prefill steps are not
    the price of any k and are not timed. Output is that of decoding without speculation."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
            "prompt_lookup_min": 1, "disable_by_batch_size": None}
    engine = make_engine(speculative_config=spec)
    params = SamplingParams(temperature=0, max_tokens=80, ignore_eos=True)
    requests = {"0": (REPEATS[0] * 3, params)}
    assert _run(engine, requests) == _run(make_engine(), requests)
    costs = engine.runner.speculator.policy.costs
    assert costs.measured(1, 0), "plain decoding was never timed"
    timed = {k for (batch, k) in costs.times if batch == 1}
    assert timed - {0}, "no speculating step was timed"
    assert sum(t.samples for t in costs.times.values()) < engine.num_steps  # prefill untimed
    assert costs.ratio(1, max(timed)) >= 1.0
    # Costs are ratios of adjacent steps: the probes' plain steps beside speculating ones.
    assert any(costs.measured(1, k) for k in timed - {0}), "no k was paired with a plain step"


def test_a_step_too_big_to_speculate_is_the_plain_step(make_engine, tiny_ckpt):
    """Speculation configured, with more sequences running than disable_by_batch_size allows:
    step for step, the runner is given exactly the inputs it is given with speculation off (no
    lookahead rows, the same rows sampled), the draft takes no block and runs no pass, and the
    step is not timed as the price of any k. Once the batch shrinks below the limit the same
    engine speculates (so the comparison is not vacuous), and every output is unchanged."""
    spec = draft_config(tiny_ckpt, disable_by_batch_size=3)
    on, off = make_engine(speculative_config=spec), make_engine()
    requests = {str(i): (p, SamplingParams(temperature=0, max_tokens=6 + 8 * i, ignore_eos=True))
                for i, p in enumerate([*REPEATS, [5, 6, 7, 5, 6, 7]])}
    for engine in (on, off):
        engine.runner.keep_last_run = True
        for rid, (prompt, params) in requests.items():
            engine.add_request(rid, prompt, params)
    speculator, plain_steps, done = on.runner.speculator, 0, {on: {}, off: {}}
    while on.has_unfinished_requests() or off.has_unfinished_requests():
        too_big = len(on.scheduler.running) >= 3  # (then both engines are at the same step)
        for engine in (on, off):
            done[engine].update({o.request_id: o.outputs[0].token_ids
                                 for o in engine.step() if o.finished})
        if not too_big:
            continue
        plain_steps += 1
        (got, _), (want, _) = on.runner.last_run, off.runner.last_run
        assert not got.lookahead and not got.ahead
        for name in ("token_ids", "positions", "logit_rows"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert [e.seq_id for e in got.sampling] == [e.seq_id for e in want.sampling]
        assert not speculator.draft.tables and not speculator.draft_passes.measured
        assert speculator._timing is None  # not the price of any k
    assert plain_steps >= 6 and len(done[on]) == len(requests) and done[on] == done[off]
    assert on.spec_stats.num_drafts > 0  # below the limit, it did speculate
