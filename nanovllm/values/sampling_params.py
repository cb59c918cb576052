"""Per-request sampling parameters, with vLLM's names and defaults, validated on construction.

Every refusal is an InvalidRequestError (a ValueError) whose `param` names the field to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from nanovllm.values.errors import InvalidRequestError, quote
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
from nanovllm.values.stop_strings import StopStrings


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: no top-k
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16         # None: up to the model's context length
    min_tokens: int = 0
    logprobs: int | None = None         # top-N logprobs besides the sampled token's
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    # Only these tokens may be sampled (vLLM's); None: any token.
    allowed_token_ids: list[int] | None = None
    # Keep only this many prompt tokens (-1: max_model_len), from the end ("left" truncation,
    # vLLM's default) or from the start ("right").
    truncate_prompt_tokens: int | None = None
    truncation_side: str = "left"
    # Structured outputs: a grammar compiled by nanovllm.structured (a runner.structured
    # CompiledGrammar, opaque here); None costs nothing.
    structured: Any = None

    def __post_init__(self):
        self.stop = StopStrings([self.stop] if isinstance(self.stop, str)
                                else _as_list("stop", self.stop, MAX_STOP_STRINGS))
        self.stop_token_ids = _as_list("stop_token_ids", self.stop_token_ids, MAX_STOP_TOKEN_IDS)
        self.logit_bias = _as_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _as_list("allowed_token_ids", self.allowed_token_ids,
                                              MAX_ALLOWED_TOKEN_IDS)
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        _check_int("n", self.n, 1, MAX_N)
        _check_range("presence_penalty", self.presence_penalty, *PENALTY_RANGE)
        _check_range("frequency_penalty", self.frequency_penalty, *PENALTY_RANGE)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, MAX_REPETITION_PENALTY,
                     low_open=True)
        _check_range("temperature", self.temperature, 0.0, None)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, 0, extra="(0 or -1 disables it)")
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            _check_int("seed", self.seed, -MAX_SEED, MAX_SEED)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(f"min_tokens must be at most max_tokens ({self.max_tokens}), "
                                      f"got {self.min_tokens}", "min_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, MAX_LOGPROBS)
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_STRING_CHARS:
                raise InvalidRequestError(f"stop must be non-empty strings of at most "
                                          f"{MAX_STOP_STRING_CHARS} characters, got {quote(s)}",
                                          "stop")
        for i in self.stop_token_ids:
            _check_int("stop_token_ids[]", i, 0)
        self._validate_prompt_and_vocabulary_options()

    def _validate_prompt_and_vocabulary_options(self) -> None:
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise InvalidRequestError("allowed_token_ids must not be empty (leave it out to "
                                          "allow every token)", "allowed_token_ids")
            for i in self.allowed_token_ids:
                _check_int("allowed_token_ids[]", i, 0)
        if self.truncate_prompt_tokens is not None:
            _check_int("truncate_prompt_tokens", self.truncate_prompt_tokens, -1)
            if self.truncate_prompt_tokens == 0:
                raise InvalidRequestError("truncate_prompt_tokens must be >= 1, or -1 for the "
                                          "model's context length", "truncate_prompt_tokens")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise InvalidRequestError(f"truncation_side must be one of {list(TRUNCATION_SIDES)}, "
                                      f"got {quote(self.truncation_side)}", "truncation_side")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def adjusts_logits(self) -> bool:
        """Whether allowed_token_ids, logit bias, min_tokens or a penalty changes this
        request's logits."""
        return bool(self.allowed_token_ids or self.logit_bias or self.min_tokens
                    or self.presence_penalty
                    or self.frequency_penalty or self.repetition_penalty != 1.0)


def _as_list(name: str, value, max_len: int) -> list:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidRequestError(f"{name} must be a list, got {quote(value)}", name)
    if len(value) > max_len:
        raise InvalidRequestError(f"{name} takes at most {max_len} entries, got {len(value)}", name)
    return list(value)


def _as_bias(value) -> dict[int, float]:
    """logit_bias as {token id: bias}; JSON gives the ids as strings, as OpenAI's API does.

    The one check of a bias's key and range: the server clamps the values to [-100, 100]
    first (as OpenAI does) and passes the keys through; whether an id is in the vocabulary
    is the input processor's rule (input_processor.py).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"logit_bias must be a mapping of token id to bias, got "
                                  f"{quote(value)}", "logit_bias")
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidRequestError(f"logit_bias takes at most {MAX_LOGIT_BIAS_ENTRIES} entries, "
                                  f"got {len(value)}", "logit_bias")
    tokens = {k: _bias_token(k) for k in value}
    if bad := [k for k, t in tokens.items() if t is None]:  # every bad key, not just the first
        raise InvalidRequestError(f"logit_bias keys must be token ids; {len(bad)} are not: "
                                  f"{_quote_all(bad)}", "logit_bias")
    bias = {}
    for k, v in value.items():
        _check_range(f"logit_bias[{tokens[k]}]", v, *LOGIT_BIAS_RANGE)
        bias[tokens[k]] = float(v)
    return bias


def _bias_token(key) -> int | None:
    """An integer, or a string of ASCII digits (int() alone would take "1_0", "²" or 1.5);
    None for any other key."""
    if isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key.strip()):
        return int(key)
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return int(key)
    return None


def _quote_all(values: list, shown: int = 10) -> str:
    """Up to `shown` user values, quoted, comma-separated: an error names them without
    echoing a megabyte of input."""
    text = ", ".join(quote(v) for v in values[:shown])
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


def _invalid(name: str, message: str) -> InvalidRequestError:
    """An error about field `name`; "logit_bias[7]" and "stop_token_ids[]" are about the field."""
    return InvalidRequestError(message, name.split("[")[0])


def _check_int(name: str, value, low: int | None, high: int | None = None, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, f"{name} must be an integer, got {quote(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise _invalid(name, f"{name} must be {bounds}{' ' + extra if extra else ''}, got {value}")


def _check_range(name: str, value, low: float, high: float | None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _invalid(name, f"{name} must be a number, got {quote(value)}")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        lo = f"({low}" if low_open else f"[{low}"
        hi = f"{high}]" if high is not None else "inf)"
        raise _invalid(name, f"{name} must be in {lo}, {hi}, got {value}")
