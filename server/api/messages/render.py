"""The chat path's answer (server/chat/result.py) as Anthropic's Messages: content blocks
(`thinking` with a reasoning parser, `text`, `tool_use`) with Anthropic's stop reasons;
streamed, as Anthropic's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from nanovllm.server.api.messages.errors import anthropic_error
from nanovllm.server.chat.front_end import delta_events
from nanovllm.server.chat.result import ChatAnswer, ChatResult, ChatStream, Usage
from nanovllm.server.errors import APIError
from nanovllm.server.serving import named_event

# The answer, as a message.


def stop_reason(answer: ChatAnswer) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for how the chat answer ended."""
    if answer.tool_calls:
        return "tool_use", None
    if answer.finish_reason == "length":
        return "max_tokens", None
    if isinstance(answer.stop_reason, str):  # one of the request's stop_sequences
        return "stop_sequence", answer.stop_reason
    return "end_turn", None


def tool_input(arguments: str) -> dict:
    """A call's arguments as the object Anthropic's `input` is (the chat path's tool parsers
    hand over only calls whose arguments are a JSON object)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(answer: ChatAnswer) -> list[dict]:
    blocks = [{"type": "thinking", "thinking": answer.reasoning_content, "signature": ""}] \
        if answer.reasoning_content else []
    if answer.content:
        blocks.append({"type": "text", "text": answer.content})
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c.arguments)}
               for c in answer.tool_calls]
    return blocks


def usage_json(usage: Usage) -> dict:
    """Anthropic's counts: `input_tokens` are the prompt's tokens the prefix cache did not
    hold, `cache_read_input_tokens` those it did (Claude Code prices and shows them so)."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": usage.cached_tokens,
            "output_tokens": usage.completion_tokens}


def message_object(model: str, result: ChatResult) -> dict:
    answer = result.choices[0]
    reason, sequence = stop_reason(answer)
    return {"id": f"msg_{result.hex_id}", "type": "message", "role": "assistant", "model": model,
            "content": content_blocks(answer), "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage_json(result.usage)}


# Streamed: Anthropic's events.


class StreamedBlocks:
    """The content blocks of a streamed message as they grow: one block open at a time (a
    thinking, a text or a tool_use block); a new kind of piece closes it and opens the next."""

    def __init__(self) -> None:
        self.count = 0
        self._open: str | None = None  # the open block's type
        self._calls: dict[int, int] = {}  # chat's tool call index -> its block index

    def text(self, kind: str, delta: str) -> list[str]:
        events = []
        if self._open != kind:
            events += self.close()
            events.append(self._start({"type": "thinking", "thinking": "", "signature": ""}
                                      if kind == "thinking" else {"type": "text", "text": ""}))
        delta = {"type": "thinking_delta", "thinking": delta} if kind == "thinking" \
            else {"type": "text_delta", "text": delta}
        return [*events, self._delta(self.count - 1, delta)]

    def call(self, index: int, call_id: str, name: str) -> list[str]:
        events = self.close()
        events.append(self._start({"type": "tool_use", "id": call_id, "name": name,
                                   "input": {}}))
        self._calls[index] = self.count - 1
        return events

    def arguments(self, index: int, delta: str) -> list[str]:
        return [self._delta(self._calls[index], {"type": "input_json_delta",
                                                 "partial_json": delta})]

    def close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [named_event("content_block_stop", {"type": "content_block_stop",
                                                   "index": self.count - 1})]

    def _start(self, block: dict) -> str:
        self._open = block["type"]
        self.count += 1
        return named_event("content_block_start", {"type": "content_block_start",
                                                   "index": self.count - 1,
                                                   "content_block": block})

    @staticmethod
    def _delta(index: int, delta: dict) -> str:
        return named_event("content_block_delta", {"type": "content_block_delta",
                                                   "index": index, "delta": delta})


async def message_events(model: str, stream: ChatStream) -> AsyncIterator[str]:
    """Anthropic's event sequence: message_start (the prompt's usage), a ping, each content
    block (content_block_start, its deltas, content_block_stop), message_delta (the stop
    reason and output tokens), message_stop; after an error, one error event ends it."""
    answer = ChatAnswer(None)
    blocks = StreamedBlocks()
    yield named_event("message_start", {"type": "message_start", "message": {
        "id": f"msg_{stream.hex_id}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": usage_json(stream.usage)}})
    yield named_event("ping", {"type": "ping"})
    try:
        async for delta in stream.deltas:
            answer.add(delta)
            for e in delta_events(delta, blocks, "thinking", "text"):
                yield e
    except APIError as exc:
        yield named_event("error", anthropic_error(exc.message, exc.status)[1])
        return
    for e in blocks.close():
        yield e
    reason, sequence = stop_reason(answer)
    yield named_event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": reason, "stop_sequence": sequence}, "usage": usage_json(stream.usage)})
    yield named_event("message_stop", {"type": "message_stop"})
