"""/v1/chat/completions with a chat template: OpenAI's response and chunk shapes through the
real `openai` client, and the same tokens as /v1/completions on the rendered prompt."""

from __future__ import annotations

import json

import openai
import pytest
from server_helpers import MODEL, error_of

from nanovllm.server.chat.template import ChatTemplate, ChatTemplateError, load_chat_template

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]
RENDERED = "System: You are terse.\nUser: Name a colour.\nAssistant:"


def test_the_example_template_renders_a_transcript(chat_http):
    ids = chat_http.post("/tokenize", json={"prompt": RENDERED}).json()["tokens"]
    resp = chat_http.post("/v1/chat/completions", json={
        "messages": MESSAGES, "max_completion_tokens": 1}).json()
    assert resp["usage"]["prompt_tokens"] == len(ids)


def test_chat_matches_completions_on_the_rendered_prompt(chat_client):
    chat = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                               max_completion_tokens=8)
    plain = chat_client.completions.create(model=MODEL, prompt=RENDERED, temperature=0,
                                           max_tokens=8)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    choice = chat.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == plain.choices[0].text
    assert choice.finish_reason == plain.choices[0].finish_reason
    assert chat.usage.completion_tokens == plain.usage.completion_tokens
    assert chat.usage.prompt_tokens == plain.usage.prompt_tokens


def test_max_tokens_and_max_completion_tokens(chat_client):
    kw = dict(model=MODEL, messages=MESSAGES, extra_body={"ignore_eos": True})
    assert chat_client.chat.completions.create(max_tokens=4, **kw).usage.completion_tokens == 4
    both = chat_client.chat.completions.create(max_tokens=9, max_completion_tokens=2, **kw)
    assert both.usage.completion_tokens == 2


def test_streaming_chunks_have_openais_shape(chat_client):
    kw = dict(model=MODEL, messages=MESSAGES, temperature=0, max_completion_tokens=10)
    whole = chat_client.chat.completions.create(**kw)
    chunks = list(chat_client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in body) == \
        whole.choices[0].message.content
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        whole.usage.completion_tokens


def test_n_seed_and_logprobs(chat_client):
    resp = chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=3, seed=11, temperature=1.0, max_completion_tokens=5,
        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens == 15
    for choice in resp.choices:
        content = choice.logprobs.content
        assert len(content) == 5
        assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == \
            choice.message.content
        for e in content:
            assert e.logprob <= 0 and len(e.top_logprobs) == 2
            assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.logprob or \
                e.token in {t.token for t in e.top_logprobs}
    again = chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=3, seed=11, temperature=1.0, max_completion_tokens=5,
        extra_body={"ignore_eos": True})
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]


def test_stop_strings(chat_client):
    resp = chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=1.0, seed=3, max_completion_tokens=60,
        stop=["e"], extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    assert "e" not in choice.message.content
    assert choice.finish_reason == "stop" or resp.usage.completion_tokens == 60


def test_text_parts_are_joined_like_a_string(chat_client):
    parts = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": [{"type": "text", "text": "Name a"},
                                          {"type": "text", "text": "colour."}]}]
    joined = [MESSAGES[0], {"role": "user", "content": "Name a\ncolour."}]
    kw = dict(model=MODEL, temperature=0, max_completion_tokens=6)
    a = chat_client.chat.completions.create(messages=parts, **kw)
    b = chat_client.chat.completions.create(messages=joined, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "http://x/y.png"}}]}]},
     "messages"),
    ({"messages": [{"role": "user", "content": 7}]}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "1", "type": "function"}]}]}, "messages"),
    # tools default to tool_choice "auto", which needs --enable-auto-tool-choice
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tool_choice"),
    ({"messages": MESSAGES, "tool_choice": "required"}, "tool_choice"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": MESSAGES, "chat_template": "{{ 1 }}"}, "chat_template"),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
     "continue_final_message"),
    ({"messages": [{"role": "user", "content": "x" * 1_000_001}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}] * 1025}, "messages"),
])
def test_what_the_server_cannot_honour_is_a_400(chat_http, body, param):
    err = error_of(chat_http.post("/v1/chat/completions", json={"model": MODEL, **body}), 400)
    assert err["param"] == param


def test_continue_final_message_leaves_the_last_turn_open(chat_client):
    msgs = MESSAGES + [{"role": "assistant", "content": "Blue and"}]
    resp = chat_client.chat.completions.create(
        model=MODEL, messages=msgs, temperature=0, max_completion_tokens=4,
        extra_body={"add_generation_prompt": False, "continue_final_message": True})
    plain = chat_client.completions.create(model=MODEL, prompt=RENDERED + " Blue and",
                                           temperature=0, max_tokens=4)
    assert resp.choices[0].message.content == plain.choices[0].text


def test_template_exceptions_and_failures_are_400s(engine):
    template = ChatTemplate("{% if messages[0]['role'] != 'user' %}"
                            "{{ raise_exception('first message must be from the user') }}"
                            "{% endif %}{{ bos_token }}{{ messages[0]['content'] }}",
                            {"bos_token": "<s>", "eos_token": "</s>"})
    assert template.render([{"role": "user", "content": "hi"}], True) == "<s>hi"
    with pytest.raises(ChatTemplateError, match="must be from the user"):
        template.render([{"role": "system", "content": "hi"}], True)
    with pytest.raises(ValueError, match="not valid Jinja"):
        ChatTemplate("{% for %}", {})
    sandboxed = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(ChatTemplateError):
        sandboxed.render([], True)


def test_load_chat_template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    assert load_chat_template(str(path)) == "{{ messages[0]['content'] }}"
    assert load_chat_template("{{ 'a' }}\\n") == "{{ 'a' }}\n"
    with pytest.raises(ValueError, match="looks like a file path"):
        load_chat_template(str(tmp_path / "missing.jinja"))


def test_without_template_the_openai_client_gets_a_400(client):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_benchmark_client_request_shapes(chat_http):
    """What `vllm bench serve --backend openai-chat` and aiperf send: text parts, streaming with
    include_usage, max_completion_tokens, ignore_eos/min_tokens; they count tokens from usage."""
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me"}]}],
            "temperature": 0.0, "max_completion_tokens": 7, "ignore_eos": True, "min_tokens": 7}
    with chat_http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert len(r.headers["x-request-id"]) == 32
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content and all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
