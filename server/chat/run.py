"""The chat path, from a chat request to its answer as values (server/chat/result.py): checked
and planned (plan.py) into one engine request, submitted, and its outputs read back as
messages (output.py), whole (`chat_result`) or as they grow (`chat_stream`). Every API over the
chat path (chat completions, Responses, Messages) calls these and renders what they give.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Request

from nanovllm import SamplingParams
from nanovllm.server.chat.output import MessageStream, OutputRules, parse_message
from nanovllm.server.chat.plan import plan_chat
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.chat.result import ChatAnswer, ChatDelta, ChatResult, ChatStream
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.serving import (
    ChoiceState,
    RequestStream,
    ServerContext,
    check_response_size,
    context_length_in_terms_of,
    engine_error,
    final_outputs,
    new_request_id,
    off_loop_if_big,
    submit,
    usage,
)
from nanovllm.server.structured import wants_structure
from nanovllm.values.request import EngineRequest

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
                                              add_special_tokens=False, priority=req.priority)
    check_response_size(params, [prompt], False, ctx.limits, ctx.engine.max_model_len)
    return replace(prompt, adapter_id=ctx.adapter_id), params, plan.rules


@dataclass(slots=True)
class ChatRun:
    """A submitted chat request: its engine request's outputs and how they are read."""

    req: ChatCompletionRequest
    stream: RequestStream
    rules: OutputRules
    ctx: ServerContext  # bound to the request's model (ServerContext.model_for)

    @property
    def prompt_token_ids(self) -> list[int]:
        return list(self.stream.requests[0].prompt_token_ids)


async def start_chat(req: ChatCompletionRequest, ctx: ServerContext) -> ChatRun:
    """Checks, plans and submits `req` (a 400 before anything runs if it cannot; a 404 for a
    model this server does not serve)."""
    ctx = await ctx.model_for(req.model)
    chars = sum(len(str(m.get("content", ""))) for m in req.messages)
    request_id = new_request_id("chatcmpl")
    prompt, params, rules = await off_loop_if_big(
        chars, prepare_chat, req, ctx, request_id,
        heavy=wants_structure(req) or bool(req.tools))
    return ChatRun(req, await submit(ctx, request_id, [prompt], params.n), rules, ctx)


async def chat_result(raw: Request, run: ChatRun) -> ChatResult | None:
    """The whole answer, or None if the client went away first (its request is aborted)."""
    created = int(time.time())
    results = await final_outputs(raw, run.stream)
    if results is None:
        return None
    result = results[0]
    return ChatResult(run.stream.request_id, created,
                      [_answer(run, out) for out in sorted(result.outputs, key=lambda o: o.index)],
                      usage(run.stream.requests, results), run.prompt_token_ids,
                      result.prompt_logprobs, result.metrics)


def _answer(run: ChatRun, out) -> ChatAnswer:
    answer = parse_message(run.rules, out.text)
    answer.finish_reason, answer.stop_reason = out.finish_reason, out.stop_reason
    answer.index, answer.token_ids = out.index, list(out.token_ids)
    answer.logprobs = out.logprobs if run.req.logprobs else None
    return answer


def chat_stream(run: ChatRun) -> ChatStream:
    """The answer as it grows; closing the run's request stream (SSEResponse does, however
    the response ends) aborts it."""
    stream = ChatStream(run.stream.request_id, int(time.time()),
                        usage(run.stream.requests, {}), None, run.prompt_token_ids)
    stream.deltas = _deltas(run, stream)
    return stream


async def _deltas(run: ChatRun, stream: ChatStream) -> AsyncIterator[ChatDelta]:
    """Each step's deltas, one per choice with something new (stream.usage updated first). The
    engine's running text never ends in a partial UTF-8 character nor in a prefix of a stop
    string, so new text is simply the new suffix of the cumulative text."""
    states: dict[int, ChoiceState] = {}
    parsers: dict[int, MessageStream] = {}
    final: dict = {}
    try:
        while not run.stream.done:
            batch = await run.stream.next_batch()
            final.update(batch)
            deltas = []
            for out in batch[0].outputs:
                parser = None if run.rules.plain else \
                    parsers.setdefault(out.index, MessageStream(run.rules))
                delta = _next_delta(run, out, states.setdefault(out.index, ChoiceState()),
                                    parser)
                if delta is not None:
                    deltas.append(delta)
            stream.usage = usage(run.stream.requests, final)
            for delta in deltas:
                yield delta
    except APIError:
        raise
    except Exception as exc:
        raise engine_error(exc) from exc


def _next_delta(run: ChatRun, out, st: ChoiceState,
                parser: MessageStream | None) -> ChatDelta | None:
    """What one output adds since `st`, or None when it adds nothing to say."""
    finished = out.finish_reason is not None
    text = out.text[st.text_len:]
    logprobs = bool(run.req.logprobs)
    if st.finished or not (text or finished or (logprobs and len(out.token_ids) > st.num_tokens)):
        return None
    token_ids = list(out.token_ids[st.num_tokens:])
    steps = list((out.logprobs or [])[st.num_tokens:]) if logprobs else None
    st.text_len, st.num_tokens, st.finished = len(out.text), len(out.token_ids), finished
    if parser is None:
        delta = ChatDelta(content=text)
    else:
        delta = parser.update(out.text, finished)
        if not (delta.says_something or finished or logprobs):
            return None
    delta.index, delta.token_ids, delta.logprobs = out.index, token_ids, steps
    delta.finish_reason, delta.stop_reason = out.finish_reason, out.stop_reason
    return delta
