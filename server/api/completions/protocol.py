"""POST /v1/completions: its body (OpenAI's legacy completions fields with vLLM's, beam
search's among them) and its answer's models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import NonEmptyStr, SamplingFields, TokenId, Usage, check_prompt_shape
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.errors import InvalidRequestError
from nanovllm.values.limits import MAX_BEAM_TOKENS, MAX_BEAM_WIDTH, MAX_LENGTH_PENALTY, MAX_LOGPROBS
from nanovllm.values.sampling_params import SamplingParams

Prompt = (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
          | Annotated[list[TokenId], Field(min_length=1)]
          | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])

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
        return check_prompt_shape(v)

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

class CompletionResponse(BaseModel):
    """Non-streaming body; with stream=true the body is text/event-stream of such chunks."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
