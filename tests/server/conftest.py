"""Server fixtures: a real LLMEngine on the tiny checkpoint, served by real uvicorn on 127.0.0.1.

One engine thread (EngineLoop) is shared by the session; two apps are served over it, one
open and one with an API key, each on its own free port. Tests talk to them with the real
`openai` client and httpx. `wait_idle` is the way to assert that every KV block came back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import uvicorn
from server_helpers import API_KEY, MODEL

from nanovllm import EngineConfig, LLMEngine
from server.app import build_app
from server.engine_loop import EngineLoop

NUM_KV_BLOCKS = 1024


@dataclass
class LiveServer:
    url: str
    engine: EngineLoop
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(app, engine: EngineLoop) -> LiveServer:
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


def make_engine(ckpt, **overrides) -> EngineLoop:
    config = EngineConfig(str(ckpt), num_kv_blocks=NUM_KV_BLOCKS, **overrides)
    return EngineLoop(LLMEngine(config)).start()


@pytest.fixture(scope="session")
def engine_loop(tiny_ckpt) -> Iterator[EngineLoop]:
    loop = make_engine(tiny_ckpt)
    yield loop
    loop.shutdown()


@pytest.fixture(scope="session")
def live(engine_loop, tiny_ckpt) -> Iterator[LiveServer]:
    srv = serve(build_app(engine_loop, served_model_name=MODEL, model_root=str(tiny_ckpt)),
                engine_loop)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def live_auth(engine_loop) -> Iterator[LiveServer]:
    srv = serve(build_app(engine_loop, served_model_name=MODEL, api_key=API_KEY), engine_loop)
    yield srv
    srv.stop()


@pytest.fixture
def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def aclient(live) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0,
                              timeout=120)


@pytest.fixture
def http(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c
