"""Priority scheduling (`scheduling_policy="priority"`, vLLM's `priority`), counted in engine
steps: a high-priority request goes before the low ones waiting, keeps its blocks when they run
out (a low-priority one is preempted instead), and requests of equal priority are scheduled
exactly as without priorities. Under 'fcfs' a non-zero priority is refused."""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import check_engine_invariants

from nanovllm import InvalidRequestError, SamplingParams
from nanovllm.sequence import SequenceStatus

LOW, HIGH = 1, 0


def params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)


def step(engine) -> None:
    engine.step()
    check_engine_invariants(engine)


def admitted_order(engine, rids: list[str], limit: int = 50) -> list[str]:
    """The order in which `rids` start running, read after every step."""
    order = []
    for _ in range(limit):
        step(engine)
        order += [rid for rid in rids if rid not in order
                  and engine.requests.get(rid) is not None
                  and engine.requests[rid].seqs[0].status is not SequenceStatus.WAITING]
        order += [rid for rid in rids if rid not in order and rid not in engine.requests]
        if len(order) == len(rids):
            return order
    raise AssertionError(f"not all admitted within {limit} steps: {order}")


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_a_high_priority_request_goes_before_the_low_ones_waiting(make_engine, policy):
    """One slot, busy with a low-priority request; two low ones wait, then a high one arrives:
    it is admitted next under 'priority' (and last, in its turn, under 'fcfs')."""
    engine = make_engine(max_num_seqs=1, scheduling_policy=policy)
    rank = (lambda p: p) if policy == "priority" else (lambda p: 0)
    engine.add_request("running", [1, 2, 3], params(3), priority=rank(LOW))
    step(engine)
    for rid in ("low1", "low2"):
        engine.add_request(rid, [4, 5, 6], params(2), priority=rank(LOW))
    step(engine)
    engine.add_request("high", [7, 8, 9], params(2), priority=rank(HIGH))
    order = admitted_order(engine, ["low1", "low2", "high"])
    assert order == (["high", "low1", "low2"] if policy == "priority" else ["low1", "low2", "high"])


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_when_blocks_run_out_a_low_priority_sequence_is_preempted(make_engine, policy):
    """Four blocks of 16 tokens; two low-priority requests and then a high one each hold one
    block, and all three need a second block in the same step, with one free: under 'priority'
    the high one gets it first and the newest low one is preempted; under 'fcfs' the newest,
    the high one, is."""
    engine = make_engine(num_kv_blocks=4, block_size=16, scheduling_policy=policy)
    rank = (lambda p: p) if policy == "priority" else (lambda p: 0)
    prompt = list(range(1, 15))  # 14 tokens: the 17th needs a second block
    engine.add_request("low1", prompt, params(20), priority=rank(LOW))
    engine.add_request("low2", [t + 20 for t in prompt], params(20), priority=rank(LOW))
    step(engine)
    engine.add_request("high", [t + 40 for t in prompt], params(20), priority=rank(HIGH))
    step(engine)
    seqs = {rid: engine.requests[rid].seqs[0] for rid in ("low1", "low2", "high")}
    assert all(s.status is SequenceStatus.RUNNING for s in seqs.values())
    while engine.scheduler.num_preemptions == 0:
        step(engine)
    preempted = {rid for rid, s in seqs.items() if s.num_preemptions}
    assert preempted == ({"low2"} if policy == "priority" else {"high"})
    while engine.has_unfinished_requests():  # everyone finishes; the high one never waits again
        step(engine)
        if policy == "priority":
            assert seqs["high"].num_preemptions == 0


def test_the_high_priority_request_never_gives_way_to_low_ones(make_engine):
    """A pool too small for everyone: one high-priority request among six low ones keeps its
    blocks for its whole run and finishes before any low one that arrived with it."""
    engine = make_engine(num_kv_blocks=6, block_size=4, max_num_seqs=8,
                         scheduling_policy="priority")
    for i in range(6):
        engine.add_request(f"low{i}", [i + 1] * 3, params(12), priority=5)
    engine.add_request("high", [9, 9, 9], params(12), priority=-3)
    high = engine.requests["high"].seqs[0]
    finished = []
    while engine.has_unfinished_requests():
        step(engine)
        assert high.num_preemptions == 0
        finished += [rid for rid in [f"low{i}" for i in range(6)] + ["high"]
                     if rid not in engine.requests and rid not in finished]
    assert engine.scheduler.num_preemptions > 0  # the low ones did give way
    assert finished[0] == "high"


def test_equal_priorities_are_scheduled_exactly_as_fcfs(make_engine):
    """The same workload (requests of n samples arriving over time, a small pool, few slots:
    fairness, round-robin and preemption all at work) under 'priority' with every priority
    equal and under 'fcfs': every step schedules the same sequences the same way."""
    arrivals = {0: [("a", [1, 2, 3], 4, 10), ("b", [4, 5], 1, 6)],
                2: [("c", [6, 7, 8, 9], 3, 8)], 3: [("d", [1, 2, 3], 2, 12)],
                6: [("e", [10], 1, 3), ("f", [11, 12], 5, 5)]}
    runs = []
    for policy in ("fcfs", "priority"):
        engine = make_engine(num_kv_blocks=12, block_size=4, max_num_seqs=5,
                             max_num_batched_tokens=12, scheduling_policy=policy)
        steps = []
        for i in range(60):
            for rid, prompt, n, max_tokens in arrivals.get(i, []):
                engine.add_request(rid, prompt, SamplingParams(
                    n=n, max_tokens=max_tokens, ignore_eos=True, temperature=0), priority=0)
            step_plan = engine.scheduler.schedule()
            steps.append([(s.seq_id, s.start, len(s.token_ids)) for s in step_plan.scheduled])
            finish_step(engine, step_plan)
        assert not engine.has_unfinished_requests()
        runs.append((steps, engine.scheduler.num_preemptions))
    assert runs[0] == runs[1]
    assert runs[0][1] > 0  # preemption was exercised


def finish_step(engine, step_plan) -> None:
    """The rest of LLMEngine.step after `schedule`: run, record, decide, apply."""
    result = engine.runner.run(step_plan)
    if not step_plan.scheduled:
        return
    seqs = engine.scheduler.update_from_output(step_plan, result)
    decided = engine.output_processor.process(step_plan, seqs, result)
    engine.scheduler.apply(decided)
    for out in engine.output_processor.outputs(decided):
        if out.finished:
            del engine.requests[out.request_id]
    check_engine_invariants(engine)


def test_fcfs_refuses_a_non_zero_priority(make_engine):
    engine = make_engine()
    with pytest.raises(InvalidRequestError, match="priority scheduling is not enabled") as err:
        engine.add_request("a", [1, 2], params(2), priority=1)
    assert err.value.param == "priority" and not engine.requests
    engine.add_request("b", [1, 2], params(2), priority=0)
    with pytest.raises(InvalidRequestError, match="integer"):
        make_engine(scheduling_policy="priority").add_request("c", [1], params(1), priority=1.5)
    with pytest.raises(ValueError, match="scheduling_policy must be one of"):
        make_engine(scheduling_policy="lottery")


def test_generate_takes_one_priority_per_prompt(make_llm):
    """LLM.generate(..., priority=[...]) as vLLM's: the outputs stay in input order and equal
    those of a run without priorities (greedy), and a list of the wrong length is refused."""
    prompts = [[i + 1, i + 2] for i in range(6)]
    llm = make_llm(scheduling_policy="priority", max_num_seqs=2)
    ranked = llm.generate(prompts, params(4), use_tqdm=False, priority=[5, 0, 3, -1, 0, 2])
    plain = make_llm().generate(prompts, params(4), use_tqdm=False)
    assert [r.outputs[0].token_ids for r in ranked] == [r.outputs[0].token_ids for r in plain]
    numpy_ranked = llm.generate(prompts, params(4), use_tqdm=False, priority=np.arange(6) - 3)
    assert [r.outputs[0].token_ids for r in numpy_ranked] == [r.outputs[0].token_ids for r in plain]
    with pytest.raises(ValueError, match="2 priorities for 6 prompts"):
        llm.generate(prompts, params(4), use_tqdm=False, priority=[0, 1])
    with pytest.raises(InvalidRequestError, match="not enabled"):
        make_llm().generate(prompts[:1], params(2), use_tqdm=False, priority=[1])


def test_a_newcomer_behind_a_better_one_takes_a_slot_from_its_equal_in_the_same_step(make_engine):
    """Three slots, two held by a request of two samples. A newcomer of its priority and a
    better one arrive together: the better takes the free slot and the equal one a slot of the
    two samples', in the same step (a request with nothing running waits for none of its
    equals holding two, as under 'fcfs')."""
    engine = make_engine(max_num_seqs=3, scheduling_policy="priority")
    engine.add_request("pair", [1, 2, 3], SamplingParams(n=2, max_tokens=20, ignore_eos=True,
                                                         temperature=1.0, seed=0),
                       priority=LOW)

    def running(rid: str) -> int:
        return sum(s.status is SequenceStatus.RUNNING for s in engine.requests[rid].seqs)

    while running("pair") < 2:
        step(engine)
    engine.add_request("equal", [4, 5, 6], params(5), priority=LOW)
    engine.add_request("better", [7, 8, 9], params(5), priority=HIGH)
    step(engine)
    assert [running(rid) for rid in ("pair", "equal", "better")] == [1, 1, 1]
