"""A chat request's messages and tools rendered by the chat template (nanovllm/chat_template.py:
Jinja as Hugging Face renders it).

`render_prompt` turns a request's `messages` (and `tools`) into that prompt (chat completions and
/tokenize), as transformers' apply_chat_template does: the template sees `tools` (None without),
`documents` (None), the conversation's tool calls and results, and the request's
`chat_template_kwargs`. Content is a string or a list of text parts (joined with newlines, as
vLLM's "string" content format does); images and audio are refused naming the field.
"""

from __future__ import annotations

import json

from nanovllm.chat_template import (  # noqa: F401  (the server's names for them)
    ChatTemplate,
    ChatTemplateError,
    load_chat_template,
    special_tokens,
)
from nanovllm.server.chat.tool_calls.request import template_message_fields
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import MAX_CHAT_CHARS
from nanovllm.values.limits import MAX_CHAT_TEMPLATE_KWARGS_CHARS

_UNSUPPORTED_MESSAGE_KEYS = ("function_call", "audio")
# What the server itself gives the template: chat_template_kwargs may not replace them.
_RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")


def content_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts.", "messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}] must be a text part ({{\"type\": \"text\", \"text\": "
                              f"...}}); got type {kind!r}: this model reads only text.", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages: list[dict]) -> list[dict]:
    """The messages as the template sees them: role, text content (and name); bounded."""
    out, total = [], 0
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if not isinstance(role, str) or not role or len(role) > 64:
            raise bad_request(f"messages[{i}].role must be a non-empty string.", "messages")
        for key in _UNSUPPORTED_MESSAGE_KEYS:
            if msg.get(key):
                raise bad_request(f"messages[{i}].{key} is not supported by this server.",
                                  "messages")
        text = content_text(msg.get("content"), f"messages[{i}].content")
        total += len(text)
        if total > MAX_CHAT_CHARS:
            raise bad_request(f"The messages hold more than {MAX_CHAT_CHARS} characters.",
                              "messages")
        entry = {"role": role, "content": text}
        if isinstance(msg.get("name"), str):
            entry["name"] = msg["name"]
        entry.update(template_message_fields(msg, f"messages[{i}]"))
        out.append(entry)
    return out


def template_kwargs(kwargs) -> dict:
    """`chat_template_kwargs`, checked: a bounded mapping that replaces none of the variables
    the server sets itself."""
    if not kwargs:
        return {}
    if len(json.dumps(kwargs)) > MAX_CHAT_TEMPLATE_KWARGS_CHARS:
        raise bad_request(f"chat_template_kwargs is longer than {MAX_CHAT_TEMPLATE_KWARGS_CHARS} "
                          "characters as JSON.", "chat_template_kwargs")
    for name in _RESERVED_TEMPLATE_VARIABLES:
        if name in kwargs:
            raise bad_request(f"chat_template_kwargs may not set `{name}`: it is the request's "
                              "own field.", "chat_template_kwargs")
    return dict(kwargs)


def render_prompt(req, template: ChatTemplate | None, model_name: str,
                  tools: list[dict] | None = None, generation_prompt: bool | None = None) -> str:
    """A chat request's (or /tokenize's) `messages` and checked `tools` as one prompt text,
    rendered by `template`; a 400 naming the field for anything it cannot render.
    `generation_prompt` overrides the request's add_generation_prompt."""
    if template is None:
        raise bad_request(
            f"The model `{model_name}` has no chat template, so /v1/chat/completions is not "
            "available: start the server with --chat-template FILE (e.g. "
            "examples/chat_template_gpt2.jinja), or send a plain-text prompt to "
            "POST /v1/completions.", "messages")
    messages = normalize_messages(req.messages)
    extra = {**template_kwargs(getattr(req, "chat_template_kwargs", None)),
             "tools": tools, "documents": None}
    add = req.add_generation_prompt if generation_prompt is None else generation_prompt
    try:
        text = template.render(messages, add, extra)
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages") from exc
    if req.continue_final_message:  # end the prompt right after the last message's text
        final = messages[-1]["content"].strip()
        cut = text.rfind(final) if final else -1
        if cut < 0:
            raise bad_request("continue_final_message: the template does not contain the final "
                              "message's text.", "continue_final_message")
        text = text[:cut + len(final)]
    return text

