"""POST /v1/chat/completions: OpenAI's chat completions API, the chat path (server/chat/) as
it is, its answer rendered in OpenAI's chat shapes (render.py).

Without a template (`--chat-template`, or the checkpoint's own) the endpoint is a 400, as in
vLLM: GPT-2 is a base model, and a made-up chat format would look like a working chat API.
Message content is a string or a list of text parts (joined with newlines, as vLLM's "string"
content format does); images and audio are refused naming the field.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from nanovllm.server.api.chat.render import chat_completion, chat_events
from nanovllm.server.api.spec import APISpec
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.chat.run import chat_result, chat_stream, start_chat
from nanovllm.server.protocol import ERROR_RESPONSES, STREAM_RESPONSE
from nanovllm.server.serving import Ctx, streamed

router = APIRouter()


@router.post("/v1/chat/completions", responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_chat_completion(body: ChatCompletionRequest, raw: Request, ctx: Ctx) -> Response:
    """A 400 unless the server has a chat template (see the module's docstring)."""
    run = await start_chat(body, ctx)
    if body.stream:
        return streamed(run.stream, chat_events(run, run.ctx, chat_stream(run)))
    result = await chat_result(raw, run)
    if result is None:  # the client left
        return JSONResponse({}, status_code=499)
    return JSONResponse(chat_completion(run, run.ctx, result))


API = APISpec(router, generating=("/v1/chat/completions",))
