"""Errors, in the shape of the API a path belongs to: each API says which paths are its and
its ErrorShape (server/api/spec.py); OpenAI's {"error": {"message", "type", "param", "code"}}
is the shape of the others and the default.

Every status the server can answer with goes through here, including FastAPI's own 404/405
and request-validation failures (which OpenAI and vLLM report as 400, not FastAPI's 422).
The OpenAI `type` names follow vLLM (BadRequestError, NotFoundError, ...), which are also the
exception classes the `openai` client raises for those statuses.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanovllm.values.errors import InvalidRequestError, quote

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error that maps one-to-one onto an HTTP status and an OpenAI error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.headers = headers  # e.g. Retry-After on a 429

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(message, 400, param)


def internal_error(context: str, exc: BaseException | None = None) -> APIError:
    """A 500 for `exc` (default: the one being handled), logged once with its traceback under
    a fresh id; the client gets only that id, never the exception's class or text."""
    request_id = f"err-{uuid.uuid4().hex[:16]}"
    logger.error("internal error, request id %s (%s)", request_id, context,
                 exc_info=exc if exc is not None else True)
    return APIError(f"Internal error, request id {request_id}.", 500)


def invalid_request(exc: InvalidRequestError) -> APIError:
    """The engine's refusal of a request: a 400 naming the field the engine says it is about."""
    return bad_request(str(exc), exc.param)


def error_body(message: str, status: int, param: str | None = None) -> dict:
    err_type = ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def openai_error(message: str, status: int, param: str | None = None) -> tuple[int, dict]:
    return status, error_body(message, status, param)


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """How one API says an error: `render(message, status, param)` -> its status and body."""

    render: Callable[[str, int, str | None], tuple[int, dict]]

    def response(self, message: str, status: int, param: str | None = None,
                 headers=None) -> JSONResponse:
        status, body = self.render(message, status, param)
        return JSONResponse(body, status_code=status, headers=headers)


OPENAI_ERRORS = ErrorShape(openai_error)


def error_response(message: str, status: int, param: str | None = None,
                   headers=None) -> JSONResponse:
    """An error in OpenAI's shape, for routes that belong to no API (/health, the web page)."""
    return OPENAI_ERRORS.response(message, status, param, headers)


class ErrorShapes:
    """Which shape an error on a path takes: that of the API whose path holds it (a listed path,
    or one under it), else OpenAI's."""

    def __init__(self, by_path: dict[str, ErrorShape]) -> None:
        self._by_path = by_path

    def of(self, path: str) -> ErrorShape:
        for prefix, shape in self._by_path.items():
            if path == prefix or path.startswith(prefix + "/"):
                return shape
        return OPENAI_ERRORS

    def response(self, path: str, message: str, status: int, param: str | None = None,
                 headers=None) -> JSONResponse:
        return self.of(path).response(message, status, param, headers)


def _is_type_tag(part) -> bool:
    """pydantic puts the union member tried into `loc` ("str", "list[int]", ...): not a field."""
    return isinstance(part, str) and (part in _BARE_TAGS or "[" in part
                                      or part.startswith(("constrained-", "function-")))


_BARE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "constrained-str"}


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """Turn pydantic's error list into one message that names the offending field."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "lone_surrogate":
        field = first["ctx"]["field"]
        return f"Invalid value for `{field}`: {first['msg']}", None if field == "body" else field
    loc = [p for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"Malformed JSON in request body: {detail}".rstrip(": "), None
    if not loc:
        return f"Request body must be a JSON object: {first.get('msg', '')}", None
    field = str(loc[0])
    where = ".".join(str(p) for p in loc if not _is_type_tag(p))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return f"Missing required field `{where}`.", field
    union = [e for e in errors if any(_is_type_tag(p) for p in e.get("loc", ()))
             and e.get("loc", ())[1:2] == (field,)]
    if len(union) > 1:
        tried = "; ".join(f"{_member(e)}: {e.get('msg')}" for e in union)
        return f"Invalid value for `{field}`: it matches none of the allowed types ({tried})", field
    return f"Invalid value for `{where}`: {msg}", field


def _member(error: dict) -> str:
    tag = next(p for p in error["loc"] if _is_type_tag(p))
    return tag.replace("constrained-", "")


def install_error_handlers(app: FastAPI, shapes: ErrorShapes) -> None:
    """Every error an app raises answered in the shape of its path's API (`shapes`)."""

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return shapes.response(request.url.path, exc.message, exc.status, exc.param, exc.headers)

    async def engine_refusal(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return shapes.response(request.url.path, str(exc), 400, exc.param)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        return shapes.response(request.url.path, message, 400, param)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"Not Found: {request.method} {quote(request.url.path, 100)}"
        elif exc.status_code == 405:
            detail = f"Method {request.method} not allowed for {quote(request.url.path, 100)}"
        return shapes.response(request.url.path, detail, exc.status_code,
                               headers=getattr(exc, "headers", None))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(InvalidRequestError, engine_refusal)  # the engine's refusals
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Anything else is a 500 from middleware.InternalErrorMiddleware (logged once, with an id).
