"""GET /v1/models' answer, and the bodies of POST /v1/models/load and /unload."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelPermission(BaseModel):
    id: str
    object: str = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "nanovllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    vocab_size: int | None = None  # token ids a prompt may hold: [0, vocab_size)
    permission: list[ModelPermission]
    # Not OpenAI's or vLLM's: true when the checkpoint has random weights (a dummy one, written
    # by nanovllm or loaded with --load-format dummy), so an API-only client can tell its text
    # is noise.
    random_weights: bool = False
    # Not OpenAI's: whether it is loaded ("loaded", "loading" or "unloaded"; a request for an
    # unloaded model loads it) and its checkpoint's bytes on disk. max_model_len, vocab_size and
    # random_weights are known only while it is loaded.
    state: str = "loaded"
    size: int = 0


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ModelAction(BaseModel):
    """POST /v1/models/load and /unload (llama.cpp's /models/load and /unload): the model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=256)


class ModelActionResponse(BaseModel):
    model: str
    state: str  # after the action: an unload of a busy model happens when its requests end
