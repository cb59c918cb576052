"""`tool_choice` "required" and a named function, enforced by the grammar engine (as vLLM
does): the answer is constrained to JSON the calls are read from, whatever the model's own
format, so even a tiny model returns a valid call with schema-valid arguments.

- named: the answer is the function's arguments, an object its `parameters` schema allows;
- required: the answer is a list of calls, `[{"name": ..., "arguments": {...}}, ...]`, each
  name one of `tools` with arguments its schema allows (one call when parallel_tool_calls is
  false).

Each comes with its reader, a ToolParser over that JSON, so the answer is returned and streamed
like calls a family's parser found.
"""

from __future__ import annotations

from nanovllm.server.chat.tool_calls.base import ToolParser
from nanovllm.server.chat.tool_calls.partial import (
    Parsed,
    PartialCall,
    calls_in_json_list,
    is_object,
    skip_ws,
)
from nanovllm.server.chat.tool_calls.request import ToolChoice, tool_schema


def choice_schema(choice: ToolChoice, tools: list[dict], parallel: bool) -> dict | None:
    """The JSON schema a required or named tool_choice constrains the answer to (else None)."""
    if choice.mode == "named":
        return tool_schema(tools, choice.name)
    if choice.mode != "required":
        return None
    return {"type": "array", "minItems": 1, **({} if parallel else {"maxItems": 1}),
            "items": call_schema(tools)}


def call_schema(tools: list[dict], arguments: str = "arguments") -> dict:
    """One call, `{"name": ..., "arguments": {...}}`, to any of `tools` (`arguments`: that
    key's name)."""
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", arguments],
              "properties": {"name": {"const": t["function"]["name"]},
                             arguments: tool_schema(tools, t["function"]["name"])}}
             for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


class NamedCallReader(ToolParser):
    """A named tool_choice's answer: the arguments of one call to that function."""
    name = "named"

    def __init__(self, function: str) -> None:
        self.function = function

    def parse(self, text: str, final: bool) -> Parsed:
        args = text[skip_ws(text, 0):].rstrip() if final else text[skip_ws(text, 0):]
        if final:
            return Parsed("", [PartialCall(self.function, args, True)]) if is_object(args) \
                else Parsed(text)
        return Parsed("", [PartialCall(self.function, args)])


class RequiredCallsReader(ToolParser):
    """A required tool_choice's answer: a JSON list of calls."""
    name = "required"

    def parse(self, text: str, final: bool) -> Parsed:
        out, pos = Parsed(), skip_ws(text, 0)
        if pos >= len(text) and not final:
            return out
        if not text.startswith("[", pos):
            return Parsed(text) if final else out
        ok = calls_in_json_list(text, pos + 1, final, out)
        return out if ok or not final else Parsed(text)


def choice_reader(choice: ToolChoice) -> ToolParser | None:
    if choice.mode == "named":
        return NamedCallReader(choice.name)
    return RequiredCallsReader() if choice.mode == "required" else None
