"""A tool-call parser's interface, the one extraction of a finished text, and the one streamer
that turns successive parses of a growing text into the calls' deltas (ToolCallDelta)."""

from __future__ import annotations

from typing import ClassVar

from nanovllm.server.chat.result import ToolCall, ToolCallDelta
from nanovllm.server.chat.tool_calls.partial import Parsed, openai_call_id


class ToolParser:
    """One model family's way of writing calls. `parse` reads the whole text so far; with
    `final` False it reports only what more text cannot change (partial.py's rule), with
    `final` True a call that is not valid makes the whole text content."""

    name: ClassVar[str]
    # The family's call tag is a special token, which decoding would drop: keep them in the text.
    keeps_special_tokens: ClassVar[bool] = False
    # (start, end) of a call whose JSON, {"name": ..., "arguments": {...}}, sits alone between
    # them on its own line: under tool_choice "auto" the call is then held to the tools'
    # schemas from the start tag on (server/chat/grammar.py).
    call_tags: ClassVar[tuple[str, str] | None] = None
    # The arguments' key of calls that are the answer itself, JSON objects from its first
    # character on ("parameters": Llama 3's {"name": ..., "parameters": {...}}): under "auto"
    # an answer that opens with "{" is then calls held to the tools' schemas. Neither this
    # nor call_tags: the calls are only read.
    leading_calls_key: ClassVar[str | None] = None

    def parse(self, text: str, final: bool) -> Parsed:
        raise NotImplementedError

    def new_id(self) -> str:
        return openai_call_id()


def extract(parser: ToolParser, text: str,
            max_calls: int | None = None) -> tuple[str | None, list[ToolCall]]:
    """A finished text's content (None when only calls were written) and calls; at most
    `max_calls` of them (parallel_tool_calls false: the first)."""
    parsed = parser.parse(text, final=True)
    calls = [c for c in parsed.calls if c.complete][:max_calls]
    if not calls:
        return text, []
    return parsed.content.rstrip() or None, [ToolCall(parser.new_id(), c.name, c.arguments)
                                             for c in calls]


class ToolCallStreamer:
    """One streamed choice's calls: `update(text, final)` with the whole text so far gives what
    is new since the last update, as (content, ToolCallDeltas). A call's first delta carries
    its index, id and name (and any arguments written yet); later ones carry argument
    fragments, which add up to the final arguments. Trailing blanks of the
    content wait for what follows them (a call after them drops them)."""

    def __init__(self, parser: ToolParser, max_calls: int | None = None) -> None:
        self.parser = parser
        self.max_calls = max_calls
        self._content = ""  # sent so far
        self._calls: list[ToolCall] = []  # begun so far, with the arguments sent
        self._done = False

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def update(self, text: str, final: bool) -> tuple[str, list[ToolCallDelta]]:
        if self._done:
            return "", []
        self._done = final
        parsed = self.parser.parse(text, final)
        calls = parsed.calls[:self.max_calls]
        if final:
            calls = [c for c in calls if c.complete]
        content = parsed.content if final and not calls and not self._calls \
            else parsed.content.rstrip()
        new_content = ""
        if content.startswith(self._content):  # else a broken call made it all content
            new_content, self._content = content[len(self._content):], content
        return new_content, self._call_deltas(calls)

    def _call_deltas(self, calls) -> list[ToolCallDelta]:
        deltas = []
        for i, call in enumerate(calls):
            if call.name is None:
                break  # later calls wait for this one's name (calls are sent in order)
            if i == len(self._calls):
                self._calls.append(ToolCall(self.parser.new_id(), call.name, call.arguments))
                deltas.append(ToolCallDelta(i, call.arguments, self._calls[i].id, call.name))
                continue
            sent = self._calls[i].arguments
            if len(call.arguments) > len(sent) and call.arguments.startswith(sent):
                self._calls[i].arguments = call.arguments
                deltas.append(ToolCallDelta(i, call.arguments[len(sent):]))
        return deltas
