"""Step-by-step mode: a recorded step is the step the engine took (its block tables are the
block manager's, its flat inputs the runner's, its samples the tokens that came out); a served
engine pauses, steps one step at a time and resumes without changing a single token; a pause
nobody renews ends by itself."""

from __future__ import annotations

import queue
import time

import pytest
from engine_checks import check_engine_invariants, random_prompts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovllm import AsyncEngine, SamplingParams
from nanovllm.inspection import Inspector
from nanovllm.sequence import SequenceStatus
from nanovllm.snapshot import pool_of
from nanovllm.step_record import (
    DECODE,
    PREEMPTED,
    PREFILL,
    TOP_K,
    WAITING,
    StepModeDisabled,
    record_step,
)

BLOCK = 4


class Sink:
    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item) -> None:
        self.items.put(item)

    def final(self, timeout: float = 60):
        while True:
            item = self.items.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise item
            if item.finished:
                return item


def check_record(engine, record) -> None:
    """The record against the engine's state right after its step."""
    sched, bm = engine.scheduler, engine.block_manager
    live = {s.seq_id: s for s in [*sched.running, *sched.waiting]}
    for seq in record.seqs:
        now = live.get(seq.seq_id)
        assert seq.blocks_after == (now.block_table if now else []), seq
        if seq.action in (PREFILL, DECODE):
            assert seq.num_tokens > 0
        if seq.action == DECODE:
            assert seq.num_tokens == 1 and seq.samples
        if seq.action == PREEMPTED:
            assert now is not None and now.status is SequenceStatus.WAITING
        if seq.action == WAITING:
            assert seq.num_tokens == 0
    pool = pool_of(bm, sched.running)
    assert (record.pool.owner, record.pool.ref_count, record.pool.cached) == (
        pool.owner, pool.ref_count, pool.cached)
    changes = record.blocks
    for b in changes.freed:
        assert bm.blocks[b].ref_count == 0 or b in changes.allocated
    for b in changes.allocated + changes.shared:
        assert bm.blocks[b].ref_count > 0 or b in changes.freed
    for b in changes.evicted:
        assert bm.blocks[b].hash is None or bm.hash_to_block_id.get(bm.blocks[b].hash) != b \
            or b in changes.allocated
    # The runner's flat inputs: one row per computed token, in the step's chunks.
    inputs = record.inputs
    ran = [s for s in record.seqs if s.num_tokens]
    assert len(inputs.token_ids) == len(inputs.positions) == len(inputs.slot_mapping) == sum(
        s.num_tokens for s in ran)
    for s in ran:
        rows = [i for i, sid in enumerate(inputs.row_seq_ids) if sid == s.seq_id]
        assert [inputs.positions[r] for r in rows] == list(range(s.start, s.start + s.num_tokens))
        table = s.blocks_after or None
        if table is not None:  # still holding its blocks: each token's slot is in its table
            assert all(inputs.slot_mapping[r] // bm.block_size == table[p // bm.block_size]
                       for r, p in zip(rows, range(s.start, s.start + s.num_tokens)))
    assert sorted(x.seq_id for x in record.sampled) == sorted(s.seq_id for s in ran if s.samples)
    for x in record.sampled:
        assert len(x.top_probs) == TOP_K and x.top_probs == sorted(x.top_probs, reverse=True)
        assert inputs.row_seq_ids[x.row] == x.seq_id
        seq = live.get(x.seq_id)
        if seq is not None:
            assert seq.token_ids[-1] == x.token_id


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_records_match_the_block_manager_under_random_traffic(make_engine, data):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=data.draw(st.integers(12, 40)),
                         max_num_batched_tokens=data.draw(st.sampled_from([8, 16, 64])),
                         max_num_seqs=data.draw(st.integers(1, 4)))
    shared = random_prompts(0, 1, 9, 10)[0]
    for step in range(data.draw(st.integers(5, 40))):
        for i in range(data.draw(st.integers(0, 2))):
            prefix = shared if data.draw(st.booleans()) else []
            prompt = prefix + random_prompts(step * 10 + i, 1, 1, 12)[0]
            engine.add_request(f"r{step}-{i}", prompt, SamplingParams(
                max_tokens=data.draw(st.integers(1, 12)), ignore_eos=True,
                n=data.draw(st.integers(1, 2)), temperature=0))
        if engine.requests and data.draw(st.integers(0, 9)) == 0:
            engine.abort_request(data.draw(st.sampled_from(sorted(engine.requests))))
        if not engine.has_unfinished_requests():
            continue
        _, record = record_step(engine)
        assert record is not None and record.step == engine.num_steps
        check_record(engine, record)
        check_engine_invariants(engine)


def test_a_step_record_shows_prefill_decode_a_prefix_hit_and_a_preemption(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=8, max_num_batched_tokens=16)
    prompt = list(range(10, 22))  # 12 tokens: 3 blocks
    engine.add_request("a", prompt, SamplingParams(max_tokens=4, ignore_eos=True, temperature=0))
    _, first = record_step(engine)
    [a] = first.seqs
    assert (a.action, a.start, a.num_tokens, a.samples) == (PREFILL, 0, 12, True)
    assert first.blocks.allocated == sorted(a.blocks_after) and len(a.blocks_after) == 3
    assert first.inputs.token_ids == prompt and first.inputs.positions == list(range(12))
    engine.add_request("b", prompt + [99], SamplingParams(max_tokens=4, ignore_eos=True))
    _, second = record_step(engine)
    by_id = {s.request_id: s for s in second.seqs}
    assert by_id["a"].action == DECODE and by_id["a"].num_tokens == 1
    assert by_id["b"].action == PREFILL and by_id["b"].start == 12  # 3 blocks from the cache
    assert second.blocks.shared == sorted(a.blocks_after)
    # A third long request cannot fit: someone is preempted or waits for blocks.
    engine.add_request("c", list(range(200, 216)), SamplingParams(max_tokens=8, ignore_eos=True))
    actions = set()
    while engine.has_unfinished_requests():
        _, record = record_step(engine)
        actions |= {s.action for s in record.seqs}
        check_record(engine, record)
    assert {PREFILL, DECODE} <= actions and (PREEMPTED in actions or WAITING in actions)


def run_free(make_engine, prompts, params) -> list[list[int]]:
    client = AsyncEngine(make_engine(block_size=BLOCK, num_kv_blocks=64)).start()
    try:
        sinks = [Sink() for _ in prompts]
        for i, (prompt, sink) in enumerate(zip(prompts, sinks)):
            client.add_request(client.processor.process(f"r{i}", prompt, params), sink)
        return [[o.token_ids for o in s.final().outputs] for s in sinks]
    finally:
        client.shutdown()


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
                                    SamplingParams(max_tokens=12, seed=7, n=2, ignore_eos=True)])
def test_stepping_one_step_at_a_time_gives_the_same_tokens(make_engine, params):
    prompts = random_prompts(3, 3, 5, 30)
    free = run_free(make_engine, prompts, params)
    client = AsyncEngine(make_engine(block_size=BLOCK, num_kv_blocks=64)).start()
    inspector = Inspector(client, enable_step_mode=True)
    try:
        inspector.pause().result(timeout=30)
        sinks = [Sink() for _ in prompts]
        for i, (prompt, sink) in enumerate(zip(prompts, sinks)):
            client.add_request(client.processor.process(f"r{i}", prompt, params), sink)
        time.sleep(0.2)
        mode = inspector.step_mode
        assert mode.paused and mode.num_steps == 0  # requests wait while paused
        snap = inspector.snapshot().result(timeout=30)  # a paused engine still answers
        assert snap.num_waiting == len(prompts) * params.n and snap.num_running == 0
        assert client.stats.num_waiting == len(prompts)
        steps = 0
        while True:  # until a step finds nothing to do
            mode = inspector.step().result(timeout=30)
            if mode.num_steps == steps:
                break  # nothing left to step
            steps = mode.num_steps
            assert mode.record.step == steps and mode.paused
        stepped = [[o.token_ids for o in s.final().outputs] for s in sinks]
        assert stepped == free
        assert not inspector.resume().result(timeout=30).paused
    finally:
        client.shutdown()


def test_a_pause_nobody_renews_ends_by_itself(make_engine):
    client = AsyncEngine(make_engine()).start()
    inspector = Inspector(client, enable_step_mode=True)
    try:
        inspector.pause(lease=0.5).result(timeout=30)
        sink = Sink()
        client.add_request(client.processor.process(
            "a", [1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True)), sink)
        assert len(sink.final(timeout=30).outputs[0].token_ids) == 3  # resumed after 0.5 s
        assert not inspector.step_mode.paused
    finally:
        client.shutdown()


def test_step_mode_is_off_unless_enabled(make_engine):
    client = AsyncEngine(make_engine())
    with pytest.raises(StepModeDisabled):
        Inspector(client).pause()
    enabled = Inspector(AsyncEngine(make_engine()), enable_step_mode=True)
    with pytest.raises(ValueError, match="lease"):
        enabled.pause(lease=0)


def test_shutdown_while_paused_aborts_cleanly(make_engine):
    client = AsyncEngine(make_engine()).start()
    Inspector(client, enable_step_mode=True).pause().result(timeout=30)
    sink = Sink()
    client.add_request(client.processor.process("a", [1, 2, 3], SamplingParams(max_tokens=3)),
                       sink)
    client.shutdown()
    assert not client.thread.is_alive()
    with pytest.raises(Exception, match="shutting down"):
        sink.final(timeout=5)
