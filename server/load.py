"""vLLM's server load tracking (--enable-server-load-tracking): how many generation requests
are in flight, for a load balancer that reads GET /load.

A request counts from the moment its body starts to be handled until its response is fully
sent (a stream to its last event), as vLLM's load-aware routes count it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The routes that generate (vLLM counts its generation and pooling routes, not tokenize).
TRACKED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/invocations"})


@dataclass(slots=True)
class ServerLoad:
    """The app's count of requests in flight; only the event loop's thread changes it."""

    in_flight: int = 0


class LoadTrackingMiddleware:
    def __init__(self, app, load: ServerLoad) -> None:
        self.app = app
        self._load = load

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in TRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        self._load.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._load.in_flight -= 1
