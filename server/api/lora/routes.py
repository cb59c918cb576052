"""POST /v1/load_lora_adapter {lora_name, lora_path} and /v1/unload_lora_adapter {lora_name}
(vLLM's), behind the API key like every /v1 path. A load is checked whole in the engine before
the adapter is installed; a refused one is a 400 naming the adapter and the problem."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from nanovllm.server.api.spec import APISpec
from nanovllm.server.errors import APIError, bad_request
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx, engine_error
from nanovllm.values.errors import quote

router = APIRouter()
MAX_NAME, MAX_PATH = 256, 4096


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=MAX_NAME)
    lora_path: str = Field(min_length=1, max_length=MAX_PATH)


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=MAX_NAME)
    lora_int_id: int | None = None  # vLLM's; the name decides


def served(ctx: Ctx):
    if ctx.adapters is None:
        raise bad_request("LoRA adapters are off: start the server with --enable-lora",
                          "lora_name")
    return ctx.adapters


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             responses=ERROR_RESPONSES)
async def load_lora_adapter(body: LoadLoRAAdapterRequest, ctx: Ctx) -> str:
    adapters = served(ctx)
    ctx = await ctx.model_for(adapters.base)
    if body.lora_name == ctx.model_name:
        raise bad_request(f"The name {quote(body.lora_name, 100)} is the base model's",
                          "lora_name")
    try:
        await adapters.load(ctx.engine, body.lora_name, body.lora_path)
    except ValueError as exc:  # taken name, or the engine's AdapterError naming the problem
        raise bad_request(str(exc), "lora_path") from exc
    except Exception as exc:
        raise engine_error(exc) from exc
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             responses=ERROR_RESPONSES)
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, ctx: Ctx) -> str:
    adapters = served(ctx)
    ctx = await ctx.model_for(adapters.base)
    try:
        found = await adapters.unload(ctx.engine, body.lora_name)
    except ValueError as exc:  # in use by unfinished requests
        raise bad_request(str(exc), "lora_name") from exc
    except Exception as exc:
        raise engine_error(exc) from exc
    if not found:
        raise APIError(f"The lora adapter {quote(body.lora_name, 100)} cannot be found.", 404,
                       "lora_name")
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


API = APISpec(router)
