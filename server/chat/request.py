"""The chat path's request: OpenAI's chat completions body (with vLLM's fields), which
/v1/chat/completions takes as it is and every other API over the chat path fills."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nanovllm.server.protocol import MAX_MESSAGES, SamplingFields
from nanovllm.values.limits import MAX_LOGPROBS, MAX_TOOLS
from nanovllm.values.sampling_params import SamplingParams


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions body. `messages` is checked by the chat path (template.py),
    which names the exact message and part at fault."""

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
    # Tool calling (server/chat/tool_calls/ checks them, naming the field at fault).
    tools: list[Any] | None = Field(None, description=f"Function tools, at most {MAX_TOOLS}; "
                                    "rendered by the chat template.")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description='"none", "auto" (the default with tools; needs '
                          '--enable-auto-tool-choice), "required", or {"type": "function", '
                          '"function": {"name": ...}}; the last two are enforced by the grammar '
                          "engine.")
    parallel_tool_calls: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description='Extra variables for the chat template (e.g. {"enable_thinking": '
                          "false}).")
    thinking_token_budget: int | None = Field(
        None, ge=1, description="vLLM's: at most this many tokens of reasoning; then the "
                                "server closes the reasoning itself and the answer follows "
                                "(needs --reasoning-parser).")

    def to_sampling_params(self, structured: Any = None) -> SamplingParams:
        return self.sampling_params(logprobs=(self.top_logprobs or 0) if self.logprobs else None,
                                    prompt_logprobs=self.prompt_logprobs, structured=structured)
