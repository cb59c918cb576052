"""Fuzzing /v1/responses and /v1/messages (with count_tokens) on the server with a chat template,
where their requests really run: schemathesis from the OpenAPI document, and Hypothesis bodies
built from the two APIs' own item and block shapes with hostile values mixed in. Every answer
is a 2xx or a 4xx in the API's own error shape, never a 5xx, and the engine ends idle."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from server_helpers import MODEL, wait_idle
from test_server_fuzz import bounded_schema

MAX_EXAMPLES = 40
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
TEXT = st.one_of(st.text(max_size=30), JUNK)
SCHEMA = st.one_of(st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
                   st.just({"type": "string", "enum": ["x", "y"]}), JUNK)


def maybe(strategy):
    return st.one_of(strategy, JUNK)


# OpenAI's Responses shapes.
PART = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "refusal",
                                                       "input_image", "x"]), "text": TEXT})
ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer",
                                                    "tool", "x"]),
                           "content": st.one_of(TEXT, st.lists(maybe(PART), max_size=3))},
                          optional={"type": st.sampled_from(["message", "x"])}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": TEXT, "name": TEXT,
                           "arguments": st.one_of(st.just('{"a": 1}'), TEXT)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": TEXT,
                           "output": st.one_of(TEXT, st.lists(maybe(PART), max_size=2))}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "x"])}),
    JUNK)
FUNCTION_TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]),
                                       "name": TEXT, "parameters": SCHEMA})
RESPONSES_BODY = st.fixed_dictionaries(
    {"input": st.one_of(TEXT, st.lists(ITEM, max_size=5))},
    optional={"instructions": TEXT, "max_output_tokens": maybe(st.integers(0, 6)),
              "temperature": maybe(st.floats(0, 3)), "top_p": maybe(st.floats(0, 1.2)),
              "tools": maybe(st.lists(maybe(FUNCTION_TOOL), max_size=2)),
              "tool_choice": maybe(st.sampled_from(["auto", "none", "required"])),
              "text": maybe(st.fixed_dictionaries({"format": maybe(st.fixed_dictionaries({
                  "type": st.sampled_from(["text", "json_object", "json_schema", "x"]),
                  "name": TEXT, "schema": SCHEMA}))})),
              "store": JUNK, "stream": st.booleans(), "metadata": JUNK,
              "previous_response_id": TEXT, "truncation": JUNK, "include": JUNK,
              "reasoning": JUNK, "parallel_tool_calls": JUNK, "user": TEXT})

# Anthropic's Messages shapes.
BLOCK_TEXT = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT},
                          optional={"cache_control": JUNK}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": TEXT, "name": TEXT,
                           "input": st.one_of(st.just({"a": 1}), JUNK)}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": TEXT,
                           "content": st.one_of(TEXT, st.lists(maybe(BLOCK_TEXT), max_size=2))},
                          optional={"is_error": JUNK}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "thinking", "document", "x"])}),
    JUNK)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                 "content": st.one_of(TEXT, st.lists(BLOCK, max_size=3))})
ANTHROPIC_TOOL = st.fixed_dictionaries({"name": TEXT, "input_schema": SCHEMA},
                                       optional={"type": st.sampled_from(["custom", "bash"]),
                                                 "description": TEXT})
PROMPT_FIELDS = {"messages": st.lists(maybe(MESSAGE), max_size=4)}
PROMPT_OPTIONAL = {
    "system": st.one_of(TEXT, st.lists(maybe(BLOCK_TEXT), max_size=2)),
    "tools": maybe(st.lists(maybe(ANTHROPIC_TOOL), max_size=2)),
    "tool_choice": maybe(st.fixed_dictionaries({"type": st.sampled_from(
        ["auto", "any", "none", "tool", "x"])}, optional={"name": TEXT})),
    "thinking": JUNK}
MESSAGES_BODY = st.fixed_dictionaries(
    {**PROMPT_FIELDS, "max_tokens": maybe(st.integers(0, 6))},
    optional={**PROMPT_OPTIONAL, "stop_sequences": maybe(st.lists(TEXT, max_size=3)),
              "temperature": maybe(st.floats(0, 1.5)), "top_k": JUNK, "top_p": JUNK,
              "stream": st.booleans(), "metadata": JUNK, "output_config": JUNK})
COUNT_BODY = st.fixed_dictionaries(PROMPT_FIELDS, optional=PROMPT_OPTIONAL)


def check_answer(response: httpx.Response, anthropic: bool) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        if anthropic:
            assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
        else:
            assert body["error"]["message"] and body["error"]["code"] == response.status_code


def post(url: str, path: str, body: dict) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as c:
        if body.get("stream") is True:  # read to the end: an error event is not a status
            with c.stream("POST", path, json=body) as r:
                r.read()
                return r
        return c.post(path, json=body)


@pytest.mark.parametrize(("path", "bodies"), [
    ("/v1/responses", RESPONSES_BODY), ("/v1/messages", MESSAGES_BODY),
    ("/v1/messages/count_tokens", COUNT_BODY)], ids=["responses", "messages", "count_tokens"])
def test_shaped_bodies_get_no_server_error(live_chat, path, bodies):
    @given(body=bodies)
    @SETTINGS
    def check(body):
        response = post(live_chat.url, path, {"model": MODEL, **body})
        check_answer(response, path.startswith("/v1/messages"))
        if response.status_code == 200 and body.get("stream") is not True:
            assert response.json()

    check()
    wait_idle(live_chat.engine, timeout=30)


OPERATIONS = [("POST", "/v1/responses"), ("GET", "/v1/responses/{response_id}"),
              ("DELETE", "/v1/responses/{response_id}"), ("POST", "/v1/messages"),
              ("POST", "/v1/messages/count_tokens")]


@pytest.fixture(scope="module")
def front_end_schema(live_chat):
    return bounded_schema(live_chat.url, "ResponsesRequest", {"max_output_tokens": 8})


CASES = [(m, p, mode) for m, p in OPERATIONS for mode in GenerationMode
         if m == "POST" or mode is GenerationMode.POSITIVE]  # a path id has no invalid form


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=lambda v: getattr(v, "value", v))
def test_schemathesis_finds_no_server_error(front_end_schema, live_chat, method, path, mode):
    operation = front_end_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def check(case):
        if isinstance(case.body, dict) and path == "/v1/messages" and \
                isinstance(case.body.get("max_tokens"), int):
            case.body["max_tokens"] = min(case.body["max_tokens"], 8)  # keep valid cases quick
        response = case.call()
        assert response.status_code < 500, (case.body, response.text)

    check()
    wait_idle(live_chat.engine, timeout=30)
