"""The prompt forms the engine accepts, as in vLLM: text, token ids, or a dict naming either.

    llm.generate("Hello")                                  # text
    llm.generate([15496, 11])                              # token ids
    llm.generate({"prompt_token_ids": [15496, 11]})        # vLLM's TokensPrompt
    llm.generate({"prompt": "Hello"})                      # vLLM's TextPrompt
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


PromptType = str | list[int] | TextPrompt | TokensPrompt


def unpack_prompt(prompt: PromptType) -> str | list[int]:
    """The text or token ids inside any accepted prompt form; ValueError for anything else."""
    if not isinstance(prompt, dict):
        return prompt
    if set(prompt) == {"prompt"} and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    if set(prompt) == {"prompt_token_ids"} and is_id_sequence(prompt["prompt_token_ids"]):
        return list(prompt["prompt_token_ids"])
    found = ", ".join(f"{key!r}: {type(value).__name__}" for key, value in prompt.items())
    raise ValueError(f"a prompt dict takes exactly one key, 'prompt' (text) or 'prompt_token_ids' "
                     f"(a list of token ids); got {{{found}}}")


def is_id_sequence(value) -> bool:
    """A list or tuple (of what are checked later to be token ids), or a 1-D integer array."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, list | tuple)


def is_single_prompt(prompts) -> bool:
    """True for one prompt, False for a sequence of them (a list of ints is one prompt)."""
    return isinstance(prompts, str | dict) or (
        len(prompts) > 0 and isinstance(prompts[0], int | np.integer))
