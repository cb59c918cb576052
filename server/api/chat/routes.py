"""POST /v1/chat/completions: messages rendered by a chat template into one prompt, then the
shared serving, answered in OpenAI's chat shapes.

Without a template (`--chat-template`, or the checkpoint's own) the endpoint is a 400, as in
vLLM: GPT-2 is a base model, and a made-up chat format would look like a working chat API.
Message content is a string or a list of text parts (joined with newlines, as vLLM's "string"
content format does); images and audio are refused naming the field. Tools, tool calls and
reasoning output are the chat path's shared pieces (chat_plan.py decides, chat_output.py reads
the answer back); this module only shapes OpenAI's answer from them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nanovllm import SamplingParams
from nanovllm.server.chat.output import MessageStream, OutputRules, parse_message
from nanovllm.server.chat.plan import plan_chat
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.chat.template import content_text
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import (
    ChoiceState,
    Ctx,
    RequestStream,
    ServerContext,
    check_response_size,
    context_length_in_terms_of,
    final_response,
    new_request_id,
    off_loop_if_big,
    prompt_logprobs_field,
    stream_events,
    streamed,
    submit,
    token_id_fields,
    token_namer,
    usage,
)
from nanovllm.server.structured import wants_structure
from nanovllm.values.request import EngineRequest

router = APIRouter()


@router.post("/v1/chat/completions", responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_chat_completion(body: ChatCompletionRequest, raw: Request, ctx: Ctx) -> Response:
    """A 400 unless the server has a chat template (see the module's docstring)."""
    chars = sum(len(str(m.get("content", ""))) for m in body.messages)
    request_id = new_request_id("chatcmpl")
    prompt, params, rules = await off_loop_if_big(
        chars, prepare_chat, body, ctx, request_id,
        heavy=wants_structure(body) or bool(body.tools))
    stream = await submit(ctx, request_id, [prompt], params.n)
    if body.stream:
        return streamed(stream, chat_events(body, ctx, stream, rules))
    return await final_response(
        raw, stream, lambda created, results: build_chat_response(body, ctx, stream, created,
                                                                  results[0], rules))


# Chat fields that would change the answer and that this server does not implement.
UNSUPPORTED_CHAT_FIELDS = ("functions", "function_call", "audio", "modalities",
                           "prediction", "chat_template", "documents", "web_search_options")


def check_chat_supported(req: ChatCompletionRequest) -> None:
    req.refuse_unsupported_fields(known=UNSUPPORTED_CHAT_FIELDS)
    extra = req.model_extra or {}
    for name in UNSUPPORTED_CHAT_FIELDS:
        if extra.get(name) not in (None, [], {}, ""):
            raise bad_request(f"`{name}` is not supported by this server.", name)
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


def prepare_chat(req: ChatCompletionRequest, ctx: ServerContext,
                 request_id: str) -> tuple[EngineRequest, SamplingParams, OutputRules]:
    """All validation, the engine's included, before anything is submitted; a 400 if it fails."""
    ctx.check_model(req.model)
    ctx.engine.processor.check_generates()  # (before the template: an encoder has none)
    ctx.apply_defaults(req)
    check_chat_supported(req)
    plan = plan_chat(req, ctx)
    if plan.keep_special_tokens:  # the parser reads its tag, a special token, in the text
        req.skip_special_tokens = False
    params = req.to_sampling_params(structured=plan.structured)
    # The rendered template holds the special tokens (bos_token): none are added (vLLM's rule).
    with context_length_in_terms_of("messages", req.length_field):
        prompt = ctx.engine.processor.process(f"{request_id}-0", plan.prompt, params,
                                              add_special_tokens=False)
    check_response_size(params, [prompt], False, ctx.limits, ctx.engine.max_model_len)
    return prompt, params, plan.rules


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


def echoed_content(req: ChatCompletionRequest) -> str:
    """vLLM's chat echo: the last message's content, when the assistant wrote it (the turn a
    continue_final_message request continues); nothing otherwise."""
    if not req.echo:
        return ""
    last = req.messages[-1]
    if last.get("role") != "assistant":
        return ""
    return content_text(last.get("content"), f"messages[{len(req.messages) - 1}].content")


def prompt_ids_field(req: ChatCompletionRequest, prompt: EngineRequest) -> dict:
    """Chat's return_token_ids: the rendered prompt's ids, once per response (vLLM's place)."""
    return {"prompt_token_ids": list(prompt.prompt_token_ids)} if req.return_token_ids else {}


def chat_message(rules: OutputRules, text: str, echo: str) -> tuple[dict, bool]:
    """OpenAI's assistant message for an answer's text, and whether it calls tools."""
    if rules.plain:
        return {"role": "assistant", "content": echo + text, "refusal": None,
                "tool_calls": []}, False
    msg = parse_message(rules, text)
    content = echo + (msg.content or "") if echo else msg.content
    message = {"role": "assistant", "content": content or (None if msg.tool_calls else content),
               "refusal": None, "tool_calls": [c.to_openai() for c in msg.tool_calls]}
    if rules.reasoning is not None:
        message["reasoning_content"] = msg.reasoning_content
    return message, bool(msg.tool_calls)


def finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's: "tool_calls" when an answer that ended by itself called tools."""
    return "tool_calls" if called and reason == "stop" else reason


def build_chat_response(req: ChatCompletionRequest, ctx: ServerContext, stream: RequestStream,
                        created: int, result, rules: OutputRules) -> dict:
    tok = ctx.engine.tokenizer
    echo = echoed_content(req)
    choices = []
    for out in sorted(result.outputs, key=lambda o: o.index):
        message, called = chat_message(rules, out.text, echo)
        choices.append({"index": out.index, "message": message,
                        "logprobs": _choice_logprobs(req, out, 0, len(out.token_ids), tok),
                        "finish_reason": finish_reason(out.finish_reason, called),
                        "stop_reason": out.stop_reason,
                        **token_id_fields(req, None, out.token_ids)})
    return {"id": stream.request_id, "object": "chat.completion", "created": created,
            "model": ctx.model_name, "choices": choices,
            "usage": usage(stream.requests, {0: result}),
            "system_fingerprint": None, "prompt_logprobs": prompt_logprobs_field(result),
            **prompt_ids_field(req, stream.requests[0])}


def chat_delta(req: ChatCompletionRequest, out, st: ChoiceState, tok,
               parser: MessageStream | None = None) -> dict | None:
    """The next chunk's choice for one output, or None when there is nothing new. With a
    `parser` (reasoning or tools), the delta holds what it read from the new text."""
    finished = out.finish_reason is not None
    text = out.text[st.text_len:]
    if st.finished or not (text or finished or (req.logprobs and len(out.token_ids) > st.num_tokens)):
        return None
    logprobs = _choice_logprobs(req, out, st.num_tokens, len(out.token_ids), tok)
    ids = token_id_fields(req, None, out.token_ids[st.num_tokens:])
    st.text_len, st.num_tokens, st.finished = len(out.text), len(out.token_ids), finished
    reason = out.finish_reason
    if parser is None:
        delta = {"content": text} if text or not finished else {}
    else:
        delta = parser.update(out.text, finished)
        reason = finish_reason(reason, bool(parser.calls))
        if not (delta or finished or logprobs):
            return None
    return {"delta": delta, "logprobs": logprobs, "finish_reason": reason,
            "stop_reason": out.stop_reason, **ids}


def chat_events(req: ChatCompletionRequest, ctx: ServerContext,
                stream: RequestStream, rules: OutputRules) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: each choice's role first (the first chunk with the prompt's
    ids, for return_token_ids), then the echo if any (vLLM's: after the roles, before any new
    token), then content deltas (the last with its finish_reason), then, with
    stream_options.include_usage, one usage chunk."""
    tok = ctx.engine.tokenizer
    head = {"id": stream.request_id, "object": "chat.completion.chunk",
            "created": int(time.time()), "model": ctx.model_name, "system_fingerprint": None}
    opening = [{"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}],
                **(prompt_ids_field(req, stream.requests[0]) if i == 0 else {})}
               for i in range(req.n)]
    if echo := echoed_content(req):
        opening += [{"choices": [{"index": i, "delta": {"content": echo}, "logprobs": None,
                                  "finish_reason": None}]} for i in range(req.n)]
    parsers: dict[int, MessageStream] = {}

    def delta(_tag, _result, out, st):
        parser = None if rules.plain else parsers.setdefault(out.index, MessageStream(rules))
        return chat_delta(req, out, st, tok, parser)

    return stream_events(stream, head, delta, req.stream_options, opening=opening)
