"""POST /v1/chat/completions body (OpenAI's chat API with vLLM's extra sampling fields).

The sampling fields keep the completions API's names, defaults and ranges, so that one
function (prompts.sampling_params) turns either request into SamplingParams. `messages` is
checked by chat.normalize_messages, which names the exact message and part at fault.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from nanovllm.limits import (
    LOGIT_BIAS_RANGE,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
)
from nanovllm.server.protocol import StopStr, StreamOptions, StructuredOutputFields, TokenId

MAX_MESSAGES = 1024  # a conversation longer than this cannot fit GPT-2's context anyway
MAX_CHAT_CHARS = 1_000_000  # all message texts together; bounded before rendering


class ChatCompletionRequest(StructuredOutputFields):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    frequency_penalty: float | None = Field(0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    logit_bias: dict[str, float] | None = Field(  # SamplingParams checks the keys
        None, max_length=MAX_LOGIT_BIAS_ENTRIES,
        description=f"Biases are clamped to {list(LOGIT_BIAS_RANGE)}, as OpenAI does.")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1)  # None: up to the context limit (vLLM)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    stop: StopStr | Annotated[list[StopStr], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=MAX_REPETITION_PENALTY)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(0, ge=0)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    return_tokens_as_token_ids: bool | None = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # Fields the completions API has and chat does not (read by the shared helpers).
    echo: bool = Field(False, exclude=True)
    prompt_logprobs: int | None = Field(None, exclude=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _no_empty_stop(cls, v: Any) -> Any:
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("stop strings must not be empty")
        return v
