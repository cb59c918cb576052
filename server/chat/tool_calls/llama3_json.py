"""Llama 3.1 / 3.2 JSON tool calls: the whole answer is one or more JSON objects,
`{"name": "get_weather", "parameters": {"city": "Paris"}}`, separated by `;`, optionally after
`<|python_tag|>` (a special token, so decoding keeps special tokens for this parser). An answer
that does not start with `{` (or the tag) is content, as in vLLM."""

from __future__ import annotations

from nanovllm.server.chat.tool_calls.base import ToolParser
from nanovllm.server.chat.tool_calls.partial import (
    Parsed,
    call_from_object,
    is_undecided_prefix,
    scan_object,
    skip_ws,
)

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    keeps_special_tokens = True
    leading_calls_key = "parameters"

    def parse(self, text: str, final: bool) -> Parsed:
        pos = skip_ws(text, 0)
        if not final and is_undecided_prefix(text, PYTHON_TAG):
            return Parsed()
        if text.startswith(PYTHON_TAG, pos):
            pos = skip_ws(text, pos + len(PYTHON_TAG))
        if pos < len(text) and text[pos] != "{" or pos >= len(text) and final:
            return Parsed(text)
        out = Parsed()
        while pos < len(text):
            if text[pos] != "{":
                return Parsed(text) if final else out
            scan = scan_object(text, pos)
            call = call_from_object(text, scan, final)
            if call is None:
                return Parsed(text) if final else out
            out.calls.append(call)
            if scan.end is None:
                return out
            pos = skip_ws(text, scan.end)
            if text.startswith(";", pos):
                pos = skip_ws(text, pos + 1)
        return out
