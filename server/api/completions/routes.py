"""POST /v1/completions: OpenAI's legacy completions API, with vLLM's extra fields.

`prepare` does all the validation before anything is submitted: OpenAI's semantics here (fields
this server cannot honour, request and response sizes), then the engine's own rules through its
input processor, once per prompt (`{request_id}-{i}`), so a request that can never run is a 400
naming the field and never reaches the engine.

The answer (whole or streamed) is render.py's.

With vLLM's `use_beam_search`, each prompt is one beam search of width n, whose n beams are
the choices, best first (their token ids end with the EOS that finished them, as vLLM's do);
it is never streamed, and what beams cannot honour is refused (CompletionRequest).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nanovllm import SamplingParams
from nanovllm.input_processor import is_single_prompt
from nanovllm.server.api.completions.protocol import CompletionRequest, CompletionResponse
from nanovllm.server.api.completions.render import build_response, completion_events
from nanovllm.server.api.spec import APISpec
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import (
    Ctx,
    ServerContext,
    check_response_size,
    context_length_in_terms_of,
    final_response,
    new_request_id,
    off_loop_if_big,
    streamed,
    submit,
)
from nanovllm.server.structured import constraint_for, wants_structure
from nanovllm.values.errors import quote
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse,
             responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_completion(body: CompletionRequest, raw: Request, ctx: Ctx) -> Response:
    ctx = await ctx.model_for(body.model)
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
    ctx.apply_defaults(req)
    check_supported(req)
    check_request_size(req, ctx)
    if ignored := req.ignored_fields():
        logger.warning("The following fields were present in the request but ignored: %s",
                       quote(ignored, 200))
    if req.use_beam_search:
        prompts, params = prepare_beams(req, ctx, request_id)
        return [replace(p, adapter_id=ctx.adapter_id) for p in prompts], params
    params = req.to_sampling_params(structured=constraint_for(req, ctx.grammar_compiler))
    with context_length_in_terms_of("prompt", req.length_field):
        prompts = [replace(ctx.engine.processor.process(f"{request_id}-{i}", item, params,
                                                        priority=req.priority),
                           adapter_id=ctx.adapter_id)
                   for i, item in enumerate(split_prompts(req.prompt))]
    check_response_size(params, prompts, bool(req.echo), ctx.limits, ctx.engine.max_model_len)
    return prompts, params


def prepare_beams(req: CompletionRequest, ctx: ServerContext,
                  request_id: str) -> tuple[list[EngineRequest], SamplingParams]:
    """A beam search per prompt; the engine refuses one whose beams could never fit the KV pool.
    Every beam carries its tokens' logprobs: `logprobs: 0` sizes the response as any request's."""
    beam = req.to_beam_search_params()
    with context_length_in_terms_of("prompt", req.length_field):
        prompts = [ctx.engine.processor.process_beam(f"{request_id}-{i}", item, beam,
                                                     priority=req.priority)
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


API = APISpec(router, generating=("/v1/completions",))
