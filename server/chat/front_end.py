"""What the front ends of other APIs over the chat path share (server/api/responses/ for
OpenAI's Responses, server/api/messages/ for Anthropic's Messages): each turns its body into one
chat request (`chat_request`), runs it on the chat path (server/chat/run.py) with the chat
path's refusals naming its own fields (`renaming`), and says the answer (server/chat/result.py)
in its own shape. So both have the chat path's template, tool calling, structured outputs,
sampling, limits and metrics, and no request path of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from nanovllm import InvalidRequestError
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.chat.result import ChatDelta
from nanovllm.server.chat.run import prepare_chat
from nanovllm.server.errors import APIError, describe_validation_error, invalid_request
from nanovllm.server.serving import ServerContext, new_request_id


def chat_request(fields: dict, names: dict[str, str]) -> ChatCompletionRequest:
    """The chat request with these fields (None values left out); what it refuses is a 400
    naming the front end's own field (`names`: chat's field -> the front end's)."""
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        message, param = describe_validation_error(RequestValidationError(exc.errors()))
        raise APIError(message, 400, names.get(param, param)) from None


@contextmanager
def renaming(names: dict[str, str]) -> Iterator[None]:
    """The chat path's refusals (its own, or the engine's) raised inside, naming the front
    end's field (`names`: chat's field -> the front end's)."""
    try:
        yield
    except (APIError, InvalidRequestError) as exc:
        if isinstance(exc, InvalidRequestError):
            exc = invalid_request(exc)
        raise APIError(exc.message, exc.status, names.get(exc.param, exc.param),
                       exc.headers) from exc


async def prompt_tokens(req: ChatCompletionRequest, ctx: ServerContext,
                        names: dict[str, str]) -> int:
    """How many tokens the chat path's prompt for `req` has (checked as if it were to run)."""
    with renaming(names):
        ctx = await ctx.model_for(req.model)
        # Off the event loop: the preparation may compile a tool call's grammar.
        prompt, *_ = await asyncio.to_thread(prepare_chat, req, ctx, new_request_id("count"))
    return len(prompt.prompt_token_ids)


def delta_events(delta: ChatDelta, blocks, reasoning: str, text: str) -> list[str]:
    """A delta as the events of a front end's block builder (its `text(kind, s)`,
    `call(index, id, name)` and `arguments(index, s)`), in the order the answer says them:
    reasoning, text, then each call's start and its arguments. `reasoning` and `text` name the
    builder's kinds for the two kinds of text."""
    events = []
    if delta.reasoning_content:
        events += blocks.text(reasoning, delta.reasoning_content)
    if delta.content:
        events += blocks.text(text, delta.content)
    for call in delta.tool_calls:
        if call.id is not None:
            events += blocks.call(call.index, call.id, call.name or "")
        if call.arguments:
            events += blocks.arguments(call.index, call.arguments)
    return events
