"""POST /v1/embeddings (OpenAI's): its body and answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from nanovllm.server.protocol import PoolingFields, PoolingUsage, check_prompt_shape

EMBEDDING_INPUT_SHAPE = ("input must be a non-empty string, a list of strings, a list of "
                         "token ids or a list of lists of token ids")


class EmbeddingRequest(PoolingFields):
    input: Any = Field(..., description=EMBEDDING_INPUT_SHAPE)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Keep the first this many dimensions "
                                                           "(Matryoshka models only), normalized")

    @field_validator("input")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        try:
            return check_prompt_shape(value)
        except ValueError:
            raise ValueError(EMBEDDING_INPUT_SHAPE) from None

class EmbeddingData(BaseModel):
    index: int
    object: str = "embedding"
    embedding: list[float] | str  # floats, or base64 of little-endian float32s

class EmbeddingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: PoolingUsage
