"""The grammars (llguidance's Lark) the chat path holds an answer to besides a request's own
structured output. Each is built from an `answer` rule and compiled like any other grammar.

- **Lazy tool calls** (tool_choice "auto", llama.cpp's lazy grammar): the text is free until
  the model writes the tool parser's start tag; from there the call is one JSON object naming
  one of the request's tools with arguments its schema allows, then the end tag; after it,
  free text again, or another call. So every call the parser reads parses and names a tool
  the request offered, with schema-valid arguments, even from a tiny model. It does not make
  the model call a tool, or choose the right one. A family whose calls are the answer itself
  (Llama 3's JSON, `ToolParser.leading_calls_key`) has no start tag: there an answer that
  opens with "{" is one or more calls, and any other is free text. Other families' calls
  are not held.
- **A reasoning budget** (`thinking_token_budget`): the answer opens its reasoning (unless
  the prompt did), reasons for at most that many tokens, and then the grammar writes the
  reasoning's end tag itself; the answer after it is held to the rest of the grammar.
"""

from __future__ import annotations

import json

ANY_TEXT = "/(?s:.*)/"
# JSON as the templates write it (json.dumps' separators), never padded.
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# A keyword llguidance does not implement (Claude Code's schemas use `propertyNames`) is not
# enforced, rather than the call not held at all: tool_choice auto never refuses a schema.
LENIENT = {"lenient": True}
REGEX_SPECIALS = set("\\.^$|?*+()[]{}/-")
BLANKS = "[ \\t\\r\\n]"  # what the parsers skip between calls (partial.skip_ws)


def free_answer() -> str:
    return f"answer: ANY\nANY: {ANY_TEXT}\n"


def json_answer(schema: dict) -> str:
    return f"answer: %json {json.dumps(_compact(schema))}\n"


def lazy_calls_answer(start: str, end: str, call_schema: dict) -> str:
    """Free text and calls, each `start` + "\\n" + one call's JSON + "\\n" + `end` (the layout
    every Hermes-style template writes); text after the last call may not open another."""
    return "\n".join([
        "answer: call* TAIL",
        f"call: call_head \"\\n\" %json {json.dumps(_compact(call_schema, LENIENT))} "
        f"\"\\n\" {json.dumps(end)}",
        f"call_head[lazy]: TEXT {json.dumps(start)}",
        f"TEXT: {ANY_TEXT}",
        f"TAIL: {ANY_TEXT} & ~{_containing(start)}",
    ]) + "\n"


def leading_calls_answer(call_schema: dict) -> str:
    """Free text that does not open with "{", or calls: each one call's JSON, "; " between
    them (Llama 3's layout, as its parser reads it), blanks around them."""
    return "\n".join([
        "answer: TEXT | BLANK? calls BLANK?",
        'calls: call ("; " call)*',
        f"call: %json {json.dumps(_compact(call_schema, LENIENT))}",
        f"BLANK: /{BLANKS}+/",
        f"TEXT: {ANY_TEXT} & ~/{BLANKS}*\\{{(?s:.*)/",
    ]) + "\n"


def with_reasoning_budget(answer: str, start: str, end: str, budget: int,
                          opened_by_prompt: bool) -> str:
    """`answer` after at most `budget` tokens of reasoning between `start` and `end`."""
    opening = "" if opened_by_prompt else f"{json.dumps(start)} "
    return "\n".join([
        f"start: {opening}reasoning {json.dumps(end)} answer",
        f"reasoning[max_tokens={budget}]: {ANY_TEXT} & ~{_containing(end)}",
    ]) + "\n" + answer


def plain(answer: str) -> str:
    return "start: answer\n" + answer


def _containing(text: str) -> str:
    escaped = "".join(f"\\{c}" if c in REGEX_SPECIALS else c for c in text)
    return f"/(?s:.*){escaped}(?s:.*)/"


def _compact(schema: dict, options: dict | None = None) -> dict:
    return {**schema, "x-guidance": {**COMPACT_JSON, **(options or {}),
                                     **schema.get("x-guidance", {})}}
