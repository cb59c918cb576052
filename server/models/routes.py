"""GET /v1/models: every served model with its state and size; POST /v1/models/load and
/v1/models/unload (also at llama.cpp's router paths, /models/load and /models/unload), behind
the API key like the rest of /v1. Loading answers once the model is loaded (a 503 naming it if
it fails); unloading a model with requests in flight unloads it once they end."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from nanovllm.server.api.spec import APISpec
from nanovllm.server.models.pool import ModelStatus
from nanovllm.server.models.protocol import (
    ModelAction,
    ModelActionResponse,
    ModelCard,
    ModelList,
    ModelPermission,
)
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(ctx: Ctx) -> ModelList:
    cards = [card(ctx.created, s) for s in ctx.models.statuses()]
    by_name = {c.id: c for c in cards}
    adapters = ctx.adapters.by_name.values() if ctx.adapters else ()
    return ModelList(data=cards + [  # LoRA adapters: their base model is the `parent`
        by_name[lora.base_model_name].model_copy(update=dict(
            id=lora.lora_name, root=lora.lora_name, parent=lora.base_model_name))
        for lora in adapters])


def card(created: int, status: ModelStatus) -> ModelCard:
    permission = ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=created)
    loaded = status.model
    if loaded is None:  # (its path may be local: never shown)
        return ModelCard(id=status.name, created=created, root=status.name,
                         permission=[permission], state=status.state, size=status.size)
    return ModelCard(id=status.name, created=created, root=loaded.root,
                     max_model_len=loaded.engine.max_model_len,
                     vocab_size=loaded.engine.processor.vocab_size, permission=[permission],
                     random_weights=loaded.engine.is_dummy, state=status.state,
                     size=status.size)


@router.post("/v1/models/load", response_model=ModelActionResponse, responses=ERROR_RESPONSES)
@router.post("/models/load", response_model=ModelActionResponse, responses=ERROR_RESPONSES)
async def load(body: ModelAction, ctx: Ctx) -> ModelActionResponse:
    await ctx.models.load(body.model)
    return ModelActionResponse(model=body.model, state="loaded")


@router.post("/v1/models/unload", response_model=ModelActionResponse,
             responses=ERROR_RESPONSES)
@router.post("/models/unload", response_model=ModelActionResponse, responses=ERROR_RESPONSES)
async def unload(body: ModelAction, ctx: Ctx) -> ModelActionResponse:
    return ModelActionResponse(model=body.model, state=await ctx.models.unload(body.model))


API = APISpec(router, paths=("/models",))
