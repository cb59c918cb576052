"""Bad input is refused with a ValueError that says what is wrong, and the engine goes on.

SamplingParams validates on construction: each message names the field and the bad value.
LLMEngine.add_request refuses requests that can never run (too long for the context or the
whole KV pool, token ids outside the vocabulary, empty prompts, a request id in use); a
refused request leaves no trace, so the engine keeps serving.
"""

from __future__ import annotations

import pytest
from engine_checks import run_engine

from nanovllm import SamplingParams

INVALID = [
    ("n", dict(n=0), "0"), ("n", dict(n=-3), "-3"), ("n", dict(n=1.5), "1.5"),
    ("n", dict(n=True), "True"),
    ("temperature", dict(temperature=-1), "-1"),
    ("temperature", dict(temperature=float("nan")), "nan"),
    ("temperature", dict(temperature="hot"), "hot"),
    ("top_p", dict(top_p=0), "0"), ("top_p", dict(top_p=1.5), "1.5"),
    ("top_p", dict(top_p=-0.1), "-0.1"),
    ("top_k", dict(top_k=-2), "-2"), ("top_k", dict(top_k=2.5), "2.5"),
    ("min_p", dict(min_p=2), "2"), ("min_p", dict(min_p=-0.5), "-0.5"),
    ("presence_penalty", dict(presence_penalty=3), "3"),
    ("presence_penalty", dict(presence_penalty=-2.5), "-2.5"),
    ("frequency_penalty", dict(frequency_penalty=2.01), "2.01"),
    ("repetition_penalty", dict(repetition_penalty=0), "0"),
    ("repetition_penalty", dict(repetition_penalty=-1.0), "-1.0"),
    ("max_tokens", dict(max_tokens=0), "0"), ("max_tokens", dict(max_tokens=-1), "-1"),
    ("max_tokens", dict(max_tokens=2.0), "2.0"),
    ("min_tokens", dict(min_tokens=-1), "-1"),
    ("min_tokens", dict(min_tokens=9, max_tokens=8), "9"),
    ("logprobs", dict(logprobs=21), "21"), ("logprobs", dict(logprobs=-1), "-1"),
    ("prompt_logprobs", dict(prompt_logprobs=21), "21"),
    ("stop", dict(stop=[""]), "''"), ("stop", dict(stop=""), "''"),
    ("stop", dict(stop=["ok", 3]), "3"),
    ("stop_token_ids", dict(stop_token_ids=[-1]), "-1"),
    ("stop_token_ids", dict(stop_token_ids=["x"]), "x"),
    ("seed", dict(seed="x"), "x"), ("seed", dict(seed=1.5), "1.5"),
    ("logit_bias", dict(logit_bias={1: 200}), "200"),
    ("logit_bias", dict(logit_bias={1: -101}), "-101"),
]


@pytest.mark.parametrize("field, kwargs, value", INVALID,
                         ids=[f"{f}={v}" for f, _, v in INVALID])
def test_invalid_sampling_params_name_field_and_value(field, kwargs, value):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    message = str(err.value)
    assert field in message and value in message, message


def wrong_type(kwargs: dict, field: str, what: str):
    """A wrongly typed value that once escaped as `what` instead of a ValueError."""
    return pytest.param(kwargs, field, id=str(kwargs))


@pytest.mark.parametrize("kwargs, field", [
    wrong_type(dict(stop=5), "stop", "TypeError"),
    wrong_type(dict(stop_token_ids=5), "stop_token_ids", "TypeError"),
    wrong_type(dict(logit_bias=[1, 2]), "logit_bias", "AttributeError"),
    wrong_type(dict(logit_bias={"a": 1.0}), "logit_bias", "an int() error without the field name"),
    wrong_type(dict(logit_bias={1: "x"}), "logit_bias", "a float() error without the field name"),
])
def test_wrongly_typed_sampling_params_raise_value_error(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=-1), dict(top_p=1.0, min_p=1.0),
                                    dict(temperature=0.0), dict(max_tokens=None, min_tokens=500),
                                    dict(logprobs=20, prompt_logprobs=0), dict(stop="a"),
                                    dict(presence_penalty=-2.0, frequency_penalty=2.0),
                                    dict(logit_bias={"5": 100}), dict(seed=2**40)])
def test_valid_edge_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


def test_sampling_params_normalise_like_vllm():
    p = SamplingParams(stop="x", top_k=-1, logit_bias={"3": 1})
    assert (p.stop, p.top_k, p.logit_bias, p.stop_token_ids) == (["x"], 0, {3: 1.0}, [])


def test_negative_seed_is_rejected_naming_the_field_or_works(make_engine):
    try:
        params = SamplingParams(seed=-1, max_tokens=2)
    except ValueError as err:
        assert "seed" in str(err)
        return
    engine = make_engine()
    engine.add_request("a", [1, 2], params)
    assert run_engine(engine)["a"][-1].finished


# ---- add_request -----------------------------------------------------------------------------
def rejects(engine, request_id, prompt, params, *fragments) -> None:
    before = engine.get_stats()
    with pytest.raises(ValueError) as err:
        engine.add_request(request_id, prompt, params)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    after = engine.get_stats()
    assert (after.num_waiting, after.num_running) == (before.num_waiting, before.num_running)
    assert after.prompt_tokens_total == before.prompt_tokens_total


def test_add_request_rejections_leave_the_engine_working(make_engine):
    engine = make_engine(block_size=4, num_kv_blocks=30)        # a pool of 120 tokens
    engine.add_request("busy", [1, 2, 3], SamplingParams(max_tokens=20, ignore_eos=True))
    engine.step()
    ok = SamplingParams(max_tokens=4)
    rejects(engine, "long", list(range(200)), SamplingParams(max_tokens=100),
            "maximum context length is 256 tokens", "300", "200", "100")
    rejects(engine, "full", list(range(256)), SamplingParams(max_tokens=None),
            "maximum context length is 256 tokens", "256")
    rejects(engine, "pool", list(range(100)), SamplingParams(max_tokens=40), "KV", "140", "30")
    rejects(engine, "pool2", [1], SamplingParams(max_tokens=None), "KV")
    rejects(engine, "vocab", [1, 1024, 2], ok, "1024")
    rejects(engine, "negative", [1, -1], ok, "-1")
    rejects(engine, "float", [1, 2.0], ok, "2.0")
    rejects(engine, "empty", [], ok, "empty")
    rejects(engine, "empty-text", "", ok, "empty")
    rejects(engine, "busy", [5, 6], ok, "busy")
    rejects(engine, "bias", [5, 6], SamplingParams(logit_bias={5000: 1.0}), "logit_bias", "5000")
    rejects(engine, "stopid", [5, 6], SamplingParams(stop_token_ids=[1024]), "stop_token_ids")
    engine.add_request("after", "hello world", ok)
    history = run_engine(engine)
    assert set(history) == {"busy", "after"}
    assert history["busy"][-1].outputs[0].finish_reason == "length"
    assert len(history["after"][-1].outputs[0].token_ids) <= 4
    # A finished request's id may be used again.
    engine.add_request("busy", [1, 2, 3], ok)
    assert run_engine(engine)["busy"][-1].finished
    assert engine.get_stats().num_free_blocks == 30


def test_a_request_exactly_at_the_limits_is_accepted(make_engine):
    engine = make_engine(block_size=4, num_kv_blocks=64)        # 256 tokens: the whole context
    engine.add_request("edge", list(range(250)), SamplingParams(max_tokens=6, ignore_eos=True))
    out = run_engine(engine)["edge"][-1].outputs[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


def test_llm_generate_rejects_mismatched_params(make_llm):
    llm = make_llm()
    with pytest.raises(ValueError, match="2 sampling params for 3 prompts"):
        llm.generate([[1], [2], [3]], [SamplingParams(), SamplingParams()], use_tqdm=False)
