"""POST /v1/completions: validate, hand to the engine, and build OpenAI-shaped responses.

Choice index = prompt_index * n + output.index (vLLM). Usage counts each prompt's tokens once
and every choice's generated tokens. Legacy logprobs follow vLLM: tokens, token_logprobs,
top_logprobs (sampled token first, then the top-N, keyed by decoded text) and text_offset;
-inf becomes -9999.0 so the JSON stays valid. With echo the prompt text is prepended and,
with logprobs, the prompt's logprobs too (the first one is None: nothing precedes it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from nanovllm import InvalidRequestError, SamplingParams
from nanovllm.engine_client import EngineDeadError, RequestAborted
from nanovllm.server.context import ServerContext
from nanovllm.server.errors import APIError, internal_error, invalid_request
from nanovllm.server.prompts import (
    check_request_size,
    check_response_size,
    check_supported,
    echo_only,
    resolve_prompts,
    sampling_params,
)
from nanovllm.server.protocol import CompletionRequest
from nanovllm.server.request_stream import RequestStream
from nanovllm.server.structured import constraint_for
from nanovllm.values.errors import QueueFullError, quote
from nanovllm.values.limits import ServerLimits
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)

# What a client refused for a full queue is told to wait: about the time a few steps take to
# finish some sequences; clients back off further on their own if it is still full.
RETRY_AFTER_SECONDS = 1


def engine_error(exc: BaseException) -> APIError:
    """Map what the engine loop pushes into a request onto an HTTP error."""
    if isinstance(exc, InvalidRequestError):
        return invalid_request(exc)
    if isinstance(exc, QueueFullError):  # the server is busy, not broken: try again soon
        return APIError(str(exc), 429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineDeadError):  # its text is the engine's exception: for the log only
        return APIError("The engine is dead; the server log says why.", 503)
    if isinstance(exc, RequestAborted):
        return APIError(str(exc), 503)
    return internal_error("the engine failed a request", exc)


def token_namer(req, tokenizer) -> Callable[[int], str]:
    """How logprobs name a token: its text, or vLLM's "token_id:N" when the client asks for
    return_tokens_as_token_ids (texts of partial UTF-8 tokens are ambiguous; ids are not)."""
    if req.return_tokens_as_token_ids:
        return lambda tid: f"token_id:{tid}"
    return tokenizer.decode_token


def legacy_logprobs(token_ids, step_logprobs, num_top: int, name: Callable[[int], str],
                    offset: int) -> dict:
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for tid, step in zip(token_ids, step_logprobs, strict=False):
        token = name(tid)
        if step is None or tid not in step:
            lp, top = None, None
        else:
            lp = max(step[tid].logprob, -9999.0)
            ranked = [(tid, step[tid])] + sorted(
                ((t, p) for t, p in step.items() if t != tid), key=lambda kv: kv[1].rank)
            top = {name(t): max(p.logprob, -9999.0)
                   for i, (t, p) in enumerate(ranked) if i <= num_top}
        text_offset.append(offset)
        offset += len(token)
        tokens.append(token)
        token_logprobs.append(lp)
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs, "text_offset": text_offset}


def prompt_logprobs_field(result) -> list | None:
    """vLLM's `prompt_logprobs`: per prompt position None or {token id: Logprob}, -inf clamped."""
    if result.prompt_logprobs is None:
        return None
    return [None if step is None else
            {str(t): {"logprob": max(p.logprob, -9999.0), "rank": p.rank,
                      "decoded_token": p.decoded_token} for t, p in step.items()}
            for step in result.prompt_logprobs]


def prompt_text(prompt: EngineRequest, tokenizer) -> str:
    return prompt.prompt if prompt.prompt is not None else tokenizer.decode(prompt.prompt_token_ids)


def echoed_prompt(req: CompletionRequest, prompt: EngineRequest, result,
                  tokenizer) -> tuple[str, list[int], list | None]:
    """What echo puts before a choice's output (whole or streamed): the prompt's text, its
    token ids and, if logprobs are asked for, their logprobs (the first is None)."""
    logprobs = None
    if req.logprobs is not None:
        logprobs = list(result.prompt_logprobs or [None] * len(prompt.prompt_token_ids))
    return prompt_text(prompt, tokenizer), list(prompt.prompt_token_ids), logprobs


def generated(req: CompletionRequest, out) -> tuple[str, list[int], list | None]:
    """A choice's own text, token ids and logprobs; nothing for echo with max_tokens 0 (the
    engine ran one step, as vLLM does, but that token is not part of the answer)."""
    if echo_only(req):
        return "", [], [] if req.logprobs is not None else None
    return out.text, list(out.token_ids), out.logprobs


def build_choice(req: CompletionRequest, prompt: EngineRequest, result, out, tokenizer) -> dict:
    text, token_ids, logprobs = generated(req, out)
    if req.echo:
        echo_text, echo_ids, echo_logprobs = echoed_prompt(req, prompt, result, tokenizer)
        text, token_ids = echo_text + text, echo_ids + token_ids
        if echo_logprobs is not None:
            logprobs = echo_logprobs + list(logprobs or [])
    lp = None
    if req.logprobs is not None:
        lp = legacy_logprobs(token_ids, logprobs or [None] * len(token_ids), req.logprobs,
                             token_namer(req, tokenizer), 0)
    return {"text": text, "logprobs": lp, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason, "prompt_logprobs": prompt_logprobs_field(result),
            **token_id_fields(req, prompt.prompt_token_ids, generated(req, out)[1])}


def token_id_fields(req, prompt_ids: list[int] | None, token_ids: list[int]) -> dict:
    """vLLM's return_token_ids: the prompt's ids (where given) and the choice's generated ids
    (never the echoed prompt), so a client need not tokenize again."""
    if not req.return_token_ids:
        return {}
    fields = {"token_ids": list(token_ids)}
    if prompt_ids is not None:
        fields = {"prompt_token_ids": list(prompt_ids), **fields}
    return fields


def usage(prompts: list[EngineRequest], results: dict, count_generated: bool = True) -> dict:
    """Token counts: each prompt once, every choice's generated tokens, and (as OpenAI always
    does) how many prompt tokens the prefix cache supplied."""
    prompt_tokens = sum(len(p.prompt_token_ids) for p in prompts)
    completion_tokens = sum(len(o.token_ids) for r in results.values() for o in r.outputs
                            ) if count_generated else 0
    cached = sum(r.num_cached_tokens for r in results.values())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def build_response(req, ctx, request_id, created, prompts, results) -> dict:
    choices = []
    for tag in sorted(results):
        for out in sorted(results[tag].outputs, key=lambda o: o.index):
            choice = build_choice(req, prompts[tag], results[tag], out, ctx.engine_loop.tokenizer)
            choices.append({"index": tag * req.n + out.index, **choice})
    return {"id": request_id, "object": "text_completion", "created": created,
            "model": ctx.model_name, "choices": choices,
            "usage": usage(prompts, results, not echo_only(req)),
            "system_fingerprint": None}


def prompt_chars(prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(p) for p in prompt if isinstance(p, str))


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def prepare(req: CompletionRequest, ctx: ServerContext, limits: ServerLimits,
            request_id: str) -> tuple[list[EngineRequest], SamplingParams]:
    """All validation, the engine's included, before anything is submitted; a 400 if it fails.

    Returns one engine request per prompt, and the sampling params they all share.
    """
    ctx.check_model(req.model)
    ctx.apply_defaults(req)
    check_supported(req)
    check_request_size(req, limits)
    if ignored := req.ignored_fields():
        logger.warning("The following fields were present in the request but ignored: %s",
                       quote(ignored, 200))
    params = sampling_params(req, structured=constraint_for(req, ctx.grammar_compiler))
    prompts = resolve_prompts(req.prompt, ctx.engine_loop, params, request_id)
    check_response_size(params, prompts, bool(req.echo), limits, ctx.engine_loop.max_model_len)
    return prompts, params


async def start(ctx: ServerContext, request_id: str, prompts: list[EngineRequest],
                n: int) -> RequestStream:
    """Hands the engine requests to the engine; returns once all were taken (else an APIError)."""
    stream = RequestStream(ctx.engine_loop, request_id, prompts, n,
                           ctx.metrics.tracker(prompts[0].params))
    try:
        await stream.submit()
    except asyncio.CancelledError:
        stream.close()
        raise
    except Exception as exc:
        stream.close()
        raise engine_error(exc) from exc
    return stream


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def final_outputs(raw: Request, stream) -> list | None:
    """Every choice's final output, or None if the client went away first; either way the
    stream is closed (an unfinished request is aborted at once). Engine errors become API
    errors."""
    work = asyncio.ensure_future(stream.final_outputs())
    gone = asyncio.ensure_future(wait_for_disconnect(raw))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            logger.info("client disconnected; aborting %s", stream.request_id)
            return None
        try:
            return work.result()
        except Exception as exc:
            raise engine_error(exc) from exc
    finally:
        for task in (work, gone):
            task.cancel()
        stream.close()


async def complete(raw: Request, req: CompletionRequest, ctx: ServerContext, prompts, stream):
    """Non-streaming: wait for every choice, or abort at once if the client goes away."""
    created = int(time.time())
    results = await final_outputs(raw, stream)
    if results is None:
        return JSONResponse({}, status_code=499)

    def render() -> JSONResponse:
        return JSONResponse(build_response(req, ctx, stream.request_id, created, prompts,
                                           results))

    if req.echo or req.logprobs is not None:  # can be megabytes: built off the event loop
        return await asyncio.to_thread(render)
    return render()
