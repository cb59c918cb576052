"""How a chat answer's text becomes an assistant message: reasoning first (a reasoning parser),
then tool calls (the family's parser under tool_choice "auto", or the reader of a required or
named choice's constrained JSON), the rest content. `OutputRules` says which, per request;
`parse_message` reads a finished text into a ChatAnswer, a `MessageStream` a growing one into
ChatDeltas (server/chat/result.py)."""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.server.chat.reasoning import ReasoningParser
from nanovllm.server.chat.result import ChatAnswer, ChatDelta, ToolCall
from nanovllm.server.chat.tool_calls import ToolCallStreamer, ToolParser, extract


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


def parse_message(rules: OutputRules, text: str) -> ChatAnswer:
    """The message a finished text says (its content, reasoning and calls only)."""
    reasoning, answer = _split(rules, text, final=True)
    if answer is None:
        return ChatAnswer(None, reasoning)
    if rules.tools is None:
        return ChatAnswer(answer if answer or reasoning is None else None, reasoning)
    content, calls = extract(rules.tools, answer, rules.max_calls)
    return ChatAnswer(content if content or reasoning is None or calls else None, reasoning,
                      calls)


def _split(rules: OutputRules, text: str, final: bool) -> tuple[str | None, str | None]:
    """(reasoning or None, the answer's text or None while it has not begun)."""
    if rules.reasoning is None:
        return None, text
    reasoning, start = rules.reasoning.split(text, final, rules.reasoning_opened)
    if start is None:
        return reasoning, None
    return reasoning, text[start:].lstrip() if reasoning is not None else text[start:]


class MessageStream:
    """One streamed choice: `update(text, final)` with the whole text so far gives what is new
    in it (a ChatDelta's reasoning_content, content and tool_calls; "" and [] when nothing
    is)."""

    def __init__(self, rules: OutputRules) -> None:
        self.rules = rules
        self._tools = ToolCallStreamer(rules.tools, rules.max_calls) if rules.tools else None
        self._reasoning = ""
        self._content = ""

    @property
    def calls(self) -> list[ToolCall]:
        return self._tools.calls if self._tools else []

    def update(self, text: str, final: bool) -> ChatDelta:
        delta = ChatDelta()
        reasoning, answer = _split(self.rules, text, final)
        if reasoning and reasoning.startswith(self._reasoning) and \
                len(reasoning) > len(self._reasoning):
            delta.reasoning_content = reasoning[len(self._reasoning):]
            self._reasoning = reasoning
        if answer is None:
            return delta
        if self._tools is None:
            delta.content = answer[len(self._content):]
            self._content = answer
        else:
            delta.content, delta.tool_calls = self._tools.update(answer, final)
        return delta
