"""The step view's endpoints: pause the engine, step it one step at a time, resume it.

Served only with `nanovllm serve --enable-step-mode` (404 otherwise), under /ui/api/ like the
page's other data, so an API key guards them as it guards /v1. A pause is a lease (default
60 s, at most 600): the page renews it while it is open, and a client that pauses and goes
away leaves the engine paused for at most that long. While paused the server takes requests
as always; they wait in the queue, and /health, /metrics and the engine view still answer.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nanovllm.engine_client import EngineDeadError, RequestAborted
from nanovllm.inspection import EngineInspector
from nanovllm.server.errors import APIError
from nanovllm.server.ui.chosen import LoadedModel
from nanovllm.step_record import DEFAULT_PAUSE_LEASE, MAX_PAUSE_LEASE, StepModeDisabled

PREFIX = "/ui/api/step"
STEP_TIMEOUT = 60.0  # seconds a command waits for the engine (a step in flight, then one more)

router = APIRouter(include_in_schema=False)


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease: float = Field(DEFAULT_PAUSE_LEASE, gt=0, le=MAX_PAUSE_LEASE)


def _enabled(model: LoadedModel) -> EngineInspector:
    inspector = model.inspector
    if inspector is None or not inspector.step_mode_enabled:
        raise APIError("Step mode is off: start the server with --enable-step-mode.", 404)
    return inspector


@router.get(PREFIX)
async def state(model: LoadedModel) -> JSONResponse:
    """Paused or not, and the record of the last single step (nanovllm.step_record)."""
    return JSONResponse(_enabled(model).step_mode.to_dict())


@router.post(f"{PREFIX}/pause")
async def pause(model: LoadedModel, body: LeaseRequest | None = None) -> JSONResponse:
    """Pause after the step in flight, or renew a pause, for `lease` seconds."""
    inspector = _enabled(model)
    return await _answer(lambda: inspector.pause((body or LeaseRequest()).lease))


@router.post(f"{PREFIX}/step")
async def step(model: LoadedModel, body: LeaseRequest | None = None) -> JSONResponse:
    """Pause (or renew the pause) and take exactly one step; answers with its record."""
    inspector = _enabled(model)
    return await _answer(lambda: inspector.step((body or LeaseRequest()).lease))


@router.post(f"{PREFIX}/resume")
async def resume(model: LoadedModel) -> JSONResponse:
    inspector = _enabled(model)
    return await _answer(inspector.resume)


async def _answer(command) -> JSONResponse:
    try:
        mode = await asyncio.wait_for(asyncio.wrap_future(command()), STEP_TIMEOUT)
    except StepModeDisabled as exc:
        raise APIError(str(exc), 404) from None
    except (EngineDeadError, RequestAborted) as exc:
        raise APIError(str(exc), 503) from None
    except TimeoutError:
        raise APIError(f"The engine did not answer within {STEP_TIMEOUT:g} s.", 503) from None
    return JSONResponse(mode.to_dict())
