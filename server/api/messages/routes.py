"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, a front end over
the chat path (server/chat/front_end.py, server/chat/run.py).

A request becomes one chat request: `system` a system message, `messages` chat messages
(`tool_use` blocks an assistant's tool calls, `tool_result` blocks tool messages), `max_tokens`
its `max_completion_tokens`, `stop_sequences` its `stop`, `tools` function tools. The chat
answer comes back as content blocks (`thinking` with a reasoning parser, `text`, `tool_use`)
with Anthropic's stop reasons (render.py); streamed, as Anthropic's events. Errors under
/v1/messages have Anthropic's shape (errors.py), a full queue being its 529 overloaded_error,
and its clients' key header, `x-api-key`, is taken.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanovllm.server.api.messages.errors import ANTHROPIC_ERRORS, X_API_KEY
from nanovllm.server.api.messages.protocol import (
    ANTHROPIC_ERROR_RESPONSES,
    AnthropicRequestFields,
    CountTokensRequest,
    CountTokensResponse,
    MessagesRequest,
)
from nanovllm.server.api.messages.render import message_events, message_object
from nanovllm.server.api.messages.thinking import effort_kwargs, thinking_fields
from nanovllm.server.api.spec import APISpec
from nanovllm.server.chat.front_end import chat_request, prompt_tokens, renaming
from nanovllm.server.chat.run import chat_result, chat_stream, start_chat
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.protocol import STREAM_RESPONSE
from nanovllm.server.serving import Ctx, streamed
from nanovllm.values.errors import ContextLengthError, quote

# The chat request's fields, as this API calls them (for the errors the chat path raises).
CHAT_NAMES = {"max_completion_tokens": "max_tokens", "stop": "stop_sequences",
              "response_format": "output_config", "thinking_token_budget": "thinking"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}  # and "tool": named
SKIPPED_BLOCKS = ("thinking", "redacted_thinking")  # earlier reasoning is not shown again
OUTPUT_CONFIG = ("format", "effort")
BILLING_LINE = "x-anthropic-billing-header:"  # Claude Code's, one per conversation


router = APIRouter()


@router.post("/v1/messages", responses={**ANTHROPIC_ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_message(body: MessagesRequest, raw: Request, ctx: Ctx) -> Response:
    """Anthropic's Messages API over the chat path (see the module's docstring)."""
    body.check_fields(ctx.ignored_fields)
    req = chat_request(chat_fields(body), CHAT_NAMES)
    try:
        with renaming(CHAT_NAMES):
            run = await start_chat(req, ctx)
    except APIError as exc:
        raise in_anthropics_words(exc) from exc
    if body.stream:
        return streamed(run.stream, message_events(run.ctx.served_name, chat_stream(run)))
    with renaming(CHAT_NAMES):
        result = await chat_result(raw, run)
    if result is None:  # the client left
        return JSONResponse({}, status_code=499)
    return JSONResponse(message_object(run.ctx.served_name, result))


@router.post("/v1/messages/count_tokens", response_model=CountTokensResponse,
             responses=ANTHROPIC_ERROR_RESPONSES)
async def count_tokens(body: CountTokensRequest, ctx: Ctx) -> dict:
    """The prompt's tokens, exactly as /v1/messages would run it."""
    body.check_fields(ctx.ignored_fields)
    req = chat_request(prompt_fields(body), CHAT_NAMES)
    try:
        return {"input_tokens": await prompt_tokens(req, ctx, CHAT_NAMES)}
    except APIError as exc:
        raise in_anthropics_words(exc) from exc


def in_anthropics_words(exc: APIError) -> APIError:
    """A request too long for the context, said as Anthropic says it (Claude Code reads the
    numbers: to ask again with a smaller max_tokens, or to compact the conversation); any other
    refusal as it is."""
    cause = exc
    while cause is not None and not isinstance(cause, ContextLengthError):
        cause = cause.__cause__
    if cause is None or cause.prompt_tokens is None and cause.prompt_chars is None:
        return exc
    n, limit, most = cause.prompt_tokens, cause.limit, cause.max_tokens
    if n is not None and n < limit and most is not None:
        return APIError(f"input length and `max_tokens` exceed context limit: {n} + {most} > "
                        f"{limit}, decrease input length or `max_tokens` and try again", 400,
                        "max_tokens")
    return APIError(f"prompt is too long: {n if n is not None else limit} tokens > "
                    f"{limit - 1} maximum", 400, "messages")


# The request, as a chat request.


def prompt_fields(body: AnthropicRequestFields, max_tokens: int | None = None,
                  effort: dict | None = None) -> dict:
    """What makes the prompt: the system prompt, messages, tools and the template's switches
    (`effort`: its output_config.effort variable)."""
    tool_choice = body.tool_choice or {}
    thinking = thinking_fields(body.thinking, max_tokens)
    kwargs = {**thinking.pop("chat_template_kwargs", {}), **(effort or {})}
    return {"model": body.model, "messages": chat_messages(body.system, body.messages),
            "tools": chat_tools(body.tools), "tool_choice": chat_tool_choice(body.tool_choice),
            "parallel_tool_calls": False if tool_choice.get("disable_parallel_tool_use") else None,
            "chat_template_kwargs": kwargs or None, **thinking}


def chat_fields(body: MessagesRequest) -> dict:
    return {**prompt_fields(body, body.max_tokens, effort_kwargs(body.output_config)),
            "max_completion_tokens": body.max_tokens,
            "response_format": response_format(body.output_config),
            "stop": body.stop_sequences, "temperature": body.temperature, "top_p": body.top_p,
            "top_k": body.top_k, "user": (body.metadata or {}).get("user_id"),
            "stream": body.stream}


def response_format(config: dict | None) -> dict | None:
    """output_config.format (a JSON schema) as the chat API's response_format: a structured
    output."""
    config = config or {}
    if unknown := sorted(k for k, v in config.items() if k not in OUTPUT_CONFIG
                         and v is not None):
        raise bad_request(f"output_config.{unknown[0]}: Extra inputs are not permitted.",
                          "output_config")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise bad_request("output_config.format.type must be json_schema.", "output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema")}}


def chat_messages(system, messages: list[dict]) -> list[dict]:
    """`system` first, then each message in place: a system message inside `messages` (Claude
    Code sends its agent list so) stays where it is, so the prompt before it is unchanged and
    the prefix cache still holds it."""
    system = without_billing_line(system)
    out = [{"role": "system", "content": text_blocks(system, "system")}] if system else []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant", "system"):
            raise bad_request(f"{where}.role: Input should be 'user', 'assistant' or "
                              "'system'.", "messages")
        content = msg.get("content")
        if role == "system":
            out.append({"role": "system", "content": text_blocks(content, f"{where}.content")})
        elif isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of content blocks.",
                              "messages")
        elif role == "user":
            out += user_messages(content, f"{where}.content")
        else:
            out.append(assistant_message(content, f"{where}.content"))
    return out


def without_billing_line(system):
    """`system` without Claude Code's billing line, which differs between conversations: at
    the front of the prompt it would leave nothing for the prefix cache to share."""
    if isinstance(system, list):
        return [b for b in system if not (isinstance(b, dict) and isinstance(b.get("text"), str)
                                          and b["text"].startswith(BILLING_LINE))]
    if isinstance(system, str) and system.startswith(BILLING_LINE):
        return system.partition("\n")[2]
    return system


def user_messages(blocks: list, where: str) -> list[dict]:
    """A user turn's blocks in order: each tool_result a tool message, text blocks between
    them one user message."""
    out, texts = [], []
    for j, block in enumerate(blocks):
        kind = _kind(block)
        if kind == "text":
            texts.append(_text_part(block, f"{where}[{j}]"))
        elif kind == "tool_result":
            if texts:
                out.append({"role": "user", "content": texts})
                texts = []
            out.append(tool_message(block, f"{where}[{j}]"))
        else:
            raise _unsupported_block(kind, f"{where}[{j}]", "text and tool_result")
    if texts:
        out.append({"role": "user", "content": texts})
    return out


def tool_message(block: dict, where: str) -> dict:
    """A tool_result as a chat tool message; an error result's text says it was one (chat
    templates have no error flag)."""
    content = block.get("content")
    text = "" if content is None else content if isinstance(content, str) \
        else "\n".join(p["text"] for p in text_blocks(content, f"{where}.content"))
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": _string(block, "tool_use_id", where),
            "content": text}


def assistant_message(blocks: list, where: str) -> dict:
    texts, calls = [], []
    for j, block in enumerate(blocks):
        kind = _kind(block)
        if kind == "text":
            texts.append(_text_part(block, f"{where}[{j}]"))
        elif kind == "tool_use":
            if not isinstance(block.get("input"), dict):
                raise bad_request(f"{where}[{j}].input must be an object.", "messages")
            calls.append({"id": _string(block, "id", f"{where}[{j}]"), "type": "function",
                          "function": {"name": _string(block, "name", f"{where}[{j}]"),
                                       "arguments": json.dumps(block["input"])}})
        elif kind not in SKIPPED_BLOCKS:
            raise _unsupported_block(kind, f"{where}[{j}]", "text, tool_use and thinking")
    message = {"role": "assistant", "content": texts or None}
    if calls:
        message["tool_calls"] = calls
    return message


def text_blocks(content, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text blocks.", _field(where))
    out = []
    for j, block in enumerate(content):
        if _kind(block) != "text":
            raise _unsupported_block(_kind(block), f"{where}[{j}]", "text")
        out.append(_text_part(block, f"{where}[{j}]"))
    return out


def _kind(block) -> str | None:
    return block.get("type") if isinstance(block, dict) else None


def _text_part(block: dict, where: str) -> dict:
    return {"type": "text", "text": _string(block, "text", where)}


def _string(block: dict, key: str, where: str) -> str:
    if not isinstance(block.get(key), str):
        raise bad_request(f"{where}.{key} must be a string.", _field(where))
    return block[key]


def _field(where: str) -> str:
    return where.split("[", 1)[0].split(".", 1)[0]


def _unsupported_block(kind, where: str, supported: str):
    return bad_request(f"{where}: content blocks of type {quote(kind, 50)} are not supported "
                       f"here ({supported} are): this model reads only text.", _field(where))


def chat_tools(tools: list[dict] | None) -> list[dict] | None:
    """Client tools in the chat API's shape; Anthropic's server tools are not run here."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise bad_request(f"tools[{i}]: tools of type {quote(kind, 50)} are not supported "
                              "here (client tools are: name, description, input_schema).",
                              "tools")
        # In the chat API's order: a template writes the tools as JSON, keys in this order.
        function = {"name": tool.get("name"), "description": tool.get("description"),
                    "parameters": tool.get("input_schema")}
        if function["description"] is None:
            del function["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: dict | None):
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in TOOL_CHOICES:
        return TOOL_CHOICES[kind]
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("tool_choice.type must be auto, any, none, or tool with a name.",
                      "tool_choice")


API = APISpec(router, paths=("/v1/messages",), errors=ANTHROPIC_ERRORS,
              key_header=X_API_KEY, generating=("/v1/messages",))
