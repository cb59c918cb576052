"""What coding agents send beyond the basics, on a random Qwen3 carrying Qwen3's own template
(`--reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser hermes`), over HTTP:

- the field policy (server/field_policy.py): housekeeping accepted, what would change the
  answer refused in the API's own words, a field nobody decided taking its API's default;
- Anthropic's Messages as Claude Code uses it: `thinking` on the template's switch with its
  budget enforced, system messages inside `messages` rendered in place, the per-request
  billing line kept out of the prompt, cache reads in the usage as Anthropic counts them, and
  a too-long request refused in Anthropic's words (Claude Code reads them to retry);
- OpenAI's Responses as Codex uses it: `client_metadata`, `include`, `reasoning`, namespace
  tools (flattened for the template, answered with their `namespace`), hosted tools left out;
- tool_choice "auto" held to the tools' schemas once the model opens a call."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from chat_checkpoints import write_qwen3_chat
from server_helpers import make_engine, serve, wait_idle
from tool_specs import TIME, weather_tool

from nanovllm.server.app import build_app

MODEL = "tiny-qwen3"
WEATHER = weather_tool({"enum": ["Paris", "Rome"]})
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;"
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return write_qwen3_chat(tmp_path_factory)


@pytest.fixture(scope="module")
def server(qwen3_dir):
    engine = make_engine(qwen3_dir, num_kv_blocks=512)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes",
                          reasoning_parser="qwen3"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def hf_tokenizer(qwen3_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen3_dir)


def message(http, **fields) -> dict:
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": ASK,
                                        **fields})
    assert r.status_code == 200, r.text
    return r.json()


def anthropic_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return body["error"]["message"]


def count(http, **fields) -> int:
    r = http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": ASK, **fields})
    assert r.status_code == 200, r.text
    return r.json()["input_tokens"]


def token_id(http, text: str) -> int:
    (tid,) = http.post("/tokenize", json={"prompt": text}).json()["tokens"]
    return tid


# ---- the field policy -------------------------------------------------------------------------


def test_messages_housekeeping_and_undecided_fields_are_accepted(http):
    message(http, context_management={"edits": [{"type": "clear_thinking_20251015",
                                                  "keep": "all"}]},
            output_config={"effort": "high"}, diagnostics={"cache": True},
            a_field_of_next_year={"anything": 1})


@pytest.mark.parametrize("field", ["container", "mcp_servers"])
def test_messages_refuses_what_it_cannot_honour_naming_the_field(http, field):
    text = anthropic_error(http.post("/v1/messages", json={
        "model": MODEL, "max_tokens": 8, "messages": ASK, field: "x"}))
    assert text.startswith(f"{field}: ")


def test_responses_housekeeping_and_undecided_fields_are_accepted(http):
    r = http.post("/v1/responses", json={
        "model": MODEL, "input": "Hi", "max_output_tokens": 4, "store": False,
        "client_metadata": {"session_id": "s"}, "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low", "summary": "auto"}, "prompt_cache_key": "k",
        "a_field_of_next_year": 1})
    assert r.status_code == 200, r.text
    assert r.json()["reasoning"] == {"effort": "low", "summary": "auto"}


@pytest.mark.parametrize("field", ["conversation", "prompt"])
def test_responses_refuses_what_it_cannot_honour_naming_the_field(http, field):
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", field: {"id": "x"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_chat_still_refuses_a_field_nobody_decided(http):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK,
                                                "a_field_of_next_year": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "a_field_of_next_year"


# ---- Claude Code on /v1/messages --------------------------------------------------------------


def test_a_system_message_inside_messages_is_rendered_in_place(http, hf_tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Agents: x."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Go"}]
    expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
    assert count(http, messages=messages) == len(expected)


def test_the_billing_line_is_not_part_of_the_prompt(http):
    terse = {"type": "text", "text": "You are terse."}
    assert count(http, system=[{"type": "text", "text": BILLING}, terse]) == \
        count(http, system=[terse])


def test_cache_reads_are_reported_as_anthropic_counts_them(http):
    fields = {"system": "You answer questions about the cache, in the cache's own words.",
              "temperature": 0}
    first = message(http, **fields)["usage"]
    again = message(http, **fields)["usage"]
    prompt = first["input_tokens"] + first["cache_read_input_tokens"]
    assert again["cache_read_input_tokens"] >= 16
    assert again["input_tokens"] + again["cache_read_input_tokens"] == prompt
    assert again["cache_creation_input_tokens"] == 0


def test_a_streamed_message_reports_cache_reads_in_its_usage(http):
    fields = {"system": "You stream answers about the cache.", "max_tokens": 4}
    message(http, **fields)
    with http.stream("POST", "/v1/messages", json={"model": MODEL, "messages": ASK,
                                                   "stream": True, **fields}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert usage["cache_read_input_tokens"] >= 16 and usage["input_tokens"] >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_thinking_budget_closes_the_reasoning_after_that_many_tokens(http, hf_tokenizer,
                                                                       stream):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 30, "temperature": 1.0,
            "thinking": {"type": "enabled", "budget_tokens": 5}}
    if stream:
        with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data")]
        thinking = "".join(e["delta"].get("thinking", "") for e in events
                           if e["type"] == "content_block_delta")
        kinds = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    else:
        r = http.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        blocks = r.json()["content"]
        kinds = [b["type"] for b in blocks]
        thinking = blocks[0].get("thinking", "")
    assert kinds[0] == "thinking" and len(kinds) >= 2, kinds
    # The reasoning's own tokens (the tags around it are the template's, not the budget's).
    assert 1 <= len(hf_tokenizer(thinking.strip())["input_ids"]) <= 5 + 2, thinking


def test_a_chat_thinking_budget_closes_the_reasoning(http):
    """thinking_token_budget on the chat path itself (the field Messages' budget becomes)."""
    def reasoning(**budget) -> str:
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "seed": 3,
                                                    "temperature": 1.0, "max_tokens": 24,
                                                    **budget})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["reasoning_content"] or ""

    assert len(reasoning(thinking_token_budget=3)) < len(reasoning(thinking_token_budget=12))


@pytest.mark.parametrize(("thinking", "error"), [
    ({"type": "sometimes"}, "thinking.type: "),
    ({"type": "enabled"}, "thinking.enabled.budget_tokens: "),
    ({"type": "enabled", "budget_tokens": 8}, "`max_tokens` must be greater than "
                                              "`thinking.budget_tokens`")])
def test_a_thinking_the_server_cannot_do_is_refused_in_anthropics_words(http, thinking, error):
    text = anthropic_error(http.post("/v1/messages", json={
        "model": MODEL, "max_tokens": 8, "messages": ASK, "thinking": thinking}))
    assert text.startswith(error), text


@pytest.mark.parametrize("kind", ["adaptive", "disabled"])
def test_adaptive_and_disabled_thinking_reach_the_template(http, kind):
    on = count(http, thinking={"type": "adaptive"})
    off = count(http, thinking={"type": "disabled"})
    assert off > on  # Qwen3's template closes an empty think block when thinking is off
    message(http, thinking={"type": kind})


def test_too_long_a_request_is_refused_in_anthropics_words(http):
    text = anthropic_error(http.post("/v1/messages", json={"model": MODEL, "max_tokens": 5000,
                                                          "messages": ASK}))
    found = re.match(r"input length and `max_tokens` exceed context limit: (\d+) \+ 5000 > "
                     r"2048, decrease input length or `max_tokens` and try again", text)
    assert found and int(found[1]) == count(http), text


# ---- Codex on /v1/responses -------------------------------------------------------------------

NAMESPACE = {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [
    {"type": "function", "name": "close_agent", "description": "Close one.", "strict": False,
     "parameters": {"type": "object", "properties": {"target": {"enum": ["a1", "a2"]}},
                    "required": ["target"], "additionalProperties": False}}]}


def response(http, **fields) -> dict:
    r = http.post("/v1/responses", json={"model": MODEL, "max_output_tokens": 40,
                                         "store": False, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_namespaced_tool_is_called_with_its_namespace(http):
    # reasoning effort "none": thinking off, so the call is the answer's first token on
    out = response(http, input="Close a1", tools=[NAMESPACE], tool_choice="required",
                   reasoning={"effort": "none"})
    (call,) = [item for item in out["output"] if item["type"] == "function_call"]
    assert call["namespace"] == "agents" and call["name"] == "close_agent"
    assert json.loads(call["arguments"])["target"] in ("a1", "a2")
    answered = {"type": "function_call_output", "call_id": call["call_id"], "output": "closed"}
    response(http, input=[{"role": "user", "content": "Close a1"}, call, answered],
             tools=[NAMESPACE])


def test_hosted_tools_are_left_out_of_the_prompt(http):
    with_hosted = response(http, input="Hi", tools=[{"type": "web_search"}, TIME_RESPONSES])
    without = response(http, input="Hi", tools=[TIME_RESPONSES])
    assert with_hosted["usage"]["input_tokens"] == without["usage"]["input_tokens"]


TIME_RESPONSES = {"type": "function", **TIME["function"]}


# ---- tool_choice auto: a call the model opens is held to the tools' schemas -------------------


@pytest.mark.parametrize("seed", range(4))
def test_a_call_the_model_opens_is_held_to_the_tools_schemas(http, seed):
    r = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "auto",
        "chat_template_kwargs": {"enable_thinking": False}, "seed": seed, "temperature": 1.0,
        "max_tokens": 80, "logit_bias": {str(token_id(http, "<tool_call>")): 100},
        "stop": ["</tool_call>"]})
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    args = json.loads(call["function"]["arguments"])
    name = call["function"]["name"]
    assert (name, set(args)) in (("get_weather", {"city", "days"}), ("get_time", {"zone"}))
    assert args.get("city", "Paris") in ("Paris", "Rome") and 1 <= args.get("days", 1) <= 7
    assert args.get("zone", "UTC") in ("CET", "UTC")
