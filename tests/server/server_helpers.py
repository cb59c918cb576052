"""Helpers shared by the server tests (imported as `server_helpers`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from nanovllm import EngineConfig, LLMEngine
from nanovllm.async_engine import AsyncEngine
from nanovllm.engine_core.client import ProcessEngineClient
from nanovllm.values.limits import ServerLimits

MODEL = "tiny-gpt2"
API_KEY = "sk-test-key"
NUM_KV_BLOCKS = 1024
REPO = Path(__file__).resolve().parents[2]


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
    # Idle connections kept as `nanovllm serve` keeps them, longer than httpx's pool keeps its
    # own (uvicorn's default equals it): a client never sends on one the server is closing.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            access_log=False,
                            timeout_keep_alive=ServerLimits().timeout_keep_alive)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, server, thread)


def make_engine(ckpt, **overrides) -> AsyncEngine:
    """An engine thread in this process; with NANOVLLM_TEST_ENGINE=process in the environment,
    an engine process (ProcessEngineClient) instead, for the suites that only serve through it."""
    config = EngineConfig(str(ckpt), **{"num_kv_blocks": NUM_KV_BLOCKS, **overrides})
    if os.environ.get("NANOVLLM_TEST_ENGINE") == "process":
        return ProcessEngineClient(config)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nobody listens any more, and a new server (SO_REUSEADDR, as uvicorn) can bind it."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ServeProcess:
    """`python -m nanovllm.cli serve ...`, with its stderr collected line by line."""

    def __init__(self, *args: str, env: dict | None = None, new_session: bool = False,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanovllm.cli", "serve", *args, "--port", str(self.port)],
            cwd=REPO, env=full_env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=new_session)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while f"API at {self.url}/v1" not in self.log:
            assert self.proc.poll() is None, f"serve exited early:\n{self.log}"
            assert time.monotonic() < deadline, f"serve not ready:\n{self.log}"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
