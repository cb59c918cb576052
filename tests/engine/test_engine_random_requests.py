"""Property-based test of the real LLMEngine: random add_request / step / abort_request.

A hypothesis state machine runs the tiny model with a small KV pool, small token budgets and
sequence caps, so preemption, chunked prefill and prefix caching interleave with aborts.
After every rule the block invariants hold; every output is consistent (cumulative tokens,
streamed text a prefix of later text, finish reasons); at the end every request has finished
and the pool is free again. Each finished request must also have produced exactly what the
same request produces alone on a roomy engine: greedy and seeded requests are deterministic,
so any KV mix-up under pressure would change their tokens, text or logprobs.
"""

from __future__ import annotations

from engine_checks import check_engine_invariants, run_engine
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nanovllm import EngineConfig, LLMEngine, RequestOutput, SamplingParams

BLOCK = 4
MAX_PROMPT, MAX_TOKENS = 24, 6
STEM = [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]

params_strategy = st.builds(
    SamplingParams,
    n=st.integers(1, 2),
    temperature=st.sampled_from([0.0, 0.8]),
    top_p=st.sampled_from([1.0, 0.9]),
    seed=st.integers(0, 1000),
    max_tokens=st.integers(1, MAX_TOKENS),
    stop=st.sampled_from([None, ["e"], [" t", "in"]]),
    logprobs=st.sampled_from([None, 2]),
    prompt_logprobs=st.sampled_from([None, 1]),
)


def same_request_alone(ckpt: str, prompt: list[int], params: SamplingParams,
                       cache: dict) -> RequestOutput:
    key = (tuple(prompt), repr(params))
    if key not in cache:
        engine = LLMEngine(EngineConfig(model=ckpt, block_size=BLOCK, num_kv_blocks=64))
        engine.add_request("alone", prompt, params)
        cache[key] = run_engine(engine)["alone"][-1]
    return cache[key]


def assert_same_logprobs(ours: list | None, ref: list | None) -> None:
    assert (ours is None) == (ref is None)
    for a, b in zip(ours or [], ref or []):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys()
            assert all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a)


def assert_same_result(ours: RequestOutput, ref: RequestOutput) -> None:
    for c, r in zip(ours.outputs, ref.outputs):
        assert (c.token_ids, c.text, c.finish_reason, c.stop_reason) == \
            (r.token_ids, r.text, r.finish_reason, r.stop_reason)
        assert_same_logprobs(c.logprobs, r.logprobs)
    assert_same_logprobs(ours.prompt_logprobs, ref.prompt_logprobs)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self, ckpt: str, reference_cache: dict):
        super().__init__()
        self.ckpt, self.reference_cache = ckpt, reference_cache
        self.prompts: dict[str, tuple[list[int], SamplingParams]] = {}
        self.last: dict[str, RequestOutput] = {}
        self.aborted: set[str] = set()

    @initialize(num_kv_blocks=st.integers(8, 14), max_num_seqs=st.integers(1, 6),
                max_num_batched_tokens=st.integers(4, 32), caching=st.booleans())
    def setup(self, num_kv_blocks, max_num_seqs, max_num_batched_tokens, caching):
        self.engine = LLMEngine(EngineConfig(
            model=self.ckpt, block_size=BLOCK, num_kv_blocks=num_kv_blocks,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=caching))

    @rule(stem_len=st.integers(0, len(STEM)),
          suffix=st.lists(st.integers(0, 999), min_size=1, max_size=MAX_PROMPT - len(STEM)),
          params=params_strategy)
    def add(self, stem_len, suffix, params):
        prompt = STEM[:stem_len] + suffix
        rid = f"r{len(self.prompts)}"
        if self.engine.block_manager.blocks_for(len(prompt) + params.max_tokens) > \
                self.engine.num_kv_blocks:
            return  # add_request's own rejection is tested elsewhere
        self.engine.add_request(rid, prompt, params)
        self.prompts[rid] = (prompt, params)

    @precondition(lambda self: self.engine.has_unfinished_requests())
    @rule()
    def step(self):
        for out in self.engine.step():
            self.check_output(out)

    @precondition(lambda self: self.engine.has_unfinished_requests())
    @rule(data=st.data(), really=st.integers(0, 2))
    def abort(self, data, really):
        if really:
            return  # aborts are rarer than steps, so most requests get to finish
        rid = data.draw(st.sampled_from(sorted(self.engine.requests)))
        self.engine.abort_request(rid)
        self.aborted.add(rid)

    @invariant()
    def engine_is_consistent(self):
        if hasattr(self, "engine"):
            check_engine_invariants(self.engine)

    def check_output(self, out: RequestOutput) -> None:
        prompt, params = self.prompts[out.request_id]
        assert out.request_id not in self.aborted
        assert out.prompt_token_ids == prompt and len(out.outputs) == params.n
        before = self.last.get(out.request_id)
        for i, c in enumerate(out.outputs):
            assert c.index == i and len(c.token_ids) <= params.max_tokens
            assert c.finish_reason in (None, "stop", "length")
            assert c.stop_reason is None or (c.finish_reason == "stop"
                                             and c.stop_reason in params.stop)
            if before is not None:
                old = before.outputs[i]
                assert c.token_ids[:len(old.token_ids)] == old.token_ids
                assert c.text.startswith(old.text)
        assert out.finished == all(c.finish_reason is not None for c in out.outputs)
        self.last[out.request_id] = out

    def teardown(self):
        if not hasattr(self, "engine"):
            return
        for outs in run_engine(self.engine, max_steps=2000).values():
            for out in outs:
                self.check_output(out)
        stats = self.engine.get_stats()
        assert stats.num_free_blocks == stats.num_total_blocks
        assert stats.num_running == stats.num_waiting == 0
        for rid, (prompt, params) in self.prompts.items():
            if rid in self.aborted:
                continue
            assert self.last[rid].finished, f"{rid} never finished"
            alone = same_request_alone(self.ckpt, prompt, params, self.reference_cache)
            assert_same_result(self.last[rid], alone)


def test_random_requests_on_the_real_engine(tiny_ckpt):
    cache: dict = {}
    run_state_machine_as_test(lambda: EngineMachine(str(tiny_ckpt), cache), settings=settings(
        max_examples=25, stateful_step_count=40, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
