"""Structured outputs in the engine: each constrained sequence's grammar matcher lives in the
runner's per-sequence state (runner/structured.py). Random weights: every output that matches
is the grammar's doing. Counted in engine steps."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from nanovllm import SamplingParams
from nanovllm.runner.structured import GrammarMatcher, StartMatchers
from nanovllm.structured import GrammarCompiler

PATTERN = r"[a-z]{2,5}-[0-9]{3}"
PROMPT = [5, 6, 7, 8, 9, 10, 11, 12]


@pytest.fixture
def regex():
    def compile_for(engine, pattern=PATTERN):
        return GrammarCompiler(engine.tokenizer).compile("regex", pattern, "guided_regex")
    return compile_for


def run(engine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def test_outputs_match_through_preemption(make_engine, regex):
    """The matchers survive preemption: with a pool too small for all the sequences at once,
    they are preempted and recomputed, and every sample still matches and ends on EOS."""
    engine = make_engine(num_kv_blocks=8, block_size=4)
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=12,
                            structured=regex(engine))
    for i in range(3):
        engine.add_request(str(i), PROMPT[:5 + i], params)
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out
    assert engine.scheduler.num_preemptions > 0
    texts = [c.text for out in outputs.values() for c in out.outputs]
    assert len(texts) == 9 and all(re.fullmatch(PATTERN, t) for t in texts), texts
    assert {c.finish_reason for out in outputs.values() for c in out.outputs} == {"stop"}
    assert len(set(texts)) > 1  # sampled, not one forced answer


def test_sequences_of_one_grammar_copy_one_matcher(make_engine, regex):
    """The runner builds a grammar's matcher once and gives each new sequence a copy: the
    copies sample what matchers built for each sequence (nothing kept) do, each its own."""
    texts = {}
    for kept in (8, 0):
        engine = make_engine()
        engine.runner.start_matchers = StartMatchers(kept)
        params = SamplingParams(temperature=1.0, seed=11, n=3, max_tokens=12,
                                structured=regex(engine))
        for i in range(2):  # two requests at once, three sequences each
            engine.add_request(str(i), PROMPT[:6 + i], params)
        done = {}
        while engine.has_unfinished_requests():
            done.update({out.request_id: out for out in engine.step()})
        engine.add_request("later", PROMPT, params)
        run(engine)
        texts[kept] = [c.text for rid in sorted(done) for c in done[rid].outputs]
        assert engine.runner.start_matchers.built == (1 if kept else 9)
    assert texts[8] == texts[0] and all(re.fullmatch(PATTERN, t) for t in texts[8])
    assert len(set(texts[8])) > 1


def test_matchers_live_in_the_runner_state_of_constrained_sequences_only(make_engine, regex):
    engine = make_engine()
    engine.add_request("free", PROMPT, SamplingParams(max_tokens=30, ignore_eos=True))
    engine.add_request("bound", PROMPT, SamplingParams(max_tokens=30, n=2,
                                                       structured=regex(engine)))
    engine.step()
    grammar_of = {s.seq_id: engine.runner.states[s.seq_id].grammar
                  for r in engine.requests.values() for s in r.seqs}
    free = engine.requests["free"].seqs[0].seq_id
    assert grammar_of.pop(free) is None
    assert len(grammar_of) == 2 and all(isinstance(g, GrammarMatcher) for g in grammar_of.values())
    assert len({id(g) for g in grammar_of.values()}) == 2  # one per sequence, not per request
    run(engine)
    engine.step()  # delivers the retirements
    assert engine.runner.states == {}


def test_the_grammar_not_max_tokens_ends_the_sequence(make_engine, regex):
    """Greedy, with tokens to spare: once the grammar is complete only EOS is allowed."""
    engine = make_engine()
    engine.add_request("a", PROMPT, SamplingParams(temperature=0.0, max_tokens=60,
                                                   structured=regex(engine, "(ab|cd)e")))
    outputs = [out for _ in range(60) if engine.has_unfinished_requests()
               for out in engine.step()]
    final = outputs[-1].outputs[0]
    assert final.text in ("abe", "cde") and final.finish_reason == "stop"
    assert final.token_ids[-1] == engine.tokenizer.eos_token_id


def test_matcher_masks(make_engine, regex):
    engine = make_engine()
    tok, vocab = engine.tokenizer, engine.vocab_size
    eos = tok.eos_token_id
    matcher = GrammarMatcher(regex(engine, "(ab|cd)e"), eos)
    row = np.zeros(vocab, np.float32)
    matcher.mask_logits_(row)
    assert {tok.decode([t]) for t in np.flatnonzero(np.isfinite(row))} <= {"a", "ab", "c", "cd"}
    for t in tok.encode("abe"):
        matcher.accept(t)
    assert matcher.is_complete
    row[:] = 0.0
    matcher.mask_logits_(row)
    assert np.flatnonzero(np.isfinite(row)).tolist() == [eos]  # complete: only EOS

    broken = GrammarMatcher(regex(engine, "(ab|cd)e"), eos)
    broken.accept(tok.encode("z")[0])  # refused (logged): the matcher is in error
    row[:] = 0.0
    broken.mask_logits_(row)
    assert np.flatnonzero(np.isfinite(row)).tolist() == [eos]


def test_unconstrained_engines_never_load_llguidance():
    """Requests without a constraint pay nothing: not even the import."""
    code = ("import sys, nanovllm.server.app, nanovllm.engine, nanovllm.runner.model_runner\n"
            "assert 'llguidance' not in sys.modules, 'llguidance imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
