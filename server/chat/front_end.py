"""What the front ends of other APIs share (server/api/responses/routes.py for OpenAI's Responses,
server/api/messages/routes.py for Anthropic's Messages): each turns its body into one chat
request, hands it to the chat endpoint itself, and reads the chat answer back (`ChatAnswer`, or
a stream of `Piece`s) to say it in its own shape. So both have the chat path's template, tool
calling, structured outputs, sampling, limits and metrics, and no request path of their own.

The chat endpoint is handed to them as a ChatPath by server/api/table.py (endpoint
modules never import each other).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from nanovllm import InvalidRequestError, SamplingParams
from nanovllm.server.chat.output import OutputRules
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.errors import APIError, describe_validation_error, invalid_request
from nanovllm.server.serving import ServerContext, new_request_id
from nanovllm.values.request import EngineRequest


@dataclass(frozen=True, slots=True)
class ChatPath:
    """The chat endpoint's two entries: its handler (body, raw request, context -> its HTTP
    answer), and its preparation (body, context, request id -> the checked engine request
    first, then its sampling parameters and how its answer is read; nothing submitted): what a
    token count needs."""

    respond: Callable[[ChatCompletionRequest, Request, ServerContext], Awaitable[Response]]
    prepare: Callable[[ChatCompletionRequest, ServerContext, str],
                      tuple[EngineRequest, SamplingParams, OutputRules]]


def chat_request(fields: dict, names: dict[str, str]) -> ChatCompletionRequest:
    """The chat request with these fields (None values left out); what it refuses is a 400
    naming the front end's own field (`names`: chat's field -> the front end's)."""
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        message, param = describe_validation_error(RequestValidationError(exc.errors()))
        raise APIError(message, 400, names.get(param, param)) from None


async def ask_chat(chat: ChatPath, req: ChatCompletionRequest, raw: Request,
                   ctx: ServerContext, names: dict[str, str]) -> Response:
    """The chat endpoint's answer to `req`: a JSONResponse, or an SSEResponse when streamed.
    Its refusals name the front end's field."""
    try:
        return await chat.respond(req, raw, ctx)
    except (APIError, InvalidRequestError) as exc:
        raise renamed(exc, names) from exc


async def prompt_tokens(chat: ChatPath, req: ChatCompletionRequest, ctx: ServerContext,
                        names: dict[str, str]) -> int:
    """How many tokens the chat path's prompt for `req` has (checked as if it were to run)."""
    try:
        # Off the event loop: the preparation may compile a tool call's grammar.
        prompt, *_ = await asyncio.to_thread(chat.prepare, req, ctx, new_request_id("count"))
    except (APIError, InvalidRequestError) as exc:
        raise renamed(exc, names) from exc
    return len(prompt.prompt_token_ids)


def renamed(exc: APIError | InvalidRequestError, names: dict[str, str]) -> APIError:
    """The chat path's refusal (its own, or the engine's) naming the front end's field."""
    if isinstance(exc, InvalidRequestError):
        exc = invalid_request(exc)
    return APIError(exc.message, exc.status, names.get(exc.param, exc.param), exc.headers)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the chat path wrote it


@dataclass(slots=True)
class ChatAnswer:
    """One chat choice, read back: what every front end says in its own shape."""

    id: str  # the chat completion's ("chatcmpl-<hex>")
    reasoning: str = ""
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM's: the stop string or token id that ended it
    usage: dict = field(default_factory=dict)  # chat's: prompt_tokens, completion_tokens, ...

    @property
    def hex_id(self) -> str:
        """The id's unique part, which each front end prefixes its own way."""
        return self.id.partition("-")[2] or self.id

    @property
    def cached_tokens(self) -> int:
        return (self.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


def chat_answer(response: JSONResponse) -> ChatAnswer:
    """The (only) choice of a non-streamed chat completion."""
    body = json.loads(response.body)
    choice = body["choices"][0]
    message = choice["message"]
    calls = [ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
             for c in message.get("tool_calls") or []]
    return ChatAnswer(body["id"], _reasoning(message) or "", message.get("content") or "", calls,
                      choice.get("finish_reason"), choice.get("stop_reason"), body["usage"])


def _reasoning(message: dict) -> str | None:
    """A reasoning parser's text (vLLM's `reasoning_content`, or its newer `reasoning`)."""
    return message.get("reasoning_content") or message.get("reasoning")


@dataclass(slots=True)
class Piece:
    """What a streamed chat chunk says, one thing at a time: "start" (the stream is open; the
    prompt's usage is known), "reasoning" or "text" (`text` is new), "call" (tool call `index`
    begins: `call_id`, `name`) and "arguments" (`text` continues call `index`'s JSON)."""

    kind: str
    text: str = ""
    index: int = 0
    call_id: str = ""
    name: str = ""


class ChatStreamError(Exception):
    """The chat stream ended with an error event (its OpenAI-shaped error object)."""

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


async def chat_pieces(events: AsyncIterator[str], answer: ChatAnswer) -> AsyncIterator[Piece]:
    """The chat endpoint's stream (`data: {chunk}` events, with continuous usage) as Pieces,
    accumulating it into `answer` (complete once the stream is); raises ChatStreamError."""
    started = False
    async with aclosing(events):
        async for event in events:
            data = event.removeprefix("data: ").rstrip("\n")
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise ChatStreamError(chunk["error"])
            answer.id = chunk["id"]
            answer.usage = chunk.get("usage") or answer.usage
            if not started:
                started = True
                yield Piece("start")
            for choice in chunk["choices"]:
                for piece in _delta_pieces(choice["delta"], answer):
                    yield piece
                if choice.get("finish_reason") is not None:
                    answer.finish_reason = choice["finish_reason"]
                    answer.stop_reason = choice.get("stop_reason")


def _delta_pieces(delta: dict, answer: ChatAnswer) -> list[Piece]:
    pieces = []
    if reasoning := _reasoning(delta):
        answer.reasoning += reasoning
        pieces.append(Piece("reasoning", reasoning))
    if text := delta.get("content"):
        answer.text += text
        pieces.append(Piece("text", text))
    for call in delta.get("tool_calls") or []:
        index, function = call["index"], call.get("function") or {}
        if index >= len(answer.tool_calls):  # a call's first delta: id and name
            answer.tool_calls.append(ToolCall(call["id"], function.get("name", ""), ""))
            pieces.append(Piece("call", index=index, call_id=call["id"],
                                name=function.get("name", "")))
        if arguments := function.get("arguments"):
            answer.tool_calls[index].arguments += arguments
            pieces.append(Piece("arguments", arguments, index=index))
    return pieces


def piece_events(piece: Piece, blocks, reasoning: str, text: str):
    """A reasoning, text, call or arguments piece as the events of a front end's block builder
    (its `text(kind, s)`, `call(index, id, name)` and `arguments(index, s)`); `reasoning` and
    `text` name the builder's kinds for the two kinds of text."""
    if piece.kind in ("reasoning", "text"):
        return blocks.text(reasoning if piece.kind == "reasoning" else text, piece.text)
    if piece.kind == "call":
        return blocks.call(piece.index, piece.call_id, piece.name)
    return blocks.arguments(piece.index, piece.text)


def named_event(name: str, data: dict) -> str:
    """One server-sent event with its name (`event:`), as both APIs send them."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
