"""The web page at /ui: static files (server/ui/static/) and the small JSON endpoints they read.

The page itself holds no secret, so GET /ui and /ui/static/* load without a key; everything
under /ui/api/ is data and follows the --api-key rule of /v1/* (middleware.APIKeyMiddleware). The page
asks for the key when /ui/api/info answers 401, keeps it in sessionStorage, and sends it as
`Authorization: Bearer` on its own fetches, exactly like any other client.

Every route takes `?model=NAME`, the model the page's picker chose (ui/chosen.py; none: the
first one served). The engine, attention and forward-pass views (and the step view, ui/step.py)
look at that model's engine through its inspector (nanovllm/inspection.py), only while it is
loaded; a server without one (engine replicas on Ray Serve) answers them 503, saying why. Each
view of the page reads one JSON endpoint here; a new view is one more route on `router`:
/ui/api/info (the header and the playground's limits), /ui/api/engine (the engine view, polled
a few times a second: a snapshot the engine thread takes between two steps) and
/ui/api/attention (one query head's attention over a short prompt, and which key/value head
it reads: grouped-query models share one among several query heads) and /ui/api/trace (a short
prompt's forward pass layer by layer), each computed in a worker thread, one prompt at a time.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from nanovllm import __version__
from nanovllm.engine_client import EngineClient, EngineDeadError, RequestAborted
from nanovllm.input_processor import check_token_ids
from nanovllm.inspection import EngineInspector
from nanovllm.model.architectures.registry import architecture_of
from nanovllm.server.errors import APIError, bad_request, error_response
from nanovllm.server.serving import Ctx
from nanovllm.server.ui.chosen import Inspection, ModelName
from nanovllm.server.ui.step import router as step_router
from nanovllm.values.limits import MAX_LOGPROBS, MAX_N

STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/ui/api"  # the page's data: protected like /v1 when the server has an API key

# Only our own files, nothing inline, no framing: the page must work offline and a stray
# injected <script> must not run.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

SNAPSHOT_TIMEOUT = 10.0  # seconds a poll waits for the engine to pause between two steps
# The attention view: a whole forward pass without a KV cache per request, and T x T numbers
# per head on the page, so prompts stay short.
MAX_ATTENTION_TOKENS = 64
MAX_ATTENTION_CHARS = 4096  # checked before tokenizing

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get(f"{API_PREFIX}/info")
async def info(ctx: Ctx, model: ModelName = None) -> dict:
    """What the page shows above the playground, and the limits its controls respect (the
    model's shape only where its views can look at the engine). Of a model that is not
    loaded, only its name and state: looking does not load it."""
    slot = ctx.models.slot(model)
    common = {"model": slot.entry.name, "state": slot.state, "max_logprobs": MAX_LOGPROBS,
              "max_n": MAX_N, "version": __version__}
    if slot.model is None:
        return {**common, "inspection": False, "step_mode": False}
    engine, inspector = slot.model.engine, slot.model.inspector
    shape = {} if inspector is None else {
        "n_layer": inspector.n_layer, "n_head": inspector.n_head,
        "num_kv_heads": inspector.num_kv_heads}
    return {**common, "root": slot.model.root, "is_dummy": engine.is_dummy,
            "architecture": _architecture(engine.model_path),
            "max_model_len": engine.max_model_len,
            "vocab_size": engine.processor.vocab_size, **shape,
            "inspection": inspector is not None,
            "max_attention_tokens": _max_attention_tokens(engine),
            "step_mode": inspector is not None and inspector.step_mode_enabled}


def _architecture(model_path: str) -> str | None:
    """config.json's architecture (LlamaForCausalLM, ...), for the random-weights notice; None
    where the checkpoint is not on this machine (a Ray replica's)."""
    try:
        return architecture_of(model_path)
    except (OSError, ValueError):
        return None


@router.get(f"{API_PREFIX}/engine")
async def engine(inspector: Inspection) -> JSONResponse:
    """The KV block pool, the queues and the recent steps (nanovllm.snapshot.EngineSnapshot)."""
    try:
        snapshot = await asyncio.wait_for(asyncio.wrap_future(inspector.snapshot()),
                                          SNAPSHOT_TIMEOUT)
    except (EngineDeadError, RequestAborted) as exc:
        return error_response(str(exc), 503)
    except TimeoutError:
        return error_response(f"The engine did not pause between two steps within "
                              f"{SNAPSHOT_TIMEOUT:g} s.", 503)
    return JSONResponse(snapshot.to_dict())


class AttentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_ATTENTION_CHARS)
    layer: StrictInt = Field(0, ge=0)
    head: StrictInt = Field(0, ge=0)


@router.post(f"{API_PREFIX}/attention")
async def attention(body: AttentionRequest, raw: Request, ctx: Ctx, inspector: Inspection,
                    model: ModelName = None) -> JSONResponse:
    """How much each token of `prompt` attends to each earlier one in one layer and head."""
    if body.layer >= inspector.n_layer:
        raise bad_request(f"layer must be below n_layer={inspector.n_layer}, got {body.layer}.",
                          "layer")
    if body.head >= inspector.n_head:
        raise bad_request(f"head must be below n_head={inspector.n_head}, got {body.head}.",
                          "head")
    busy: threading.Lock = raw.app.state.attention_busy
    ctx = await ctx.model_for(model)  # (loaded: the inspector says so; held while computed)
    return JSONResponse(await asyncio.to_thread(attention_map, ctx.engine, inspector, busy,
                                                body))


def _max_attention_tokens(client: EngineClient) -> int:
    return min(MAX_ATTENTION_TOKENS, client.max_model_len)


def _prompt_ids(client: EngineClient, prompt: str, view: str) -> list[int]:
    """The prompt's token ids, refused (400, `prompt`) beyond what the views draw."""
    token_ids = client.tokenizer.encode(prompt)
    limit = _max_attention_tokens(client)
    if not 0 < len(token_ids) <= limit:
        raise bad_request(f"The {view} view takes prompts of 1 to {limit} tokens; this "
                          f"prompt is {len(token_ids)} tokens.", "prompt")
    check_token_ids(token_ids, client.processor.vocab_size, "prompt")  # a tokenizer larger than the model
    return token_ids


def _one_at_a_time(busy: threading.Lock, compute):
    """compute() while holding `busy`, or a 429 if another reference pass holds it. Held
    until compute returns, so a client that hangs up does not free the slot early."""
    if not busy.acquire(blocking=False):
        raise APIError("The server computes one attention map or forward trace at a time and "
                       "is busy with another; try again in a moment.", 429)
    try:
        return compute()
    except (EngineDeadError, RequestAborted) as exc:
        raise APIError(str(exc), 503) from None
    finally:
        busy.release()


def attention_map(client: EngineClient, inspector: EngineInspector, busy: threading.Lock,
                  body: AttentionRequest) -> dict:
    """The response of /ui/api/attention, in a worker thread: neither the event loop nor the
    engine thread computes it. One at a time per app (with the forward trace)."""
    token_ids = _prompt_ids(client, body.prompt, "attention")
    probs = _one_at_a_time(
        busy, lambda: inspector.attention_weights(token_ids)[body.layer, body.head])
    return {"token_ids": token_ids, "tokens": _tokens(client, token_ids),
            "layer": body.layer, "head": body.head, "kv_head": kv_head_of(inspector, body.head),
            **_shape(inspector),
            # Row i is token i's attention over tokens 0..i (causal: the rest is 0).
            "weights": _causal_rows(probs)}


def _shape(inspector: EngineInspector) -> dict:
    return {"n_layer": inspector.n_layer, "n_head": inspector.n_head,
            "num_kv_heads": inspector.num_kv_heads}


def kv_head_of(inspector: EngineInspector, head: int) -> int:
    """The key/value head query head `head` reads: consecutive query heads share one (GPT-2:
    each its own)."""
    return head // (inspector.n_head // inspector.num_kv_heads)


def _tokens(client: EngineClient, token_ids) -> list[str]:
    return [client.tokenizer.decode_token(int(t)) for t in token_ids]


def _causal_rows(probs: np.ndarray) -> list[list[float]]:
    """[T, T] -> row i's first i + 1 entries (causal: the rest is 0), rounded for the page."""
    rows = np.round(probs.astype(np.float64), 4).tolist()
    return [row[:i + 1] for i, row in enumerate(rows)]


class TraceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_ATTENTION_CHARS)


@router.post(f"{API_PREFIX}/trace")
async def trace(body: TraceRequest, raw: Request, ctx: Ctx, inspector: Inspection,
                model: ModelName = None) -> JSONResponse:
    """One forward pass of `prompt`, layer by layer
    (nanovllm.model.architectures.trace.ForwardTrace)."""
    busy: threading.Lock = raw.app.state.attention_busy
    ctx = await ctx.model_for(model)
    return JSONResponse(await asyncio.to_thread(forward_trace, ctx.engine, inspector, busy,
                                                body))


def forward_trace(client: EngineClient, inspector: EngineInspector, busy: threading.Lock,
                  body: TraceRequest) -> dict:
    """The response of /ui/api/trace, in a worker thread, one at a time (with attention maps).
    Stage 0 is the embeddings, stage l + 1 the residual stream after layer l."""
    token_ids = _prompt_ids(client, body.prompt, "forward-pass")
    trace = _one_at_a_time(busy, lambda: inspector.trace_forward(token_ids))
    lens_ids = trace.lens_token_ids.tolist()
    return {"token_ids": token_ids, "tokens": _tokens(client, token_ids), **_shape(inspector),
            "residual_norm": np.round(trace.residual_norm.astype(np.float64), 4).tolist(),
            "lens_token_ids": lens_ids,
            "lens_tokens": [[_tokens(client, ids) for ids in stage] for stage in lens_ids],
            "lens_probs": np.round(trace.lens_probs.astype(np.float64), 4).tolist(),
            "final_token_prob": np.round(trace.final_token_prob.astype(np.float64), 4).tolist(),
            "attention": [[_causal_rows(head) for head in layer] for layer in trace.attention]}


def install_ui(app: FastAPI) -> None:
    """Serve the page at /ui and its files at /ui/static (left out with --disable-ui); its
    views of an engine look through the chosen model's inspector (none: they answer 503)."""
    app.state.attention_busy = threading.Lock()
    app.include_router(router)
    app.include_router(step_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
