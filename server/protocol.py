"""Request models of the OpenAI-compatible API (pydantic), with vLLM's extra sampling fields.

Field names, defaults and ranges follow OpenAI's legacy completions API and vLLM's
CompletionRequest. Unknown fields are accepted (and logged by the route, as vLLM does);
fields we cannot honour (suffix, best_of != n) are rejected with a 400 in `check_supported`.
Non-finite floats (NaN, Infinity, which Python's json accepts) are rejected everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nanovllm.server.errors import refuse_lone_surrogates
from nanovllm.values.limits import (
    LOGIT_BIAS_RANGE,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
)

# A token id; build_app writes the vocabulary's upper bound into its OpenAPI document.
TokenId = Annotated[int, Field(ge=0, json_schema_extra={"x-token-id": True})]
NonEmptyStr = Annotated[str, Field(min_length=1)]
StopStr = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]
Prompt = (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
          | Annotated[list[TokenId], Field(min_length=1)]
          | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])

PROMPT_SHAPE = (
    "prompt must be a non-empty string, a list of strings, a list of token ids "
    "or a list of lists of token ids"
)


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _unicode_text_only(cls, data: Any, handler):
        """Lone surrogates are looked for once the body is otherwise valid: a body refused for
        its sizes costs no second pass."""
        model = handler(data)
        refuse_lone_surrogates(data)
        return model

    def ignored_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True  # vLLM's default once stream_options is given
    continuous_usage_stats: bool | None = False


def _is_token_id(x: Any) -> bool:
    """An int, or an integral float (JSON Schema's "integer" includes 7.0, as pydantic does)."""
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


def _check_prompt_shape(value: Any) -> Any:
    """The prompt's JSON shape, with its token ids as ints; a bad shape is one clear error
    rather than pydantic's 4-way union error. Whether the prompt can run (not empty, every id
    in the vocabulary) is the engine's rule, asked before submitting (prompts.resolve_prompts).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return value
        if all(_is_token_id(t) for t in value):
            return [int(t) for t in value]
        if all(isinstance(p, list) and all(_is_token_id(t) for t in p) for p in value):
            return [[int(t) for t in p] for p in value]
    raise ValueError(PROMPT_SHAPE)


class StructuredOutputFields(OpenAIBaseModel):
    """Structured-output fields (vLLM's and OpenAI's); server.structured checks and compiles
    them. At most one may be set."""

    structured_outputs: dict[str, Any] | None = None  # vLLM: json, regex, choice, grammar, json_object
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    response_format: dict[str, Any] | None = None  # OpenAI: text, json_object, json_schema


class SamplingFields(StructuredOutputFields):
    """The sampling fields completions and chat completions share (OpenAI's and vLLM's names).
    Ranges are enforced here so the OpenAPI doc shows them."""

    model: str | None = None
    frequency_penalty: float | None = Field(0.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    logit_bias: dict[str, float] | None = Field(  # SamplingParams checks the keys
        None, max_length=MAX_LOGIT_BIAS_ENTRIES,
        description=f"Biases are clamped to {list(LOGIT_BIAS_RANGE)}, as OpenAI does.")
    max_completion_tokens: int | None = Field(None, ge=1)  # chat's name; wins over max_tokens
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

    @field_validator("stop", mode="before")
    @classmethod
    def _no_empty_stop(cls, v: Any) -> Any:
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("stop strings must not be empty")
        return v


class CompletionRequest(SamplingFields):
    """POST /v1/completions body."""

    prompt: Prompt
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(16, ge=0)  # 0 only with echo: score the prompt
    suffix: str | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    # The only check of `prompt` here: Prompt, the annotation, documents it in the OpenAPI doc.
    @field_validator("prompt", mode="plain", json_schema_input_type=Prompt)
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        return _check_prompt_shape(v)


class TokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = Field(
        True, description="Accepted for vLLM compatibility; GPT-2's tokenizer adds no special "
                          "tokens, so it changes nothing.")
    return_token_strs: bool | None = False


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[TokenId]
