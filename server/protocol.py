"""What the APIs' models share (pydantic): the base of every request body (unknown fields kept
for the refusal that names them; non-finite floats and lone UTF-16 surrogates refused
everywhere), the sampling fields of completions and chat completions, the other APIs' request
base, pooling's fields, the usage and error bodies, and the OpenAPI response entries.

Each API's own request and response models are in its folder (server/api/<name>/protocol.py;
the chat path's request in server/chat/request.py). Field names, defaults and ranges follow
OpenAI's APIs and vLLM's. What a field the models do not declare does is decided by what it
does (server/field_policy.py): here, for completions and chat, unknown fields are refused with
a 400 naming them (but for the documented IGNORED_EXTRA_FIELDS, accepted and logged), as are
fields we cannot honour (UNSUPPORTED_FIELDS).
Responses are plain dicts built by each API's renderer; the models document them in
/openapi.json.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nanovllm.server.errors import bad_request
from nanovllm.server.field_policy import FieldPolicy, IgnoredFields
from nanovllm.values.errors import InvalidRequestError, quote
from nanovllm.values.limits import (
    LOGIT_BIAS_RANGE,
    MAX_ALLOWED_TOKEN_IDS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_N,
    MAX_PRIORITY,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
    TRUNCATION_SIDES,
)
from nanovllm.values.sampling_params import SamplingParams

MAX_MESSAGES = 1024  # a conversation longer than this cannot fit GPT-2's context anyway
MAX_CHAT_CHARS = 1_000_000  # all message texts together; bounded before rendering

# A token id; build_app writes the vocabulary's upper bound into its OpenAPI document.
TokenId = Annotated[int, Field(ge=0, json_schema_extra={"x-token-id": True})]
NonEmptyStr = Annotated[str, Field(min_length=1)]
StopStr = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]

# vLLM request fields that would change the output and that this server does not implement:
# refused when set, never silently ignored (falsy values ask for nothing and pass). Beam search
# is served on /v1/completions only (CompletionRequest declares its two fields).
UNSUPPORTED_FIELDS = (
    "use_beam_search", "length_penalty", "bad_words", "prompt_embeds", "logits_processors",
    "vllm_xargs", "guided_whitespace_pattern", "structural_tag",
)
# Of those, the ones another endpoint of this server serves: its refusal says where.
SERVED_ELSEWHERE = {"use_beam_search": "/v1/completions", "length_penalty": "/v1/completions"}

# Request fields accepted although they cannot change the output here, each with its reason
# (docs/api.md's table); tests/server/test_field_audit.py shows every other field has an effect.
NO_OUTPUT_EFFECT = {
    "model": "names the one served model; any other name is a 404",
    "user": "an end-user id, for the operator's own tracking (OpenAI's meaning)",
    "best_of": "accepted only equal to n (what it then means); any other value is a 400",
    "suffix": "accepted only when null; any text is a 400 (GPT-2 cannot insert)",
    "add_special_tokens": "honoured, but GPT-2's tokenizer adds no special tokens either way "
                          "(a Llama's adds BOS)",
    "priority": "orders requests (--scheduling-policy priority), not what one answers; any "
                "value but 0 is a 400 under fcfs",
}

# Fields outside the request models that clients send and that change nothing here: accepted
# and logged. Any other unknown field is a 400 (it might change the output;
# see SamplingFields.refuse_unsupported_fields).
IGNORED_EXTRA_FIELDS = {
    "metadata": "OpenAI's tags for stored completions; nothing is stored here",
    "store": "OpenAI's stored completions; nothing is stored here",
    "service_tier": "this server has one tier",
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


def is_unicode(text: str) -> bool:
    """False if `text` holds a lone surrogate ("\\ud800" is valid JSON but not Unicode text)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_lone_surrogates(body: Any) -> Any:
    """Checks a whole request body (before pydantic converts it): every string in it, keys and
    unknown fields included, must be Unicode text, or tokenizing, echoing or even logging it
    fails. The error names the top-level field it was found in. Each field is checked by
    encoding it with the C JSON encoder: no Python loop over a large body."""
    if not isinstance(body, dict):
        return body if _encodes(body) else _lone_surrogate("body")
    for key, value in body.items():
        if isinstance(key, str) and not is_unicode(key):
            _lone_surrogate("body")  # in a field's name: there is no field to name
        if not _encodes(value):
            _lone_surrogate(key)
    return body


def _lone_surrogate(field: str) -> NoReturn:
    raise PydanticCustomError(
        "lone_surrogate", "`{field}` contains a lone UTF-16 surrogate (such as \\ud800), which "
        "is not valid Unicode text", {"field": field})


def _encodes(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True



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


def check_prompt_shape(value: Any) -> Any:
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
    # Lower goes first under `--scheduling-policy priority`; anything but 0 is a 400 otherwise.
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)

    @field_validator("stop", mode="before")
    @classmethod
    def _no_empty_stop(cls, v: Any) -> Any:
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def max_new_tokens(self) -> int | None:
        """max_completion_tokens (the chat API's newer name) wins over max_tokens, as in vLLM."""
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    @property
    def length_field(self) -> str | None:
        """The field the client set the completion's length with; None where the API's default
        applies (a client that never sent max_tokens did not ask for 16 tokens)."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens"
        return "max_tokens" if "max_tokens" in self.model_fields_set else None

    def refuse_unsupported_fields(self, known: tuple[str, ...] = ()) -> None:
        """Refuse what would change the output and is not honoured: vLLM's fields this server
        does not implement, and any field it does not know (besides `known`, checked by the
        caller, and the documented IGNORED_EXTRA_FIELDS). A falsy value asks for nothing and
        passes."""
        extra = self.model_extra or {}
        for name in UNSUPPORTED_FIELDS:
            if extra.get(name) not in (None, False, [], {}, 0, ""):
                if name in SERVED_ELSEWHERE:
                    raise bad_request(f"`{name}` is not supported on this endpoint; this server "
                                      f"serves it on {SERVED_ELSEWHERE[name]}.", name)
                raise bad_request(f"`{name}` is not supported by this server.", name)
        handled = {*UNSUPPORTED_FIELDS, *known, *IGNORED_EXTRA_FIELDS}
        unknown = sorted(k for k, v in extra.items()
                         if k not in handled and v not in (None, False, [], {}, 0, ""))
        if unknown:
            raise bad_request(
                f"Unknown field(s) {quote(unknown, 200)}: this server does not know what they "
                "would change, so it refuses them rather than ignore them (docs/api.md lists "
                "the fields it takes).", unknown[0][:100])

    def sampling_params(self, **own) -> SamplingParams:
        """SamplingParams from the shared fields and `own` (what each API's own fields say:
        max_tokens, logprobs, prompt_logprobs, structured); its refusal (engine-side
        validation) becomes a 400 naming the field.

        max_tokens null means "up to the context limit" for the engine as for vLLM.
        Temperatures pass through unclamped: the sampler clamps tiny ones as vLLM does.
        """
        kwargs = dict(
            n=self.n,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty if self.repetition_penalty is not None
            else 1.0,
            temperature=self.temperature if self.temperature is not None else 1.0,
            top_p=self.top_p if self.top_p is not None else 1.0,
            top_k=self.top_k if self.top_k is not None else 0,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids or None,
            ignore_eos=bool(self.ignore_eos),
            max_tokens=self.max_new_tokens,
            min_tokens=self.min_tokens or 0,
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
            skip_special_tokens=self.skip_special_tokens is not False,
            logit_bias=_clamped_logit_bias(self.logit_bias),
            allowed_token_ids=self.allowed_token_ids,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            truncation_side=self.truncation_side or "left",
        )
        try:
            return SamplingParams(**{**kwargs, **own})
        except InvalidRequestError as exc:
            raise bad_request(f"Invalid sampling parameters: {exc}", exc.param) from exc


def _clamped_logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    """OpenAI clamps biases to [-100, 100] where the engine would refuse them; SamplingParams
    turns the keys into token ids (or refuses them)."""
    if not bias:
        return None
    return {k: min(100.0, max(-100.0, v)) for k, v in bias.items()}

# Other APIs' requests, answered by front ends over the chat path (server/api/responses/routes.py,
# server/api/messages/routes.py). Their items and content blocks are checked by the front end,
# which names the exact item at fault.

class FrontEndRequest(OpenAIBaseModel):
    """A body of another API's shape, converted into one chat request. FIELDS: what its fields
    that the model does not declare do here (server/field_policy.py)."""

    FIELDS: ClassVar[FieldPolicy]

    def check_fields(self, log: IgnoredFields) -> None:
        self.FIELDS.check(self.model_extra or {}, log)

# Responses (documentation of what the endpoints answer).


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo

class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

# Pooling: embeddings (OpenAI's), score (vLLM's) and rerank (Jina's and Cohere's).


class PoolingFields(OpenAIBaseModel):
    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="Keep the first this many tokens of each text (its special "
                                 "tokens kept); -1: the context length. Without it, a text "
                                 "longer than the context is a 400.")

    def refuse_unknown_fields(self) -> None:
        """Unknown fields are refused naming them (they might change the output); the
        documented IGNORED_EXTRA_FIELDS pass."""
        unknown = sorted(k for k in (self.model_extra or {}) if k not in IGNORED_EXTRA_FIELDS)
        if unknown:
            raise bad_request(f"Unknown field(s) {quote(unknown, 200)}: this server does not "
                              "know what they would change, so it refuses them.", unknown[0][:100])

class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int

_ERROR = {"model": ErrorResponse}

ERROR_RESPONSES = {400: _ERROR, 401: _ERROR, 404: _ERROR, 500: _ERROR, 503: _ERROR}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}}}  # with "stream": true
