"""The chat path's answer (server/chat/result.py) as OpenAI's Responses: a response object
whose output items are `reasoning` (with a reasoning parser), `message` (output_text) and
`function_call`s; streamed, as OpenAI's events, each with the next `sequence_number`."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

from nanovllm.server.api.responses.protocol import ResponsesRequest
from nanovllm.server.api.responses.tools import namespaced, reasoning_extras
from nanovllm.server.chat.front_end import delta_events
from nanovllm.server.chat.result import ChatAnswer, ChatResult, ChatStream
from nanovllm.server.errors import APIError
from nanovllm.server.serving import ServerContext, named_event

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
                       status: str = "completed", names: dict | None = None) -> dict:
    """`names`: a namespace member's flattened name -> its `name` and `namespace`."""
    return {"id": id_, "type": "function_call", "call_id": call_id,
            **(names or {}).get(name, {"name": name}), "arguments": arguments,
            "status": status}


def output_items(answer: ChatAnswer, body: ResponsesRequest) -> list[dict]:
    """Reasoning, then the message (always, unless the answer is only tool calls), then calls."""
    reasoning, text = answer.reasoning_content or "", answer.content or ""
    finish = reasoning_extras(body.reasoning, body.include)
    items = [finish(reasoning_item(item_id("rs"), reasoning))] if reasoning else []
    if text or not answer.tool_calls:
        items.append(message_item(item_id("msg"), text))
    names = namespaced(body.tools)
    items += [function_call_item(item_id("fc"), c.id, c.name, c.arguments, names=names)
              for c in answer.tool_calls]
    if answer.finish_reason == "length" and items:
        items[-1]["status"] = "incomplete"
    return items


def response_object(body: ResponsesRequest, ctx: ServerContext, result: ChatResult,
                    created: int, output: list[dict], status: str | None = None) -> dict:
    """The response object; `status` from the answer unless given (in_progress, failed)."""
    if status is None:
        status = "incomplete" if result.choices[0].finish_reason == "length" else "completed"
    usage = result.usage
    text = "".join(part["text"] for item in output if item["type"] == "message"
                   for part in item["content"])
    return {
        "id": f"resp_{result.hex_id}", "object": "response", "created_at": created,
        "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "model": ctx.served_name, "output": output, "output_text": text,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": (body.reasoning or {}).get("effort"),
                      "summary": (body.reasoning or {}).get("summary")},
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto", "tools": body.tools or [],
        "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
        "usage": None if status == "in_progress" else {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens},
        "user": body.user, "metadata": body.metadata or {}, "background": False,
    }


# Streamed: OpenAI's events.


class StreamedOutput:
    """The output items of a streamed response as they grow, and the events that say so: one
    item open at a time (a reasoning, a message or a function call); a new kind of piece closes
    it and opens the next."""

    def __init__(self, event, body: ResponsesRequest) -> None:
        self._event = event  # (type, **fields) -> one server-sent event, numbered
        self._names = namespaced(body.tools)
        self._finish_reasoning = reasoning_extras(body.reasoning, body.include)
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
            function_call_item(item_id("fc"), call_id, name, "", "in_progress", self._names),
            events)
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
        if item["type"] == "reasoning":
            self._finish_reasoning(item)
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
                          created: int, stream: ChatStream) -> AsyncIterator[str]:
    """OpenAI's event sequence: response.created, response.in_progress, then each output item
    (output_item.added, its content part and deltas, its done events), then response.completed
    or response.incomplete (response.failed after an error event). Each event's
    sequence_number is the one before it plus one."""
    numbers = itertools.count()

    def event(kind: str, **fields) -> str:
        return named_event(kind, {"type": kind, "sequence_number": next(numbers), **fields})

    answer = ChatAnswer(None)
    output = StreamedOutput(event, body)

    def response(status: str | None = None) -> dict:
        result = ChatResult(stream.id, stream.created, [answer], stream.usage)
        return response_object(body, ctx, result, created, output.items if status != "in_progress"
                               else [], status)

    skeleton = response("in_progress")
    yield event("response.created", response=skeleton)
    yield event("response.in_progress", response=skeleton)
    try:
        async for delta in stream.deltas:
            answer.add(delta)
            for e in delta_events(delta, output, "reasoning", "message"):
                yield e
    except APIError as exc:
        for e in output.close("incomplete"):
            yield e
        yield event("error", code=str(exc.status), message=exc.message, param=exc.param)
        failed = response("failed")
        failed["error"] = {"code": "server_error", "message": exc.message}
        yield event("response.failed", response=failed)
        return
    if not output.items:  # an empty answer is still one (empty) message, as when not streamed
        for e in output.text("message", ""):
            yield e
    incomplete = answer.finish_reason == "length"
    for e in output.close("incomplete" if incomplete else "completed"):
        yield e
    final = response()
    if body.store:
        ctx.response_store.put(final, context)
    yield event("response.incomplete" if incomplete else "response.completed", response=final)
