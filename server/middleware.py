"""Pure ASGI middleware that every request passes through: the access log, its `X-Request-Id`,
the API key, a JSON Content-Type, a body size limit, a last-resort 500 and, with --enable-server-load-tracking, the count of
generation requests in flight (build_app stacks them).

Pure ASGI (no BaseHTTPMiddleware) so that none adds a task or a copy of the body per request.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders

from nanovllm.server.errors import ErrorShapes, internal_error
from nanovllm.values.errors import quote

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# Printable ASCII without spaces or separators that could split a header or a log line.
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def response_request_id(incoming: str | None) -> str:
    """The id to answer with: the incoming one if it is short and plain, else a new one."""
    if incoming is not None and _SAFE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """The `X-Request-Id` response header, as vLLM sends it: the client's own id echoed back
    when it is a sane one (so a client or proxy can match its logs with ours), else a fresh one.

    The header is only echoed: engine request ids stay the server's own, so two clients sending
    the same id never collide inside the engine."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = response_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class AccessLogMiddleware:
    """One log line per request once it is answered (a stream: once its last event is sent):
    client, method, path, status, duration and the request id, the `X-Request-Id` the client
    got, so that a client's log and ours can be matched. Outside RequestIdMiddleware, whose
    header it reads. Off with --disable-log-requests (or --disable-uvicorn-access-log)."""

    def __init__(self, app, logger: logging.Logger) -> None:
        self.app = app
        self._logger = logger

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, request_id = 0, "-"  # 0: no response was started (the client left first)

        async def noting_send(message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = Headers(raw=message.get("headers", [])).get(REQUEST_ID_HEADER, "-")
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            client = scope.get("client")
            self._logger.info('%s "%s %s" %d %.1f ms request_id=%s',
                              f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                              printable(scope["path"]), status,
                              (time.perf_counter() - start) * 1e3, request_id)


def printable(text: str, limit: int = 200) -> str:
    """A client's text, safe in a log line: unprintable characters escaped (a newline in a
    percent-decoded path must not start a fake line), cut to `limit` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


class APIKeyMiddleware:
    """Requires the key on the paths under `protected` (build_app: /v1/*, which vLLM protects,
    and the web page's data, /ui/api/*; the page itself holds no secret), in any of the
    `headers` the APIs' clients send it in (each API's KeyHeader: OpenAI's `Authorization:
    Bearer <key>`, Anthropic's `x-api-key: <key>`, ...). A refusal is in the shape of the
    path's API (`errors`)."""

    def __init__(self, app, api_key: str, protected: tuple[str, ...], headers: list,
                 errors: ErrorShapes) -> None:
        self.app = app
        self._expected = [(h.name.lower(), f"{h.prefix}{api_key}".encode()) for h in headers]
        self._protected = protected
        self._errors = errors
        shown = [f"`{h.shown()}`" for h in headers]
        self._message = f"Invalid or missing API key: send the header {shown[0]}" + \
            (f" (or {', '.join(shown[1:])})." if len(shown) > 1 else ".")

    def _authorized(self, headers: Headers) -> bool:
        # Every header compared, always: the time taken says nothing about which was close.
        matches = [secrets.compare_digest(headers.get(name, "").encode("latin-1", "replace"),
                                          expected) for name, expected in self._expected]
        return any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["method"] != "OPTIONS"
                and scope["path"].startswith(self._protected)):
            if not self._authorized(Headers(scope=scope)):
                response = self._errors.response(
                    scope["path"], self._message, 401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ModelLeaseMiddleware:
    """Runs each HTTP request inside `request_scope()` (ModelPool.request_scope): the models
    the request took are held until its response was sent, a stream's to its last event."""

    def __init__(self, app, request_scope: Callable[[], AbstractContextManager]) -> None:
        self.app = app
        self._request_scope = request_scope

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._request_scope():
            await self.app(scope, receive, send)


class RequestCountMiddleware:
    """Counts every answer by its route (the path template, `/v1/responses/{response_id}`;
    "none" when no route matched), method and status class, as vLLM's http_requests_total:
    the requests each endpoint served and refused."""

    def __init__(self, app, count: Callable[[str, str, str], None]) -> None:
        self.app = app
        self._count = count

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if nothing answers (InternalErrorMiddleware)

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            self._count(getattr(route, "path", "none"), scope["method"], f"{status // 100}xx")


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed (e.g. chunked) body passes the limit."""


class BodySizeLimitMiddleware:
    """413 in OpenAI's shape for a body over `max_bytes`: at once from Content-Length, and while
    reading for bodies without one (chunked uploads), before the whole body is in memory."""

    def __init__(self, app, max_bytes: int, errors: ErrorShapes) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._errors = errors

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
        response = self._errors.response(
            scope["path"], f"The request body is larger than this server's limit of "
            f"{self.max_bytes} bytes (--max-request-body-bytes).", 413,
            headers={"Connection": "close"})
        await response(scope, receive, send)


JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json_media_type(content_type: str) -> bool:
    """application/json or application/*+json, whatever its parameters (charset=utf-8)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class JSONContentTypeMiddleware:
    """Every body this server takes is JSON: a body sent as another type, or with no type, is a
    415 that names the header to send. FastAPI would read it as bytes and call it "not a JSON
    object", though `curl -d '{...}'` sends a JSON object (as application/x-www-form-urlencoded,
    unless told otherwise). Taking it as JSON instead would let any web page post to a local
    server without the CORS preflight a JSON request needs."""

    def __init__(self, app, errors: ErrorShapes) -> None:
        self.app = app
        self._errors = errors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in JSON_METHODS:
            headers = Headers(scope=scope)
            content_type = headers.get("content-type")
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if has_body and not (content_type and is_json_media_type(content_type)):
                sent = f"Content-Type {quote(content_type, 100)}" if content_type \
                    else "no Content-Type"
                response = self._errors.response(
                    scope["path"], f"Unsupported media type: the body was sent with {sent}, and "
                    "must be JSON, sent with the header `Content-Type: application/json` (curl: "
                    "add -H 'Content-Type: application/json'; -d alone sends a form).", 415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InternalErrorMiddleware:
    """Any exception no handler took becomes a 500 that says only "internal error, request id
    X"; the traceback is logged once, under that id. (Starlette's own last resort would put the
    exception in the log twice, and FastAPI's handlers would be tempted to echo it.)"""

    def __init__(self, app, errors: ErrorShapes) -> None:
        self.app = app
        self._errors = errors

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
                await self._errors.response(scope["path"], error.message, 500)(scope, receive,
                                                                                 send)


# vLLM's server load tracking: how many generation requests are in flight, for a load balancer
# that reads GET /load. A request counts from the moment its body starts to be handled until
# its response is fully sent (a stream to its last event), as vLLM's load-aware routes count it,
# on the routes that generate (each API's `generating` paths).


@dataclass(slots=True)
class ServerLoad:
    """The app's count of requests in flight; only the event loop's thread changes it."""

    in_flight: int = 0


class LoadTrackingMiddleware:
    def __init__(self, app, load: ServerLoad, paths: frozenset[str]) -> None:
        self.app = app
        self._load = load
        self._paths = paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        self._load.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._load.in_flight -= 1
