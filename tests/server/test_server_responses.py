"""POST /v1/responses (OpenAI's Responses API) through the real `openai` client against the real
server: the same answer as the chat path it fronts, its event sequence read as a strict client
reads it, structured output through text.format, stored responses (previous_response_id, GET,
DELETE, eviction) and what it refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import httpx
import openai
import pytest
from front_end_streams import responses_stream, sse_events
from pydantic import BaseModel, Field
from server_helpers import MODEL, REPO, error_of, serve, wait_idle

from nanovllm.server.api.responses.store import ResponseStore
from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template
from nanovllm.values.limits import ServerLimits

SYSTEM, USER = "You are terse.", "Name a colour."
GREEDY = dict(model=MODEL, temperature=0)
GPT2_CHAT_TEMPLATE = REPO / "examples" / "chat_template_gpt2.jinja"


def chat_text(chat_client, messages, max_tokens: int):
    resp = chat_client.chat.completions.create(messages=messages, max_completion_tokens=max_tokens,
                                               **GREEDY)
    return resp.choices[0].message.content, resp.usage


def test_a_response_is_the_chat_paths_answer(chat_client):
    text, usage = chat_text(chat_client, [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": USER}], 8)
    resp = chat_client.responses.create(instructions=SYSTEM, input=USER, max_output_tokens=8,
                                        **GREEDY)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.output_text == text and len(resp.output) == 1
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert [c.type for c in message.content] == ["output_text"]
    assert resp.usage.input_tokens == usage.prompt_tokens
    assert resp.usage.output_tokens == usage.completion_tokens == 8
    assert resp.usage.total_tokens == usage.total_tokens
    # max_output_tokens ended it: OpenAI's incomplete status and reason.
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.model == MODEL and resp.instructions == SYSTEM and resp.max_output_tokens == 8


def test_input_items_are_the_chat_messages(chat_client):
    """Message items with input_text parts, a developer message (a system message to chat
    templates) and an assistant's output_text: the same prompt as chat's messages."""
    items = [{"type": "message", "role": "developer", "content": SYSTEM},
             {"role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
             {"role": "user", "content": [{"type": "input_text", "text": "Name a"},
                                          {"type": "input_text", "text": "colour."}]}]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Name a\ncolour."}]
    text, usage = chat_text(chat_client, messages, 6)
    resp = chat_client.responses.create(input=items, max_output_tokens=6, **GREEDY)
    assert resp.output_text == text and resp.usage.input_tokens == usage.prompt_tokens


def test_the_stream_is_openais_event_sequence(live_chat, chat_http, chat_client):
    """Event by event, as a strict client reads them: numbered from 0, each valid as the SDK's
    event model, each item added, filled and done in order, and the final response (stored)
    the same as the unstreamed one."""
    body = {"model": MODEL, "input": USER, "instructions": SYSTEM, "max_output_tokens": 8,
            "temperature": 0}
    whole = chat_http.post("/v1/responses", json=body).json()
    with chat_http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    final = responses_stream(events)
    assert final["status"] == "incomplete" and events[-1][0] == "response.incomplete"
    assert final["output_text"] == whole["output_text"]
    assert final["usage"] == whole["usage"]
    assert [i["type"] for i in final["output"]] == ["message"]
    assert final["output"][0]["status"] == "incomplete"
    assert chat_client.responses.retrieve(final["id"]).output_text == whole["output_text"]
    wait_idle(live_chat.engine)


def test_text_format_json_schema_is_a_structured_output(chat_client):
    class Colour(BaseModel):
        colour: Literal["red", "green", "blue"]
        shade: int = Field(ge=0, le=9)

    resp = chat_client.responses.parse(input=USER, text_format=Colour, max_output_tokens=60,
                                       model=MODEL, temperature=1.0)
    assert resp.status == "completed" and isinstance(resp.output_parsed, Colour)
    assert resp.text.format.type == "json_schema"


def test_the_sdks_stream_helper_reads_a_completed_stream(chat_client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    with chat_client.responses.stream(input=USER, text=fmt, max_output_tokens=20,
                                      **GREEDY) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.status == "completed" and json.loads(final.output_text)["ok"] in (True, False)
    again = chat_client.responses.create(input=USER, text=fmt, max_output_tokens=20, **GREEDY)
    assert again.output_text == final.output_text


def test_previous_response_id_continues_the_conversation(chat_client):
    first = chat_client.responses.create(instructions=SYSTEM, input=USER, max_output_tokens=5,
                                         **GREEDY)
    second = chat_client.responses.create(previous_response_id=first.id, input="Another.",
                                          max_output_tokens=5, **GREEDY)
    # The previous input and output, then the new input; instructions are not carried over.
    text, usage = chat_text(chat_client, [{"role": "user", "content": USER},
                                          {"role": "assistant", "content": first.output_text},
                                          {"role": "user", "content": "Another."}], 5)
    assert second.output_text == text and second.usage.input_tokens == usage.prompt_tokens
    assert second.previous_response_id == first.id
    third = chat_client.responses.create(previous_response_id=second.id, input="More.",
                                         max_output_tokens=5, **GREEDY)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_get_and_delete_a_stored_response(chat_client):
    resp = chat_client.responses.create(input=USER, max_output_tokens=3, metadata={"k": "v"},
                                        **GREEDY)
    got = chat_client.responses.retrieve(resp.id)
    assert got.model_dump() == resp.model_dump() and got.metadata == {"k": "v"}
    chat_client.responses.delete(resp.id)
    for call in (lambda: chat_client.responses.retrieve(resp.id),
                 lambda: chat_client.responses.delete(resp.id),
                 lambda: chat_client.responses.create(previous_response_id=resp.id, input="x",
                                                      max_output_tokens=1, model=MODEL)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_an_unknown_id_is_a_404_in_openais_shape(chat_http):
    err = error_of(chat_http.get("/v1/responses/resp_nope"), 404)
    assert err["param"] == "response_id"
    err = error_of(chat_http.post("/v1/responses", json={
        "input": "x", "previous_response_id": "resp_nope"}), 404)
    assert err["param"] == "previous_response_id"


def test_store_false_keeps_nothing(chat_client):
    resp = chat_client.responses.create(input=USER, max_output_tokens=2, store=False, **GREEDY)
    assert resp.store is False
    with pytest.raises(openai.NotFoundError):
        chat_client.responses.retrieve(resp.id)


def test_the_store_evicts_the_oldest_past_either_bound():
    store = ResponseStore(max_items=2, max_bytes=10_000)
    for i in range(3):
        store.put({"id": f"r{i}", "output": []}, [])
    assert len(store) == 2 and store.get("r0") is None and store.get("r2") is not None
    big = {"id": "big", "output": [{"text": "x" * 6_000}]}
    store.put(big, [])
    store.put({"id": "big2", "output": [{"text": "x" * 6_000}]}, [])
    assert store.get("big") is None and store.get("big2") is not None
    store.put({"id": "huge", "output": [{"text": "x" * 20_000}]}, [])  # larger than the bound
    assert store.get("huge") is None and store.get("big2") is not None
    assert store.delete("big2") and not store.delete("big2")


@pytest.fixture(scope="module")
def small_store(engine) -> Iterator[str]:
    """A server whose store keeps two responses (--max-stored-responses 2)."""
    srv = serve(build_app(engine, served_model_name=MODEL,
                          chat_template=load_chat_template(str(GPT2_CHAT_TEMPLATE)),
                          limits=ServerLimits(max_stored_responses=2)), engine)
    yield srv.url
    srv.stop()


def test_the_servers_store_is_bounded_by_its_flag(small_store):
    client = openai.OpenAI(base_url=f"{small_store}/v1", api_key="none", max_retries=0)
    ids = [client.responses.create(input=USER, max_output_tokens=1, **GREEDY).id
           for _ in range(3)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])
    assert [client.responses.retrieve(i).id for i in ids[1:]] == ids[1:]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": USER, "conversation": "conv_1"}, "conversation"),
    ({"input": USER, "tools": [{"type": "custom", "name": "apply_patch"}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input"),
    ({"input": USER, "truncation": "auto"}, "truncation"),
    ({"input": USER, "background": True}, "background"),
    ({"input": USER, "include": ["message.output_text.logprobs"]}, "include"),
    ({"input": USER, "reasoning": {"effort": 5}}, "reasoning"),
    ({"input": USER, "top_logprobs": 2}, "top_logprobs"),
    ({"input": USER, "text": {"format": {"type": "grammar"}}}, "text"),
    ({"input": USER, "text": {"stop": "x"}}, "text"),
    ({"input": USER, "temperature": 2.5}, "temperature"),
    ({"input": USER, "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": USER, "max_output_tokens": 10_000}, "max_output_tokens"),
    ({"input": USER, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({}, "input"),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else v)
def test_what_it_cannot_honour_is_a_400_naming_the_field(chat_http, body, param):
    err = error_of(chat_http.post("/v1/responses", json={"model": MODEL, **body}), 400)
    assert err["param"] == param, err


def test_another_model_is_a_404(chat_client):
    with pytest.raises(openai.NotFoundError):
        chat_client.responses.create(model="gpt-5", input=USER)


def test_requests_are_counted_per_endpoint(chat_http):
    def count(handler: str, status: str) -> float:
        for line in chat_http.get("/metrics").text.splitlines():
            if line.startswith(f'http_requests_total{{handler="{handler}",method="POST",'
                               f'status="{status}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count("/v1/responses", "2xx"), count("/v1/responses", "4xx")
    chat_http.post("/v1/responses", json={"input": USER, "max_output_tokens": 1})
    chat_http.post("/v1/responses", json={"input": USER, "max_output_tokens": 0})
    assert (count("/v1/responses", "2xx"), count("/v1/responses", "4xx")) == \
        (before[0] + 1, before[1] + 1)


def test_a_client_that_leaves_a_stream_frees_its_blocks(live_chat, chat_http):
    with chat_http.stream("POST", "/v1/responses", json={
            "input": USER, "max_output_tokens": 200, "stream": True,
            "temperature": 0}) as r:
        for line in r.iter_lines():
            if "output_text.delta" in line:
                break
    wait_idle(live_chat.engine)
    assert httpx.get(f"{live_chat.url}/health").status_code == 200
