"""nanovllm's OpenAI-compatible HTTP server (FastAPI + one engine thread).

Layout: protocol (request models), prompts (validation and SamplingParams), engine_loop
(the engine thread), request_stream (per-request output queue), completions and streaming
(response building), routes, app (build_app), metrics, errors, cli (`nanovllm serve`).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("nanovllm")
except PackageNotFoundError:  # running from a checkout that was not pip-installed
    __version__ = "0.1.0"

__all__ = ["__version__", "build_app"]


def __getattr__(name: str):
    if name == "build_app":  # lazy: server.app imports __version__ from this module
        from server.app import build_app

        return build_app
    raise AttributeError(name)
