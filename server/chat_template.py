"""Chat templates: Jinja rendered the way Hugging Face renders a tokenizer's `chat_template`.

The template comes from `--chat-template` (a file, or the template itself, as vLLM takes it)
or else from the checkpoint's tokenizer_config.json. It runs in jinja2's immutable sandbox with
HF's settings (trim_blocks, lstrip_blocks, loop controls) and globals (`raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text), and sees `messages`,
`add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, ...).

`render_prompt` turns a request's `messages` (and `tools`) into that prompt (chat completions and
/tokenize), as transformers' apply_chat_template does: the template sees `tools` (None without),
`documents` (None), the conversation's tool calls and results, and the request's
`chat_template_kwargs`. Content is a string or a list of text parts (joined with newlines, as
vLLM's "string" content format does); images and audio are refused naming the field.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import MAX_CHAT_CHARS
from nanovllm.server.tool_calls.request import template_message_fields
from nanovllm.values.limits import MAX_CHAT_TEMPLATE_KWARGS_CHARS

_JINJA_CHARS = "{}\n"
_UNSUPPORTED_MESSAGE_KEYS = ("function_call", "audio")
# What the server itself gives the template: chat_template_kwargs may not replace them.
_RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed while rendering."""


def load_chat_template(value: str) -> str:
    """`--chat-template`: a path to a file, else the template text itself (vLLM's rule: text
    without any of `{`, `}` or a newline was meant as a path, so a missing file is an error)."""
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        if not any(c in value for c in _JINJA_CHARS):
            raise ValueError(f"--chat-template {value!r} looks like a file path, but it could "
                             f"not be read: {exc}") from exc
        return codecs.decode(value, "unicode_escape")  # so "\n" typed in a shell is a newline


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@dataclass(slots=True)
class ChatTemplate:
    source: str
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    _compiled: jinja2.Template | None = None

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._compiled = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"the chat template is not valid Jinja: {exc}") from exc

    def render(self, messages: list[dict], add_generation_prompt: bool,
               extra: dict | None = None) -> str:
        try:
            return self._compiled.render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         **{**self.special_tokens, **(extra or {})})
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ChatTemplateError(f"the chat template failed on these messages: {exc}") from exc


def special_tokens(tokenizer_config: dict, eos_token: str) -> dict[str, str]:
    """The special-token variables HF passes to templates; GPT-2's one token is bos and eos."""
    tokens = {"bos_token": eos_token, "eos_token": eos_token}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = tokenizer_config.get(name)
        if isinstance(value, dict):  # an AddedToken written out in full
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


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


def render_conversation(tokenizer, messages: list[dict], *, chat_template: str | None = None,
                        tools: list[dict] | None = None, add_generation_prompt: bool = True,
                        continue_final_message: bool = False,
                        chat_template_kwargs: dict | None = None) -> str:
    """One conversation as the prompt chat completions would render (LLM.chat's): with
    `chat_template` (a file or the template text), else the checkpoint's own. A ValueError
    says what cannot be rendered."""
    from nanovllm.server.endpoints.info import read_tokenizer_config
    from nanovllm.server.errors import APIError
    from nanovllm.server.tool_calls.request import check_tools

    config = read_tokenizer_config(tokenizer.model_dir)
    source = load_chat_template(chat_template) if chat_template else config.get("chat_template")
    if not isinstance(source, str):
        raise ValueError("this checkpoint has no chat template: pass chat_template=...")
    template = ChatTemplate(source, special_tokens(config,
                                                   tokenizer.decode_token(tokenizer.eos_token_id)))
    request = SimpleNamespace(messages=messages, add_generation_prompt=add_generation_prompt,
                              continue_final_message=continue_final_message,
                              chat_template_kwargs=chat_template_kwargs)
    try:
        return render_prompt(request, template, "", check_tools(tools))
    except APIError as exc:
        raise ValueError(str(exc)) from exc
