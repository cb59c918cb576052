"""What the chat path answers, as values: every API over it renders these in its own shape
(server/api/<name>/render.py), and none reads another's wire format back.

A whole answer is a ChatResult: one ChatAnswer per choice, the usage, the prompt's ids and
logprobs. A streamed one is a ChatStream: ChatDeltas, one per choice and step that says
something, and the usage so far. Texts are the parsed answer's: reasoning (a reasoning parser's),
content, and tool calls; `finish_reason` is the engine's ("stop", "length"), which each API
names its own way (chat's "tool_calls" when an answer that stopped called tools).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nanovllm.values.outputs import RequestMetrics


@dataclass(slots=True)
class ToolCall:
    """One call the answer makes."""

    id: str  # "call_" and 24 letters and digits (OpenAI's form)
    name: str
    arguments: str  # JSON text of an object


@dataclass(slots=True)
class ToolCallDelta:
    """What a stream says next of call `index`: its first delta carries its id and name (and
    any arguments written yet), later ones only more of its arguments' JSON text."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatAnswer:
    """One choice's answer. `content` is None when the answer is only tool calls (or only
    reasoning); `reasoning_content` None when it has no reasoning."""

    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list | None = None  # per token {token id: Logprob}, when asked for

    def add(self, delta: ChatDelta) -> None:
        """The answer a stream has said so far, with `delta` said too."""
        if delta.reasoning_content:
            self.reasoning_content = (self.reasoning_content or "") + delta.reasoning_content
        if delta.content:
            self.content = (self.content or "") + delta.content
        for call in delta.tool_calls:
            if call.id is not None:
                self.tool_calls.append(ToolCall(call.id, call.name or "", ""))
            self.tool_calls[call.index].arguments += call.arguments
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


@dataclass(slots=True)
class ChatResult:
    id: str  # "chatcmpl-<hex>"
    created: int
    choices: list[ChatAnswer]
    usage: Usage
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list | None = None  # per prompt position None or {token id: Logprob}
    metrics: RequestMetrics | None = None  # the engine's timeline of the request

    @property
    def hex_id(self) -> str:
        """The id's unique part, which each API prefixes its own way."""
        return hex_id(self.id)


@dataclass(slots=True)
class ChatDelta:
    """What one streamed choice says next: only new text ("" when there is none), new calls
    or argument fragments, and, with its last delta, how it finished."""

    index: int = 0
    reasoning_content: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] = field(default_factory=list)  # the tokens this delta adds
    logprobs: list | None = None  # theirs, when asked for

    @property
    def says_something(self) -> bool:
        return bool(self.reasoning_content or self.content or self.tool_calls)


@dataclass(slots=True)
class ChatStream:
    """A streamed answer: its deltas, in order, and `usage` so far (the prompt's from the
    start; updated before each step's deltas). Iterating raises an APIError if the request
    fails; the renderer says it in its API's shape."""

    id: str
    created: int
    usage: Usage
    deltas: AsyncIterator[ChatDelta]
    prompt_token_ids: list[int] = field(default_factory=list)

    @property
    def hex_id(self) -> str:
        return hex_id(self.id)


def hex_id(request_id: str) -> str:
    return request_id.partition("-")[2] or request_id
