"""Tags of several tokens (issue 51, item 4): on GPT-2's tokenizer `<think>`, `</think>` and
`<tool_call>` are each a few tokens, and the parsers, which read text, still split reasoning
from the answer and read calls, streamed token by token without leaking a partial tag."""

from __future__ import annotations

import json
import re

import openai
import pytest
from server_helpers import REPO, serve

from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template

MODEL = "tiny-gpt2-tools"
GPT2_CHAT_TEMPLATE = REPO / "examples" / "chat_template_gpt2.jinja"
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
ANSWER = ('<think>Two numbers.</think>\n\nSure.\n<tool_call>\n{"name": "add", "arguments": '
          '{"a": 2, "b": 3}}\n</tool_call>')
MESSAGES = [{"role": "user", "content": "Add 2 and 3."}]


@pytest.fixture(scope="module")
def client(engine):
    srv = serve(build_app(engine, served_model_name=MODEL,
                          chat_template=load_chat_template(str(GPT2_CHAT_TEMPLATE)),
                          tool_call_parser="hermes", reasoning_parser="deepseek_r1",
                          structured_in_reasoning=True), engine)
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)
    srv.stop()


def test_the_tags_are_several_tokens(engine):
    tok = engine.tokenizer
    for tag in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        assert len(tok.encode(tag, add_special_tokens=False)) > 1, tag


def request(client, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_completion_tokens=120,
        extra_body={"structured_outputs": {"regex": re.escape(ANSWER).replace("\\\n", "\\n")}},
        **kwargs)


def test_reasoning_content_and_a_call(client):
    choice = request(client).choices[0]
    msg = choice.message
    assert (msg.reasoning_content, msg.content) == ("Two numbers.", "Sure.")
    [call] = msg.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})
    assert choice.finish_reason == "tool_calls"


def test_streamed_token_by_token(client):
    reasoning, content, calls, pieces = "", "", [], 0
    for chunk in request(client, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        pieces += 1
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        assert "<" not in content and "<" not in reasoning  # no tag, nor part of one
        for tc in delta.tool_calls or []:
            if tc.index == len(calls):
                calls.append([tc.function.name, ""])
            calls[tc.index][1] += tc.function.arguments or ""
    assert pieces > 10  # many chunks: the tags really arrived piece by piece
    assert (reasoning, content) == ("Two numbers.", "Sure.")
    assert [(n, json.loads(a)) for n, a in calls] == [("add", {"a": 2, "b": 3})]
