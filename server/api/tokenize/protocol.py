"""POST /tokenize and /detokenize (vLLM's): their bodies and answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import MAX_MESSAGES, OpenAIBaseModel, TokenId


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

class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
