"""The error a request gets when it can never run, naming the request field to fix."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request the engine refuses; `param` is the field it is about ("prompt", "max_tokens", ...).

    A ValueError, so Python callers catch it as before; the server answers it with a 400
    whose `param` is this one, without reading the message.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def quote(value, limit: int = 40) -> str:
    """A user's value, safe to put in an error message: repr-escaped (so lone surrogates and
    control characters cannot break the JSON or the log) and cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
