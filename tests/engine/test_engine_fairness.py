"""Fair service between requests and the bounded queue, counted in engine steps (never seconds).

The policy (nanovllm/scheduler.py) gives exact bounds. A request with nothing running is
admitted first; when every slot is taken, the request holding the most running sequences gives
one up; running decodes are served before any prefill chunk. So a newcomer whose prompt fits the
step's budget is admitted in the first step after it arrives (K = 1) and, decoding every step
after, finishes with its max_tokens-th step: first come first served, it would have waited for
all 4,096 sequences queued ahead of it.
"""

from __future__ import annotations

import pytest
from engine_checks import check_engine_invariants

from nanovllm import InvalidRequestError, SamplingParams
from nanovllm.sequence import SequenceStatus
from nanovllm.values.errors import QueueFullError

BIG = SamplingParams(n=128, max_tokens=100, ignore_eos=True)  # 32 prompts of it: 4,096 sequences
SMALL_MAX_TOKENS = 3


def steps_until(engine, done, limit: int) -> int:
    for steps in range(1, limit + 1):
        engine.step()
        check_engine_invariants(engine)
        if done():
            return steps
    raise AssertionError(f"not done within {limit} steps")


@pytest.fixture
def flooded(make_engine):
    """An engine running 32 requests x n=128: 256 sequences decoding, 3,840 waiting."""
    engine = make_engine(num_kv_blocks=2048, max_num_seqs=256)
    for i in range(32):
        engine.add_request(f"big{i}", [i + 1] * 8, BIG)
    for _ in range(3):  # first samples compute the prompts, then their siblings join
        engine.step()
    sched = engine.scheduler
    assert len(sched.running) == 256 and sched.num_waiting_seqs == 4096 - 256
    assert all(s.num_tokens - s.num_computed_tokens == 1 for s in sched.running)  # decoding
    return engine


def test_a_small_request_is_admitted_at_once_and_finishes_in_its_own_steps(flooded):
    small = SamplingParams(max_tokens=SMALL_MAX_TOKENS, ignore_eos=True)
    flooded.add_request("small", [5, 6, 7], small)
    seq = flooded.requests["small"].seqs[0]
    assert steps_until(flooded, lambda: seq.status is not SequenceStatus.WAITING, 1) == 1  # K
    assert seq.num_output_tokens == 1  # prefilled and sampled in that same step
    assert steps_until(flooded, lambda: seq.is_finished, SMALL_MAX_TOKENS - 1) == SMALL_MAX_TOKENS - 1
    flooded.step()
    assert flooded.scheduler.num_preemptions == 1  # one slot given up by the largest holder
    assert len(flooded.scheduler.running) == 256  # and taken back once the small one is done
    flooded.abort_request(list(flooded.requests))
    flooded.step()
    check_engine_invariants(flooded)
    assert flooded.block_manager.num_free_blocks == flooded.block_manager.num_blocks


def test_many_newcomers_each_get_a_slot_in_their_first_step(flooded):
    """Eight small requests at once: each takes a slot from the largest holder of the moment,
    so the big requests keep an even share (none loses more than one sequence)."""
    for i in range(8):
        flooded.add_request(f"small{i}", [9, i], SamplingParams(max_tokens=2, ignore_eos=True))
    flooded.step()
    sched = flooded.scheduler
    assert all(sched.num_running[flooded.requests[f"small{i}"]] == 1 for i in range(8))
    big_shares = [sched.num_running[flooded.requests[f"big{i}"]] for i in range(32)]
    assert min(big_shares) >= 7 and max(big_shares) == 8 and sum(big_shares) == 248


def test_round_robin_admission_shares_slots_between_big_requests(make_engine):
    """Two requests of 8 samples, four slots: two each, not four for the first."""
    engine = make_engine(max_num_seqs=4)
    for rid in "ab":
        engine.add_request(rid, [1, 2, 3], SamplingParams(n=8, max_tokens=5, ignore_eos=True))
    for _ in range(2):
        engine.step()
    held = engine.scheduler.num_running
    assert [held[engine.requests[rid]] for rid in "ab"] == [2, 2]


def test_a_full_queue_refuses_new_requests_and_queues_nothing(make_engine):
    engine = make_engine(max_waiting_seqs=10, max_num_seqs=2)
    engine.add_request("a", [1, 2], SamplingParams(n=8, max_tokens=4))
    with pytest.raises(QueueFullError, match="8 sequences are waiting.*limit of 10"):
        engine.add_request("b", [1, 2], SamplingParams(n=3, max_tokens=4))
    assert "b" not in engine.requests and engine.scheduler.num_waiting_seqs == 8
    engine.add_request("c", [1, 2], SamplingParams(n=2, max_tokens=4))  # exactly at the limit
    engine.step()  # two admitted: room for two more
    engine.add_request("d", [1, 2], SamplingParams(n=2, max_tokens=4))
    with pytest.raises(InvalidRequestError, match="n=11") as err:  # could never be queued
        engine.add_request("e", [1, 2], SamplingParams(n=11))
    assert err.value.param == "n"


def test_generate_feeds_a_small_queue_as_it_drains(make_llm):
    """LLM.generate hands the engine only what its queue takes and still returns everything,
    in order, as an unbounded queue would."""
    prompts = [[i + 1, i + 2, i + 3] for i in range(12)]
    params = SamplingParams(n=2, max_tokens=4, temperature=0)
    bounded = make_llm(max_waiting_seqs=3, max_num_seqs=2).generate(prompts, params, use_tqdm=False)
    free = make_llm().generate(prompts, params, use_tqdm=False)
    assert [[o.token_ids for o in r.outputs] for r in bounded] == \
           [[o.token_ids for o in r.outputs] for r in free]
