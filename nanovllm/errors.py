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


class QueueFullError(RuntimeError):
    """The engine's queue of waiting sequences is full: the request is fine, try it again later.

    The server answers it with a 429 and Retry-After; nothing of the request was queued.
    """
