"""How a chat answer's text becomes an assistant message: reasoning first (a reasoning parser),
then tool calls (the family's parser under tool_choice "auto", or the reader of a required or
named choice's constrained JSON), the rest content. `OutputRules` says which, per request;
`parse_message` reads a finished text, a `MessageStream` a growing one, as OpenAI's deltas.
Every front end over the chat path (chat completions, and any other protocol) shares these."""

from __future__ import annotations

from dataclasses import dataclass, field

from nanovllm.server.chat.reasoning import ReasoningParser
from nanovllm.server.chat.tool_calls import ToolCall, ToolCallStreamer, ToolParser, extract


@dataclass(frozen=True, slots=True)
class OutputRules:
    reasoning: ReasoningParser | None = None
    reasoning_opened: bool | None = None  # what the prompt's generation prompt left open
    tools: ToolParser | None = None
    max_calls: int | None = None  # 1 when parallel_tool_calls is false

    @property
    def plain(self) -> bool:
        """The text is the content, as it is."""
        return self.reasoning is None and self.tools is None


@dataclass(slots=True)
class Message:
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


def parse_message(rules: OutputRules, text: str) -> Message:
    reasoning, answer = _split(rules, text, final=True)
    if answer is None:
        return Message(None, reasoning)
    if rules.tools is None:
        return Message(answer if answer or reasoning is None else None, reasoning)
    content, calls = extract(rules.tools, answer, rules.max_calls)
    return Message(content if content or reasoning is None or calls else None, reasoning, calls)


def _split(rules: OutputRules, text: str, final: bool) -> tuple[str | None, str | None]:
    """(reasoning or None, the answer's text or None while it has not begun)."""
    if rules.reasoning is None:
        return None, text
    reasoning, start = rules.reasoning.split(text, final, rules.reasoning_opened)
    if start is None:
        return reasoning, None
    return reasoning, text[start:].lstrip() if reasoning is not None else text[start:]


class MessageStream:
    """One streamed choice: `update(text, final)` with the whole text so far gives the new
    delta's fields (reasoning_content, content, tool_calls), only those with something new."""

    def __init__(self, rules: OutputRules) -> None:
        self.rules = rules
        self._tools = ToolCallStreamer(rules.tools, rules.max_calls) if rules.tools else None
        self._reasoning = ""
        self._content = ""

    @property
    def calls(self) -> list[ToolCall]:
        return self._tools.calls if self._tools else []

    def update(self, text: str, final: bool) -> dict:
        delta = {}
        reasoning, answer = _split(self.rules, text, final)
        if reasoning and reasoning.startswith(self._reasoning) and \
                len(reasoning) > len(self._reasoning):
            delta["reasoning_content"] = reasoning[len(self._reasoning):]
            self._reasoning = reasoning
        if answer is None:
            return delta
        if self._tools is None:
            content, calls = answer[len(self._content):], []
            self._content = answer
        else:
            content, calls = self._tools.update(answer, final)
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
        return delta
