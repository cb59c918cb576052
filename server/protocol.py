"""The OpenAI-compatible API's models (pydantic): every request body and every response.

Requests: field names, defaults and ranges follow OpenAI's APIs and vLLM's CompletionRequest
and ChatCompletionRequest. Unknown fields are refused with a 400 naming them (but for the
documented IGNORED_EXTRA_FIELDS, accepted and logged), as are fields we cannot honour. Non-finite floats (NaN, Infinity, which
Python's json accepts) and lone UTF-16 surrogates are refused everywhere.

Responses: the endpoints build plain dicts; these models document them in /openapi.json.
A new endpoint's body and answer are one more model each, here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nanovllm.server.errors import bad_request
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.errors import InvalidRequestError, quote
from nanovllm.values.limits import (
    LOGIT_BIAS_RANGE,
    MAX_ALLOWED_TOKEN_IDS,
    MAX_BEAM_TOKENS,
    MAX_BEAM_WIDTH,
    MAX_LENGTH_PENALTY,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOOLS,
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
Prompt = (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
          | Annotated[list[TokenId], Field(min_length=1)]
          | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])

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


# With use_beam_search, what each field beams cannot honour may hold: the values that ask for
# nothing. Sampling's shaping, stop rules and the text around the answer change what a sampled
# sequence is; beams are chosen by their scores alone and keep only their own tokens' logprobs.
BEAM_NEUTRAL_VALUES = {
    "top_p": (None, 1.0), "top_k": (None, 0, -1), "min_p": (None, 0.0),
    "presence_penalty": (None, 0.0), "frequency_penalty": (None, 0.0),
    "repetition_penalty": (None, 1.0), "logit_bias": (None, {}), "allowed_token_ids": (None,),
    "min_tokens": (None, 0), "stop": (None, []), "stop_token_ids": (None, []),
    "include_stop_str_in_output": (None, False), "skip_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,), "echo": (None, False), "prompt_logprobs": (None,),
    "logprobs": (None, 0), "structured_outputs": (None,), "guided_json": (None,),
    "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "response_format": (None, {"type": "text"}),
}
# BeamSearchParams' names for what the HTTP request calls otherwise.
BEAM_FIELD_NAMES = {"beam_width": "n"}


class CompletionRequest(SamplingFields):
    """POST /v1/completions body."""

    prompt: Prompt
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(16, ge=0)  # 0 only with echo: score the prompt
    suffix: str | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's beam search extras
    use_beam_search: bool | None = Field(
        False, json_schema_extra={"x-max-beam-width": MAX_BEAM_WIDTH,
                                  "x-max-beam-tokens": MAX_BEAM_TOKENS},
        description=f"Beam search (transformers' rule): `n` is the beam width (at most "
                    f"{MAX_BEAM_WIDTH}), `max_tokens` at most {MAX_BEAM_TOKENS}; the n choices "
                    "are the beams, best first. Not streamed; sampling fields, stop rules, echo "
                    "and top logprobs are refused with it.")
    length_penalty: float | None = Field(
        1.0, ge=-MAX_LENGTH_PENALTY, le=MAX_LENGTH_PENALTY,
        description="Beam search only: a finished beam scores cum_logprob / len ** this.")

    # The only check of `prompt` here: Prompt, the annotation, documents it in the OpenAPI doc.
    @field_validator("prompt", mode="plain", json_schema_input_type=Prompt)
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        return _check_prompt_shape(v)

    @property
    def echo_only(self) -> bool:
        """echo with max_tokens 0: return the prompt (and its logprobs) without generating."""
        return bool(self.echo) and self.max_new_tokens == 0

    def refuse_what_beams_cannot_honour(self) -> None:
        """With use_beam_search, a 400 naming the first field beams would ignore; without it,
        a 400 for length_penalty (it scores beams only)."""
        if not self.use_beam_search:
            if self.length_penalty not in (None, 1.0):
                raise bad_request("`length_penalty` scores beams: it needs use_beam_search.",
                                  "length_penalty")
            return
        if self.stream:
            raise bad_request("Beam search is not streamed: every beam may still be replaced "
                              "until the search ends, so its only answer is the final one "
                              "(send stream: false).", "stream")
        for name, neutral in BEAM_NEUTRAL_VALUES.items():
            if getattr(self, name) not in neutral:
                raise bad_request(
                    f"`{name}` cannot be honoured with use_beam_search: beams are chosen by "
                    "their scores, never sampled or stopped early, and carry only their own "
                    "tokens' logprobs (logprobs: 0). Leave it unset, or turn beam search off.",
                    name)

    def to_beam_search_params(self) -> BeamSearchParams:
        """The beam search asked for (refuse_what_beams_cannot_honour first); its refusal is a
        400 naming the request's field. No temperature scores the model's own distribution
        (vLLM's default, 1.0, is the same thing)."""
        if self.max_new_tokens is None:
            raise bad_request(f"Beam search needs max_tokens (at most {MAX_BEAM_TOKENS}).",
                              "max_tokens")
        try:
            return BeamSearchParams(
                self.n, self.max_new_tokens, ignore_eos=bool(self.ignore_eos),
                temperature=self.temperature or 0.0,
                length_penalty=1.0 if self.length_penalty is None else self.length_penalty)
        except InvalidRequestError as exc:
            param = BEAM_FIELD_NAMES.get(exc.param, exc.param)
            raise bad_request(f"Invalid beam search parameters (n is the beam width): {exc}",
                              param) from exc

    def to_sampling_params(self, structured: Any = None) -> SamplingParams:
        """With echo, prompt_logprobs default to logprobs (the echoed prompt's); echo_only runs
        one step, as vLLM does."""
        return self.sampling_params(
            max_tokens=1 if self.echo_only else self.max_new_tokens, logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs if self.prompt_logprobs is not None
            else self.logprobs if self.echo else None, structured=structured)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions body. `messages` is checked by the chat endpoint, which names
    the exact message and part at fault."""

    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1)  # None: up to the context limit (vLLM)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # vLLM's: prepend the last message's content when it is the assistant's own (the
    # continue_final_message case), and the prompt's logprobs.
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Tool calling (server/tool_calls/ checks them, naming the field at fault).
    tools: list[Any] | None = Field(None, description=f"Function tools, at most {MAX_TOOLS}; "
                                    "rendered by the chat template.")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description='"none", "auto" (the default with tools; needs '
                          '--enable-auto-tool-choice), "required", or {"type": "function", '
                          '"function": {"name": ...}}; the last two are enforced by the grammar '
                          "engine.")
    parallel_tool_calls: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description='Extra variables for the chat template (e.g. {"enable_thinking": '
                          "false}).")

    def to_sampling_params(self, structured: Any = None) -> SamplingParams:
        return self.sampling_params(logprobs=(self.top_logprobs or 0) if self.logprobs else None,
                                    prompt_logprobs=self.prompt_logprobs, structured=structured)


class TokenizeRequest(OpenAIBaseModel):
    """vLLM's two forms: a `prompt`, or chat `messages` rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[Any] | None = None  # rendered into the prompt as chat completions renders them
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool | None = Field(
        None, description="Add the special tokens the tokenizer adds (a Llama's BOS; GPT-2's "
                          "none). Default: true for `prompt`, false for `messages` (the chat "
                          "template holds them), as vLLM's two forms.")
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


# Other APIs' requests, answered by front ends over the chat path (server/endpoints/responses.py,
# server/endpoints/messages.py). Their items and content blocks are checked by the front end,
# which names the exact item at fault.

MAX_RESPONSE_ID_CHARS = 128
MetadataKey = Annotated[str, Field(max_length=64)]


class FrontEndRequest(OpenAIBaseModel):
    """A body of another API's shape, converted into one chat request. IGNORED: the fields its
    clients send that change nothing here (docs/api.md says why); any other unknown field
    with a value is a 400, as on the chat path."""

    IGNORED: ClassVar[dict[str, str]] = {}

    def refuse_unknown_fields(self) -> None:
        extra = self.model_extra or {}
        unknown = sorted(k for k, v in extra.items()
                         if k not in self.IGNORED and v not in (None, False, [], {}, 0, ""))
        if unknown:
            raise bad_request(
                f"Unknown or unsupported field(s) {quote(unknown, 200)}: this server does not "
                "implement what they would change, so it refuses them rather than ignore them "
                "(docs/api.md lists the fields it takes).", unknown[0][:100])


class ResponsesRequest(FrontEndRequest):
    """POST /v1/responses body (OpenAI's Responses API)."""

    IGNORED: ClassVar[dict[str, str]] = {
        "service_tier": "this server has one tier",
        "prompt_cache_key": "OpenAI's cache-routing hint; the prefix cache needs none",
        "prompt_cache_retention": "the prefix cache keeps what fits, however long",
        "safety_identifier": "an end-user id, like `user`",
        "stream_options": "`include_obfuscation` pads events against length side channels; "
                          "this server adds no padding, and the text is the same",
    }

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


class AnthropicRequestFields(FrontEndRequest):
    """What POST /v1/messages and /v1/messages/count_tokens share (Anthropic's shapes)."""

    model: str
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None  # only {"type": "disabled"}


class MessagesRequest(AnthropicRequestFields):
    """POST /v1/messages body (Anthropic's Messages API)."""

    IGNORED: ClassVar[dict[str, str]] = {
        "service_tier": "this server has one tier",
        "speed": "this server has one speed",
        "inference_geo": "this server runs where it runs",
        "cache_control": "the prefix cache reuses every prompt's blocks without being asked",
        "diagnostics": "asks for prompt-cache diagnostics, of which this server has none",
        "user_profile_id": "an account id, for the operator's own tracking",
        "workspace_id": "an account id, for the operator's own tracking",
    }

    max_tokens: int = Field(..., ge=1)
    output_config: dict[str, Any] | None = None  # {"format": {"type": "json_schema", ...}}
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


# Responses (documentation of what the endpoints answer).


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(BaseModel):
    logprob: float
    rank: int
    decoded_token: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # vLLM's: per prompt position, None (the first) or {token id: logprob}
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionResponse(BaseModel):
    """Non-streaming body; with stream=true the body is text/event-stream of such chunks."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


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


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


class AnthropicErrorInfo(BaseModel):
    type: str  # invalid_request_error, authentication_error, not_found_error, overloaded_error...
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorInfo


class CountTokensResponse(BaseModel):
    input_tokens: int


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
            return _check_prompt_shape(value)
        except ValueError:
            raise ValueError(EMBEDDING_INPUT_SHAPE) from None


class ScoreRequest(PoolingFields):
    text_1: str | Annotated[list[str], Field(min_length=1)]
    text_2: str | Annotated[list[str], Field(min_length=1)]


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankRequest(PoolingFields):
    query: str
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: int | None = Field(None, ge=0, description="Return only the best this many "
                                                      "(0 or null: all)")
    return_documents: bool = True


class EmbeddingData(BaseModel):
    index: int
    object: str = "embedding"
    embedding: list[float] | str  # floats, or base64 of little-endian float32s


class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: PoolingUsage


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


_ERROR = {"model": ErrorResponse}
_ANTHROPIC_ERROR = {"model": AnthropicErrorResponse}
ANTHROPIC_ERROR_RESPONSES = {400: _ANTHROPIC_ERROR, 401: _ANTHROPIC_ERROR, 404: _ANTHROPIC_ERROR,
                             500: _ANTHROPIC_ERROR, 529: _ANTHROPIC_ERROR}
ERROR_RESPONSES = {400: _ERROR, 401: _ERROR, 404: _ERROR, 500: _ERROR, 503: _ERROR}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}}}  # with "stream": true
