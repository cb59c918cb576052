"""POST /invocations (SageMaker's route, as vLLM serves it): the one route made of two APIs, a
body with `messages` is a chat completion, one with `prompt` a completion. It is the one module
of server/api/ that imports two API folders (they never import each other).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from nanovllm.server.api.chat import routes as chat
from nanovllm.server.api.completions import routes as completions
from nanovllm.server.api.completions.protocol import CompletionRequest
from nanovllm.server.api.spec import APISpec
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import Ctx

router = APIRouter()

INVOCATIONS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "anyOf": [{"$ref": "#/components/schemas/CompletionRequest"},
              {"$ref": "#/components/schemas/ChatCompletionRequest"}]}}}}}


@router.post("/invocations", responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
             openapi_extra=INVOCATIONS_BODY)
async def invocations(raw: Request, ctx: Ctx) -> Response:
    """A completions body (`prompt`) or a chat completions body (`messages`); else a 400."""
    body = await _json_object(raw)
    if "messages" in body:
        return await chat.create_chat_completion(_parsed(ChatCompletionRequest, body), raw, ctx)
    if "prompt" in body:
        return await completions.create_completion(_parsed(CompletionRequest, body), raw, ctx)
    raise bad_request("/invocations needs a completions body (`prompt`) or a chat completions "
                      "body (`messages`).", "prompt")


async def _json_object(raw: Request) -> dict:
    try:
        body = json.loads(await raw.body())
    except ValueError as exc:
        raise bad_request(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.")
    return body


def _parsed(model: type[BaseModel], body: dict):
    """The body as `model`, its errors worded as the routes' own validation errors."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


API = APISpec(router, generating=("/invocations",))
