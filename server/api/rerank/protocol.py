"""POST /v1/rerank and /rerank (Jina's and Cohere's, as vLLM serves them): its body and
answer."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from nanovllm.server.protocol import OpenAIBaseModel, PoolingFields


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankRequest(PoolingFields):
    query: str
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: int | None = Field(None, ge=0, description="Return only the best this many "
                                                      "(0 or null: all)")
    return_documents: bool = True

class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]  # best first
    usage: RerankUsage
