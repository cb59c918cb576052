"""What an API declares to the app (each folder's routes.py ends with its `API`; the route table,
server/api/table.py, lists them): its routes, the paths whose errors it shapes and its error
shape, the header its clients send the API key in, and the routes that generate (counted by
--enable-server-load-tracking). build_app, the error handlers and the middleware ask these,
never a path of their own."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from nanovllm.server.errors import OPENAI_ERRORS, ErrorShape


@dataclass(frozen=True, slots=True)
class KeyHeader:
    """A header that carries the API key: `name: <prefix><key>`."""

    name: str
    prefix: str = ""

    def shown(self) -> str:
        return f"{self.name}: {self.prefix}<key>"


BEARER = KeyHeader("Authorization", "Bearer ")  # OpenAI's clients (and most others)


@dataclass(frozen=True, slots=True)
class APISpec:
    router: APIRouter
    # The paths whose errors take `errors`' shape: each one and every path under it (so a 404
    # under it too); errors elsewhere are OpenAI's.
    paths: tuple[str, ...] = ()
    errors: ErrorShape = OPENAI_ERRORS
    key_header: KeyHeader = BEARER
    generating: tuple[str, ...] = ()  # the paths of its routes that generate
