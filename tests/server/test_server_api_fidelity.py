"""vLLM/OpenAI request fields that real clients send: echo without generating, prompt_logprobs,
return_tokens_as_token_ids, max_completion_tokens, cached-token usage, /detokenize with special
tokens, /tokenizer_info and X-Request-Id; fields we cannot honour are 400s naming them."""

from __future__ import annotations

import json

import pytest
from server_helpers import MODEL, error_of
from test_server_streaming import chunks_of


def test_echo_with_max_tokens_0_scores_the_prompt_without_generating(client):
    prompt = "The quick brown fox jumps over the lazy dog"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True,
                                     logprobs=1, temperature=0)
    choice = resp.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert "".join(lp.tokens) == prompt and lp.token_logprobs[0] is None
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert resp.usage.completion_tokens == 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens == len(lp.tokens)
    # The same numbers as the prompt part of an ordinary echo request (lm-eval's max_tokens=1).
    one = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, echo=True,
                                    logprobs=1, temperature=0).choices[0].logprobs
    assert one.token_logprobs[:len(lp.tokens)] == lp.token_logprobs
    assert one.tokens[:len(lp.tokens)] == lp.tokens


def test_lm_eval_shaped_scoring_request(http):
    """lm-eval's local-completions loglikelihood: a batch of token-id prompts, echo, logprobs."""
    ids = http.post("/tokenize", json={"prompt": "Paris is the capital of France"}).json()["tokens"]
    body = {"model": MODEL, "prompt": [ids, ids[:3]], "max_tokens": 0, "echo": True,
            "logprobs": 1, "temperature": 0, "seed": 1234}
    resp = http.post("/v1/completions", json=body).json()
    assert [len(c["logprobs"]["token_logprobs"]) for c in resp["choices"]] == [len(ids), 3]
    assert resp["usage"]["completion_tokens"] == 0


def test_streamed_echo_with_max_tokens_0_matches_non_streamed(http):
    body = {"prompt": "a b c d", "max_tokens": 0, "echo": True, "logprobs": 2}
    whole = http.post("/v1/completions", json={"model": MODEL, **body}).json()["choices"][0]
    chunks = chunks_of(http, {**body, "stream_options": {"include_usage": True}})
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["text"] for c in choices) == whole["text"] == "a b c d"
    assert sum((c["logprobs"]["token_logprobs"] for c in choices), []) == \
        whole["logprobs"]["token_logprobs"]
    assert choices[-1]["finish_reason"] == whole["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == 0


def test_max_tokens_0_without_echo_is_a_400(http):
    err = error_of(http.post("/v1/completions", json={"prompt": "x", "max_tokens": 0}), 400)
    assert err["param"] == "max_tokens" and "echo" in err["message"]


def test_prompt_logprobs_are_filled_in(client, http):
    prompt = "one two three four"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0,
                                     extra_body={"prompt_logprobs": 2}, echo=True, logprobs=0)
    raw = resp.choices[0].model_extra["prompt_logprobs"]
    ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert len(raw) == len(ids) and raw[0] is None
    echoed = resp.choices[0].logprobs.token_logprobs
    for pos, step in enumerate(raw[1:], start=1):
        assert str(ids[pos]) in step and len(step) in (2, 3)  # the prompt token + the top 2
        assert step[str(ids[pos])]["logprob"] == pytest.approx(echoed[pos], abs=0)
        assert {1, 2} <= {p["rank"] for p in step.values()}
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert plain.choices[0].model_extra["prompt_logprobs"] is None
    err = error_of(http.post("/v1/completions", json={"prompt": "x", "prompt_logprobs": 1,
                                                      "stream": True}), 400)
    assert err["param"] == "prompt_logprobs"


def test_return_tokens_as_token_ids(client, http):
    prompt = "token ids please"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, echo=True,
                                     logprobs=1, temperature=0,
                                     extra_body={"return_tokens_as_token_ids": True})
    lp = resp.choices[0].logprobs
    ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert lp.tokens[:len(ids)] == [f"token_id:{t}" for t in ids]
    assert all(t.startswith("token_id:") for t in lp.tokens)
    assert all(k.startswith("token_id:") for top in lp.top_logprobs[1:] for k in top)
    assert lp.text_offset[1] == len(lp.tokens[0])


def test_max_completion_tokens_is_honoured(client):
    resp = client.completions.create(model=MODEL, prompt="count", max_tokens=9,
                                     extra_body={"max_completion_tokens": 3, "ignore_eos": True})
    assert resp.usage.completion_tokens == 3


def test_cached_tokens_are_reported(client):
    prompt = "A prompt that nobody else in these tests sends, long enough to fill blocks. " * 3
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens


@pytest.mark.parametrize("field,value", [
    ("bad_words", ["x"]), ("guided_whitespace_pattern", " *"), ("logits_processors", ["f"]),
])
def test_fields_that_change_the_output_and_are_not_supported_are_400s(http, field, value):
    err = error_of(http.post("/v1/completions", json={"prompt": "x", field: value}), 400)
    assert err["param"] == field and field in err["message"]


def test_falsy_unsupported_fields_ask_for_nothing(http):
    body = {"prompt": "x", "max_tokens": 1, "use_beam_search": False, "response_format": None}
    assert http.post("/v1/completions", json=body).status_code == 200


def test_detokenize_keeps_special_tokens(http, engine):
    tok = engine.tokenizer
    hello, world = tok.encode("Hello"), tok.encode(" world")
    eos = tok.eos_token_id
    text = http.post("/detokenize", json={"tokens": hello + [eos] + world}).json()["prompt"]
    assert text == "Hello<|endoftext|> world"


def test_x_request_id_is_echoed_or_generated(http):
    mine = http.get("/version", headers={"X-Request-Id": "trace-42.a:b"})
    assert mine.headers["x-request-id"] == "trace-42.a:b"
    fresh = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert len(fresh.headers["x-request-id"]) == 32
    for hostile in ("has space", "x" * 500, "new\tline"):
        got = http.get("/version", headers={"X-Request-Id": hostile}).headers["x-request-id"]
        assert got != hostile and len(got) == 32
    err = http.post("/v1/completions", json={"prompt": "x", "n": 0},
                    headers={"X-Request-Id": "err-1"})
    assert err.status_code == 400 and err.headers["x-request-id"] == "err-1"


def test_tokenizer_info_is_off_by_default(http):
    assert error_of(http.get("/tokenizer_info"), 404)


def test_tokenizer_info_when_enabled(chat_http):
    info = chat_http.get("/tokenizer_info").json()
    assert info["tokenizer_class"] == "GPT2TokenizerFast"
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 256
    assert "{%- for message in messages" in info["chat_template"]
    assert not {"vocab_file", "merges_file"} & set(info)
    json.dumps(info)
