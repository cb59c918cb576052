"""Anthropic's error shape, {"type": "error", "error": {"type", "message"}}, for every error
under /v1/messages (a 404 or 401 too), and its API key header, `x-api-key`."""

from __future__ import annotations

from nanovllm.server.api.spec import KeyHeader
from nanovllm.server.errors import ErrorShape

# Anthropic's error types by status. A full queue is its 529 overloaded_error (a 429 is an
# account's rate limit there); anything else a server may answer is its api_error.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    529: "overloaded_error",
}
STATUS = {429: 529}


def anthropic_error(message: str, status: int, param: str | None = None) -> tuple[int, dict]:
    """Anthropic's status and body for one of our errors (a full queue: 529 overloaded);
    Anthropic's errors name no field."""
    status = STATUS.get(status, status)
    return status, {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                               "message": message}}


ANTHROPIC_ERRORS = ErrorShape(anthropic_error)
X_API_KEY = KeyHeader("x-api-key")
