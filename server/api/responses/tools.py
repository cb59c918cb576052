"""The Responses API's tools as the chat path's, and its reasoning options.

- `function` tools as they are.
- A `namespace` (a named group of function tools, as Codex sends its sub-agent tools) becomes
  one function per member, named `<namespace>.<name>` for the template; a call the model makes
  to such a name is answered as Codex reads it, `name` and `namespace` apart (a flattened name
  alone is a call Codex does not know), and such a call sent back in `input` is flattened
  again, so the prompt repeats what the model wrote.
- OpenAI's hosted tools (`web_search`, `file_search`, ...) run on OpenAI's side: this server
  runs none, so they are left out of the prompt (logged once per type), not refused: a client
  that offers one still gets an answer, from its other tools.
- `reasoning.effort` reaches the template as `reasoning_effort` (gpt-oss's name), `"none"`
  also turning its thinking switch (`enable_thinking`, Qwen3's) off; `reasoning.summary` makes
  each reasoning item carry its text as a summary too, and `include:
  ["reasoning.encrypted_content"]` its `encrypted_content`, null: this server keeps no
  reasoning that the item does not already show.
"""

from __future__ import annotations

import logging

from nanovllm.server.errors import bad_request
from nanovllm.server.field_policy import IgnoredFields
from nanovllm.values.errors import quote

logger = logging.getLogger(__name__)

HOSTED = ("web_search", "web_search_preview", "file_search", "code_interpreter",
          "computer_use_preview", "image_generation", "mcp", "local_shell")
ENCRYPTED_REASONING = "reasoning.encrypted_content"
REFUSED_INCLUDES = {"message.output_text.logprobs": "logprobs are served on "
                                                    "/v1/chat/completions"}


def chat_tools(tools: list[dict] | None, log: IgnoredFields) -> list[dict] | None:
    """The function tools (namespaces flattened) in the chat API's shape."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind == "function":
            out.append(chat_function(tool))
        elif kind == "namespace" and isinstance(tool.get("tools"), list):
            out += [chat_function(member, tool.get("name")) for member in tool["tools"]
                    if isinstance(member, dict) and member.get("type") == "function"]
        elif kind in HOSTED:
            if log.first("/v1/responses", f"tools[type={kind}]"):
                logger.warning("/v1/responses: %s tools are OpenAI's own; this server runs "
                               "none, so they are left out of the prompt", kind)
        else:
            raise bad_request(f"tools[{i}].type {quote(kind, 50)} is not supported: this "
                              "server runs function tools (and namespaces of them) only.",
                              "tools")
    return out or None


def chat_function(tool: dict, namespace: str | None = None) -> dict:
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None}
    if namespace is not None and isinstance(function.get("name"), str):
        function["name"] = flat_name(namespace, function["name"])
    return {"type": "function", "function": function}


def flat_name(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def namespaced(tools: list[dict] | None) -> dict[str, dict]:
    """{flattened name: the call item's `name` and `namespace`} for each namespace's member."""
    return {flat_name(tool["name"], member["name"]): {"name": member["name"],
                                                      "namespace": tool["name"]}
            for tool in tools or [] if tool.get("type") == "namespace"
            and isinstance(tool.get("name"), str) and isinstance(tool.get("tools"), list)
            for member in tool["tools"] if isinstance(member, dict)
            and isinstance(member.get("name"), str)}


def check_include(include: list[str] | None) -> None:
    for value in include or []:
        if value in REFUSED_INCLUDES:
            raise bad_request(f"`include` {quote(value, 100)} is not supported: "
                              f"{REFUSED_INCLUDES[value]}.", "include")


def reasoning_kwargs(reasoning: dict | None) -> dict:
    """reasoning.effort as the template's variables (nothing when absent)."""
    effort = (reasoning or {}).get("effort")
    if effort is None:
        return {}
    if not isinstance(effort, str) or len(effort) > 32:
        raise bad_request("reasoning.effort must be a short string such as low, medium or "
                          "high.", "reasoning")
    return {"reasoning_effort": effort, **({"enable_thinking": False} if effort == "none"
                                           else {})}


def reasoning_extras(reasoning: dict | None, include: list[str] | None):
    """What each reasoning item carries besides its text: a function of the finished item."""
    summarized = bool((reasoning or {}).get("summary"))
    encrypted = ENCRYPTED_REASONING in (include or [])

    def finish(item: dict) -> dict:
        text = item["content"][0]["text"]
        if summarized:
            item["summary"] = [{"type": "summary_text", "text": text}]
        if encrypted:
            item["encrypted_content"] = None
        return item
    return finish
