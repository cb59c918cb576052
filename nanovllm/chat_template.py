"""Chat templates: Jinja rendered the way Hugging Face renders a tokenizer's `chat_template`.

The template comes from `--chat-template` / `chat_template=` (a file, or the template itself,
as vLLM takes it) or else from the checkpoint's tokenizer_config.json. It runs in jinja2's
immutable sandbox with HF's settings (trim_blocks, lstrip_blocks, loop controls) and globals
(`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text), and sees `messages`,
`add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...) and what the caller
adds (`tools`, `documents`, chat_template_kwargs), as transformers' apply_chat_template does.
The server's request side (server/chat/template.py) and LLM.chat both render through it.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_JINJA_CHARS = "{}\n"


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


def checkpoint_template(model_dir: str | Path, chat_template: str | None,
                        eos_token: str) -> ChatTemplate | None:
    """`chat_template` (a file or the text), else the checkpoint's own; None without either."""
    try:
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    source = load_chat_template(chat_template) if chat_template else config.get("chat_template")
    return ChatTemplate(source, special_tokens(config, eos_token)) \
        if isinstance(source, str) else None


def template_messages(messages: list[dict]) -> list[dict]:
    """An OpenAI-style conversation as templates read it: text parts joined, and tool calls'
    arguments decoded from their JSON text (templates write them with `tojson`)."""
    out = []
    for msg in messages:
        msg = dict(msg)
        if isinstance(msg.get("content"), list):
            msg["content"] = "\n".join(p["text"] for p in msg["content"]
                                       if isinstance(p, dict) and p.get("type") == "text")
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_decoded_call(c) for c in msg["tool_calls"]]
        out.append(msg)
    return out


def _decoded_call(call: dict) -> dict:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):
        fn = {**fn, "arguments": json.loads(args) if args.strip() else {}}
    return {**call, "function": fn}
