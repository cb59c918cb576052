"""One `nanovllm serve --models-dir DIR`, nothing else: DIR holds two tiny GPT-2 chat models, a
BERT embedder, a BERT cross-encoder and a Qwen3-Embedding (a decoder saved by
sentence-transformers), and the server tells them apart by their checkpoints (an encoder pools,
a decoder generates unless sentence-transformers saved it with a Pooling module, as vLLM's
`--runner auto`; a cross-encoder's classifier head scores), so the chat
models answer OpenAI's, Anthropic's and Ollama's chat and the encoders embeddings and rerank,
with no per-model option. Then one chat model's engine process is killed mid-stream while the
other streams: the killed one's requests end with a 503, it is restarted, and the other's
stream completes.

A real server process, one engine process per loaded model, random-weight checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from bert_checkpoints import write_hf_bert
from server_helpers import ServeProcess

from nanovllm.model import write_dummy_checkpoint

TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1024, n_positions=4096)
CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"
MESSAGES = [{"role": "user", "content": "hi"}]
RESTARTING = "The engine process stopped (signal 9) while serving this request; it is being restarted."


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_dummy_checkpoint(root / "chat", "gpt2", **TINY)
    write_dummy_checkpoint(root / "coder", "gpt2", seed=1, **TINY)
    write_hf_bert(root / "embedder")
    write_hf_bert(root / "reranker", classifier_labels=1, seed=4)
    write_dummy_checkpoint(root / "notes", "qwen3-embedding-0.6b", num_hidden_layers=1,
                           hidden_size=64, intermediate_size=96, num_attention_heads=4,
                           num_kv_heads=2, head_size=16, vocab_size=2048)
    return root


@pytest.fixture(scope="module")
def server(models_dir):
    srv = ServeProcess("--models-dir", str(models_dir), "--keep-alive", "-1",
                       "--num-kv-blocks", "512", "--chat-template", str(CHAT_TEMPLATE))
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def test_chat_through_openai_anthropic_and_ollama(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    r = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2)
    assert r.model == "chat" and r.usage.completion_tokens <= 2
    anthropic = pytest.importorskip("anthropic")
    r = anthropic.Anthropic(base_url=server.url, api_key="none").messages.create(
        model="chat", max_tokens=2, messages=MESSAGES)
    assert r.model == "chat" and r.content[0].type == "text"
    ollama = pytest.importorskip("ollama")
    r = ollama.Client(host=server.url).chat(model="chat", messages=MESSAGES,
                                            options={"num_predict": 2})
    assert r.model == "chat" and r.done and r.message.role == "assistant"


def test_embeddings_and_rerank_without_options(http, server):
    r = http.post("/v1/embeddings", json={"model": "embedder", "input": ["Hello", "world"]})
    assert r.status_code == 200, r.text
    vectors = [d["embedding"] for d in r.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 32 and vectors[0] != vectors[1]
    ollama = pytest.importorskip("ollama")
    [vector] = ollama.Client(host=server.url).embed(model="embedder", input="Hello").embeddings
    assert vector == pytest.approx(vectors[0], abs=1e-5)
    r = http.post("/v1/rerank", json={"model": "reranker", "query": "a cat",
                                      "documents": ["the cat sat", "stocks fell"]})
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1]
    r = http.post("/v1/embeddings", json={"model": "notes", "input": "Hello"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 64
    for model in ("embedder", "notes"):  # embedding models do not generate
        r = http.post("/v1/completions", json={"model": model, "prompt": "hi"})
        assert r.status_code == 400, r.text
    r = http.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
    assert r.status_code == 400  # a decoder generates unless its entry says runner: pooling
    states = {m["id"]: m["state"] for m in http.get("/v1/models").json()["data"]}
    assert states == {"chat": "loaded", "coder": "unloaded", "embedder": "loaded",
                      "reranker": "loaded", "notes": "loaded"}


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()}


def data_events(stream: httpx.Response):
    return (json.loads(line[len("data: "):]) if line != "data: [DONE]" else "[DONE]"
            for line in stream.iter_lines() if line.startswith("data: "))


def test_a_killed_engine_fails_its_model_only(http, server):
    """kill -9 of the chat model's engine process while both chat models stream."""
    assert http.post("/v1/models/unload", json={"model": "chat"}).status_code == 200
    [chat_pid] = loaded_pid(http, server, "chat")
    [coder_pid] = loaded_pid(http, server, "coder")
    long = {"prompt": "x", "max_tokens": 3000, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=server.url, timeout=120) as a, \
            httpx.Client(base_url=server.url, timeout=120) as b, \
            a.stream("POST", "/v1/completions", json={"model": "coder", **long}) as coder, \
            b.stream("POST", "/v1/completions", json={"model": "chat", **long}) as chat:
        coder_events, chat_events = data_events(coder), data_events(chat)
        assert "choices" in next(coder_events) and "choices" in next(chat_events)
        os.kill(chat_pid, signal.SIGKILL)
        chat_rest = list(chat_events)
        coder_rest = list(coder_events)
    assert chat_rest[-1] == "[DONE]"
    assert chat_rest[-2] == {"error": {"message": RESTARTING, "type": "ServiceUnavailableError",
                                       "param": None, "code": 503}}
    assert coder_rest[-1] == "[DONE]" and coder_rest[-2]["usage"]["completion_tokens"] == 3000
    assert not any("error" in e for e in coder_rest[:-1])
    r = http.post("/v1/chat/completions", json={"model": "chat", "messages": MESSAGES,
                                                "max_tokens": 2})  # waits for the restart
    assert r.status_code == 200 and r.json()["model"] == "chat", r.text
    assert coder_pid in children(server.proc.pid) and chat_pid not in children(server.proc.pid)
    assert "engine process stopped (signal 9)" in server.log



def loaded_pid(http: httpx.Client, server: ServeProcess, model: str) -> set[int]:
    """Load `model`: the engine process it started (one per loaded model)."""
    def engines() -> set[int]:
        deadline = time.monotonic() + 30
        while True:  # (an unload answers before its process has exited)
            pids = children(server.proc.pid)
            loaded = [m for m in http.get("/v1/models").json()["data"] if m["state"] == "loaded"]
            if len(pids) == len(loaded) or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)
    before = engines()
    assert http.post("/v1/models/load", json={"model": model}).status_code == 200
    return engines() - before
