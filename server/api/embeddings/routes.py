"""POST /v1/embeddings: OpenAI's embeddings API (and vLLM's `truncate_prompt_tokens`).

`input` is a text, a list of texts, a list of token ids or a list of such lists; each is one
engine request, computed whole in one step and pooled as the checkpoint says (so the vectors
equal `SentenceTransformer.encode`'s). `encoding_format: "base64"` sends each vector as the
base64 of its little-endian float32 bytes (what the `openai` client asks for by default);
`dimensions` cuts a Matryoshka model's vectors (then normalizes them), and is a 400 for any
other model.
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nanovllm.server import pooled
from nanovllm.server.api.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from nanovllm.server.api.spec import APISpec
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx, new_request_id
from nanovllm.values.pooling_params import PoolingParams

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, raw: Request, ctx: Ctx) -> JSONResponse:
    ctx = await ctx.model_for(body.model)
    body.refuse_unknown_fields()
    pooling = pooled.pooling_input(ctx)
    inputs = split_inputs(body.input)
    pooled.check_count(len(inputs), ctx, "input")
    params = PoolingParams("embed", body.dimensions, None, body.truncate_prompt_tokens)
    request_id = new_request_id("embd")
    chars = sum(len(i) for i in inputs if isinstance(i, str))
    requests = await pooled.checked(chars, lambda: [
        pooling.embed(f"{request_id}-{i}", item, params, "input")
        for i, item in enumerate(inputs)])
    try:
        outputs = await pooled.run(raw, ctx, request_id, requests)
    except pooled.ClientGone:
        return JSONResponse({}, status_code=499)
    tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return JSONResponse({
        "id": request_id, "object": "list", "created": int(time.time()), "model": ctx.model_name,
        "data": [{"index": i, "object": "embedding",
                  "embedding": encode(o.outputs.data, body.encoding_format)}
                 for i, o in enumerate(outputs)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def split_inputs(value) -> list:
    """The request's inputs: a text or one list of token ids is one input."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


def encode(vector, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


API = APISpec(router)
