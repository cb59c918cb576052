"""Request models of the OpenAI-compatible API (pydantic), with vLLM's extra sampling fields.

Field names, defaults and ranges follow OpenAI's legacy completions API and vLLM's
CompletionRequest. Unknown fields are accepted (and logged by the route, as vLLM does);
fields we cannot honour (suffix, best_of != n) are rejected with a 400 in `check_supported`.
Non-finite floats (NaN, Infinity, which Python's json accepts) are rejected everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nanovllm.server.errors import bad_request, refuse_lone_surrogates
from nanovllm.values.limits import (
    LOGIT_BIAS_RANGE,
    MAX_ALLOWED_TOKEN_IDS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
    TRUNCATION_SIDES,
)

MAX_MESSAGES = 1024  # a conversation longer than this cannot fit GPT-2's context anyway

# A token id; build_app writes the vocabulary's upper bound into its OpenAPI document.
TokenId = Annotated[int, Field(ge=0, json_schema_extra={"x-token-id": True})]
NonEmptyStr = Annotated[str, Field(min_length=1)]
StopStr = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]
Prompt = (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
          | Annotated[list[TokenId], Field(min_length=1)]
          | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])

# Request fields accepted although they cannot change the output here, each with its reason
# (docs/api.md's table); tests/server/test_field_audit.py shows every other field has an effect.
NO_OUTPUT_EFFECT = {
    "model": "names the one served model; any other name is a 404",
    "user": "an end-user id, for the operator's own tracking (OpenAI's meaning)",
    "best_of": "accepted only equal to n (what it then means); any other value is a 400",
    "suffix": "accepted only when null; any text is a 400 (GPT-2 cannot insert)",
    "add_special_tokens": "GPT-2's tokenizer adds no special tokens either way",
}

# Fields outside the request models that clients send and that change nothing here: accepted
# and logged. Any other unknown field is a 400 (it might change the output; see prompts.py).
IGNORED_EXTRA_FIELDS = {
    "metadata": "OpenAI's tags for stored completions; nothing is stored here",
    "store": "OpenAI's stored completions; nothing is stored here",
    "service_tier": "this server has one tier",
    "parallel_tool_calls": "this server has no tools",
    "prompt_cache_key": "OpenAI's cache-routing hint; the prefix cache needs none",
    "safety_identifier": "an end-user id, like `user`",
    "request_id": "vLLM's caller-chosen id; this server names requests itself (X-Request-Id)",
    "spaces_between_special_tokens": "vLLM's detokenizer option for slow tokenizers; "
                                     "GPT-2's byte-level decoding has no such spaces",
}

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
    # OpenAI's meaning: the usage chunk only when asked for. (vLLM's model defaults this to
    # true, so `{}` gets a chunk with no choices, which crashes clients reading choices[0].)
    include_usage: bool | None = False
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
    # Token-in / token-out: prompt_token_ids and each choice's token_ids in the response.
    return_token_ids: bool | None = False
    allowed_token_ids: list[TokenId] | None = Field(None, max_length=MAX_ALLOWED_TOKEN_IDS)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)  # -1: the context length
    truncation_side: Literal[TRUNCATION_SIDES] | None = None  # "left" (vLLM's default)

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
    """vLLM's two forms: a `prompt`, or chat `messages` rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = Field(
        True, description="Accepted for vLLM compatibility; GPT-2's tokenizer adds no special "
                          "tokens, so it changes nothing.")
    return_token_strs: bool | None = False

    def check_form(self) -> None:
        """Exactly one of the two forms (an error naming the field to fix)."""
        if self.prompt is None and self.messages is None:
            raise bad_request("Give `prompt` (text) or `messages` (a chat).", "prompt")
        if self.prompt is not None and self.messages is not None:
            raise bad_request("Give `prompt` or `messages`, not both.", "messages")
        if self.messages and self.add_generation_prompt and self.continue_final_message:
            raise bad_request("Cannot set both `continue_final_message` and "
                              "`add_generation_prompt` to true.", "continue_final_message")


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[TokenId]
