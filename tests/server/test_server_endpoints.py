"""Models, health, version, tokenize/detokenize, metrics, chat, auth, and error shapes of routes."""

from __future__ import annotations

import logging
import threading

import httpx
from server_helpers import API_KEY, MODEL, error_of, metric

import nanovllm
from nanovllm.server import serving


def test_models(client, live, tiny_ckpt):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model" and card.owned_by == "nanovllm"
    extra = card.model_extra
    assert extra["root"] == str(tiny_ckpt) and extra["max_model_len"] == 256
    assert extra["vocab_size"] == 1024  # the ids a prompt may hold (nanovllm bench serve's)
    (perm,) = extra["permission"]
    assert perm["object"] == "model_permission" and perm["allow_sampling"] is True


def test_health_and_version(http):
    resp = http.get("/health")
    assert resp.status_code == 200 and resp.content == b""
    assert http.get("/version").json()["version"] == nanovllm.__version__


def test_tokenize_detokenize_roundtrip(http):
    resp = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello world",
                                        "add_special_tokens": True}).json()
    assert resp["count"] == len(resp["tokens"]) > 0 and resp["max_model_len"] == 256
    assert resp["token_strs"] is None
    strs = http.post("/tokenize", json={"prompt": "Hello", "return_token_strs": True}).json()
    assert "".join(strs["token_strs"]) == "Hello"
    back = http.post("/detokenize", json={"model": MODEL, "tokens": resp["tokens"]}).json()
    assert back == {"prompt": "Hello world"}


def test_metrics_count_requests_and_tokens(http):
    before = http.get("/metrics").text
    resp = http.post("/v1/completions", json={"prompt": "count me", "max_tokens": 5, "n": 2,
                                              "ignore_eos": True})
    usage = resp.json()["usage"]
    after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(name, **labels):
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("vllm:generation_tokens_total") == usage["completion_tokens"]
    assert delta("vllm:request_success_total", finished_reason="length") == 2
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:inter_token_latency_seconds_count") >= 1
    assert delta("vllm:prefix_cache_queries_total") > 0
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
                 "vllm:prefix_cache_hits_total"):
        assert f'{name}{{model_name="{MODEL}"}}' in text, name


def test_chat_completions_is_a_clear_400(http, client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    err = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert "no chat template" in err["message"] and "--chat-template" in err["message"]
    assert "/v1/completions" in err["message"] and err["param"] == "messages"
    err = error_of(http.post("/v1/chat/completions", json={"model": "nope", "messages": body["messages"]}), 404)
    assert err["param"] == "model"
    assert error_of(http.post("/v1/chat/completions", json={"model": MODEL}), 400)["param"] == "messages"


def test_unknown_route_and_wrong_method_have_the_openai_shape(http):
    err = error_of(http.get("/v1/nothing-here"), 404)
    assert err["type"] == "NotFoundError" and "/v1/nothing-here" in err["message"]
    err = error_of(http.get("/v1/completions"), 405)
    assert "GET" in err["message"]


def test_documented_extra_fields_are_accepted_and_logged(http, caplog):
    """Unknown fields are 400s (test_server_field_audit); the documented ones that change
    nothing here pass, and the log says they were ignored."""
    with caplog.at_level(logging.WARNING, logger="nanovllm.server.api.completions.routes"):
        resp = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                  "service_tier": "auto"})
    assert resp.status_code == 200
    assert any("service_tier" in r.getMessage() for r in caplog.records)
    assert http.post("/v1/completions", json={"prompt": "x", "fancy_new_option": 3}
                     ).status_code == 400


def test_openapi_document_is_served(http):
    doc = http.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/health",
            "/metrics", "/version", "/v1/chat/completions"} <= set(doc["paths"])
    flag = doc["components"]["schemas"]["TokenizeRequest"]["properties"]["add_special_tokens"]
    assert "special tokens the tokenizer adds" in flag["description"]


def test_api_key_protects_v1_only(live_auth):
    with httpx.Client(base_url=live_auth.url, timeout=30) as c:
        err = error_of(c.get("/v1/models"), 401)
        assert err["type"] == "AuthenticationError"
        assert error_of(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert error_of(c.get("/v1/models", headers={"Authorization": API_KEY}), 401)
        assert error_of(c.post("/v1/completions", json={"prompt": "x"}), 401)
        ok = c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
        for path in ("/health", "/version", "/metrics"):
            assert c.get(path).status_code == 200, path
        assert c.post("/tokenize", json={"prompt": "x"}).status_code == 200


def test_repeated_prompt_hits_the_prefix_cache(http):
    before = http.get("/metrics").text
    body = {"prompt": "the cat sat on the mat and then " * 4, "max_tokens": 2}
    for _ in range(2):
        assert http.post("/v1/completions", json=body).status_code == 200
    after = http.get("/metrics").text
    hits = metric(after, "vllm:prefix_cache_hits_total") - metric(before, "vllm:prefix_cache_hits_total")
    assert hits >= 16  # at least one full 16-token block was reused


def test_big_prompts_are_tokenized_off_the_event_loop(http):
    resp = http.post("/v1/completions", json={"prompt": "word " * 30_000, "max_tokens": 1})
    assert "maximum context length is 256 tokens" in error_of(resp, 400)["message"]


class ThreadRecordingTokenizer:
    """Wraps the real tokenizer and records which thread each encode() ran on."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.threads: list[threading.Thread] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.threads.append(threading.current_thread())
        return self._tokenizer.encode(text, add_special_tokens)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


def test_tokenize_moves_big_prompts_off_the_event_loop(http, live, monkeypatch):
    recorder = ThreadRecordingTokenizer(live.engine.tokenizer)
    monkeypatch.setattr(live.engine, "tokenizer", recorder)  # what the routes tokenize with
    # The tiny model's short context refuses texts as long as the real threshold before they
    # are tokenized, so the threshold comes down for this test.
    monkeypatch.setattr(serving, "BIG_PROMPT_CHARS", 1_000)
    small = http.post("/tokenize", json={"prompt": "word " * 10}).json()
    big = http.post("/tokenize", json={"prompt": "word " * 300}).json()  # under the char bound
    assert big["count"] > small["count"] > 0
    on_loop, off_loop = recorder.threads
    assert on_loop is live.thread  # uvicorn runs the event loop in this thread
    assert off_loop is not live.thread
