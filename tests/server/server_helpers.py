"""Helpers shared by the server tests (imported as `server_helpers`)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn

from nanovllm import EngineConfig, LLMEngine
from nanovllm.async_engine import AsyncEngine

MODEL = "tiny-gpt2"
API_KEY = "sk-test-key"
NUM_KV_BLOCKS = 1024


@dataclass
class LiveServer:
    url: str
    engine: AsyncEngine
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(app, engine: AsyncEngine) -> LiveServer:
    """Run `app` with uvicorn in a thread on a socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, server, thread)


def make_engine(ckpt, **overrides) -> AsyncEngine:
    config = EngineConfig(str(ckpt), **{"num_kv_blocks": NUM_KV_BLOCKS, **overrides})
    return AsyncEngine(LLMEngine(config)).start()


def wait_idle(engine: AsyncEngine, timeout: float = 10.0):
    """Wait until no request is in the engine and every KV block is free; returns the stats."""
    deadline = time.monotonic() + timeout
    while True:
        s = engine.stats
        if s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_total_blocks:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not idle after {timeout}s: {s}")
        time.sleep(0.01)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus text exposition (0.0 if absent)."""
    want = {"model_name": MODEL, **labels}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_part = line[len(name) + 1:line.index("}")]
        got = dict(kv.split("=", 1) for kv in label_part.split(","))
        if {k: v.strip('"') for k, v in got.items()} == want:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def error_of(response: httpx.Response, status: int) -> dict:
    """Assert the OpenAI error shape and status; returns the inner error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    return err
