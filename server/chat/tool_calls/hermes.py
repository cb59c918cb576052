"""Hermes (Qwen2.5, Qwen3, Hermes 2/3, ...): each call is JSON in tags,
`<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>`, after any
text the model writes first. A call ends where its JSON does (a string may hold the tag); a last
call missing its closing tag at the end still counts."""

from __future__ import annotations

from nanovllm.server.chat.tool_calls.base import ToolParser
from nanovllm.server.chat.tool_calls.partial import (
    Parsed,
    call_from_object,
    held_back,
    scan_object,
    skip_ws,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesParser(ToolParser):
    name = "hermes"
    call_tags = (OPEN, CLOSE)

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
            if body < len(text) and text[body] != "{":
                return Parsed(text) if final else out
            scan = scan_object(text, body)  # its end, not the next tag: a string may hold one
            call = call_from_object(text, scan, final)
            if call is None:
                return Parsed(text) if final else out
            out.calls.append(call)
            if scan.end is None:
                return out
            after = skip_ws(text, scan.end)
            if text.startswith(CLOSE, after):
                pos = after + len(CLOSE)
            elif after >= len(text) or not final and CLOSE.startswith(text[after:]):
                return out  # the closing tag is still to come (or never came)
            else:
                return Parsed(text) if final else out
