"""`nanovllm serve MODEL --data-parallel-size 2` as a real process; and without the flag, Ray
is never imported."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from ray_helpers import ray_processes
from server_helpers import REPO, ServeProcess, port_is_free


def test_plain_serve_never_imports_ray():
    code = ("import sys; from nanovllm.cli import build_parser; import nanovllm.server.app, "
            "nanovllm.server.cli, nanovllm.server.endpoints; build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "nanovllm.cli", "serve", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    assert "--data-parallel-size" in help_text and "--ray-address" in help_text


def test_ray_address_alone_is_refused(tiny_ckpt):
    out = subprocess.run([sys.executable, "-m", "nanovllm.cli", "serve", str(tiny_ckpt),
                          "--ray-address", "auto"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "--ray-address needs --data-parallel-size" in out.stderr


@pytest.mark.ray
def test_serve_with_two_replicas_then_sigterm(tiny_ckpt):
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "256", "--data-parallel-size", "2",
                       "--max-request-body-bytes", "4096", "--disable-ui",
                       env={"RAY_ADDRESS": ""})
    name = tiny_ckpt.name  # the served name is the checkpoint directory's, as with one engine
    try:
        srv.wait_ready(timeout=300)
        assert "Starting 2 engine replicas on Ray" in srv.log
        session = next(line for line in srv.lines if "Ray instance (session " in line)
        session = session.rsplit("(session ", 1)[1].rstrip(")")
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        out = client.completions.create(model=name, prompt="hello", max_tokens=5,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 5
        # The single server's limits and flags hold on the Ray path too.
        assert [(m.id, m.root) for m in client.models.list().data] == [(name, name)]
        big = httpx.post(f"{srv.url}/v1/completions", timeout=30,
                         json={"model": name, "prompt": "x" * 5000, "max_tokens": 1})
        assert big.status_code == 413 and "4096 bytes" in big.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/ui", timeout=30).status_code == 404
        body = {"model": name, "prompt": "x", "max_tokens": 230, "n": 8, "ignore_eos": True,
                "stream": True}
        with httpx.Client(base_url=srv.url, timeout=60) as http, \
                http.stream("POST", "/v1/completions", json=body) as r:
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            next(events)
            srv.proc.send_signal(signal.SIGTERM)  # in flight: aborted, as by the single server
            rest = list(events)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["error"]["message"] == \
            "The server is shutting down."
        assert srv.proc.wait(60) == 0, srv.log
        assert port_is_free(srv.port)
        deadline = time.monotonic() + 30
        while left := ray_processes(session):
            assert time.monotonic() < deadline, left
            time.sleep(0.2)
    finally:
        srv.kill()
