"""The server reaches the engine only through EngineClient, and AsyncEngine provides all of it."""

from __future__ import annotations

import re
from pathlib import Path

from nanovllm import AsyncEngine, EngineClient

SERVER = Path(__file__).resolve().parents[2] / "server"


def interface_names() -> set[str]:
    return {n for n in vars(EngineClient) if not n.startswith("_")} | set(
        EngineClient.__annotations__)


def test_async_engine_provides_the_whole_interface(make_engine):
    client = AsyncEngine(make_engine())  # not started: nothing here needs the thread
    assert interface_names() >= {"processor", "add_request", "abort", "abort_all", "stats",
                                 "is_alive", "error", "tokenizer", "max_model_len",
                                 "vocab_size", "shutdown"}
    assert [n for n in sorted(interface_names()) if not hasattr(client, n)] == []
    assert isinstance(client, EngineClient)  # the same check, as the protocol makes it
    assert client.degraded is None and client.replica_stats is None  # one engine, in one piece


def test_the_server_uses_nothing_outside_the_interface():
    used = set()
    # Ray's replica (server/ray/) owns a real engine; everything else sees the client as `engine`.
    for path in [p for p in SERVER.rglob("*.py") if "ray" not in p.relative_to(SERVER).parts]:
        used |= set(re.findall(r"(?<![\w.])(?:ctx\.|self\._)?engine\.(\w+)", path.read_text()))
    assert used and used <= interface_names(), used - interface_names()
