"""Bad input is refused with a ValueError that says what is wrong, and the engine goes on.

SamplingParams validates on construction: each message names the field and the bad value.
LLMEngine.processor (InputProcessor, which add_request calls) refuses requests that can never run (too
long for the context or the whole KV pool, token ids outside the vocabulary, empty prompts)
with an InvalidRequestError whose `param` names the request field; add_request also refuses
a request id in use. A refused request leaves no trace, so the engine keeps serving.
"""

from __future__ import annotations

import pytest
from engine_checks import run_engine

from nanovllm import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams

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
    ("stop", dict(stop=[""]), "``"), ("stop", dict(stop=""), "``"),
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
    with pytest.raises(InvalidRequestError) as err:  # a ValueError whose param is the field
        SamplingParams(**kwargs)
    message = str(err.value)
    assert field in message and value in message, message
    assert err.value.param == field


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
    with pytest.raises(InvalidRequestError, match=field) as err:
        SamplingParams(**kwargs)
    assert err.value.param == field


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


def test_negative_seed_is_accepted_and_reproducible(make_engine):
    """vLLM accepts any 64-bit seed; a negative one seeds like its value modulo 2**64."""
    params = SamplingParams(seed=-1, max_tokens=4, temperature=1.0)
    runs = []
    for _ in range(2):
        engine = make_engine()
        engine.add_request("a", [1, 2], params)
        final = run_engine(engine)["a"][-1]
        assert final.finished
        runs.append(final.outputs[0].token_ids)
    assert runs[0] == runs[1] and len(runs[0]) == 4


# ---- add_request / processor.check ------------------------------------------------------------
def rejects(engine, request_id, prompt, params, param, *fragments) -> None:
    """add_request refuses with InvalidRequestError about `param`, and leaves no trace."""
    before = engine.get_stats()
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request(request_id, prompt, params)
    assert err.value.param == param, (param, str(err.value))
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
    rejects(engine, "long", list(range(200)), SamplingParams(max_tokens=100), "max_tokens",
            "maximum context length is 256 tokens", "300", "200", "100")
    rejects(engine, "full", list(range(256)), SamplingParams(max_tokens=None), "prompt",
            "maximum context length is 256 tokens", "256")
    rejects(engine, "full16", list(range(256)), SamplingParams(max_tokens=16), "max_tokens",
            "272 tokens (256 in the prompt, 16 in the completion)")
    rejects(engine, "min", list(range(200)), SamplingParams(max_tokens=None, min_tokens=100),
            "min_tokens", "maximum context length is 256 tokens", "300")
    rejects(engine, "pool", list(range(100)), SamplingParams(max_tokens=40), "max_tokens",
            "KV", "140", "30")
    rejects(engine, "pool2", [1], SamplingParams(max_tokens=None), "max_tokens", "KV")
    rejects(engine, "vocab", [1, 1024, 2], ok, "prompt", "1024")
    rejects(engine, "negative", [1, -1], ok, "prompt", "-1")
    rejects(engine, "float", [1, 2.0], ok, "prompt", "2.0")
    rejects(engine, "empty", [], ok, "prompt", "empty")
    rejects(engine, "empty-text", "", ok, "prompt", "empty")
    rejects(engine, "empty-dict", {"prompt_token_ids": []}, ok, "prompt", "empty")
    rejects(engine, "bad-dict", {"text": "hi"}, ok, "prompt", "'prompt'")
    rejects(engine, "bias", [5, 6], SamplingParams(logit_bias={5000: 1.0}), "logit_bias", "5000")
    rejects(engine, "stopid", [5, 6], SamplingParams(stop_token_ids=[1024]), "stop_token_ids",
            "1024")
    with pytest.raises(ValueError, match="busy"):  # the caller's bookkeeping, not the request's
        engine.add_request("busy", [5, 6], ok)
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


def test_a_refused_llm_generate_is_still_a_value_error(make_llm):
    with pytest.raises(ValueError, match=r"prompt contains token id 5000 outside the vocabulary"):
        make_llm().generate([[1, 5000]], use_tqdm=False)


RULES = [  # (prompt, SamplingParams kwargs, the field the rejection names)
    (list(range(256)), dict(max_tokens=None), "prompt"),  # the prompt fills the context
    (list(range(200)), dict(max_tokens=100), "max_tokens"),  # prompt + completion overflow
    ([1], dict(max_tokens=None), "max_tokens"),  # more than the whole KV pool
    ([1, 1024], dict(), "prompt"),  # outside the vocabulary
    ([1, True], dict(), "prompt"),  # not an integer
    ({"prompt": ""}, dict(), "prompt"),  # empty
    ({"prompt_ids": [1]}, dict(), "prompt"),  # not one of the prompt forms
    ([1], dict(logit_bias={1024: 1.0}), "logit_bias"),
    ([1], dict(stop_token_ids=[4096]), "stop_token_ids"),
]


@pytest.fixture(scope="module")
def small_pool_engine(tiny_ckpt) -> LLMEngine:
    return LLMEngine(EngineConfig(str(tiny_ckpt), block_size=4, num_kv_blocks=30))


@pytest.mark.parametrize("prompt, kwargs, param", RULES, ids=[f"{p}-{i}" for i, (_, _, p)
                                                               in enumerate(RULES)])
def test_check_request_names_the_field_and_changes_nothing(small_pool_engine, prompt, kwargs,
                                                            param):
    before = small_pool_engine.get_stats()
    with pytest.raises(InvalidRequestError) as err:
        small_pool_engine.processor.check(prompt, SamplingParams(**kwargs))
    assert err.value.param == param, str(err.value)
    assert small_pool_engine.get_stats() == before and not small_pool_engine.requests


def test_check_request_takes_every_prompt_form(small_pool_engine):
    ids = small_pool_engine.tokenizer.encode("Hello world")
    params = SamplingParams(max_tokens=8)
    for prompt in ("Hello world", ids, {"prompt": "Hello world"}, {"prompt_token_ids": ids}):
        assert small_pool_engine.processor.check(prompt, params) == ids, prompt
    assert not small_pool_engine.requests
