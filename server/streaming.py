"""Server-sent events for streamed completions: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`.

The engine's running text never ends in a partial UTF-8 character nor in a prefix of a stop
string, so a delta is simply the new suffix of the cumulative text. Each chunk carries
"usage": null (as vLLM's do); with stream_options.include_usage a last chunk with no
choices carries the usage (and with vLLM's continuous_usage_stats every chunk has the
usage so far). An error after the stream started is sent as one
`data: {"error": {...}}` event, then [DONE]. If the client goes away, Starlette cancels the
generator and SSEResponse's `finally` aborts the engine requests at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.responses import StreamingResponse

from nanovllm.server.completions import (
    echoed_prompt,
    engine_error,
    generated,
    legacy_logprobs,
    token_id_fields,
    token_namer,
    usage,
)
from nanovllm.server.errors import APIError
from nanovllm.server.prompts import echo_only
from nanovllm.server.protocol import CompletionRequest
from nanovllm.server.request_stream import RequestStream
from nanovllm.values.request import EngineRequest


def sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


class SSEResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however the stream ends (done, error, gone)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@dataclass(slots=True)
class ChoiceState:
    """What was already sent for one choice."""

    text_len: int = 0  # of the engine's text (echoed prompt not included)
    num_tokens: int = 0
    offset: int = 0  # text_offset of the next logprobs token
    started: bool = False
    finished: bool = False


def delta_choice(req: CompletionRequest, prompt: EngineRequest, result, out, st: ChoiceState, tok) -> dict | None:
    """The next chunk's choice for one output, or None when there is nothing new to say."""
    all_text, all_ids, all_lps = generated(req, out)
    text = all_text[st.text_len:]
    new_ids, new_lps = all_ids[st.num_tokens:], None
    ids = token_id_fields(req, None if st.started else prompt.prompt_token_ids, new_ids)
    if req.logprobs is not None:
        new_lps = list((all_lps or [])[st.num_tokens:st.num_tokens + len(new_ids)])
    finished = out.finish_reason is not None
    if not st.started and req.echo:
        echo_text, echo_ids, echo_logprobs = echoed_prompt(req, prompt, result, tok)
        text = echo_text + text
        if echo_logprobs is not None:
            new_lps, new_ids = echo_logprobs + new_lps, echo_ids + new_ids
    has_news = text or finished or (req.logprobs is not None and new_ids)
    if not has_news or st.finished:
        return None
    lp = None
    if req.logprobs is not None:
        lp = legacy_logprobs(new_ids, new_lps or [None] * len(new_ids), req.logprobs,
                             token_namer(req, tok), st.offset)
        st.offset += sum(len(t) for t in lp["tokens"])
    st.text_len, st.num_tokens = len(all_text), len(all_ids)
    st.started, st.finished = True, finished
    return {"text": text, "logprobs": lp, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason, **ids}


async def completion_events(req: CompletionRequest, ctx, prompts: list[EngineRequest],
                            stream: RequestStream) -> AsyncIterator[str]:
    created, tok = int(time.time()), ctx.engine_loop.tokenizer
    head = {"id": stream.request_id, "object": "text_completion", "created": created,
            "model": ctx.model_name}
    options = req.stream_options
    continuous = bool(options and options.include_usage and options.continuous_usage_stats)
    states: dict[tuple[int, int], ChoiceState] = {}
    final: dict = {}
    try:
        while not stream.done:
            batch = await stream.next_batch()
            final.update(batch)
            choices = []
            for tag in sorted(batch):
                for out in batch[tag].outputs:
                    st = states.setdefault((tag, out.index), ChoiceState())
                    choice = delta_choice(req, prompts[tag], batch[tag], out, st, tok)
                    if choice is not None:
                        choices.append({"index": tag * req.n + out.index, **choice})
            running = usage(prompts, final, not echo_only(req)) if continuous else None
            for choice in choices:  # one choice per chunk, like vLLM and OpenAI
                yield sse({**head, "choices": [choice], "usage": running})
        if options and options.include_usage:
            yield sse({**head, "choices": [], "usage": usage(prompts, final, not echo_only(req))})
    except Exception as exc:
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        yield sse(error.body())
    yield sse("[DONE]")
