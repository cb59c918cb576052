"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API) through the real
`anthropic` client against the real server: the same answer as the chat path it fronts, stop
sequences, the event sequence read as a strict client reads it, token counts, the API key in
either header, and errors in Anthropic's shape (a full queue its 529 overloaded_error)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Literal

import anthropic
import httpx
import pytest
from front_end_streams import messages_stream, sse_events
from pydantic import BaseModel
from server_helpers import API_KEY, MODEL, NUM_KV_BLOCKS, REPO, serve, wait_idle

from nanovllm import EngineConfig, LLMEngine
from nanovllm.async_engine import AsyncEngine
from nanovllm.inspection import Inspector
from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template

SYSTEM, USER = "You are terse.", "Name a colour."
MESSAGES = [{"role": "user", "content": USER}]
# This SDK has no temperature argument any more (Claude's newest models take none); older SDKs
# and other clients send it, and the server honours it.
GREEDY = {"temperature": 0}
TEMPLATE = load_chat_template(str(REPO / "examples" / "chat_template_gpt2.jinja"))


@pytest.fixture(scope="module")
def live_messages(engine) -> Iterator[str]:
    """The chat template and an API key."""
    srv = serve(build_app(engine, served_model_name=MODEL, chat_template=TEMPLATE,
                          api_key=API_KEY), engine)
    yield srv.url
    srv.stop()


@pytest.fixture
def claude(live_messages) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live_messages, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture
def http(live_messages) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_messages, timeout=60, headers={"x-api-key": API_KEY}) as c:
        yield c


def chat_answer(http: httpx.Client, messages: list[dict], max_tokens: int, **extra) -> dict:
    return http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "max_completion_tokens": max_tokens,
        "temperature": 0, **extra}).json()


def anthropic_error(response: httpx.Response, status: int) -> dict:
    """Assert Anthropic's error shape and status; returns the inner error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    return body["error"]


def test_a_message_is_the_chat_paths_answer(claude, http):
    chat = chat_answer(http, [{"role": "system", "content": SYSTEM}, *MESSAGES], 8)
    msg = claude.messages.create(model=MODEL, max_tokens=8, system=SYSTEM, messages=MESSAGES,
                                 extra_body=GREEDY)
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == chat["choices"][0]["message"]["content"]
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == \
        chat["usage"]["prompt_tokens"]
    assert msg.usage.output_tokens == 8 and msg.model == MODEL


def test_content_blocks_and_system_blocks_are_chat_messages(claude, http):
    chat = chat_answer(http, [{"role": "system", "content": f"{SYSTEM}\nBe kind."},
                              {"role": "user", "content": "Hi."},
                              {"role": "assistant", "content": "Hello."},
                              {"role": "user", "content": "Name a\ncolour."}], 6)
    msg = claude.messages.create(
        model=MODEL, max_tokens=6, extra_body=GREEDY,
        system=[{"type": "text", "text": SYSTEM}, {"type": "text", "text": "Be kind.",
                                                   "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi."},
                  {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Name a"},
                                               {"type": "text", "text": "colour."}]}])
    assert msg.content[0].text == chat["choices"][0]["message"]["content"]
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == \
        chat["usage"]["prompt_tokens"]


def test_stop_sequences(claude):
    kw = dict(model=MODEL, messages=MESSAGES, extra_body=GREEDY)
    free = claude.messages.create(max_tokens=12, **kw).content[0].text
    stop = free[3:5]
    msg = claude.messages.create(max_tokens=12, stop_sequences=[stop], **kw)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert msg.content[0].text == free[:free.index(stop)]


def test_output_config_format_is_a_structured_output(claude):
    class Colour(BaseModel):
        colour: Literal["red", "green", "blue"]
        bright: bool

    msg = claude.messages.parse(model=MODEL, max_tokens=60, messages=MESSAGES,
                                output_format=Colour)
    assert msg.stop_reason == "end_turn" and isinstance(msg.parsed_output, Colour)


def test_count_tokens_is_the_prompt_a_message_runs(claude):
    count = claude.messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES)
    msg = claude.messages.create(model=MODEL, max_tokens=1, system=SYSTEM, messages=MESSAGES)
    assert count.input_tokens == msg.usage.input_tokens + msg.usage.cache_read_input_tokens > 0


def test_the_stream_is_anthropics_event_sequence(live_messages, claude, http):
    """Event by event, as a strict client reads them: each valid as the SDK's event model,
    blocks started, filled and stopped in order, and the message they build the same as the
    unstreamed one; then the SDK's own stream helper builds the same message."""
    body = {"model": MODEL, "max_tokens": 8, "system": SYSTEM, "messages": MESSAGES,
            "temperature": 0}
    whole = http.post("/v1/messages", json=body).json()
    with http.stream("POST", "/v1/messages", json={**body, "stream": True},
                     headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert [n for n, _ in events][:2] == ["message_start", "ping"]
    streamed = messages_stream(events)
    assert {**streamed, "id": whole["id"]} == whole
    with claude.messages.stream(**{k: v for k, v in body.items() if k != "temperature"},
                                extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole["content"][0]["text"] == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8


def test_either_header_carries_the_key_and_a_wrong_key_is_a_401(live_messages):
    ok = anthropic.Anthropic(base_url=live_messages, auth_token=API_KEY, api_key=None,
                             max_retries=0)  # Authorization: Bearer
    assert ok.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES).usage.output_tokens
    wrong = anthropic.Anthropic(base_url=live_messages, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model=MODEL, max_tokens=1, messages=MESSAGES)
    assert info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL, messages=MESSAGES)
    # The OpenAI routes take the x-api-key header too, and answer in their own shape.
    r = httpx.get(f"{live_messages}/v1/models", headers={"x-api-key": API_KEY})
    assert r.status_code == 200
    assert set(httpx.get(f"{live_messages}/v1/models").json()) == {"error"}


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"messages": MESSAGES}, 400, "invalid_request_error"),  # max_tokens is required
    ({"max_tokens": 4}, 400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": MESSAGES, "model": "claude-x"}, 404, "not_found_error"),
    ({"max_tokens": 4, "messages": MESSAGES, "container": "c"}, 400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": "x"}}]}]},
     400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}, 400,
     "invalid_request_error"),
    ({"max_tokens": 4, "messages": MESSAGES, "temperature": 1.5}, 400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": MESSAGES, "thinking": {"type": "enabled",
                                                          "budget_tokens": 1024}},
     400, "invalid_request_error"),
    ({"max_tokens": 4, "messages": MESSAGES, "tools": [{"type": "web_search_20250305",
                                                        "name": "web_search"}]},
     400, "invalid_request_error"),
    ({"max_tokens": 100_000, "messages": MESSAGES}, 400, "invalid_request_error"),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else str(v))
def test_errors_have_anthropics_shape(http, body, status, kind):
    err = anthropic_error(http.post("/v1/messages", json={"model": MODEL, **body}), status)
    assert err["type"] == kind, err


def test_routing_errors_under_messages_have_anthropics_shape(http):
    assert anthropic_error(http.post("/v1/messages/nope", json={}), 404)["type"] == \
        "not_found_error"
    assert anthropic_error(http.get("/v1/messages"), 405)["type"] == "invalid_request_error"
    body = "x" * (3 * 1024 * 1024)
    assert anthropic_error(http.post("/v1/messages", content=body), 413)["type"] == \
        "request_too_large"


def test_the_sdks_errors(claude):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[])
    assert info.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-opus-4", max_tokens=4, messages=MESSAGES)


@pytest.fixture(scope="module")
def paused_queue(tiny_ckpt) -> Iterator[tuple[str, AsyncEngine]]:
    """An engine whose queue holds one sequence (a test pauses it, as step mode does)."""
    config = EngineConfig(str(tiny_ckpt), num_kv_blocks=NUM_KV_BLOCKS, max_waiting_seqs=1)
    engine = AsyncEngine(LLMEngine(config)).start()
    srv = serve(build_app(engine, served_model_name=MODEL, chat_template=TEMPLATE), engine)
    yield srv.url, engine
    srv.stop()
    engine.shutdown()


def test_a_full_queue_is_a_529_overloaded_error(paused_queue):
    """The engine paused, one waiting request fills the queue: a message is refused at once
    with Anthropic's overloaded_error, and the SDK sees status 529."""
    url, engine = paused_queue
    stepper = Inspector(engine, enable_step_mode=True)
    stepper.pause(60).result(30)
    waiting = threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",), kwargs={
        "json": {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, "timeout": 120})
    try:
        waiting.start()
        for _ in range(3000):
            if engine.stats.num_waiting == 1:
                break
            threading.Event().wait(0.01)
        assert engine.stats.num_waiting == 1
        r = httpx.post(f"{url}/v1/messages", json={"model": MODEL, "max_tokens": 4,
                                                   "messages": MESSAGES})
        assert anthropic_error(r, 529)["type"] == "overloaded_error"
        assert r.headers["retry-after"] == "1"
        client = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model=MODEL, max_tokens=4, messages=MESSAGES)
        assert info.value.status_code == 529
    finally:
        stepper.resume().result(30)
        waiting.join(120)
    wait_idle(engine)


def test_requests_are_counted_per_endpoint(http):
    def count(handler: str) -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith(f'http_requests_total{{handler="{handler}",method="POST",'
                               'status="2xx"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count("/v1/messages"), count("/v1/messages/count_tokens")
    http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": MESSAGES})
    http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": MESSAGES})
    assert (count("/v1/messages"), count("/v1/messages/count_tokens")) == \
        (before[0] + 1, before[1] + 1)

