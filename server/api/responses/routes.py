"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API, a front end
over the chat path (server/chat/front_end.py).

A request becomes one chat request: `instructions` a system message, `input` items messages
(`function_call` items an assistant's tool calls, `function_call_output` items tool messages),
`text.format` the chat's `response_format`, `max_output_tokens` its `max_completion_tokens`.
The chat answer comes back as output items: `reasoning` (with a reasoning parser), `message`
(output_text) and `function_call`s; streamed, as OpenAI's events, each with the next
`sequence_number`. With `store` (OpenAI's default) the response is kept (server/api/responses/store.py)
for `previous_response_id` and GET; its context and output become a continuing request's first
items.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanovllm.server.api.responses.protocol import ResponsesRequest
from nanovllm.server.api.responses.render import output_items, response_events, response_object
from nanovllm.server.api.responses.store import ResponseStore, StoredResponse
from nanovllm.server.api.responses.tools import (
    chat_tools,
    check_include,
    flat_name,
    reasoning_kwargs,
)
from nanovllm.server.api.spec import APISpec
from nanovllm.server.chat.front_end import chat_request, renaming
from nanovllm.server.chat.run import chat_result, chat_stream, start_chat
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.field_policy import IgnoredFields
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import Ctx, ServerContext, streamed
from nanovllm.values.errors import quote

# The chat request's fields, as this API calls them (for the errors the chat path raises).
CHAT_NAMES = {"messages": "input", "max_completion_tokens": "max_output_tokens",
              "max_tokens": "max_output_tokens",
              "response_format": "text"}
ROLES = {"user": "user", "assistant": "assistant", "system": "system",
         "developer": "system"}  # chat templates know system, not OpenAI's newer developer
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
# text.verbosity: a hint at the answer's length, for models trained on it (Codex sends it).
TEXT_FIELDS = ("format", "verbosity")


router = APIRouter()


@router.post("/v1/responses", responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_response(body: ResponsesRequest, raw: Request, ctx: Ctx) -> Response:
    """OpenAI's Responses API over the chat path (see the module's docstring)."""
    return await respond(body, raw, ctx)


@router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def retrieve_response(response_id: str, ctx: Ctx) -> dict:
    """A stored response; a 404 if it was never stored, was deleted or evicted."""
    return stored(ctx.response_store, response_id, "response_id").response


@router.delete("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
async def delete_response(response_id: str, ctx: Ctx) -> dict:
    stored(ctx.response_store, response_id, "response_id")
    ctx.response_store.delete(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


def stored(store: ResponseStore, response_id: str, param: str) -> StoredResponse:
    found = store.get(response_id)
    if found is None:
        raise APIError(f"No response with id {quote(response_id, 100)} is stored here (it was "
                       "not stored, or was deleted, or evicted from this server's store).",
                       404, param)
    return found


async def respond(body: ResponsesRequest, raw: Request, ctx: ServerContext) -> Response:
    body.check_fields(ctx.ignored_fields)
    check_supported(body)
    created = int(time.time())
    context = conversation(body, ctx.response_store)
    req = chat_request(chat_fields(body, context, ctx.ignored_fields), CHAT_NAMES)
    with renaming(CHAT_NAMES):
        run = await start_chat(req, ctx)
    ctx = run.ctx
    if body.stream:
        return streamed(run.stream, response_events(body, ctx, context, created,
                                                    chat_stream(run)))
    with renaming(CHAT_NAMES):
        result = await chat_result(raw, run)
    if result is None:  # the client left
        return JSONResponse({}, status_code=499)
    obj = response_object(body, ctx, result, created, output_items(result.choices[0], body))
    if body.store:
        ctx.response_store.put(obj, context)
    return JSONResponse(obj)


def check_supported(body: ResponsesRequest) -> None:
    """Fields whose other values ask for what this server does not do: a 400 naming them."""
    if body.input is None and body.previous_response_id is None:
        raise bad_request("Give `input` (a string or a list of items).", "input")
    if body.truncation == "auto":
        raise bad_request("`truncation: auto` is not supported: a conversation longer than the "
                          "context is a 400 here, never shortened silently.", "truncation")
    if body.background:
        raise bad_request("`background` responses are not supported by this server.",
                          "background")
    check_include(body.include)
    if body.top_logprobs:
        raise bad_request("`top_logprobs` is not supported on /v1/responses (use "
                          "/v1/chat/completions).", "top_logprobs")
    if body.max_tool_calls is not None:
        raise bad_request("`max_tool_calls` is not supported by this server.", "max_tool_calls")
    text = body.text or {}
    if unknown := sorted(k for k, v in text.items() if k not in TEXT_FIELDS and v is not None):
        raise bad_request(f"text.{unknown[0]} is not supported by this server.", "text")


def conversation(body: ResponsesRequest, store: ResponseStore) -> list[dict]:
    """The input items this response answers: a previous response's context and output first
    (its instructions are not carried over, as OpenAI's are not), then this request's."""
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) \
        else list(body.input or [])
    if body.previous_response_id is None:
        return items
    previous = stored(store, body.previous_response_id, "previous_response_id")
    return [*previous.context, *previous.response["output"], *items]


# The request, as a chat request.


def chat_fields(body: ResponsesRequest, items: list[dict], log: IgnoredFields) -> dict:
    return {"model": body.model, "messages": chat_messages(body.instructions, items),
            "chat_template_kwargs": reasoning_kwargs(body.reasoning) or None,
            "max_completion_tokens": body.max_output_tokens, "temperature": body.temperature,
            "top_p": body.top_p, "user": body.user, "stream": body.stream,
            "tools": chat_tools(body.tools, log),
            "tool_choice": chat_tool_choice(body.tool_choice),
            "parallel_tool_calls": body.parallel_tool_calls, "priority": body.priority,
            "response_format": None if calls_only(body.tool_choice)
            else response_format((body.text or {}).get("format"))}


def calls_only(tool_choice) -> bool:
    """Whether the answer can only be tool calls (`required`, or a named function): then it
    has no message for `text.format` to shape (the Agents SDK sends both, with an output
    type), and the chat path, which refuses the two together, gets only the choice."""
    return tool_choice == "required" or isinstance(tool_choice, dict)


def chat_messages(instructions: str | None, items: list[dict]) -> list[dict]:
    """Input items as chat messages: an assistant's text and the function calls right after it
    are one assistant message, as the chat API writes them."""
    messages = [{"role": "system", "content": instructions}] if instructions else []
    previous = None
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object (a message or an item).", "input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(chat_message(item, where))
        elif kind == "function_call":
            name = _text(item, "name", where)
            if isinstance(item.get("namespace"), str):  # as the model wrote it: flattened
                name = flat_name(item["namespace"], name)
            call = {"id": _text(item, "call_id", where), "type": "function",
                    "function": {"name": name,
                                 "arguments": _text(item, "arguments", where)}}
            if previous in ("function_call", "assistant"):
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _text(item, "call_id", where),
                             "content": text_parts(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":  # earlier reasoning is not shown again (as chat templates do)
            continue
        else:
            raise bad_request(f"{where}.type {quote(kind, 50)} is not supported: input items are "
                              "messages, function_call, function_call_output and reasoning.",
                              "input")
        previous = "assistant" if kind == "message" and messages[-1]["role"] == "assistant" \
            else kind
    return messages


def chat_message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in ROLES:
        raise bad_request(f"{where}.role must be one of {sorted(ROLES)}.", "input")
    return {"role": ROLES[role], "content": text_parts(item.get("content"), f"{where}.content")}


def text_parts(content, where: str) -> str | list[dict]:
    """A string, or text parts (input_text, output_text, refusal) as chat's text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts.", "input")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = TEXT_PARTS.get(kind)
        if key is None or not isinstance(part.get(key), str):
            raise bad_request(f"{where}[{j}] must be a text part (input_text, output_text or "
                              f"refusal); got type {quote(kind, 50)}: this model reads only "
                              "text.", "input")
        parts.append({"type": "text", "text": part[key]})
    return parts


def _text(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key} must be a string.", "input")
    return value


def chat_tool_choice(choice):
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise bad_request("tool_choice must be auto, none, required or {\"type\": \"function\", "
                          "\"name\": ...}.", "tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def response_format(fmt: dict | None) -> dict | None:
    """text.format as the chat API's response_format (json_schema: a structured output)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise bad_request("text.format.type must be text, json_object or json_schema.", "text")


API = APISpec(router, generating=("/v1/responses",))
