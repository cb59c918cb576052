"""Regressions from the code review: generate() cleanup, request counting, the tokenizer
fallback's special EOS, and the sampler's edge at the top of the CDF."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nanovllm import SamplingParams
from nanovllm.runner.sampler import sample_from_probs
from nanovllm.tokenizer import Tokenizer


def test_interrupted_generate_leaves_nothing_behind(make_llm, monkeypatch):
    llm = make_llm()
    real_step, calls = llm.engine.step, []

    def step_then_interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(llm.engine, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(["a", "b"], SamplingParams(max_tokens=8), use_tqdm=False)
    monkeypatch.undo()
    stats = llm.engine.get_stats()
    assert not llm.engine.has_unfinished_requests()
    assert stats.num_free_blocks == stats.num_total_blocks
    out = llm.generate(["a"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert out[0].request_id == "2" and out[0].finished  # ids continue across calls, as in vLLM


def test_stats_count_requests_not_samples(make_engine):
    engine = make_engine()
    engine.add_request("r", [1, 2, 3], SamplingParams(n=4, max_tokens=4))
    engine.step()
    engine.step()
    assert engine.get_stats().num_running == 1 and engine.get_stats().num_waiting == 0


def test_prompt_tokens_count_once_processed(make_engine):
    engine = make_engine()
    engine.add_request("gone", list(range(50)), SamplingParams(max_tokens=4))
    engine.abort_request("gone")
    assert engine.get_stats().prompt_tokens_total == 0
    engine.add_request("kept", list(range(7)), SamplingParams(n=3, max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.get_stats().prompt_tokens_total == 7


def test_vocab_and_merges_fallback_treats_eos_as_special(tiny_ckpt, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tiny_ckpt / name, tmp_path / name)
    tok = Tokenizer(tmp_path, eos_token_id=1023)
    assert tok.encode("<|endoftext|>") == [1023]
    assert tok.decode([5, 1023]) == tok.decode([5])


def test_sampling_never_lands_on_trailing_zero_probability_tokens():
    probs = np.array([[0.25, 0.75, 0.0, 0.0]], np.float32)
    assert sample_from_probs(probs, np.array([np.nextafter(1.0, 0.0)])).tolist() == [1]


def test_n_samples_start_together_after_the_first_computes_the_prompt(make_engine):
    engine = make_engine()
    engine.add_request("r", list(range(40)), SamplingParams(n=4, max_tokens=5, ignore_eos=True))
    firsts = []
    for _ in range(2):
        (out,) = engine.step()
        firsts.append([len(c.token_ids) for c in out.outputs])
    assert firsts == [[1, 0, 0, 0], [2, 1, 1, 1]]
    assert out.num_cached_tokens == 32  # the siblings reused the first sample's full blocks
