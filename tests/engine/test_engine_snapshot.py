"""The engine view's snapshot (nanovllm/snapshot.py) tells the truth about the blocks, queues
and steps, step by step; the Inspector has AsyncEngine's thread take it; attention_weights is
the reference path's."""

from __future__ import annotations

import json
from concurrent.futures import CancelledError

import numpy as np
import pytest
from engine_checks import random_prompts

from nanovllm import AsyncEngine, SamplingParams
from nanovllm.engine_client import EngineDeadError, RequestAborted
from nanovllm.inspection import Inspector, attention_weights
from nanovllm.model.architectures import gpt2_reference
from nanovllm.model.weights.quant import dequantize_weights
from nanovllm.snapshot import MAX_LISTED_SEQS
from nanovllm.stats import STEP_HISTORY

BLOCK = 4
PROMPT = random_prompts(seed=5, count=1, low=22, high=22)[0]  # 5 full blocks and 2 tokens
LONG = SamplingParams(max_tokens=6, ignore_eos=True)


def owners_from_tables(engine) -> list[int]:
    """Each block's owner as the snapshot defines it: the oldest running sequence holding it."""
    owner = [-1] * engine.num_kv_blocks
    for seq in reversed(engine.scheduler.running):
        for b in seq.block_table:
            owner[b] = seq.seq_id
    return owner


def test_the_block_pool_follows_a_request_and_returns_to_free(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=32)
    empty = engine.snapshot()
    assert empty.blocks.owner == [-1] * 32 and empty.blocks.ref_count == [0] * 32
    assert empty.blocks.cached == [False] * 32 and empty.num_steps == 0 and empty.steps == []

    engine.add_request("a", PROMPT, LONG)
    waiting = engine.snapshot()
    assert [s.request_id for s in waiting.waiting] == ["a"] and waiting.running == []
    assert waiting.blocks.owner == [-1] * 32  # a waiting sequence holds no block

    engine.step()
    snap = engine.snapshot()
    [seq] = engine.scheduler.running
    assert snap.blocks.owner == owners_from_tables(engine)
    assert sorted(b for b, o in enumerate(snap.blocks.owner) if o == seq.seq_id) == sorted(seq.block_table)
    assert [r for r in snap.blocks.ref_count if r] == [1] * 6  # 23 tokens in blocks of 4
    assert sum(snap.blocks.cached) == 5  # the full blocks, published once computed
    [view] = snap.running
    assert (view.num_prompt_tokens, view.num_computed_tokens, view.num_output_tokens,
            view.num_blocks, view.max_tokens) == (22, 22, 1, 6, 6)

    while engine.has_unfinished_requests():
        engine.step()
    done = engine.snapshot()
    assert done.blocks.owner == [-1] * 32 and done.blocks.ref_count == [0] * 32
    assert done.running == [] and done.waiting == []
    assert sum(done.blocks.cached) == 6  # free again, still findable: 6 full blocks of 28 tokens
    assert done.num_steps == 6 and len(done.steps) == 6


def test_n_samples_share_their_prompt_blocks(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=32)
    engine.add_request("a", PROMPT, SamplingParams(n=3, max_tokens=4, ignore_eos=True))
    while len(engine.scheduler.running) < 3:
        engine.step()
    snap = engine.snapshot()
    first = engine.requests["a"].seqs[0]
    shared = [b for b, r in enumerate(snap.blocks.ref_count) if r == 3]
    assert shared == sorted(first.block_table[:5])  # the 5 full prompt blocks, held by all 3
    assert all(snap.blocks.owner[b] == first.seq_id for b in shared)  # the oldest holder
    assert all(snap.blocks.cached[b] for b in shared)
    assert [(s.request_id, s.index) for s in snap.running] == [("a", 0), ("a", 1), ("a", 2)]
    assert snap.running[1].num_cached_tokens == 20


def test_chunked_prefill_and_the_step_strip(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=64, max_num_batched_tokens=8)
    engine.add_request("a", PROMPT, SamplingParams(max_tokens=3, ignore_eos=True))
    computed = []
    while engine.has_unfinished_requests():
        engine.step()
        snap = engine.snapshot()
        computed += [snap.running[0].num_computed_tokens] if snap.running else []
    assert computed[:3] == [8, 16, 22]  # the prompt in chunks of the token budget
    steps = [(s.num_prefill_tokens, s.num_decode_tokens, s.num_seqs) for s in snap.steps]
    assert steps == [(8, 0, 1), (8, 0, 1), (6, 0, 1), (0, 1, 1), (0, 1, 1)]
    assert all(s.seconds > 0 for s in snap.steps)


def test_preemptions_are_counted_per_sequence_and_per_step(make_engine):
    engine = make_engine(num_kv_blocks=6, block_size=4)  # too small for all four: preemption
    for i in range(4):
        engine.add_request(str(i), PROMPT[:4 + i], SamplingParams(max_tokens=12, ignore_eos=True))
    seen = {}
    while engine.has_unfinished_requests():
        engine.step()
        snap = engine.snapshot()
        for view in snap.running + snap.waiting:
            seen[view.seq_id] = max(seen.get(view.seq_id, 0), view.num_preemptions)
        assert snap.num_preemptions_total == engine.scheduler.num_preemptions
    assert engine.scheduler.num_preemptions > 0
    assert sum(s.num_preemptions for s in snap.steps) == engine.scheduler.num_preemptions
    assert sum(seen.values()) == engine.scheduler.num_preemptions


def test_the_lists_are_bounded_and_the_counts_whole(make_engine):
    engine = make_engine(max_num_seqs=2)
    for i in range(MAX_LISTED_SEQS + 5):
        engine.add_request(str(i), [1, 2, 3], SamplingParams(max_tokens=2))
    for _ in range(STEP_HISTORY + 3):
        engine.step()
    snap = engine.snapshot()
    assert snap.num_waiting + snap.num_running == len(engine.scheduler.waiting) + 2
    assert len(snap.waiting) == min(snap.num_waiting, MAX_LISTED_SEQS)
    assert len(snap.steps) == STEP_HISTORY and snap.num_steps == STEP_HISTORY + 3


def test_to_dict_is_plain_json(make_engine):
    engine = make_engine(block_size=BLOCK, num_kv_blocks=16)
    engine.add_request("a", PROMPT, LONG)
    engine.step()
    data = json.loads(json.dumps(engine.snapshot().to_dict()))
    assert set(data) == {"num_steps", "blocks", "running", "waiting", "num_running",
                         "num_waiting", "num_preemptions_total", "max_num_seqs",
                         "max_num_batched_tokens", "steps"}
    assert set(data["blocks"]) == {"block_size", "owner", "ref_count", "cached", "beams",
                                   "copied", "loaded"}
    assert len(data["blocks"]["owner"]) == 16
    assert data["running"][0]["request_id"] == "a" and data["steps"][0]["num_prefill_tokens"] == 22


def test_attention_weights_are_the_reference_paths(make_engine):
    engine = make_engine()
    ids = PROMPT[:10]
    probs = attention_weights(engine, ids)
    cfg = engine.model_config
    assert probs.shape == (cfg.n_layer, cfg.n_head, 10, 10)
    np.testing.assert_array_equal(probs, gpt2_reference.attention_weights(  # (float32, maybe packed)
        dequantize_weights(engine.runner.weights), cfg, np.asarray(ids)))


def test_attention_weights_with_int8_weights(make_engine):
    ids = PROMPT[:10]
    exact = attention_weights(make_engine(), ids)
    int8 = attention_weights(make_engine(quantization="int8"), ids)
    assert int8.shape == exact.shape
    np.testing.assert_allclose(int8, exact, atol=0.05)


# ---- AsyncEngine: the snapshot is a command answered by the engine thread ------------------

def test_async_engine_answers_snapshots_idle_and_busy(make_engine):
    client = AsyncEngine(make_engine(block_size=BLOCK, num_kv_blocks=64)).start()
    inspector = Inspector(client)
    try:
        idle = inspector.snapshot().result(timeout=30)
        assert idle.blocks.owner == [-1] * 64 and idle.num_steps == 0
        assert (inspector.n_layer, inspector.n_head) == (2, 4)
        assert inspector.snapshot().result(timeout=30) is idle  # nothing changed: not taken again
        request = client.processor.process(
            "a", PROMPT, SamplingParams(max_tokens=200, ignore_eos=True))
        accepted = client.add_request(request, _Sink())
        # Answered after the step that follows the add (or the one after): mid-request.
        busy = inspector.snapshot().result(timeout=30)
        assert [s.request_id for s in busy.running] == ["a"] and busy.num_steps >= 1
        assert sum(o >= 0 for o in busy.blocks.owner) == busy.running[0].num_blocks > 0
        assert accepted.result(timeout=0) is None  # taken before the snapshot was
        assert inspector.snapshot().result(timeout=30) is not busy  # a step later: taken anew
    finally:
        client.shutdown()
    with pytest.raises(RequestAborted):
        inspector.snapshot().result(timeout=30)


def test_async_engine_snapshot_fails_once_the_engine_is_dead(make_engine):
    engine = make_engine()
    client = AsyncEngine(engine)

    def broken_step():
        raise RuntimeError("boom")

    engine.step = broken_step
    client.start()
    client.add_request(client.processor.process("a", [1, 2, 3], SamplingParams(max_tokens=2)),
                       _Sink())
    client.thread.join(timeout=30)
    assert isinstance(client.error, RuntimeError)
    with pytest.raises(EngineDeadError):
        Inspector(client).snapshot().result(timeout=30)


def test_a_cancelled_snapshot_is_skipped(make_engine):
    client = AsyncEngine(make_engine())
    inspector = Inspector(client)
    cancelled, kept = inspector.snapshot(), inspector.snapshot()  # queued before the thread runs
    assert cancelled.cancel()
    client.start()
    try:
        assert kept.result(timeout=30).num_steps == 0
        with pytest.raises(CancelledError):
            cancelled.result()
    finally:
        client.shutdown()


class _Sink:
    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)
