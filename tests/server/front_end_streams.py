"""Strict readers of the two front ends' event streams (imported as `front_end_streams`): the
server-sent events parsed line by line, each event's name equal to its data's `type`, each
validated against the real SDK's event model, and the whole sequence walked as the protocol's
grammar says it goes. Each returns what the stream said, to compare with the unstreamed
answer."""

from __future__ import annotations

import json
import typing

import httpx
from anthropic.types import RawMessageStreamEvent
from openai.types.responses import ResponseStreamEvent


def event_models(union) -> dict:
    """{event type: the SDK's model of it} for a union of event models (Annotated or not)."""
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return {typing.get_args(model.model_fields["type"].annotation)[0]: model
            for model in typing.get_args(union)}


OPENAI_EVENTS = event_models(ResponseStreamEvent)
ANTHROPIC_EVENTS = event_models(RawMessageStreamEvent)


def validate(models: dict, data: dict) -> None:
    """The event as the SDK's pydantic model of its type validates it (missing or mistyped
    fields fail)."""
    models[data["type"]].model_validate(data)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of every event; each has both lines, and nothing else is sent."""
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.iter_lines())


def parse_sse(lines) -> list[tuple[str, dict]]:
    events, name, data = [], None, None
    for line in lines:
        if line.startswith("event: "):
            assert name is None, line
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert name is not None and data is None, line
            data = json.loads(line.removeprefix("data: "))
        else:
            assert line == "" and name is not None and data is not None, line
            assert data["type"] == name, (name, data)
            events.append((name, data))
            name = data = None
    assert name is None and data is None, "the stream ended inside an event"
    return events


def responses_stream(events: list[tuple[str, dict]]) -> dict:
    """Walks OpenAI's Responses events; returns the final response object, after checking that
    its output is exactly the items the events built."""
    for number, (_, data) in enumerate(events):
        validate(OPENAI_EVENTS, data)
        assert data["sequence_number"] == number
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ("response.completed", "response.incomplete", "response.failed")
    response_id = events[0][1]["response"]["id"]
    assert all(d["response"]["id"] == response_id for n, d in events if n.startswith("response.")
               and "response" in d)
    assert events[0][1]["response"]["status"] == "in_progress"
    items, i = [], 2
    while i < len(events) - 1:
        item, i = _responses_item(events, i, len(items))
        items.append(item)
    final = events[-1][1]["response"]
    assert final["output"] == items
    return final


def _responses_item(events, i: int, index: int) -> tuple[dict, int]:
    name, data = events[i]
    assert name == "response.output_item.added" and data["output_index"] == index, (name, data)
    item = data["item"]
    assert item["status"] == "in_progress"
    i += 1
    if item["type"] == "function_call":
        arguments = ""
        while events[i][0] == "response.function_call_arguments.delta":
            assert events[i][1]["item_id"] == item["id"]
            arguments += events[i][1]["delta"]
            i += 1
        assert events[i][0] == "response.function_call_arguments.done"
        assert events[i][1]["arguments"] == arguments
        i += 1
        expected = {**item, "arguments": arguments}
    else:
        part_kind = "output_text" if item["type"] == "message" else "reasoning_text"
        assert events[i][0] == "response.content_part.added"
        assert events[i][1]["part"]["type"] == part_kind
        i += 1
        text = ""
        while events[i][0] == f"response.{part_kind}.delta":
            assert events[i][1]["item_id"] == item["id"] and events[i][1]["delta"]
            text += events[i][1]["delta"]
            i += 1
        assert events[i][0] == f"response.{part_kind}.done" and events[i][1]["text"] == text, events[i]
        assert events[i + 1][0] == "response.content_part.done"
        assert events[i + 1][1]["part"]["text"] == text
        i += 2
        expected = {**item, "content": [{**item["content"][0], "text": text}]}
    name, data = events[i]
    assert name == "response.output_item.done" and data["output_index"] == index
    done = data["item"]
    assert done["status"] in ("completed", "incomplete")
    assert done == {**expected, "status": done["status"]}
    return done, i + 1


def messages_stream(events: list[tuple[str, dict]]) -> dict:
    """Walks Anthropic's Messages events; returns the message they build (start's message with
    the blocks, the stop reason and the usage filled in)."""
    for name, data in events:
        if name != "ping":
            validate(ANTHROPIC_EVENTS, data)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message = events[0][1]["message"]
    assert message["content"] == [] and message["stop_reason"] is None
    blocks, open_block = [], None
    for name, data in [e for e in events if e[0] != "ping"][1:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(blocks)
            open_block = dict(data["content_block"])
            blocks.append(open_block)
            json_text = ""
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == len(blocks) - 1
            delta = data["delta"]
            if delta["type"] == "text_delta":
                open_block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                open_block["thinking"] += delta["thinking"]
            else:
                assert delta["type"] == "input_json_delta" and open_block["type"] == "tool_use"
                json_text += delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == len(blocks) - 1
            if open_block["type"] == "tool_use":
                open_block["input"] = json.loads(json_text or "{}")
            open_block = None
    assert open_block is None
    delta = events[-2][1]
    return {**message, "content": blocks, **delta["delta"],
            "usage": {**message["usage"], **delta["usage"]}}
