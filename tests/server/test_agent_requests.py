"""The requests the coding agents send, recorded from the real CLIs (fixtures/agents/: Claude
Code's `claude -p` on /v1/messages, Codex's `codex exec` on /v1/responses, opencode's `opencode
run` on /v1/chat/completions), replayed unchanged against the real server: a change that
breaks one of them is caught without npm.

Each fixture holds one conversation's bodies in order (its first turn, the next turn of the
same conversation, and a turn that sends a tool's result back: Codex's also one of a namespaced
tool), with the headers the client sends; the later bodies carry the first one's `tools`
unchanged, stored once ("same as first"). Machine paths and ids were replaced; nothing else.

The checkpoint is a random Qwen3 with GPT-2's vocabulary (Claude Code's prompt is about 21,000
tokens, as with Qwen3's own) whose answers end after a few tokens: these clients ask for 32,000
tokens, or none."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from chat_checkpoints import write_terse_qwen3
from front_end_streams import messages_stream, parse_sse, responses_stream
from server_helpers import make_engine, serve, wait_idle

from nanovllm.server.app import build_app

pytestmark = pytest.mark.slow  # a 21,000-token prompt, prefilled on a CPU

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
CLIENTS = ("claude_code", "codex", "opencode")
CONTEXT = 65_536  # Claude Code's prompt and the 32,000 tokens it asks for


def fixture(client: str) -> dict:
    return json.loads((FIXTURES / f"{client}.json").read_text())


def body(recorded: dict, turn: str) -> dict:
    sent = dict(recorded["bodies"][turn])
    if sent.get("tools") == "same as first":
        sent["tools"] = recorded["bodies"]["first"]["tools"]
    return sent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = make_engine(write_terse_qwen3(tmp_path_factory, CONTEXT), num_kv_blocks=8192,
                         max_model_len=CONTEXT)
    srv = serve(build_app(engine, served_model_name="tiny", tool_call_parser="hermes",
                          reasoning_parser="qwen3"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


def replay(server, client: str, turn: str) -> dict:
    """The recorded request, sent as recorded; returns what the client reads at the end: the
    final message (Messages), the final response (Responses), or the usage chunk (chat)."""
    recorded = fixture(client)
    with httpx.stream(recorded["method"], server.url + recorded["path"],
                      json=body(recorded, turn), headers=recorded["headers"],
                      timeout=300) as response:
        assert response.status_code == 200, response.read().decode()
        lines = list(response.iter_lines())
    if client == "claude_code":
        events = parse_sse(lines)
        return {"message": messages_stream(events), "usage": _messages_usage(events)}
    if client == "codex":
        return responses_stream(parse_sse(lines))
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return json.loads(data[-2])  # stream_options.include_usage: the usage chunk


def _messages_usage(events) -> dict:
    """The usage Claude Code keeps: message_start's, updated by message_delta's."""
    start = next(d for n, d in events if n == "message_start")["message"]["usage"]
    delta = next(d for n, d in events if n == "message_delta")["usage"]
    return {**start, **{k: v for k, v in delta.items() if v is not None}}


def cached_and_prompt(client: str, answer: dict) -> tuple[int, int]:
    """(prompt tokens read from the prefix cache, all prompt tokens), as the client reads them."""
    if client == "claude_code":
        usage = answer["usage"]  # Anthropic's: input_tokens is net of the cache reads
        cached = usage["cache_read_input_tokens"]
        return cached, usage["input_tokens"] + cached
    if client == "codex":
        usage = answer["usage"]
        return usage["input_tokens_details"]["cached_tokens"], usage["input_tokens"]
    usage = answer["usage"]
    return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_clients_first_turn_is_answered(server, client):
    answer = replay(server, client, "first")
    if client == "claude_code":
        assert answer["message"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    elif client == "codex":
        assert answer["status"] in ("completed", "incomplete")
    else:
        assert answer["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("client", CLIENTS)
def test_a_continued_conversation_reads_its_prefix_from_the_cache(server, client):
    first = cached_and_prompt(client, replay(server, client, "first"))
    cached, prompt = cached_and_prompt(client, replay(server, client, "continued"))
    # All of the first turn's prompt but the few tokens of its last block and generation prompt.
    assert first[1] - 64 <= cached < prompt, (first, cached, prompt)


@pytest.mark.parametrize(("client", "turn"), [
    ("claude_code", "tool_result"), ("codex", "tool_result"), ("codex", "namespace_tool_result"),
    ("opencode", "tool_result"), ("opencode", "title")])
def test_a_clients_later_turns_are_answered(server, client, turn):
    replay(server, client, turn)


def test_claude_codes_billing_line_stays_out_of_the_prompt(server):
    """Each conversation's system prompt starts with a line of its own (a billing header);
    a new conversation still reads the system prompt and the tools from the cache."""
    recorded = fixture("claude_code")
    lines = {turn: body(recorded, turn)["system"][0]["text"] for turn in ("first", "tool_result")}
    assert lines["first"] != lines["tool_result"]
    assert all(line.startswith("x-anthropic-billing-header:") for line in lines.values())
    first = cached_and_prompt("claude_code", replay(server, "claude_code", "first"))
    cached, _ = cached_and_prompt("claude_code", replay(server, "claude_code", "tool_result"))
    assert cached >= 0.9 * first[1], (cached, first)
