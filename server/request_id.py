"""The `X-Request-Id` response header, as vLLM sends it: the client's own id echoed back when it
is a sane one (so a client or proxy can match its logs with ours), else a fresh one.

The header is only echoed: engine request ids stay the server's own, so two clients sending the
same id never collide inside the engine.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders

HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Printable ASCII without spaces or separators that could split a header or a log line.
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def response_request_id(incoming: str | None) -> str:
    """The id to answer with: the incoming one if it is short and plain, else a new one."""
    if incoming is not None and _SAFE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = response_request_id(Headers(scope=scope).get(HEADER))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
