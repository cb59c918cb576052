"""POST /v1/rerank and /rerank: Jina's and Cohere's rerank API (as vLLM serves it).

Each document is scored against the query (server/pooled.py: a cross-encoder's
`CrossEncoder.predict` score, or an embedding model's cosine similarity); the results come best
first, the `top_n` best (all when 0 or absent), each with its index in `documents` and, unless
`return_documents` is false, the document itself.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nanovllm.server import pooled
from nanovllm.server.api.rerank.protocol import RerankRequest, RerankResponse
from nanovllm.server.api.spec import APISpec
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx, new_request_id
from nanovllm.values.pooling_params import PoolingParams

router = APIRouter()


@router.post("/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
@router.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES)
async def rerank(body: RerankRequest, raw: Request, ctx: Ctx) -> JSONResponse:
    ctx = await ctx.model_for(body.model)
    body.refuse_unknown_fields()
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    pooled.check_count(len(documents), ctx, "documents")
    request_id = new_request_id("rerank")
    params = PoolingParams("score", None, None, body.truncate_prompt_tokens)
    try:
        scores, tokens = await pooled.scores(raw, ctx, request_id, [body.query] * len(documents),
                                             documents, params, ("query", "documents"))
    except pooled.ClientGone:
        return JSONResponse({}, status_code=499)
    best = sorted(range(len(documents)), key=lambda i: -scores[i])[:body.top_n or None]
    results = [{"index": i, "relevance_score": scores[i],
                **({"document": {"text": documents[i]}} if body.return_documents else {})}
               for i in best]
    return JSONResponse({"id": request_id, "model": ctx.model_name, "results": results,
                         "usage": {"total_tokens": tokens}})


API = APISpec(router)
