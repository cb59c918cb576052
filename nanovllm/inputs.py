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
    keys = set(prompt)
    if keys == {"prompt"} and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    if keys == {"prompt_token_ids"} and not isinstance(prompt["prompt_token_ids"], str | dict):
        return list(prompt["prompt_token_ids"])
    raise ValueError(f"a prompt dict takes exactly one key, 'prompt' (text) or 'prompt_token_ids' "
                     f"(a list of token ids); got keys {sorted(map(str, keys))}")


def is_single_prompt(prompts) -> bool:
    """True for one prompt, False for a sequence of them (a list of ints is one prompt)."""
    return isinstance(prompts, str | dict) or (
        len(prompts) > 0 and isinstance(prompts[0], int | np.integer))
