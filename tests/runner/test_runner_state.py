"""The runner's per-sequence state (runner/seq_state.py, SequenceState) follows the engine's
sequences: made from the step a sequence is first announced in, kept through preemption,
dropped in the step after it finishes or is aborted. Counted in engine steps."""

from __future__ import annotations

from collections import Counter

from nanovllm import SamplingParams
from nanovllm.contract.step import ModelRunnerOutput

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


def live_seq_ids(engine) -> set[int]:
    return {s.seq_id for r in engine.requests.values() for s in r.seqs if not s.is_finished}


def test_state_lives_exactly_as_long_as_its_sequence(make_engine):
    engine = make_engine()
    engine.add_request("a", PROMPT, SamplingParams(max_tokens=2, n=2, ignore_eos=True))
    engine.add_request("b", PROMPT, SamplingParams(max_tokens=50, ignore_eos=True))
    assert engine.runner.states == {}  # announced with the first step, not before
    engine.step()
    ids = live_seq_ids(engine)
    assert set(engine.runner.states) == ids and len(ids) == 3
    engine.abort_request("b")
    while engine.has_unfinished_requests():
        engine.step()
    engine.add_request("c", PROMPT, SamplingParams(max_tokens=1))
    engine.step()  # carries the retirements of a and b
    assert len(engine.runner.states) == 1  # c, which finished in this very step
    engine.step()  # an empty step still delivers the retirement
    assert engine.runner.states == {}


def test_runner_penalty_counts_match_the_engines_tokens(make_engine):
    """The runner counts, from the prompt and what it sampled, what the penalties read; the
    counts must never drift from the engine's tokens, through preemption too."""
    engine = make_engine(num_kv_blocks=6, block_size=4)  # forces preemption
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=12, ignore_eos=True,
                            repetition_penalty=1.2, frequency_penalty=0.1)
    for i in range(4):
        engine.add_request(str(i), PROMPT[:4 + i], params)
    while engine.has_unfinished_requests():
        engine.step()
        for request in engine.requests.values():
            for seq in request.seqs:
                if seq.seq_id in engine.runner.states:
                    counts = engine.runner.states[seq.seq_id].penalty_counts
                    assert counts.seen == set(seq.token_ids)
                    assert sorted(counts.seen_ids.tolist()) == sorted(set(seq.token_ids))
                    assert dict(zip(counts.output_ids.tolist(), counts.output_counts.tolist())
                                ) == Counter(seq.output_token_ids)
    assert engine.scheduler.num_preemptions > 0


def test_a_step_announces_each_sequence_once(make_engine):
    engine = make_engine()
    engine.add_request("a", PROMPT, SamplingParams(max_tokens=3, n=2))
    first = engine.scheduler.schedule()  # the second sample may wait for the first's prompt
    assert [s.seq_id for s in first.new_seqs] == [s.seq_id for s in engine.requests["a"].seqs]
    done = ModelRunnerOutput({}, {}, {})
    for seq in engine.scheduler.update_from_output(first, done):  # as the engine does with samples
        seq.token_ids.append(1)
    assert engine.scheduler.schedule().new_seqs == []
