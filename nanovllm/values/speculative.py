"""`speculative_config`, with vLLM's keys and JSON shape: what proposes tokens, and how many.

    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    {"model": "path/to/draft", "num_speculative_tokens": 4, "quantization": "int8"}

num_speculative_tokens is the most a step proposes: each step proposes the k that pays most
from what the engine measures (runner/spec_decode/policy.py), 0 where none does. `"adaptive":
false` proposes num_speculative_tokens every step instead, as vLLM does.

Checked here, once, when the engine is configured: unknown keys, types and the limits (in
`limits`). What needs the checkpoints (the draft exists, shares the vocabulary, is long enough)
is checked where the draft is loaded; both fail at start-up, naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from nanovllm.values.limits import MAX_NUM_SPECULATIVE_TOKENS, MAX_PROMPT_LOOKUP

METHODS = ("ngram", "draft_model")
DRAFT_QUANTIZATIONS = ("int8",)
# vLLM's default lookup when neither length is given.
DEFAULT_PROMPT_LOOKUP = 5
# From this many running sequences on, a step does not speculate (vLLM's disable_by_batch_size):
# where on / off fell to ~1.0 in the benchmark's batch sweep on GPT-2 124M
# (docs/performance.md#speculative-decoding).
# A draft costs k passes of its own per step, n-gram proposals nothing, so n-gram pays longer.
DEFAULT_DISABLE_BY_BATCH_SIZE = {"ngram": 12, "draft_model": 2}


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    num_speculative_tokens: int
    method: str = "ngram"
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    model: str | None = None              # the draft checkpoint (method "draft_model")
    quantization: str | None = None       # the draft's weights: None (as stored) or "int8"
    disable_by_batch_size: int | None = None  # null: never off; parse() gives the method's default
    adaptive: bool = True                 # k per step from measurements; false: always the most

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict | str) -> SpeculativeConfig:
        """From a dict (the `LLM` keyword) or its JSON text (`--speculative-config`)."""
        if isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config: not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(known))})")
        if "num_speculative_tokens" not in value:
            raise ValueError("speculative_config.num_speculative_tokens is required")
        options = dict(value)
        # vLLM: a draft model implies the method; "ngram" needs none.
        options.setdefault("method", "draft_model" if options.get("model") else "ngram")
        options.setdefault("disable_by_batch_size",
                           DEFAULT_DISABLE_BY_BATCH_SIZE.get(options["method"]))
        return cls(**options)

    def __post_init__(self) -> None:
        _int("num_speculative_tokens", self.num_speculative_tokens, 1, MAX_NUM_SPECULATIVE_TOKENS)
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"speculative_config.adaptive must be true or false, "
                             f"got {self.adaptive!r}")
        if self.method not in METHODS:
            raise ValueError(f"speculative_config.method must be one of "
                             f"{', '.join(map(repr, METHODS))}, got {self.method!r}")
        if self.disable_by_batch_size is not None:  # 1 would never speculate: vLLM refuses it
            _int("disable_by_batch_size", self.disable_by_batch_size, 2, None)
        if self.method == "ngram":
            for key in ("model", "quantization"):
                if getattr(self, key) is not None:
                    raise ValueError(f"speculative_config.{key} is for method 'draft_model', "
                                     f"not 'ngram'")
            lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
            if lo is None and hi is None:
                lo = hi = DEFAULT_PROMPT_LOOKUP
            lo, hi = (hi if lo is None else lo), (lo if hi is None else hi)
            _int("prompt_lookup_max", hi, 1, MAX_PROMPT_LOOKUP)
            _int("prompt_lookup_min", lo, 1, MAX_PROMPT_LOOKUP)
            if lo > hi:
                raise ValueError(f"speculative_config.prompt_lookup_min ({lo}) must not exceed "
                                 f"prompt_lookup_max ({hi})")
            object.__setattr__(self, "prompt_lookup_min", lo)
            object.__setattr__(self, "prompt_lookup_max", hi)
        else:
            if not isinstance(self.model, str) or not self.model:
                raise ValueError("speculative_config.model: method 'draft_model' needs the draft "
                                 "checkpoint's path")
            for key in ("prompt_lookup_max", "prompt_lookup_min"):
                if getattr(self, key) is not None:
                    raise ValueError(f"speculative_config.{key} is for method 'ngram', not "
                                     f"'draft_model'")
            if self.quantization not in (None, *DRAFT_QUANTIZATIONS):
                raise ValueError(f"speculative_config.quantization must be null or one of "
                                 f"{', '.join(map(repr, DRAFT_QUANTIZATIONS))}, "
                                 f"got {self.quantization!r}")

    def speculates(self, batch_size: int) -> bool:
        """Whether a step of `batch_size` running sequences speculates: vLLM switches speculation
        off once the running requests reach disable_by_batch_size."""
        return self.disable_by_batch_size is None or batch_size < self.disable_by_batch_size


def _int(key: str, value, lo: int, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"speculative_config.{key} must be an integer {bound}, got {value!r}")
