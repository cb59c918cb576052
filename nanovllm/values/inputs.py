"""The prompt forms the engine accepts, as in vLLM: text, token ids, or a dict naming either.
(nanovllm/input_processor.py unpacks and checks them.)

    llm.generate("Hello")                                  # text
    llm.generate([15496, 11])                              # token ids
    llm.generate({"prompt_token_ids": [15496, 11]})        # vLLM's TokensPrompt
    llm.generate({"prompt": "Hello"})                      # vLLM's TextPrompt
"""

from __future__ import annotations

from typing import TypedDict


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


PromptType = str | list[int] | TextPrompt | TokensPrompt
