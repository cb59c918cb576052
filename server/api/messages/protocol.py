"""POST /v1/messages and /v1/messages/count_tokens: the bodies of Anthropic's Messages API
(content blocks are checked by the routes, which name the exact block at fault), its token
count's answer and its error body."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from nanovllm.server.field_policy import FieldPolicy
from nanovllm.server.protocol import MAX_MESSAGES, FrontEndRequest, StopStr
from nanovllm.values.limits import MAX_STOP_STRINGS

# Anthropic's fields that the models below do not declare (server/field_policy.py).
FIELDS = FieldPolicy(
    "/v1/messages",
    refused={
        "container": "a container for Anthropic's code execution tool; this server runs no "
                     "tools itself",
        "mcp_servers": "MCP servers for Anthropic's API to call; this server calls none (a "
                       "client's own tools are `tools`)",
    },
    ignored={
        "service_tier": "this server has one tier",
        "speed": "this server has one speed",
        "inference_geo": "this server runs where it runs",
        "cache_control": "the prefix cache reuses every prompt's blocks without being asked",
        "diagnostics": "asks for prompt-cache diagnostics, of which this server has none",
        "user_profile_id": "an account id, for the operator's own tracking",
        "workspace_id": "an account id, for the operator's own tracking",
        "context_management": "what to clear of earlier turns (thinking, old tool results) as "
                              "the context fills: here the prompt is every turn as the chat "
                              "template renders it, earlier thinking never shown again",
    },
    unknown_ignored=True,
    refusal="{field}: {reason}.",  # Anthropic's own wording: the field, then what is wrong
)


class AnthropicRequestFields(FrontEndRequest):
    """What POST /v1/messages and /v1/messages/count_tokens share (Anthropic's shapes)."""

    model: str
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    # {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or {"type": "disabled"}
    thinking: dict[str, Any] | None = None

    FIELDS: ClassVar[FieldPolicy] = FIELDS


class MessagesRequest(AnthropicRequestFields):
    """POST /v1/messages body (Anthropic's Messages API)."""

    max_tokens: int = Field(..., ge=1)
    # {"format": {"type": "json_schema", ...}, "effort": "low" | "medium" | "high" | ...}
    output_config: dict[str, Any] | None = None
    stop_sequences: Annotated[list[StopStr], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool | None = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Annotated[str | None, Field(max_length=256)]] | None = None

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _no_empty_stop(cls, v: Any) -> Any:
        if isinstance(v, list) and "" in v:
            raise ValueError("stop sequences must not be empty")
        return v


class CountTokensRequest(AnthropicRequestFields):
    """POST /v1/messages/count_tokens body: the prompt's fields of a messages request."""

class AnthropicErrorInfo(BaseModel):
    type: str  # invalid_request_error, authentication_error, not_found_error, overloaded_error...
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorInfo


class CountTokensResponse(BaseModel):
    input_tokens: int

_ANTHROPIC_ERROR = {"model": AnthropicErrorResponse}
ANTHROPIC_ERROR_RESPONSES = {400: _ANTHROPIC_ERROR, 401: _ANTHROPIC_ERROR, 404: _ANTHROPIC_ERROR,
                             500: _ANTHROPIC_ERROR, 529: _ANTHROPIC_ERROR}
