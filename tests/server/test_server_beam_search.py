"""vLLM's `use_beam_search` on /v1/completions through the real `openai` client: the beams are
LLM.beam_search's on the same checkpoint (tokens, text, finish reason, logprobs), usage is
counted as vLLM counts it, /metrics counts beams like any sequence, and every input a beam
search cannot honour or afford is a 400 naming its field."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_helpers import MODEL, error_of, make_engine, metric, serve, wait_idle

from nanovllm.server.app import build_app
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.limits import MAX_BEAM_TOKENS, MAX_BEAM_WIDTH, MAX_LENGTH_PENALTY

EOS = 1023  # the tiny checkpoint's; a prompt of EOS makes the model end beams on EOS early
TEXTS = ["The quick brown fox", "def f(x):"]


def beam_request(client, prompt, width: int, tokens: int, **extra):
    return client.completions.create(
        model=MODEL, prompt=prompt, n=width, max_tokens=tokens, logprobs=0,
        extra_body={"use_beam_search": True, "return_token_ids": True, **extra})


@pytest.mark.parametrize("prompts,width,tokens,options", [
    (TEXTS, 1, 6, {"ignore_eos": True}),
    (TEXTS, 4, 8, {}),
    ([[EOS, EOS, EOS]], 2, 6, {}),  # one beam ends on EOS at once
    ([[EOS, EOS, EOS]], 2, 6, {"length_penalty": -2.0}),  # ...and now ranks first
    ([[5, 6, 7, 8], [EOS]], 3, 5, {"temperature": 3.0}),
], ids=["greedy-width", "width4", "eos", "eos-length-penalty", "temperature"])
def test_beams_equal_llm_beam_search(client, engine, make_llm, prompts, width, tokens, options):
    resp = beam_request(client, prompts, width, tokens, **options)
    params = BeamSearchParams(width, tokens, **options)
    reference = make_llm().beam_search(
        [p if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts], params)
    assert [c.index for c in resp.choices] == list(range(len(prompts) * width))
    prompt_tokens = completion_tokens = 0
    for i, out in enumerate(reference):
        n_prompt = len(out.sequences[0].tokens) - len(out.sequences[0].logprobs)
        prompt_tokens += n_prompt
        for beam, choice in zip(out.sequences, resp.choices[i * width:(i + 1) * width],
                                strict=True):
            assert choice.model_extra["token_ids"] == beam.tokens[n_prompt:]
            assert choice.text == beam.text and choice.finish_reason == beam.finish_reason
            assert sum(choice.logprobs.token_logprobs) == pytest.approx(beam.cum_logprob,
                                                                        abs=1e-4)
            completion_tokens += len(beam.tokens) - n_prompt
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt_tokens,
                                                                        completion_tokens)
    wait_idle(engine)


def test_length_penalty_reorders_eos_ended_beams(client):
    plain = beam_request(client, [EOS, EOS, EOS], 2, 6)
    short_first = beam_request(client, [EOS, EOS, EOS], 2, 6, length_penalty=-2.0)
    assert [c.finish_reason for c in plain.choices] == ["length", "stop"]
    assert [c.finish_reason for c in short_first.choices] == ["stop", "length"]
    assert short_first.choices[0].model_extra["token_ids"] == [EOS]
    assert short_first.choices[0].text == ""  # the EOS that ended it is not text (vLLM's)


def test_beams_are_counted_like_any_sequence_in_metrics(http, engine):
    wait_idle(engine)
    before = http.get("/metrics").text
    body = {"prompt": "four beams", "n": 4, "max_tokens": 6, "use_beam_search": True,
            "ignore_eos": True}
    resp = http.post("/v1/completions", json=body).json()
    wait_idle(engine)
    after = http.get("/metrics").text

    def delta(name: str, **labels) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # The prompt's one sequence scores the first step; then the 4 beams run 5 steps.
    assert delta("vllm:generation_tokens_total") == 1 + 4 * 5
    assert delta("vllm:prompt_tokens_total") == resp["usage"]["prompt_tokens"]
    assert delta("vllm:request_success_total", finished_reason="length") == 4
    assert delta("vllm:request_generation_tokens_sum") == resp["usage"]["completion_tokens"]


BEAM = {"prompt": "x", "n": 2, "max_tokens": 4, "use_beam_search": True}


@pytest.mark.parametrize("field,value", [
    ("stream", True), ("n", MAX_BEAM_WIDTH + 1), ("max_tokens", MAX_BEAM_TOKENS + 1),
    ("max_tokens", None), ("best_of", 3), ("length_penalty", 11.0), ("temperature", -1.0),
    ("top_p", 0.5), ("top_k", 3), ("min_p", 0.1), ("presence_penalty", 1.0),
    ("frequency_penalty", 1.0), ("repetition_penalty", 1.2), ("logit_bias", {"5": 3}),
    ("allowed_token_ids", [5, 6]), ("min_tokens", 2), ("stop", "a"), ("stop_token_ids", [5]),
    ("include_stop_str_in_output", True), ("skip_special_tokens", False),
    ("truncate_prompt_tokens", 1), ("echo", True), ("prompt_logprobs", 1), ("logprobs", 1),
    ("suffix", "z"), ("guided_regex", "[ab]+"), ("guided_choice", ["a", "b"]),
    ("structured_outputs", {"regex": "a+"}), ("response_format", {"type": "json_object"}),
])
def test_what_beams_cannot_honour_is_a_400_naming_the_field(http, field, value):
    err = error_of(http.post("/v1/completions", json={**BEAM, field: value}), 400)
    assert err["param"] == field, err


def test_stream_refusal_says_why(client):
    with pytest.raises(openai.BadRequestError, match="not streamed") as caught:
        beam_request(client, "x", 2, 4, stream=True)
    assert caught.value.body["param"] == "stream"


def test_length_penalty_without_beams_is_a_400(http):
    err = error_of(http.post("/v1/completions", json={"prompt": "x", "length_penalty": 2.0}), 400)
    assert err["param"] == "length_penalty" and "use_beam_search" in err["message"]


def test_beam_search_on_chat_is_a_400_naming_it(chat_http):
    body = {"messages": [{"role": "user", "content": "x"}], "use_beam_search": True, "n": 2}
    err = error_of(chat_http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == "use_beam_search"


def test_beams_that_could_never_fit_the_kv_pool_are_refused_before_running(tiny_ckpt):
    engine = make_engine(tiny_ckpt, num_kv_blocks=20, block_size=4)
    srv = serve(build_app(engine, served_model_name=MODEL), engine)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            fits = {**BEAM, "n": 4, "max_tokens": 12}  # 4 beams x 4 blocks of their own
            assert http.post("/v1/completions", json=fits).status_code == 200
            steps = engine.engine.num_steps
            err = error_of(http.post("/v1/completions", json={**fits, "max_tokens": 40}), 400)
            assert err["param"] == "max_tokens" and "KV" in err["message"]
            assert engine.engine.num_steps == steps  # it never reached the engine
        wait_idle(engine)
    finally:
        srv.stop()
        engine.shutdown()


def test_openapi_document_shows_the_beam_limits(http):
    props = http.get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"][
        "properties"]
    assert props["use_beam_search"]["x-max-beam-width"] == MAX_BEAM_WIDTH
    assert props["use_beam_search"]["x-max-beam-tokens"] == MAX_BEAM_TOKENS
    assert str(MAX_BEAM_WIDTH) in props["use_beam_search"]["description"]
    assert props["length_penalty"]["anyOf"][0]["maximum"] == MAX_LENGTH_PENALTY
