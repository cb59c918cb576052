"""Turn a validated CompletionRequest into engine inputs: token-id prompts and SamplingParams.

Everything a client can get wrong is checked here, before the engine sees the request, so a
bad request is a 400 that names the field and can never reach (let alone kill) the engine:
unsupported fields, token ids outside the vocabulary, empty prompts, context overflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nanovllm.sampling_params import SamplingParams
from server.errors import bad_request
from server.protocol import CompletionRequest

MIN_TEMPERATURE = 1e-2  # vLLM clamps smaller positive temperatures: logits/1e-300 overflow


@dataclass(slots=True)
class Prompt:
    """One prompt of a request; `text` is filled lazily (only echo needs it for id prompts)."""

    token_ids: list[int]
    text: str | None = None


def check_supported(req: CompletionRequest) -> None:
    if req.suffix is not None:
        raise bad_request("suffix is not supported by this server.", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"best_of is not supported (best_of={req.best_of} must be unset or equal n={req.n}).",
            "best_of",
        )
    if req.stream_options is not None and not req.stream:
        raise bad_request("`stream_options` can only be defined when `stream=True`.", "stream_options")
    if req.min_tokens and req.max_tokens is not None and req.min_tokens > req.max_tokens:
        raise bad_request(
            f"min_tokens ({req.min_tokens}) must be less than or equal to max_tokens ({req.max_tokens}).",
            "min_tokens",
        )


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise bad_request(
            f"{param} contains token id {bad[0]} outside the vocabulary [0, {vocab_size}).", param
        )


def resolve_prompts(raw: str | list, tokenizer, vocab_size: int) -> list[Prompt]:
    """Tokenize text prompts and range-check id prompts; one Prompt per input prompt."""
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    prompts = []
    for item in raw:
        if isinstance(item, str):
            prompt = Prompt(tokenizer.encode(item), item)
        else:
            check_token_ids(item, vocab_size, "prompt")
            prompt = Prompt(list(item))
        if not prompt.token_ids:
            raise bad_request("prompt must not be empty (it has no tokens).", "prompt")
        prompts.append(prompt)
    return prompts


def context_error(max_model_len: int, prompt_len: int, max_tokens: int | None):
    if max_tokens is None:
        return bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {prompt_len} tokens, leaving no room for the completion. "
            "Please reduce the length of the prompt.", "prompt")
    return bad_request(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
        "completion). Please reduce the length of the prompt or completion.", "max_tokens")


def effective_max_tokens(req: CompletionRequest, prompt_len: int, max_model_len: int) -> int:
    """max_tokens for one prompt; null means "up to the context limit" (vLLM)."""
    room = max_model_len - prompt_len
    if req.max_tokens is None:
        if room < 1:
            raise context_error(max_model_len, prompt_len, None)
        return room
    if req.max_tokens > room:
        raise context_error(max_model_len, prompt_len, req.max_tokens)
    return req.max_tokens


def _logit_bias(req: CompletionRequest, vocab_size: int) -> dict[int, float] | None:
    if not req.logit_bias:
        return None
    bias = {int(k): min(100.0, max(-100.0, v)) for k, v in req.logit_bias.items()}
    check_token_ids(list(bias), vocab_size, "logit_bias")
    return bias


def _temperature(t: float | None) -> float:
    if t is None:
        return 1.0
    return max(t, MIN_TEMPERATURE) if t > 0 else 0.0


def sampling_params(req: CompletionRequest, max_tokens: int, vocab_size: int) -> SamplingParams:
    """Build SamplingParams; its own ValueError (engine-side validation) becomes a 400."""
    if req.stop_token_ids:
        check_token_ids(req.stop_token_ids, vocab_size, "stop_token_ids")
    kwargs = dict(
        n=req.n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty if req.repetition_penalty is not None else 1.0,
        temperature=_temperature(req.temperature),
        top_p=req.top_p if req.top_p is not None else 1.0,
        top_k=req.top_k if req.top_k is not None else 0,
        min_p=req.min_p or 0.0,
        seed=req.seed,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids or None,
        ignore_eos=bool(req.ignore_eos),
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        logprobs=req.logprobs,
        prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None,
        include_stop_str_in_output=bool(req.include_stop_str_in_output),
        skip_special_tokens=req.skip_special_tokens is not False,
        logit_bias=_logit_bias(req, vocab_size),
    )
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as exc:
        raise bad_request(f"Invalid sampling parameters: {exc}", _param_named_in(str(exc), kwargs)) from exc


def _param_named_in(message: str, kwargs: dict) -> str | None:
    """SamplingParams' messages start with the field they are about ("top_p must be ...")."""
    match = re.match(r"[a-z_]+", message)
    return match.group(0) if match and match.group(0) in kwargs else None
