"""What OpenAI's completions and chat completions say alike (their renderers share it): the
usage, vLLM's token id and prompt logprob fields, how logprobs name a token, and the stream
of chunks (`data: {chunk}` events, an error as one event, then `data: [DONE]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nanovllm.server.chat.result import Usage
from nanovllm.server.errors import APIError
from nanovllm.server.serving import engine_error, sse


def usage_json(usage: Usage) -> dict:
    """OpenAI's usage, with (as OpenAI always sends it) the prompt tokens the cache supplied."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def token_namer(req, tokenizer) -> Callable[[int], str]:
    """How logprobs name a token: its text, or vLLM's "token_id:N" when the client asks for
    return_tokens_as_token_ids (texts of partial UTF-8 tokens are ambiguous; ids are not)."""
    if req.return_tokens_as_token_ids:
        return lambda tid: f"token_id:{tid}"
    return tokenizer.decode_token


def token_id_fields(req, prompt_ids: list[int] | None, token_ids: list[int]) -> dict:
    """vLLM's return_token_ids: the prompt's ids (where given) and the choice's generated ids
    (never the echoed prompt), so a client need not tokenize again."""
    if not req.return_token_ids:
        return {}
    fields = {"token_ids": list(token_ids)}
    if prompt_ids is not None:
        fields = {"prompt_token_ids": list(prompt_ids), **fields}
    return fields


def prompt_logprobs_field(steps: list | None) -> list | None:
    """vLLM's `prompt_logprobs`: per prompt position None or {token id: Logprob}, -inf clamped."""
    if steps is None:
        return None
    return [None if step is None else
            {str(t): {"logprob": max(p.logprob, -9999.0), "rank": p.rank,
                      "decoded_token": p.decoded_token} for t, p in step.items()}
            for step in steps]


async def chunk_events(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    """The chunks as server-sent events, then [DONE]. An error after the stream started is
    sent as one `data: {"error": {...}}` event, then [DONE]."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        yield sse(error.body())
    yield sse("[DONE]")
