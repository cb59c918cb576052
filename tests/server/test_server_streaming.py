"""Streaming completions on the wire: SSE framing, deltas, usage chunk, n and multiple prompts."""

from __future__ import annotations

import json

from server_helpers import MODEL, error_of


def sse_events(http, body: dict) -> list[str]:
    """The raw `data:` payloads of one streamed request, checking the SSE framing."""
    with http.stream("POST", "/v1/completions", json={"model": MODEL, "stream": True, **body}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode("utf-8")
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), raw[:500]
    return [e[len("data: "):] for e in events]


def chunks_of(http, body: dict) -> list[dict]:
    events = sse_events(http, body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


def test_sse_framing_and_chunk_shape(http):
    chunks = chunks_of(http, {"prompt": "Hello", "max_tokens": 5, "ignore_eos": True})
    assert chunks
    for c in chunks:
        assert c["object"] == "text_completion" and c["model"] == MODEL
        assert "usage" in c and c["usage"] is None  # vLLM sends "usage": null on every chunk
        (choice,) = c["choices"]
        assert set(choice) >= {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_include_usage_adds_a_final_usage_chunk(http):
    body = {"prompt": ["Hello", "World wide"], "n": 2, "max_tokens": 4, "ignore_eos": True}
    plain = chunks_of(http, body)
    assert all(c["choices"] for c in plain)
    chunks = chunks_of(http, {**body, "stream_options": {"include_usage": True}})
    *content, last = chunks
    assert last["choices"] == [] and all(c["usage"] is None for c in content)
    usage = last["usage"]
    assert usage["completion_tokens"] == 4 * 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    finished = [ch["index"] for c in content for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finished) == [0, 1, 2, 3]  # each choice finishes exactly once


def test_deltas_reassemble_to_the_full_text_for_sampled_output(http):
    """Random byte-level tokens split characters; deltas must still add up exactly."""
    for seed in range(4):
        body = {"prompt": "café 😀 日本", "max_tokens": 40, "temperature": 1.5, "seed": seed,
                "ignore_eos": True}
        full = http.post("/v1/completions", json={**body, "model": MODEL}).json()
        chunks = chunks_of(http, body)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        assert text == full["choices"][0]["text"]


def test_streamed_logprobs_and_echo_match_non_streamed(http):
    body = {"prompt": "a b c", "max_tokens": 6, "temperature": 0, "logprobs": 1, "echo": True,
            "ignore_eos": True}
    full = http.post("/v1/completions", json={**body, "model": MODEL}).json()["choices"][0]
    chunks = chunks_of(http, body)
    assert chunks[0]["choices"][0]["text"].startswith("a b c")  # echo comes first
    text = "".join(c["choices"][0]["text"] for c in chunks)
    tokens, offsets, values = [], [], []
    for c in chunks:
        lp = c["choices"][0]["logprobs"]
        tokens += lp["tokens"]
        offsets += lp["text_offset"]
        values += lp["token_logprobs"]
    assert text == full["text"]
    assert tokens == full["logprobs"]["tokens"]
    assert offsets == full["logprobs"]["text_offset"]
    assert values == full["logprobs"]["token_logprobs"]


def test_errors_before_the_stream_starts_are_plain_json(http):
    resp = http.post("/v1/completions", json={"prompt": "x", "stream": True, "max_tokens": 0})
    err = error_of(resp, 400)
    assert err["param"] == "max_tokens"


def test_stream_options_require_stream(http):
    resp = http.post("/v1/completions", json={"prompt": "x", "stream_options": {"include_usage": True}})
    assert "stream" in error_of(resp, 400)["message"]


def test_continuous_usage_stats(http):
    body = {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    *content, last = chunks_of(http, body)
    assert all(c["usage"]["prompt_tokens"] == last["usage"]["prompt_tokens"] for c in content)
    completion = [c["usage"]["completion_tokens"] for c in content]
    assert completion == sorted(completion) and last["usage"]["completion_tokens"] == 4
