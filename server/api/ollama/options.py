"""Ollama's `options` (and `format`, `think`) as the chat request's fields: each sampling
option honoured under its chat name, the runtime-only ones accepted and ignored, the others
refused with a 400 naming `options.<name>`."""

from __future__ import annotations

from typing import Any

from nanovllm.server.api.ollama.protocol import OPTIONS
from nanovllm.server.errors import bad_request
from nanovllm.server.field_policy import IgnoredFields

# Ollama's option -> the chat request's field (same meaning, and ranges checked there).
SAMPLING_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                    "min_p": "min_p", "seed": "seed", "stop": "stop",
                    "repeat_penalty": "repetition_penalty",
                    "presence_penalty": "presence_penalty",
                    "frequency_penalty": "frequency_penalty"}
# The chat fields, as this API calls them (for the errors the chat path raises).
CHAT_NAMES = {**{chat: f"options.{name}" for name, chat in SAMPLING_OPTIONS.items()},
              "max_completion_tokens": "options.num_predict", "response_format": "format",
              "chat_template_kwargs": "think"}


def sampling_fields(options: dict[str, Any] | None, max_model_len: int,
                    log: IgnoredFields) -> dict:
    """The chat request's sampling fields for `options`; the others are the OPTIONS policy's
    (refused naming the option, or ignored)."""
    options = options or {}
    OPTIONS.check({k: v for k, v in options.items()
                   if k not in (*SAMPLING_OPTIONS, "num_predict", "num_ctx")}, log)
    fields = {SAMPLING_OPTIONS[k]: v for k, v in options.items()
              if k in SAMPLING_OPTIONS and v is not None}
    if options.get("num_predict") is not None:
        fields["max_completion_tokens"] = max_tokens(options["num_predict"])
    if options.get("num_ctx") is not None:
        check_num_ctx(options["num_ctx"], max_model_len)
    return fields


def max_tokens(num_predict) -> int | None:
    """num_predict: -1 (no limit) and -2 (fill the context) both mean up to the context limit
    here; a positive value caps the answer."""
    if isinstance(num_predict, bool) or not isinstance(num_predict, int) or \
            num_predict == 0 or num_predict < -2:
        raise bad_request("options.num_predict must be a positive integer, -1 (no limit) or -2 "
                          "(up to the context length).", "options.num_predict")
    return None if num_predict < 0 else num_predict


def check_num_ctx(num_ctx, max_model_len: int) -> None:
    """Ollama sizes a model's context window (and its memory) by num_ctx. Here every request
    has the model's whole context (the KV cache is paged and shared, so a window costs nothing
    until used): a num_ctx up to it is accepted, a larger one cannot be given."""
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
        raise bad_request("options.num_ctx must be a positive integer.", "options.num_ctx")
    if num_ctx > max_model_len:
        raise bad_request(f"options.num_ctx is {num_ctx}, above this model's context length "
                          f"({max_model_len} tokens, the server's --max-model-len).",
                          "options.num_ctx")


def response_format(fmt) -> dict | None:
    """`format`: "json" (any JSON object) or a JSON schema, as the chat path's response_format
    (a structured output)."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise bad_request('format must be "json" or a JSON schema (an object).', "format")


def thinking_switch(think, reasoning_parser) -> dict | None:
    """`think`: the chat template's enable_thinking (Qwen3's switch). Thinking asked of a server
    with no --reasoning-parser is refused (its thinking could not be told from the answer, as
    Ollama refuses it for a model that does not think)."""
    if think is None:
        return None
    if not isinstance(think, bool):
        raise bad_request("think must be true or false: this server has no thinking levels.",
                          "think")
    if think and reasoning_parser is None:
        raise bad_request("think: this server separates no thinking (start it with "
                          "--reasoning-parser for a model that thinks).", "think")
    return {"enable_thinking": think}
