"""A chat request's tool fields, checked before anything is rendered: `tools` (OpenAI's
function tools), `tool_choice` and `parallel_tool_calls`; and the conversation's own calls
(`tool_calls` of assistant messages, `tool_call_id` of tool results) in the form chat templates
read, as transformers' apply_chat_template passes them (arguments as a mapping)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from nanovllm.server.errors import bad_request
from nanovllm.values.limits import MAX_TOOL_SCHEMA_CHARS, MAX_TOOLS, MAX_TOOLS_CHARS

NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # OpenAI's function names (and MCP's dots/colons)
MODES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: str  # "none", "auto", "required" or "named"
    name: str | None = None  # the named function


def check_tools(tools: Any) -> list[dict] | None:
    """`tools`, each {"type": "function", "function": {"name", "description"?, "parameters"?,
    "strict"?}}: a 400 naming `tools` for anything else. None when there are none."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise bad_request("`tools` must be a list of function tools.", "tools")
    if len(tools) > MAX_TOOLS:
        raise bad_request(f"`tools` lists {len(tools)} tools; at most {MAX_TOOLS} are accepted.",
                          "tools")
    if len(json.dumps(tools)) > MAX_TOOLS_CHARS:
        raise bad_request(f"`tools` is longer than {MAX_TOOLS_CHARS} characters as JSON.", "tools")
    names = set()
    for i, tool in enumerate(tools):
        fn = _check_tool(tool, f"tools[{i}]")
        if fn["name"] in names:
            raise bad_request(f"tools[{i}]: a second function named {fn['name']!r}.", "tools")
        names.add(fn["name"])
    return tools


def _check_tool(tool: Any, where: str) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise bad_request(f'{where} must be {{"type": "function", "function": {{...}}}} (this '
                          "server has function tools only).", "tools")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise bad_request(f"{where}.function must be an object.", "tools")
    if not isinstance(fn.get("name"), str) or not NAME.fullmatch(fn["name"]):
        raise bad_request(f"{where}.function.name must be 1 to 64 letters, digits, '_', '-', "
                          "'.' or ':'.", "tools")
    if not isinstance(fn.get("description", ""), str | None):
        raise bad_request(f"{where}.function.description must be a string.", "tools")
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise bad_request(f"{where}.function.parameters must be a JSON Schema of an object "
                              '({"type": "object", "properties": {...}}).', "tools")
        if len(json.dumps(params)) > MAX_TOOL_SCHEMA_CHARS:
            raise bad_request(f"{where}.function.parameters is longer than "
                              f"{MAX_TOOL_SCHEMA_CHARS} characters as JSON.", "tools")
    return fn


def check_tool_choice(choice: Any, tools: list[dict] | None, auto_enabled: bool) -> ToolChoice:
    """`tool_choice` against `tools` (OpenAI's default: "auto" with tools, else "none")."""
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in MODES:
            raise bad_request(f"tool_choice must be one of {list(MODES)} or "
                              '{"type": "function", "function": {"name": ...}}.', "tool_choice")
        mode, name = choice, None
    elif isinstance(choice, dict) and choice.get("type") == "function" and \
            isinstance(choice.get("function"), dict) and \
            isinstance(choice["function"].get("name"), str):
        mode, name = "named", choice["function"]["name"]
    else:
        raise bad_request('tool_choice names a function as {"type": "function", "function": '
                          '{"name": ...}}.', "tool_choice")
    if mode != "none" and not tools:
        raise bad_request(f"tool_choice {choice!r} needs `tools`.", "tool_choice")
    if name is not None and name not in {t["function"]["name"] for t in tools}:
        raise bad_request(f"tool_choice names the function {name[:64]!r}, which is not in "
                          "`tools`.", "tool_choice")
    if mode == "auto" and not auto_enabled:
        raise bad_request('tool_choice "auto" (the default with tools) needs the server started '
                          "with --enable-auto-tool-choice and --tool-call-parser; "
                          '"required" and a named function work without them.', "tool_choice")
    return ToolChoice(mode, name)


def tool_schema(tools: list[dict], name: str) -> dict:
    """The named function's parameters schema ({} parameters: any object)."""
    fn = next(t["function"] for t in tools if t["function"]["name"] == name)
    return fn.get("parameters") or {"type": "object", "properties": {}}


def template_message_fields(msg: dict, where: str) -> dict:
    """A message's tool fields as chat templates read them: an assistant's `tool_calls` (each
    call's arguments decoded from their JSON text, as vLLM does, since templates write them
    with `tojson`), a tool result's `tool_call_id`, an assistant's `reasoning_content`."""
    out = {}
    calls = msg.get("tool_calls")
    if calls:
        if msg.get("role") != "assistant" or not isinstance(calls, list):
            raise bad_request(f"{where}.tool_calls: only an assistant message has tool_calls, "
                              "a list.", "messages")
        out["tool_calls"] = [_template_call(c, f"{where}.tool_calls[{j}]")
                             for j, c in enumerate(calls)]
    for key in ("tool_call_id", "reasoning_content"):
        value = msg.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise bad_request(f"{where}.{key} must be a string.", "messages")
            out[key] = value
    return out


def _template_call(call: Any, where: str) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request(f'{where} must be {{"id", "type": "function", "function": {{"name", '
                          '"arguments"}}}.', "messages")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise bad_request(f"{where}.function.arguments is not JSON.", "messages") from None
    if not isinstance(args, dict):
        raise bad_request(f"{where}.function.arguments must be a JSON object.", "messages")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out
