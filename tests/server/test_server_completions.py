"""/v1/completions through the real `openai` client against the live server."""

from __future__ import annotations

import openai
import pytest
from server_helpers import MODEL, wait_idle

LONG = {"ignore_eos": True}  # random weights may sample EOS; tests that count tokens avoid it


def greedy(client, prompt="The quick brown fox", max_tokens=12, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                     temperature=0, extra_body={**LONG, **kw.pop("extra", {})}, **kw)


def test_basic_completion_shape(client, http):
    resp = greedy(client, max_tokens=8)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.model == MODEL
    (choice,) = resp.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    assert isinstance(choice.text, str)
    n_prompt = http.post("/tokenize", json={"prompt": "The quick brown fox"}).json()["count"]
    assert resp.usage.prompt_tokens == n_prompt
    assert resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == n_prompt + 8


def test_greedy_is_deterministic(client):
    assert greedy(client).choices[0].text == greedy(client).choices[0].text


def test_streaming_text_equals_non_streaming(client):
    full = greedy(client, max_tokens=20).choices[0].text
    chunks = list(greedy(client, max_tokens=20, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert {c.id for c in chunks} == {chunks[0].id}
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_seeded_sampling_same_streamed_and_not(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=30, temperature=1.0, seed=1234,
              extra_body=LONG)
    full = client.completions.create(**kw).choices[0].text
    again = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    assert full == again == streamed
    other = client.completions.create(**{**kw, "seed": 4321}).choices[0].text
    assert other != full


def test_n_choices(client):
    resp = client.completions.create(model=MODEL, prompt="Hello", n=3, max_tokens=6, seed=7,
                                     temperature=1.0, extra_body=LONG)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 18
    assert len({c.text for c in resp.choices}) > 1  # independent samples


def test_list_of_prompts_indexes_choices_by_prompt_then_n(client, http):
    prompts = ["alpha beta", "gamma"]
    resp = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4, echo=True,
                                     extra_body=LONG)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    for c in resp.choices:
        assert c.text.startswith(prompts[c.index // 2])
    n_prompt = sum(http.post("/tokenize", json={"prompt": p}).json()["count"] for p in prompts)
    assert resp.usage.prompt_tokens == n_prompt  # each prompt counted once, not once per choice
    assert resp.usage.completion_tokens == 4 * 4


def test_token_id_prompts(client, http):
    ids = http.post("/tokenize", json={"prompt": "hello world"}).json()["tokens"]
    by_text = greedy(client, prompt="hello world").choices[0].text
    by_ids = greedy(client, prompt=ids).choices[0].text
    assert by_ids == by_text
    resp = greedy(client, prompt=[ids, ids[:1]], echo=True, max_tokens=2)
    assert resp.choices[0].text.startswith("hello world")
    assert resp.usage.prompt_tokens == len(ids) + 1


def test_logprobs_with_echo(client, http):
    prompt = "a b c d"
    n_prompt = http.post("/tokenize", json={"prompt": prompt}).json()["count"]
    resp = greedy(client, prompt=prompt, max_tokens=5, logprobs=2, echo=True)
    choice = resp.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n_prompt + 5
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs[1:])  # sampled + top-2
    assert "".join(lp.tokens[:n_prompt]) == prompt
    assert lp.text_offset[0] == 0
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for tok, val, top in zip(lp.tokens[n_prompt:], lp.token_logprobs[n_prompt:],
                             lp.top_logprobs[n_prompt:], strict=True):
        assert top[tok] == val and val == pytest.approx(max(top.values()))  # greedy: the argmax


def test_logprobs_without_echo_cover_only_generated_tokens(client):
    resp = greedy(client, max_tokens=4, logprobs=0)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(len(t) == 1 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def seeded(client, max_tokens=24, **kw):
    return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=max_tokens,
                                     temperature=1.0, seed=11,
                                     extra_body={**LONG, **kw.pop("extra", {})}, **kw)


def pick_stop(text: str) -> str:
    """A 3-character stop string from the middle of `text` (clean, visible characters)."""
    return next(text[i:i + 3] for i in range(len(text) // 3, len(text) - 3)
                if "\ufffd" not in text[i:i + 3] and text[i:i + 3].strip())


def test_stop_string(client):
    base = seeded(client).choices[0].text
    stop = pick_stop(base)
    cut = base[:base.index(stop)]
    resp = seeded(client, stop=[stop, "never-in-output-zzz"])
    assert resp.choices[0].text == cut
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["stop_reason"] == stop
    kept = seeded(client, stop=stop, extra={"include_stop_str_in_output": True})
    assert kept.choices[0].text == cut + stop
    streamed = "".join(c.choices[0].text for c in seeded(client, stop=stop, stream=True))
    assert streamed == cut  # no part of the stop string was ever streamed


def test_logit_bias_and_stop_token_ids(client, http):
    forced = greedy(client, max_tokens=3, logit_bias={"500": 100})
    token = http.post("/detokenize", json={"tokens": [500]}).json()["prompt"]
    assert forced.choices[0].text == token * 3
    stopped = greedy(client, max_tokens=3, logit_bias={"500": 100}, extra={"stop_token_ids": [500]})
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == 500
    assert choice.text == "" and stopped.usage.completion_tokens == 1


def test_vllm_extras_in_extra_body(client):
    reference = greedy(client, max_tokens=10).choices[0].text
    for extra in ({"top_k": 1}, {"min_p": 1.0}, {"top_k": 1, "repetition_penalty": 1.0}):
        resp = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=10,
                                         temperature=1.0, seed=3, extra_body={**LONG, **extra})
        assert resp.choices[0].text == reference, extra
    resp = client.completions.create(
        model=MODEL, prompt="x", max_tokens=6, presence_penalty=1.5, frequency_penalty=-1.0,
        top_p=0.9, user="tester", best_of=1,
        extra_body={"min_tokens": 6, "skip_special_tokens": False, "repetition_penalty": 1.3,
                    "metadata": {"a": "1"}})  # documented: changes nothing here
    assert resp.usage.completion_tokens == 6  # min_tokens == max_tokens: EOS suppressed


def test_max_tokens_null_means_up_to_the_context_limit(http, live):
    n_prompt = http.post("/tokenize", json={"prompt": "Hi there"}).json()["count"]
    body = {"prompt": "Hi there", "max_tokens": None, "ignore_eos": True, "temperature": 0}
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == live.engine.max_model_len - n_prompt
    assert resp.json()["choices"][0]["finish_reason"] == "length"


def test_model_may_be_omitted(http):
    resp = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert resp.status_code == 200 and resp.json()["model"] == MODEL


def test_openai_error_classes(client, live_auth):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", temperature=-1)
    assert bad.value.status_code == 400 and "temperature" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="x")
    assert "no-such-model" in missing.value.message
    assert missing.value.body["type"] == "NotFoundError"
    anon = openai.OpenAI(base_url=f"{live_auth.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anon.completions.create(model=MODEL, prompt="x")
    ok = openai.OpenAI(base_url=f"{live_auth.url}/v1", api_key="sk-test-key", max_retries=0)
    assert ok.completions.create(model=MODEL, prompt="x", max_tokens=1).choices


def test_no_requests_left_behind(client, live):
    greedy(client, n=4, max_tokens=5)
    wait_idle(live.engine)
