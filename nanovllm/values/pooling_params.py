"""PoolingParams: what a pooling request (an embedding, or a cross-encoder's score) asks for,
as vLLM's. The checkpoint decides how a text becomes a vector (`model/checkpoint/pooling_config.py`); these
are what a request may change about it."""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.values.errors import InvalidRequestError

TASKS = ("embed", "score")


@dataclass(frozen=True, slots=True)
class PoolingParams:
    task: str = "embed"                      # "embed": a vector; "score": a cross-encoder's score
    dimensions: int | None = None            # keep the first this many (Matryoshka models only)
    normalize: bool | None = None            # None: as the checkpoint says (its Normalize module)
    truncate_prompt_tokens: int | None = None  # keep the first this many tokens (-1: the context)

    def __post_init__(self):
        if self.task not in TASKS:
            raise InvalidRequestError(f"task must be one of {', '.join(TASKS)}, got "
                                      f"{self.task!r}.", "task")
        if self.dimensions is not None and (type(self.dimensions) is not int
                                            or self.dimensions < 1):
            raise InvalidRequestError(f"dimensions must be a positive integer, got "
                                      f"{self.dimensions!r}.", "dimensions")
        n = self.truncate_prompt_tokens
        if n is not None and (type(n) is not int or (n < 1 and n != -1)):
            raise InvalidRequestError(f"truncate_prompt_tokens must be a positive integer or -1, "
                                      f"got {n!r}.", "truncate_prompt_tokens")
