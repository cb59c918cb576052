"""POST /v1/completions: OpenAI's legacy completions API, with vLLM's extra fields.

`prepare` does all the validation before anything is submitted: OpenAI's semantics here (fields
this server cannot honour, request and response sizes), then the engine's own rules through its
input processor, once per prompt (`{request_id}-{i}`), so a request that can never run is a 400
naming the field and never reaches the engine.

Choice index = prompt_index * n + output.index (vLLM). Usage counts each prompt's tokens once
and every choice's generated tokens. Legacy logprobs follow vLLM: tokens, token_logprobs,
top_logprobs (sampled token first, then the top-N, keyed by decoded text) and text_offset;
-inf becomes -9999.0 so the JSON stays valid. With echo the prompt text is prepended and,
with logprobs, the prompt's logprobs too (the first one is None: nothing precedes it).

With vLLM's `use_beam_search`, each prompt is one beam search of width n, whose n beams are
the choices, best first (their token ids end with the EOS that finished them, as vLLM's do);
it is never streamed, and what beams cannot honour is refused (CompletionRequest).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nanovllm import SamplingParams
from nanovllm.input_processor import is_single_prompt
from nanovllm.server.api.completions.protocol import CompletionRequest, CompletionResponse
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
from nanovllm.server.structured import constraint_for, wants_structure
from nanovllm.values.errors import quote
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse,
             responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_completion(body: CompletionRequest, raw: Request, ctx: Ctx) -> Response:
    request_id = new_request_id("cmpl")
    prompts, params = await off_loop_if_big(prompt_chars(body.prompt), prepare, body, ctx,
                                            request_id, heavy=wants_structure(body))
    stream = await submit(ctx, request_id, prompts, params.n)
    if body.stream:
        return streamed(stream, completion_events(body, ctx, stream))
    return await final_response(
        raw, stream, lambda created, results: build_response(body, ctx, stream, created, results),
        off_loop=bool(body.echo) or body.logprobs is not None)


# The request, checked into engine requests.


def prepare(req: CompletionRequest, ctx: ServerContext,
            request_id: str) -> tuple[list[EngineRequest], SamplingParams]:
    """All validation, the engine's included, before anything is submitted; a 400 if it fails.

    Returns one engine request per prompt, and the sampling params they all share.
    """
    ctx.check_model(req.model)
    ctx.apply_defaults(req)
    check_supported(req)
    check_request_size(req, ctx)
    if ignored := req.ignored_fields():
        logger.warning("The following fields were present in the request but ignored: %s",
                       quote(ignored, 200))
    if req.use_beam_search:
        return prepare_beams(req, ctx, request_id)
    params = req.to_sampling_params(structured=constraint_for(req, ctx.grammar_compiler))
    with context_length_in_terms_of("prompt", req.length_field):
        prompts = [ctx.engine.processor.process(f"{request_id}-{i}", item, params)
                   for i, item in enumerate(split_prompts(req.prompt))]
    check_response_size(params, prompts, bool(req.echo), ctx.limits, ctx.engine.max_model_len)
    return prompts, params


def prepare_beams(req: CompletionRequest, ctx: ServerContext,
                  request_id: str) -> tuple[list[EngineRequest], SamplingParams]:
    """A beam search per prompt; the engine refuses one whose beams could never fit the KV pool.
    Every beam carries its tokens' logprobs: `logprobs: 0` sizes the response as any request's."""
    beam = req.to_beam_search_params()
    with context_length_in_terms_of("prompt", req.length_field):
        prompts = [ctx.engine.processor.process_beam(f"{request_id}-{i}", item, beam)
                   for i, item in enumerate(split_prompts(req.prompt))]
    params = prompts[0].params
    check_response_size(replace(params, logprobs=req.logprobs), prompts, False, ctx.limits,
                        ctx.engine.max_model_len)
    return prompts, params


def check_supported(req: CompletionRequest) -> None:
    req.refuse_unsupported_fields()
    req.refuse_what_beams_cannot_honour()
    if req.max_new_tokens == 0 and not req.echo:
        raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo, to "
                          "return the prompt and its logprobs without generating).", "max_tokens")
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("`prompt_logprobs` are not available when `stream=True`.",
                          "prompt_logprobs")
    if req.suffix is not None:
        raise bad_request("suffix is not supported by this server.", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"best_of is not supported (best_of={req.best_of} must be unset or equal n={req.n}).",
            "best_of",
        )
    if req.stream_options is not None and not req.stream:
        raise bad_request("`stream_options` can only be defined when `stream=True`.", "stream_options")


def check_request_size(req: CompletionRequest, ctx: ServerContext) -> None:
    """Prompts and sequences (prompts x n) one request may create: checked before tokenizing."""
    count, limits = len(split_prompts(req.prompt)), ctx.limits
    if count > limits.max_prompts_per_request:
        raise bad_request(f"prompt holds {count} prompts; this server takes at most "
                          f"{limits.max_prompts_per_request} per request.", "prompt")
    if count * req.n > limits.max_sequences_per_request:
        raise bad_request(f"{count} prompt(s) x n={req.n} asks for {count * req.n} sequences; this "
                          f"server takes at most {limits.max_sequences_per_request} per request "
                          "(lower n or send fewer prompts).", "n")


def split_prompts(raw: str | list) -> list[str | list[int]]:
    """The request's prompts: `prompt` is one text or id list, or a list of them."""
    return [raw] if is_single_prompt(raw) else raw


def prompt_chars(prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(p) for p in prompt if isinstance(p, str))


# The answer's choices.


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
    if req.echo_only:
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


def build_response(req: CompletionRequest, ctx: ServerContext, stream: RequestStream,
                   created: int, results: dict) -> dict:
    choices = []
    for tag in sorted(results):
        for out in sorted(results[tag].outputs, key=lambda o: o.index):
            choice = build_choice(req, stream.requests[tag], results[tag], out,
                                  ctx.engine.tokenizer)
            choices.append({"index": tag * req.n + out.index, **choice})
    return {"id": stream.request_id, "object": "text_completion", "created": created,
            "model": ctx.model_name, "choices": choices,
            "usage": usage(stream.requests, results, not req.echo_only),
            "system_fingerprint": None}


# The streamed answer.


def delta_choice(req: CompletionRequest, prompt: EngineRequest, result, out, st: ChoiceState,
                 tok) -> dict | None:
    """The next chunk's choice for one output, or None when there is nothing new to say."""
    all_text, all_ids, all_lps = generated(req, out)
    text = all_text[st.text_len:]
    new_ids, new_lps = all_ids[st.num_tokens:], None
    ids = token_id_fields(req, None if st.started else prompt.prompt_token_ids, new_ids)
    if req.logprobs is not None:
        new_lps = list((all_lps or [])[st.num_tokens:st.num_tokens + len(new_ids)])
    finished = out.finish_reason is not None
    if not st.started and req.echo:
        echo_text, echo_ids, echo_logprobs = echoed_prompt(req, prompt, result, tok)
        text = echo_text + text
        if echo_logprobs is not None:
            new_lps, new_ids = echo_logprobs + new_lps, echo_ids + new_ids
    has_news = text or finished or (req.logprobs is not None and new_ids)
    if not has_news or st.finished:
        return None
    lp = None
    if req.logprobs is not None:
        lp = legacy_logprobs(new_ids, new_lps or [None] * len(new_ids), req.logprobs,
                             token_namer(req, tok), st.offset)
        st.offset += sum(len(t) for t in lp["tokens"])
    st.text_len, st.num_tokens = len(all_text), len(all_ids)
    st.started, st.finished = True, finished
    return {"text": text, "logprobs": lp, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason, **ids}


def completion_events(req: CompletionRequest, ctx: ServerContext,
                      stream: RequestStream) -> AsyncIterator[str]:
    head = {"id": stream.request_id, "object": "text_completion", "created": int(time.time()),
            "model": ctx.model_name}
    tok = ctx.engine.tokenizer

    def delta(tag: int, result, out, st: ChoiceState) -> dict | None:
        return delta_choice(req, stream.requests[tag], result, out, st, tok)

    return stream_events(stream, head, delta, req.stream_options,
                         count_generated=not req.echo_only)
