"""`nanovllm serve MODEL --data-parallel-size 2` as a real process, stopped every way a user or a
service manager stops it, on a Ray instance of its own or on a cluster it did not start; and
without the flag, Ray is never imported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import openai
import pytest
from ray_helpers import process_tree, ray_processes, signal_all, still_running
from server_helpers import REPO, ServeProcess, free_port, port_is_free


def test_plain_serve_never_imports_ray():
    code = ("import sys; from nanovllm.cli import build_parser; import nanovllm.server.app, "
            "nanovllm.server.cli, nanovllm.server.api.table; build_parser(); "
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


def test_keep_alive_is_refused_for_models_on_ray(tiny_ckpt):
    """Ray Serve's replicas keep --max-loaded-models each, least recently used out: the pool's
    keep-alive cannot be honoured there, so it is refused before Ray starts."""
    out = subprocess.run([sys.executable, "-m", "nanovllm.cli", "serve", str(tiny_ckpt),
                          "--model", str(tiny_ckpt.parent), "--data-parallel-size", "1",
                          "--keep-alive", "5m"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "--keep-alive is not served with --data-parallel-size" in out.stderr


STOP_WITHIN_S = 15  # the bound, from the signal to the last process gone

# How the server is told to stop, and whom the signal reaches.
STOPS = {
    "docker-stop": "SIGTERM to the main process",
    "ctrl-c": "SIGINT to its process group",
    "kill-group": "SIGTERM to its process group (kill -TERM -PGID)",
    "systemd": "SIGTERM to every process it started (KillMode=control-group)",
}

RAY_SIGNALLED = ("kill-group", "systemd")  # the signal reaches Ray's processes too
REPLICA_LOST = ("The engine replica serving this request failed; new requests go to the live "
                "replicas.")


def start_two_replicas(ckpt, *flags: str) -> ServeProcess:
    """The server in a session of its own, as a service manager or a terminal starts it."""
    srv = ServeProcess(str(ckpt), "--num-kv-blocks", "256", "--data-parallel-size", "2", *flags,
                       env={"RAY_ADDRESS": ""}, new_session=True)
    srv.wait_ready(timeout=300)
    assert "Starting 2 engine replicas on Ray" in srv.log
    return srv


def send_stop(srv: ServeProcess, how: str, tree: set) -> None:
    if how == "docker-stop":
        srv.proc.send_signal(signal.SIGTERM)
    elif how == "ctrl-c":
        os.killpg(srv.proc.pid, signal.SIGINT)
    elif how == "kill-group":
        os.killpg(srv.proc.pid, signal.SIGTERM)
    else:
        signal_all(tree, signal.SIGTERM)


def stop_while_streaming(srv: ServeProcess, how: str) -> None:
    """Stop the server `how` while a stream is in flight: the stream ends with an error event
    and [DONE], the server exits 0 and leaves no process behind, all within STOP_WITHIN_S."""
    session = next((line.rsplit("(session ", 1)[1].rstrip(")") for line in srv.lines
                    if "Ray instance (session " in line), None)
    body = {"model": srv_name(srv), "prompt": "x", "max_tokens": 230, "n": 8,
            "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=60) as http, \
            http.stream("POST", "/v1/completions", json=body) as r:
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        next(events)
        tree = process_tree(srv.proc.pid)  # the replicas, Ray's daemons, the server itself
        stopped_at = time.monotonic()
        send_stop(srv, how, tree)
        rest = list(events)
    assert rest[-1] == "data: [DONE]"
    # Where the replicas got the signal too, one may die before the server aborts the stream.
    reasons = {"The server is shutting down."} | ({REPLICA_LOST} if how in RAY_SIGNALLED else set())
    assert json.loads(rest[-2][len("data: "):])["error"]["message"] in reasons
    assert srv.proc.wait(STOP_WITHIN_S) == 0, srv.log
    assert port_is_free(srv.port)
    while left := still_running(tree) + (ray_processes(session) if session else []):
        assert time.monotonic() < stopped_at + STOP_WITHIN_S, left
        time.sleep(0.2)
    assert "Failed to connect to GCS" not in srv.log


def srv_name(srv: ServeProcess) -> str:
    """The served name: the checkpoint directory's, as with one engine."""
    return os.path.basename(srv.proc.args[4])


@pytest.mark.ray
def test_serve_with_two_replicas_then_docker_stop(tiny_ckpt):
    srv = start_two_replicas(tiny_ckpt, "--max-request-body-bytes", "4096", "--disable-ui")
    name = tiny_ckpt.name
    try:
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
        stop_while_streaming(srv, "docker-stop")
    finally:
        srv.kill()


@pytest.mark.ray
@pytest.mark.parametrize("how", ["ctrl-c", "kill-group", "systemd"])
def test_stops_cleanly_however_signalled(tiny_ckpt, how):
    """The signal reaches Ray's own processes too (its GCS, raylet, replicas): the server still
    stops at once and exits 0, instead of waiting a minute for the GCS that is gone."""
    srv = start_two_replicas(tiny_ckpt, "--disable-ui")
    try:
        stop_while_streaming(srv, how)
    finally:
        srv.kill()


@pytest.fixture
def ray_cluster():
    """A Ray cluster the server did not start (`ray start --head --block` in its own session,
    its files in a temporary directory short enough for Ray's socket paths); yields it and its
    address, then stops it."""
    temp_dir = tempfile.TemporaryDirectory(prefix="nanovllm-ray-", ignore_cleanup_errors=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", f"--object-store-memory={80 * 2**20}",
         "--disable-usage-stats", f"--temp-dir={temp_dir.name}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines = []
    for line in head.stdout:  # ready once it says so, and blocks
        lines.append(line)
        if "will now block" in line:
            break
    assert head.poll() is None, "".join(lines)
    try:
        yield head, f"127.0.0.1:{port}"
    finally:  # the test is over: no need to wait for Ray's own graceful stop
        signal_all(process_tree(head.pid), signal.SIGKILL)
        head.wait(30)
        temp_dir.cleanup()


# `ray start` turns Ray's token authentication on by default (the token in ~/.ray/auth_token);
# a driver given the cluster's address rather than `auto` must be told to use it.
RAY_TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}


def cluster_apps(address: str) -> list[str]:
    """The Serve applications on the cluster at `address`, asked by a driver of its own."""
    code = (f"import json, ray; from ray import serve; ray.init(address={address!r}, "
            "log_to_driver=False); print(json.dumps(sorted(serve.status().applications)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env={**os.environ, **RAY_TOKEN_AUTH})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.ray
def test_on_a_cluster_it_did_not_start_it_removes_only_its_replicas(tiny_ckpt, ray_cluster):
    head, address = ray_cluster
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "256", "--data-parallel-size", "2",
                       "--ray-address", address, "--disable-ui", new_session=True,
                       env=RAY_TOKEN_AUTH)
    try:
        srv.wait_ready(timeout=300)
        assert "Started a local Ray instance" not in srv.log
        assert cluster_apps(address) == ["nanovllm"]
        replicas = [p for p in still_running(process_tree(head.pid)) if "ServeReplica" in p]
        assert len(replicas) == 2, replicas  # the cluster runs them, not the server
        stop_while_streaming(srv, "kill-group")
    finally:
        srv.kill()
    assert head.poll() is None  # the cluster runs on
    assert cluster_apps(address) == []
    assert [p for p in still_running(process_tree(head.pid)) if "ServeReplica" in p] == []
