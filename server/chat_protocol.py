"""POST /v1/chat/completions body (OpenAI's chat API with vLLM's extra sampling fields).

The sampling fields keep the completions API's names, defaults and ranges, so that one
function (prompts.sampling_params) turns either request into SamplingParams. `messages` is
checked by chat.normalize_messages, which names the exact message and part at fault.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nanovllm.server.protocol import MAX_MESSAGES, SamplingFields
from nanovllm.values.limits import MAX_LOGPROBS

MAX_CHAT_CHARS = 1_000_000  # all message texts together; bounded before rendering


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1)  # None: up to the context limit (vLLM)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # vLLM's: prepend the last message's content when it is the assistant's own (the
    # continue_final_message case), and the prompt's logprobs.
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
