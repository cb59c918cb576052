"""Ollama's error shape, {"error": "..."}, for every error under /api (a 404 too). Ollama
answers a full queue with 503 ("server busy"); its clients send the API key as a bearer token."""

from __future__ import annotations

from nanovllm.server.errors import ErrorShape

STATUS = {429: 503}


def ollama_error(message: str, status: int, param: str | None = None) -> tuple[int, dict]:
    """Ollama's status and body for one of our errors: Ollama's error is a message only, so
    it names the field at fault when it does not already."""
    if param and param not in message:
        message = f"{param}: {message}"
    return STATUS.get(status, status), {"error": message}


OLLAMA_ERRORS = ErrorShape(ollama_error)
