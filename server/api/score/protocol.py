"""POST /v1/score and /score (vLLM's): its body and answer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from nanovllm.server.protocol import PoolingFields, PoolingUsage


class ScoreRequest(PoolingFields):
    text_1: str | Annotated[list[str], Field(min_length=1)]
    text_2: str | Annotated[list[str], Field(min_length=1)]

class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: PoolingUsage
