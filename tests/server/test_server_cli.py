"""`nanovllm serve` as a real process: startup logs, API key from the environment, the dummy
fallback when the hub is unreachable, and clean shutdown on SIGTERM / Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


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

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        full_env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanovllm.cli", "serve", *args, "--port", str(self.port)],
            cwd=REPO, env=full_env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
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


@pytest.fixture
def spawn():
    started: list[ServeProcess] = []

    def start(*args, env=None) -> ServeProcess:
        started.append(ServeProcess(*args, env=env))
        return started[-1]

    yield start
    for p in started:
        p.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_logs_and_shuts_down_cleanly(spawn, tiny_ckpt, sig):
    srv = spawn(str(tiny_ckpt), "--num-kv-blocks", "256", "--served-model-name", "tiny")
    srv.wait_ready()
    assert str(tiny_ckpt) in srv.log and "RANDOM weights" in srv.log
    assert "parameters" in srv.log and "KV cache: 256 blocks of 16 tokens" in srv.log
    body = {"model": "tiny", "prompt": "x", "max_tokens": 230, "n": 16, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"
        with c.stream("POST", "/v1/completions", json=body) as r:
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            next(events)
            t = time.monotonic()
            srv.proc.send_signal(sig)  # in-flight: must be aborted, not awaited
            rest = list(events)
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][len("data: "):])["error"]["message"] == "The server is shutting down."
    assert srv.proc.wait(15) == 0, srv.log
    assert time.monotonic() - t < 10
    assert "Server stopped." in srv.log
    assert port_is_free(srv.port)


def test_api_key_from_the_environment(spawn, tiny_ckpt):
    srv = spawn(str(tiny_ckpt), "--num-kv-blocks", "64", env={"NANOVLLM_API_KEY": "sekrit"})
    srv.wait_ready()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/models").status_code == 401
        ok = c.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == str(tiny_ckpt)
    assert srv.stop() == 0


def test_unreachable_hub_without_fallback_exits_with_a_hint(spawn):
    srv = spawn("gpt2")
    assert srv.proc.wait(60) != 0
    assert "--load-format dummy" in srv.log or "dummy" in srv.log


@pytest.mark.slow
def test_unreachable_hub_with_fallback_serves_random_weights(spawn):
    srv = spawn("gpt2", "--allow-dummy-fallback", "--num-kv-blocks", "64")
    srv.wait_ready(timeout=300)
    notes = [line for line in srv.lines if "unreachable" in line]
    assert len(notes) == 1 and "RANDOM weights" in notes[0] and "gpt2" in notes[0]
    assert "124.4M parameters" in srv.log
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "gpt2"
        resp = c.post("/v1/completions", json={"model": "gpt2", "prompt": "Hello", "max_tokens": 2})
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
        err = c.post("/v1/completions", json={"prompt": " hello" * 1100, "max_tokens": 16}).json()
        assert "maximum context length is 1024 tokens" in err["error"]["message"]
    assert srv.stop() == 0


def test_chat_template_from_the_checkpoint_or_the_flag(spawn, tiny_ckpt, tmp_path):
    """The checkpoint's tokenizer_config.json chat_template serves chat; --chat-template wins."""
    import shutil

    ckpt = tmp_path / "chatty"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    own = spawn(str(ckpt), "--num-kv-blocks", "64", "--enable-tokenizer-info-endpoint")
    flag = spawn(str(ckpt), "--num-kv-blocks", "64", "--chat-template",
                 str(REPO / "examples" / "chat_template_gpt2.jinja"))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for srv, rendered in ((own, "<hi>"), (flag, "User: hi\nAssistant:")):
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            expected = c.post("/tokenize", json={"prompt": rendered}).json()["count"]
            resp = c.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            assert resp.json()["usage"]["prompt_tokens"] == expected
    with httpx.Client(base_url=own.url, timeout=30) as c:
        assert c.get("/tokenizer_info").json()["chat_template"] == config["chat_template"]
    with httpx.Client(base_url=flag.url, timeout=30) as c:
        assert c.get("/tokenizer_info").status_code == 404


def test_a_chat_template_path_that_does_not_exist_is_a_one_line_error(spawn, tiny_ckpt):
    srv = spawn(str(tiny_ckpt), "--chat-template", "no/such/template.jinja")
    assert srv.proc.wait(60) == 2
    assert "looks like a file path" in srv.log and "Traceback" not in srv.log
