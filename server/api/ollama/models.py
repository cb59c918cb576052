"""GET /api/tags, POST /api/show, GET /api/ps and GET /api/version: the served model as
Ollama describes its models. The one model is always loaded, so /api/ps lists it with no
expiry; its size is its checkpoint's files; its digest names the checkpoint's path (Ollama's
is its manifest's hash, which a checkpoint directory has none of)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastapi import APIRouter

from nanovllm import __version__
from nanovllm.server.api.ollama.protocol import ShowRequest
from nanovllm.server.api.ollama.render import created_at
from nanovllm.server.errors import bad_request
from nanovllm.server.serving import Ctx, ServerContext

NEVER = "9999-12-31T23:59:59Z"  # the expiry of a model kept loaded (Ollama's keep_alive -1)
router = APIRouter()


def model_name(name: str | None) -> str | None:
    """Ollama's clients name models with a tag; ":latest" is the untagged name."""
    return name.removesuffix(":latest") if name else name


@router.get("/api/version")
async def version() -> dict:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(ctx: Ctx) -> dict:
    return {"models": [model_entry(ctx)]}


@router.get("/api/ps")
async def ps(ctx: Ctx) -> dict:
    entry = model_entry(ctx)
    return {"models": [{**entry, "expires_at": NEVER, "size_vram": 0,
                        "context_length": ctx.engine.max_model_len}]}


@router.post("/api/show")
async def show(body: ShowRequest, ctx: Ctx) -> dict:
    name = body.model or body.name
    if not name:
        raise bad_request("Missing required field `model`.", "model")
    ctx.check_model(model_name(name))
    family = details(ctx)["family"]
    return {"modelfile": "", "parameters": "", "license": "",
            "template": ctx.chat_template.source if ctx.chat_template else "",
            "details": details(ctx), "modified_at": created_at(ctx.created),
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


def model_entry(ctx: ServerContext) -> dict:
    return {"name": ctx.model_name, "model": ctx.model_name,
            "modified_at": created_at(ctx.created), "size": checkpoint_size(ctx.model_root),
            "digest": hashlib.sha256(ctx.model_root.encode()).hexdigest(),
            "details": details(ctx)}


def details(ctx: ServerContext) -> dict:
    root = Path(ctx.model_root)
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


def checkpoint_size(root: str) -> int:
    """The bytes of the checkpoint's files (0 where the root is only a name)."""
    path = Path(root)
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return 0
