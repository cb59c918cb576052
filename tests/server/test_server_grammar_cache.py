"""A model's compiled grammars are kept (GrammarCompiler's cache, least recently used evicted
first): a request whose tools (or response_format schema) an earlier request already sent is
held by the same compiled grammar, not a new compilation, and its answer is the same. On a
random Qwen3 carrying Qwen3's own template, over HTTP; `compiles` is the compiler's own count."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from chat_checkpoints import write_qwen3_chat
from server_helpers import make_engine, serve, wait_idle
from tool_specs import TIME, weather_tool

from nanovllm.server.app import build_app
from nanovllm.structured import GrammarCompiler

MODEL = "tiny-qwen3"
WEATHER = weather_tool({"enum": ["Paris", "Rome"]})
ASK = [{"role": "user", "content": "Weather in Paris?"}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}


@pytest.fixture(scope="module")
def app_and_server(tmp_path_factory):
    engine = make_engine(write_qwen3_chat(tmp_path_factory), num_kv_blocks=512)
    app = build_app(engine, served_model_name=MODEL, tool_call_parser="hermes")
    srv = serve(app, engine)
    yield app, srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def http(app_and_server):
    with httpx.Client(base_url=app_and_server[1].url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def compiler(app_and_server) -> GrammarCompiler:
    (model,) = app_and_server[0].state.ctx.models.loaded()
    return model.grammar_compiler


def chat(http, **fields) -> dict:
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "chat_template_kwargs": {"enable_thinking": False},
        "temperature": 1.0, "max_tokens": 60, **fields})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]


def call(http, tools: list[dict], seed: int) -> tuple:
    """A tool_choice auto answer whose first token opens a call (a large logit bias on it), as
    (content, [(name, arguments)]): call ids are new each time."""
    (tag,) = http.post("/tokenize", json={"prompt": "<tool_call>"}).json()["tokens"]
    message = chat(http, tools=tools, tool_choice="auto", seed=seed, logit_bias={str(tag): 100},
                   stop=["</tool_call>"])
    return message["content"], [(c["function"]["name"], c["function"]["arguments"])
                                for c in message.get("tool_calls") or []]


def test_the_same_tools_compile_once_and_answer_the_same(http, compiler):
    before = compiler.compiles
    first = call(http, [WEATHER, TIME], seed=3)  # compiled for it
    assert compiler.compiles == before + 1
    again = call(http, [WEATHER, TIME], seed=3)
    assert compiler.compiles == before + 1
    assert again == first and json.loads(first[1][0][1])
    with ThreadPoolExecutor(2) as pool:  # one compiled grammar, two matchers in one batch
        both = list(pool.map(lambda _: call(http, [WEATHER, TIME], seed=3), range(2)))
    assert both == [first, first] and compiler.compiles == before + 1


def test_other_tools_compile_again(http, compiler):
    call(http, [WEATHER, TIME], seed=0)
    before = compiler.compiles
    call(http, [TIME], seed=0)
    assert compiler.compiles == before + 1
    call(http, [TIME, WEATHER], seed=0)  # another order: another grammar (alternatives' order)
    assert compiler.compiles == before + 2
    call(http, [weather_tool({"enum": ["Oslo"]})], seed=0)
    assert compiler.compiles == before + 3


def test_the_same_response_format_compiles_once(http, compiler):
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    before = compiler.compiles
    answers = [chat(http, response_format=schema, seed=1)["content"] for _ in range(2)]
    assert compiler.compiles == before + 1 and answers[0] == answers[1]
    assert set(json.loads(answers[0])) == {"name", "age"}


def test_the_cache_keeps_the_most_recently_used(app_and_server):
    app, _ = app_and_server
    (model,) = app.state.ctx.models.loaded()
    small = GrammarCompiler(model.engine.tokenizer, cache_size=2)
    a = small.compile("regex", "a+", "guided_regex")
    small.compile("regex", "b+", "guided_regex")
    assert small.compile("regex", "a+", "guided_regex") is a  # now the most recent
    small.compile("regex", "c+", "guided_regex")  # evicts b+, the least recently used
    assert small.compiles == 3
    assert small.compile("regex", "a+", "guided_regex") is a and small.compiles == 3
    small.compile("regex", "b+", "guided_regex")
    assert small.compiles == 4
    small.compile("json", {"type": "object", "properties": {"a": {}, "b": {}}}, "guided_json")
    small.compile("json", {"type": "object", "properties": {"b": {}, "a": {}}}, "guided_json")
    assert small.compiles == 6  # a schema's key order is the output's: not the same grammar
