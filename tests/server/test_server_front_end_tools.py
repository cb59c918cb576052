"""Tool calling through /v1/responses and /v1/messages, on the random-weight Llama with a Hermes
(Qwen2.5-style) chat template that tests/server/test_server_tools.py serves chat from: the same
calls as the chat path makes (required and named choices are enforced by the grammar, so even
this model's calls are schema-valid), the tool's result fed back (`function_call_output`,
`tool_result`), streamed calls read event by event, and the OpenAI Agents SDK's default
Responses model completing a tool round trip."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import anthropic
import httpx
import openai
import pytest
from chat_checkpoints import write_hermes_llama
from front_end_streams import messages_stream, responses_stream, sse_events
from pydantic import BaseModel
from server_helpers import make_engine, serve, wait_idle

from nanovllm.server.app import build_app

MODEL = "tiny-hermes"
WEATHER_PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                  "properties": {"city": {"type": "string", "maxLength": 8},
                                 "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
TIME_PARAMS = {"type": "object", "additionalProperties": False, "required": ["zone"],
               "properties": {"zone": {"enum": ["CET", "UTC"]}}}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                                "description": "The weather in a city.",
                                                "parameters": WEATHER_PARAMS}},
              {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMS}}]
RESPONSES_TOOLS = [{"type": "function", **t["function"]} for t in CHAT_TOOLS]
ANTHROPIC_TOOLS = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"],
                    **({"description": t["function"]["description"]}
                       if "description" in t["function"] else {})} for t in CHAT_TOOLS]
ASK = "Weather in Paris for 2 days?"
GREEDY = {"temperature": 0}


def check_args(name: str, args: dict) -> None:
    if name == "get_weather":
        assert set(args) == {"city", "days"} and len(args["city"]) <= 8 and 1 <= args["days"] <= 7
    else:
        assert name == "get_time" and args in ({"zone": "CET"}, {"zone": "UTC"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # No prefix cache: a prompt computed from cached blocks can differ in the last bits, and
    # the random model's near ties would then make the parity tests flaky.
    engine = make_engine(write_hermes_llama(tmp_path_factory), num_kv_blocks=256,
                         enable_prefix_caching=False)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def chat_calls(oai, messages, tool_choice, **kw):
    kw.setdefault("max_completion_tokens", 60)
    return oai.chat.completions.create(model=MODEL, messages=messages, tools=CHAT_TOOLS,
                                       tool_choice=tool_choice, **GREEDY, **kw)


# ---- /v1/responses -----------------------------------------------------------------------


def test_required_is_the_chat_paths_calls(oai):
    chat = chat_calls(oai, [{"role": "user", "content": ASK}], "required",
                      parallel_tool_calls=False)
    resp = oai.responses.create(model=MODEL, input=ASK, tools=RESPONSES_TOOLS,
                                tool_choice="required", parallel_tool_calls=False,
                                max_output_tokens=60, **GREEDY)
    assert resp.status == "completed"
    calls = [item for item in resp.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in chat.choices[0].message.tool_calls]
    assert all(c.call_id.startswith("call_") and c.id.startswith("fc_") for c in calls)
    for call in calls:
        check_args(call.name, json.loads(call.arguments))
    assert resp.usage.input_tokens == chat.usage.prompt_tokens


def test_a_named_function_and_its_output_fed_back(oai):
    first = oai.responses.create(model=MODEL, input=ASK, tools=RESPONSES_TOOLS,
                                 tool_choice={"type": "function", "name": "get_time"},
                                 max_output_tokens=40, **GREEDY)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_time"
    check_args(call.name, json.loads(call.arguments))
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}
    # By previous_response_id, and with the whole conversation sent again: the same prompt,
    # the same as chat's with the call and a tool message.
    chained = oai.responses.create(model=MODEL, previous_response_id=first.id, input=[output],
                                   tools=RESPONSES_TOOLS, tool_choice="none",
                                   max_output_tokens=5, **GREEDY)
    whole = oai.responses.create(model=MODEL, input=[{"role": "user", "content": ASK},
                                                     *[i.model_dump() for i in first.output],
                                                     output],
                                 tools=RESPONSES_TOOLS, tool_choice="none", max_output_tokens=5,
                                 **GREEDY)
    chat = chat_calls(oai, [{"role": "user", "content": ASK},
                            {"role": "assistant", "content": None, "tool_calls": [
                                {"id": call.call_id, "type": "function",
                                 "function": {"name": call.name, "arguments": call.arguments}}]},
                            {"role": "tool", "tool_call_id": call.call_id, "content": "12:00"}],
                      "none", max_completion_tokens=5)
    assert chained.output_text == whole.output_text == chat.choices[0].message.content
    assert chained.usage.input_tokens == whole.usage.input_tokens == chat.usage.prompt_tokens


def test_streamed_calls_are_openais_events(http, oai):
    body = {"model": MODEL, "input": ASK, "tools": RESPONSES_TOOLS, "tool_choice": "required",
            "max_output_tokens": 60, **GREEDY}
    whole = http.post("/v1/responses", json=body).json()
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        final = responses_stream(sse_events(r))
    strip = lambda items: [{k: v for k, v in i.items() if k not in ("id", "call_id")}  # noqa: E731
                           for i in items]
    assert final["status"] == "completed"
    assert strip(final["output"]) == strip(whole["output"])
    assert {i["type"] for i in final["output"]} == {"function_call"}
    with oai.responses.stream(**body) as stream:
        kinds = [e.type for e in stream]
        done = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert strip([i.model_dump(exclude_none=True) for i in done.output]) == \
        strip(whole["output"])


@pytest.mark.parametrize(("fields", "param"), [
    ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tool_choice": "required", "tools": []}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]}, "tools"),
])
def test_bad_tools_are_400s_naming_the_field(http, fields, param):
    r = http.post("/v1/responses", json={"model": MODEL, "input": ASK, "tools": RESPONSES_TOOLS,
                                         **fields})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_the_agents_sdk_completes_a_tool_round_trip(server):
    """The OpenAI Agents SDK's default model (OpenAIResponsesModel): the agent must call the
    tool (required; the SDK then resets the choice to auto), gets its result, and answers in
    its output type (a JSON schema: text.format), which ends the run."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    seen = []

    class Answer(BaseModel):
        time: Literal["12:00", "13:00"]

    @agents.function_tool
    def get_time(zone: Literal["CET", "UTC"]) -> str:
        """The time in a zone."""
        seen.append(zone)
        return "12:00"

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    agent = agents.Agent(name="clock", instructions="Tell the time.", tools=[get_time],
                         model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
                         output_type=Answer,
                         model_settings=agents.ModelSettings(tool_choice="required",
                                                             max_tokens=120, temperature=0))
    result = asyncio.run(agents.Runner.run(agent, "What time is it in Paris?", max_turns=3))
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert seen and set(seen) <= {"CET", "UTC"}
    assert result.new_items[1].output == "12:00"
    assert isinstance(result.final_output, Answer)


# ---- /v1/messages --------------------------------------------------------------------------


def test_any_is_the_chat_paths_calls(claude, oai):
    chat = chat_calls(oai, [{"role": "user", "content": ASK}], "required")
    msg = claude.messages.create(model=MODEL, max_tokens=60, tools=ANTHROPIC_TOOLS,
                                 tool_choice={"type": "any"},
                                 messages=[{"role": "user", "content": ASK}], extra_body=GREEDY)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == \
        [(c.function.name, json.loads(c.function.arguments))
         for c in chat.choices[0].message.tool_calls]
    for use in uses:
        check_args(use.name, use.input)


def test_a_named_tool_and_its_result_fed_back(claude, oai):
    first = claude.messages.create(model=MODEL, max_tokens=40, tools=ANTHROPIC_TOOLS,
                                   tool_choice={"type": "tool", "name": "get_weather",
                                                "disable_parallel_tool_use": True},
                                   messages=[{"role": "user", "content": ASK}],
                                   extra_body=GREEDY)
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    check_args(use.name, use.input)
    conversation = [{"role": "user", "content": ASK},
                    {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                      for b in first.content]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": use.id,
                         "content": [{"type": "text", "text": "Sunny."}]}]}]
    answer = claude.messages.create(model=MODEL, max_tokens=5, tools=ANTHROPIC_TOOLS,
                                    tool_choice={"type": "none"}, messages=conversation,
                                    extra_body=GREEDY)
    chat = chat_calls(oai, [{"role": "user", "content": ASK},
                            {"role": "assistant", "content": None, "tool_calls": [
                                {"id": use.id, "type": "function",
                                 "function": {"name": use.name,
                                              "arguments": json.dumps(use.input)}}]},
                            {"role": "tool", "tool_call_id": use.id, "content": "Sunny."}],
                      "none", max_completion_tokens=5)
    assert answer.content[0].text == chat.choices[0].message.content
    prompt = answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    assert prompt == chat.usage.prompt_tokens == claude.messages.count_tokens(
        model=MODEL, tools=ANTHROPIC_TOOLS, messages=conversation).input_tokens
    assert answer.stop_reason == "max_tokens"


def test_streamed_tool_use_is_anthropics_events(http, claude):
    body = {"model": MODEL, "max_tokens": 60, "tools": ANTHROPIC_TOOLS,
            "tool_choice": {"type": "any"}, "messages": [{"role": "user", "content": ASK}],
            **GREEDY}
    whole = http.post("/v1/messages", json=body).json()
    with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as r:
        streamed = messages_stream(sse_events(r))
    def without_ids(message: dict) -> dict:
        return {**message, "id": None, "content": [{**b, "id": None} for b in message["content"]]}

    assert without_ids(streamed) == without_ids(whole)
    assert streamed["stop_reason"] == "tool_use"
    with claude.messages.stream(**{k: v for k, v in body.items() if k != "temperature"},
                                extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert without_ids({"content": [b.model_dump(exclude_none=True) for b in final.content]}) \
        == without_ids({"content": whole["content"]})


def test_an_unknown_tool_name_is_an_anthropic_400(http):
    r = http.post("/v1/messages", json={
        "model": MODEL, "max_tokens": 4, "tools": ANTHROPIC_TOOLS,
        "tool_choice": {"type": "tool", "name": "nope"},
        "messages": [{"role": "user", "content": ASK}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_thinking_disabled_reaches_the_template(claude):
    """Qwen3's switch: the template closes an empty <think> block in the prompt."""
    kw = dict(model=MODEL, messages=[{"role": "user", "content": ASK}])
    default = claude.messages.count_tokens(**kw).input_tokens
    assert claude.messages.count_tokens(thinking={"type": "disabled"}, **kw).input_tokens > default


def test_a_claude_code_shaped_request_is_served(http):
    """What Claude Code sends besides the prompt: ?beta=true, anthropic-beta, cache_control on
    system blocks, messages and tools, a tool schema with $schema, metadata.user_id,
    temperature 1, tool_choice auto (by default), a streamed answer."""
    tool = {"name": "Read", "description": "Reads a file.", "cache_control": {"type": "ephemeral"},
            "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#",
                             "type": "object", "properties": {"path": {"type": "string"}},
                             "required": ["path"], "additionalProperties": False}}
    body = {"model": MODEL, "max_tokens": 4, "temperature": 1, "stream": True,
            "metadata": {"user_id": "user_abc_account_1_session_2"},
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": ASK, "cache_control": {"type": "ephemeral"}}]}],
            "tools": [tool]}
    headers = {"anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}
    with http.stream("POST", "/v1/messages?beta=true", json=body, headers=headers) as r:
        assert r.status_code == 200
        message = messages_stream(sse_events(r))
    assert message["usage"]["output_tokens"] == 4 and message["stop_reason"] == "max_tokens"
    count = http.post("/v1/messages/count_tokens?beta=true", headers=headers, json={
        k: v for k, v in body.items() if k in ("model", "system", "messages", "tools")})
    assert count.json()["input_tokens"] == message["usage"]["input_tokens"] + \
        message["usage"]["cache_read_input_tokens"]
