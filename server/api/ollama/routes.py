"""Ollama's API (its docs/api.md), a front end over the chat path (server/chat/front_end.py,
server/chat/run.py) and the pooling path, beside OpenAI's and Anthropic's:

- POST /api/chat: `messages` (a tool result's `tool_name`, an assistant's `tool_calls` and
  `thinking`; images refused), `tools`, `format` ("json" or a JSON schema: a structured
  output), `think` (the template's thinking switch; the answer's `message.thinking` is the
  reasoning parser's), `options` (options.py), streamed as NDJSON unless `stream` is false.
- POST /api/generate: `prompt` and `system` through the chat template; an empty prompt only
  "loads" the model. `raw`, `template`, `suffix`, `context` and `images` are refused.
- embed.py: /api/embed and /api/embeddings; models.py: /api/tags, /api/show, /api/ps,
  /api/version.

`model` names a served model (Ollama's ":latest" tag allowed; `keep_alive`: models.py).
Errors under /api have Ollama's shape, {"error": "..."} (errors.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanovllm.server.api.ollama import embed, models
from nanovllm.server.api.ollama.errors import OLLAMA_ERRORS
from nanovllm.server.api.ollama.models import keep_alive, model_name
from nanovllm.server.api.ollama.options import (
    CHAT_NAMES,
    response_format,
    sampling_fields,
    thinking_switch,
)
from nanovllm.server.api.ollama.protocol import ChatRequest, GenerateRequest, OllamaRequest
from nanovllm.server.api.ollama.render import (
    NDJSONResponse,
    Timing,
    chat_object,
    chat_piece,
    created_at,
    generate_object,
    generate_piece,
    ndjson_lines,
)
from nanovllm.server.api.spec import APISpec
from nanovllm.server.chat.front_end import chat_request, renaming
from nanovllm.server.chat.run import chat_result, chat_stream, start_chat
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.serving import Ctx, ServerContext

MESSAGE_KEYS = ("role", "content", "images", "tool_calls", "tool_name", "thinking")
# /api/generate fields this server cannot honour: each would change the answer.
GENERATE_REFUSED = {
    "raw": "raw prompts are not supported here; send the prompt through the chat template "
           "(raw: false) or use POST /v1/completions",
    "template": "Ollama's Go templates are not run here; the model's chat template is "
                "(--chat-template)",
    "suffix": "this model cannot fill in the middle",
    "context": "the context of an earlier answer is not kept; send the conversation to "
               "/api/chat",
    "images": "this model reads only text",
}

router = APIRouter()
router.include_router(embed.router)
router.include_router(models.router)


@router.post("/api/chat")
async def chat(body: ChatRequest, raw: Request, ctx: Ctx) -> Response:
    """Ollama's chat over the chat path (see the module's docstring)."""
    ctx = await ctx.model_for(model_name(body.model), keep_alive(body.keep_alive))
    fields = {**common_fields(body, ctx), "messages": chat_messages(body.messages),
              "tools": body.tools}
    return await answer(body, fields, raw, ctx, chat_object, chat_piece)


@router.post("/api/generate")
async def generate(body: GenerateRequest, raw: Request, ctx: Ctx) -> Response:
    """Ollama's generate: the prompt (and system prompt) as one chat turn."""
    for name, why in GENERATE_REFUSED.items():
        if getattr(body, name):
            raise bad_request(f"`{name}` is not supported: {why}.", name)
    ctx = await ctx.model_for(model_name(body.model), keep_alive(body.keep_alive))
    if not body.prompt:  # Ollama's way to load (or, with keep_alive 0, unload) a model
        return JSONResponse({"model": body.model, "created_at": created_at(), "response": "",
                             "done": True, "done_reason": "load"})
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
        [{"role": "user", "content": body.prompt}]
    fields = {**common_fields(body, ctx), "messages": messages}
    return await answer(body, fields, raw, ctx, generate_object, generate_piece)


async def answer(body: OllamaRequest, fields: dict, raw: Request, ctx: ServerContext,
                 whole, piece) -> Response:
    """Runs the chat request; the answer whole (`whole` renders it) or as NDJSON lines
    (`piece` shapes each)."""
    timing = Timing()
    with ollama_names():
        run = await start_chat(chat_request(fields, CHAT_NAMES), ctx)
    if body.stream:
        return NDJSONResponse(ndjson_lines(body.model, chat_stream(run), timing, piece),
                              on_close=run.stream.close)
    with ollama_names():
        result = await chat_result(raw, run)
    if result is None:  # the client left
        return JSONResponse({}, status_code=499)
    return JSONResponse(whole(body.model, result, timing))


@contextmanager
def ollama_names() -> Iterator[None]:
    """The chat path's refusals naming this API's field, in the message too (Ollama's errors
    are a message only)."""
    try:
        with renaming(CHAT_NAMES):
            yield
    except APIError as exc:
        message = exc.message
        for chat, ours in CHAT_NAMES.items():
            message = message.replace(f"`{chat}`", f"`{ours}`")
        raise APIError(message, exc.status, exc.param, exc.headers) from exc


def common_fields(body: OllamaRequest, ctx: ServerContext) -> dict:
    body.check_fields(ctx.ignored_fields)
    return {"model": model_name(body.model),
            **sampling_fields(body.options, ctx.engine.max_model_len, ctx.ignored_fields),
            "response_format": response_format(body.format),
            "chat_template_kwargs": thinking_switch(body.think, ctx.reasoning_parser),
            "stream": body.stream}


def chat_messages(messages: list[dict[str, Any]]) -> list[dict]:
    """Ollama's messages as chat messages: a tool result's `tool_name` is its `name`, an
    assistant's `thinking` its reasoning_content; images are refused."""
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object.", "messages")
        if unknown := sorted(k for k in msg if k not in MESSAGE_KEYS and msg[k] is not None):
            raise bad_request(f"{where}.{unknown[0][:50]} is not supported.", "messages")
        if msg.get("images"):
            raise bad_request(f"{where}.images: this model reads only text.", "messages")
        if msg.get("content") is not None and not isinstance(msg["content"], str):
            raise bad_request(f"{where}.content must be a string.", "messages")
        entry = {"role": msg.get("role"), "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            entry["tool_calls"] = msg["tool_calls"]
        if msg.get("tool_name") is not None:
            entry["name"] = msg["tool_name"]
        if msg.get("thinking") is not None:
            entry["reasoning_content"] = msg["thinking"]
        out.append(entry)
    return out


API = APISpec(router, paths=("/api",), errors=OLLAMA_ERRORS,
              generating=("/api/chat", "/api/generate"))
