"""HTTP routes. Each reads its ServerContext from request.app.state (see server.context)."""

from __future__ import annotations

import asyncio
import json
import uuid

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from nanovllm import __version__
from nanovllm.input_processor import check_prompt_text, check_token_ids
from nanovllm.server.chat import chat_events, complete_chat, prepare_chat, render_prompt
from nanovllm.server.chat_protocol import ChatCompletionRequest
from nanovllm.server.completions import complete, new_request_id, prepare, prompt_chars, start
from nanovllm.server.context import Ctx
from nanovllm.server.errors import APIError, bad_request, error_response
from nanovllm.server.protocol import (
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from nanovllm.server.schemas import (
    ERROR_RESPONSES,
    CompletionResponse,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    ModelPermission,
    TokenizeResponse,
    VersionResponse,
)
from nanovllm.server.streaming import SSEResponse, completion_events
from nanovllm.server.structured import wants_structure

router = APIRouter()

BIG_PROMPT_CHARS = 4_000  # tokenizing more than this takes long enough to matter
STREAM_DOC = {200: {"content": {"text/event-stream": {}}}}


async def off_loop_if_big(chars: int, fn, *args, heavy: bool = False):
    """fn(*args), in a worker thread if the prompt is big (or the work `heavy`: compiling a
    grammar): it would stall every other request on the event loop; small prompts are cheaper
    to tokenize inline."""
    if heavy or chars > BIG_PROMPT_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(ctx: Ctx) -> Response:
    """200 while the engine thread is alive; 503 once it died. With engine replicas (Ray):
    200 while one runs, with {"status": "degraded", ...} while some do not; 503 when none does."""
    error = ctx.engine_loop.error
    if error is not None:
        return error_response("The engine is dead; the server log says why.", 503)
    if not ctx.engine_loop.is_alive:
        return error_response("The engine is not running (it was shut down).", 503)
    if degraded := ctx.engine_loop.degraded:
        return JSONResponse({"status": "degraded", "message": degraded})
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def version() -> dict:
    return {"version": __version__}


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(ctx: Ctx) -> ModelList:
    permission = ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=ctx.created)
    card = ModelCard(id=ctx.model_name, created=ctx.created, root=ctx.model_root,
                     max_model_len=ctx.engine_loop.max_model_len, permission=[permission])
    return ModelList(data=[card])


@router.post("/v1/completions", response_model=CompletionResponse,
             responses={**ERROR_RESPONSES, **STREAM_DOC})
async def create_completion(body: CompletionRequest, raw: Request,
                            ctx: Ctx) -> Response:
    request_id = new_request_id("cmpl")
    prompts, params = await off_loop_if_big(prompt_chars(body.prompt), prepare, body, ctx,
                                            raw.app.state.limits, request_id,
                                            heavy=wants_structure(body))
    stream = await start(ctx, request_id, prompts, params.n)
    if body.stream:
        return SSEResponse(completion_events(body, ctx, prompts, stream), on_close=stream.close)
    return await complete(raw, body, ctx, prompts, stream)


@router.post("/v1/chat/completions", responses={**ERROR_RESPONSES, **STREAM_DOC})
async def create_chat_completion(body: ChatCompletionRequest, raw: Request,
                                 ctx: Ctx) -> Response:
    """A 400 unless the server has a chat template (see server.chat)."""
    chars = sum(len(str(m.get("content", ""))) for m in body.messages)
    request_id = new_request_id("chatcmpl")
    prompt, params = await off_loop_if_big(chars, prepare_chat, body, ctx, raw.app.state.limits,
                                           request_id, heavy=wants_structure(body))
    stream = await start(ctx, request_id, [prompt], params.n)
    if body.stream:
        return SSEResponse(chat_events(body, ctx, prompt, stream), on_close=stream.close)
    return await complete_chat(raw, body, ctx, prompt, stream)


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, ctx: Ctx) -> dict:
    """A `prompt`, or chat `messages` as the chat template renders them (vLLM's two forms);
    `token_strs` are the vocabulary's strings ("Ġis"), which clients map back to ids."""
    ctx.check_model(body.model)
    body.check_form()
    tok = ctx.engine_loop.tokenizer
    text = body.prompt if body.messages is None else render_prompt(body, ctx)
    param = "prompt" if body.messages is None else "messages"
    check_prompt_text(text, tok, ctx.engine_loop.max_model_len, param)
    ids = await off_loop_if_big(len(text), tok.encode, text)
    strs = [tok.vocab_token(t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": ctx.engine_loop.max_model_len, "tokens": ids,
            "token_strs": strs}


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, ctx: Ctx) -> dict:
    ctx.check_model(body.model)
    if len(body.tokens) > ctx.engine_loop.max_model_len:  # no sequence of this model is longer
        raise bad_request(f"tokens holds {len(body.tokens)} ids, more than this model's context "
                          f"length of {ctx.engine_loop.max_model_len}.", "tokens")
    check_token_ids(body.tokens, ctx.engine_loop.vocab_size, "tokens")
    # Special tokens stay in the text, as vLLM's and HF's detokenize keep them.
    return {"prompt": ctx.engine_loop.tokenizer.decode(body.tokens, skip_special_tokens=False)}


@router.get("/tokenizer_info", responses={404: ERROR_RESPONSES[404]})
async def get_tokenizer_info(ctx: Ctx) -> dict:
    """vLLM's: served only with --enable-tokenizer-info-endpoint (a 404 otherwise)."""
    if ctx.tokenizer_info is None:
        raise APIError("Not Found: GET /tokenizer_info (start the server with "
                       "--enable-tokenizer-info-endpoint)", 404)
    return ctx.tokenizer_info


@router.get("/load")
async def load(ctx: Ctx) -> dict:
    """vLLM's: generation requests in flight (0 unless --enable-server-load-tracking)."""
    return {"server_load": ctx.server_load.in_flight}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


INVOCATIONS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "anyOf": [{"$ref": "#/components/schemas/CompletionRequest"},
              {"$ref": "#/components/schemas/ChatCompletionRequest"}]}}}}}


@router.post("/invocations", responses={**ERROR_RESPONSES, **STREAM_DOC},
             openapi_extra=INVOCATIONS_BODY)
async def invocations(raw: Request, ctx: Ctx) -> Response:
    """SageMaker's route, as vLLM serves it: a body with `messages` is a chat completion, one
    with `prompt` a completion; anything else is a 400."""
    body = await _json_object(raw)
    if "messages" in body:
        return await create_chat_completion(_parsed(ChatCompletionRequest, body), raw, ctx)
    if "prompt" in body:
        return await create_completion(_parsed(CompletionRequest, body), raw, ctx)
    raise bad_request("/invocations needs a completions body (`prompt`) or a chat completions "
                      "body (`messages`).", "prompt")


async def _json_object(raw: Request) -> dict:
    try:
        body = json.loads(await raw.body())
    except ValueError as exc:
        raise bad_request(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.")
    return body


def _parsed(model: type[BaseModel], body: dict):
    """The body as `model`, its errors worded as the routes' own validation errors."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
