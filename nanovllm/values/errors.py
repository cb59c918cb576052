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


class ContextLengthError(InvalidRequestError):
    """A prompt too long for the context, alone or with the completion it asks for. It carries
    the numbers, so that a front end can say it in its own fields (chat's prompt is `messages`,
    and a `max_tokens` the client never sent is the API's default, not a request)."""

    def __init__(self, message: str, param: str, *, limit: int, prompt_tokens: int | None = None,
                 prompt_chars: int | None = None, token_chars: int | None = None,
                 max_tokens: int | None = None, min_tokens: int = 0) -> None:
        super().__init__(message, param)
        self.limit, self.prompt_tokens, self.max_tokens, self.min_tokens = (
            limit, prompt_tokens, max_tokens, min_tokens)
        # A text refused before tokenizing: its characters, and the most one token covers.
        self.prompt_chars, self.token_chars = prompt_chars, token_chars


def quote(value, limit: int = 40) -> str:
    """A user's value, safe to put in an error message: a string in backticks with its
    unprintable characters (lone surrogates, controls) escaped, anything else by repr; either cut
    to `limit` characters, so a message never carries a megabyte of someone's input."""
    if isinstance(value, str):
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value[:limit])
        more = f"... ({len(value)} characters)" if len(value) > limit else ""
        return f"`{shown}`{more}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class QueueFullError(RuntimeError):
    """The engine's queue of waiting sequences is full: the request is fine, try it again later.

    The server answers it with a 429 and Retry-After; nothing of the request was queued.
    """
