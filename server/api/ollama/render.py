"""The chat path's answer (server/chat/result.py) in Ollama's shape: a message (`content`,
`thinking`, `tool_calls` with arguments as an object) or a generate `response`, with Ollama's
done_reason, token counts and durations (nanoseconds); streamed, as newline-delimited JSON
objects, the last one `done: true` with the counts, an error as one `{"error": ...}` line."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from nanovllm.server.chat.result import ChatAnswer, ChatResult, ChatStream, ToolCall, Usage
from nanovllm.server.errors import APIError
from nanovllm.server.serving import SSEResponse, engine_error

NS = 1_000_000_000


class NDJSONResponse(SSEResponse):
    """Ollama's streams: one JSON object a line (aborted at once if the client leaves)."""

    media_type = "application/x-ndjson"


def line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def created_at(seconds: float | None = None) -> str:
    """Ollama's timestamps: RFC 3339 in UTC."""
    when = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Timing:
    """A request's clock on the route's side, in nanoseconds: its start, and when the first
    answer token reached it (the prompt's evaluation ends there)."""

    start: int = field(default_factory=time.perf_counter_ns)
    first: int | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def durations(self, metrics=None) -> dict:
        """Ollama's durations: the engine's timeline when the answer carries it, else this
        clock's (load_duration 0: a model loaded for the request is not counted)."""
        end = time.perf_counter_ns()
        if metrics is not None and metrics.first_token_time is not None:
            begin = metrics.first_scheduled_time or metrics.arrival_time
            prompt = int((metrics.first_token_time - begin) * NS)
            decode = int(((metrics.last_token_time or metrics.first_token_time)
                          - metrics.first_token_time) * NS)
        else:
            first = self.first if self.first is not None else end
            prompt, decode = first - self.start, end - first
        return {"total_duration": end - self.start, "load_duration": 0,
                "prompt_eval_duration": prompt, "eval_duration": decode}


def done_reason(answer: ChatAnswer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def tool_calls_json(calls: list[ToolCall]) -> list[dict]:
    """Ollama's calls: a function's name and its arguments as an object (the chat path's tool
    parsers hand over only calls whose arguments are a JSON object)."""
    out = []
    for i, call in enumerate(calls):
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = {}
        out.append({"function": {"index": i, "name": call.name, "arguments": arguments}})
    return out


def message_json(answer: ChatAnswer) -> dict:
    message = {"role": "assistant", "content": answer.content or ""}
    if answer.reasoning_content:
        message["thinking"] = answer.reasoning_content
    if answer.tool_calls:
        message["tool_calls"] = tool_calls_json(answer.tool_calls)
    return message


def final_fields(answer: ChatAnswer, usage: Usage, durations: dict) -> dict:
    return {"done": True, "done_reason": done_reason(answer), **durations,
            "prompt_eval_count": usage.prompt_tokens, "eval_count": usage.completion_tokens}


def chat_object(model: str, result: ChatResult, timing: Timing) -> dict:
    answer = result.choices[0]
    return {"model": model, "created_at": created_at(result.created),
            "message": message_json(answer),
            **final_fields(answer, result.usage, timing.durations(result.metrics))}


def generate_object(model: str, result: ChatResult, timing: Timing) -> dict:
    answer = result.choices[0]
    body = {"model": model, "created_at": created_at(result.created),
            "response": answer.content or ""}
    if answer.reasoning_content:
        body["thinking"] = answer.reasoning_content
    return {**body, **final_fields(answer, result.usage, timing.durations(result.metrics))}


# Streamed.


def chat_piece(answer: ChatAnswer) -> dict:
    return {"message": message_json(answer)}


def generate_piece(answer: ChatAnswer) -> dict:
    piece = {"response": answer.content or ""}
    if answer.reasoning_content:
        piece["thinking"] = answer.reasoning_content
    return piece


async def ndjson_lines(model: str, stream: ChatStream, timing: Timing,
                       piece: Callable[[ChatAnswer], dict]) -> AsyncIterator[str]:
    """Each delta's new text as one line (`piece` shapes it: a chat message or a generate
    response); tool calls whole in a line of their own once the answer is done (Ollama sends
    a call only complete); then the final `done: true` line with the counts."""
    whole = ChatAnswer(None)
    try:
        async for delta in stream.deltas:
            timing.token()
            whole.add(delta)
            if delta.reasoning_content or delta.content:
                said = ChatAnswer(delta.content, delta.reasoning_content or None)
                yield line({"model": model, "created_at": created_at(), **piece(said),
                            "done": False})
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        yield line({"error": error.message})
        return
    if whole.tool_calls:
        calls = ChatAnswer(None, tool_calls=whole.tool_calls)
        yield line({"model": model, "created_at": created_at(), **piece(calls), "done": False})
    last = piece(ChatAnswer(None))
    yield line({"model": model, "created_at": created_at(), **last,
                **final_fields(whole, stream.usage, timing.durations())})
