"""Several models from one endpoint (`nanovllm serve --models-dir ... --models-config ...`): a
real server process, one engine process per loaded model, random-weight checkpoints.

The server holds two tiny GPT-2s from a --models-dir (alpha can generate for long: a request
in flight on it stays in flight while the test looks), a directory whose checkpoint cannot load,
and, from a YAML --models-config, a BERT served for embeddings (`runner: pooling`) and a BERT
cross-encoder (rerank). --max-loaded-models 1: loading one model evicts the idle other.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from bert_checkpoints import write_hf_bert
from server_helpers import ServeProcess

from nanovllm.model import write_dummy_checkpoint

KEY = "sk-models"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1024)
CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    write_dummy_checkpoint(root / "models" / "alpha", "gpt2", n_positions=4096, **TINY)
    write_dummy_checkpoint(root / "models" / "beta", "gpt2", n_positions=256, **TINY)
    (root / "models" / "broken").mkdir()
    (root / "models" / "broken" / "config.json").write_text('{"model_type": "no-such"}')
    write_hf_bert(root / "bert" / "embedder")
    write_hf_bert(root / "bert" / "reranker", classifier_labels=1, seed=4)
    (root / "models.yaml").write_text(
        "models:\n"
        "  - name: embedder\n    path: bert/embedder\n"
        "    options: {runner: pooling, max-model-len: 64}\n"
        "  - name: reranker\n    path: ./bert/reranker\n")
    return root


@pytest.fixture(scope="module")
def server(model_files):
    srv = ServeProcess("--models-dir", str(model_files / "models"),
                       "--models-config", str(model_files / "models.yaml"),
                       "--max-loaded-models", "1", "--keep-alive", "-1", "--api-key", KEY,
                       "--num-kv-blocks", "512", "--chat-template", str(CHAT_TEMPLATE))
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def states(http: httpx.Client) -> dict[str, str]:
    return {m["id"]: m["state"] for m in http.get("/v1/models").json()["data"]}


def until(check, what: str, timeout: float = 60) -> None:
    """Poll until `check()` (an unload finishes after the answer that caused it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def complete(http: httpx.Client, model: str | None, **extra) -> httpx.Response:
    body = {"prompt": "Hello", "max_tokens": 2, **extra}
    return http.post("/v1/completions", json=body if model is None else {"model": model, **body})


def test_models_are_listed_unloaded_with_their_size(http, model_files):
    data = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["alpha", "beta", "broken", "embedder", "reranker"]
    assert {m["state"] for m in data} == {"unloaded"}
    alpha = data[0]
    on_disk = sum(p.stat().st_size for p in (model_files / "models" / "alpha").iterdir())
    assert alpha["size"] == on_disk and alpha["root"] == "alpha"
    assert alpha["max_model_len"] is None  # known once loaded
    assert str(model_files) not in http.get("/v1/models").text  # no local path is public


def test_a_request_loads_its_model_and_the_idle_one_is_evicted(http):
    r = complete(http, "alpha")
    assert r.status_code == 200 and r.json()["model"] == "alpha"
    assert states(http)["alpha"] == "loaded"
    r = http.post("/v1/chat/completions", json={
        "model": "beta", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "beta"
    now = states(http)
    assert now["beta"] == "loaded" and now["alpha"] == "unloaded"  # --max-loaded-models 1
    card = next(m for m in http.get("/v1/models").json()["data"] if m["id"] == "beta")
    assert card["max_model_len"] == 256 and card["vocab_size"] == 1024


def test_every_api_answers_as_the_model_it_names(http):
    messages = [{"role": "user", "content": "hi"}]
    r = http.post("/v1/messages", json={"model": "beta", "max_tokens": 2, "messages": messages})
    assert r.status_code == 200 and r.json()["model"] == "beta"
    r = http.post("/v1/responses", json={"model": "beta", "input": "hi", "max_output_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "beta"
    r = http.post("/api/chat", json={"model": "beta:latest", "messages": messages,
                                     "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["model"] == "beta:latest"
    r = http.post("/tokenize", json={"model": "beta", "prompt": "Hello"})
    assert r.status_code == 200 and r.json()["max_model_len"] == 256
    metrics = http.get("/metrics").text  # the engines' series, one per loaded model
    assert 'vllm:num_requests_running{model_name="beta"}' in metrics
    assert 'vllm:e2e_request_latency_seconds_count{model_name="beta"}' in metrics
    assert states(http)["alpha"] == "unloaded"


def test_a_model_with_a_request_in_flight_is_never_evicted(http, server):
    assert complete(http, "alpha").status_code == 200
    body = {"model": "alpha", "prompt": "x", "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    answers: dict = {}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as other, \
            httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        with c.stream("POST", "/v1/completions", json=body) as stream:
            events = (line for line in stream.iter_lines() if line.startswith("data: "))
            assert "choices" in json.loads(next(events)[len("data: "):])  # alpha generates
            waiters = [threading.Thread(target=lambda: answers.update(
                beta=complete(other, "beta"))), threading.Thread(target=lambda: answers.update(
                    reranker=other.post("/v1/rerank", json={"model": "reranker", "query": "q",
                                                            "documents": ["d"]})))]
            for waiter in waiters:
                waiter.start()
            until(lambda: states(http)["beta"] == states(http)["reranker"] == "loading",
                  "beta and the reranker wait for room")
            now = states(http)  # alpha's stream is still open: alpha stays, the others wait
            assert now["alpha"] == "loaded" and now["beta"] == now["reranker"] == "loading"
        for waiter in waiters:  # closing the stream aborted alpha's request: the two waiting
            waiter.join(120)    # loads take its room, one after the other
    assert answers["beta"].status_code == 200 and answers["beta"].json()["model"] == "beta"
    assert answers["reranker"].status_code == 200, answers["reranker"].text
    now = states(http)
    assert now["alpha"] == "unloaded" and list(now.values()).count("loaded") == 1


def test_a_model_that_fails_to_load_fails_its_requests_only(http):
    for _ in range(2):  # each request tries again, and says why it failed
        r = complete(http, "broken")
        assert r.status_code == 503
        err = r.json()["error"]
        assert "`broken` could not be loaded" in err["message"] and err["param"] == "model"
    assert states(http)["broken"] == "unloaded"
    assert complete(http, "beta").status_code == 200
    ollama = http.post("/api/generate", json={"model": "broken", "prompt": "hi",
                                              "stream": False})
    assert ollama.status_code == 503 and "`broken` could not be loaded" in ollama.json()["error"]


def test_an_unknown_model_is_a_404_in_each_apis_shape(http):
    r = complete(http, "nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert "`alpha`, `beta`, `broken`, `embedder`, `reranker`" in r.json()["error"]["message"]
    r = http.post("/api/chat", json={"model": "nope", "messages": [{"role": "user",
                                                                    "content": "hi"}]})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = http.post("/v1/messages", json={"model": "nope", "max_tokens": 2,
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["type"] == "error"


def test_an_embedder_and_a_reranker_from_the_config_file(http):
    r = http.post("/v1/embeddings", json={"model": "embedder", "input": ["Hello", "world"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2 and len(r.json()["data"][0]["embedding"]) == 32
    r = http.post("/api/embed", json={"model": "embedder", "input": "Hello"})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 32
    r = http.post("/v1/rerank", json={"model": "reranker", "query": "a cat",
                                      "documents": ["the cat sat", "stocks fell"]})
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1]
    assert states(http)["reranker"] == "loaded" and states(http)["embedder"] == "unloaded"
    r = http.post("/v1/completions", json={"model": "embedder", "prompt": "hi"})
    assert r.status_code == 400  # an embedder does not generate (a 400, not a load error)


def test_keep_alive_0_unloads_after_the_request(http):
    r = http.post("/api/generate", json={"model": "beta", "prompt": "hi", "stream": False,
                                         "options": {"num_predict": 2}, "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done"]
    until(lambda: states(http)["beta"] == "unloaded", "beta unloads after its request")
    r = http.post("/api/generate", json={"model": "beta", "keep_alive": "5m"})  # load only
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    [running] = http.get("/api/ps").json()["models"]
    assert running["name"] == "beta" and running["expires_at"] < "9999"
    r = http.post("/api/generate", json={"model": "beta", "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


def test_load_and_unload_endpoints_are_behind_the_key(http, server):
    assert httpx.post(f"{server.url}/models/load", json={"model": "beta"}).status_code == 401
    assert httpx.post(f"{server.url}/v1/models/unload",
                      json={"model": "beta"}).status_code == 401
    r = http.post("/models/load", json={"model": "alpha"})
    assert r.json() == {"model": "alpha", "state": "loaded"}
    assert states(http)["alpha"] == "loaded"
    r = http.post("/v1/models/unload", json={"model": "alpha"})
    assert r.json() == {"model": "alpha", "state": "unloaded"}
    assert set(states(http).values()) == {"unloaded"}
    assert http.post("/v1/models/load", json={"model": "nope"}).status_code == 404
    assert http.post("/v1/models/load", json={"name": "alpha"}).status_code == 400


def test_the_ollama_client_lists_the_pool(http, server):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=server.url, headers=AUTH)
    names = [m.model for m in client.list().models]
    assert names == ["alpha", "beta", "broken", "embedder", "reranker"]
    client.generate(model="beta", prompt="hi", options={"num_predict": 2})
    assert [m.model for m in client.ps().models] == ["beta"]
    client.generate(model="beta", keep_alive=0)  # Ollama's way to unload a model
    until(lambda: not client.ps().models, "beta unloads")


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def rss_tree(pid: int) -> int:
    """Resident bytes of the server's process and its engine processes."""
    def rss(p: int) -> int:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
    return rss(pid) + sum(rss(c) for c in children(pid))


def test_unloading_stops_the_engine_process_and_returns_its_memory(http, server):
    until(lambda: not children(server.proc.pid), "no engine process while nothing is loaded")
    before = rss_tree(server.proc.pid)
    assert http.post("/v1/models/load", json={"model": "alpha"}).status_code == 200
    assert len(children(server.proc.pid)) == 1  # one engine process per loaded model
    during = rss_tree(server.proc.pid)
    assert http.post("/v1/models/unload", json={"model": "alpha"}).json()["state"] == "unloaded"
    until(lambda: not children(server.proc.pid), "the engine process exits")
    after = rss_tree(server.proc.pid)
    print(f"server tree RSS: before {before / 2**20:.0f} MiB, during {during / 2**20:.0f} MiB, "
          f"after {after / 2**20:.0f} MiB")
    assert after < during


def test_models_from_the_command_line_in_process_unload_when_idle(model_files):
    """MODEL and --model, engines on threads of the server's process, --keep-alive 1s."""
    models = model_files / "models"
    srv = ServeProcess(str(models / "beta"), "--model", str(models / "alpha"),
                       "--engine-in-process", "--keep-alive", "1s", "--num-kv-blocks", "64")
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            assert list(states(c)) == ["beta", "alpha"]
            for _ in range(2):  # loaded, unloaded once idle, loaded again
                assert complete(c, "alpha").json()["model"] == "alpha"
                until(lambda: states(c)["alpha"] == "unloaded", "alpha unloads once idle")
            assert complete(c, None).json()["model"] == "beta"  # no model: the first one
    finally:
        assert srv.stop() == 0, srv.log
