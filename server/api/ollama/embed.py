"""POST /api/embed and /api/embeddings (Ollama's older endpoint) over the pooling path
(server/pooled.py), for a model served for embeddings (--runner pooling or an embedding
checkpoint).

/api/embed's vectors are L2-normalized, as Ollama's are; /api/embeddings' are the model's own
(Ollama's older endpoint does not normalize). `truncate` (default true) cuts a text longer than
the context to it; false makes it a 400. `options` change no embedding and are accepted.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nanovllm.server import pooled
from nanovllm.server.api.ollama.models import keep_alive, model_name
from nanovllm.server.api.ollama.protocol import EmbeddingsRequest, EmbedRequest
from nanovllm.server.api.ollama.render import Timing
from nanovllm.server.serving import Ctx, ServerContext, new_request_id
from nanovllm.values.pooling_params import PoolingParams

router = APIRouter()


@router.post("/api/embed")
async def embed(body: EmbedRequest, raw: Request, ctx: Ctx) -> JSONResponse:
    timing = Timing()
    texts = [body.input] if isinstance(body.input, str) else body.input
    params = PoolingParams("embed", body.dimensions, None, -1 if body.truncate else None)
    outputs = await vectors(body, texts, params, "input", raw, ctx)
    if outputs is None:
        return JSONResponse({}, status_code=499)
    durations = timing.durations()
    return JSONResponse({
        "model": body.model, "embeddings": [normalized(o.outputs.data) for o in outputs],
        "total_duration": durations["total_duration"], "load_duration": 0,
        "prompt_eval_count": sum(len(o.prompt_token_ids) for o in outputs)})


@router.post("/api/embeddings")
async def embeddings(body: EmbeddingsRequest, raw: Request, ctx: Ctx) -> JSONResponse:
    params = PoolingParams("embed", None, None, None)
    outputs = await vectors(body, [body.prompt], params, "prompt", raw, ctx)
    if outputs is None:
        return JSONResponse({}, status_code=499)
    return JSONResponse({"embedding": outputs[0].outputs.data.tolist()})


async def vectors(body, texts: list[str], params: PoolingParams, field: str, raw: Request,
                  ctx: ServerContext) -> list | None:
    """Each text's pooled output, in order (None if the client left first)."""
    ctx = await ctx.model_for(model_name(body.model), keep_alive(body.keep_alive))
    body.refuse_unknown_fields()
    pooling = pooled.pooling_input(ctx)
    pooled.check_count(len(texts), ctx, field)
    request_id = new_request_id("embd")
    requests = await pooled.checked(sum(map(len, texts)), lambda: [
        pooling.embed(f"{request_id}-{i}", text, params, field) for i, text in enumerate(texts)])
    try:
        return await pooled.run(raw, ctx, request_id, requests)
    except pooled.ClientGone:
        return None


def normalized(vector: np.ndarray) -> list[float]:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).tolist()
