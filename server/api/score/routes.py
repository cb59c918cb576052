"""POST /v1/score and /score (vLLM's): how well each `text_2` answers `text_1`.

One text_1 against each text_2, or two lists of the same length pairwise. A cross-encoder's
scores equal `CrossEncoder.predict`'s; an embedding model's are cosine similarities
(server/pooled.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nanovllm.server import pooled
from nanovllm.server.api.score.protocol import ScoreRequest, ScoreResponse
from nanovllm.server.api.spec import APISpec
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx, new_request_id
from nanovllm.values.pooling_params import PoolingParams

router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
@router.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
async def create_score(body: ScoreRequest, raw: Request, ctx: Ctx) -> JSONResponse:
    ctx = await ctx.model_for(body.model)
    body.refuse_unknown_fields()
    firsts = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    seconds = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise bad_request(f"text_1 holds {len(firsts)} texts and text_2 {len(seconds)}: give "
                          "one text_1, or as many as text_2.", "text_1")
    pooled.check_count(len(seconds), ctx, "text_2")
    request_id = new_request_id("score")
    params = PoolingParams("score", None, None, body.truncate_prompt_tokens)
    try:
        scores, tokens = await pooled.scores(raw, ctx, request_id, firsts, seconds, params,
                                             ("text_1", "text_2"))
    except pooled.ClientGone:
        return JSONResponse({}, status_code=499)
    return JSONResponse({
        "id": request_id, "object": "list", "created": int(time.time()), "model": ctx.model_name,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


API = APISpec(router)
