"""Every validation rule: status 400 (never 422 or 500), OpenAI error shape, a message and a
param that name the field. The engine never sees these requests, and stays healthy."""

from __future__ import annotations

import httpx
import pytest
from server_helpers import MODEL, error_of, make_engine, serve

from nanovllm.server.app import build_app

SMALL_KV_BLOCKS = 4  # 64 tokens of KV cache: less than one full 256-token context

# (request body overrides, expected param, a fragment the message must contain)
BAD_FIELDS = [
    ({"prompt": 123}, "prompt", "prompt must be"),
    ({"prompt": []}, "prompt", "prompt must be"),
    ({"prompt": [1.5, 2]}, "prompt", "prompt must be"),
    ({"prompt": [True, False]}, "prompt", "prompt must be"),
    ({"prompt": [[1, 2], []]}, "prompt", "must not be empty"),  # as "" and ["a", ""]
    ({"prompt": [["a"]]}, "prompt", "prompt must be"),
    ({"prompt": ["ok", 3]}, "prompt", "prompt must be"),
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": ["fine", ""]}, "prompt", "must not be empty"),
    ({"prompt": [5000]}, "prompt", "outside the vocabulary [0, 1024)"),
    ({"prompt": [-1]}, "prompt", "outside the vocabulary"),
    ({"prompt": [[1], [1024]]}, "prompt", "token id 1024"),
    ({"prompt": [10**30]}, "prompt", "outside the vocabulary"),
    ({"temperature": -0.5}, "temperature", "greater than or equal to 0"),
    ({"temperature": "hot"}, "temperature", "temperature"),
    ({"top_p": 0}, "top_p", "top_p"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"top_k": -2}, "top_k", "top_k"),
    ({"min_p": 1.5}, "min_p", "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty", "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty"),
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 100000}, "n", "less than or equal to 128"),
    ({"max_tokens": 0}, "max_tokens", "0 is allowed only with echo"),
    ({"max_tokens": -5}, "max_tokens", "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens", "valid integer"),
    ({"max_tokens": 1.5}, "max_tokens", "max_tokens"),
    ({"min_tokens": -1}, "min_tokens", "min_tokens"),
    ({"min_tokens": 9, "max_tokens": 4}, "min_tokens", "min_tokens must be at most max_tokens (4)"),
    ({"logprobs": -1}, "logprobs", "logprobs"),
    ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
    ({"seed": 2**64}, "seed", "seed"),
    ({"seed": "abc"}, "seed", "seed"),
    ({"stop": ""}, "stop", "stop strings must not be empty"),
    ({"stop": ["ok", ""]}, "stop", "must not be empty"),
    ({"stop": [1]}, "stop", "stop"),
    ({"stop_token_ids": [5000]}, "stop_token_ids", "outside the vocabulary"),
    ({"stop_token_ids": ["a"]}, "stop_token_ids", "stop_token_ids"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "keys must be token ids"),
    ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "keys must be token ids"),  # "²".isdigit()
    ({"logit_bias": {"5000": 1}}, "logit_bias", "outside the vocabulary"),
    ({"logit_bias": {"1": "x"}}, "logit_bias", "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias", "logit_bias"),
    ({"echo": "maybe"}, "echo", "echo"),
    ({"stream": "perhaps"}, "stream", "stream"),
    ({"n": 2, "best_of": 3}, "best_of", "best_of is not supported"),
    ({"suffix": "tail"}, "suffix", "suffix is not supported"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream=True"),
    ({"stream": True, "stream_options": "yes"}, "stream_options", "stream_options"),
    ({"ignore_eos": "sometimes"}, "ignore_eos", "ignore_eos"),
    ({"model": 7}, "model", "model"),
]


@pytest.mark.parametrize(("override", "param", "fragment"), BAD_FIELDS,
                         ids=[f"{next(iter(o))}={o[next(iter(o))]!r}"[:40] for o, _, _ in BAD_FIELDS])
def test_bad_field_is_a_400_naming_it(http, override, param, fragment):
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, **override}
    err = error_of(http.post("/v1/completions", json=body), 400)
    assert err["type"] == "BadRequestError"
    assert err["param"] == param
    assert param in err["message"] and fragment in err["message"]


@pytest.mark.parametrize("raw", ['{"prompt": "x",', "NaN", "{'prompt': 'x'}", '{"prompt": "x"}}'])
def test_malformed_json(http, raw):
    resp = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    err = error_of(resp, 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("raw", ["[1, 2]", '"just a string"', "42", "null"])
def test_body_must_be_an_object(http, raw):
    resp = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert "JSON object" in error_of(resp, 400)["message"]


def test_non_finite_numbers_are_rejected(http):
    raw = '{"prompt": "x", "temperature": NaN}'
    resp = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert error_of(resp, 400)["param"] == "temperature"
    raw = '{"prompt": "x", "top_p": Infinity}'
    resp = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert error_of(resp, 400)["param"] == "top_p"


def test_missing_prompt(http):
    err = error_of(http.post("/v1/completions", json={"model": MODEL}), 400)
    assert err["param"] == "prompt" and "Missing required field `prompt`" in err["message"]


def test_a_body_not_sent_as_json_is_a_415_naming_the_header_to_send(http):
    """curl -d without -H sends application/x-www-form-urlencoded: say so, not "not JSON"."""
    body = b'{"prompt": "x", "max_tokens": 1}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        err = error_of(http.post("/v1/completions", content=body, headers=headers), 415)
        assert (content_type or "no Content-Type") in err["message"]
        assert "`Content-Type: application/json`" in err["message"]
        assert err["type"] == "UnsupportedMediaTypeError"
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        resp = http.post("/v1/completions", content=body, headers={"Content-Type": content_type})
        assert resp.status_code == 200, resp.text


def test_context_overflow_message_has_the_numbers(http):
    ids = list(range(200))
    err = error_of(http.post("/v1/completions", json={"prompt": ids, "max_tokens": 100}), 400)
    assert err["param"] == "max_tokens"
    assert "maximum context length is 256 tokens" in err["message"]
    assert "300 tokens (200 in the prompt, 100 in the completion)" in err["message"]
    assert "reduce the length of the prompt or `max_tokens` (at most 56)" in err["message"]
    err = error_of(http.post("/v1/completions", json={"prompt": [[1], ids], "max_tokens": 60}), 400)
    assert "260 tokens" in err["message"]
    body = {"prompt": ids, "max_completion_tokens": 100}  # the field sent is the one named
    err = error_of(http.post("/v1/completions", json=body), 400)
    assert err["param"] == "max_completion_tokens" and "`max_completion_tokens`" in err["message"]


def test_an_overflow_by_the_default_max_tokens_does_not_say_the_client_asked_for_it(http):
    """max_tokens was never sent: the message says the 16 is the default, and blames the prompt."""
    err = error_of(http.post("/v1/completions", json={"prompt": [1] * 250}), 400)
    assert err["param"] == "prompt"
    assert "you requested" not in err["message"]
    assert ("your prompt has 250 tokens, and the default completion length of 16 tokens "
            "(`max_tokens` was not set) would make 266") in err["message"]
    assert "or set `max_tokens` to at most 6" in err["message"]


def test_a_prompt_filling_the_context_is_blamed_whatever_max_tokens_says(http):
    for extra in ({}, {"max_tokens": 5}):
        err = error_of(http.post("/v1/completions", json={"prompt": [1] * 256, **extra}), 400)
        assert err["param"] == "prompt" and "leaves no room for a completion" in err["message"]


def test_min_tokens_beyond_the_context_is_refused_when_max_tokens_is_null(http):
    body = {"prompt": [1] * 200, "max_tokens": None, "min_tokens": 100}
    err = error_of(http.post("/v1/completions", json=body), 400)
    assert err["param"] == "min_tokens"
    assert "maximum context length is 256 tokens" in err["message"] and "300" in err["message"]


def test_prompt_filling_the_context_leaves_no_room(http):
    ids = [1] * 256
    err = error_of(http.post("/v1/completions", json={"prompt": ids, "max_tokens": None}), 400)
    assert "maximum context length is 256 tokens" in err["message"] and "256 tokens" in err["message"]
    assert err["param"] == "prompt"


def test_unknown_model_is_404(http):
    err = error_of(http.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404)
    assert err["type"] == "NotFoundError" and err["param"] == "model"
    assert err["message"] == ("The model `gpt-4` does not exist: this server serves "
                              f"`{MODEL}` (GET /v1/models).")


def test_tokenize_and_detokenize_validation(http):
    assert error_of(http.post("/tokenize", json={}), 400)["param"] == "prompt"
    assert error_of(http.post("/tokenize", json={"prompt": 5}), 400)["param"] == "prompt"
    err = error_of(http.post("/detokenize", json={"tokens": [1, 4096]}), 400)
    assert err["param"] == "tokens" and "outside the vocabulary" in err["message"]
    assert error_of(http.post("/detokenize", json={"tokens": "abc"}), 400)["param"] == "tokens"
    assert error_of(http.post("/tokenize", json={"prompt": "x", "model": "nope"}), 404)


def test_engine_is_fine_after_all_that(http, live):
    resp = http.post("/v1/completions", json={"prompt": "still alive", "max_tokens": 3})
    assert resp.status_code == 200
    assert http.get("/health").status_code == 200 and live.engine.is_alive


def test_sampling_params_value_error_becomes_a_400_naming_the_field():
    """SamplingParams validates too; its ValueError is a 400, should a value slip past pydantic."""
    from nanovllm.server.api.completions.protocol import CompletionRequest
    from nanovllm.server.errors import APIError

    req = CompletionRequest.model_construct(**{**CompletionRequest(prompt="x").model_dump(), "n": 0})
    with pytest.raises(APIError) as info:
        req.to_sampling_params()
    assert info.value.status == 400 and info.value.param == "n"
    assert "Invalid sampling parameters: n must be in [1, 128]" in info.value.message
    req = CompletionRequest.model_construct(**{**req.model_dump(), "n": 1, "top_p": 0.0})
    with pytest.raises(APIError) as info:
        req.to_sampling_params()
    assert info.value.param == "top_p"


def test_negative_seed_is_accepted_like_openai(client):
    """OpenAI's seed is any integer; the engine maps it onto numpy's unsigned seeds."""
    a, b = (client.completions.create(model=MODEL, prompt="hi", max_tokens=4, seed=-1)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


@pytest.fixture(scope="module")
def small_kv(tiny_ckpt):
    loop = make_engine(tiny_ckpt, num_kv_blocks=SMALL_KV_BLOCKS)
    srv = serve(build_app(loop, served_model_name=MODEL), loop)
    yield srv
    srv.stop()
    loop.shutdown()


def test_request_larger_than_the_whole_kv_cache_names_max_tokens(small_kv):
    """Only the engine knows its KV-cache size; its rejection still names the field to lower."""
    with httpx.Client(base_url=small_kv.url, timeout=30) as c:
        err = error_of(c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 100}), 400)
        assert "the whole KV cache has 4" in err["message"] and err["param"] == "max_tokens"
        err = error_of(c.post("/v1/completions", json={"prompt": "hi", "max_tokens": None}), 400)
        assert "the whole KV cache has 4" in err["message"] and err["param"] == "max_tokens"
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 8}).status_code == 200
