"""Property-based tests of the scheduler and block manager, driven without a model.

A hypothesis state machine adds requests (fake token prompts drawn from a few shared stems,
so the prefix cache gets hits), steps, aborts and preempts at random. Each step does the
engine's bookkeeping by hand: the computed tokens advance, full blocks are registered, a
sequence that computed all its tokens gets a new token or finishes. A fake KV cache records,
for every slot written, which token prefix it holds; after every step each running sequence
must find its own prefix in every slot it has computed, so a block shared or evicted wrongly
shows up at once. After every rule: the block invariants (engine_checks). At the end every
request finishes within a bound and every block is free. Under the 'priority' policy (requests
of random priorities), no step admits a sequence of a worse priority than one it leaves waiting.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from engine_checks import check_block_invariants
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

from nanovllm import SamplingParams
from nanovllm.block_manager import BlockManager
from nanovllm.contract.step import ModelRunnerOutput
from nanovllm.scheduler import Scheduler
from nanovllm.scheduling_policy import policy_for
from nanovllm.sequence import Request, Sequence, SequenceStatus

ALPHABET = 3                        # few distinct tokens: many identical blocks
STEMS = [[i % ALPHABET] * 3 + [(i + j) % ALPHABET for j in range(13)] for i in range(3)]
MAX_NEW = 8


class FakeEngine:
    """The engine's bookkeeping around Scheduler + BlockManager, with a fake KV cache."""

    def __init__(self, num_blocks, block_size, max_num_seqs, max_num_batched_tokens, caching, seed,
                 policy="fcfs"):
        self.bm = BlockManager(num_blocks, block_size, caching)
        self.sched = Scheduler(self.bm, max_num_seqs, max_num_batched_tokens,
                               policy=policy_for(policy))
        self.requests: dict[str, tuple[Request, int]] = {}
        self.kv: dict[int, tuple[int, ...]] = {}
        self.rng = random.Random(seed)
        self.ids = itertools.count()

    def add(self, prompt, n, max_new, prompt_logprobs, priority=0) -> str:
        rid = f"r{len(self.requests)}"
        params = SamplingParams(n=n, max_tokens=max_new, prompt_logprobs=prompt_logprobs)
        request = Request(rid, None, prompt, params, priority=priority)
        for index in range(n):
            seq = Sequence(next(self.ids), request, index, list(prompt))
            request.seqs.append(seq)
            self.sched.add(seq)
        self.requests[rid] = (request, max_new)
        return rid

    def live_requests(self) -> list[str]:
        return [rid for rid, (req, _) in self.requests.items() if not req.finished]

    def step(self) -> None:
        waiting = {s.seq_id for s in self.sched.waiting}
        batch = self.sched.schedule()
        self.check_batch(batch)
        self.check_fairness()
        self.check_priority(waiting)
        for e in batch.scheduled:
            seq = self.sched.seqs[e.seq_id]
            for pos in range(e.start, e.start + len(e.token_ids)):
                self.kv[self.slot(seq, pos)] = tuple(seq.token_ids[:pos + 1])
        done = ModelRunnerOutput({}, {}, {})  # what it sampled is drawn here, below
        for seq, e in zip(self.sched.update_from_output(batch, done), batch.scheduled):
            assert e.sample == (seq.num_computed_tokens == seq.num_tokens)
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(self.rng.randrange(ALPHABET))
                eos = self.rng.random() < 0.1
                if eos or seq.num_output_tokens >= self.requests[seq.request.request_id][1]:
                    seq.finish_reason = "stop"
                    self.sched.finish(seq)
        self.check_kv()

    def check_batch(self, batch) -> None:
        sched = self.sched
        assert batch.scheduled, "a step with unfinished requests scheduled nothing"
        assert batch.num_tokens <= sched.max_num_batched_tokens
        assert batch.num_tokens == sum(len(e.token_ids) for e in batch.scheduled)
        assert len(batch.scheduled) <= sched.max_num_seqs
        assert len({e.seq_id for e in batch.scheduled}) == len(batch.scheduled)
        for e in batch.scheduled:
            seq, n = sched.seqs[e.seq_id], len(e.token_ids)
            assert seq.status is SequenceStatus.RUNNING and seq in sched.running
            assert e.start == seq.num_computed_tokens
            assert e.token_ids == seq.token_ids[e.start:e.start + n]
            assert 1 <= n <= seq.num_tokens - seq.num_computed_tokens
            assert len(seq.block_table) * self.bm.block_size >= seq.num_computed_tokens + n

    def check_fairness(self) -> None:
        """After scheduling, a request with nothing running waits for a full batch only when no
        request holds two sequences it could have given up (under 'priority': a request of the
        best priority waiting, and one of no better priority holding them)."""
        sched = self.sched
        if sched.idle and len(sched.running) >= sched.max_num_seqs:
            best = min(s.priority for s in sched.waiting)
            if any(r.priority == best for r in sched.idle):
                assert all(n <= 1 for r, n in sched.num_running.items() if r.priority >= best)

    def check_priority(self, waiting: set[int]) -> None:
        """Under 'priority': whatever a step admitted ranks no worse than what still waits
        (a better one waiting for room holds every worse one back)."""
        sched = self.sched
        if sched.policy.name != "priority":
            return
        admitted = [s.priority for s in sched.running if s.seq_id in waiting]
        if admitted and sched.waiting:
            assert max(admitted) <= min(s.priority for s in sched.waiting)

    def check_kv(self) -> None:
        for seq in self.sched.running:
            for pos in range(seq.num_computed_tokens):
                assert self.kv.get(self.slot(seq, pos)) == tuple(seq.token_ids[:pos + 1]), \
                    f"seq {seq.seq_id} position {pos}: its KV slot holds another prefix"

    def slot(self, seq: Sequence, pos: int) -> int:
        bs = self.bm.block_size
        return seq.block_table[pos // bs] * bs + pos % bs

    def abort(self, rid: str) -> None:
        for seq in self.requests[rid][0].seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.sched.finish(seq)


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(block_size=st.sampled_from([1, 2, 4]), num_blocks=st.integers(6, 30),
                max_num_seqs=st.integers(1, 5), max_num_batched_tokens=st.integers(1, 20),
                caching=st.booleans(), seed=st.integers(0, 2**16),
                policy=st.sampled_from(["fcfs", "priority"]))
    def setup(self, block_size, num_blocks, max_num_seqs, max_num_batched_tokens, caching, seed,
              policy):
        self.engine = FakeEngine(num_blocks, block_size, max_num_seqs, max_num_batched_tokens,
                                 caching, seed, policy)

    @rule(stem=st.sampled_from(STEMS), stem_len=st.integers(0, 16),
          suffix=st.lists(st.integers(0, ALPHABET - 1), max_size=8), n=st.integers(1, 3),
          max_new=st.integers(1, MAX_NEW), prompt_logprobs=st.booleans(),
          priority=st.integers(-2, 2))
    def add(self, stem, stem_len, suffix, n, max_new, prompt_logprobs, priority):
        prompt = stem[:stem_len] + suffix or [0]
        bm = self.engine.bm
        # The engine rejects requests that could never fit the pool; so do we.
        if bm.blocks_for(len(prompt) + max_new) <= bm.num_blocks:
            if self.engine.sched.policy.name != "priority":
                priority = 0
            self.engine.add(prompt, n, max_new, 1 if prompt_logprobs else None, priority)

    @precondition(lambda self: bool(self.engine.sched.waiting or self.engine.sched.running))
    @rule()
    def step(self):
        self.engine.step()

    @precondition(lambda self: self.engine.live_requests())
    @rule(data=st.data())
    def abort(self, data):
        self.engine.abort(data.draw(st.sampled_from(self.engine.live_requests())))

    @precondition(lambda self: self.engine.sched.running)
    @rule()
    def preempt_newest(self):
        sched = self.engine.sched
        sched._preempt(sched.running[-1])

    @invariant()
    def queues_are_consistent(self):
        """Each waiting request is in the lane its running count says, once, with only its own
        waiting sequences; the counts agree with the lists."""
        sched = self.engine.sched
        assert sched.num_running == Counter(s.request for s in sched.running)
        assert not sched.idle.keys() & sched.busy.keys()
        for lane, runs in ((sched.idle, False), (sched.busy, True)):
            for request, queue in lane.items():
                assert queue and bool(sched.num_running[request]) == runs
                assert all(s.request is request and s.status is SequenceStatus.WAITING for s in queue)
        assert sched.num_waiting_seqs == len(sched.waiting)

    @invariant()
    def blocks_are_consistent(self):
        sched = self.engine.sched
        check_block_invariants(self.engine.bm, sched.running, list(sched.waiting))
        assert len(sched.running) <= sched.max_num_seqs

    def teardown(self):
        engine = self.engine
        work = sum(len(s.token_ids) + MAX_NEW for req, _ in engine.requests.values()
                   for s in req.seqs)
        steps = 0
        while engine.sched.waiting or engine.sched.running:
            engine.step()
            check_block_invariants(engine.bm, engine.sched.running, list(engine.sched.waiting))
            steps += 1
            # Without preemption each step computes a token; recomputation at most repeats all.
            assert steps <= 4 * work + 10, "requests did not finish"
        assert all(req.finished for req, _ in engine.requests.values())
        assert engine.bm.num_free_blocks == engine.bm.num_blocks
        assert all(b.ref_count == 0 for b in engine.bm.blocks)


def test_scheduler_and_block_manager_invariants():
    run_state_machine_as_test(SchedulerMachine, settings=settings(
        max_examples=150, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


def test_an_equal_newcomer_gets_a_slot_after_a_better_request_takes_the_free_ones():
    """The case the machine found: a better request's two sequences take both free slots, and a
    newcomer equal to a request holding two gets one of its slots in the same step."""
    machine = SchedulerMachine()
    machine.setup(block_size=1, num_blocks=6, max_num_seqs=4, max_num_batched_tokens=4,
                  caching=False, seed=0, policy="priority")
    for n, max_new, priority, step in ((1, 1, 0, False), (3, 2, 0, True), (1, 1, 0, False),
                                       (2, 1, -1, False)):
        machine.add(STEMS[0], 0, [], n, max_new, False, priority)
        if step:
            machine.step()
    machine.teardown()  # (each step checks fairness)
