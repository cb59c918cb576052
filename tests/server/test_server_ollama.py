"""Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags, /api/show, /api/ps,
/api/version) through the official `ollama` client and LangChain's ChatOllama against the real
server: the same answers as the chat path it fronts, NDJSON streams, options honoured or
refused naming them, structured output with a schema, a tool call round trip, embeddings over
the pooling path, and errors in Ollama's shape ({"error": "..."})."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import httpx
import numpy as np
import pytest
from bert_checkpoints import write_st_embedder
from chat_checkpoints import write_hermes_llama
from pydantic import BaseModel, ConfigDict
from server_helpers import MODEL, REPO, make_engine, serve, wait_idle

from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template

ollama = pytest.importorskip("ollama")

TEMPLATE = load_chat_template(str(REPO / "examples" / "chat_template_gpt2.jinja"))
SYSTEM, USER = "You are terse.", "Name a colour."
MESSAGES = [{"role": "user", "content": USER}]
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def live_ollama(engine, tiny_ckpt) -> Iterator[str]:
    srv = serve(build_app(engine, served_model_name=MODEL, model_root=str(tiny_ckpt),
                          chat_template=TEMPLATE), engine)
    yield srv.url
    srv.stop()


@pytest.fixture
def client(live_ollama) -> ollama.Client:
    return ollama.Client(host=live_ollama, timeout=60)


@pytest.fixture
def http(live_ollama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_ollama, timeout=60) as c:
        yield c


def chat_answer(http: httpx.Client, messages: list[dict], max_tokens: int, **extra) -> dict:
    return http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "max_completion_tokens": max_tokens,
        "temperature": 0, **extra}).json()


def ollama_error(response: httpx.Response, status: int) -> str:
    """Assert Ollama's error shape and status; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def check_final(part, prompt_tokens: int, eval_count: int) -> None:
    assert part.done and part.done_reason == "length"
    assert part.prompt_eval_count == prompt_tokens and part.eval_count == eval_count
    assert part.total_duration > 0 and part.load_duration == 0
    assert part.prompt_eval_duration >= 0 and part.eval_duration >= 0
    assert part.total_duration >= part.prompt_eval_duration


def test_chat_is_the_chat_paths_answer(client, http):
    want = chat_answer(http, [{"role": "system", "content": SYSTEM}, *MESSAGES], 8)
    got = client.chat(model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *MESSAGES],
                      options=GREEDY, stream=False)
    assert got.message.role == "assistant" and got.model == MODEL and got.created_at
    assert got.message.content == want["choices"][0]["message"]["content"]
    check_final(got, want["usage"]["prompt_tokens"], 8)


def test_chat_streams_ndjson_by_default(client, http, live_ollama):
    whole = client.chat(model=MODEL, messages=MESSAGES, options=GREEDY, stream=False)
    parts = list(client.chat(model=MODEL, messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert not any(p.done for p in parts[:-1])
    check_final(parts[-1], whole.prompt_eval_count, 8)
    # No `stream` field: a stream, as in Ollama, one JSON object a line.
    with http.stream("POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES,
                                                "options": GREEDY}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 8
    assert "".join(x["message"]["content"] for x in lines) == whole.message.content


def test_generate_is_one_chat_turn(client, http):
    want = chat_answer(http, [{"role": "system", "content": SYSTEM}, *MESSAGES], 8)
    got = client.generate(model=MODEL, prompt=USER, system=SYSTEM, options=GREEDY)
    assert got.response == want["choices"][0]["message"]["content"]
    check_final(got, want["usage"]["prompt_tokens"], 8)
    parts = list(client.generate(model=f"{MODEL}:latest", prompt=USER, system=SYSTEM,
                                 options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == got.response and parts[-1].done
    # An empty prompt loads the model (Ollama's way to preload one).
    loaded = client.generate(model=MODEL, prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_options_are_honoured(client, http):
    stop = chat_answer(http, MESSAGES, 16)["choices"][0]["message"]["content"][3:5]
    want = chat_answer(http, MESSAGES, 16, stop=[stop], top_k=5, top_p=0.9, min_p=0.01,
                       repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5)
    got = client.chat(model=MODEL, messages=MESSAGES, stream=False, options={
        "temperature": 0, "num_predict": 16, "stop": [stop], "top_k": 5, "top_p": 0.9,
        "min_p": 0.01, "repeat_penalty": 1.3, "presence_penalty": 0.5,
        "frequency_penalty": 0.5, "num_ctx": 64,
        "num_thread": 2, "use_mmap": True, "num_gpu": 0})  # runtime-only: accepted
    assert got.message.content == want["choices"][0]["message"]["content"]
    seeded = [client.chat(model=MODEL, messages=MESSAGES, stream=False,
                          options={"seed": 7, "num_predict": 8}).message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize("options, field", [
    ({"mirostat": 1}, "options.mirostat"),
    ({"tfs_z": 0.5}, "options.tfs_z"),
    ({"made_up": 1}, "options.made_up"),
    ({"num_predict": 0}, "options.num_predict"),
    ({"num_ctx": 10**6}, "options.num_ctx"),
    ({"temperature": -1}, "options.temperature"),
    ({"repeat_penalty": 0}, "options.repeat_penalty"),
])
def test_options_not_honoured_are_400s_naming_them(http, options, field):
    message = ollama_error(http.post("/api/chat", json={
        "model": MODEL, "messages": MESSAGES, "options": options, "stream": False}), 400)
    assert field in message or field.split(".")[1] in message, message


@pytest.mark.parametrize("path, body, field", [
    ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
     "images"),
    ("/api/chat", {"messages": []}, "messages"),
    ("/api/chat", {"messages": MESSAGES, "think": True}, "think"),
    ("/api/chat", {"messages": MESSAGES, "format": "yaml"}, "format"),
    ("/api/chat", {"messages": MESSAGES, "logprobs": True}, "logprobs"),
    ("/api/generate", {"prompt": "hi", "raw": True}, "raw"),
    ("/api/generate", {"prompt": "hi", "suffix": "end"}, "suffix"),
    ("/api/generate", {"prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
    ("/api/generate", {"prompt": "hi", "context": [1, 2]}, "context"),
    ("/api/generate", {"prompt": "hi", "images": ["aGk="]}, "images"),
])
def test_what_cannot_be_honoured_is_an_ollama_400(http, path, body, field):
    message = ollama_error(http.post(path, json={"model": MODEL, "stream": False, **body}), 400)
    assert field in message, message


def test_errors_reach_the_client_in_ollamas_shape(client, http):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=MESSAGES)
    assert err.value.status_code == 404 and "no-such-model" in err.value.error
    ollama_error(http.post("/api/chat", json={"messages": MESSAGES}), 400)  # no model
    ollama_error(http.get("/api/nothing-here"), 404)
    # keep_alive is accepted (the one model stays loaded).
    assert http.post("/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False,
                                        "keep_alive": "5m", "options": GREEDY}).status_code == 200


class Colour(BaseModel):  # bounded, so that even this random model finishes it
    model_config = ConfigDict(extra="forbid")  # no other properties
    name: Literal["red", "green", "blue"]
    bright: bool


def test_format_is_a_structured_output(client):
    got = client.chat(model=MODEL, messages=MESSAGES, format=Colour.model_json_schema(),
                      options={"temperature": 0, "num_predict": 200}, stream=False)
    assert got.done_reason == "stop", got
    Colour.model_validate_json(got.message.content)
    made = client.generate(model=MODEL, prompt=USER, format=Colour.model_json_schema(),
                           options={"temperature": 0, "num_predict": 200})
    Colour.model_validate_json(made.response)
    # "json": any JSON object (this model's may be cut short by num_predict).
    plain = client.generate(model=MODEL, prompt=USER, format="json",
                            options={"temperature": 0, "num_predict": 8})
    assert plain.response.lstrip().startswith("{")


def test_models_are_described(client, http, tiny_ckpt):
    listed = client.list().models
    assert [m.model for m in listed] == [MODEL] and listed[0].size > 0
    assert listed[0].details.family == "gpt2"
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion"] and shown.template == TEMPLATE
    assert shown.modelinfo["gpt2.context_length"] > 0
    running = client.ps().models
    assert [m.model for m in running] == [MODEL]
    assert running[0].context_length == shown.modelinfo["gpt2.context_length"]
    assert http.get("/api/version").json()["version"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("other")
    assert err.value.status_code == 404


def test_langchain_chat_ollama(live_ollama, client):
    chat_ollama = pytest.importorskip("langchain_ollama")
    llm = chat_ollama.ChatOllama(model=MODEL, base_url=live_ollama, temperature=0,
                                 num_predict=8)
    want = client.chat(model=MODEL, messages=MESSAGES, options=GREEDY, stream=False)
    got = llm.invoke(USER)
    assert got.content == want.message.content
    assert got.usage_metadata["output_tokens"] == 8
    assert "".join(c.content for c in llm.stream(USER)) == want.message.content


def test_think_is_the_reasoning_parsers_thinking(engine, tiny_ckpt):
    """deepseek_r1's parser reads an answer that never closes its reasoning as all reasoning:
    so this random model's whole answer is `thinking`, as chat's reasoning_content."""
    srv = serve(build_app(engine, served_model_name=MODEL, chat_template=TEMPLATE,
                          reasoning_parser="deepseek_r1"), engine)
    try:
        client = ollama.Client(host=srv.url, timeout=60)
        assert "thinking" in client.show(MODEL).capabilities
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            want = chat_answer(http, MESSAGES, 8, chat_template_kwargs={
                "enable_thinking": True})["choices"][0]["message"]
        got = client.chat(model=MODEL, messages=MESSAGES, think=True, options=GREEDY,
                          stream=False)
        assert got.message.thinking == want["reasoning_content"] and got.message.thinking
        assert got.message.content == (want["content"] or "")
        parts = list(client.chat(model=MODEL, messages=MESSAGES, think=True, options=GREEDY,
                                 stream=True))
        assert "".join(p.message.thinking or "" for p in parts) == got.message.thinking
        made = client.generate(model=MODEL, prompt=USER, think=True, options=GREEDY)
        assert made.thinking == got.message.thinking
    finally:
        srv.stop()


# Tool calls: a random Llama whose template lists tools, read by the llama3_json parser (bare
# JSON calls); `format` holds the answer to a call's JSON (Ollama has no tool_choice), so even
# this model calls the tool with schema-valid arguments.

WEATHER_PARAMS = {"type": "object", "additionalProperties": False, "required": ["city"],
                  "properties": {"city": {"enum": ["Paris", "Rome"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "The weather in a city.",
                                           "parameters": WEATHER_PARAMS}}]
CALL_FORMAT = {"type": "object", "additionalProperties": False,
               "required": ["name", "parameters"],
               "properties": {"name": {"const": "get_weather"}, "parameters": WEATHER_PARAMS}}


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    engine = make_engine(write_hermes_llama(tmp_path_factory), num_kv_blocks=256)
    srv = serve(build_app(engine, served_model_name="tiny-tools",
                          tool_call_parser="llama3_json"), engine)
    yield srv.url
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


def test_a_tool_call_round_trip(tool_server):
    client = ollama.Client(host=tool_server, timeout=120)
    assert "tools" in client.show("tiny-tools").capabilities
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    got = client.chat(model="tiny-tools", messages=ask, tools=TOOLS, format=CALL_FORMAT,
                      options={"temperature": 0, "num_predict": 64}, stream=False)
    (call,) = got.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments in ({"city": "Paris"}, {"city": "Rome"})
    streamed = list(client.chat(model="tiny-tools", messages=ask, tools=TOOLS,
                                format=CALL_FORMAT, options={"temperature": 0,
                                                            "num_predict": 64}, stream=True))
    calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == \
        [(call.function.name, call.function.arguments)]
    # The result fed back: the assistant's call, then the tool's answer.
    answer = client.chat(model="tiny-tools", tools=TOOLS, stream=False,
                         options={"temperature": 0, "num_predict": 8}, messages=[
                             *ask, got.message,
                             {"role": "tool", "content": "Sunny", "tool_name": "get_weather"}])
    assert answer.done and answer.eval_count == 8


def test_langchain_binds_tools(tool_server):
    chat_ollama = pytest.importorskip("langchain_ollama")
    llm = chat_ollama.ChatOllama(model="tiny-tools", base_url=tool_server, temperature=0,
                                 num_predict=64, format=CALL_FORMAT).bind_tools(TOOLS)
    message = llm.invoke("Weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Rome")


# Embeddings over the pooling path.


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    model_dir = write_st_embedder(tmp_path_factory.mktemp("ollama-embed") / "st",
                                  normalize=False)
    engine = make_engine(model_dir)
    srv = serve(build_app(engine, served_model_name="tiny-embed"), engine)
    yield srv.url
    srv.stop()
    engine.shutdown()


def test_embed_is_the_pooling_paths_vectors(embed_server, live_ollama):
    texts = ["Hello world", "A second, longer text to embed."]
    with httpx.Client(base_url=embed_server, timeout=60) as http:
        want = np.array([d["embedding"] for d in http.post("/v1/embeddings", json={
            "input": texts}).json()["data"]])
    client = ollama.Client(host=embed_server, timeout=60)
    got = client.embed(model="tiny-embed", input=texts)
    np.testing.assert_allclose(got.embeddings, want / np.linalg.norm(want, axis=1,
                                                                      keepdims=True), atol=1e-5)
    assert got.prompt_eval_count > 0 and got.total_duration > 0
    legacy = client.embeddings(model="tiny-embed", prompt=texts[0])
    np.testing.assert_allclose(legacy.embedding, want[0], atol=1e-5)  # not normalized
    assert client.show("tiny-embed").capabilities == ["embedding"]
    with httpx.Client(base_url=embed_server, timeout=60) as http:
        message = ollama_error(http.post("/api/embed", json={
            "model": "tiny-embed", "input": "word " * 5000, "truncate": False}), 400)
        assert "input" in message
        ok = http.post("/api/embed", json={"model": "tiny-embed", "input": "word " * 5000})
        assert ok.status_code == 200
    # A model that generates makes no embeddings: a 400 in Ollama's shape.
    with httpx.Client(base_url=live_ollama, timeout=60) as http:
        ollama_error(http.post("/api/embed", json={"model": MODEL, "input": "hi"}), 400)


def test_the_api_key_guards_ollamas_paths(live_auth):
    from server_helpers import API_KEY

    with httpx.Client(base_url=live_auth.url, timeout=60) as http:
        ollama_error(http.get("/api/tags"), 401)
    keyed = ollama.Client(host=live_auth.url, headers={"Authorization": f"Bearer {API_KEY}"})
    assert [m.model for m in keyed.list().models] == [MODEL]
