"""Qwen3 end to end: a random-weight Qwen3 whose checkpoint carries Qwen3's own chat template
and a tokenizer with its chat tokens (<think>, <tool_call>, <tool_response> one token each),
served as `--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes` and
spoken to with the real `openai` client.

The prompt is the one transformers renders from the same checkpoint (tools in <tools>, an
assistant turn's calls and the `tool` results sent back, `enable_thinking`); a required or
named tool_choice returns a schema-valid call, which goes back through the template with its
result. With `enable_thinking: false` the template closes an empty think block in the prompt,
so the answer starts after the reasoning and the grammar holds it from its first token."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from chat_checkpoints import write_qwen3_chat
from server_helpers import make_engine, serve, wait_idle
from tool_specs import TIME, weather_tool

from nanovllm.server.app import build_app

MODEL = "tiny-qwen3"
WEATHER = weather_tool({"enum": ["Paris", "Rome"]})
TOOLS = [WEATHER, TIME]
ASK = [{"role": "system", "content": "You are terse."},
       {"role": "user", "content": "Weather in Paris for 2 days?"}]
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}
# After the last user turn, Qwen3's template shows an assistant turn's reasoning again.
THOUGHT_CALLED = {**CALLED, "reasoning_content": "The user wants weather."}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return write_qwen3_chat(tmp_path_factory)


@pytest.fixture(scope="module")
def hf_tokenizer(qwen3_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen3_dir)


@pytest.fixture(scope="module")
def servers(qwen3_dir):
    engine = make_engine(qwen3_dir, num_kv_blocks=256)
    parsers = dict(served_model_name=MODEL, tool_call_parser="hermes", reasoning_parser="qwen3")
    made = {"qwen3": serve(build_app(engine, **parsers), engine),
            # --structured-outputs-config '{"enable_in_reasoning": true}'
            "in_reasoning": serve(build_app(engine, **parsers, structured_in_reasoning=True),
                                  engine)}
    yield made
    for srv in made.values():
        srv.stop()
    wait_idle(engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def client(servers):
    return client_of(servers["qwen3"])


def client_of(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)


def hf_ids(tokenizer, messages, **kwargs) -> list[int]:
    """transformers' own rendering: the template takes a call's arguments as a mapping."""
    def decoded(call):
        return {**call, "function": {**call["function"],
                                     "arguments": json.loads(call["function"]["arguments"])}}
    messages = [{**m, "tool_calls": [decoded(c) for c in m["tool_calls"]]}
                if m.get("tool_calls") else m for m in messages]
    return tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True,
                                         tokenize=True, return_dict=True, **kwargs)["input_ids"]


# ---- the prompt: Qwen3's template, as transformers renders it --------------------------------


@pytest.mark.parametrize("thinking", [None, False], ids=["thinking-default", "thinking-off"])
@pytest.mark.parametrize("messages", [ASK, [*ASK, CALLED, RESULT], [*ASK, THOUGHT_CALLED, RESULT]],
                         ids=["ask", "round-trip", "round-trip-with-reasoning"])
def test_prompt_is_transformers_rendering(servers, hf_tokenizer, messages, thinking):
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    expected = hf_ids(hf_tokenizer, messages, **kwargs)
    body = {"messages": messages, "tools": TOOLS} | (NO_THINKING if kwargs else {})
    got = httpx.post(f"{servers['qwen3'].url}/tokenize", json=body, timeout=60).json()
    assert got["tokens"] == expected
    text = hf_tokenizer.decode(expected)
    assert "<tools>\n" + json.dumps(WEATHER) in text
    assert text.endswith(EMPTY_THINK) is (thinking is False)
    if messages[-1] is RESULT:
        assert "<tool_call>\n{\"name\": \"get_weather\"" in text
        assert text.endswith("<tool_response>\n{\"sky\": \"clear\"}\n</tool_response><|im_end|>\n"
                             + ("<|im_start|>assistant\n" if thinking is None else EMPTY_THINK))
    if messages[-2] is THOUGHT_CALLED:
        assert "<think>\nThe user wants weather.\n</think>\n\n<tool_call>" in text


# ---- a tool round trip: the call is the grammar's, the result goes back through the template -


def _call_then_answer(client, hf_tokenizer, tool_choice, stream: bool):
    request = dict(model=MODEL, tools=TOOLS, seed=5, temperature=1.0, max_completion_tokens=80,
                   extra_body=NO_THINKING)
    if stream:
        chunks = list(client.chat.completions.create(
            messages=ASK, tool_choice=tool_choice, stream=True,
            stream_options={"include_usage": True}, **request))
        content, reasoning, calls, reasons = assemble(chunks)
        usage = chunks[-1].usage
    else:
        resp = client.chat.completions.create(messages=ASK, tool_choice=tool_choice, **request)
        choice, usage = resp.choices[0], resp.usage
        msg = choice.message
        content, reasoning, reasons = msg.content, msg.reasoning_content, [choice.finish_reason]
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in msg.tool_calls]
    # enable_thinking reached the template: the prompt closes an empty think block
    assert usage.prompt_tokens == len(hf_ids(hf_tokenizer, ASK, enable_thinking=False))
    assert not content and not reasoning and reasons[-1] == "tool_calls"
    assert calls and all(c["id"].startswith("call_") for c in calls)
    for call in calls:
        args = json.loads(call["arguments"])
        assert (call["name"], set(args)) in (("get_weather", {"city", "days"}),
                                             ("get_time", {"zone"}))
        assert args.get("city", "Paris") in ("Paris", "Rome") and 1 <= args.get("days", 1) <= 7
    called = {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]}
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "Sunny."} for c in calls]
    conversation = [*ASK, called, *results]
    answer = client.chat.completions.create(messages=conversation, tool_choice="none", **request)
    assert answer.usage.prompt_tokens == len(hf_ids(hf_tokenizer, conversation,
                                                    enable_thinking=False))
    msg = answer.choices[0].message
    assert isinstance(msg.content, str) and not msg.tool_calls and msg.reasoning_content is None
    assert answer.choices[0].finish_reason in ("stop", "length")
    return calls


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_required_call_round_trip(client, hf_tokenizer, stream):
    _call_then_answer(client, hf_tokenizer, "required", stream)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_named_call_round_trip(client, hf_tokenizer, stream):
    calls = _call_then_answer(client, hf_tokenizer,
                              {"type": "function", "function": {"name": "get_time"}}, stream)
    assert [c["name"] for c in calls] == ["get_time"]


def assemble(chunks):
    """Content, reasoning and calls as a strict client reassembles OpenAI's chunks."""
    content, reasoning, calls, reasons = "", "", [], []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reasons.append(choice.finish_reason)
        content += choice.delta.content or ""
        reasoning += getattr(choice.delta, "reasoning_content", None) or ""
        for tc in choice.delta.tool_calls or []:
            if tc.index == len(calls):  # the call's first delta: its id, type and name
                assert tc.id and tc.type == "function" and tc.function.name
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": ""})
            calls[tc.index]["arguments"] += tc.function.arguments or ""
    return content, reasoning, calls, reasons


# ---- thinking on: reasoning, then a call, each tag one token ---------------------------------

THOUGHT = "<think>\nThe user wants weather.\n</think>\n\n"
CALL = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_thinking_then_a_call_under_auto(servers, stream):
    """Under auto the parsers read what the model wrote (here held by a regex that spans the
    reasoning, as enable_in_reasoning allows): <think> and <tool_call> are single tokens."""
    client = client_of(servers["in_reasoning"])
    regex = re.escape(THOUGHT + CALL).replace("\\\n", "\\n")
    request = dict(model=MODEL, messages=ASK, tools=TOOLS, max_completion_tokens=80,
                   extra_body={"structured_outputs": {"regex": regex}})
    if stream:
        content, reasoning, calls, reasons = assemble(
            client.chat.completions.create(stream=True, **request))
    else:
        choice = client.chat.completions.create(**request).choices[0]
        msg = choice.message
        content, reasoning, reasons = msg.content, msg.reasoning_content, [choice.finish_reason]
        calls = [{"name": c.function.name, "arguments": c.function.arguments}
                 for c in msg.tool_calls]
    assert reasoning == "\nThe user wants weather.\n" and not content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_time",
                                                                         {"zone": "UTC"})]
    assert reasons[-1] == "tool_calls"
