"""Pooling requests through the engine, for the endpoints that make them (server/api/
embeddings.py, score.py, rerank.py): each text (or pair) one engine request, checked by the
engine's own `PoolingInput` before anything is submitted, and their final results.

Scoring is the model's: a cross-encoder reads each (query, document) pair as one sequence and
its score is `CrossEncoder.predict`'s; an embedding model scores the cosine similarity of the
two texts' embeddings (each text embedded once), as vLLM's score does.
"""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import Request

from nanovllm.pooling_input import PoolingInput
from nanovllm.server.errors import bad_request
from nanovllm.server.serving import BIG_PROMPT_CHARS, ServerContext, final_outputs, submit
from nanovllm.values.outputs import PoolingRequestOutput
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.request import EngineRequest


class ClientGone(Exception):
    """The client disconnected before the results were ready (answered 499)."""


def pooling_input(ctx: ServerContext) -> PoolingInput:
    """The engine's checks of pooling requests; a 400 if the model only generates."""
    if ctx.engine.processor.pooling is None:
        raise bad_request("This model generates text: it makes no embeddings or scores. Start "
                          "the server with --runner pooling to serve a decoder for embeddings.",
                          "model")
    return ctx.engine.processor.pooling


def check_count(n: int, ctx: ServerContext, param: str) -> None:
    limit = ctx.limits.max_pooling_inputs_per_request
    if n > limit:
        raise bad_request(f"{param} holds {n} texts; this server takes at most {limit} in one "
                          "request.", param)


async def checked(chars: int, make) -> list[EngineRequest]:
    """`make()` (tokenizing and checking every text), off the event loop if the texts are big."""
    return await asyncio.to_thread(make) if chars > BIG_PROMPT_CHARS else make()


async def run(raw: Request, ctx: ServerContext, request_id: str,
              requests: list[EngineRequest]) -> list[PoolingRequestOutput]:
    """Every request's final output, in order (ClientGone if the client leaves first)."""
    stream = await submit(ctx, request_id, requests, 1)
    results = await final_outputs(raw, stream)
    if results is None:
        raise ClientGone
    return [results[i] for i in range(len(requests))]


async def scores(raw: Request, ctx: ServerContext, request_id: str, firsts: list[str],
                 seconds: list[str], params: PoolingParams, names: tuple[str, str]
                 ) -> tuple[list[float], int]:
    """How well each seconds[i] answers firsts[i] (see the module's doc), and the prompt
    tokens it took. `names` are the request's fields of the firsts and the seconds (text_1 and
    text_2; query and documents), which the errors name."""
    pooling = pooling_input(ctx)
    chars = sum(map(len, firsts)) + sum(map(len, seconds))
    if pooling.is_cross_encoder:
        pair = PoolingParams("score", None, None, params.truncate_prompt_tokens)
        requests = await checked(chars, lambda: [
            pooling.pair(f"{request_id}-{i}", a, b, pair, names)
            for i, (a, b) in enumerate(zip(firsts, seconds))])
        outputs = await run(raw, ctx, request_id, requests)
        return ([float(o.outputs.data[0]) for o in outputs],
                sum(len(o.prompt_token_ids) for o in outputs))
    # Each text embedded once, checked as the field it came from.
    texts = dict.fromkeys(seconds, names[1]) | dict.fromkeys(firsts, names[0])
    embed = PoolingParams("embed", None, None, params.truncate_prompt_tokens)
    requests = await checked(chars, lambda: [
        pooling.embed(f"{request_id}-{i}", text, embed, name)
        for i, (text, name) in enumerate(texts.items())])
    outputs = await run(raw, ctx, request_id, requests)
    vectors = {text: out.outputs.data for text, out in zip(texts, outputs)}
    return ([cosine(vectors[a], vectors[b]) for a, b in zip(firsts, seconds)],
            sum(len(o.prompt_token_ids) for o in outputs))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
