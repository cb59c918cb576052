"""Errors in the shape of the API a path belongs to: OpenAI's {"error": {"message", "type",
"param", "code"}} everywhere but under /v1/messages, which answers in Anthropic's
{"type": "error", "error": {"type", "message"}}.

Every status the server can answer with goes through here, including FastAPI's own 404/405
and request-validation failures (which OpenAI and vLLM report as 400, not FastAPI's 422).
The OpenAI `type` names follow vLLM (BadRequestError, NotFoundError, ...), which are also the
exception classes the `openai` client raises for those statuses.
"""

from __future__ import annotations

import json
import logging
import uuid
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

# Anthropic's error types by status. A full queue is its 529 overloaded_error (a 429 is an
# account's rate limit there); anything else a server may answer is its api_error.
ANTHROPIC_PATH = "/v1/messages"
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    529: "overloaded_error",
}
ANTHROPIC_STATUS = {429: 529}


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


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def anthropic_error(message: str, status: int) -> tuple[int, dict]:
    """Anthropic's status and body for one of our errors (a full queue: 529 overloaded)."""
    status = ANTHROPIC_STATUS.get(status, status)
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


def error_response(message: str, status: int, param: str | None = None, headers=None,
                   path: str = "") -> JSONResponse:
    """The error as the API of `path` shapes it (OpenAI's unless under /v1/messages)."""
    if is_anthropic_path(path):
        status, body = anthropic_error(message, status)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


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


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.message, exc.status, exc.param, exc.headers, request.url.path)


async def _invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
    return error_response(str(exc), 400, exc.param, path=request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_error(exc)
    return error_response(message, 400, param, path=request.url.path)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"Not Found: {request.method} {quote(request.url.path, 100)}"
    elif exc.status_code == 405:
        detail = f"Method {request.method} not allowed for {quote(request.url.path, 100)}"
    return error_response(detail, exc.status_code, None, headers=getattr(exc, "headers", None),
                          path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(InvalidRequestError, _invalid_request)  # the engine's refusals
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Anything else is a 500 from middleware.InternalErrorMiddleware (logged once, with an id).
