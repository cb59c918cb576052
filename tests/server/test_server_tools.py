"""Tool calling and reasoning output through the real server and the real `openai` client, on a
random-weight Llama whose checkpoint carries a Hermes (Qwen2.5-style) chat template with tools.

The model alone writes noise: every call that parses under tool_choice "required" or a named
function is the grammar's doing. Under "auto" a structured-output constraint makes the model
write the family's own format, which the hermes parser must then read, tags of several tokens
included (this tokenizer has no <tool_call> token)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from chat_checkpoints import write_hermes_llama
from server_helpers import error_of, make_engine, serve, wait_idle
from tool_specs import TIME, weather_tool

from nanovllm.server.app import build_app

MODEL = "tiny-hermes"
WEATHER = weather_tool({"type": "string", "maxLength": 8})
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "Weather in Paris for 2 days?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'


def check_call(call, names=("get_weather", "get_time")) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
    assert call.function.name in names
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "days"} and isinstance(args["city"], str)
        assert len(args["city"]) <= 8 and 1 <= args["days"] <= 7
    else:
        assert args in ({"zone": "CET"}, {"zone": "UTC"})
    return args


@pytest.fixture(scope="module")
def hermes_dir(tmp_path_factory):
    return write_hermes_llama(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(hermes_dir):
    loop = make_engine(hermes_dir, num_kv_blocks=256)
    yield loop
    loop.shutdown()


def _served(engine, **options):
    return serve(build_app(engine, served_model_name=MODEL, **options), engine)


@pytest.fixture(scope="module")
def servers(engine):
    made = {"auto": _served(engine, tool_call_parser="hermes"),
            "plain": _served(engine),
            "llama3": _served(engine, tool_call_parser="llama3_json"),
            "reasoning": _served(engine, tool_call_parser="hermes", reasoning_parser="qwen3",
                                 structured_in_reasoning=True)}
    yield made
    for srv in made.values():
        srv.stop()


def client_of(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def client(servers):
    return client_of(servers["auto"])


# ---- the prompt: the checkpoint's template, as transformers renders it ----------------------

CONVERSATION = [
    {"role": "system", "content": "You are terse."}, *ASK,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]


def hf_form(messages):
    """The conversation as transformers' templates take it: arguments as a mapping."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(
                c["function"]["arguments"])}} for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.mark.parametrize("messages", [ASK, CONVERSATION], ids=["ask", "round-trip"])
def test_tokenize_and_chat_render_tools_as_transformers_does(servers, hermes_dir, messages):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hermes_dir)
    expected = hf.apply_chat_template(hf_form(messages), tools=TOOLS, add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
    got = httpx.post(f"{servers['auto'].url}/tokenize", timeout=60,
                     json={"messages": messages, "tools": TOOLS}).json()
    assert got["tokens"] == expected
    chat = client_of(servers["auto"]).chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_completion_tokens=1)
    assert chat.usage.prompt_tokens == len(expected)


def test_chat_template_kwargs_reach_the_template(servers, hermes_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hermes_dir)
    expected = hf.apply_chat_template(ASK, add_generation_prompt=True, enable_thinking=False,
                                      tokenize=True, return_dict=True)["input_ids"]
    got = httpx.post(f"{servers['auto'].url}/tokenize", timeout=60, json={
        "messages": ASK, "chat_template_kwargs": {"enable_thinking": False}}).json()
    assert got["tokens"] == expected


# ---- required and named: enforced by the grammar --------------------------------------------


def test_required_returns_schema_valid_calls(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                          tool_choice="required", n=4, temperature=1.0, seed=3,
                                          max_completion_tokens=200)
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None and choice.message.tool_calls
        for call in choice.message.tool_calls:
            check_call(call)


def test_named_function_returns_its_call(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, n=3, temperature=1.0, seed=4,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_completion_tokens=100)
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert call.function.name == "get_time"
        check_call(call)


def test_parallel_tool_calls_false_is_one_call(servers, client):
    """A bias towards "," makes the model list call after call; without parallel calls the
    grammar closes the list after the first."""
    comma = httpx.post(f"{servers['auto'].url}/tokenize", timeout=60,
                       json={"prompt": ",", "add_special_tokens": False}).json()["tokens"]
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=5,
                  max_completion_tokens=300, logit_bias={str(comma[0]): 30})
    many = client.chat.completions.create(**kwargs).choices[0]
    assert many.finish_reason == "length" or len(many.message.tool_calls) > 1
    one = client.chat.completions.create(**kwargs, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls" and len(one.message.tool_calls) == 1


def test_required_works_without_auto_tool_choice(servers):
    resp = client_of(servers["plain"]).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=1,
        max_completion_tokens=200)
    check_call(resp.choices[0].message.tool_calls[0])


def assemble(chunks) -> tuple[str, list[dict], list[str | None]]:
    """Content and calls as a strict client reassembles OpenAI's chunks, chunk by chunk."""
    content, calls, reasons = "", [], []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reasons.append(choice.finish_reason)
        delta = choice.delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            if tc.index == len(calls):  # the call's first delta: its id, type and name
                assert tc.id and tc.type == "function" and tc.function.name
                calls.append({"id": tc.id, "name": tc.function.name, "arguments": ""})
            else:
                assert tc.index == len(calls) - 1 and tc.id is None and tc.function.name is None
            calls[tc.index]["arguments"] += tc.function.arguments or ""
    return content, calls, reasons


def test_required_streamed_chunk_by_chunk_equals_the_whole_answer(client):
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=11,
                  temperature=1.0, max_completion_tokens=200)
    whole = client.chat.completions.create(**kwargs).choices[0].message
    content, calls, reasons = assemble(client.chat.completions.create(**kwargs, stream=True))
    assert content == "" and reasons[-1] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert len(set(reasons[:-1])) <= 1 and reasons[0] is None


# ---- auto: the family's parser reads what the model wrote -----------------------------------


def test_auto_reads_the_models_own_call(client):
    """A regex holds this model to the Hermes format (what a trained Qwen writes by itself)."""
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_completion_tokens=80,
        extra_body={"structured_outputs": {"regex": "Let me look\\.\\n" + _escape(CALL)}})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == \
        ("get_weather", {"city": "Paris", "days": 2})


def test_auto_streamed_never_leaks_a_partial_tag(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_completion_tokens=80, stream=True,
        extra_body={"structured_outputs": {"regex": "Let me look\\.\\n" + _escape(CALL)}})
    content, calls, reasons = assemble(stream)
    assert content == "Let me look." and reasons[-1] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris", "days": 2})]


def test_auto_without_a_call_is_content(client):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                          max_completion_tokens=30,
                                          extra_body={"guided_choice": ["It is sunny."]})
    choice = resp.choices[0]
    assert choice.message.content == "It is sunny." and not choice.message.tool_calls
    assert choice.finish_reason == "stop"


def test_tool_choice_none_leaves_the_text_alone(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_completion_tokens=80,
        extra_body={"structured_outputs": {"regex": _escape(CALL)}})
    assert resp.choices[0].message.content == CALL and not resp.choices[0].message.tool_calls


# ---- auto, Llama 3's calls (the answer itself): one that opens with "{" is held ---------------


def llama3_chat(servers, **fields) -> dict:
    r = httpx.post(f"{servers['llama3'].url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": ASK, "tools": TOOLS, "temperature": 1.0, "max_tokens": 60,
        **fields})
    assert r.status_code == 200, r.text
    return {**r.json()["choices"][0], "usage": r.json()["usage"]}


def brace_bias(servers, bias: int) -> dict:
    (brace,) = httpx.post(f"{servers['llama3'].url}/tokenize", timeout=60,
                          json={"prompt": "{", "add_special_tokens": False}).json()["tokens"]
    return {str(brace): bias}


@pytest.mark.parametrize("seed", range(4))
def test_a_llama3_answer_that_opens_with_a_brace_is_calls_to_the_tools(servers, seed):
    """The bias makes the first token "{" (and every "{" the grammar allows after it); the
    rest of the call is the grammar's doing. The stop ends the answer before a second call."""
    choice = llama3_chat(servers, tool_choice="auto", seed=seed, stop=["; "],
                         logit_bias=brace_bias(servers, 100))
    (call,) = choice["message"]["tool_calls"]
    check_call(openai.types.chat.ChatCompletionMessageToolCall.model_validate(call))
    assert choice["message"]["content"] is None


@pytest.mark.parametrize("seed", range(3))
def test_a_llama3_answer_that_opens_with_text_runs_free(servers, seed):
    """Not opening with "{", the answer is text to its last token: the grammar ends nothing."""
    choice = llama3_chat(servers, tool_choice="auto", seed=seed,
                         logit_bias=brace_bias(servers, -100))
    assert choice["message"]["content"] and not choice["message"].get("tool_calls")
    assert choice["finish_reason"] == "length" and choice["usage"]["completion_tokens"] == 60


def _escape(text: str) -> str:
    import re
    return re.escape(text).replace("\\\n", "\\n")


# ---- reasoning -----------------------------------------------------------------------------

THOUGHT = "<think>\nThe user wants weather.\n</think>\n\n"


def test_reasoning_then_a_call(servers):
    client = client_of(servers["reasoning"])
    regex = _escape(THOUGHT + CALL)
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                          max_completion_tokens=120,
                                          extra_body={"structured_outputs": {"regex": regex}})
    msg = resp.choices[0].message
    assert msg.reasoning_content == "\nThe user wants weather.\n"
    assert msg.content is None and msg.tool_calls[0].function.name == "get_weather"
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                            max_completion_tokens=120, stream=True,
                                            extra_body={"structured_outputs": {"regex": regex}})
    reasoning, rest = "", []
    for chunk in stream:
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            rest.append(chunk)
    assert reasoning == "\nThe user wants weather.\n"
    content, calls, reasons = assemble(rest)
    assert content == "" and calls[0]["name"] == "get_weather" and reasons[-1] == "tool_calls"


def test_reasoning_and_content_without_tools(servers):
    client = client_of(servers["reasoning"])
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, max_completion_tokens=60,
        extra_body={"guided_choice": [THOUGHT + "Sunny."]})
    msg = resp.choices[0].message
    assert (msg.reasoning_content, msg.content) == ("\nThe user wants weather.\n", "Sunny.")


def test_thinking_off_in_the_prompt_means_no_reasoning(servers):
    client = client_of(servers["reasoning"])
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK, max_completion_tokens=20,
        extra_body={"guided_choice": ["Sunny."],
                    "chat_template_kwargs": {"enable_thinking": False}})
    msg = resp.choices[0].message
    assert msg.reasoning_content is None and msg.content == "Sunny."


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                  "parameters": {"type": "string"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice"),
    ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages"),
])
def test_bad_tool_fields_are_400_naming_the_field(servers, body, param):
    resp = httpx.post(f"{servers['auto'].url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": ASK, "max_tokens": 4, **body})
    assert error_of(resp, 400)["param"] == param


def test_auto_needs_the_server_flag(servers):
    resp = httpx.post(f"{servers['plain'].url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4})
    err = error_of(resp, 400)
    assert err["param"] == "tool_choice" and "--enable-auto-tool-choice" in err["message"]


def test_engine_is_idle_after_the_tool_requests(engine):
    wait_idle(engine)


# ---- offline: LLM.chat ---------------------------------------------------------------------


def test_llm_chat_renders_tools_and_kwargs_as_transformers_does(hermes_dir):
    from transformers import AutoTokenizer

    from nanovllm import LLM, SamplingParams

    hf = AutoTokenizer.from_pretrained(hermes_dir)
    llm = LLM(str(hermes_dir), num_kv_blocks=64)
    params = SamplingParams(temperature=0, max_tokens=2)
    [one] = llm.chat(CONVERSATION, params, use_tqdm=False, tools=TOOLS)
    assert one.prompt_token_ids == hf.apply_chat_template(
        hf_form(CONVERSATION), tools=TOOLS, add_generation_prompt=True, tokenize=True,
        return_dict=True)["input_ids"]
    both = llm.chat([ASK, ASK], params, use_tqdm=False,
                    chat_template_kwargs={"enable_thinking": False})
    expected = hf.apply_chat_template(ASK, add_generation_prompt=True, enable_thinking=False,
                                      tokenize=True, return_dict=True)["input_ids"]
    assert [o.prompt_token_ids for o in both] == [expected, expected]


def test_each_streamed_choice_has_its_own_calls(client):
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", n=3, seed=21,
                  temperature=1.0, max_completion_tokens=200)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}))
    for choice in whole.choices:
        mine = [c.model_copy(update={"choices": [ch for ch in c.choices
                                                 if ch.index == choice.index]}) for c in chunks]
        content, calls, reasons = assemble(mine)
        assert content == "" and reasons[-1] == "tool_calls"
        assert [(c["name"], c["arguments"]) for c in calls] == \
            [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
