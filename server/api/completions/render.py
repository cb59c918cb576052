"""/v1/completions' answers: the engine's outputs as OpenAI's completion and its chunks.

Choice index = prompt_index * n + output.index (vLLM). Usage counts each prompt's tokens once
and every choice's generated tokens. Legacy logprobs follow vLLM: tokens, token_logprobs,
top_logprobs (sampled token first, then the top-N, keyed by decoded text) and text_offset;
-inf becomes -9999.0 so the JSON stays valid. With echo the prompt text is prepended and,
with logprobs, the prompt's logprobs too (the first one is None: nothing precedes it).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from nanovllm.server.api.completions.protocol import CompletionRequest
from nanovllm.server.api.openai import (
    chunk_events,
    prompt_logprobs_field,
    token_id_fields,
    token_namer,
    usage_json,
)
from nanovllm.server.serving import ChoiceState, RequestStream, ServerContext, usage
from nanovllm.values.request import EngineRequest

# The answer's choices.


def legacy_logprobs(token_ids, step_logprobs, num_top: int, name: Callable[[int], str],
                    offset: int) -> dict:
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for tid, step in zip(token_ids, step_logprobs, strict=False):
        token = name(tid)
        if step is None or tid not in step:
            lp, top = None, None
        else:
            lp = max(step[tid].logprob, -9999.0)
            ranked = [(tid, step[tid])] + sorted(
                ((t, p) for t, p in step.items() if t != tid), key=lambda kv: kv[1].rank)
            top = {name(t): max(p.logprob, -9999.0)
                   for i, (t, p) in enumerate(ranked) if i <= num_top}
        text_offset.append(offset)
        offset += len(token)
        tokens.append(token)
        token_logprobs.append(lp)
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs, "text_offset": text_offset}


def prompt_text(prompt: EngineRequest, tokenizer) -> str:
    return prompt.prompt if prompt.prompt is not None else tokenizer.decode(prompt.prompt_token_ids)


def echoed_prompt(req: CompletionRequest, prompt: EngineRequest, result,
                  tokenizer) -> tuple[str, list[int], list | None]:
    """What echo puts before a choice's output (whole or streamed): the prompt's text, its
    token ids and, if logprobs are asked for, their logprobs (the first is None)."""
    logprobs = None
    if req.logprobs is not None:
        logprobs = list(result.prompt_logprobs or [None] * len(prompt.prompt_token_ids))
    return prompt_text(prompt, tokenizer), list(prompt.prompt_token_ids), logprobs


def generated(req: CompletionRequest, out) -> tuple[str, list[int], list | None]:
    """A choice's own text, token ids and logprobs; nothing for echo with max_tokens 0 (the
    engine ran one step, as vLLM does, but that token is not part of the answer)."""
    if req.echo_only:
        return "", [], [] if req.logprobs is not None else None
    return out.text, list(out.token_ids), out.logprobs


def build_choice(req: CompletionRequest, prompt: EngineRequest, result, out, tokenizer) -> dict:
    text, token_ids, logprobs = generated(req, out)
    if req.echo:
        echo_text, echo_ids, echo_logprobs = echoed_prompt(req, prompt, result, tokenizer)
        text, token_ids = echo_text + text, echo_ids + token_ids
        if echo_logprobs is not None:
            logprobs = echo_logprobs + list(logprobs or [])
    lp = None
    if req.logprobs is not None:
        lp = legacy_logprobs(token_ids, logprobs or [None] * len(token_ids), req.logprobs,
                             token_namer(req, tokenizer), 0)
    return {"text": text, "logprobs": lp, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason,
            "prompt_logprobs": prompt_logprobs_field(result.prompt_logprobs),
            **token_id_fields(req, prompt.prompt_token_ids, generated(req, out)[1])}


def build_response(req: CompletionRequest, ctx: ServerContext, stream: RequestStream,
                   created: int, results: dict) -> dict:
    choices = []
    for tag in sorted(results):
        for out in sorted(results[tag].outputs, key=lambda o: o.index):
            choice = build_choice(req, stream.requests[tag], results[tag], out,
                                  ctx.engine.tokenizer)
            choices.append({"index": tag * req.n + out.index, **choice})
    return {"id": stream.request_id, "object": "text_completion", "created": created,
            "model": ctx.served_name, "choices": choices,
            "usage": usage_json(usage(stream.requests, results, not req.echo_only)),
            "system_fingerprint": None}


# The streamed answer.


def delta_choice(req: CompletionRequest, prompt: EngineRequest, result, out, st: ChoiceState,
                 tok) -> dict | None:
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


def completion_events(req: CompletionRequest, ctx: ServerContext,
                      stream: RequestStream) -> AsyncIterator[str]:
    return chunk_events(completion_chunks(req, ctx, stream))


async def completion_chunks(req: CompletionRequest, ctx: ServerContext,
                            stream: RequestStream) -> AsyncIterator[dict]:
    """One chunk per new choice delta, index = tag * n + output index (vLLM's), and with
    stream_options.include_usage a last chunk with no choices and the usage. Each chunk
    carries "usage": null (as vLLM's do), or with vLLM's continuous_usage_stats the usage so
    far. The engine's running text never ends in a partial UTF-8 character nor in a prefix of
    a stop string, so a delta is simply the new suffix of the cumulative text."""
    head = {"id": stream.request_id, "object": "text_completion", "created": int(time.time()),
            "model": ctx.served_name}
    options, counted = req.stream_options, not req.echo_only
    continuous = bool(options and options.include_usage and options.continuous_usage_stats)
    states: dict[tuple[int, int], ChoiceState] = {}
    final: dict = {}
    while not stream.done:
        batch = await stream.next_batch()
        final.update(batch)
        choices = []
        for tag in sorted(batch):
            for out in batch[tag].outputs:
                st = states.setdefault((tag, out.index), ChoiceState())
                choice = delta_choice(req, stream.requests[tag], batch[tag], out, st,
                                      ctx.engine.tokenizer)
                if choice is not None:
                    choices.append({"index": tag * stream.n + out.index, **choice})
        so_far = usage_json(usage(stream.requests, final, counted)) if continuous else None
        for choice in choices:  # one choice per chunk, like vLLM and OpenAI
            yield {**head, "choices": [choice], "usage": so_far}
    if options and options.include_usage:
        yield {**head, "choices": [], "usage": usage_json(usage(stream.requests, final, counted))}
