"""The chat path's answer (server/chat/result.py) in OpenAI's chat shapes: a chat.completion,
or its chat.completion.chunk stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nanovllm.server.api.openai import (
    chunk_events,
    prompt_logprobs_field,
    token_id_fields,
    token_namer,
    usage_json,
)
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.chat.result import (
    ChatAnswer,
    ChatDelta,
    ChatResult,
    ChatStream,
    ToolCall,
    ToolCallDelta,
)
from nanovllm.server.chat.run import ChatRun
from nanovllm.server.chat.template import content_text
from nanovllm.server.serving import ServerContext


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


def _logprobs(req: ChatCompletionRequest, token_ids, steps, tokenizer) -> dict | None:
    if not req.logprobs:
        return None
    return chat_logprobs(token_ids, steps or [], req.top_logprobs or 0,
                         token_namer(req, tokenizer), tokenizer.token_bytes)


def echoed_content(req: ChatCompletionRequest) -> str:
    """vLLM's chat echo: the last message's content, when the assistant wrote it (the turn a
    continue_final_message request continues); nothing otherwise."""
    if not req.echo:
        return ""
    last = req.messages[-1]
    if last.get("role") != "assistant":
        return ""
    return content_text(last.get("content"), f"messages[{len(req.messages) - 1}].content")


def prompt_ids_field(req: ChatCompletionRequest, prompt_token_ids: list[int]) -> dict:
    """Chat's return_token_ids: the rendered prompt's ids, once per response (vLLM's place)."""
    return {"prompt_token_ids": list(prompt_token_ids)} if req.return_token_ids else {}


def tool_call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_delta(call: ToolCallDelta) -> dict:
    """A call's first delta: its index, id, type and name; later ones: argument fragments."""
    if call.id is None:
        return {"index": call.index, "function": {"arguments": call.arguments}}
    return {"index": call.index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def chat_message(run: ChatRun, answer: ChatAnswer, echo: str) -> dict:
    """OpenAI's assistant message; `reasoning_content` only with a reasoning parser."""
    content = echo + (answer.content or "") if echo else answer.content
    message = {"role": "assistant",
               "content": content or (None if answer.tool_calls else content),
               "refusal": None, "tool_calls": [tool_call(c) for c in answer.tool_calls]}
    if run.rules.reasoning is not None:
        message["reasoning_content"] = answer.reasoning_content
    return message


def finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's: "tool_calls" when an answer that ended by itself called tools."""
    return "tool_calls" if called and reason == "stop" else reason


def chat_completion(run: ChatRun, ctx: ServerContext, result: ChatResult) -> dict:
    req, tok, echo = run.req, ctx.engine.tokenizer, echoed_content(run.req)
    choices = [{"index": a.index, "message": chat_message(run, a, echo),
                "logprobs": _logprobs(req, a.token_ids, a.logprobs, tok),
                "finish_reason": finish_reason(a.finish_reason, bool(a.tool_calls)),
                "stop_reason": a.stop_reason, **token_id_fields(req, None, a.token_ids)}
               for a in result.choices]
    return {"id": result.id, "object": "chat.completion", "created": result.created,
            "model": ctx.served_name, "choices": choices, "usage": usage_json(result.usage),
            "system_fingerprint": None,
            "prompt_logprobs": prompt_logprobs_field(result.prompt_logprobs),
            **prompt_ids_field(req, result.prompt_token_ids)}


# Streamed.


def chat_events(run: ChatRun, ctx: ServerContext, stream: ChatStream) -> AsyncIterator[str]:
    return chunk_events(chat_chunks(run, ctx, stream))


async def chat_chunks(run: ChatRun, ctx: ServerContext,
                      stream: ChatStream) -> AsyncIterator[dict]:
    """OpenAI's chunk sequence: each choice's role first (the first chunk with the prompt's
    ids, for return_token_ids), then the echo if any (vLLM's: after the roles, before any new
    token), then one chunk per delta (the last of a choice with its finish_reason), then, with
    stream_options.include_usage, one usage chunk. Each chunk's "usage" is null (as vLLM's),
    or with vLLM's continuous_usage_stats the usage so far."""
    req, options = run.req, run.req.stream_options
    continuous = bool(options and options.include_usage and options.continuous_usage_stats)
    head = {"id": stream.id, "object": "chat.completion.chunk", "created": stream.created,
            "model": ctx.served_name, "system_fingerprint": None}

    def chunk(choice: dict | None, **fields) -> dict:
        return {**head, "choices": [] if choice is None else [choice],
                "usage": usage_json(stream.usage) if continuous else None, **fields}

    for i in range(req.n):
        yield chunk({"index": i, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None},
                    **(prompt_ids_field(req, stream.prompt_token_ids) if i == 0 else {}))
    if echo := echoed_content(req):
        for i in range(req.n):
            yield chunk({"index": i, "delta": {"content": echo}, "logprobs": None,
                         "finish_reason": None})
    called: set[int] = set()
    async for delta in stream.deltas:
        if delta.tool_calls:
            called.add(delta.index)
        yield chunk(delta_choice(run, ctx, delta, delta.index in called))
    if options and options.include_usage:
        yield {**head, "choices": [], "usage": usage_json(stream.usage)}


def delta_choice(run: ChatRun, ctx: ServerContext, delta: ChatDelta, called: bool) -> dict:
    finished = delta.finish_reason is not None
    if run.rules.plain:  # (every chunk but the last has content, "" if need be)
        fields = {"content": delta.content} if delta.content or not finished else {}
    else:
        fields = {k: v for k, v in (("reasoning_content", delta.reasoning_content),
                                    ("content", delta.content),
                                    ("tool_calls", [tool_call_delta(c) for c in delta.tool_calls]))
                  if v}
    return {"index": delta.index, "delta": fields,
            "logprobs": _logprobs(run.req, delta.token_ids, delta.logprobs, ctx.engine.tokenizer),
            "finish_reason": delta.finish_reason if run.rules.plain
            else finish_reason(delta.finish_reason, called),
            "stop_reason": delta.stop_reason, **token_id_fields(run.req, None, delta.token_ids)}
