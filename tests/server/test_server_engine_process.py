"""`nanovllm serve` with its engine in a process of its own: killed mid-request, the engine
process answers what it held with a 503 in each API's shape and is restarted, and the server
serves on; a stopped server leaves no engine process behind.

The server runs as a real process (`python -m nanovllm.cli serve`); its engine process is its
one child. Step mode keeps a request in flight for as long as the test likes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import ServeProcess

LONG = {"model": "tiny", "prompt": "x", "max_tokens": 200, "ignore_eos": True}
CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"
RESTARTING = "The engine process stopped (signal 9) while serving this request; it is being restarted."


@pytest.fixture
def server(tiny_ckpt):
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "256", "--served-model-name", "tiny",
                       "--enable-step-mode", "--chat-template", str(CHAT_TEMPLATE))
    yield srv
    srv.kill()


def children(pid: int) -> list[int]:
    """Every thread's (a restarted engine process is the supervisor thread's child)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def engine_pid(srv: ServeProcess) -> int:
    (pid,) = children(srv.proc.pid)
    return pid


def running(pid: int) -> bool:
    """Alive and not a zombie awaiting its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_serving(c: httpx.Client, srv: ServeProcess, timeout: float = 120) -> None:
    """Until /health says 200 without a "degraded" body: the new engine process loaded."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.get("/health")
        if r.status_code == 200 and not r.content:
            return
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.1)


def test_killed_engine_process_ends_its_requests_with_503_and_is_restarted(server):
    server.wait_ready()
    first = engine_pid(server)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.post("/ui/api/step/pause").status_code == 200
        answers: dict = {}
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
            assert c.post("/ui/api/step/step").status_code == 200  # its first tokens
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            assert "choices" in json.loads(next(events)[len("data: "):])
            # Anthropic's Messages API, not streamed: taken by the engine, waiting for a step.
            waiter = threading.Thread(target=lambda: answers.update(r=c.post(
                "/v1/messages", json={"model": "tiny", "max_tokens": 200,
                                      "messages": [{"role": "user", "content": "hi"}]})))
            waiter.start()
            while waiting(c) < 1:
                assert waiter.is_alive(), answers["r"].text
                time.sleep(0.05)
            os.kill(first, signal.SIGKILL)
            rest = list(events)
        waiter.join(60)
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: "):])["error"]
        assert error == {"message": RESTARTING, "type": "ServiceUnavailableError", "param": None,
                         "code": 503}
        assert answers["r"].status_code == 503, answers["r"].text
        assert answers["r"].json() == {"type": "error", "error": {"type": "api_error",
                                                                   "message": RESTARTING}}
        wait_serving(c, server)
        assert server.proc.poll() is None
        second = engine_pid(server)
        assert second != first and not running(first)
        done = c.post("/v1/completions", json={**LONG, "max_tokens": 5})
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] == 5
        assert "engine process stopped (signal 9)" in server.log


def waiting(c: httpx.Client) -> float:
    """The engine's waiting requests, as /metrics says."""
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_waiting{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no vllm:num_requests_waiting in /metrics")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_server_leaves_no_engine_process(server, sig):
    server.wait_ready()
    engine = engine_pid(server)
    assert running(engine)
    assert server.stop(sig) == 0, server.log
    deadline = time.monotonic() + 15
    while running(engine):
        assert time.monotonic() < deadline, "the engine process outlived the server"
        time.sleep(0.05)


def test_a_killed_server_leaves_no_engine_process(server):
    """kill -9 of the server runs none of its code: the engine process sees its socket close."""
    server.wait_ready()
    engine = engine_pid(server)
    server.kill()
    deadline = time.monotonic() + 15
    while running(engine):
        assert time.monotonic() < deadline, "the engine process outlived the server"
        time.sleep(0.05)
