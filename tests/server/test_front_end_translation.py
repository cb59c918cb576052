"""The two front ends' stream translators fed chat streams that the random-weight models cannot
be made to write through them: reasoning, then text, then two tool calls, cut into deltas of
every size. The events must read as each protocol's strict client reads them, and build the
same answer as the unstreamed conversion of the same chat answer."""

from __future__ import annotations

import asyncio

import pytest
from front_end_streams import messages_stream, parse_sse, responses_stream

from nanovllm.server.api.messages.render import content_blocks, message_events, stop_reason
from nanovllm.server.api.responses.protocol import ResponsesRequest
from nanovllm.server.api.responses.render import output_items, response_events
from nanovllm.server.chat.result import (
    ChatAnswer,
    ChatDelta,
    ChatStream,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from nanovllm.server.errors import APIError
from nanovllm.server.models.context import ModelContext
from nanovllm.server.serving import ServerContext

REASONING, TEXT = "The user wants the weather.", "Let me look."
CALLS = [ToolCall("call_1", "get_weather", '{"city": "Paris", "days": 2}'),
         ToolCall("call_2", "get_time", '{"zone": "CET"}')]
USAGE = Usage(7, 30, 0)


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def chat_stream(size: int, finish_reason: str = "stop") -> list[ChatDelta]:
    """What the chat path streams for the answer above."""
    deltas = [ChatDelta(reasoning_content=p) for p in pieces(REASONING, size)]
    deltas += [ChatDelta(content=p) for p in pieces(TEXT, size)]
    for i, call in enumerate(CALLS):
        deltas.append(ChatDelta(tool_calls=[ToolCallDelta(i, "", call.id, call.name)]))
        deltas += [ChatDelta(tool_calls=[ToolCallDelta(i, p)]) for p in pieces(call.arguments, size)]
    return [*deltas, ChatDelta(finish_reason=finish_reason)]


def translated(translator, deltas: list[ChatDelta], error: APIError | None = None
               ) -> list[tuple[str, dict]]:
    async def source():
        for delta in deltas:
            yield delta
        if error is not None:
            raise error

    async def run() -> list[str]:
        stream = ChatStream("chatcmpl-abc", 0, USAGE, source())
        return [e async for e in translator(stream)]

    return parse_sse("".join(asyncio.run(run())).splitlines())


ANSWER = ChatAnswer(TEXT, REASONING, CALLS, "stop")


def without_ids(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_responses_events_build_the_unstreamed_output(size):
    ctx = ServerContext(None, None, model=ModelContext(None, "m", "m"))
    body = ResponsesRequest(input="x", stream=True)
    events = translated(lambda e: response_events(body, ctx, [], 0, e), chat_stream(size))
    final = responses_stream(events)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call",
                                                    "function_call"]
    assert without_ids(final["output"]) == without_ids(output_items(ANSWER, body))
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 30
    assert ctx.response_store.get(final["id"]).response == final  # stored, as store says


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_messages_events_build_the_unstreamed_content(size):
    events = translated(lambda e: message_events("m", e), chat_stream(size))
    message = messages_stream(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use",
                                                       "tool_use"]
    assert message["content"] == content_blocks(ANSWER)
    assert (message["stop_reason"], message["stop_sequence"]) == stop_reason(ANSWER) == \
        ("tool_use", None)
    assert message["usage"] == {"input_tokens": 7, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 0, "output_tokens": 30}


def test_an_error_in_the_chat_stream_ends_each_protocols_stream():
    head = chat_stream(1000)[:2]
    error = APIError("The engine is dead.", 503)
    events = translated(lambda e: response_events(ResponsesRequest(input="x"),
                                                  ServerContext(None, None, model=ModelContext(None, "m", "m")), [], 0, e),
                        head, error)
    names = [n for n, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    assert events[-1][1]["response"]["error"]["message"] == "The engine is dead."
    events = translated(lambda e: message_events("m", e), head, error)
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "api_error", "message": "The engine is dead."}})
