"""Where a server listens and where its API key comes from, by default: one definition shared
by `nanovllm serve` and the clients in scripts/ that talk to it."""

from __future__ import annotations

import os

DEFAULT_HOST = "127.0.0.1"  # loopback: serving to a network is a choice made with --host
DEFAULT_PORT = 8000
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
API_KEY_ENV = ("NANOVLLM_API_KEY", "VLLM_API_KEY")  # what the server reads, in this order


def api_key_from_env(*extra: str) -> str | None:
    """The first API key set in the environment (`extra` names more variables, e.g. a client's
    OPENAI_API_KEY), or None."""
    return next((os.environ[k] for k in (*API_KEY_ENV, *extra) if os.environ.get(k)), None)
