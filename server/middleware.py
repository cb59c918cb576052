"""Pure ASGI middleware that guards every request: a body size limit and a last-resort 500.

Pure ASGI (no BaseHTTPMiddleware) so that neither adds a task or a copy of the body per request.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from nanovllm.server.errors import error_response, internal_error


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed (e.g. chunked) body passes the limit."""


class BodySizeLimitMiddleware:
    """413 in OpenAI's shape for a body over `max_bytes`: at once from Content-Length, and while
    reading for bodies without one (chunked uploads), before the whole body is in memory."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen, too_large, answered = 0, False, False

        async def counting_receive():
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message):
            # Whatever the app makes of the broken read (FastAPI: a 400), the client gets the 413.
            nonlocal answered
            if not too_large:
                await send(message)
            elif not answered:
                answered = True
                await self._refuse(scope, receive, send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not answered:
                answered = True
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response(
            f"The request body is larger than this server's limit of {self.max_bytes} bytes "
            "(--max-request-body-bytes).", 413, headers={"Connection": "close"})
        await response(scope, receive, send)


class InternalErrorMiddleware:
    """Any exception no handler took becomes a 500 that says only "internal error, request id
    X"; the traceback is logged once, under that id. (Starlette's own last resort would put the
    exception in the log twice, and FastAPI's handlers would be tempted to echo it.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error = internal_error(f"{scope.get('method')} {scope.get('path')}")
            if not started:
                await error_response(error.message, 500)(scope, receive, send)
