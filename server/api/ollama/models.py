"""GET /api/tags, POST /api/show, GET /api/ps and GET /api/version: the served models as
Ollama describes its models. /api/tags lists every model, /api/ps the loaded ones with the time
each is unloaded if it stays idle (far ahead while it has requests or is kept forever); a size
is its checkpoint's files; a digest names the checkpoint's path (Ollama's is its manifest's
hash, which a checkpoint directory has none of). `keep_alive` is Ollama's: seconds or a
duration ("5m"), 0 to unload once the request ends, negative to keep the model loaded."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter

from nanovllm import __version__
from nanovllm.server.api.ollama.protocol import ShowRequest
from nanovllm.server.api.ollama.render import created_at
from nanovllm.server.errors import bad_request
from nanovllm.server.models.catalog import parse_duration
from nanovllm.server.models.pool import ModelStatus
from nanovllm.server.serving import Ctx, ServerContext

NEVER = "9999-12-31T23:59:59Z"  # the expiry of a model kept loaded (Ollama's keep_alive -1)
router = APIRouter()


def model_name(name: str | None) -> str | None:
    """Ollama's clients name models with a tag; ":latest" is the untagged name."""
    return name.removesuffix(":latest") if name else name


def keep_alive(value) -> float | None:
    """A request's keep_alive in seconds (None: the server's --keep-alive); a 400 if malformed."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise bad_request(f"`keep_alive`: {exc}.", "keep_alive") from None


@router.get("/api/version")
async def version() -> dict:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(ctx: Ctx) -> dict:
    return {"models": [model_entry(ctx, s) for s in ctx.models.statuses()]}


@router.get("/api/ps")
async def ps(ctx: Ctx) -> dict:
    return {"models": [{**model_entry(ctx, s), "expires_at": expiry(s), "size_vram": 0,
                        "context_length": s.model.engine.max_model_len}
                       for s in ctx.models.statuses() if s.model is not None]}


def expiry(status: ModelStatus) -> str:
    if status.expires_at is None or math.isinf(status.expires_at):
        return NEVER
    return datetime.fromtimestamp(status.expires_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@router.post("/api/show")
async def show(body: ShowRequest, ctx: Ctx) -> dict:
    """The model's details, loading it if it is not (its template and context come from it)."""
    name = body.model or body.name
    if not name:
        raise bad_request("Missing required field `model`.", "model")
    ctx = await ctx.model_for(model_name(name))
    family = details(ctx.model_root)["family"]
    return {"modelfile": "", "parameters": "", "license": "",
            "template": ctx.chat_template.source if ctx.chat_template else "",
            "details": details(ctx.model_root), "modified_at": created_at(ctx.created),
            "model_info": {"general.architecture": family,
                           f"{family}.context_length": ctx.engine.max_model_len,
                           "general.random_weights": ctx.engine.is_dummy},
            "capabilities": capabilities(ctx)}


def capabilities(ctx: ServerContext) -> list[str]:
    """What Ollama's clients check before they ask: generation (completion), tools (with a
    tool parser), thinking (with a reasoning parser), or embeddings."""
    if ctx.engine.processor.pooling is not None:
        return ["embedding"]
    return ["completion", *(["tools"] if ctx.tool_parser else []),
            *(["thinking"] if ctx.reasoning_parser else [])]


def model_entry(ctx: ServerContext, status: ModelStatus) -> dict:
    return {"name": status.name, "model": status.name,
            "modified_at": created_at(ctx.created), "size": status.size,
            "digest": hashlib.sha256(status.path.encode()).hexdigest(),
            "details": details(status.path)}


def details(path: str) -> dict:
    root = Path(path)
    kind = model_type(root) or "unknown"
    return {"parent_model": "", "format": "gguf" if root.suffix == ".gguf" else "safetensors",
            "family": kind, "families": [kind], "parameter_size": "", "quantization_level": ""}


def model_type(root: Path) -> str | None:
    """config.json's model_type, where the checkpoint has one."""
    try:
        value = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = value.get("model_type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None
