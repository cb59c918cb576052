"""`nanovllm serve` as a real process: startup logs, API key from the environment, the dummy
fallback when the hub is unreachable, and clean shutdown on SIGTERM / Ctrl-C."""

from __future__ import annotations

import gc
import json
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import ServeProcess, port_is_free

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn():
    started: list[ServeProcess] = []

    def start(*args, env=None, port=None) -> ServeProcess:
        started.append(ServeProcess(*args, env=env, port=port))
        return started[-1]

    yield start
    for p in started:
        p.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_logs_and_shuts_down_cleanly(spawn, tiny_ckpt, sig):
    srv = spawn(str(tiny_ckpt), "--num-kv-blocks", "256", "--served-model-name", "tiny",
                "--enable-step-mode")  # the request stays in flight, however fast the machine
    srv.wait_ready()
    assert str(tiny_ckpt) in srv.log and "RANDOM weights" in srv.log
    assert "parameters" in srv.log and "KV cache: 256 blocks of 16 tokens" in srv.log
    frozen = re.search(r"(\d+) start-up objects frozen", srv.log)
    assert frozen and int(frozen[1]) > 10_000  # the libraries' and the model's objects
    body = {"model": "tiny", "prompt": "x", "max_tokens": 230, "n": 16, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert c.post("/ui/api/step/pause").status_code == 200
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert c.post("/ui/api/step/step").status_code == 200  # its first tokens
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
    # The access log, on by default: one line per request, the stream's once it ended.
    assert re.search(r'nanovllm\.access: 127\.0\.0\.1:\d+ "GET /v1/models" 200 [\d.]+ ms '
                     r"request_id=[0-9a-f]{32}$", srv.log, re.M), srv.log
    assert len(re.findall(r'"POST /v1/completions" 200 ', srv.log)) == 1


def test_start_up_objects_are_frozen_out_of_every_collection():
    """What lived before serving is never walked by a collection again (gc.freeze); what
    serving allocates later still is."""
    from nanovllm.server.cli import freeze_startup_heap

    def tracked(obj) -> bool:
        return any(o is obj for generation in range(3) for o in gc.get_objects(generation))

    old = {"start-up": []}
    try:
        assert freeze_startup_heap() >= 1
        new = {"serving": []}
        assert not tracked(old) and tracked(new)
    finally:
        gc.unfreeze()
    assert tracked(old)


def test_api_key_from_the_environment(spawn, tiny_ckpt):
    srv = spawn(str(tiny_ckpt), "--num-kv-blocks", "64", "--disable-log-requests",
                env={"NANOVLLM_API_KEY": "sekrit"})
    srv.wait_ready()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/models").status_code == 401
        ok = c.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        card = ok.json()["data"][0]
        assert ok.status_code == 200 and card["id"] == card["root"] == tiny_ckpt.name
        assert card["random_weights"] is True
    assert srv.stop() == 0
    assert "nanovllm.access" not in srv.log and "/v1/models" not in srv.log  # no access log


def test_unreachable_hub_without_fallback_exits_with_a_hint(spawn):
    srv = spawn("gpt2")
    assert srv.proc.wait(60) != 0
    assert "nanovllm serve gpt2 --load-format dummy" in srv.log  # the command that works offline
    assert "--allow-dummy-fallback" in srv.log


@pytest.mark.slow
def test_unreachable_hub_with_fallback_serves_random_weights(spawn):
    srv = spawn("gpt2", "--allow-dummy-fallback", "--num-kv-blocks", "64")
    srv.wait_ready(timeout=300)
    notes = [line for line in srv.lines if "unreachable" in line]
    assert len(notes) == 1 and "RANDOM weights" in notes[0] and "gpt2" in notes[0]
    assert "124.4M parameters" in srv.log
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        [card] = c.get("/v1/models").json()["data"]
        assert card["id"] == "gpt2" and card["random_weights"] is True
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


def test_a_busy_port_is_a_one_line_error_before_the_model_loads(spawn, tiny_ckpt):
    """The API's socket is bound first: a port someone else holds fails the start at once (and
    no process started later, Ray's included, can take the port between load and serve)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        srv = spawn(str(tiny_ckpt), port=holder.getsockname()[1])
        assert srv.proc.wait(60) == 2, srv.log
    [error] = [line for line in srv.lines if "error" in line]
    assert f"--port {srv.port}: cannot bind (Address already in use)" in error
    assert "Traceback" not in srv.log and "parameters" not in srv.log  # no model was loaded
