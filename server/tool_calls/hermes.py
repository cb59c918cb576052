"""Hermes (Qwen2.5, Qwen3, Hermes 2/3, ...): each call is JSON in tags,
`<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>`, after any
text the model writes first. A last call missing its closing tag at the end still counts."""

from __future__ import annotations

from nanovllm.server.tool_calls.base import ToolParser
from nanovllm.server.tool_calls.partial import (
    Parsed,
    call_from_object,
    held_back,
    scan_object,
    skip_ws,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesParser(ToolParser):
    name = "hermes"

    def parse(self, text: str, final: bool) -> Parsed:
        out, pos = Parsed(), 0
        while True:
            start = text.find(OPEN, pos)
            if start < 0:
                rest = text[pos:]
                out.content += rest if final else rest[:len(rest) - held_back(rest, (OPEN,))]
                return out
            out.content += text[pos:start]
            body = skip_ws(text, start + len(OPEN))
            close = text.find(CLOSE, body)
            segment = text[:close] if close >= 0 else text
            if body < len(segment) and segment[body] != "{":
                return Parsed(text) if final else out
            call = call_from_object(segment, scan_object(segment, body), final or close >= 0)
            if call is None:
                return Parsed(text) if final else out
            out.calls.append(call)
            if close < 0:
                return out
            pos = close + len(CLOSE)
