"""What the server serves and how it is: GET /v1/models, /health, /version, /load, /metrics
and /tokenizer_info.

/tokenizer_info is vLLM's, behind --enable-tokenizer-info-endpoint: the tokenizer's
configuration, so that a client such as lm-eval's remote tokenizer can work without fetching
the tokenizer from the hub. vLLM answers with the Hugging Face tokenizer's init kwargs
(tokenizer_config.json without file paths), plus `tokenizer_class` and the chat template in use.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nanovllm import __version__
from nanovllm.server.api.info.protocol import VersionResponse
from nanovllm.server.api.spec import APISpec
from nanovllm.server.errors import APIError, error_response
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx

logger = logging.getLogger(__name__)
router = APIRouter()

@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(ctx: Ctx) -> Response:
    """200 while every loaded model's engine is alive; 503 once one died. With engine replicas
    (Ray): 200 while one runs, with {"status": "degraded", ...} while some do not (or an engine
    process restarts); 503 when none does. Models not loaded do not count."""
    for model in ctx.models.loaded():
        if model.engine.error is not None:
            return error_response("The engine is dead; the server log says why.", 503)
        if not model.engine.is_alive:
            return error_response("The engine is not running (it was shut down).", 503)
    for model in ctx.models.loaded():
        if degraded := model.engine.degraded:
            return JSONResponse({"status": "degraded", "message": degraded})
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def version() -> dict:
    return {"version": __version__}


@router.get("/load")
async def load(ctx: Ctx) -> dict:
    """vLLM's: generation requests in flight (0 unless --enable-server-load-tracking)."""
    return {"server_load": ctx.server_load.in_flight}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/tokenizer_info", responses={404: ERROR_RESPONSES[404]})
async def get_tokenizer_info(ctx: Ctx) -> dict:
    """Served only with --enable-tokenizer-info-endpoint (a 404 otherwise)."""
    if (ctx := await ctx.model_for(None)).tokenizer_info is None:
        raise APIError("Not Found: GET /tokenizer_info (start the server with "
                       "--enable-tokenizer-info-endpoint)", 404)
    return ctx.tokenizer_info


API = APISpec(router)
