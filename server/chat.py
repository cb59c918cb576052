"""POST /v1/chat/completions: messages rendered by a chat template into one prompt, then the
completions machinery, answered in OpenAI's chat shapes.

Without a template (`--chat-template`, or the checkpoint's own) the endpoint is a 400, as in
vLLM: GPT-2 is a base model, and a made-up chat format would look like a working chat API.
Message content is a string or a list of text parts (joined with newlines, as vLLM's "string"
content format does); images, audio and tool calls are refused naming the field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from nanovllm import SamplingParams
from nanovllm.server.chat_protocol import MAX_CHAT_CHARS, ChatCompletionRequest
from nanovllm.server.chat_template import ChatTemplateError
from nanovllm.server.completions import (
    engine_error,
    final_outputs,
    prompt_logprobs_field,
    token_id_fields,
    token_namer,
    usage,
)
from nanovllm.server.context import ServerContext
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.prompts import (
    check_response_size,
    check_unsupported_fields,
    sampling_params,
)
from nanovllm.server.request_stream import RequestStream
from nanovllm.server.streaming import sse
from nanovllm.server.structured import constraint_for
from nanovllm.values.limits import ServerLimits
from nanovllm.values.request import EngineRequest

# Chat fields that would change the answer and that this server does not implement.
UNSUPPORTED_CHAT_FIELDS = ("tools", "functions", "function_call", "audio", "modalities",
                           "prediction", "chat_template", "documents", "web_search_options")
_UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "tool_call_id", "function_call", "audio")


def check_chat_supported(req: ChatCompletionRequest) -> None:
    check_unsupported_fields(req, known=(*UNSUPPORTED_CHAT_FIELDS, "tool_choice"))
    extra = req.model_extra or {}
    for name in UNSUPPORTED_CHAT_FIELDS:
        if extra.get(name) not in (None, [], {}, ""):
            raise bad_request(f"`{name}` is not supported by this server.", name)
    if extra.get("tool_choice") not in (None, "none"):
        raise bad_request("`tool_choice` is not supported by this server (no tools).",
                          "tool_choice")
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("`prompt_logprobs` are not available when `stream=True`.",
                          "prompt_logprobs")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("`top_logprobs` needs `logprobs` set to true.", "top_logprobs")
    if req.add_generation_prompt and req.continue_final_message:
        raise bad_request("Cannot set both `continue_final_message` and "
                          "`add_generation_prompt` to true.", "continue_final_message")
    if req.stream_options is not None and not req.stream:
        raise bad_request("`stream_options` can only be defined when `stream=True`.",
                          "stream_options")


def _content_text(content, where: str) -> str:
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
        text = _content_text(msg.get("content"), f"messages[{i}].content")
        total += len(text)
        if total > MAX_CHAT_CHARS:
            raise bad_request(f"The messages hold more than {MAX_CHAT_CHARS} characters.",
                              "messages")
        entry = {"role": role, "content": text}
        if isinstance(msg.get("name"), str):
            entry["name"] = msg["name"]
        out.append(entry)
    return out


def render_prompt(req: ChatCompletionRequest, ctx: ServerContext) -> str:
    if ctx.chat_template is None:
        raise bad_request(
            f"The model `{ctx.model_name}` has no chat template, so /v1/chat/completions is not "
            "available: start the server with --chat-template FILE (e.g. "
            "examples/chat_template_gpt2.jinja), or send a plain-text prompt to "
            "POST /v1/completions.", "messages")
    messages = normalize_messages(req.messages)
    try:
        text = ctx.chat_template.render(messages, req.add_generation_prompt)
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


def prepare_chat(req: ChatCompletionRequest, ctx: ServerContext, limits: ServerLimits,
                 request_id: str) -> tuple[EngineRequest, SamplingParams]:
    ctx.check_model(req.model)
    ctx.apply_defaults(req)
    check_chat_supported(req)
    text = render_prompt(req, ctx)
    params = sampling_params(req, logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                             prompt_logprobs=req.prompt_logprobs,
                             structured=constraint_for(req, ctx.grammar_compiler))
    prompt = ctx.engine_loop.processor.process(f"{request_id}-0", text, params)
    check_response_size(params, [prompt], False, limits, ctx.engine_loop.max_model_len)
    return prompt, params


def chat_logprobs(token_ids, steps, top_n: int, name: Callable[[int], str],
                  token_bytes: list[bytes]) -> dict:
    """OpenAI's chat logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(tid: int, logprob: float) -> dict:
        return {"token": name(tid), "logprob": max(logprob, -9999.0),
                "bytes": list(token_bytes[tid]) if tid < len(token_bytes) else None}

    content = []
    for tid, step in zip(token_ids, steps, strict=False):
        top = sorted(((t, p) for t, p in step.items() if p.rank <= top_n), key=lambda kv: kv[1].rank)
        content.append({**entry(tid, step[tid].logprob),
                        "top_logprobs": [entry(t, p.logprob) for t, p in top]})
    return {"content": content}


def _choice_logprobs(req, out, start: int, stop: int, tokenizer) -> dict | None:
    if not req.logprobs:
        return None
    return chat_logprobs(out.token_ids[start:stop], (out.logprobs or [])[start:stop],
                         req.top_logprobs or 0, token_namer(req, tokenizer), tokenizer.token_bytes)


def echoed_content(req) -> str:
    """vLLM's chat echo: the last message's content, when the assistant wrote it (the turn a
    continue_final_message request continues); nothing otherwise."""
    if not req.echo:
        return ""
    last = req.messages[-1]
    if last.get("role") != "assistant":
        return ""
    return _content_text(last.get("content"), f"messages[{len(req.messages) - 1}].content")


def build_chat_response(req, ctx, request_id: str, created: int, prompt: EngineRequest,
                        result) -> dict:
    tok = ctx.engine_loop.tokenizer
    echo = echoed_content(req)
    choices = [{"index": out.index,
                "message": {"role": "assistant", "content": echo + out.text, "refusal": None,
                            "tool_calls": []},
                "logprobs": _choice_logprobs(req, out, 0, len(out.token_ids), tok),
                "finish_reason": out.finish_reason, "stop_reason": out.stop_reason,
                **token_id_fields(req, None, out.token_ids)}
               for out in sorted(result.outputs, key=lambda o: o.index)]
    return {"id": request_id, "object": "chat.completion", "created": created,
            "model": ctx.model_name, "choices": choices, "usage": usage([prompt], {0: result}),
            "system_fingerprint": None, "prompt_logprobs": prompt_logprobs_field(result),
            **prompt_ids_field(req, prompt)}


def prompt_ids_field(req, prompt: EngineRequest) -> dict:
    """Chat's return_token_ids: the rendered prompt's ids, once per response (vLLM's place)."""
    return {"prompt_token_ids": list(prompt.prompt_token_ids)} if req.return_token_ids else {}


async def complete_chat(raw: Request, req, ctx: ServerContext, prompt: EngineRequest,
                        stream: RequestStream) -> JSONResponse:
    """Non-streaming: wait for every choice, or abort at once if the client goes away."""
    created = int(time.time())
    results = await final_outputs(raw, stream)
    if results is None:
        return JSONResponse({}, status_code=499)
    return JSONResponse(build_chat_response(req, ctx, stream.request_id, created, prompt,
                                            results[0]))


@dataclass(slots=True)
class ChatChoiceState:
    text_len: int = 0
    num_tokens: int = 0
    finished: bool = False


def chat_delta(req, out, st: ChatChoiceState, tok) -> dict | None:
    """The next chunk's choice for one output, or None when there is nothing new."""
    finished = out.finish_reason is not None
    text = out.text[st.text_len:]
    if st.finished or not (text or finished or (req.logprobs and len(out.token_ids) > st.num_tokens)):
        return None
    logprobs = _choice_logprobs(req, out, st.num_tokens, len(out.token_ids), tok)
    ids = token_id_fields(req, None, out.token_ids[st.num_tokens:])
    st.text_len, st.num_tokens, st.finished = len(out.text), len(out.token_ids), finished
    return {"index": out.index, "delta": {"content": text} if text or not finished else {},
            "logprobs": logprobs, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason, **ids}


async def chat_events(req, ctx, prompt: EngineRequest, stream: RequestStream) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: each choice's role first, then content deltas (the last with
    its finish_reason), then, with stream_options.include_usage, one usage chunk."""
    tok = ctx.engine_loop.tokenizer
    head = {"id": stream.request_id, "object": "chat.completion.chunk",
            "created": int(time.time()), "model": ctx.model_name, "system_fingerprint": None}
    options = req.stream_options
    continuous = bool(options and options.include_usage and options.continuous_usage_stats)
    states = [ChatChoiceState() for _ in range(req.n)]
    final: dict = {}
    try:
        for i in range(req.n):
            role = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
            first = prompt_ids_field(req, prompt) if i == 0 else {}  # on the first chunk
            yield sse({**head, "choices": [role], "usage": usage([prompt], {}) if continuous
                       else None, **first})
        if echo := echoed_content(req):  # as vLLM: after the roles, before any new token
            for i in range(req.n):
                choice = {"index": i, "delta": {"content": echo}, "logprobs": None,
                          "finish_reason": None}
                yield sse({**head, "choices": [choice], "usage": usage([prompt], {})
                           if continuous else None})
        while not stream.done:
            batch = await stream.next_batch()
            final.update(batch)
            for out in batch[0].outputs if 0 in batch else []:
                choice = chat_delta(req, out, states[out.index], tok)
                if choice is not None:
                    running = usage([prompt], final) if continuous else None
                    yield sse({**head, "choices": [choice], "usage": running})
        if options and options.include_usage:
            yield sse({**head, "choices": [], "usage": usage([prompt], final)})
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        yield sse(error.body())
    yield sse("[DONE]")
