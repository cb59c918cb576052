"""One module per endpoint (or family of small ones), each with its own `router`; build_app
includes them all (ROUTERS). They share server.serving and server.protocol and never import
each other (tests/test_layers.py). A new endpoint is a new module here, listed in ROUTERS."""

from __future__ import annotations

from nanovllm.server.endpoints import chat, completions, info, tokenize

ROUTERS = [completions.router, chat.router, tokenize.router, info.router]
