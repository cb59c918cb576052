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

import itertools
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanovllm.server.api.responses.protocol import ResponsesRequest
from nanovllm.server.api.responses.store import ResponseStore, StoredResponse
from nanovllm.server.chat.front_end import (
    ChatAnswer,
    ChatPath,
    ChatStreamError,
    ask_chat,
    chat_answer,
    chat_pieces,
    chat_request,
    named_event,
    piece_events,
)
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import Ctx, ServerContext
from nanovllm.values.errors import quote

# The chat request's fields, as this API calls them (for the errors the chat path raises).
CHAT_NAMES = {"messages": "input", "max_completion_tokens": "max_output_tokens",
              "max_tokens": "max_output_tokens",
              "response_format": "text"}
ROLES = {"user": "user", "assistant": "assistant", "system": "system",
         "developer": "system"}  # chat templates know system, not OpenAI's newer developer
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}


def build_router(chat: ChatPath) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses", responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
    async def create_response(body: ResponsesRequest, raw: Request, ctx: Ctx) -> Response:
        """OpenAI's Responses API over the chat path (see the module's docstring)."""
        return await respond(chat, body, raw, ctx)

    @router.get("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
    async def retrieve_response(response_id: str, ctx: Ctx) -> dict:
        """A stored response; a 404 if it was never stored, was deleted or evicted."""
        return stored(ctx.response_store, response_id, "response_id").response

    @router.delete("/v1/responses/{response_id}", responses=ERROR_RESPONSES)
    async def delete_response(response_id: str, ctx: Ctx) -> dict:
        stored(ctx.response_store, response_id, "response_id")
        ctx.response_store.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    return router


def stored(store: ResponseStore, response_id: str, param: str) -> StoredResponse:
    found = store.get(response_id)
    if found is None:
        raise APIError(f"No response with id {quote(response_id, 100)} is stored here (it was "
                       "not stored, or was deleted, or evicted from this server's store).",
                       404, param)
    return found


async def respond(chat: ChatPath, body: ResponsesRequest, raw: Request,
                  ctx: ServerContext) -> Response:
    body.refuse_unknown_fields()
    check_supported(body)
    created = int(time.time())
    context = conversation(body, ctx.response_store)
    req = chat_request(chat_fields(body, context), CHAT_NAMES)
    reply = await ask_chat(chat, req, raw, ctx, CHAT_NAMES)  # chat's own HTTP answer
    if body.stream:
        return reply.translated(lambda events: response_events(body, ctx, context, created,
                                                               events))
    if reply.status_code != 200:  # the client left (499)
        return reply
    result = chat_answer(reply)
    obj = response_object(body, ctx, result, created, output_items(result))
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
    if body.include:
        raise bad_request(f"`include` {quote(body.include, 100)} is not supported: this server "
                          "has no extra output to include.", "include")
    if body.reasoning and any(v is not None for v in body.reasoning.values()):
        raise bad_request("`reasoning` options are not supported: whether the model reasons is "
                          "its chat template's and the server's --reasoning-parser.",
                          "reasoning")
    if body.top_logprobs:
        raise bad_request("`top_logprobs` is not supported on /v1/responses (use "
                          "/v1/chat/completions).", "top_logprobs")
    if body.max_tool_calls is not None:
        raise bad_request("`max_tool_calls` is not supported by this server.", "max_tool_calls")
    text = body.text or {}
    if unknown := sorted(k for k, v in text.items() if k != "format" and v is not None):
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


def chat_fields(body: ResponsesRequest, items: list[dict]) -> dict:
    return {"model": body.model, "messages": chat_messages(body.instructions, items),
            "max_completion_tokens": body.max_output_tokens, "temperature": body.temperature,
            "top_p": body.top_p, "user": body.user, "stream": body.stream,
            # Every chunk's usage: the prompt's is known at once, the final one at the end.
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}
            if body.stream else None,
            "tools": chat_tools(body.tools), "tool_choice": chat_tool_choice(body.tool_choice),
            "parallel_tool_calls": body.parallel_tool_calls,
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
            call = {"id": _text(item, "call_id", where), "type": "function",
                    "function": {"name": _text(item, "name", where),
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


def chat_tools(tools: list[dict] | None) -> list[dict] | None:
    """Function tools in the chat API's shape; OpenAI's hosted tools are not served here."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise bad_request(f"tools[{i}].type {quote(tool.get('type'), 50)} is not supported: "
                              "this server runs function tools only.", "tools")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


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


# The answer, as a response.


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(id_: str, text: str, status: str = "completed") -> dict:
    return {"id": id_, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def message_item(id_: str, text: str, status: str = "completed") -> dict:
    return {"id": id_, "type": "message", "role": "assistant", "status": status,
            "content": [output_text(text)]}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(id_: str, call_id: str, name: str, arguments: str,
                       status: str = "completed") -> dict:
    return {"id": id_, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_items(answer: ChatAnswer) -> list[dict]:
    """Reasoning, then the message (always, unless the answer is only tool calls), then calls."""
    items = [reasoning_item(item_id("rs"), answer.reasoning)] if answer.reasoning else []
    if answer.text or not answer.tool_calls:
        items.append(message_item(item_id("msg"), answer.text))
    items += [function_call_item(item_id("fc"), c.id, c.name, c.arguments)
              for c in answer.tool_calls]
    if answer.finish_reason == "length" and items:
        items[-1]["status"] = "incomplete"
    return items


def response_object(body: ResponsesRequest, ctx: ServerContext, answer: ChatAnswer,
                    created: int, output: list[dict], status: str | None = None) -> dict:
    """The response object; `status` from the answer unless given (in_progress, failed)."""
    if status is None:
        status = "incomplete" if answer.finish_reason == "length" else "completed"
    usage = answer.usage
    text = "".join(part["text"] for item in output if item["type"] == "message"
                   for part in item["content"])
    return {
        "id": f"resp_{answer.hex_id}", "object": "response", "created_at": created,
        "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "model": ctx.model_name, "output": output, "output_text": text,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None}, "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto", "tools": body.tools or [],
        "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
        "usage": None if status == "in_progress" else {
            "input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": answer.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens", 0)},
        "user": body.user, "metadata": body.metadata or {}, "background": False,
    }


# Streamed: OpenAI's events.


class StreamedOutput:
    """The output items of a streamed response as they grow, and the events that say so: one
    item open at a time (a reasoning, a message or a function call); a new kind of piece closes
    it and opens the next."""

    def __init__(self, event) -> None:
        self._event = event  # (type, **fields) -> one server-sent event, numbered
        self.items: list[dict] = []
        self._open: dict | None = None
        self._calls: dict[int, dict] = {}  # chat's tool call index -> its item

    def text(self, kind: str, delta: str) -> list[str]:
        events = []
        item = self._open
        if item is None or item["type"] != kind:
            events += self.close()
            item = self._begin(reasoning_item(item_id("rs"), "", "in_progress") if
                               kind == "reasoning" else
                               message_item(item_id("msg"), "", "in_progress"), events)
            part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" \
                else output_text("")
            events.append(self._event("response.content_part.added", **self._where(item),
                                      part=part))
        if not delta:
            return events
        item["content"][0]["text"] += delta
        events.append(self._event(
            "response.reasoning_text.delta" if kind == "reasoning"
            else "response.output_text.delta", **self._where(item), delta=delta,
            **({} if kind == "reasoning" else {"logprobs": []})))
        return events

    def call(self, index: int, call_id: str, name: str) -> list[str]:
        events = self.close()
        self._calls[index] = self._begin(
            function_call_item(item_id("fc"), call_id, name, "", "in_progress"), events)
        return events

    def arguments(self, index: int, delta: str) -> list[str]:
        item = self._calls[index]
        item["arguments"] += delta
        return [self._event("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=self.items.index(item), delta=delta)]

    def close(self, status: str = "completed") -> list[str]:
        """The open item's done events, if one is open."""
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        index = self.items.index(item)
        events = []
        if item["type"] == "function_call":
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"],
                                      arguments=item["arguments"]))
        else:
            part = item["content"][0]
            done = "response.reasoning_text.done" if item["type"] == "reasoning" \
                else "response.output_text.done"
            events.append(self._event(done, **self._where(item), text=part["text"],
                                      **({} if item["type"] == "reasoning" else {"logprobs": []})))
            events.append(self._event("response.content_part.done", **self._where(item),
                                      part=part))
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def _begin(self, item: dict, events: list[str]) -> dict:
        self.items.append(item)
        self._open = item
        events.append(self._event("response.output_item.added",
                                  output_index=len(self.items) - 1, item=item))
        return item

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.items.index(item), "content_index": 0}


async def response_events(body: ResponsesRequest, ctx: ServerContext, context: list[dict],
                          created: int, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """OpenAI's event sequence: response.created, response.in_progress, then each output item
    (output_item.added, its content part and deltas, its done events), then response.completed
    or response.incomplete (response.failed after an error event). Each event's
    sequence_number is the one before it plus one."""
    numbers = itertools.count()

    def event(kind: str, **fields) -> str:
        return named_event(kind, {"type": kind, "sequence_number": next(numbers), **fields})

    answer = ChatAnswer("")
    output = StreamedOutput(event)

    def opening() -> list[str]:
        skeleton = response_object(body, ctx, answer, created, [], "in_progress")
        return [event("response.created", response=skeleton),
                event("response.in_progress", response=skeleton)]

    try:
        async for piece in chat_pieces(events, answer):
            if piece.kind == "start":
                for e in opening():
                    yield e
            else:
                for e in piece_events(piece, output, "reasoning", "message"):
                    yield e
    except ChatStreamError as exc:
        for e in [] if answer.id else opening():  # failed before the chat stream opened
            yield e
        for e in output.close("incomplete"):
            yield e
        yield event("error", code=str(exc.error.get("code")), message=exc.error["message"],
                    param=exc.error.get("param"))
        failed = response_object(body, ctx, answer, created, output.items, "failed")
        failed["error"] = {"code": "server_error", "message": exc.error["message"]}
        yield event("response.failed", response=failed)
        return
    if not output.items:  # an empty answer is still one (empty) message, as when not streamed
        for e in output.text("message", ""):
            yield e
    incomplete = answer.finish_reason == "length"
    for e in output.close("incomplete" if incomplete else "completed"):
        yield e
    final = response_object(body, ctx, answer, created, output.items)
    if body.store:
        ctx.response_store.put(final, context)
    yield event("response.incomplete" if incomplete else "response.completed", response=final)
