"""Anthropic's `thinking` and `output_config.effort` as the chat request's fields.

- `{"type": "enabled", "budget_tokens": N}`: the template's thinking switch on
  (`enable_thinking`, Qwen3's name), and the chat path's `thinking_token_budget`: the answer
  opens its reasoning and, after N tokens of it, the server closes it itself (a grammar).
  As Anthropic's API, N must be below `max_tokens`.
- `{"type": "adaptive"}`: the switch on, the model deciding how long it thinks.
- `{"type": "disabled"}`: the switch off.
- `output_config.effort`: the template's `reasoning_effort` (gpt-oss's name), for a template
  that reads it; others render the same prompt.

Refusals have Anthropic's wording ("thinking.type: ..."), which its clients show as is.
"""

from __future__ import annotations

from nanovllm.server.errors import bad_request

THINKING_TYPES = ("enabled", "adaptive", "disabled")


def thinking_fields(thinking: dict | None, max_tokens: int | None) -> dict:
    """`thinking_token_budget` and the template's switch (in `chat_template_kwargs`)."""
    if not thinking:
        return {}
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise bad_request("thinking.type: Input should be 'enabled', 'adaptive' or "
                          "'disabled'.", "thinking")
    if kind == "disabled":
        return {"chat_template_kwargs": {"enable_thinking": False}}
    budget = thinking.get("budget_tokens") if kind == "enabled" else None
    if kind == "enabled":
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise bad_request("thinking.enabled.budget_tokens: Field required: a whole number "
                              "of tokens, at least 1.", "thinking")
        if max_tokens is not None and budget >= max_tokens:
            raise bad_request("`max_tokens` must be greater than `thinking.budget_tokens`.",
                              "max_tokens")
    return {"chat_template_kwargs": {"enable_thinking": True},
            "thinking_token_budget": budget}


def effort_kwargs(output_config: dict | None) -> dict:
    """output_config.effort as the template variable (nothing when absent)."""
    effort = (output_config or {}).get("effort")
    if effort is None:
        return {}
    if not isinstance(effort, str) or len(effort) > 32:
        raise bad_request("output_config.effort: Input should be a short string such as "
                          "'low', 'medium' or 'high'.", "output_config")
    return {"reasoning_effort": effort}
