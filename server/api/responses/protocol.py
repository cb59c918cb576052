"""POST /v1/responses: the body of OpenAI's Responses API (its items are checked by the
routes, which name the exact item at fault)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from nanovllm.server.field_policy import FieldPolicy
from nanovllm.server.protocol import MAX_MESSAGES, FrontEndRequest
from nanovllm.values.limits import MAX_LOGPROBS, MAX_PRIORITY

# OpenAI's Responses fields that ResponsesRequest does not declare (server/field_policy.py).
FIELDS = FieldPolicy(
    "/v1/responses",
    refused={
        "conversation": "OpenAI's stored conversations; this server keeps responses "
                        "(`previous_response_id`), not conversations",
        "prompt": "OpenAI's stored prompt templates; none are stored here",
    },
    ignored={
        "service_tier": "this server has one tier",
        "prompt_cache_key": "OpenAI's cache-routing hint; the prefix cache needs none",
        "prompt_cache_retention": "the prefix cache keeps what fits, however long",
        "safety_identifier": "an end-user id, like `user`",
        "stream_options": "`include_obfuscation` pads events against length side channels; "
                          "this server adds no padding, and the text is the same",
        "client_metadata": "a client's own ids and tags (Codex's thread and turn)",
    },
    unknown_ignored=True,
)

MAX_RESPONSE_ID_CHARS = 128
MetadataKey = Annotated[str, Field(max_length=64)]

class ResponsesRequest(FrontEndRequest):
    """POST /v1/responses body (OpenAI's Responses API)."""

    FIELDS: ClassVar[FieldPolicy] = FIELDS

    model: str | None = None
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1,
                                             max_length=MAX_RESPONSE_ID_CHARS)
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None  # {"format": {...}}: structured output
    store: bool | None = True
    stream: bool | None = False
    metadata: dict[MetadataKey, Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16)
    user: str | None = None
    # Honoured only with the values that ask for what this server does (the endpoint says why).
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    include: list[str] | None = Field(None, max_length=16)
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tool_calls: int | None = Field(None, ge=1)
    # vLLM's: lower goes first under `--scheduling-policy priority`; else only 0 is taken.
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
