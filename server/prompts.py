"""Turn a validated CompletionRequest into engine inputs: prompts and one SamplingParams.

Whether a request can run (token ids in the vocabulary, a non-empty prompt, prompt plus
max_tokens within the context and the KV pool) is the engine's rule: `resolve_prompts` has
the engine's input processor turn each prompt into an EngineRequest, once, before anything is
submitted, so a bad request is a 400 naming the field and never reaches the engine. SamplingParams checks its own ranges. Only
the OpenAI API's own semantics live here: fields this server cannot honour, defaults for
omitted fields, and clamping logit_bias to [-100, 100] as OpenAI does.
"""

from __future__ import annotations

from nanovllm import InvalidRequestError, SamplingParams
from nanovllm.input_processor import is_single_prompt
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import IGNORED_EXTRA_FIELDS, CompletionRequest
from nanovllm.values.errors import quote
from nanovllm.values.limits import ServerLimits
from nanovllm.values.request import EngineRequest

# vLLM request fields that would change the output and that this server does not implement:
# refused when set, never silently ignored (falsy values ask for nothing and pass).
UNSUPPORTED_FIELDS = (
    "use_beam_search", "length_penalty", "bad_words", "prompt_embeds", "logits_processors", "vllm_xargs",
    "guided_whitespace_pattern", "structural_tag",
)


def max_tokens_of(req) -> int | None:
    """max_completion_tokens (the chat API's newer name) wins over max_tokens, as in vLLM."""
    return req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens


def echo_only(req: CompletionRequest) -> bool:
    """echo with max_tokens 0: return the prompt (and its logprobs) without generating."""
    return bool(req.echo) and max_tokens_of(req) == 0


def check_unsupported_fields(req, known: tuple[str, ...] = ()) -> None:
    """Refuse what would change the output and is not honoured: vLLM's fields this server does
    not implement, and any field it does not know (besides `known`, checked by the caller,
    and the documented IGNORED_EXTRA_FIELDS). A falsy value asks for nothing and passes."""
    extra = req.model_extra or {}
    for name in UNSUPPORTED_FIELDS:
        if extra.get(name) not in (None, False, [], {}, 0, ""):
            raise bad_request(f"`{name}` is not supported by this server.", name)
    handled = {*UNSUPPORTED_FIELDS, *known, *IGNORED_EXTRA_FIELDS}
    unknown = sorted(k for k, v in extra.items()
                     if k not in handled and v not in (None, False, [], {}, 0, ""))
    if unknown:
        raise bad_request(
            f"Unknown field(s) {quote(unknown, 200)}: this server does not know what they "
            "would change, so it refuses them rather than ignore them (docs/api.md lists the "
            "fields it takes).", unknown[0][:100])


def check_supported(req: CompletionRequest) -> None:
    check_unsupported_fields(req)
    if max_tokens_of(req) == 0 and not req.echo:
        raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo, to "
                          "return the prompt and its logprobs without generating).", "max_tokens")
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("`prompt_logprobs` are not available when `stream=True`.",
                          "prompt_logprobs")
    if req.suffix is not None:
        raise bad_request("suffix is not supported by this server.", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"best_of is not supported (best_of={req.best_of} must be unset or equal n={req.n}).",
            "best_of",
        )
    if req.stream_options is not None and not req.stream:
        raise bad_request("`stream_options` can only be defined when `stream=True`.", "stream_options")


def check_request_size(req: CompletionRequest, limits: ServerLimits) -> None:
    """Prompts and sequences (prompts x n) one request may create: checked before tokenizing."""
    count = len(split_prompts(req.prompt))
    if count > limits.max_prompts_per_request:
        raise bad_request(f"prompt holds {count} prompts; this server takes at most "
                          f"{limits.max_prompts_per_request} per request.", "prompt")
    if count * req.n > limits.max_sequences_per_request:
        raise bad_request(f"{count} prompt(s) x n={req.n} asks for {count * req.n} sequences; this "
                          f"server takes at most {limits.max_sequences_per_request} per request "
                          "(lower n or send fewer prompts).", "n")


def check_response_size(params: SamplingParams, prompts: list[EngineRequest], echo: bool,
                        limits: ServerLimits, max_model_len: int) -> None:
    """With logprobs, the response carries 1 + logprobs entries for every token (echoed prompt
    tokens included, in every choice), and with prompt_logprobs 1 + prompt_logprobs for every
    prompt token of every choice: refuse a request whose response could pass the limit."""
    if params.logprobs is None and params.prompt_logprobs is None:
        return
    def most_tokens(p: EngineRequest) -> int:
        n_prompt = len(p.prompt_token_ids)
        new = params.max_tokens if params.max_tokens is not None else max_model_len - n_prompt
        return new + (n_prompt if echo else 0)

    entries, param = 0, "prompt_logprobs"
    if params.prompt_logprobs is not None:
        entries += params.n * sum(len(p.prompt_token_ids) for p in prompts) * (1 + params.prompt_logprobs)
    if params.logprobs is not None:
        entries += params.n * sum(map(most_tokens, prompts)) * (1 + params.logprobs)
        param = "logprobs"
    if entries > limits.max_logprob_entries_per_response:
        raise bad_request(
            f"This response could carry {entries} logprobs (tokens x (1 + logprobs)); this "
            f"server sends at most {limits.max_logprob_entries_per_response} per response. Lower "
            "logprobs, prompt_logprobs, n or max_tokens, or turn off echo.", param)


def split_prompts(raw: str | list) -> list[str | list[int]]:
    """The request's prompts: `prompt` is one text or id list, or a list of them."""
    return [raw] if is_single_prompt(raw) else raw


def resolve_prompts(raw: str | list, engine, params: SamplingParams,
                    request_id: str) -> list[EngineRequest]:
    """Each prompt as the engine's input processor checks it: engine request `{request_id}-{i}`
    (refusals become 400s, errors.py)."""
    return [engine.processor.process(f"{request_id}-{i}", item, params)
            for i, item in enumerate(split_prompts(raw))]


def sampling_params(req, **overrides) -> SamplingParams:
    """Build SamplingParams from a completions (or chat: `overrides` are its differences)
    request; its own ValueError (engine-side validation) becomes a 400.

    max_tokens null means "up to the context limit" for the engine as for vLLM. Temperatures
    pass through unclamped: the sampler clamps tiny ones as vLLM does.
    """
    kwargs = dict(
        n=req.n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty if req.repetition_penalty is not None else 1.0,
        temperature=req.temperature if req.temperature is not None else 1.0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        top_k=req.top_k if req.top_k is not None else 0,
        min_p=req.min_p or 0.0,
        seed=req.seed,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids or None,
        ignore_eos=bool(req.ignore_eos),
        max_tokens=1 if echo_only(req) else max_tokens_of(req),  # vLLM runs one step
        min_tokens=req.min_tokens or 0,
        logprobs=req.logprobs,
        prompt_logprobs=req.prompt_logprobs if req.prompt_logprobs is not None
        else req.logprobs if req.echo else None,
        include_stop_str_in_output=bool(req.include_stop_str_in_output),
        skip_special_tokens=req.skip_special_tokens is not False,
        logit_bias=_clamped_logit_bias(req.logit_bias),
        allowed_token_ids=req.allowed_token_ids,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        truncation_side=req.truncation_side or "left",
    )
    kwargs.update(overrides)
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError as exc:
        raise bad_request(f"Invalid sampling parameters: {exc}", exc.param) from exc


def _clamped_logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    """OpenAI clamps biases to [-100, 100] where the engine would refuse them; SamplingParams
    turns the keys into token ids (or refuses them)."""
    if not bias:
        return None
    return {k: min(100.0, max(-100.0, v)) for k, v in bias.items()}
