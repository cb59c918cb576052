"""allowed_token_ids, truncate_prompt_tokens and truncation_side: SamplingParams options the
engine honours with vLLM's meaning (the sampler bans every other token, tested on its own in
tests/runner/test_sampler.py; the input processor keeps the last, or first, N prompt tokens
before any other check)."""

from __future__ import annotations

import pytest

from nanovllm import InvalidRequestError, SamplingParams


def test_allowed_token_ids_are_all_a_seeded_sampler_picks(make_llm):
    llm = make_llm()
    allowed = [7, 300, 901]
    for out in llm.generate(["Hello", "x"], SamplingParams(
            n=4, temperature=1.5, seed=2, max_tokens=12, ignore_eos=True,
            allowed_token_ids=allowed)):
        for o in out.outputs:
            assert set(o.token_ids) <= set(allowed) and len(o.token_ids) == 12
    greedy = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4,
                                                    allowed_token_ids=[409]))
    assert greedy[0].outputs[0].token_ids == [409] * 4


@pytest.mark.parametrize("kwargs,param", [
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [1, -2]}, "allowed_token_ids"),
    ({"allowed_token_ids": "12"}, "allowed_token_ids"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ({"truncation_side": "middle"}, "truncation_side"),
])
def test_bad_values_name_their_field(kwargs, param):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param


def test_allowed_token_ids_outside_the_vocabulary(make_engine):
    engine = make_engine()
    with pytest.raises(InvalidRequestError) as err:
        engine.processor.check("Hi", SamplingParams(allowed_token_ids=[1, engine.vocab_size]))
    assert err.value.param == "allowed_token_ids"


def test_truncate_prompt_tokens_keeps_the_end_or_the_start(make_engine):
    engine = make_engine()
    ids = list(range(10, 60))
    assert engine.processor.check(ids, SamplingParams(truncate_prompt_tokens=8)) == ids[-8:]
    assert engine.processor.check(ids, SamplingParams(truncate_prompt_tokens=8,
                                                    truncation_side="right")) == ids[:8]
    assert engine.processor.check(ids, SamplingParams(truncate_prompt_tokens=80)) == ids
    text = "word " * 2000  # far longer than the context: refused unless truncated
    with pytest.raises(InvalidRequestError):
        engine.processor.check(text, SamplingParams())
    kept = engine.processor.check(text, SamplingParams(truncate_prompt_tokens=16))
    assert kept == engine.tokenizer.encode(text)[-16:]
    with pytest.raises(InvalidRequestError) as err:
        engine.processor.check(ids, SamplingParams(truncate_prompt_tokens=engine.max_model_len + 1))
    assert err.value.param == "truncate_prompt_tokens"
    # -1: the context length, which leaves no room to generate: vLLM's error, about the prompt.
    long_ids = list(range(engine.max_model_len + 5))
    with pytest.raises(InvalidRequestError) as err:
        engine.processor.check(long_ids, SamplingParams(truncate_prompt_tokens=-1, max_tokens=None))
    assert err.value.param == "prompt"
