"""The model a request of the web page looks at: `?model=NAME` on every /ui/api/ route (none:
the first model served), resolved through the server's model pool.

The engine, attention, forward-pass and step views only look: a model that is not loaded is
a 409 saying so rather than a load (the playground's requests, plain /v1 requests, load it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from nanovllm.inspection import EngineInspector
from nanovllm.server.errors import APIError
from nanovllm.server.models.context import ModelContext
from nanovllm.server.serving import Ctx
from nanovllm.values.errors import quote

NO_INSPECTOR = ("The web page's engine, attention and forward-pass views look at an engine in "
                "the server's reach; engine replicas on Ray Serve (--data-parallel-size) are "
                "not (the playground works).")

# The page's `?model=`: a name from GET /v1/models (None: the first one served).
ModelName = Annotated[str | None, Query(min_length=1, max_length=256)]


def loaded_model(ctx: Ctx, model: ModelName = None) -> ModelContext:
    """The chosen model if it is loaded: a 404 for a model the server does not serve, a 409
    for one that is not loaded (looking does not load it)."""
    slot = ctx.models.slot(model)
    if slot.model is None:
        raise APIError(f"The model {quote(slot.entry.name, 100)} is not loaded ({slot.state}); "
                       "a request for it (the playground's) loads it.", 409, "model")
    return slot.model


LoadedModel = Annotated[ModelContext, Depends(loaded_model)]  # route parameter: 404/409


def get_inspector(model: LoadedModel) -> EngineInspector:
    if model.inspector is None:
        raise APIError(NO_INSPECTOR, 503)
    return model.inspector


Inspection = Annotated[EngineInspector, Depends(get_inspector)]  # route parameter: 503 if none
